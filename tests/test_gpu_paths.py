"""What only a GPU run or a multi-process launch executes, with the machine's facts simulated (issue 21).

Each test puts the code at the point a CUDA machine would: a missing C compiler for Triton, torchrun's
environment for `--gpus`, an out-of-memory on a card whose memory is given.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from skyreels_cli.errors import DeviceError
from skyreels_cli.runtime import compile as C
from skyreels_cli.runtime import launch as L

from .conftest import SMALL, invoke, one_line_error

# ------------------------------------------------------------------ --compile needs a C compiler on CUDA (item 8)

def no_compilers(monkeypatch, keep: tuple[str, ...] = ()) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: real(name, *a, **k) if name in keep else None)
    monkeypatch.delenv("CC", raising=False)


def test_compile_on_cuda_without_a_c_compiler_is_refused_naming_the_fix(monkeypatch):
    no_compilers(monkeypatch)
    with pytest.raises(DeviceError, match=r"on CUDA needs a C compiler for Triton.*apt-get install gcc"):
        C.check_compile(torch.device("cuda"))


def test_compile_on_cuda_with_a_c_compiler_passes_and_cc_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/gcc" if name == "gcc" else None)
    C.check_compile(torch.device("cuda"))  # gcc is there
    monkeypatch.setenv("CC", "my-cc")  # Triton uses $CC when it is set: it must exist
    with pytest.raises(DeviceError, match="C compiler"):
        C.check_compile(torch.device("cuda"))


def test_compile_on_the_cpu_without_a_cxx_compiler_is_one_line_before_loading(hub_models, monkeypatch):
    no_compilers(monkeypatch)
    message = one_line_error(invoke("t2v", "a fox", "-m", "tiny", *SMALL, "--compile", "-o", "x.mp4"))
    assert "C++ compiler" in message


# ------------------------------------------------------------------ --gpus: each process's CPU threads (item 9)

def launched_env(monkeypatch, count: int) -> dict:
    seen = {}
    monkeypatch.setattr(L, "check_gpus", lambda wanted: None)
    monkeypatch.setattr("subprocess.call", lambda cmd, env: seen.update(env) or 0)
    assert L.launch(count, ["t2v", "a fox"]) == 0
    return seen


def test_gpus_gives_each_process_its_share_of_the_cores_not_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert launched_env(monkeypatch, 2)["OMP_NUM_THREADS"] == "8"  # torchrun alone would set 1
    assert launched_env(monkeypatch, 4)["OMP_NUM_THREADS"] == "4"
    assert L.threads_per_process(8, cpus=4) == 1


def test_gpus_keeps_the_users_own_thread_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launched_env(monkeypatch, 2)["OMP_NUM_THREADS"] == "3"


# ------------------------------------------------------------------ out-of-memory advice (item 4)

@pytest.mark.slow  # full-size traces (cached after the first run)
def test_out_of_memory_advice_plans_for_the_budget_not_the_memory_the_failed_run_still_holds(monkeypatch):
    import types

    from skyreels_cli.core.model import Model
    from skyreels_cli.core.request import Request
    from skyreels_cli.errors import OutOfMemory
    from skyreels_cli.models.naming import resolve_model
    from skyreels_cli.runtime import plan as P

    spec, cuda = resolve_model("df-14b-540p"), torch.device("cuda")
    chosen, _ = P.resolve_plan(spec, cuda, vram_gb=24)
    # After the failure the model and the forward's tensors are still on the card: almost nothing is free.
    monkeypatch.setattr(P, "free_vram_gb", lambda device=None: 0.4)
    monkeypatch.setattr("skyreels_cli.core.model.total_vram_gb", lambda device=None: 80.0)
    failed = types.SimpleNamespace(spec=spec, device=cuda, memory=chosen, memory_budget_gb=24.0, _kept="kept",
                                   adapter_bytes=0)

    def advice(model) -> str:
        with pytest.raises(OutOfMemory) as caught, Model.out_of_memory(model, Request(prompt="a fox")):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return str(caught.value)

    better = P.smaller_plan(spec, cuda, chosen, vram_gb=24)
    assert better is not None and better != chosen
    assert f"try {P.flags(better)}" in advice(failed)  # a plan that fits the 24 GB it was chosen for
    # Without a budget (nothing was planned for a size): the card's whole memory, still not what is free now.
    bigger = P.smaller_plan(spec, cuda, chosen, vram_gb=80)
    assert bigger is not None and f"try {P.flags(bigger)}" in advice(types.SimpleNamespace(**{
        **vars(failed), "memory_budget_gb": None}))
