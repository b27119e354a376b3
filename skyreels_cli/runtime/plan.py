"""Memory plans' predicted peak VRAM per phase, the speed order, and the fastest plan that fits a GPU.

The plans are `runtime.memory.MemoryPlan`s, the ones the loader applies (runtime/placement.py); this
module predicts and chooses, it applies nothing. A plan's peak in a phase (text encoding, image
encoding for I2V, denoising, decoding) is what the plan keeps on the GPU then, plus that phase's
activation peak, both traced at full size on fake tensors (runtime/trace.py), plus `MARGIN_BYTES`
for what no trace sees.

Offload: `none` keeps transformer, VAE (and image encoder) on the GPU; `model` one component at a
time; `group` streams the transformer's blocks from the host (one block computing, the next one
arriving); `sequential` streams leaf modules. Quantize: `none` (bf16), `fp8` (diffusers' layerwise
casting), `int8` (torchao weight-only, when installed). cfg `batched` runs guidance as one batch-2
forward (diffusion forcing models only: the T2V/I2V pipelines run two passes); `tiled_decode`
decodes spatial tiles, each with its own causal cache (one on the GPU at a time). The text encoder
runs on the GPU (`text_encoder_device` "auto"; "disk": read from the checkpoint for each prompt not yet
encoded and freed after, so the host never keeps it) or on the CPU; on the GPU under offload `none` it
either fits beside what is resident or they step out to the host while it encodes: that is the
planner's verdict for a given memory, `text_encoder_beside` on the plan it returns.

Speed order, fastest first (`speed_rank`, which every choice here follows): offload none > model >
group > sequential (moving weights costs most); then quantize none > fp8 > int8 (dequantizing every
layer costs time and a little quality); then cfg batched > separate; then untiled decode > tiled;
then the text encoder on the GPU > on the GPU read from disk per new prompt (seconds) > on the CPU (about a
minute per prompt for UMT5-XXL). So `disk` is chosen only where the host cannot keep the text encoder.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch

from ..errors import ModelError, SkyreelsError, UsageError, on_command_line, setting
from ..forcing.frames import check_frames, check_size, latent_frames, pixel_frames
from ..models.accelerators import lora_bytes
from ..models.architectures import Architecture, architecture
from ..models.registry import ModelSpec
from ..run_options import AUTO, BY_NAME, CFGS, OFFLOADS, PLAN_FIELDS, QUANTIZES, TEXT_ENCODER_DEVICES, check_value
from . import trace
from .memory import MemoryPlan

PHASES = ("text", "image", "denoise", "decode")
# What no trace sees: the CUDA context with cuBLAS/cuDNN workspaces (about 0.6 GB on an H100)
# and the caching allocator's rounding and fragmentation between phases.
MARGIN_BYTES = 1_500_000_000
# Host memory no weight accounts for: Python, torch and the CUDA libraries (cuBLAS, cuDNN) once loaded, the
# pipeline's tokenizer, and the allocator's slack.
HOST_MARGIN_BYTES = 3_000_000_000
# The most one shard of a released transformer holds (diffusers' default `max_shard_size`): fp8 storage is applied
# shard by shard as the transformer is read (models/loading.py), so the load holds the fp8 model and one shard.
SHARD_BYTES = 10_000_000_000
# The most one shard of a released text encoder holds: UMT5-XXL is stored in fp32 in 5 GB shards. Read for a prompt
# under text_encoder_device "disk", it goes straight to the GPU shard by shard, so the host holds one at a time.
TEXT_SHARD_BYTES = 5_000_000_000
GB = 1e9
_WEIGHTS = {"none": "bf16", "fp8": "fp8", "int8": "int8"}
_CFG_SPEED = ("batched", "separate")
# What a plan is when nothing is predicted (the CPU, tiny models): the plain path.
UNPLANNED = MemoryPlan(offload="none", quantize="none", cfg="separate", tiled_decode=False)


class NoPlanFits(SkyreelsError):
    """No memory plan fits the GPU's memory."""


