"""Memory plans: which components stay on the GPU, how the transformer's weights are stored, and applying that.

The planner (`runtime/plan.py`) predicts a plan's peak VRAM, orders plans by speed and resolves `auto` into a
plan (`resolve_plan`); the loader (`runtime/placement.py`) applies it. A `MemoryPlan` is the one vocabulary
of the two. Here are the plan itself, the one-line checks of its names, and the two changes a plan makes
to the transformer once at load time: how its weights are stored
(`apply_quantization`) and whether its blocks stream from host memory (`apply_offload_hooks`). Both lean on
diffusers/torchao and work on the CPU too (degraded but correct), so they can be tested without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UsageError, setting
from ..run_options import BY_NAME, check_value

# Offloads whose transformer is driven by diffusers' group-offload hooks (weights on the host, onloaded per group).
STREAMED = {"group": "block_level", "sequential": "leaf_level"}
# Components that stay on the device for the whole run under offload "none".
RESIDENT = ("transformer", "vae", "image_encoder")
STORED_AS = "_skyreels_quantize"  # the storage `apply_quantization` gave a transformer


@dataclass(frozen=True)
class MemoryPlan:
    """How a loaded model uses VRAM. `auto` choices are resolved before this is built
    (`runtime.plan.resolve_plan`).

    `text_encoder_beside`: the planner's verdict that the text encoder fits on the device beside what offload
    "none" keeps resident; when it does not, the resident components step out to the host while it encodes.
    """

    offload: str = "none"
    quantize: str = "none"
    # "auto": on the run's device while encoding; "disk": the same, read for each new prompt and freed after;
    # "cpu": never on the GPU
    text_encoder_device: str = "auto"
    tiled_decode: bool = False
    cfg: str = "separate"
    text_encoder_beside: bool = True

    def __post_init__(self) -> None:
        for name in ("offload", "quantize", "cfg"):
            if getattr(self, name) == "auto":
                raise UsageError(f"{setting(name, 'auto')} must be resolved to a plan first; `skyreels plan MODEL` "
                                 "shows the choice")
        for name in ("offload", "quantize", "cfg", "text_encoder_device", "tiled_decode"):
            check_value(BY_NAME[name], getattr(self, name))

    @property
    def streams_transformer(self) -> bool:
        """The transformer's weights live on the host and diffusers' hooks bring them in group by group."""
        return self.offload in STREAMED

    @property
    def resident(self) -> tuple[str, ...]:
        """Components kept on the device between phases (offload "none"); the others visit only while used."""
        return RESIDENT if self.offload == "none" else ()


def apply_quantization(transformer: torch.nn.Module, quantize: str) -> torch.nn.Module:
    """Store the transformer's weights as `quantize` says, in place; returns it.

    fp8: diffusers layerwise casting, weights stored as float8_e4m3fn and upcast one layer at a time to the
    dtype the model was loaded in (bf16 on CUDA), skipping the layers the model lists as precision-critical
    (`_skip_layerwise_casting_patterns`, `_keep_in_fp32_modules`); the upcast is then made an operation of the
    forward (`upcast_in_the_graph`). Pure storage: it works on the CPU too.
    int8: torchao int8 weight-only on the same layers' Linear weights.
    """
    check_value(BY_NAME["quantize"], quantize)
    if getattr(transformer, STORED_AS, "none") == quantize:  # applied at load already (core/model.py)
        return transformer
    if quantize == "fp8":
        compute = _casting_compute_dtype(transformer)  # set while it was read (`fp8_as_read`)
        if compute is None:
            compute = transformer.dtype
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
        upcast_in_the_graph(transformer, compute)
    elif quantize == "int8":
        _int8_weight_only(transformer)
    setattr(transformer, STORED_AS, quantize)
    return transformer


def fp8_as_read(compute: torch.dtype):
    """For models/loading.py's `stored_as_read`: diffusers' layerwise casting set on the transformer built on the
    meta device, before its weights are read, so the layers it stores in fp8 are cast shard by shard as they are
    read (the host never holds the whole transformer in bf16); `apply_quantization` then finishes the storage."""

    def prepare(transformer: torch.nn.Module) -> None:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)

    return prepare


def _casting_compute_dtype(transformer: torch.nn.Module) -> torch.dtype | None:
    """The compute dtype of the layerwise casting already on `transformer` (None: none is)."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            return hook.compute_dtype
    return None


