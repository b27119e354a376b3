"""The run options end to end: memory plans, kernels, compilation and the step cache through `skyreels` and `sk.load`.

On the CPU host and device are one, so every offload plan and the text encoder on the host must give exactly the
plain run's frames while their hooks and moves really run. The options that change the arithmetic (batched
guidance, tiled decode, fp8 weights, compilation, the step cache) are held to a stated closeness, and each is shown
to do something. Options that need CUDA or a missing package are refused in one line before anything is loaded or
written; an out-of-memory keeps the finished windows and resumes to the uninterrupted frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import skyreels_cli as sk
import skyreels_cli.core.model
import skyreels_cli.runtime.plan
from skyreels_cli.forcing.engine import DiffusionForcingEngine
from skyreels_cli.runtime.memory import MemoryPlan

from .conftest import invoke, read_png_frames

SIZE = ["--device", "cpu", "--height", "64", "--width", "64"]
# Two windows: 8 latent frames in windows of 5 that overlap by 2; 4 steps, two guidance passes: 8 calls a window.
EXTEND = ["extend", "a red fox", "-m", "tiny", *SIZE, "--frames", "29", "--base-frames", "17", "--overlap", "5",
          "--steps", "4", "--seed", "3"]
REQUEST = sk.Request(prompt="a red fox", height=64, width=64, frames=29, base_frames=17, overlap=5, steps=4, seed=3)
CALLS_PER_WINDOW = 8
# What the sidecar records for a run with no run options on the CPU: the plain path.
PLAIN = {"offload": "none", "quantize": "none", "cfg": "separate", "tiled_decode": False,
         "text_encoder_device": "auto", "attention": "sdpa", "compile": False}


def levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a.astype(int) - b.astype(int))


def one_line_error(result, code: int = 2) -> str:
    message = result.output.strip()
    assert result.exit_code == code, message
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    return message


@dataclass
class Run:
    frames: np.ndarray
    sidecar: dict
    seconds: float

    @property
    def runtime(self) -> dict:
        return self.sidecar["run"]["runtime"]


class Runs:
    """`extend` runs by their extra options (the last of a repeated option wins), each made once per module:
    several tests compare with the same reference."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[str, ...], Run] = {}

    def __call__(self, *options: str) -> Run:
        if options not in self._done:
            out = self.root / f"run{len(self._done)}"
            started = time.perf_counter()
            result = invoke(*EXTEND, *options, "-o", f"{out}/", "-q")
            assert result.exit_code == 0, result.output
            self._done[options] = Run(read_png_frames(out), json.loads((out / "settings.json").read_text()),
                                      time.perf_counter() - started)
        return self._done[options]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def plain(runs) -> Run:
    run = runs()
    assert run.frames.shape == (29, 64, 64, 3)
    # The frames move in time and space: a comparison with them proves something.
    assert run.frames.std(axis=0).mean() > 5 and run.frames.std(axis=(1, 2)).mean() > 5
    assert run.runtime == PLAIN and run.sidecar["model"]["quantize"] == "none"
    return run


# ------------------------------------------------------------------ 1. every plan option gives the plain frames

EXACT = {
    "offload model": (["--offload", "model"], {"offload": "model"}),
    "offload group": (["--offload", "group"], {"offload": "group"}),
    "offload sequential": (["--offload", "sequential"], {"offload": "sequential"}),
    "text encoder on the cpu": (["--text-encoder-device", "cpu"], {"text_encoder_device": "cpu"}),
    "attention sdpa": (["--attention", "sdpa"], {}),
    # The VAE's tiles are 256 pixels: a 64x64 picture is one tile, decoded untiled as diffusers does.
    "tiled decode within one tile": (["--tiled-decode"], {"tiled_decode": True}),
}


@pytest.mark.parametrize("options,recorded", EXACT.values(), ids=EXACT.keys())
@pytest.mark.slow
def test_an_exact_plan_option_gives_the_plain_frames(runs, plain, options, recorded):
    run = runs(*options)
    assert np.array_equal(run.frames, plain.frames)
    assert run.runtime == {**PLAIN, **recorded}


@pytest.mark.slow
def test_batched_guidance_is_within_one_level(runs, plain):
    run = runs("--cfg", "batched")
    assert levels(run.frames, plain.frames).max() <= 1
    assert run.runtime == {**PLAIN, "cfg": "batched"}


