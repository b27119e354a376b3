"""The attention kernel chosen for every GPU generation x installed kernels x layout, with diffusers deciding.

No GPU and no kernel package is here, so both are simulated: the compute capability (`torch.cuda`) and which
backends diffusers finds usable (`_check_attention_backend_requirements`, the one test diffusers itself runs
before setting a backend; Hub kernels are taken as fetched). Everything else is real: the tiny checkpoint is
loaded as a CUDA run loads it (bf16, diffusers' kept-fp32 layers, fp32 VAE), our choice is set on it, and under
Ulysses and ring diffusers' own `enable_parallelism` validates it on a two-process gloo group. Each verdict is
then held against facts gathered independently: what the GPU runs, what diffusers' validation accepts for every
installed backend of the kernel (tried one by one), and which backends return the log-sum-exp ring attention
merges with (read from diffusers' source).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from skyreels_cli.runtime import attention as kernels

from .simulated_gpu import HUB, PACKAGED, Simulated

# The generations a release may meet: A100, RTX 30, L40/RTX 40, H100, B200, RTX 50.
SMS = (80, 86, 89, 90, 100, 120)
# What each kernel runs on, from the kernels' own documentation (not from our table).
RUNS_ON = {
    "flash": lambda sm: sm >= 80,  # FlashAttention-2: Ampere, Ada, Hopper and newer
    "flash3": lambda sm: sm == 90,  # FlashAttention-3: Hopper only
    "sage": lambda sm: sm in (80, 86, 89, 90, 120),  # sageattn raises "Unsupported CUDA architecture" otherwise
    "xformers": lambda sm: True,
    "sdpa": lambda sm: True,
}
INSTALLED = {
    "bare": (),
    "fa2": ("flash",),
    "fa3": ("_flash_3",),
    "fa3+fa2": ("_flash_3", "flash"),
    "sage": ("sage",),
    "xformers": ("xformers",),
    "kernels": HUB,
    "all": ("flash", "_flash_3", "sage", "xformers", *HUB),
}
LAYOUTS = {"one": None, "ulysses": (2, 1), "ring": (1, 2)}  # (ulysses, ring) on two processes
NAMES = kernels.NAMES
CASES = [(sm, kit, layout, name) for sm in SMS for kit in INSTALLED for layout in LAYOUTS for name in NAMES]


def _key(sm, kit, layout, name) -> str:
    return f"sm{sm}/{kit}/{layout}/{name}"


# ------------------------------------------------------------------ what each rank runs


def _validate(transformer, backend: str | None, layout, parallel, meshes) -> str | None:
    """The verdict on `transformer` split as `layout` says: None when accepted, else the error.

    With `backend` given: diffusers' own verdict on that backend, our ring switch and check left out."""
    from skyreels_cli.runtime.attention import _set_backend

    model = copy.deepcopy(transformer)
    ours = parallel._ring_backend, parallel._check_backend
    try:
        if backend is not None:
            _set_backend(model, backend)
            parallel._ring_backend = parallel._check_backend = lambda *args: None
        if layout is not None:
            with meshes:
                parallel.enable_context_parallel(model, parallel.Layout(*layout), torch.device("cpu"),
                                                 per_frame=False)
    except Exception as exc:  # noqa: BLE001  recorded, judged by the test
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        parallel._ring_backend, parallel._check_backend = ours
    return None


class _Meshes:
    """One device mesh per layout for the whole table (each mesh is a new process group on every rank)."""

    def __init__(self, parallel):
        self.parallel, self.cache, self.real = parallel, {}, parallel._mesh

    def __enter__(self):
        def mesh(device, layout):
            if layout not in self.cache:
                self.cache[layout] = self.real(device, layout)
            return self.cache[layout]

        self.parallel._mesh = mesh

    def __exit__(self, *exc):
        self.parallel._mesh = self.real