def speed_rank(plan: MemoryPlan) -> tuple[int, ...]:
    """Expected speed, smaller is faster: the order of the module docstring."""
    return (OFFLOADS.index(plan.offload), QUANTIZES.index(plan.quantize), _CFG_SPEED.index(plan.cfg),
            int(plan.tiled_decode), TEXT_ENCODER_DEVICES.index(plan.text_encoder_device))


def describe(plan: MemoryPlan, device: str = "GPU") -> str:
    """One line naming every choice of `plan` (for a run on `device`)."""
    text = "on the CPU" if plan.text_encoder_device == "cpu" else f"on the {device}"
    if plan.text_encoder_device == "disk":
        text += ", read from disk for each new prompt"
    if plan.offload == "none" and plan.text_encoder_device != "cpu" and not plan.text_encoder_beside:
        text += " (the others step out while it encodes)"
    decode = "tiled" if plan.tiled_decode else "untiled"
    return f"offload {plan.offload}, quantize {plan.quantize}, cfg {plan.cfg}, {decode} decode, text encoder {text}"


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
    host_phases: dict[str, int] = field(default_factory=dict)  # the host's peak per phase (`host_memory`)
    host: int = 0  # the host's overall peak, its margin included

    @property
    def peak_gb(self) -> float:
        return self.peak / GB

    @property
    def host_gb(self) -> float:
        return self.host / GB

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self.plan), "peak_gb": round(self.peak_gb, 2),
            "phases_gb": {name: round(v / GB, 2) for name, v in self.phases.items()},
            "host_gb": round(self.host_gb, 2),
            "host_phases_gb": {name: round(v / GB, 2) for name, v in self.host_phases.items()},
            "available": self.available, "fits": self.fits, "chosen": self.chosen, "note": self.note,
        }


@dataclass(frozen=True)
class BaselinePrediction:
    """A run that is no memory plan of ours (diffusers as shipped), traced the same way for comparison."""

    label: str
    phases: dict[str, int]
    peak: int

    @property
    def peak_gb(self) -> float:
        return self.peak / GB


@dataclass(frozen=True)
class Shape:
    """What one run puts through the model: picture size, latent frames per forward, pixel frames per decode.

    The planner is given it: `core.resolve.run_shape` computes it for a request by the library's own rules;
    `native_shape` is a checkpoint's recommended size; `Shape.window` one diffusion forcing window."""

    height: int
    width: int
    latents: int  # latent frames in one transformer forward (the window, +1 for an end image)
    decoded_frames: int  # pixel frames one decode call makes
    clip_frames: int  # pixel frames an I2V clip encodes as its condition (0: no image encoding)
    forcing: bool  # per-frame timesteps (diffusion forcing)
    guided: bool = True  # classifier-free guidance (guidance > 1); without it one pass, no batch-2 plan
    adapter_bytes: int = 0  # LoRA layers beside the transformer's weights (an accelerator's: models/accelerators.py)

    @classmethod
    def window(cls, height: int, width: int, frames: int) -> Shape:
        """One diffusion forcing window of `frames` (4k+1) pixel frames, checked."""
        check_size(height, width)
        check_frames(frames)
        return cls(height, width, latent_frames(frames), frames, 0, True)


def native_shape(spec: ModelSpec) -> Shape:
    """The run shape at a checkpoint's recommended size and window (an FLF2V window carries its end image)."""
    if spec.forcing:
        latents = latent_frames(spec.base_frames)
        return Shape(spec.height, spec.width, latents + (spec.kind == "flf2v"), pixel_frames(latents), 0, True,
                     spec.guidance > 1, lora_bytes(spec))
    return Shape(spec.height, spec.width, latent_frames(spec.frames), spec.frames,
                 spec.frames if spec.kind == "i2v" else 0, False, spec.guidance > 1, lora_bytes(spec))


@dataclass(frozen=True)
class _Parts:
    """The traces a prediction combines."""

    text: trace.Trace
    image: trace.Trace | None
    encode: trace.Trace | None
    decode: dict[bool, trace.Trace] = field(default_factory=dict)  # by tiled_decode


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def plans(forcing: bool, **fixed) -> list[MemoryPlan]:
    """Every plan a run can use (batched guidance only with diffusion forcing), with the `fixed` fields (plan
    field names; None: any), fastest first."""
    every = (MemoryPlan(offload=o, quantize=q, cfg=c, tiled_decode=t, text_encoder_device=e)
             for o, q, c, t, e in itertools.product(OFFLOADS, QUANTIZES, CFGS, (False, True), TEXT_ENCODER_DEVICES))
    wanted = {name: value for name, value in fixed.items() if value is not None}
    return sorted((p for p in every if (forcing or p.cfg == "separate")
                   and all(getattr(p, name) == value for name, value in wanted.items())), key=speed_rank)