def test_tiled_decode_tiles_a_picture_wider_than_one_tile(runs):
    """272 pixels are 34 latent columns: two of the VAE's 32-latent tiles, blended over pixel columns 192-255."""
    wide = ("--height", "32", "--width", "272")  # twice the plain picture, in a band: quick
    untiled, tiled = runs(*wide), runs(*wide, "--tiled-decode")
    diff = levels(tiled.frames, untiled.frames)
    assert diff.max() > 1, "the picture was not tiled"
    by_column = diff.mean(axis=(0, 1, 3))
    assert 192 <= by_column.argmax() < 256, "the largest differences are not at the seam between the tiles"
    assert by_column[192:256].mean() > 3 * by_column[:128].mean()
    assert diff.mean() < 1.5
    assert tiled.runtime == {**PLAIN, "tiled_decode": True}


def fp8_rounded_frames(model_options: dict) -> np.ndarray:
    """The frames of a plain model whose weights went through fp8 and back, on exactly the layers fp8 stores."""
    stored = sk.load("tiny", device="cpu", quantize="fp8", progress=False)
    rounded = {n for n, p in stored.components["transformer"].named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert len(rounded) > 10 and "blocks.0.attn1.to_q.weight" in rounded
    model = sk.load("tiny", device="cpu", progress=False, **model_options)
    with torch.no_grad():
        for name, p in model.components["transformer"].named_parameters():
            if name in rounded:
                p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
    return np.concatenate([w.frames for w in model.stream(REQUEST)])


def test_fp8_weights_give_the_frames_of_fp8_rounded_weights(runs, plain):
    run = runs("--quantize", "fp8")
    assert np.array_equal(run.frames, fp8_rounded_frames({}))  # storage only: nothing else changes
    diff = levels(run.frames, plain.frames)
    # Close, not identical: 5.9 levels on average (74 at most) on the tiny random model; another seed moves 11.
    assert 2 < diff.mean() < 8
    assert run.runtime == {**PLAIN, "quantize": "fp8"} and run.sidecar["model"]["quantize"] == "fp8"


ALL = ["--offload", "group", "--text-encoder-device", "cpu", "--tiled-decode", "--cfg", "batched",
       "--attention", "sdpa"]


@pytest.mark.parametrize("alone", [["--causal-attention"], ["--quantize", "fp8"]], ids=["causal", "fp8"])
def test_all_options_together_stay_within_one_level(runs, plain, alone):
    reference, together = runs(*alone), runs(*alone, *ALL)
    assert levels(reference.frames, plain.frames).mean() > 2, f"{alone} changes nothing"
    assert levels(together.frames, reference.frames).max() <= 1
    quantize = alone[1] if alone[0] == "--quantize" else "none"
    assert together.runtime == {**PLAIN, "offload": "group", "text_encoder_device": "cpu", "tiled_decode": True,
                                "cfg": "batched", "quantize": quantize}
    assert together.sidecar["request"]["causal_attention"] is (alone == ["--causal-attention"])


# ------------------------------------------------------------------ 2. the step cache


@pytest.mark.slow
def test_step_cache_skips_calls_counts_them_and_says_so(runs, tmp_path):
    out = tmp_path / "cached"
    result = invoke(*EXTEND, "--steps", "6", "--cache", "0.05", "-o", f"{out}/")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "settings.json").read_text())
    cache = sidecar["run"]["step_cache"]
    assert sidecar["request"]["cache"] == 0.05 and cache["threshold"] == 0.05
    assert cache["calls"] == 2 * 6 * 2 and 0 < cache["skipped"] < cache["calls"]
    assert [w["calls"] for w in cache["windows"]] == [12, 12] and sum(w["skipped"] for w in cache["windows"]) == \
        cache["skipped"]
    assert f"step cache: skipped {cache['skipped']} of {cache['calls']} model calls" in result.stderr
    uncached = runs("--steps", "6")
    assert "step_cache" not in uncached.sidecar["run"]
    diff = levels(read_png_frames(out), uncached.frames)
    # Skipped calls change the frames a little: 4.2 levels on average at 6 steps (each step is a large one).
    assert diff.max() > 1 and diff.mean() < 6, diff.mean()


# ------------------------------------------------------------------ 3. refused in one line, nothing loaded or written

