"""Memory plans as data, their predicted peak VRAM per phase, and the fastest plan that fits a GPU.

A plan says where each component lives in each phase of a run (text encoding, image encoding for
I2V, denoising, decoding) and how the transformer is stored. Its peak in a phase is what the plan
keeps on the GPU then, plus that phase's activation peak, both traced at full size on fake
tensors (runtime/trace.py), plus `MARGIN_BYTES` for what no trace sees. The loader applies the
same plans (`--offload`, `--quantize`); this module only predicts and chooses.

Offload: `none` keeps transformer, VAE (and image encoder) on the GPU; `model` one component at a
time; `group` streams the transformer's blocks from the host (one block computing, the next one
arriving); `sequential` streams leaf modules. Quantize: `none` (bf16), `fp8` (diffusers' layerwise
casting), `int8` (torchao weight-only, when installed). cfg `batched` runs guidance as one batch-2
forward (diffusion forcing models only: the T2V/I2V pipelines run two passes); decode `tiled`
decodes spatial tiles, each with its own causal cache (one on the GPU at a time). The text encoder
runs on the GPU (beside what is resident when that fits, else alone) or on the CPU.

Speed order, fastest first, which `choose` follows: offload none > model > group > sequential
(moving weights costs most); then quantize none > fp8 > int8 (dequantizing every layer costs
time and a little quality); then cfg batched > separate; then decode untiled > tiled; then the
text encoder on the GPU > on the CPU (about a minute per prompt for UMT5-XXL).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import SkyreelsError, UsageError
from ..models.architectures import Architecture, architecture
from ..models.registry import ModelSpec
from . import trace

OFFLOADS = ("none", "model", "group", "sequential")
QUANTIZE = ("none", "fp8", "int8")
CFGS = ("batched", "separate")
DECODES = ("untiled", "tiled")
TEXT_DEVICES = ("gpu", "cpu")
PHASES = ("text", "image", "denoise", "decode")
# What no trace sees: the CUDA context with cuBLAS/cuDNN workspaces (about 0.6 GB on an H100)
# and the caching allocator's rounding and fragmentation between phases.
MARGIN_BYTES = 1_500_000_000
GB = 1e9
_WEIGHTS = {"none": "bf16", "fp8": "fp8", "int8": "int8"}


class NoPlanFits(SkyreelsError):
    """No memory plan fits the GPU's memory."""


@dataclass(frozen=True)
class MemoryPlan:
    offload: str = "none"
    quantize: str = "none"
    cfg: str = "separate"
    decode: str = "untiled"
    text_encoder: str = "gpu"

    def rank(self) -> tuple[int, ...]:
        """Expected speed, fastest first (see the module docstring)."""
        return (OFFLOADS.index(self.offload), QUANTIZE.index(self.quantize), CFGS.index(self.cfg),
                DECODES.index(self.decode), TEXT_DEVICES.index(self.text_encoder))


@dataclass(frozen=True)
class PlanPrediction:
    """A plan's predicted GPU peak per phase and overall (bytes, the margin included in `peak`)."""

    plan: MemoryPlan
    phases: dict[str, int]
    peak: int
    available: bool = True  # int8 needs torchao
    note: str = ""
    fits: bool | None = None  # set by `judge` for a given memory
    chosen: bool = False

    @property
    def peak_gb(self) -> float:
        return self.peak / GB

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self.plan), "peak_gb": round(self.peak_gb, 2),
            "phases_gb": {name: round(v / GB, 2) for name, v in self.phases.items()},
            "available": self.available, "fits": self.fits, "chosen": self.chosen, "note": self.note,
        }


@dataclass(frozen=True)
class Shape:
    """What one run puts through the model: picture size, latent frames per forward, pixel frames per decode."""

    height: int
    width: int
    latents: int  # latent frames in one transformer forward (the window, +1 for an end image)
    decoded_frames: int  # pixel frames one decode call makes
    clip_frames: int  # pixel frames an I2V clip encodes as its condition (0: no image encoding)
    forcing: bool  # per-frame timesteps (diffusion forcing)