def predict(spec_or_arch: ModelSpec | Architecture, shape: Shape | None = None, *, vram_gb: float | None = None,
            **fixed) -> list[PlanPrediction]:
    """Every plan (or those with the `fixed` plan fields: offload=..., quantize=...) for a run of `shape`,
    with its predicted peaks, fastest first.

    `spec_or_arch`: a registry spec (`shape` defaults to its native one) or an Architecture (`shape`
    required). `vram_gb` only decides whether the text encoder fits beside what offload `none` keeps resident.
    """
    arch, shape = _arch_and_shape(spec_or_arch, shape)
    parts = _parts(arch, shape)
    return [_predict_plan(plan, arch, shape, parts, vram_gb)
            for plan in plans(shape.forcing and shape.guided, **_known(fixed))]


def _known(fixed: dict) -> dict:
    unknown = sorted(set(fixed) - set(PLAN_FIELDS))
    if unknown:
        raise TypeError(f"{unknown[0]!r} is not a memory plan field; the fields are {', '.join(PLAN_FIELDS)}")
    return fixed


def _arch_and_shape(spec_or_arch, shape: Shape | None) -> tuple[Architecture, Shape]:
    if isinstance(spec_or_arch, Architecture):
        if shape is None:
            raise UsageError("a shape (Shape.window(height, width, frames)) is needed to plan an architecture")
        return spec_or_arch, shape
    spec = spec_or_arch
    if spec.is_tiny:
        raise UsageError(f"model {spec.alias} is a tiny test model: it needs no plan (it runs on any device)")
    return architecture(spec.kind, spec.size), shape or native_shape(spec)


def _parts(arch: Architecture, shape: Shape) -> _Parts:
    image = encode = None
    if arch.image_encoder is not None and shape.clip_frames:
        image = trace.trace_image_encoder(arch.image_encoder)
        encode = trace.trace_vae_encode(arch.vae, shape.height, shape.width)
    decode = {tiled: trace.trace_vae_decode(arch.vae, shape.height, shape.width, tiled=tiled) for tiled in (False, True)}
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
    tw += shape.adapter_bytes * tw // t.weights  # the LoRA layers sit on the GPU with the weights they adapt
    vae = parts.decode[False].weights
    clip_w = parts.image.weights if parts.image else 0
    text = parts.text.weights + parts.text.activations
    clip_act, enc_act = _encode_bytes(parts, shape)
    decode = _decode_bytes(parts.decode[plan.tiled_decode], shape, plan.tiled_decode)
    beside, note = True, ""
    if plan.offload == "none":
        resident = tw + vae + clip_w
        phases = {"text": resident + text, "image": resident + max(clip_act, enc_act) if parts.image else 0,
                  "denoise": resident + t.activations + t.inputs, "decode": resident + decode}
        if plan.text_encoder_device != "cpu" and vram_gb is not None and \
                phases["text"] + MARGIN_BYTES > vram_gb * GB:
            # The verdict the loader follows (Placement): the residents step out while the text encoder works.
            phases["text"], beside = text, False
            note = "the others step out to the host while the text encoder works"
    else:
        phases = {"text": text, "image": max(clip_w + clip_act, vae + enc_act) if parts.image else 0,
                  "denoise": tw + t.activations + t.inputs, "decode": vae + decode}
    if plan.text_encoder_device == "cpu":
        phases["text"] = 0
    if not parts.image:
        phases.pop("image")
    available = plan.quantize != "int8" or torchao_available()
    if not available:
        note = "needs torchao (pip install torchao)"
    plan = dataclasses.replace(plan, text_encoder_beside=beside)
    host = host_memory(plan, arch, parts, t.weights)
    return PlanPrediction(plan, phases, max(phases.values()) + MARGIN_BYTES, available, note, host_phases=host,
                          host=max(host.values()) + HOST_MARGIN_BYTES)