def _rank(rank: int, port: int, folder: str, out: str) -> None:
    import torch.distributed as dist

    from skyreels_cli.errors import SkyreelsError
    from skyreels_cli.models.loading import load_components
    from skyreels_cli.runtime import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # As a CUDA run loads it: bf16 with the kept-fp32 layers, fp32 VAE (models/loading.py).
    transformer = load_components(Path(folder), "df", torch.bfloat16, read=("transformer", "scheduler"))["transformer"]
    meshes = _Meshes(parallel)
    verdicts, each = {}, {}
    for sm, kit, layout, name in CASES:
        with Simulated(sm, INSTALLED[kit]):
            kind = "one" if LAYOUTS[layout] is None else ("ring" if LAYOUTS[layout][1] > 1 else "ulysses")
            verdict = {}
            try:
                verdict["picked"] = kernels.apply_backend(transformer, name, torch.device("cuda"), layout=kind)
                backends = {getattr(p._attention_backend, "value", p._attention_backend)
                            for p in kernels._processors(transformer)}
                assert len(backends) == 1, backends  # every processor, self- and cross-attention
                verdict["backend"] = backend = backends.pop()
                if (backend, layout, "as set") not in each:  # splitting a model depends only on these
                    each[backend, layout, "as set"] = _validate(transformer, None, LAYOUTS[layout], parallel, meshes)
                verdict["diffusers"] = each[backend, layout, "as set"]
            except SkyreelsError as exc:
                verdict["refused"] = str(exc)
            except Exception as exc:  # noqa: BLE001  a raw error is the fault this table looks for
                verdict["crashed"] = f"{type(exc).__name__}: {exc}"
            # diffusers' own verdict on every backend of the kernel that is installed, tried one by one (the
            # same on every GPU: diffusers does not look at it before a call).
            choice = kernels.ATTENTION_CHOICES.get(name)
            for b in choice.backends if choice else ():
                if (b, layout) not in each and (b not in PACKAGED or b in INSTALLED[kit]):
                    each[b, layout] = _validate(transformer, b, LAYOUTS[layout], parallel, meshes)
            verdict["each"] = {b: each[b, layout] for b in (choice.backends if choice else ())
                               if b not in PACKAGED or b in INSTALLED[kit]}
        verdicts[_key(sm, kit, layout, name)] = verdict
    with Simulated(90, INSTALLED["all"]):  # our guard in front of diffusers' (a bare ValueError)
        model = copy.deepcopy(transformer)
        kernels._set_backend(model, "xformers")
        verdicts["guard"] = _validate(model, None, LAYOUTS["ulysses"], parallel, meshes)
    if rank == 0:
        Path(out).write_text(json.dumps(verdicts))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def verdicts(hub_models, tmp_path_factory) -> dict:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("verdicts") / "verdicts.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(hub_models["df"]), str(out)), nprocs=2, join=True)
    return json.loads(out.read_text())


# ------------------------------------------------------------------ facts from diffusers' source


def _returns_lse(backend: str) -> bool:
    """Whether diffusers' function for `backend` can return the log-sum-exp: its source does not refuse it."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    source = inspect.getsource(_AttentionBackendRegistry._backends[AttentionBackendName(backend)])
    return re.search(r"raise ValueError\([^)]*return_lse", source, re.S) is None


def test_the_log_sum_exp_table_is_diffusers_source():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    ours = {b for c in kernels.ATTENTION_CHOICES.values() for b in c.backends}
    splits = ours & _AttentionBackendRegistry._supports_context_parallel
    assert {b for b in splits if _returns_lse(b)} == kernels.RETURNS_LSE & ours
    assert not _returns_lse("native") and _returns_lse("_native_flash")  # the check can tell them apart
    with pytest.raises(ValueError, match="return_lse"):  # and the source is right: native refuses
        from diffusers.models.attention_dispatch import _native_attention_forward_op

        q = torch.randn(1, 4, 2, 8)
        _native_attention_forward_op(None, q, q, q, return_lse=True, _save_ctx=False)


def test_diffusers_does_not_split_fa3_or_xformers():
    """The review's finding, from the registry: the FA3 package and xformers have no context parallelism."""
    assert not kernels.runs_layout("_flash_3", "ulysses") and not kernels.runs_layout("xformers", "ulysses")
    assert kernels.runs_layout("_flash_3_hub", "ring") and kernels.runs_layout("flash", "ring")
    assert kernels.runs_layout("native", "ulysses") and not kernels.runs_layout("native", "ring")


# ------------------------------------------------------------------ the table


def _expected_auto(verdicts: dict, sm: int, kit: str, layout: str) -> str:
    """`auto`: the fastest kernel that runs on the GPU and that diffusers accepted with an installed backend."""
    for name in kernels.AUTO_ORDER:
        if RUNS_ON[name](sm) and _passes_somewhere(verdicts, sm, kit, layout, name):
            return name
    return "sdpa"


def _passes_somewhere(verdicts: dict, sm, kit, layout, name) -> bool:
    """Whether an installed backend of kernel `name` was accepted by diffusers (and returns the log-sum-exp
    where ring attention needs it)."""
    each = verdicts[_key(sm, kit, layout, name)]["each"]
    return any(error is None and (layout != "ring" or _returns_lse(b)) for b, error in each.items())