def upcast_in_the_graph(transformer: torch.nn.Module, compute: torch.dtype) -> None:
    """Make each layer diffusers' layerwise casting stores in fp8 upcast its weights inside its own forward.

    diffusers' hook casts the layer's parameters in place before and after each call (`module.to(dtype)`):
    under `--compile` every such call builds a `Parameter` inside the compiled region, a graph break (25
    breaks and 12 graphs for the tiny model's two blocks, against one graph without fp8). Here the layers
    diffusers chose keep their fp8 weights, lose the hook's per-instance forward (a different object in
    every block: compiled code guarded on it would recompile per block) and become their class's fp8
    variant, whose forward computes with `weight.to(compute)`: the same cast, then the same op, so the
    same numbers, in one graph, and the stored weights are never rewritten.
    """
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None or registry.get_hook("layerwise_casting") is None or type(module) not in _FP8:
            continue
        if list(registry.hooks) != ["layerwise_casting"]:
            continue  # another hook wraps it too: leave diffusers' casting as it is
        del module.forward  # the hook's wrapper; the class's forward shows through
        module.__class__ = _FP8[type(module)]
        module.compute_dtype = compute


def _upcast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dtype)


class _Fp8Linear(torch.nn.Linear):
    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, _upcast(self.weight, self.compute_dtype),
                                          _upcast(self.bias, self.compute_dtype))


class _Fp8Conv:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _upcast(self.weight, self.compute_dtype), _upcast(self.bias, self.compute_dtype))


class _Fp8Conv1d(_Fp8Conv, torch.nn.Conv1d):
    pass


class _Fp8Conv2d(_Fp8Conv, torch.nn.Conv2d):
    pass


class _Fp8Conv3d(_Fp8Conv, torch.nn.Conv3d):
    pass


# The layer types given an in-graph upcast; any other type diffusers casts keeps diffusers' hook as it is.
_FP8 = {torch.nn.Linear: _Fp8Linear, torch.nn.Conv1d: _Fp8Conv1d, torch.nn.Conv2d: _Fp8Conv2d,
        torch.nn.Conv3d: _Fp8Conv3d}


def skipped_patterns(transformer: torch.nn.Module) -> tuple[str, ...]:
    """Regular expressions (searched in module names) of the layers kept in full precision: exactly those
    diffusers' layerwise casting skips, so fp8 and int8 leave the same layers alone."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    own = (getattr(transformer, name, None) or () for name in ("_skip_layerwise_casting_patterns",
                                                               "_keep_in_fp32_modules"))
    return tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(pattern for group in own for pattern in group)


def is_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


def _int8_weight_only(transformer: torch.nn.Module) -> None:
    try:
        from torchao.quantization import quantize_
    except ImportError:
        raise UsageError(f"{setting('quantize', 'int8')} needs torchao: pip install torchao (or use "
                         f"{setting('quantize', 'fp8')})") from None
    try:  # torchao >= 0.10 names it as a config; older releases as a function
        from torchao.quantization import Int8WeightOnlyConfig as config
    except ImportError:
        from torchao.quantization import int8_weight_only as config
    skip = skipped_patterns(transformer)

    def wanted(module: torch.nn.Module, name: str) -> bool:
        # Not the small lora_A/lora_B layers of a LoRA: they are added to the weights, not stored with them.
        return isinstance(module, torch.nn.Linear) and ".lora_" not in name and not is_skipped(name, skip)

    quantize_(transformer, config(), filter_fn=wanted)


def apply_offload_hooks(transformer: torch.nn.Module, offload: str, device: torch.device) -> bool:
    """For group/sequential offload, let diffusers stream the transformer's blocks (or leaf layers) from the
    host to `device`; returns whether it did.

    On CUDA the next group is prefetched on a side stream while the current one computes (`stream_settings`);
    other devices have no streams, so there the groups are moved synchronously (on the CPU, where host and
    device are the same, the hooks run but move nothing: same results, which is what the tests check).
    """
    check_value(BY_NAME["offload"], offload)
    if offload not in STREAMED:
        return False
    kwargs = {"num_blocks_per_group": 1} if STREAMED[offload] == "block_level" else {}
    settings = stream_settings(device)
    if settings["use_stream"]:
        pin_in_place(transformer)
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type=STREAMED[offload], **settings, **kwargs)
    return True


def stream_settings(device: torch.device) -> dict:
    """diffusers' group-offload settings for `device`.

    With a stream, diffusers keeps a pinned host copy of every weight to copy from. `low_cpu_mem_usage=False`
    pins them once (True would pin each group again on every transfer: slow), and `pin_in_place` has pinned
    the weights themselves first, so its copies are the weights (pinning a pinned tensor returns it), not a
    second transformer in host memory. `record_stream=True` tells the allocator which stream still reads a
    group, instead of a synchronise after every block.
    """
    stream = torch.device(device).type == "cuda"
    return {"use_stream": stream, "record_stream": stream, "low_cpu_mem_usage": False}


def pin_in_place(module: torch.nn.Module) -> None:
    """Move `module`'s host weights into pinned memory one tensor at a time: the host holds them once (plus
    one tensor while it is copied), never a pinned copy beside the pageable original. (torchao's int8 tensors
    are left to diffusers, which pins their parts itself.)"""
    for tensor in (*module.parameters(), *module.buffers()):
        plain = type(tensor.data) is torch.Tensor
        if plain and tensor.device.type == "cpu" and not tensor.is_meta and not tensor.is_pinned():
            tensor.data = tensor.data.pin_memory()