def host_memory(plan: MemoryPlan, arch: Architecture, parts: _Parts, stored: int) -> dict[str, int]:
    """Peak host memory per phase of `plan` (bytes, without `HOST_MARGIN_BYTES`); `stored`: the transformer's
    weights as the plan stores them.

    load: the transformer is read alone and given its storage before the other components are read
    (core/model.py), so the host holds the larger of the transformer as loaded and everything as stored; fp8 is
    stored shard by shard as it is read, so as loaded it is the fp8 model and one shard (`SHARD_BYTES`), never
    the whole bf16 transformer (LoRAs, merged in bf16 first, are not counted).
    run: what is parked on the host between phases: the text encoder (it visits the GPU only to encode, or
    works on the CPU; under "disk" it is not kept, nor read at load); under offload model/group/sequential also
    the transformer (as stored: group and sequential keep it pinned there, once: runtime/memory.py), the VAE
    and the image encoder.
    text: on the CPU the text encoder's activations too; under offload none, when it does not fit beside
    them, the resident components step out to the host while it encodes; under "disk" also the text encoder's
    shard being read onto the GPU (`TEXT_SHARD_BYTES`).
    """
    loaded = trace.trace_transformer_weights(arch.transformer, "bf16")
    if plan.quantize == "fp8":
        loaded = min(loaded, stored + SHARD_BYTES)
    text, vae = parts.text.weights, parts.decode[False].weights
    image = parts.image.weights if parts.image else 0
    kept = 0 if plan.text_encoder_device == "disk" else text
    others = stored + vae + image if plan.offload != "none" else 0
    phases = {"load": max(loaded, stored + kept + vae + image), "run": kept + others}
    stepped_out = plan.offload == "none" and not plan.text_encoder_beside
    if plan.text_encoder_device == "cpu":
        phases["text"] = kept + others + parts.text.activations
    elif plan.text_encoder_device == "disk":
        phases["text"] = (stored + vae + image if stepped_out else others) + min(TEXT_SHARD_BYTES, 2 * text)
    elif stepped_out:
        phases["text"] = stored + vae + image
    return phases


def baseline(spec_or_arch: ModelSpec | Architecture, shape: Shape | None = None) -> BaselinePrediction:
    """diffusers as shipped, traced the same way: every component on the GPU (`pipe.to("cuda")`), per-token
    modulation, bf16, two-pass guidance, untiled decode."""
    arch, shape = _arch_and_shape(spec_or_arch, shape)
    parts = _parts(arch, shape)
    t = _transformer(arch, shape, UNPLANNED, per_frame_modulation=False)
    resident = t.weights + parts.decode[False].weights + parts.text.weights + \
        (parts.image.weights if parts.image else 0)
    clip_act, enc_act = _encode_bytes(parts, shape)
    phases = {"text": resident + parts.text.activations, "image": resident + max(clip_act, enc_act),
              "denoise": resident + t.activations + t.inputs,
              "decode": resident + _decode_bytes(parts.decode[False], shape, tiled=False)}
    if not parts.image:
        phases.pop("image")
    return BaselinePrediction("diffusers as shipped", phases, max(phases.values()) + MARGIN_BYTES)


def judge(predictions: list[PlanPrediction], vram_gb: float, host_gb: float | None = None) -> list[PlanPrediction]:
    """`predictions` with `fits` set for `vram_gb` of GPU memory (and `host_gb` of host memory, when given) and
    the one `choose` picks marked."""
    check_value(BY_NAME["vram_gb"], vram_gb)
    judged = [dataclasses.replace(p, fits=p.available and p.peak <= vram_gb * GB and
                                  (host_gb is None or p.host <= host_gb * GB)) for p in predictions]
    fitting = [p for p in judged if p.fits]
    if not fitting:
        return judged
    best = min(fitting, key=lambda p: speed_rank(p.plan))
    return [dataclasses.replace(p, chosen=True) if p is best else p for p in judged]


