"""A long run killed at chosen points and resumed gives exactly the uninterrupted output.

Kills are placed with SKYREELS_FAULT (skyreels_cli/faults.py): the process ends with
os._exit at the N-th time it reaches a named point, so no test depends on timing.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skyreels_cli.cli import app

from .conftest import ALIASES, read_png_frames, read_video

STEPS = 3
# 16 windows of tiny work: 50 latent frames in windows of 5 with an overlap of 2.
ARGS = ["extend", "a red fox", "-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64",
        "--steps", str(STEPS), "--frames", "197", "--base-frames", "17", "--overlap", "5", "--seed", "11", "-q"]


def killed_run(output: str, fault: str, *more: str) -> None:
    env = {**os.environ, "SKYREELS_FAULT": fault}
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *ARGS, "-o", output, *more], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, f"the run was not killed at {fault}: {done.stderr}"


def during_window(window: int) -> str:
    """The middle denoising row of a window (1-based)."""
    return f"denoise_row:{(window - 1) * STEPS + 2}"


def resume(output: str) -> CliRunner:
    result = CliRunner().invoke(app, [*ARGS, "-o", output, "--resume"])
    assert result.exit_code == 0, result.output
    return result


def uninterrupted(output: str) -> None:
    result = CliRunner().invoke(app, [*ARGS, "-o", output])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_killed_png_run_resumes_to_identical_frames(hub_models, tmp_path):
    out = tmp_path / "killed"
    killed_run(f"{out}/", during_window(14))  # past the decoder's replay length (32 latents)
    assert not out.exists(), "frames are built in killed.partial/ and put in place when complete"
    written = len(list((tmp_path / "killed.partial").glob("[0-9]*.png")))
    assert written == 17 + 12 * 12  # windows 1-13 finished
    resume(f"{out}/")
    uninterrupted(f"{tmp_path / 'straight'}/")
    ours, reference = read_png_frames(out), read_png_frames(tmp_path / "straight")
    assert ours.shape[0] == 197 and np.array_equal(ours, reference)
    run = json.loads((out / "settings.json").read_text())["run"]
    assert run["resumed"] is True and run["replayed_latents"] == 32
    assert not (tmp_path / ".killed.skyreels").exists() and not (tmp_path / "killed.partial").exists()


@pytest.mark.slow
def test_killed_mp4_run_plays_midway_and_resumes_identically(hub_models, tmp_path):
    out = tmp_path / "fox.mp4"
    killed_run(str(out), during_window(3))
    assert not out.exists(), "a partial file under the final name"
    preview, _ = read_video(tmp_path / "fox.partial.mp4")
    assert len(preview) == 17 + 12 and preview.shape[1:] == (64, 64, 3)
    resume(str(out))
    uninterrupted(str(tmp_path / "straight.mp4"))
    assert out.read_bytes() == (tmp_path / "straight.mp4").read_bytes()
    assert not (tmp_path / "fox.partial.mp4").exists()


@pytest.mark.slow
def test_resume_state_stays_small_as_the_video_grows(hub_models, tmp_path):
    # One run stopped after window 2, resumed and stopped after window 11, then after 14 (a fault counts the
    # windows its own process saves): the state as each stop leaves it.
    sizes, out, done = {}, f"{tmp_path / 'run'}/", 0
    for window in (2, 11, 14):
        killed_run(out, f"window_saved:{window - done}", *(["--resume"] if done else []))
        done = window
        state_file = tmp_path / ".run.skyreels" / "state.pt"
        state = torch.load(state_file, weights_only=True)
        history = state["engine"]["decoder"]["history"]
        sizes[window] = state_file.stat().st_size, history.shape[2]
    # The decoder's history grows to its replay length, then stays there however long the video.
    assert sizes[2][1] == 5 + 3 and sizes[11][1] == sizes[14][1] == 32
    assert sizes[11][0] == sizes[14][0]
    latent_frame = 16 * 8 * 8 * 4  # bytes of one fp32 latent frame at 64x64
    assert sizes[14][0] < (32 + 2) * latent_frame + 64_000


@pytest.mark.slow
def test_resume_with_different_settings_names_the_difference(hub_models, tmp_path):
    out = tmp_path / "run"
    killed_run(f"{out}/", "window_saved:1")
    changed = [a if a != str(STEPS) else "4" for a in ARGS]  # --steps 3 -> 4
    result = CliRunner().invoke(app, [*changed, "-o", f"{out}/", "--resume"])
    assert result.exit_code == 2 and "steps" in result.output and "differ" in result.output
