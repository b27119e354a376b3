"""Context parallelism on the CPU: real processes (torchrun, gloo) give the frames of one process.

Two ranks and the tiny models (2 heads: Ulysses 2, or ring 2 on torch's CPU flash kernel, which returns
the log-sum-exp ring attention needs). Timesteps differ per frame in diffusion forcing, and each rank's
80/2 = 40 tokens end mid-frame (16 tokens a frame): a rank given the wrong modulation rows would differ.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels_cli.runtime import launch as L
from skyreels_cli.runtime import parallel as P

from .conftest import ALIASES, read_png_frames

# Real torchrun processes (gloo): minutes in all.
pytestmark = pytest.mark.slow

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
    """torchrun with two processes, through our quiet wrapper (runtime/torchrun.py) as --gpus starts it."""
    target = [str(script)] if script else ["-m", "skyreels_cli"]
    cmd = [sys.executable, "-m", "skyreels_cli.runtime.torchrun", "--standalone", "--nproc-per-node=2",
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


@pytest.mark.parametrize("resume_on", ["one process", "two processes"])
def test_dead_rank_stops_the_others_and_resume_finishes(resume_on, extend_reference, tmp_path):
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
    # the survivor says so on one line (its collective failed, or its watchdog noticed), with no traceback
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the same command with --resume" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    partial = tmp_path / "killed.partial"
    assert len(list(partial.glob("[0-9]*.png"))) == 17, "window 1 kept"
    resume = [*EXTEND, "-o", f"{out}/", "--resume"]
    if resume_on == "one process":
        resumed = subprocess.run([sys.executable, "-m", "skyreels_cli", *resume], env=_env(), check=False,
                                 capture_output=True, text=True, timeout=300)
    else:  # both ranks continue from the state rank 0 saved
        resumed = _torchrun([*resume, "--ring", "2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_frames(read_png_frames(out), extend_reference)


def test_stalled_rank_stops_the_run_naming_it_within_the_bound(hub_models, tmp_path):
    """Rank 1 stalls alive after step 2 (blocked in native code: its watchdog still beats) while rank 0 waits for
    it in step 3's collective, which would wait for its 30-minute timeout: the watchdog stops the run in seconds."""
    out = tmp_path / "stalled"
    env = {"SKYREELS_FAULT": "step_done:2:hang", "SKYREELS_FAULT_RANK": "1", P.STALL_ENV: "4"}
    started = time.monotonic()
    done = _torchrun([*EXTEND, "-o", f"{out}/"], env=env, timeout=150)
    took = time.monotonic() - started
    assert "fault: hanging at step_done" in done.stderr, done.stderr[-2000:]  # the stall happened where chosen
    assert done.returncode != 0 and not out.exists(), done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all(e == errors[0] for e in errors), done.stderr[-2000:]
    assert errors[0].startswith("error: rank 1 made no progress for ")
    assert "(window 1: step 2 of 3 done) while rank 0 waited for it" in errors[0], errors[0]
    assert "SKYREELS_STALL_S" in errors[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors[0].endswith("(the finished windows are kept: run the same command with --resume to continue)")
    assert took < 120, f"the run took {took:.0f} s to stop"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A start image, an end image, and another start image (to show that the image is used)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    y, x = np.mgrid[0:64, 0:64]
    start = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    paths = folder / "start.png", folder / "end.png", folder / "other.png"
    for path, pixels in zip(paths, (start, start[::-1, ::-1], 255 - start)):
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return paths


def _sidecar(out: Path) -> dict:
    return json.loads((out / "settings.json").read_text())


def test_i2v_equals_one_process_and_the_others_read_only_the_transformer(hub_models, images, tmp_path):
    start, _, other = images
    i2v = ["i2v", str(start), "the waves roll in", "-m", ALIASES["i2v"], "--frames", "17", *SIZE]
    reference = _single(i2v, tmp_path / "single")
    other_image = _single(["i2v", str(other), *i2v[2:]], tmp_path / "other")
    # the image steers the frames: a rank given the wrong image latents or embeddings would show
    assert np.abs(other_image.astype(int) - reference.astype(int)).max() > 20
    out = tmp_path / "parallel"
    done = _torchrun([*i2v, "--ulysses", "2", "-o", f"{out}/"])
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_frames(read_png_frames(out), reference)

    ranks = _sidecar(out)["run"]["runtime"]["parallel"]
    assert ranks["processes"] == 2 and ranks["ulysses"] == 2 and len(ranks["startup_s"]) == 2
    assert all(0 < s < 300 for s in ranks["startup_s"])
    # rank 1 read the transformer's weights only: no text encoder, image encoder or VAE
    transformer = safetensors_bytes(hub_models["i2v"] / "transformer")
    everything = sum(safetensors_bytes(folder) for folder in hub_models["i2v"].iterdir() if folder.is_dir())
    assert ranks["loaded_bytes"] == [everything, transformer] and everything > 2 * transformer
    info = subprocess.run([sys.executable, "-m", "skyreels_cli", "info", str(out)], env=_env(), check=False,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "parallel: 2 processes (ulysses 2), ready in" in info.stdout, info.stdout


def safetensors_bytes(folder: Path) -> int:
    """Bytes of tensor data in a component folder's safetensors files, read from the files themselves."""
    from safetensors.torch import load_file

    return sum(t.numel() * t.element_size() for file in folder.glob("*.safetensors")
               for t in load_file(file).values())


@pytest.fixture(scope="module")
def causal_reference(hub_models, images, tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """Two windows from a start image to an end image with block-causal attention, on one process."""
    start, end, _ = images
    args = [*EXTEND, "--image", str(start), "--end-image", str(end), "--causal-block", "1"]
    plain = _single(args, tmp_path_factory.mktemp("plain") / "out")
    causal = _single([*args, "--causal-attention"], tmp_path_factory.mktemp("causal") / "out")
    # causal attention changes the frames: a rank attending over the wrong keys would show
    assert np.abs(causal.astype(int) - plain.astype(int)).max() > 5
    return [*args, "--causal-attention"], causal


@pytest.mark.parametrize("layout", [["--ulysses", "2"], ["--ring", "2"]], ids=["ulysses", "ring"])
def test_causal_attention_from_image_to_image_equals_one_process(layout, causal_reference, tmp_path):
    # 6 latent frames a window (5 and the end image) of 16 tokens: each rank's 48 tokens end mid-frame
    args, reference = causal_reference
    out = tmp_path / "parallel"
    done = _torchrun([*args, *layout, "-o", f"{out}/"])
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_frames(read_png_frames(out), reference)


def test_continuing_a_video_equals_one_process(hub_models, tmp_path):
    clip = tmp_path / "clip.mp4"
    made = subprocess.run([sys.executable, "-m", "skyreels_cli", *T2V, "-o", str(clip)], env=_env(), check=False,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    # rank 0 encodes the video's last frames and copies the video into the output; the others get the latents
    args = ["extend", "the fox keeps running", "-m", ALIASES["df"], "--video", str(clip), "--frames", "20",
            "--base-frames", "17", "--overlap", "5", *SIZE]
    reference = _single(args, tmp_path / "single")
    assert reference.shape[0] == 17 + 20
    out = tmp_path / "parallel"
    done = _torchrun([*args, "--ulysses", "2", "-o", f"{out}/"])
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_frames(read_png_frames(out), reference)


API_SCRIPT = """
import sys
import skyreels_cli as sk

model = sk.load(sys.argv[1], device="cpu", progress=False)  # under torchrun: joins the group, loads once
for seed in (5, 6):
    request = sk.Request(prompt="a red fox running", frames=29, base_frames=17, overlap=5, height=64, width=64,
                         steps=3, seed=seed)
    result = model.generate(request, output=f"{sys.argv[2]}/{seed}/")  # every rank calls it; rank 0 writes
    print(f"rank {model.parallel.rank}: {None if result is None else result.frames}")
"""


def test_python_api_under_torchrun_loads_once_and_generates_twice(extend_reference, tmp_path):
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    done = _torchrun([ALIASES["df"], str(tmp_path / "out")], script=script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.split("\n")[:-1]) == ["rank 0: 29", "rank 0: 29", "rank 1: None", "rank 1: None"]
    _assert_same_frames(read_png_frames(tmp_path / "out" / "5"), extend_reference)  # as the command line made it
    assert np.abs(read_png_frames(tmp_path / "out" / "6").astype(int) - extend_reference.astype(int)).max() > 20


def _one_line_refusal(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args], env=_env(), check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_layout_flags_on_one_process_are_refused(hub_models, tmp_path):
    for flags in (["--ulysses", "2"], ["--ring", "2", "--dry-run"]):
        _one_line_refusal([*T2V, *flags, "-o", f"{tmp_path}/x/"], "add --gpus N")
    assert not (tmp_path / "x").exists()


def test_a_size_that_does_not_split_is_one_line_through_gpus(hub_models, tmp_path):
    # 80x48: 15 tokens a latent frame, 5 latent frames: 75 tokens do not halve. torchrun adds nothing to the line.
    args = ["extend", "a red fox", "-m", ALIASES["df"], "--frames", "17", "--height", "48", "--width", "80",
            "--device", "cpu", "--gpus", "2", "-o", f"{tmp_path}/x/"]
    _one_line_refusal(args, "do not split evenly over 2 processes: use 3 or 5 processes")
    _one_line_refusal([*args, "--dry-run"], "do not split evenly")
    assert not list(tmp_path.iterdir())


def test_split_check_counts_every_call():
    from skyreels_cli.core.request import Request
    from skyreels_cli.core.resolve import check_split, resolve
    from skyreels_cli.models.naming import resolve_model

    spec = resolve_model(ALIASES["df"])
    request = resolve(Request(prompt="a fox", frames=29, base_frames=17, overlap=5, height=64, width=64, seed=1), spec)
    check_split(request, spec, 2)
    check_split(request, spec, 5)  # 16 tokens a frame, windows of 5 latent frames: 80 tokens
    with pytest.raises(P.UsageError, match="calls of 5 and 6 latent frames.*: use 2, 4 or 8 processes"):
        # the last window also holds the end image: 96 tokens, which 5 does not divide
        check_split(replace(request, end_image="end.png"), spec, 5)


MAIN_FIRST_SCRIPT = """
import sys, time
from pathlib import Path
from skyreels_cli.errors import ModelError
from skyreels_cli.runtime.parallel import init_parallel

folder = Path(sys.argv[1])
p = init_parallel("cpu", watchdog=False)

def build():  # rank 0 finishes only once rank 1 is waiting
    while not (folder / "waiting").exists():
        time.sleep(0.01)
    (folder / "built").write_text("x")
    return "built"

if p.is_main:
    print("rank 0:", p.main_first("build", build))
else:
    (folder / "waiting").write_text("x")
    print("rank 1 finds it built:", p.main_first("build", lambda: (folder / "built").exists()))

def fail():
    raise ModelError("no space left")

try:
    p.main_first("download", fail if p.is_main else lambda: "ran anyway")
except ModelError as exc:
    print(f"rank {p.rank} stopped: {exc}")
p.close()
"""


def test_the_others_wait_for_the_first_and_stop_when_it_fails(tmp_path):
    script = tmp_path / "main_first.py"
    script.write_text(MAIN_FIRST_SCRIPT)
    done = _torchrun([str(tmp_path)], script=script, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.strip().splitlines()) == [
        "rank 0 stopped: no space left", "rank 0: built",
        "rank 1 finds it built: True", "rank 1 stopped: the first process could not download (it says why); "
        "this one stops too"]


def test_gpus_on_a_fresh_cache_builds_the_model_and_runs(tmp_path):
    # no model in this cache: rank 0 builds the tiny checkpoint while rank 1 waits (main_first, whose order
    # the test above holds), then both load it
    home = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", "t2v", "a red fox", "-m", "tiny", "--frames", "5",
                           *SIZE, "--gpus", "2", "-o", f"{tmp_path}/out/"], env=_env(HF_HOME=str(home)),
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_png_frames(tmp_path / "out")) == 5
    assert (home / "skyreels-tiny" / "df" / "model_index.json").is_file()


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
    with pytest.raises(P.UsageError, match="valid choices: ulysses=4 ring=2, ulysses=2 ring=4"):
        P.choose_layout(12, 8, ulysses=8)
    with pytest.raises(P.UsageError, match="must equal the 2 processes"):
        P.choose_layout(2, 2, ulysses=2, ring=2)


def test_gpus_flag_is_taken_out():
    assert L.strip_gpus(["extend", "x", "--gpus", "4", "-q"]) == (4, ["extend", "x", "-q"])
    assert L.strip_gpus(["t2v", "--gpus=2"]) == (2, ["t2v"])
    with pytest.raises(P.UsageError, match="whole number"):
        L.strip_gpus(["t2v", "--gpus", "two"])
    if not torch.cuda.is_available():
        with pytest.raises(L.DeviceError, match="no GPU is visible"):
            L.check_gpus(2)
