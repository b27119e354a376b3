"""Context parallelism on the CPU: real processes (torchrun, gloo) give the frames of one process.

Two ranks and the tiny models (2 heads: Ulysses 2, or ring 2 on torch's CPU flash kernel, which returns
the log-sum-exp ring attention needs). Timesteps differ per frame in diffusion forcing, and each rank's
80/2 = 40 tokens end mid-frame (16 tokens a frame): a rank given the wrong modulation rows would differ.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels_cli.runtime import parallel as P

from .conftest import ALIASES, read_png_frames

SIZE = ["--device", "cpu", "--height", "64", "--width", "64", "--steps", "3", "--seed", "5", "-q"]
# two windows of 5 latent frames (17 pixel frames) with an overlap of 2: 29 frames
EXTEND = ["extend", "a red fox running", "-m", ALIASES["df"], "--frames", "29", "--base-frames", "17",
          "--overlap", "5", *SIZE]
T2V = ["t2v", "a red fox", "-m", ALIASES["t2v"], "--frames", "17", *SIZE]
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _single(args: list[str], output: Path) -> np.ndarray:
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args, "-o", f"{output}/"], env=_env(),
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_png_frames(output)


def _torchrun(args: list[str], *, script: Path | None = None, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    target = [str(script)] if script else ["-m", "skyreels_cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--monitor-interval=0.5", *target, *args]
    return subprocess.run(cmd, env=_env(**(env or {})), check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def extend_reference(hub_models, tmp_path_factory) -> np.ndarray:
    frames = _single(EXTEND, tmp_path_factory.mktemp("single") / "extend")
    assert frames.shape[0] == 29 and frames.std() > 1
    return frames


def _assert_same_frames(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    diff = np.abs(ours.astype(int) - reference.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    # the comparison must be able to fail: the frames move, within and across windows
    assert np.abs(np.diff(reference.astype(int), axis=0)).mean() > 1


@pytest.mark.parametrize("layout", [["--ulysses", "2"], ["--ring", "2"]], ids=["ulysses", "ring"])
def test_two_window_extend_equals_one_process(layout, extend_reference, tmp_path):
    out = tmp_path / "parallel"
    done = _torchrun([*EXTEND, *layout, "-o", f"{out}/"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [f"{out}/"] or done.stdout.strip() == str(out), done.stdout
    _assert_same_frames(read_png_frames(out), extend_reference)


def test_t2v_with_gpus_flag_equals_one_process(hub_models, tmp_path):
    reference = _single(T2V, tmp_path / "single")
    out = tmp_path / "parallel"
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *T2V, "--gpus", "2", "-o", f"{out}/"], env=_env(),
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.strip().splitlines()) == 1, "only rank 0 prints the path"
    _assert_same_frames(read_png_frames(out), reference)


def test_dead_rank_stops_the_others_and_resume_finishes(extend_reference, tmp_path):
    wrapper = tmp_path / "rank_fault.py"
    wrapper.write_text(  # the fault only in rank 1: it dies in the middle of window 2
        "import os, runpy, sys\n"
        "if os.environ.get('RANK') == '1':\n"
        "    os.environ['SKYREELS_FAULT'] = 'denoise_row:5'\n"
        "sys.argv[0] = 'skyreels'\n"
        "runpy.run_module('skyreels_cli', run_name='__main__')\n")
    out = tmp_path / "killed"
    started = time.monotonic()
    done = _torchrun([*EXTEND, "-o", f"{out}/"], script=wrapper, timeout=120)
    took = time.monotonic() - started
    assert done.returncode != 0 and not out.exists(), done.stderr[-2000:]
    assert took < 60, f"the surviving rank took {took:.0f} s to stop"
    partial = tmp_path / "killed.partial"
    assert len(list(partial.glob("[0-9]*.png"))) == 17, "window 1 kept"
    resumed = subprocess.run([sys.executable, "-m", "skyreels_cli", *EXTEND, "-o", f"{out}/", "--resume"],
                             env=_env(), check=False, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_frames(read_png_frames(out), extend_reference)


# ------------------------------------------------------------------ pure functions, in process


def test_frame_rows_give_each_token_its_frame():
    frames, per_frame, world = 5, 16, 2
    table = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1)  # row f holds f
    token_frame = torch.arange(frames * per_frame) // per_frame
    for rank in range(world):
        local = frames * per_frame // world
        rows = P.frame_rows(table, local, world, rank)
        mine = token_frame[rank * local:(rank + 1) * local]
        assert torch.equal(rows.flatten().repeat_interleave(local // rows.shape[2]), mine.float())
    assert P.frame_rows(table, 40, 2, 1).shape[2] == 5  # 8-token groups: 5 rows for 2.5 frames


def test_layout_choice_and_errors():
    assert P.choose_layout(40, 8) == P.Layout(8, 1)
    assert P.choose_layout(12, 8) == P.Layout(4, 2)  # 1.3B on 8 GPUs: Ulysses 4 x ring 2
    assert P.choose_layout(12, 8, ring=8) == P.Layout(1, 8)
    with pytest.raises(P.UsageError, match="valid choices: --ulysses 4 --ring 2, --ulysses 2 --ring 4"):
        P.choose_layout(12, 8, ulysses=8)
    with pytest.raises(P.UsageError, match="must equal the 2 processes"):
        P.choose_layout(2, 2, ulysses=2, ring=2)


def test_gpus_flag_is_taken_out():
    assert P.strip_gpus(["extend", "x", "--gpus", "4", "-q"]) == (4, ["extend", "x", "-q"])
    assert P.strip_gpus(["t2v", "--gpus=2"]) == (2, ["t2v"])
    with pytest.raises(P.UsageError, match="whole number"):
        P.strip_gpus(["t2v", "--gpus", "two"])
    if not torch.cuda.is_available():
        with pytest.raises(P.DeviceError, match="no GPU is visible"):
            P.check_gpus(2)
