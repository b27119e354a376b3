"""Colour over time: each window's per-channel statistics, and matching a window's to what it continues.

Long diffusion forcing videos tend to drift (brighter, more saturated) because each window continues
from the last; recording the mean and spread of every channel per window makes the drift readable,
and `--color-match` pulls each new window's statistics back to those of the frames it continues
from. That is a correction, not a cure: it removes a global shift and scale per channel, not local
errors, and it also flattens a change of light the prompt asked for.

Matching can be done on the decoded pixels, or on the latents before decoding (then the corrected
latents are also the next window's prefix, so the error does not carry into the following windows).
Measured on the tiny model over 10 windows, with the velocity biased by +-0.6 x the window index or with
each window made to follow its prefix's colour plus a fixed shift, latent matching held the brightness
trend within 0.6 levels where unmatched runs moved 0.9-8.6; pixel matching did not help and on runs that
did not drift by themselves made a drift of its own (3-9 levels, contrast lower): matching each window
to the last frames of the one before compounds whatever differs between a window's end and its whole.
So latent is the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MODES = ("off", "latent", "pixel")
DEFAULT_MODE = "latent"  # measured: holds brightness on drifting runs; pixel matching compounds (tests/test_colour.py)
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights: brightness from the channel means
EPS = 1e-6


def channel_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each RGB channel over frames `[T, H, W, 3]` (uint8 levels or float)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    x = frames.reshape(-1, 3).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def window_record(window: int, first_frame: int, frames: np.ndarray) -> dict:
    """One entry of the sidecar's `run.colour`: the window's new frames, in levels 0-255, 2 decimals."""
    mean, std = channel_stats(frames)
    return {"window": window, "first_frame": first_frame, "mean": [round(float(v), 2) for v in mean],
            "std": [round(float(v), 2) for v in std]}


def match_stats(values: np.ndarray, mean: np.ndarray, std: np.ndarray, target_mean: np.ndarray,
                target_std: np.ndarray) -> np.ndarray:
    """`values [..., 3]` (float) moved from statistics (mean, std) to (target_mean, target_std) per channel."""
    scale = np.asarray(target_std, np.float64) / np.maximum(np.asarray(std, np.float64), EPS)
    return (values - mean) * scale + target_mean


def match_frames(frames: np.ndarray, reference: np.ndarray | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint8 `frames` with each channel's mean and std matched to `reference` (frames, or their (mean, std))."""
    ref_mean, ref_std = channel_stats(reference) if isinstance(reference, np.ndarray) else reference
    mean, std = channel_stats(frames)
    out = match_stats(frames.astype(np.float64), mean, std, ref_mean, ref_std)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def match_latents(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Latents `[B, C, T, h, w]` with each channel's mean and std over (T, h, w) matched to `reference`'s."""
    dims = (2, 3, 4)
    x = latents.float()
    ref = reference.to(x.device, torch.float32)
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True, unbiased=False)
    ref_mean, ref_std = ref.mean(dim=dims, keepdim=True), ref.std(dim=dims, keepdim=True, unbiased=False)
    return ((x - mean) * (ref_std / std.clamp_min(EPS)) + ref_mean).to(latents.dtype)


def brightness(record: dict) -> float:
    """A window's mean brightness (luma of its channel means), in levels."""
    return float(np.dot(LUMA, record["mean"]))


def drift(records: Sequence[dict]) -> float:
    """How far brightness moved over the run along its trend, in levels: the least-squares slope of the
    windows' brightness times their span, over the windows that continue another (all but the first).

    The first window is left out: it is the reference of nothing, and it holds the video's first frame,
    which the causal VAE decodes on its own (on the tiny test model it is several levels off the rest)."""
    return abs(trend(records))


def trend(records: Sequence[dict]) -> float:
    """`drift` with its sign: positive when the video grew brighter, negative when darker; 0.0 with fewer than
    `DRIFT_WINDOWS` windows (nothing to fit a trend to once the first is left out)."""
    later = [brightness(r) for r in records[1:]]
    if len(later) < 2:
        return 0.0
    slope = np.polyfit(np.arange(len(later)), later, 1)[0]
    return float(slope * (len(later) - 1))


DRIFT_WINDOWS = 3  # the fewest windows `drift` measures: the first is left out, and a trend needs two points


def check_mode(mode: str) -> str:
    if mode not in MODES:
        from ..errors import UsageError, setting

        raise UsageError(f"{setting('color_match')} must be one of {', '.join(MODES)}, got {mode!r}", field="color_match")
    return mode
