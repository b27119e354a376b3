"""Attention kernels (`--attention`) and block-causal attention without a dense (tokens)² mask."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from skyreels_cli.errors import DeviceError, UsageError
from skyreels_cli.forcing.causal_attention import (
    BlockCausalLayout,
    attention_mask_on,
    block_causal_attention,
    block_causal_mask,
    causal_attention,
)
from skyreels_cli.runtime import attention as kernels

from .simulated_gpu import patches


@contextmanager
def backend_on(transformer, name: str) -> Iterator[str]:
    """`apply_backend` for the calls inside; each processor's previous backend is put back afterwards."""
    saved = [(p, p.__dict__.get("_attention_backend")) for p in kernels._processors(transformer)]
    try:
        yield kernels.apply_backend(transformer, name)
    finally:
        for processor, backend in saved:
            if backend is None:  # it had none of its own: fall back to the class default again
                processor.__dict__.pop("_attention_backend", None)
            else:
                processor._attention_backend = backend

TINY_MODULE = "diffusers.models.transformers.transformer_skyreels_v2"
# (causal blocks in latent frames, visible tail frames): the tail is appended as the last block.
LAYOUTS = [((1, 2, 2, 2), 0), ((3, 3), 1), ((1, 2, 2), 1)]


@pytest.fixture(scope="module")
def transformer():
    from skyreels_cli.models.tiny import build_components

    return build_components("df", seed=0)["transformer"].float().eval()


