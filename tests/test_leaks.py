"""No model outlives its use: after a benchmark variant and after `del model` the transformer is collectable.

Per-frame modulation and diffusers' hooks bind methods to the model (reference cycles), so a model dies only
when the cycle collector runs. Each test turns the automatic collector off, so only the code under test's
own `gc.collect()` (or the test's, where a user would rely on Python's) can free it: a missing collect fails
every time, not when the collector's timing happens to miss it.
"""

from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

import pytest

import skyreels_cli as sk

from .conftest import ALIASES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_automatic_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", ROOT / "benchmarks" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def watch_builds(gpu_speed, monkeypatch) -> list:
    """Weak references to every transformer the benchmark builds."""
    built = []
    real = gpu_speed.build_transformer

    def build(*args, **kwargs):
        model, arch = real(*args, **kwargs)
        built.append(weakref.ref(model))
        return model, arch

    monkeypatch.setattr(gpu_speed, "build_transformer", build)
    return built


@pytest.mark.slow
def test_each_benchmark_variant_leaves_no_model_behind(gpu_speed, monkeypatch, no_automatic_gc):
    args, spec, device = gpu_speed.parse(["--smoke", "--steps", "1", "--steps-in-schedule", "4"])
    built = watch_builds(gpu_speed, monkeypatch)
    for name in ("modulation", "fp8", "batched-cfg"):
        result = gpu_speed.measure(name, gpu_speed.VARIANTS[name], spec, args, device)
        assert result["s_per_step"] > 0
        assert built[-1]() is None, f"variant {name}: its model is still reachable after measure returned"
    # The check can fail: a model kept alive by a cycle is still there without a collect.
    model, _ = gpu_speed.build_transformer(spec, device, True)
    from skyreels_cli.runtime.modulation import install_per_frame_modulation

    install_per_frame_modulation(model)
    ref = weakref.ref(model)
    del model
    assert ref() is not None
    gpu_speed.release(device)
    assert ref() is None


@pytest.mark.slow
def test_a_model_deleted_after_a_run_frees_its_transformer(hub_models, tmp_path, no_automatic_gc):
    """What a user (or the service swapping models) relies on: del model, and its memory can go."""
    model = sk.load(ALIASES["df"], device="cpu", offload="group", quantize="fp8", progress=False)
    model.generate(sk.Request(prompt="a fox", height=64, width=64, frames=17, steps=2, seed=1),
                   output=f"{tmp_path}/fox/", progress=False)
    ref = weakref.ref(model.components["transformer"])
    del model
    gc.collect()
    assert ref() is None, "the transformer is still reachable after del model"