@dataclass(frozen=True)
class _Parts:
    """The traces a prediction combines."""

    text: trace.Trace
    image: trace.Trace | None
    encode: trace.Trace | None
    decode: dict[str, trace.Trace] = field(default_factory=dict)


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def shape_for(spec: ModelSpec, height: int | None = None, width: int | None = None,
              frames: int | None = None) -> Shape:
    """The run shape of `spec` at a size, checked by the library's own rules (UsageError when it cannot run)."""
    from ..core.request import Request
    from ..core.resolve import generated_frames, resolve, window_plan
    from ..forcing.frames import latent_frames, pixel_frames

    # Sizes and frame counts follow the same rules for T2V and I2V; resolving I2V needs an image file,
    # which a plan has none of, so it is checked as T2V.
    checked = dataclasses.replace(spec, kind="t2v") if spec.kind == "i2v" else spec
    request = resolve(Request(prompt="plan", height=height, width=width, frames=frames, seed=0), checked)
    if spec.forcing:
        windows = window_plan(request).windows
        length = max(w.length for w in windows)
        end_image = spec.kind == "flf2v" or any(w.end_image for w in windows)
        return Shape(request.height, request.width, length + end_image, pixel_frames(length), 0, True)
    made = generated_frames(request, spec)
    clip = made if spec.kind == "i2v" else 0
    return Shape(request.height, request.width, latent_frames(made), made, clip, False)


def predict(spec_or_arch: ModelSpec | Architecture, height: int | None = None, width: int | None = None,
            frames: int | None = None, *, vram_gb: float | None = None,
            quantize: str | None = None, offload: str | None = None, cfg: str | None = None) -> list[PlanPrediction]:
    """Every plan (or those with the given `quantize` / `offload` / `cfg`) for a run, with its predicted peaks.

    `spec_or_arch`: a registry spec (its size and window are the defaults) or an Architecture (then
    height, width and frames are required and the run is one diffusion forcing window of `frames`).
    `vram_gb` only decides whether the text encoder fits beside what `none` keeps resident.
    """
    arch, shape = _arch_and_shape(spec_or_arch, height, width, frames)
    parts = _parts(arch, shape)
    plans = [
        MemoryPlan(o, q, c, d, t)
        for o in OFFLOADS for q in QUANTIZE for c in CFGS for d in DECODES for t in TEXT_DEVICES
        if (c == "separate" or shape.forcing) and (quantize is None or q == quantize)
        and (offload is None or o == offload) and (cfg is None or c == cfg)
    ]
    out = [_predict_plan(plan, arch, shape, parts, vram_gb) for plan in plans]
    return sorted(out, key=lambda p: p.plan.rank())


def _arch_and_shape(spec_or_arch, height, width, frames) -> tuple[Architecture, Shape]:
    from ..forcing.frames import check_frames, check_size, latent_frames

    if isinstance(spec_or_arch, Architecture):
        if height is None or width is None or frames is None:
            raise UsageError("height, width and frames are needed to plan an architecture")
        check_size(height, width)
        check_frames(frames)
        return spec_or_arch, Shape(height, width, latent_frames(frames), frames, 0, True)
    spec = spec_or_arch
    if spec.is_tiny:
        raise UsageError(f"model {spec.alias} is a tiny test model: it needs no plan (it runs on any device)")
    return architecture(spec.kind, spec.size), shape_for(spec, height, width, frames)


def _parts(arch: Architecture, shape: Shape) -> _Parts:
    image = encode = None
    if arch.image_encoder is not None and shape.clip_frames:
        image = trace.trace_image_encoder(arch.image_encoder)
        encode = trace.trace_vae_encode(arch.vae, shape.height, shape.width)
    decode = {d: trace.trace_vae_decode(arch.vae, shape.height, shape.width, tiled=d == "tiled") for d in DECODES}
    return _Parts(trace.trace_text_encoder(arch.text_encoder), image, encode, decode)


def _transformer(arch: Architecture, shape: Shape, plan: MemoryPlan, per_frame_modulation: bool = True) -> trace.Trace:
    return trace.trace_transformer(
        arch.transformer, shape.height, shape.width, shape.latents, batch=2 if plan.cfg == "batched" else 1,
        weights=_WEIGHTS[plan.quantize], per_frame_modulation=per_frame_modulation,
        per_frame_timesteps=shape.forcing,
    )


def _on_gpu(t: trace.Trace, offload: str, layers: int) -> int:
    """Transformer weight bytes on the GPU while it computes, under `offload`."""
    if offload == "group":  # the block computing and the next one arriving, plus what is outside blocks
        return t.weights - layers * t.block_weights + 2 * t.block_weights
    if offload == "sequential":  # one leaf computing and the next arriving
        return 2 * t.leaf_weights
    return t.weights


def _decode_bytes(d: trace.Trace, shape: Shape, tiled: bool) -> int:
    """A decode call: the cache on the GPU (one tile's when tiled), one frame's activations while the
    pixels made so far wait, and at the end the joined and clamped copies of them (3 x the output)."""
    out = d.output_per_frame * shape.decoded_frames
    return (d.tile_cache if tiled else d.cache) + max(d.activations + out, 3 * out)