def run_model(model, frames: int, height: int = 8, width: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(frames)
    latents = torch.randn(1, 16, frames, height, width, generator=gen)
    # Noise levels that differ per frame, as in asynchronous diffusion forcing.
    timestep = torch.linspace(900, 0, frames).long()[None]
    text = torch.randn(1, 8, 32, generator=gen)
    with torch.no_grad():
        return model(latents, timestep, text, enable_diffusion_forcing=True, fps=[1], return_dict=False)[0]


def sdpa(q, k, v, mask=None):
    """diffusers' (batch, tokens, heads, dim) layout around torch's SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def with_tail(blocks, tail):
    return blocks + ((tail,) if tail else ())


@pytest.mark.parametrize("blocks,tail", LAYOUTS)
def test_sliced_attention_equals_the_dense_mask(blocks, tail):
    tokens = 3
    layout = BlockCausalLayout(with_tail(blocks, tail), tokens, tail)
    q, k, v = torch.randn(3, 2, layout.tokens, 2, 8).unbind(0)
    ours = block_causal_attention(q, k, v, layout, sdpa)
    dense = sdpa(q, k, v, block_causal_mask(layout.blocks, tokens, "cpu", tail))
    torch.testing.assert_close(ours, dense, atol=1e-6, rtol=1e-5)
    assert (ours - sdpa(q, k, v)).abs().max() > 0.1, "causal and full attention agree: the test proves nothing"


@pytest.mark.parametrize("blocks,tail", LAYOUTS)
def test_transformer_output_equals_the_dense_mask(transformer, blocks, tail):
    frames = sum(blocks) + tail
    layout = with_tail(blocks, tail)
    with attention_mask_on(transformer, block_causal_mask(layout, 16, "cpu", tail)):
        dense = run_model(transformer, frames)
    with causal_attention(transformer, layout, 16, tail):
        ours = run_model(transformer, frames)
    full = run_model(transformer, frames)
    torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-5)
    # Frames after the first block see more under full attention: the outputs must differ there.
    first = blocks[0]
    assert (ours[:, :, :first] - full[:, :, :first]).abs().max() > 1e-2
    assert ours.std(dim=(0, 1, 3, 4)).min() > 0.1, "output flat over a frame"
    assert (ours[:, :, 0] - ours[:, :, -1]).abs().mean() > 0.1, "frames alike: the test proves nothing"


def test_later_blocks_are_not_seen_and_the_tail_is(transformer):
    """Changing only the last causal block leaves earlier frames alone; changing the end image moves them."""
    base = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor([[800, 800, 400, 400, 0]])
    text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2))

    def out(latents, blocks, tail):
        with torch.no_grad(), causal_attention(transformer, blocks, 16, tail):
            return transformer(latents, timestep, text, enable_diffusion_forcing=True, fps=[1], return_dict=False)[0]

    later, end = base.clone(), base.clone()
    later[:, :, 2:5] += 1.0
    end[:, :, 4] += 1.0
    causal = out(base, (2, 3), 0)
    torch.testing.assert_close(out(later, (2, 3), 0)[:, :, :2], causal[:, :, :2], atol=1e-6, rtol=0)
    # With a tail (whose own tokens see every block, as in the dense reference) the first frames move.
    with_end = out(base, (2, 2, 1), 1)
    assert (out(end, (2, 2, 1), 1)[:, :, :2] - with_end[:, :, :2]).abs().max() > 1e-2


def test_model_is_left_exactly_as_it_was(transformer):
    module = sys.modules[TINY_MODULE]
    original = module.dispatch_attention_fn
    before = run_model(transformer, 5)
    config = dict(transformer.config)
    with causal_attention(transformer, (2, 3), 16):
        with causal_attention(transformer, (2, 3), 16):  # nested: only the outer exit restores
            pass
        assert module.dispatch_attention_fn is not original
        inside = run_model(transformer, 5)
    assert module.dispatch_attention_fn is original
    assert all(not block._forward_pre_hooks for block in transformer.blocks)
    assert dict(transformer.config) == config
    assert torch.equal(run_model(transformer, 5), before)
    assert not torch.equal(inside, before)


def test_no_mask_reaches_the_kernel_and_cross_attention_is_untouched(transformer, monkeypatch):
    """Every kernel call is unmasked (so FA2/Sage, which refuse masks, work); attn2 still sees all text."""
    module = sys.modules[TINY_MODULE]
    real = module.dispatch_attention_fn
    calls = []

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[1], key.shape[1], attn_mask))
        return real(query, key, value, attn_mask, **kwargs)

    monkeypatch.setattr(module, "dispatch_attention_fn", spy)
    with causal_attention(transformer, (1, 2, 2), 16):
        run_model(transformer, 5)
    assert all(mask is None for *_, mask in calls)
    layers = len(transformer.blocks)
    self_calls = [(q, k) for q, k, _ in calls if k != 8]
    cross_calls = [(q, k) for q, k, _ in calls if k == 8]
    assert self_calls == [(16, 16), (32, 48), (32, 80)] * layers
    assert cross_calls == [(80, 8)] * layers


class AllocationSizes(TorchDispatchMode):
    """Records the element count of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.sizes.append(t.numel())
        return out


def test_no_quadratic_tensor_is_allocated(transformer):
    # 16x16 latents: 64 tokens per frame, 8 frames, N = 512 tokens and N² = 262,144 elements, far above
    # any other activation here (timestep modulation 6·N·24 = 73,728; FFN N·32).
    blocks, tail = (2, 2, 3), 1
    tokens = sum(blocks + (tail,)) * 64
    with AllocationSizes() as sliced, causal_attention(transformer, (*blocks, tail), 64, tail):
        run_model(transformer, 8, 16, 16)
    with AllocationSizes() as dense:
        mask = block_causal_mask((*blocks, tail), 64, "cpu", tail)
        with attention_mask_on(transformer, mask):
            run_model(transformer, 8, 16, 16)
    assert max(sliced.sizes) < tokens**2 / 3
    assert max(dense.sizes) >= tokens**2, "the dense reference should show the mask"


def test_peak_memory_at_540p_is_linear_in_tokens():
    """One 1.3B self-attention (12 heads x 128, bf16) over a 540p window of 25 latent frames + end image,
    traced on fake tensors: N = 53,040 tokens. The dense mask alone is N² bytes = 2.8 GB (9.1 GB peak with
    SDPA's additive copy, measured the same way); the sliced path stays near q, k, v and the output."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    layout = BlockCausalLayout((5, 5, 5, 5, 5, 1), 2040, visible_tail=1)
    with FakeTensorMode():
        q, k, v = (torch.empty(1, layout.tokens, 12, 128, dtype=torch.bfloat16) for _ in range(3))
        tracker = MemTracker()
        tracker.track_external(q, k, v)
        with tracker:
            block_causal_attention(q, k, v, layout, sdpa)
    peak = sum(device["Total"] for device in tracker.get_tracker_snapshot("peak").values())
    qkv = 3 * q.numel() * 2
    assert qkv < peak < 2.5 * qkv < layout.tokens**2  # q, k, v + output + one copy of visible keys/values


@pytest.mark.parametrize("blocks,tail", LAYOUTS)
@pytest.mark.parametrize("shares", [2, 3, 7])
def test_a_run_of_queries_gets_its_rows_of_the_whole(blocks, tail, shares):
    # A context-parallel rank holds the queries of a run of tokens (starting mid-block) and every key.
    layout = BlockCausalLayout(with_tail(blocks, tail), 3, tail)
    q, k, v = torch.randn(3, 2, layout.tokens, 2, 8).unbind(0)
    whole = block_causal_attention(q, k, v, layout, sdpa)
    bounds = torch.linspace(0, layout.tokens, shares + 1).round().long().tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = block_causal_attention(q[:, start:end], k, v, layout, sdpa, query_start=start)
        torch.testing.assert_close(part, whole[:, start:end], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        block_causal_attention(q[:, 2:], k, v, layout, sdpa, query_start=3)  # runs past the last token


def test_layout_rejects_a_mismatched_sequence():
    layout = BlockCausalLayout((2, 2), 4)
    q = torch.randn(1, 12, 1, 4)
    with pytest.raises(ValueError, match="do not match"):
        block_causal_attention(q, q, q, layout, sdpa)
    with pytest.raises(ValueError, match="last block"):
        BlockCausalLayout((2, 2), 4, visible_tail=1)


# ---- choosing the kernel -------------------------------------------------------------------------


def fake_gpu(monkeypatch, capability=(9, 0), installed=()):
    """Pretend to be on a CUDA GPU of `capability` with only the diffusers backends in `installed` present."""
    for owner, name, value in patches(capability[0] * 10 + capability[1], installed):
        monkeypatch.setattr(owner, name, value)
    return torch.device("cuda")


def test_auto_is_sdpa_on_the_cpu():
    assert kernels.pick_backend("auto", torch.device("cpu")) == "sdpa"
    assert kernels.pick_backend("sdpa", "cpu", torch.float32) == "sdpa"


def test_auto_picks_the_fastest_usable_kernel(monkeypatch):
    hopper = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3", "flash", "sage"))
    assert kernels.pick_backend("auto", hopper, torch.bfloat16) == "flash3"
    assert kernels.pick_backend("auto", hopper, torch.float32) == "sdpa", "FA/Sage need bf16 or fp16"
    ampere = fake_gpu(monkeypatch, (8, 0), installed=("_flash_3", "sage"))
    assert kernels.pick_backend("auto", ampere, torch.bfloat16) == "sage"
    bare = fake_gpu(monkeypatch, (9, 0), installed=())
    assert kernels.pick_backend("auto", bare, torch.bfloat16) == "sdpa"
    hub = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3_hub", "flash_hub"))
    assert kernels.resolve_kernel("auto", hub, torch.bfloat16) == kernels.Picked("flash3", "_flash_3_hub")


@pytest.mark.parametrize("name,hint", [("flash", "--no-build-isolation"), ("flash3", "hopper/"),
                                       ("sage", "thu-ml/SageAttention"), ("xformers", "xformers")])
def test_a_missing_kernel_says_how_to_get_it(monkeypatch, name, hint):
    gpu = fake_gpu(monkeypatch, (9, 0), installed=())
    with pytest.raises(UsageError) as err:
        kernels.pick_backend(name, gpu, torch.bfloat16)
    message = str(err.value)
    assert "\n" not in message and hint in message and "attention='auto'" in message
    if name != "xformers":  # each of the others also comes prebuilt through `kernels`
        assert "pip install kernels" in message


def test_sage_is_bounded_to_the_generations_it_runs_on(monkeypatch):
    """sageattn raises "Unsupported CUDA architecture" outside sm80/86/89/90/120: a B200 (sm100) is refused."""
    for sm, runs in ((80, True), (86, True), (87, False), (89, True), (90, True), (100, False), (120, True)):
        gpu = fake_gpu(monkeypatch, divmod(sm, 10), installed=("sage",))
        assert (kernels.pick_backend("auto", gpu, torch.bfloat16) == "sage") is runs, sm
        if not runs:
            with pytest.raises(DeviceError, match=f"sm{sm}"):
                kernels.pick_backend("sage", gpu, torch.bfloat16)


def test_a_kernel_on_the_wrong_device_says_which_to_use(monkeypatch):
    with pytest.raises(DeviceError, match="not the cpu; use attention='auto' or sdpa"):
        kernels.pick_backend("flash", torch.device("cpu"))
    ampere = fake_gpu(monkeypatch, (8, 6), installed=("_flash_3",))
    with pytest.raises(DeviceError, match="Hopper.*sm86"):
        kernels.pick_backend("flash3", ampere, torch.bfloat16)
    hopper = fake_gpu(monkeypatch, (9, 0), installed=("flash",))
    with pytest.raises(UsageError, match="dtype='bf16'"):
        kernels.pick_backend("flash", hopper, torch.float32)
    with pytest.raises(UsageError, match="choose one of auto, sdpa"):
        kernels.pick_backend("fast", hopper)


def test_split_runs_get_a_kernel_diffusers_splits(monkeypatch):
    """FA3's package and xformers have no context parallelism in diffusers; SDPA's own paths no log-sum-exp."""
    hopper = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3", "flash", "xformers"))
    assert kernels.resolve_kernel("auto", hopper, torch.bfloat16, layout="one").backend == "_flash_3"
    assert kernels.resolve_kernel("auto", hopper, torch.bfloat16, layout="ulysses").backend == "flash"
    assert kernels.resolve_kernel("sdpa", hopper, torch.bfloat16, layout="ring").backend == "_native_flash"
    for name in ("flash3", "xformers"):
        with pytest.raises(UsageError, match="cannot run Ulysses attention.*use attention sdpa or flash") as err:
            kernels.pick_backend(name, hopper, torch.bfloat16, layout="ulysses")
        assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="ring attention on a GPU in bf16/fp16 only.*dtype='bf16'"):
        kernels.pick_backend("sdpa", hopper, torch.float32, layout="ring")
    # known before the model is read: asked-for ring, else Ulysses
    assert [kernels.planned_layout(w, r) for w, r in ((1, None), (8, None), (8, 2), (8, 1))] == \
        ["one", "ulysses", "ring", "ulysses"]


def test_the_table_says_which_kernels_take_a_mask():
    """Only SDPA honours a boolean mask: FA2/FA3/Sage raise on one, xformers adds it as a 0/1 bias."""
    takes = {name for name, c in kernels.ATTENTION_CHOICES.items() if c.takes_mask}
    assert takes == {"sdpa"}
    from diffusers.models.attention_dispatch import AttentionBackendName

    for choice in kernels.ATTENTION_CHOICES.values():
        for backend in choice.backends:
            AttentionBackendName(backend)  # every name maps onto a real diffusers backend


@pytest.fixture(scope="module")
def cuda_loaded(hub_models):
    """The tiny DF transformer loaded as a CUDA run loads it: bf16, diffusers' kept-fp32 layers (no cast)."""
    from skyreels_cli.models.loading import load_components

    return load_components(hub_models["df"], "df", torch.bfloat16, read=("transformer", "scheduler"))["transformer"]


def test_a_bf16_checkpoint_gets_the_fast_kernels(cuda_loaded, monkeypatch):
    """Its first parameter is the kept-fp32 `scale_shift_table`: the dtype must come from the model, not from it."""
    assert next(cuda_loaded.parameters()).dtype == torch.float32, "loading no longer keeps fp32 layers"
    assert kernels.model_dtype(cuda_loaded) == torch.bfloat16
    hopper = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3", "flash", "sage"))
    model = copy.deepcopy(cuda_loaded)
    assert kernels.apply_backend(model, "auto", hopper) == "flash3"
    for name in ("flash", "sage"):
        assert kernels.apply_backend(model, name, hopper) == name
    assert {p._attention_backend.value for p in kernels._processors(model)} == {"sage"}
    # the same checkpoint in fp32 takes SDPA: the dtype read does decide
    fp32 = copy.deepcopy(cuda_loaded).float()
    assert kernels.apply_backend(fp32, "auto", hopper) == "sdpa"


def test_a_checkpoint_that_builds_a_mask_runs_a_kernel_that_takes_it(cuda_loaded, monkeypatch):
    """num_frame_per_block > 1 makes diffusers feed self-attention a dense boolean mask: decided when the kernel
    is set, not found by the kernel (an error) or by xformers (the mask silently a 0/1 bias)."""
    hopper = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3", "flash", "sage", "xformers"))
    model = copy.deepcopy(cuda_loaded)
    assert kernels.apply_backend(model, "auto", hopper) == "flash3"
    model.register_to_config(num_frame_per_block=2)
    assert kernels.apply_backend(model, "auto", hopper) == "sdpa"
    for name in ("flash", "flash3", "sage", "xformers"):
        with pytest.raises(UsageError, match=f"attention='{name}' takes no attention mask.*num_frame_per_block"):
            kernels.apply_backend(model, name, hopper)


def test_a_hub_kernel_that_cannot_be_fetched(cuda_loaded, monkeypatch):
    """`auto` goes on to the next kernel; asked for by name, one line saying how to get it."""
    from diffusers.models import attention_dispatch as ad

    hopper = fake_gpu(monkeypatch, (9, 0), installed=("_flash_3_hub", "flash"))

    def offline(backend):
        if backend.value.endswith("_hub"):
            raise ValueError("Cannot reach the Hub (offline)\nmore")

    monkeypatch.setattr(ad, "_maybe_download_kernel_for_backend", offline)
    model = copy.deepcopy(cuda_loaded)
    assert kernels.apply_backend(model, "auto", hopper) == "flash"
    with pytest.raises(UsageError, match="could not fetch its Hub kernel.*offline") as err:
        kernels.apply_backend(model, "flash3", hopper)
    assert "\n" not in str(err.value)


def test_setting_and_resetting_a_backend_keeps_the_output(transformer):
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
    )

    before = run_model(transformer, 5)
    active = _AttentionBackendRegistry._active_backend
    processors = kernels._processors(transformer)
    assert len(processors) == 2 * len(transformer.blocks)
    with backend_on(transformer, "auto") as picked:
        assert picked == "sdpa"
        assert all(p._attention_backend == AttentionBackendName.NATIVE for p in processors)
        torch.testing.assert_close(run_model(transformer, 5), before, atol=1e-6, rtol=1e-6)
        with causal_attention(transformer, (2, 3), 16):  # causal mode under an explicit kernel
            causal = run_model(transformer, 5)
    assert all("_attention_backend" not in vars(p) for p in processors)
    assert _AttentionBackendRegistry._active_backend == active, "the process-wide default was changed"
    assert torch.equal(run_model(transformer, 5), before)
    with attention_mask_on(transformer, block_causal_mask((2, 3), 16, "cpu")):
        torch.testing.assert_close(causal, run_model(transformer, 5), atol=1e-5, rtol=1e-5)
    assert kernels.apply_backend(transformer, "sdpa") == "sdpa"
    transformer.reset_attention_backend()
    assert torch.equal(run_model(transformer, 5), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_causal_attention_on_cuda_with_the_auto_kernel(cuda_loaded):
    model = copy.deepcopy(cuda_loaded).to("cuda")  # bf16 as loaded, kept-fp32 layers and all
    q, k, v = torch.randn(3, 1, 7 * 64, 2, 64, device="cuda", dtype=torch.bfloat16).unbind(0)
    layout = BlockCausalLayout((1, 2, 2, 2), 64)
    dense = sdpa(q, k, v, block_causal_mask(layout.blocks, 64, "cuda"))
    with backend_on(model, "auto") as picked:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        backend = kernels.ATTENTION_CHOICES[picked].backend
        ours = block_causal_attention(q, k, v, layout, lambda a, b, c: dispatch_attention_fn(a, b, c, backend=backend))
    torch.testing.assert_close(ours.float(), dense.float(), atol=2e-2, rtol=2e-2)


def test_doctor_says_what_each_kernel_needs(monkeypatch):
    """PyPI's sageattention (1.0.6) is too old for diffusers; FA3 is reported; a GPU says what `auto` runs."""
    import importlib.metadata

    from .conftest import invoke

    have = {"sageattention": "1.0.6", "flash_attn_3": "3.0.0b1", "kernels": "0.12.0"}
    real = importlib.metadata.version

    def version(dist):
        if dist in have:
            return have[dist]
        if dist in ("flash-attn", "xformers"):
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    fake_gpu(monkeypatch, (9, 0), installed=("_flash_3",))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 * 2**30, 80 * 2**30))
    lines = {line.split()[0]: line for line in invoke("doctor").output.splitlines() if line.strip()}
    assert "1.0.6, too old for diffusers (needs 2.1.1+)" in lines["sage"] and "thu-ml/SageAttention" in lines["sage"]
    assert lines["flash3"].split()[1] == "3.0.0b1"
    assert "--no-build-isolation" in lines["flash"] and "pip install kernels" in lines["flash"]
    assert "prebuilt flash, flash3, sage" in lines["kernels"]
    assert lines["attention"].endswith("auto on GPU 0: flash3 (bf16)")