def choose(predictions: list[PlanPrediction], vram_gb: float, constraint: str = "",
           free: bool = False, host_gb: float | None = None) -> PlanPrediction:
    """The fastest plan that fits in `vram_gb` (and `host_gb` of host memory, when given); NoPlanFits (one
    line, naming the smallest plan, its peak and the memory: `free` when that is the GPU's free memory) when
    none does. `constraint` names the options the plans were limited by ("with --offload none").

    Host memory is a preference: when no plan fits the host, the one that fits the GPU with the least host
    memory (the fastest of those) is chosen and its note says how much it is predicted to need (it may still
    run, swapping)."""
    judged = judge(predictions, vram_gb, host_gb)
    chosen = [p for p in judged if p.chosen]
    if not chosen and host_gb is not None:
        choose(predictions, vram_gb, constraint, free)  # NoPlanFits when none fits the GPU either
        on_gpu = min((p for p in judge(predictions, vram_gb) if p.fits), key=lambda p: (p.host, speed_rank(p.plan)))
        return dataclasses.replace(on_gpu, note=f"predicted {on_gpu.host_gb:.1f} GB of host memory, more than "
                                                f"the {host_gb:.1f} GB available: it may swap or fail")
    if not chosen:
        least = min((p for p in judged if p.available), key=lambda p: p.peak, default=None)
        memory = f"the {vram_gb:.1f} GB free" if free else f"{vram_gb:g} GB"
        smallest = f"; the smallest, {describe(least.plan)}, needs {least.peak_gb:.1f} GB" if least else ""
        raise NoPlanFits(f"no memory plan{constraint} fits in {memory}{smallest}; a smaller size or window "
                         f"needs less")
    return chosen[0]


def available_host_gb() -> float | None:
    """This machine's available host memory in GB (Linux's MemAvailable); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return None


def free_vram_gb(device: str | torch.device | None = None) -> float | None:
    """Free memory of the visible GPU (`device`, default the current one) in GB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / GB


def total_vram_gb(device: str | torch.device | None = None) -> float | None:
    """The visible GPU's whole memory in GB; None without CUDA."""
    if not torch.cuda.is_available() or torch.device(device or "cuda").type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / GB


# ---------------------------------------------------------------------------------------------- for the loader

def resolve_plan(spec: ModelSpec, device: torch.device, shape: Shape | None = None, *,
                 vram_gb: float | None = None, free_gb: float | None = None, host_gb: float | None = None,
                 **choices) -> tuple[MemoryPlan, str]:
    """The plan a run of `shape` (default: the model's native one) on `device` loads with, and a one-line reason.

    `choices`: plan fields (offload=, quantize=, cfg=, tiled_decode=, text_encoder_device=); each fixed to
    anything but "auto"/None is a constraint, the others are the planner's: the fastest plan satisfying the
    constraints that fits `vram_gb` (default: `free_gb`, the free memory the caller measured, else the GPU's
    free memory now). On the CPU, for tiny models or models of
    no known architecture nothing is predicted and the free fields take the plain path (`UNPLANNED`). A plan
    fixed in full is returned as given, its predicted peak in the reason. NoPlanFits when no plan satisfying
    the constraints fits.
    """
    device = torch.device(device)
    fixed = _fixed(spec, _known(choices), (shape or native_shape(spec)).guided)
    why_not, memory = _planning(spec, device, vram_gb if vram_gb is not None else free_gb)
    if why_not:
        plan = dataclasses.replace(UNPLANNED, **fixed)
        label = "as given" if len(fixed) == len(PLAN_FIELDS) else "auto"
        return plan, f"{label} {why_not}: {describe(plan, 'GPU' if device.type == 'cuda' else device.type.upper())}"
    predictions = predict(spec, shape, vram_gb=memory, **fixed)
    of = f"of {memory:.1f} GB {'given' if vram_gb is not None else 'free'}"
    if len(fixed) == len(PLAN_FIELDS):  # the caller's plan, even where it is predicted not to fit: they asked for it
        (given,) = predictions
        over = "" if given.peak <= memory * GB else " (predicted not to fit)"
        return given.plan, f"as given: {describe(given.plan)}: predicted {given.peak_gb:.1f} GB {of}{over}"
    host = host_gb if host_gb is not None or vram_gb is not None else available_host_gb()
    chosen = choose(predictions, memory, _constraint(fixed), free=vram_gb is None, host_gb=host)
    over = f" ({chosen.note})" if chosen.note.startswith("predicted") else ""
    return chosen.plan, f"auto: {describe(chosen.plan)}: predicted {chosen.peak_gb:.1f} GB {of}, " \
                        f"{chosen.host_gb:.1f} GB of host memory{over}"


