"""Colour over time: exact statistics, matching that lands on the reference's statistics, the sidecar's
per-window record, and --color-match holding brightness on a run built to drift (resumable exactly)."""

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.errors import UsageError
from skyreels_cli.forcing.engine import DiffusionForcingEngine
from skyreels_cli.media.colour import (
    DEFAULT_MODE,
    brightness,
    channel_stats,
    check_mode,
    drift,
    match_frames,
    match_latents,
    window_record,
)

from .conftest import read_png_frames

TINY = ["-m", "tiny", "--device", "cpu", "--height", "64", "--width", "64", "--steps", "3", "--base-frames", "17",
        "--seed", "3"]
WINDOWS = 7  # 17 frames, then 12 new frames per window
FRAMES = 17 + 12 * (WINDOWS - 1)
BIAS = 1.0  # per window, on every velocity: brightness climbs about 10 levels over 7 windows unmatched


# ------------------------------------------------------------ statistics and matching

def test_channel_statistics_are_exact():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[..., 0] = 10
    frames[:, :2, :, 0] = 30          # red: half 10, half 30
    frames[..., 1] = 100              # green: flat
    frames[1, ..., 2] = 255           # blue: one frame black, one white
    mean, std = channel_stats(frames)
    assert mean.tolist() == [20.0, 100.0, 127.5] and std.tolist() == [10.0, 0.0, 127.5]
    record = window_record(3, 41, frames)
    assert record == {"window": 3, "first_frame": 41, "mean": [20.0, 100.0, 127.5], "std": [10.0, 0.0, 127.5]}
    assert brightness(record) == pytest.approx(0.299 * 20 + 0.587 * 100 + 0.114 * 127.5)


def test_matched_frames_take_the_reference_statistics():
    rng = np.random.default_rng(0)
    reference = rng.normal((90, 120, 60), (20, 10, 15), (5, 16, 16, 3)).clip(0, 255).astype(np.uint8)
    new = rng.normal((140, 100, 90), (8, 25, 12), (7, 16, 16, 3)).clip(0, 255).astype(np.uint8)
    ref_mean, ref_std = channel_stats(reference)
    before = channel_stats(new)
    assert np.abs(before[0] - ref_mean).min() > 15 and np.abs(before[1] - ref_std).min() > 3
    matched = match_frames(new, reference)
    mean, std = channel_stats(matched)
    np.testing.assert_allclose(mean, ref_mean, atol=0.3)  # rounding to levels
    np.testing.assert_allclose(std, ref_std, rtol=0.02)
    # the picture is kept: a per-channel affine map preserves the order of values
    assert np.corrcoef(new[..., 1].ravel(), matched[..., 1].ravel())[0, 1] > 0.99