T2V = ["t2v", "a cat", "-m", "tiny-t2v", *SIZE, "--frames", "17", "--steps", "2"]
REFUSED = [
    (["--attention", "flash"], ["--attention flash", "NVIDIA Ampere", "not the cpu"]),
    (["--attention", "flash3"], ["--attention flash3", "Hopper", "not the cpu"]),
    (["--attention", "sage"], ["--attention sage", "NVIDIA sm80", "not the cpu"]),
    (["--attention", "xformers"], ["--attention xformers", "NVIDIA GPUs", "not the cpu"]),
    (["--attention", "flash", "--dry-run"], ["--attention flash", "not the cpu"]),
    (["--attention", "bogus"], ["--attention 'bogus' is not known", "sdpa"]),
    (["--quantize", "int8"], ["--quantize int8 needs torchao", "pip install torchao"]),
    (["--quantize", "int4"], ["--quantize 'int4'", "none, fp8, int8"]),
    (["--offload", "disk"], ["--offload 'disk'", "auto, none, model, group, sequential"]),
    (["--cfg", "both"], ["--cfg 'both'", "auto, separate, batched"]),
    (["--text-encoder-device", "gpu"], ["--text-encoder-device 'gpu'", "use one of auto, disk, cpu"]),
    (["--cache", "2"], ["--cache 2.0 must be between 0 (off) and 1"]),
    (["--cache", "nan"], ["--cache nan must be between 0 (off) and 1"]),
    ([*T2V, "--cache", "0.05"], ["applies to diffusion forcing models only", "tiny-t2v"]),
    ([*T2V, "--cfg", "batched"], ["--cfg batched needs a diffusion forcing model"]),
]


@pytest.mark.parametrize("args,words", REFUSED, ids=[" ".join(a[-2:]) for a, _ in REFUSED])
def test_an_option_that_cannot_run_is_one_line_before_anything_loads(args, words, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    monkeypatch.setitem(sys.modules, "torchao", None)  # int8 without torchao, even where it is installed

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the option was refused")

    monkeypatch.setattr(skyreels_cli.core.model, "load_components", no_load)
    command = args if args[0] == "t2v" else [*EXTEND, *args]
    message = one_line_error(invoke(*command, "-o", f"{tmp_path / 'out'}/"))
    for word in words:
        assert word in message, (word, message)
    assert not list(tmp_path.iterdir()), "something was written"


# ------------------------------------------------------------------ 4. dry run and `skyreels plan`


def test_dry_run_prints_the_memory_plan_and_writes_nothing(tmp_path):
    result = invoke(*EXTEND, "--offload", "group", "--cfg", "batched", "--dry-run", "-o", f"{tmp_path / 'x'}/")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("memory plan: ")]
    assert len(lines) == 1 and "offload group" in lines[0] and "cfg batched" in lines[0], result.stdout
    assert not list(tmp_path.iterdir())


def test_plan_json_has_one_chosen_plan_that_fits():
    result = invoke("plan", "df-1.3b-540p", "--vram", "8", "--json")
    assert result.exit_code == 0, result.output
    plans = json.loads(result.stdout)
    chosen = [p for p in plans if p["chosen"]]
    assert len(plans) > 10 and len(chosen) == 1
    assert chosen[0]["fits"] and chosen[0]["peak_gb"] <= 8
    assert any(not p["fits"] for p in plans), "8 GB should leave some plans out"


def test_plan_of_a_tiny_model_is_one_line():
    message = one_line_error(invoke("plan", "tiny"))
    assert "tiny test model" in message


# ------------------------------------------------------------------ 5. out of memory in the second window

FITS = MemoryPlan(offload="group", quantize="fp8", cfg="separate", tiled_decode=True)