@pytest.mark.slow
@pytest.mark.parametrize("sm", SMS)
@pytest.mark.parametrize("kit", list(INSTALLED))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_kernel_chosen_runs(verdicts, sm, kit, layout):
    for name in NAMES:
        verdict = verdicts[_key(sm, kit, layout, name)]
        where = f"{name} on sm{sm} with {kit} installed, {layout}: {verdict}"
        assert "crashed" not in verdict, where
        if "refused" in verdict:
            message = verdict["refused"]
            assert "\n" not in message, where
            # Refused only where no installed backend of it runs here, as diffusers and the GPU say.
            assert name != "auto", where
            assert not (RUNS_ON[name](sm) and _passes_somewhere(verdicts, sm, kit, layout, name)), where
            continue
        assert verdict["diffusers"] is None, where  # diffusers accepts what we set
        backend, picked = verdict["backend"], verdict["picked"]
        assert RUNS_ON[picked](sm), where
        assert backend not in PACKAGED or backend in INSTALLED[kit], where
        assert layout != "ring" or _returns_lse(backend), where
        if name == "auto":
            assert picked == _expected_auto(verdicts, sm, kit, layout), where
        else:
            assert picked == name, where


@pytest.mark.slow
def test_the_table_can_fail(verdicts):
    """The verdicts differ where the facts do: FA3 on an H100 runs alone, not split without its Hub build."""
    assert verdicts[_key(90, "fa3", "one", "auto")]["picked"] == "flash3"
    assert verdicts[_key(90, "fa3", "ulysses", "flash3")].get("refused")
    assert verdicts[_key(90, "fa3", "ulysses", "auto")]["picked"] == "sdpa"
    assert verdicts[_key(90, "fa3+fa2", "ring", "auto")]["picked"] == "flash"
    assert verdicts[_key(90, "kernels", "ring", "auto")]["backend"] == "_flash_3_hub"
    assert verdicts[_key(100, "sage", "one", "sage")].get("refused")
    assert verdicts[_key(120, "sage", "one", "auto")]["picked"] == "sage"
    assert verdicts[_key(90, "xformers", "ulysses", "xformers")].get("refused")
    assert verdicts[_key(90, "bare", "ring", "sdpa")]["backend"] == "_native_flash"
    assert verdicts["guard"].startswith("UsageError: the attention backend xformers cannot run ulysses 2")
    # diffusers' own validation is what refuses: the FA3 package split over processes fails there.
    assert "does not support context parallelism" in verdicts[_key(90, "fa3", "ulysses", "flash3")]["each"]["_flash_3"]


# ------------------------------------------------------------------ ring's fallback kernel on the GPU


def _flash_cuda_like(seen: list):
    """diffusers' `_native_flash` forward op as the CUDA kernel behaves: head sizes that are not a multiple of 8
    refused; the numbers from torch's CPU flash kernel (same maths, returns the log-sum-exp)."""

    def op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
           return_lse=False, _save_ctx=True, _parallel_config=None):
        seen.append(query.shape[-1])
        if query.shape[-1] % 8:
            raise RuntimeError("FlashAttention only supports head dimensions that are multiples of 8")
        if query.device.type == "meta":
            out, lse = torch.empty_like(query), query.new_empty(query.shape[:-1])
        else:
            q, k, v = (x.transpose(1, 2) for x in (query, key, value))
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
            out, lse = out.transpose(1, 2), lse.transpose(1, 2)
        return (out, lse) if return_lse else out

    return op


