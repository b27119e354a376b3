"""What a generation hands back: each window's frames as they come, and a summary at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .request import Request


@dataclass
class WindowFrames:
    """One window's new frames, in output order."""

    index: int               # window number, from 0
    windows: int             # how many windows the video has
    first_frame: int         # index of frames[0] in the generated video
    frames: np.ndarray       # uint8 [T, H, W, 3]
    latents: torch.Tensor    # the model-space latents they were decoded from [1, 16, t, h, w], on the CPU


@dataclass(frozen=True)
class Result:
    path: Path                    # the video file, or the folder of PNG frames
    sidecar: Path                 # the settings and timings, as JSON
    request: Request              # resolved: what was generated, enough to make it again
    frames: int                   # frames in the output
    timings_s: dict[str, float]
    peak_vram_gb: float | None    # on CUDA, this generation's peak
    resumed: bool
    replayed_latents: int = 0     # latent frames decoded again on resume to rebuild the decoder's state
    step_cache: dict | None = None  # with a step cache: its threshold, calls and skipped calls
    runtime: dict | None = None   # how the model ran: memory plan, attention kernel, compilation