def _encode_bytes(parts: _Parts, shape: Shape) -> tuple[int, int]:
    """(image encoder, VAE encoder) phase bytes above their weights: the I2V condition clip in fp32 pixels
    stays while the VAE encodes it 4 frames at a time with its cache."""
    if parts.image is None or parts.encode is None:
        return 0, 0
    clip = 3 * shape.clip_frames * shape.height * shape.width * 4
    return parts.image.activations, clip + parts.encode.inputs + parts.encode.activations


def _predict_plan(plan: MemoryPlan, arch: Architecture, shape: Shape, parts: _Parts,
                  vram_gb: float | None) -> PlanPrediction:
    t = _transformer(arch, shape, plan)
    tw = _on_gpu(t, plan.offload, arch.transformer.layers)
    vae = parts.decode["untiled"].weights
    clip_w = parts.image.weights if parts.image else 0
    text = parts.text.weights + parts.text.activations
    clip_act, enc_act = _encode_bytes(parts, shape)
    decode = _decode_bytes(parts.decode[plan.decode], shape, plan.decode == "tiled")
    denoise = tw + t.activations + t.inputs
    note = ""
    if plan.offload == "none":
        resident = tw + vae + clip_w
        phases = {"text": resident + text, "image": resident + max(clip_act, enc_act) if parts.image else 0,
                  "denoise": resident + t.activations + t.inputs, "decode": resident + decode}
        if vram_gb is not None and phases["text"] + MARGIN_BYTES > vram_gb * GB:
            phases["text"] = text
            note = "the others step out to the host while the text encoder works"
    else:
        phases = {"text": text, "image": max(clip_w + clip_act, vae + enc_act) if parts.image else 0,
                  "denoise": denoise, "decode": vae + decode}
    if plan.text_encoder == "cpu":
        phases["text"] = 0
    if not parts.image:
        phases.pop("image")
    available = plan.quantize != "int8" or torchao_available()
    if not available:
        note = "needs torchao (pip install torchao)"
    return PlanPrediction(plan, phases, max(phases.values()) + MARGIN_BYTES, available, note)


def baseline(spec_or_arch: ModelSpec | Architecture, height: int | None = None, width: int | None = None,
             frames: int | None = None) -> PlanPrediction:
    """diffusers as shipped, traced the same way: every component on the GPU (`pipe.to("cuda")`), per-token
    modulation, bf16, two-pass guidance, untiled decode."""
    arch, shape = _arch_and_shape(spec_or_arch, height, width, frames)
    parts = _parts(arch, shape)
    t = _transformer(arch, shape, MemoryPlan(), per_frame_modulation=False)
    resident = t.weights + parts.decode["untiled"].weights + parts.text.weights + \
        (parts.image.weights if parts.image else 0)
    clip_act, enc_act = _encode_bytes(parts, shape)
    phases = {"text": resident + parts.text.activations, "image": resident + max(clip_act, enc_act),
              "denoise": resident + t.activations + t.inputs,
              "decode": resident + _decode_bytes(parts.decode["untiled"], shape, tiled=False)}
    if not parts.image:
        phases.pop("image")
    plan = MemoryPlan(offload="diffusers", text_encoder="gpu")
    return PlanPrediction(plan, phases, max(phases.values()) + MARGIN_BYTES, note="diffusers as shipped")


def judge(predictions: list[PlanPrediction], vram_gb: float) -> list[PlanPrediction]:
    """`predictions` with `fits` set for `vram_gb` of GPU memory and the one `choose` picks marked."""
    if not vram_gb > 0:
        raise UsageError(f"--vram must be a positive number of GB, got {vram_gb}")
    judged = [dataclasses.replace(p, fits=p.available and p.peak <= vram_gb * GB) for p in predictions]
    fitting = [p for p in judged if p.fits]
    if not fitting:
        return judged
    best = min(fitting, key=lambda p: p.plan.rank())
    return [dataclasses.replace(p, chosen=True) if p is best else p for p in judged]


def choose(predictions: list[PlanPrediction], vram_gb: float) -> PlanPrediction:
    """The fastest plan that fits in `vram_gb`; NoPlanFits (one line) when none does."""
    judged = judge(predictions, vram_gb)
    chosen = [p for p in judged if p.chosen]
    if not chosen:
        least = min((p for p in judged if p.available), key=lambda p: p.peak, default=None)
        smallest = f"; the smallest plan needs {least.peak_gb:.1f} GB" if least else ""
        raise NoPlanFits(f"no memory plan fits in {vram_gb:g} GB{smallest}; a smaller size or window needs less")
    return chosen[0]


def free_vram_gb(device: str | None = None) -> float | None:
    """Free memory of the visible GPU (`device`, default the current one) in GB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / GB