def test_ring_fallback_pads_the_tiny_head_size():
    """The tiny models' heads are 12 wide; torch's CUDA flash kernel takes multiples of 8 only. Zero padding
    leaves the output's columns and the log-sum-exp exactly as they were."""
    from skyreels_cli.runtime import parallel

    seen: list[int] = []
    kernel = _flash_cuda_like(seen)
    q, k, v = torch.randn(3, 1, 40, 2, 12).unbind(0)
    with pytest.raises(RuntimeError, match="multiples of 8"):  # the fault, unpadded
        kernel(None, q, k, v, return_lse=True)
    padded = parallel.padded_head_dim(kernel)
    out, lse = padded(None, q, k, v, return_lse=True)
    assert seen[-1] == 16 and out.shape == q.shape
    reference = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*(x.transpose(1, 2) for x in (q, k, v)))
    torch.testing.assert_close(out, reference[0].transpose(1, 2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, reference[1].transpose(1, 2), atol=1e-6, rtol=1e-5)
    # the comparison can fail: padding with the wrong scale (that of 16 columns) moves the output
    wrong = kernel(None, *(torch.nn.functional.pad(x, (0, 4)) for x in (q, k, v)))[..., :12]
    assert (wrong - out).abs().max() > 1e-3
    assert torch.equal(padded(None, q[..., :8], k[..., :8], v[..., :8]), kernel(None, q[..., :8], k[..., :8], v[..., :8]))


def test_ring_fallback_on_the_gpu_goes_through_the_padding(monkeypatch):
    """Tensors off the CPU reach diffusers' own op, padded (meta tensors stand in for CUDA ones)."""
    from diffusers.models import attention_dispatch as ad

    from skyreels_cli.runtime import parallel

    seen: list[int] = []
    monkeypatch.setattr(ad, "_native_flash_attention_forward_op", _flash_cuda_like(seen))
    parallel._route_native_flash_on_cpu()
    q = torch.empty(1, 40, 2, 12, device="meta")
    out, lse = ad._native_flash_attention_forward_op(None, q, q, q, return_lse=True)
    assert seen == [16] and out.shape == q.shape and lse.shape == (1, 40, 2)


# ------------------------------------------------------------------ before anything loads


def test_a_kernel_that_cannot_run_split_is_refused_before_loading(hub_models):
    """`--attention flash3 --gpus 2` with only FA3's package: refused by `check`, which loads nothing."""
    import skyreels_cli as sk
    from skyreels_cli.errors import UsageError
    from skyreels_cli.runtime.parallel import Parallel

    from .conftest import ALIASES

    two = Parallel(0, 2, 0, torch.device("cuda"))
    request = sk.Request(prompt="a cat", height=64, width=64, frames=17, steps=2)
    with Simulated(90, ("_flash_3",)):
        for load, says in ((sk.LoadOptions(attention="flash3"), "flash3.*cannot run Ulysses attention"),
                           (sk.LoadOptions(attention="xformers"), "xformers.*not installed"),
                           (sk.LoadOptions(attention="sdpa", ring=2, dtype="fp32"), "ring attention.*bf16/fp16")):
            with pytest.raises(UsageError, match=says):
                sk.check(sk.Job("t2v", request, model=ALIASES["t2v"], load=load), parallel=two)


def test_the_service_refuses_a_kernel_that_cannot_run_split(hub_models):
    """A job of `"gpus": 2` asking for FA3's package: a 400 naming `attention`, before it is queued."""
    from dataclasses import replace

    import skyreels_cli as sk
    from skyreels_cli.service.admission import _check_layout
    from skyreels_cli.service.fields import HttpError

    from .conftest import ALIASES

    request = sk.Request(prompt="a cat", height=64, width=64, frames=17, steps=2)
    checked = sk.check(sk.Job("t2v", request, model=ALIASES["t2v"], load=sk.LoadOptions(device="cpu")))
    on_gpu = replace(checked, device=torch.device("cuda"), dtype="bf16")
    with Simulated(90, ("_flash_3", "flash")):
        _check_layout(on_gpu, sk.LoadOptions(attention="flash"), 2)  # FA2 splits
        with pytest.raises(HttpError) as err:
            _check_layout(on_gpu, sk.LoadOptions(attention="flash3"), 2)
    assert err.value.status == 400 and err.value.param == "attention" and "Ulysses" in err.value.message


def test_a_checkpoint_that_builds_a_mask_is_refused_a_maskless_kernel_before_its_weights(hub_models, tmp_path,
                                                                                      monkeypatch):
    """A local checkpoint whose config sets num_frame_per_block 2 (diffusers then builds a dense mask): `--attention
    flash` on a GPU is refused once the config is read, before any weight is; the released layout loads on."""
    import shutil

    import skyreels_cli as sk
    from skyreels_cli.core import model as core_model
    from skyreels_cli.errors import UsageError

    folder = tmp_path / "masked"
    shutil.copytree(hub_models["df"], folder)  # files, not links into the shared cache
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "num_frame_per_block": 2}))

    class Loaded(Exception):
        pass

    def load_components(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * 2**30, 80 * 2**30))
    monkeypatch.setattr(core_model, "load_components", load_components)
    with Simulated(90, ("flash",)):
        with pytest.raises(UsageError, match="attention='flash' takes no attention mask"):
            sk.load(str(folder), attention="flash", device="cuda", progress=False)
        with pytest.raises(Loaded):  # auto: SDPA, which takes the mask
            sk.load(str(folder), attention="auto", device="cuda", progress=False)
        with pytest.raises(Loaded):  # the released layout: FlashAttention as asked
            sk.load(str(hub_models["df"]), attention="flash", device="cuda", progress=False)
