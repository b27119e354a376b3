"""Memory plans applied to a loaded model: weight storage, offload hooks, and which component is where per phase.

Numerics run the tiny DF components on the CPU (host and device are one there, so every offload plan must
give exactly the no-offload result while its hooks really run). Where components go is checked on stand-in
modules that record the moves asked of them, for a CUDA run, without a GPU. A CUDA test runs every plan for
real and checks outputs and the order of peak memory.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from skyreels_cli.errors import UsageError
from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime.memory import (
    MemoryPlan,
    apply_offload_hooks,
    apply_quantization,
    is_skipped,
    skipped_patterns,
)
from skyreels_cli.runtime.placement import Placement

CPU = torch.device("cpu")
FRAMES = 5  # latent frames: 17 pixel frames at 64x64
PLANS = ("none", "model", "group", "sequential")


@pytest.fixture(scope="module")
def tiny() -> dict:
    return build_components("df", seed=3)


def fresh(components: dict, dtype: torch.dtype = torch.float32) -> dict:
    """A copy to apply a plan to (plans change modules in place); the transformer in `dtype`."""
    out = {name: copy.deepcopy(c) if isinstance(c, torch.nn.Module) else c for name, c in components.items()}
    out["transformer"] = out["transformer"].to(dtype)
    return out


def inputs(text_dim: int = 32) -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "latents": torch.randn(1, 16, FRAMES, 8, 8, generator=g),
        # Each frame at its own noise level, as in diffusion forcing: wrong per-frame handling shows.
        "timestep": torch.tensor([[999, 800, 560, 300, 40]]),
        "embeds": torch.randn(1, 12, text_dim, generator=g),
    }


def forward(transformer, x: dict) -> torch.Tensor:
    dtype, device = transformer.dtype, transformer.device
    with torch.no_grad():
        return transformer(
            hidden_states=x["latents"].to(device, dtype), timestep=x["timestep"].to(device),
            encoder_hidden_states=x["embeds"].to(device, dtype), enable_diffusion_forcing=True, fps=[1],
            return_dict=False,
        )[0].float().cpu()


def device_of(module) -> str:
    return next(module.parameters()).device.type


@torch.no_grad()
def run_phases(placement: Placement, prompt: str = "a red fox running through the snow") -> dict:
    """Prompt -> embeddings -> one denoising forward -> decoded pixels, each in its phase, as a run does;
    records where every component was inside each phase."""
    c, dev = placement.components, placement.device
    x, seen = inputs(), {}
    ids = c["tokenizer"](prompt, return_tensors="pt").input_ids
    with placement.encoding() as encoder:
        seen["encoding"] = {n: device_of(c[n]) for n in ("text_encoder", "transformer", "vae")}
        embeds = encoder(ids.to(placement.text_encoder_device)).last_hidden_state.to(dev)
    with placement.denoising() as transformer:
        seen["denoising"] = {n: device_of(c[n]) for n in ("text_encoder", "transformer", "vae")}
        v = forward(transformer, {**x, "embeds": embeds})
    with placement.decoding() as vae:
        seen["decoding"] = {n: device_of(c[n]) for n in ("text_encoder", "transformer", "vae")}
        pixels = vae.decode(v[:, :, :2].to(dev, vae.dtype)).sample.float().cpu()
    return {"embeds": embeds.float().cpu(), "velocity": v, "pixels": pixels, "seen": seen}


def n_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def varies_across_frames(v: torch.Tensor) -> bool:
    return (v[:, :, 0] - v[:, :, -1]).abs().max() > 0.1 and v.std() > 0.1


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("field, value, option", [
    ("offload", "disk", "--offload"), ("quantize", "fp4", "--quantize"),
    ("text_encoder_device", "gpu", "--text-encoder-device"), ("cfg", "both", "--cfg"),
])
def test_unknown_names_are_one_line_usage_errors(field, value, option):
    with pytest.raises(UsageError) as info:
        MemoryPlan(**{field: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{field}={value!r} is not known; use one of ")


def test_auto_offload_must_be_resolved_by_the_planner_first():
    with pytest.raises(UsageError, match="offload='auto' must be resolved"):
        MemoryPlan(offload="auto")


def test_functions_check_names_too(tiny):
    transformer = tiny["transformer"]
    with pytest.raises(UsageError, match="quantize='nf4' is not known"):
        apply_quantization(transformer, "nf4")
    with pytest.raises(UsageError, match="offload='disk' is not known"):
        apply_offload_hooks(transformer, "disk", CPU)


# ------------------------------------------------------------------ weight storage


def test_fp8_stores_weights_in_float8_and_computes_like_fp8_rounded_bf16(tiny):
    bf16 = fresh(tiny, torch.bfloat16)["transformer"]
    fp8 = apply_quantization(copy.deepcopy(bf16), "fp8")
    skip = skipped_patterns(fp8)
    stored = {name: p.dtype for name, p in fp8.named_parameters()}
    assert stored["blocks.0.attn1.to_q.weight"] == torch.float8_e4m3fn
    assert stored["blocks.1.ffn.net.2.weight"] == torch.float8_e4m3fn
    assert stored["patch_embedding.weight"] == stored["blocks.0.norm2.weight"] == torch.bfloat16
    linears = {name: m for name, m in fp8.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {name for name in linears if is_skipped(name, skip)}
    assert kept and len(kept) < len(linears)
    for name, linear in linears.items():  # every Linear in fp8 except the precision-critical ones
        assert linear.weight.dtype == (torch.bfloat16 if name in kept else torch.float8_e4m3fn), name
    quantized = sum(p.numel() for p in fp8.parameters() if p.dtype == torch.float8_e4m3fn)
    assert n_bytes(fp8) == n_bytes(bf16) - quantized  # one byte saved per fp8 weight
    assert fp8.dtype == torch.bfloat16  # the compute dtype: what the engine casts latents to

    # Exactly a bf16 model whose non-skipped weights went through fp8 and back: storage only, no other change.
    rounded = copy.deepcopy(bf16)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if stored[name] == torch.float8_e4m3fn:
                p.copy_(p.to(torch.float8_e4m3fn).to(torch.bfloat16))
    x = inputs()
    out, ref = forward(fp8, x), forward(bf16, x)
    assert torch.equal(out, forward(rounded, x))
    assert varies_across_frames(ref)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 1e-3 < rel < 0.2, rel  # visibly not bf16, but within fp8's 3-bit mantissa of it


def test_int8_without_torchao_says_how_to_install_it(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(UsageError) as info:
        apply_quantization(copy.deepcopy(tiny["transformer"]), "int8")
    assert "pip install torchao" in str(info.value) and "\n" not in str(info.value)


def test_int8_quantizes_block_linears_when_torchao_is_there(tiny):
    transformer = copy.deepcopy(tiny["transformer"]).to(torch.bfloat16)
    try:
        import torchao  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install torchao"):
            apply_quantization(transformer, "int8")
        return
    x = inputs()
    ref = forward(transformer, x)
    apply_quantization(transformer, "int8")
    assert type(transformer.blocks[0].attn1.to_q.weight) is not torch.nn.Parameter
    for skipped in (transformer.condition_embedder.text_embedder.linear_1, transformer.proj_out):  # as fp8 does
        assert type(skipped.weight) is torch.nn.Parameter
    rel = ((forward(transformer, x) - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.1, rel


# ------------------------------------------------------------------ offload hooks (CPU: host == device)


@pytest.mark.parametrize("offload, groups_per_forward", [("group", 2), ("sequential", 20)])
def test_streamed_offload_equals_no_offload_with_hooks_running(tiny, monkeypatch, offload, groups_per_forward):
    from diffusers.hooks import group_offloading

    x = inputs()
    ref = forward(fresh(tiny)["transformer"], x)
    placement = Placement(fresh(tiny), CPU, MemoryPlan(offload=offload))
    transformer = placement.components["transformer"]
    assert group_offloading._is_group_offload_enabled(transformer)
    onloads = []
    original = group_offloading.ModuleGroup.onload_
    monkeypatch.setattr(group_offloading.ModuleGroup, "onload_", lambda self: (onloads.append(self), original(self)))
    with placement.denoising():
        out = forward(transformer, x)
    assert len(onloads) >= groups_per_forward  # blocks (or every leaf layer) were brought in one group at a time
    assert torch.equal(out, ref) and varies_across_frames(ref)


def test_fp8_with_group_offload_equals_fp8_alone(tiny):
    x = inputs()
    alone = forward(apply_quantization(fresh(tiny, torch.bfloat16)["transformer"], "fp8"), x)
    placement = Placement(fresh(tiny, torch.bfloat16), CPU, MemoryPlan(offload="group", quantize="fp8"))
    transformer = placement.components["transformer"]
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    with placement.denoising():
        assert torch.equal(forward(transformer, x), alone)


def test_per_frame_modulation_goes_on_before_the_plan_and_survives_its_hooks(tiny):
    from skyreels_cli.runtime.modulation import install_per_frame_modulation

    x = inputs()
    ref = forward(fresh(tiny)["transformer"], x)
    components = fresh(tiny)
    install_per_frame_modulation(components["transformer"])  # what the loader must do first for DF models
    placement = Placement(components, CPU, MemoryPlan(offload="group"))
    with placement.denoising() as transformer:
        assert torch.equal(forward(transformer, x), ref)
    late = Placement(fresh(tiny), CPU, MemoryPlan(offload="group")).components["transformer"]
    with pytest.raises(RuntimeError, match="before adding hooks"):
        install_per_frame_modulation(late)


@pytest.mark.parametrize("offload", PLANS[1:])
def test_every_plan_runs_the_phases_to_the_same_result(tiny, offload):
    ref = run_phases(Placement(fresh(tiny), CPU, MemoryPlan()))
    got = run_phases(Placement(fresh(tiny), CPU, MemoryPlan(offload=offload, text_encoder_device="cpu")))
    assert varies_across_frames(ref["velocity"]) and ref["pixels"].std() > 0.01
    for key in ("embeds", "velocity", "pixels"):
        assert torch.equal(got[key], ref[key]), key


# ------------------------------------------------------------------ where components go (recorded moves)


class StandIn(torch.nn.Module):
    """Records what a placement asks of it; `.to` moves nothing, so a CUDA plan can be followed on any machine."""

    def __init__(self) -> None:
        super().__init__()
        self.where, self.moves, self.hooks = "cpu", [], {}

    def to(self, where):
        self.where = torch.device(where).type
        self.moves.append(self.where)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16

    def enable_group_offload(self, **kwargs) -> None:
        self.hooks["group"] = kwargs

    def enable_layerwise_casting(self, **kwargs) -> None:
        self.hooks["fp8"] = kwargs


def stand_ins(names=("text_encoder", "transformer", "vae", "image_encoder")) -> dict:
    return {name: StandIn() for name in names}


def where(components: dict) -> dict:
    return {name: c.where for name, c in components.items()}


CUDA = torch.device("cuda")


def test_none_keeps_transformer_vae_and_image_encoder_resident_and_lets_the_text_encoder_visit():
    c = stand_ins()
    placement = Placement(c, CUDA, MemoryPlan(offload="none"))
    resident = {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda", "image_encoder": "cuda"}
    assert where(c) == resident
    with placement.encoding() as encoder:
        assert encoder is c["text_encoder"] and where(c) == {**resident, "text_encoder": "cuda"}
    assert where(c) == resident
    for phase in (placement.denoising, placement.decoding, placement.encoding_images, placement.clip):
        with phase():
            assert where(c) == resident
    assert c["transformer"].moves == ["cuda"] and c["vae"].moves == ["cuda"]  # moved once, at load


def test_none_steps_the_residents_out_when_the_text_encoder_does_not_fit_beside_them():
    c = stand_ins()
    placement = Placement(c, CUDA, MemoryPlan(offload="none", text_encoder_beside=False))
    with placement.encoding():
        assert where(c) == {"text_encoder": "cuda", "transformer": "cpu", "vae": "cpu", "image_encoder": "cpu"}
    assert where(c) == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda", "image_encoder": "cuda"}
    assert c["transformer"].moves == ["cuda", "cpu", "cuda"]


def test_model_offload_has_one_component_on_the_device_per_phase():
    c = stand_ins()
    placement = Placement(c, CUDA, MemoryPlan(offload="model"))
    host = {name: "cpu" for name in c}
    assert where(c) == host and all(not s.moves for s in c.values())
    for phase, on in [(placement.encoding, {"text_encoder"}), (placement.denoising, {"transformer"}),
                      (placement.decoding, {"vae"}), (placement.encoding_images, {"vae", "image_encoder"})]:
        with phase():
            assert where(c) == {name: "cuda" if name in on else "cpu" for name in c}, phase.__name__
        assert where(c) == host
    with placement.clip():  # nested phases share components and move them once
        with placement.encoding_images():
            assert where(c) == {**host, "transformer": "cuda", "vae": "cuda", "image_encoder": "cuda"}
        assert c["vae"].where == "cuda"
    assert where(c) == host and c["vae"].moves.count("cuda") == 3


@pytest.mark.parametrize("offload, level", [("group", "block_level"), ("sequential", "leaf_level")])
def test_streamed_offload_hands_the_transformer_to_diffusers_hooks(offload, level):
    c = stand_ins()
    placement = Placement(c, CUDA, MemoryPlan(offload=offload, quantize="fp8"))
    hooks = c["transformer"].hooks
    assert hooks["fp8"] == {"storage_dtype": torch.float8_e4m3fn, "compute_dtype": torch.bfloat16}
    assert hooks["group"]["offload_type"] == level and hooks["group"]["use_stream"] is True
    assert hooks["group"]["onload_device"] == CUDA and hooks["group"]["offload_device"] == CPU
    assert hooks["group"].get("num_blocks_per_group") == (1 if level == "block_level" else None)
    with placement.denoising(), placement.decoding():
        assert where(c) == {"text_encoder": "cpu", "transformer": "cpu", "vae": "cuda", "image_encoder": "cpu"}
    assert c["transformer"].moves == []  # never `.to()`: the hooks own its placement


def test_text_encoder_on_cpu_never_touches_the_device():
    c = stand_ins()
    placement = Placement(c, CUDA, MemoryPlan(text_encoder_device="cpu", text_encoder_beside=False))
    assert placement.text_encoder_device == CPU
    with placement.encoding() as encoder:
        assert encoder is c["text_encoder"]
        assert where(c) == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda", "image_encoder": "cuda"}
    assert "cuda" not in c["text_encoder"].moves and c["transformer"].moves == ["cuda"]


def test_missing_components_are_skipped():
    c = {**stand_ins(("text_encoder", "transformer", "vae")), "image_encoder": None}
    placement = Placement(c, CUDA, MemoryPlan(offload="model"))
    with placement.encoding_images() as vae:
        assert vae.where == "cuda"


# ------------------------------------------------------------------ on a GPU


def mid_size(tiny: dict) -> dict:
    """Tiny text encoder and VAE, a transformer of real width (1.3B: 12 heads x 128, ffn 8960), 4 blocks, so
    that weights (about 370 MB in bf16) dominate the peak and plans visibly differ."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=8960, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", inject_sample_info=True,
    ).eval()
    return {**fresh(tiny), "transformer": transformer.to(torch.bfloat16)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_plan_on_cuda_gives_the_same_video_and_peaks_in_plan_order(tiny):
    base = mid_size(tiny)
    results, peaks = {}, {}
    for offload in (*PLANS, "none+fp8"):
        plan = MemoryPlan(offload=offload.split("+")[0], quantize="fp8" if "fp8" in offload else "none")
        components = {n: copy.deepcopy(m) if isinstance(m, torch.nn.Module) else m for n, m in base.items()}
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        placement = Placement(components, CUDA, plan)
        results[offload] = run_phases(placement)
        torch.cuda.synchronize()
        peaks[offload] = torch.cuda.max_memory_allocated() - start
        del placement, components
    seen = results["model"]["seen"]
    assert seen["encoding"] == {"text_encoder": "cuda", "transformer": "cpu", "vae": "cpu"}
    assert seen["denoising"] == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cpu"}
    assert seen["decoding"] == {"text_encoder": "cpu", "transformer": "cpu", "vae": "cuda"}
    assert results["none"]["seen"]["denoising"] == {"text_encoder": "cpu", "transformer": "cuda", "vae": "cuda"}
    assert results["group"]["seen"]["denoising"]["transformer"] == "cpu"  # weights wait on the host
    ref = results["none"]
    assert varies_across_frames(ref["velocity"])
    for offload in PLANS[1:]:
        for key in ("embeds", "velocity", "pixels"):
            torch.testing.assert_close(results[offload][key], ref[key], rtol=1e-2, atol=1e-2, msg=f"{offload} {key}")
    rel = (results["none+fp8"]["velocity"] - ref["velocity"]).norm() / ref["velocity"].norm()
    assert 1e-3 < rel < 0.2, rel
    mb = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["none"] >= peaks["model"] >= peaks["group"] >= peaks["sequential"], mb
    assert peaks["none+fp8"] < peaks["none"], mb