def test_matched_latents_take_the_prefix_statistics_per_channel():
    g = torch.Generator().manual_seed(0)
    prefix = torch.randn(1, 16, 2, 8, 8, generator=g) * torch.linspace(0.5, 2, 16).view(1, 16, 1, 1, 1) + 1
    new = torch.randn(1, 16, 3, 8, 8, generator=g) * 3 - 2
    matched = match_latents(new, prefix)
    dims = (2, 3, 4)
    torch.testing.assert_close(matched.mean(dims), prefix.mean(dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(matched.std(dims, unbiased=False), prefix.std(dims, unbiased=False), atol=1e-5, rtol=1e-5)
    assert (new.mean(dims) - prefix.mean(dims)).abs().min() > 1, "the inputs must differ for this to prove anything"
    assert matched.shape == new.shape and matched.dtype == new.dtype


def test_drift_is_the_brightness_trend_after_the_first_window():
    def record(level: float) -> dict:
        return {"mean": [level] * 3}

    assert drift([record(v) for v in (120, 100, 102, 104, 106)]) == pytest.approx(6.0)
    assert drift([record(v) for v in (120, 100, 98, 96)]) == pytest.approx(4.0)
    assert drift([record(v) for v in (50, 100, 100, 100)]) == pytest.approx(0.0)
    assert drift([record(100)]) == drift([]) == 0.0


def test_modes_are_checked():
    assert check_mode(DEFAULT_MODE) == "latent"
    with pytest.raises(UsageError, match="color_match must be one of off, latent, pixel"):
        check_mode("hsv")


# ------------------------------------------------------------ a run built to drift

@pytest.fixture
def drifting(monkeypatch):
    """Every model call's velocity is biased by BIAS x the window index: each window's latents are shifted
    further than the one before, as by a model whose error grows window by window (the frames brighten)."""
    denoise, velocity = DiffusionForcingEngine.denoise_window, DiffusionForcingEngine.velocity

    def denoise_window(self, latents, window, *args, **kwargs):
        self._drift_window = window.index
        return denoise(self, latents, window, *args, **kwargs)

    def biased(self, *args, **kwargs):
        return velocity(self, *args, **kwargs) + BIAS * self._drift_window

    monkeypatch.setattr(DiffusionForcingEngine, "denoise_window", denoise_window)
    monkeypatch.setattr(DiffusionForcingEngine, "velocity", biased)


def run_cli(tmp_path, name: str, *extra: str) -> list[dict]:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["extend", "a red fox", *TINY, "--frames", str(FRAMES), "-o", str(out), "-q",
                                      *extra])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["request"]["color_match"] == ("latent" if extra else "off")
    return sidecar["run"]["colour"]


@pytest.mark.slow
def test_color_match_reduces_drift_on_a_drifting_run(drifting, tmp_path):
    plain = run_cli(tmp_path, "plain.mp4")
    matched = run_cli(tmp_path, "matched.mp4", "--color-match")
    assert [r["window"] for r in plain] == list(range(WINDOWS))
    assert [r["first_frame"] for r in plain] == [0] + [17 + 12 * i for i in range(WINDOWS - 1)]
    assert drift(plain) > 3, f"the run was meant to drift: {[round(brightness(r), 1) for r in plain]}"
    assert drift(matched) < drift(plain) / 3, (drift(matched), drift(plain))
    assert plain[0] == matched[0], "the first window continues nothing and is left alone"


def test_help_says_it_is_a_correction_not_a_cure():
    result = CliRunner().invoke(app, ["extend", "--help"])
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # the help's box, unwrapped
    assert "--color-match" in text and "correction, not a cure" in text


def test_a_clip_model_refuses_color_match():
    from skyreels_cli.core.resolve import resolve
    from skyreels_cli.models.naming import resolve_model

    with pytest.raises(UsageError, match="color_match applies to diffusion forcing models only"):
        resolve(sk.Request(prompt="a fox", color_match="latent"), resolve_model("tiny-t2v", "t2v"))


# ------------------------------------------------------------ resuming a matched run

class Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["latent", "pixel"])
@pytest.mark.slow
def test_an_interrupted_matched_run_resumes_to_the_same_frames_and_record(mode, tmp_path):
    model = sk.load("tiny-df", device="cpu", command="extend", progress=False)
    request = sk.Request(prompt="a fox", frames=53, height=64, width=64, steps=2, base_frames=17, seed=5,
                         color_match=mode)

    def stop_after_second(window):
        if window.index == 1:
            raise Stop

    with pytest.raises(Stop):
        model.generate(request, f"{tmp_path / 'cut'}/", on_window=stop_after_second)
    events = []
    resumed = model.generate(request, f"{tmp_path / 'cut'}/", resume=True, on_event=events.append)
    straight = model.generate(request, f"{tmp_path / 'straight'}/")
    assert events[0].done == 2 and resumed.resumed
    ours, reference = read_png_frames(resumed.path), read_png_frames(straight.path)
    assert ours.shape[0] == 53 and np.array_equal(ours, reference)
    colour = [json.loads(r.sidecar.read_text())["run"]["colour"] for r in (resumed, straight)]
    assert colour[0] == colour[1] and len(colour[0]) == 4
    plain = model.generate(sk.Request(**{**request.__dict__, "color_match": "off"}), f"{tmp_path / 'plain'}/")
    assert not np.array_equal(read_png_frames(plain.path), reference), "matching changed nothing"
