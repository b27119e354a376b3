"""Faults a user meets: damaged caches, a full disk, and runs killed again and again.

Each test runs the installed command in a subprocess, as a user would, and makes the fault
happen at a chosen point (SKYREELS_FAULT, a file-size limit), never after a sleep.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from .conftest import ALIASES, read_png_frames, read_video

# Runs killed and resumed many times, full disks, damaged caches: minutes in all.
pytestmark = pytest.mark.slow

EXE = [sys.executable, "-m", "skyreels_cli"]
TINY = ["t2v", "a red fox", "-m", "tiny", "--device", "cpu", "--steps", "2", "-q", "--overwrite"]
STEPS = 2
LONG = ["extend", "a red fox", "-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64",
        "--steps", str(STEPS), "--frames", "121", "--base-frames", "17", "--overlap", "5", "--seed", "5", "-q"]


def run(args, env=None, limit=None):
    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, preexec_fn=file_size_limit if limit else None)


def one_line_error(done, *words):
    message = done.stderr.strip()
    assert done.returncode == 2 and message.startswith("error: ") and "\n" not in message, done.stderr
    for word in words:
        assert word in message, (word, message)


def test_a_truncated_weights_file_is_named_and_download_force_repairs_it(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert run([*TINY, "-o", tmp_path / "a.mp4"], env).returncode == 0
    weights = tmp_path / "hf" / "skyreels-tiny" / "df" / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for args in ([*TINY, "-o", tmp_path / "b.mp4"], ["download", "tiny"]):
        one_line_error(run(args, env), "damaged", "transformer", "truncated", "skyreels download --force tiny-df")
    assert run(["download", "--force", "tiny", "-q"], env).returncode == 0
    assert run([*TINY, "-o", tmp_path / "b.mp4"], env).returncode == 0


def test_a_missing_file_in_a_local_checkpoint_is_named(hub_models, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(hub_models["df"], folder)
    (folder / "vae" / "config.json").unlink()
    one_line_error(run(["t2v", "a cat", "-m", folder, "--device", "cpu", "-o", tmp_path / "x.mp4"]),
                   "damaged", "vae/config.json is missing")


def test_a_cache_that_cannot_be_written_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(run([*TINY, "-o", tmp_path / "a.mp4"], {"HF_HOME": str(tmp_path / "afile" / "hf")}),
                   "cannot build the tiny model", "HF_HOME")


@pytest.fixture(scope="module")
def straight(hub_models, tmp_path_factory):
    """LONG run without interruption, as an MP4 (".mp4") or PNG frames ("/"): made once for the module's tests that
    compare an interrupted and resumed run with it."""
    folder, made = tmp_path_factory.mktemp("straight"), {}

    def output(suffix: str) -> Path:
        if suffix not in made:
            given = f"{folder / 'straight'}{suffix}"  # "DIR/": PNG frames (a Path would drop the slash)
            assert run([*LONG, "-o", given]).returncode == 0
            made[suffix] = Path(given)
        return made[suffix]

    return output


@pytest.mark.parametrize("suffix", [".mp4", "/"])
def test_a_full_disk_ends_with_one_line_and_resume_finishes_the_video(straight, tmp_path, suffix):
    out = f"{tmp_path / 'full'}{suffix}"
    done = run([*LONG, "-o", out], limit=80_000)  # no file may grow past 80 kB: the state or the preview outgrows it
    one_line_error(done, "cannot", "disk space")
    state = tmp_path / ".full.skyreels" if suffix == "/" else tmp_path / ".full.mp4.skyreels"
    assert (state / "state.pt").is_file() and not list(state.glob("*.tmp"))
    assert run([*LONG, "-o", out, "--resume"]).returncode == 0
    if suffix == "/":
        assert np.array_equal(read_png_frames(tmp_path / "full"), read_png_frames(straight(suffix)))
    else:
        assert (tmp_path / "full.mp4").read_bytes() == straight(suffix).read_bytes()


# Where each run of the soak dies: in a denoising row, in a decode, in the middle of saving the
# state, in an MP4 segment write, while joining the preview, and between windows. Each point is
# counted within its own process, that is within one resumed run.
# Each point once, and the first again at another count (SKYREELS_SOAK_KILLS=N adds N more kills, going round the
# list again: what a longer soak is for).
KILLS = [("denoise_row", 5), ("decode_frame", 9), ("state_saving", 2), ("segment_write", 3), ("concat", 2),
         ("window_saved", 2), ("denoise_row", 3)]


def test_soak_killed_many_times_at_chosen_points_resumes_to_the_same_video(straight, tmp_path):
    extra = int(os.environ.get("SKYREELS_SOAK_KILLS", "0"))  # a longer soak: more rounds of the same points
    kills = KILLS + KILLS * (extra // len(KILLS)) + KILLS[: extra % len(KILLS)]
    out = tmp_path / "soak.mp4"
    survived = 0
    for i, (point, count) in enumerate(kills):
        args = [*LONG, "-o", out] + (["--resume"] if i else [])
        done = run(args, {"SKYREELS_FAULT": f"{point}:{count}"})
        if done.returncode == 0:
            break  # finished before this point was reached again
        assert done.returncode == 137, f"kill {i} at {point}:{count}: {done.stderr}"
        survived += 1
        preview = tmp_path / "soak.partial.mp4"
        if preview.exists():
            assert len(read_video(preview)[0]) > 0, "the partial output does not decode"
        assert not out.exists(), "a half-written file under the final name"
    else:
        assert run([*LONG, "-o", out, "--resume"]).returncode == 0
    assert survived >= len(KILLS) - 2, f"only {survived} kills landed before the video was done"
    assert out.read_bytes() == straight(".mp4").read_bytes()
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["run"]["resumed"] is True
    print(f"soak: {survived} kills survived, final video equal to an uninterrupted run")


def test_ctrl_c_stops_even_inside_one_long_native_operation(straight, tmp_path):
    """The run blocks in native code (as the attention of a huge frame would): the first Ctrl-C
    says it stops at the next step, the second ends it at once, and --resume then finishes it."""
    out = tmp_path / "long.mp4"
    env = {**os.environ, "SKYREELS_FAULT": f"denoise_row:{3 * STEPS + 1}:hang"}  # inside window 4
    proc = subprocess.Popen([*EXE, *LONG, "-o", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    # A deaf run would block the readlines below for ever: past this, it is killed and the asserts fail.
    deadline = threading.Timer(240, proc.kill)
    deadline.start()
    assert proc.stderr.readline().startswith("fault: hanging")
    proc.send_signal(signal.SIGINT)
    assert "Ctrl-C again" in proc.stderr.readline()
    assert proc.poll() is None, "the native operation cannot be interrupted, only the process ended"
    proc.send_signal(signal.SIGINT)
    assert "--resume" in proc.stderr.readline()
    assert proc.wait(timeout=60) == 130
    deadline.cancel()
    assert run([*LONG, "-o", out, "--resume"]).returncode == 0
    assert out.read_bytes() == straight(".mp4").read_bytes()


def test_download_compares_sizes_and_hashes_with_the_hub(hub_models, monkeypatch):
    """Online, download checks every fetched file against the size and sha256 the Hub lists (the
    Hub's answer is stood in for here: the tests have no network)."""
    import hashlib

    from typer.testing import CliRunner

    import skyreels_cli.models.hub as hub
    from skyreels_cli.cli import app

    weights = "transformer/diffusion_pytorch_model.safetensors"
    data = (hub_models["df"] / weights).read_bytes()
    listed = {weights: (len(data), hashlib.sha256(data).hexdigest()), "vae/config.json": (None, None),
              "not/fetched.bin": (5, None)}
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_facts", lambda spec: listed)
    result = CliRunner().invoke(app, ["download", ALIASES["df"], "-q"])
    assert result.exit_code == 0 and "sizes and hashes match the Hub" in result.output, result.output
    listed[weights] = (len(data), "0" * 64)
    result = CliRunner().invoke(app, ["download", ALIASES["df"], "-q"])
    assert result.exit_code == 2 and "differs from the Hub's copy" in result.output
    assert f"skyreels download --force {ALIASES['df']}" in result.output