def smaller_plan(spec: ModelSpec, device: torch.device, plan: MemoryPlan, shape: Shape | None = None, *,
                 vram_gb: float | None = None) -> MemoryPlan | None:
    """The fastest plan predicted to peak lower than `plan` and to fit `vram_gb` (default: the GPU's free memory,
    so release the model that ran out first); None when none does or nothing can be predicted (CPU, tiny
    models). For the message after a real CUDA out-of-memory."""
    device = torch.device(device)
    why_not, memory = _planning(spec, device, vram_gb)
    if why_not or not memory > 0:
        return None
    arch, shape = _arch_and_shape(spec, shape)
    current = _predict_plan(plan, arch, shape, _parts(arch, shape), memory)
    lower = [p for p in judge(predict(spec, shape, vram_gb=memory), memory) if p.fits and p.peak < current.peak]
    return min(lower, key=lambda p: speed_rank(p.plan)).plan if lower else None


def _fixed(spec: ModelSpec, given: dict, guided: bool = True) -> dict:
    """The fields the caller fixed, their values checked (one-line UsageErrors). A choice the run cannot make
    is refused, never quietly changed: batched guidance on a model that guides in two passes, or at guidance 1."""
    fixed = {name: check_value(BY_NAME[name], value) for name, value in given.items()
             if value is not None and value != AUTO}
    if fixed.get("cfg") == "batched" and not spec.forcing:
        raise UsageError(f"{setting('cfg', 'batched')} needs a diffusion forcing model; {spec.alias} ({spec.kind}) "
                         "guides in two passes", field="cfg")
    if fixed.get("cfg") == "batched" and not guided:
        raise UsageError(f"{setting('cfg', 'batched')} has nothing to batch at guidance 1 (one pass, no unconditional "
                         f"one); leave out {setting('cfg')}, or give a guidance above 1", field="cfg")
    if fixed.get("quantize") == "int8" and not torchao_available():
        raise UsageError(f"{setting('quantize', 'int8')} needs torchao: pip install torchao (or use "
                         f"{setting('quantize', 'fp8')})", field="quantize")
    return fixed


def _planning(spec: ModelSpec, device: torch.device, vram_gb: float | None) -> tuple[str, float | None]:
    """(why nothing is predicted for this run, "" when something is; the GB of memory to plan for)."""
    if device.type == "cpu":
        return "on the CPU (no VRAM to plan for)", None
    if spec.is_tiny:
        return f"for the tiny test model {spec.alias} (nothing to plan)", None
    try:
        architecture(spec.kind, spec.size)
    except ModelError:
        return f"for {spec.alias} (no known architecture of a {spec.kind} checkpoint of size {spec.size!r})", None
    memory = vram_gb if vram_gb is not None else free_vram_gb(device) if device.type == "cuda" else None
    return ("" if memory is not None else f"on {device} (its free memory is unknown)"), memory


def _flags(fields: dict) -> str:
    """Plan fields as the user writes them: `--offload group --no-tiled-decode`, or `offload='group', ...`."""
    if not on_command_line():
        return ", ".join(f"{name}={value!r}" for name, value in fields.items())
    return " ".join(f"--{'' if value else 'no-'}tiled-decode" if name == "tiled_decode" else setting(name, value)
                    for name, value in fields.items())


def _constraint(fixed: dict) -> str:
    return f" with {_flags(fixed)}" if fixed else ""


def flags(plan: MemoryPlan) -> str:
    """The options that give `plan` (the text encoder's only when it is not the default)."""
    fields = {name: getattr(plan, name) for name in PLAN_FIELDS}
    if plan.text_encoder_device == AUTO:
        fields.pop("text_encoder_device")
    return _flags(fields)