@pytest.mark.parametrize("smaller,hint", [
    (FITS, "try --offload group --quantize fp8 --cfg separate --tiled-decode"),
    (None, "no smaller plan is predicted to fit: try a smaller --height/--width or --base-frames"),
], ids=["a plan fits", "none fits"])
@pytest.mark.slow
def test_out_of_memory_names_the_plan_keeps_the_first_window_and_resumes(runs, plain, tmp_path, monkeypatch,
                                                                        smaller, hint):
    real, calls = DiffusionForcingEngine._model, []

    def out_of_memory(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == CALLS_PER_WINDOW + 3:  # the second window's second row
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    asked = []

    def smaller_plan(spec, device, plan, shape=None, vram_gb=None):
        asked.append((plan, shape.height, shape.width, shape.decoded_frames))
        return smaller

    monkeypatch.setattr(DiffusionForcingEngine, "_model", out_of_memory)
    monkeypatch.setattr(skyreels_cli.core.model, "smaller_plan", smaller_plan)
    out = tmp_path / "oom"
    args = [*EXTEND, "--offload", "model", "-o", f"{out}/", "-q"]
    message = one_line_error(invoke(*args))
    assert message.startswith("error: the GPU ran out of memory with --offload model --quantize none --cfg separate")
    assert hint in message and message.endswith("the finished windows are kept: run the same command with --resume to continue")
    assert asked == [(MemoryPlan(offload="model"), 64, 64, 17)]
    partial = read_png_frames(tmp_path / "oom.partial")
    assert np.array_equal(partial, plain.frames[:17]), "the first window's frames are not kept"
    assert (tmp_path / ".oom.skyreels" / "state.pt").is_file() and not out.exists()

    monkeypatch.setattr(DiffusionForcingEngine, "_model", real)
    refused = one_line_error(invoke(*args, "--cache", "0.05", "--resume"))  # the cache is part of the request
    assert "cache" in refused and "differ" in refused
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert np.array_equal(read_png_frames(out), plain.frames)
    assert json.loads((out / "settings.json").read_text())["run"]["resumed"] is True


# ------------------------------------------------------------------ 6. the weights' storage is part of a resume


@pytest.mark.slow
def test_a_run_started_with_fp8_resumes_only_with_fp8(runs, tmp_path):
    out = tmp_path / "fp8"
    args = [*EXTEND, "--quantize", "fp8", "-q", "-o", f"{out}/"]
    env = {**os.environ, "SKYREELS_FAULT": "window_saved:1"}
    killed = subprocess.run([sys.executable, "-m", "skyreels_cli", *args], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert killed.returncode == 137, killed.stderr
    message = one_line_error(invoke(*args, "--quantize", "none", "--resume"))
    assert "started with --quantize fp8" in message and "--quantize none" in message
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert np.array_equal(read_png_frames(out), runs("--quantize", "fp8").frames)
    sidecar = json.loads((out / "settings.json").read_text())
    assert sidecar["run"]["resumed"] is True and sidecar["run"]["runtime"]["quantize"] == "fp8"


# ------------------------------------------------------------------ 7. compilation


@pytest.mark.slow
def test_compile_on_the_cpu_matches_eager_within_one_level(runs):
    one_window = ("--frames", "17", "--steps", "2")
    eager, compiled = runs(*one_window), runs(*one_window, "--compile")
    assert levels(compiled.frames, eager.frames).max() <= 1
    assert eager.frames.std(axis=0).mean() > 5
    assert compiled.runtime == {**PLAIN, "compile": True}
    print(f"--compile: {compiled.seconds:.1f} s, eager {eager.seconds:.1f} s")


# ------------------------------------------------------------------ 8. the Python API


@pytest.mark.slow
def test_api_loads_with_run_options_and_generates_twice(runs, tmp_path):
    model = sk.load("tiny", device="cpu", offload="model", cfg="batched", progress=False)
    assert model.memory == MemoryPlan(offload="model", cfg="batched")
    assert model.runtime == {**PLAIN, "offload": "model", "cfg": "batched"}
    assert "offload model" in model.memory_reason and "cfg batched" in model.memory_reason
    dog = model.generate(sk.Request(prompt="the dog", height=64, width=64, frames=29, base_frames=17, overlap=5,
                                    steps=4, seed=4), f"{tmp_path / 'dog'}/")
    fox = model.generate(REQUEST, f"{tmp_path / 'fox'}/")
    # The second run on the same model is the CLI's (model offload is exact; guidance is batched in both).
    assert np.array_equal(read_png_frames(fox.path), runs("--cfg", "batched").frames)
    assert levels(read_png_frames(dog.path), read_png_frames(fox.path)).mean() > 2
    for result in (dog, fox):
        assert result.runtime == model.runtime and result.step_cache is None
        assert json.loads(result.sidecar.read_text())["run"]["runtime"] == model.runtime


def test_api_refuses_a_kernel_that_cannot_run_before_loading(monkeypatch):
    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the kernel was refused")

    monkeypatch.setattr(skyreels_cli.core.model, "load_components", no_load)
    with pytest.raises(sk.DeviceError, match="attention='sage' needs"):
        sk.load("tiny", device="cpu", attention="sage", progress=False)
    with pytest.raises(sk.UsageError, match="attention='fastest' is not known"):
        sk.load("tiny", device="cpu", attention="fastest", progress=False)
