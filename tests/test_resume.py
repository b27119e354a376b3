"""A long run killed with SIGKILL and resumed gives exactly the uninterrupted output."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.media.videos import read_video

from .conftest import ALIASES, read_png_frames

# 12 windows of tiny work: long enough to be killed in the middle.
ARGS = ["extend", "a red fox", "-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64",
        "--steps", "3", "--frames", "149", "--base-frames", "17", "--overlap", "5", "--seed", "11", "-q"]


def kill_after_first_saved_window(output: str, work_dir) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "skyreels_cli", *ARGS, "-o", output],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (work_dir / "state.pt").exists():
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no state saved in time"
        time.sleep(0.01)
    time.sleep(0.3)  # land somewhere inside a later window
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def resume(output: str) -> None:
    result = CliRunner().invoke(app, [*ARGS, "-o", output, "--resume"])
    assert result.exit_code == 0, result.output


def uninterrupted(output: str) -> None:
    result = CliRunner().invoke(app, [*ARGS, "-o", output])
    assert result.exit_code == 0, result.output


def test_killed_png_run_resumes_to_identical_frames(hub_models, tmp_path):
    out = tmp_path / "killed"
    kill_after_first_saved_window(f"{out}/", out / ".skyreels")
    assert not (out / "settings.json").exists()
    written = len(list(out.glob("[0-9]*.png")))
    assert 0 < written < 149
    resume(f"{out}/")
    uninterrupted(f"{tmp_path / 'straight'}/")
    ours, reference = read_png_frames(out), read_png_frames(tmp_path / "straight")
    assert ours.shape[0] == 149 and np.array_equal(ours, reference)
    assert json.loads((out / "settings.json").read_text())["run"]["resumed"] is True
    assert not (out / ".skyreels").exists()


def test_killed_mp4_run_plays_midway_and_resumes_identically(hub_models, tmp_path):
    out = tmp_path / "fox.mp4"
    kill_after_first_saved_window(str(out), tmp_path / ".fox.mp4.skyreels")
    assert not out.exists(), "a partial file under the final name"
    preview, _ = read_video(tmp_path / "fox.partial.mp4")
    assert 0 < len(preview) < 149 and preview.shape[1:] == (64, 64, 3)
    resume(str(out))
    uninterrupted(str(tmp_path / "straight.mp4"))
    assert out.read_bytes() == (tmp_path / "straight.mp4").read_bytes()
    assert not (tmp_path / "fox.partial.mp4").exists()


def test_resume_with_different_settings_names_the_difference(hub_models, tmp_path):
    out = tmp_path / "run"
    kill_after_first_saved_window(f"{out}/", out / ".skyreels")
    changed = [a if a != "3" else "4" for a in ARGS]  # --steps 3 -> 4
    result = CliRunner().invoke(app, [*changed, "-o", f"{out}/", "--resume"])
    assert result.exit_code == 2 and "steps" in result.output and "differ" in result.output
