"""Which attention kernel (`--attention`) runs the transformer: our names, mapped onto diffusers' dispatcher.

One table says, per name, the diffusers backend, the package it needs, the GPUs it runs on and whether
it accepts an attention mask. `pick_backend` validates a choice against what is installed and the
device (`auto` takes the fastest usable one); `apply_backend` sets it on every attention processor of a
model. Causal attention (forcing/causal_attention.py) never passes a mask, so it works with all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import DeviceError, UsageError, setting

HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # diffusers `AttentionBackendName` value
    install: str | None  # what to install; None: ships with torch
    gpus: str  # where it runs, in words
    min_sm: int | None  # lowest CUDA compute capability (major*10 + minor); None: any device, CPU too
    max_sm: int | None = None  # highest one, for kernels built for one GPU generation
    takes_mask: bool = False  # whether a dense attention mask is accepted (FA2/FA3/Sage refuse one)
    half_only: bool = False  # bf16/fp16 inputs only


ATTENTION_CHOICES: dict[str, AttentionChoice] = {
    "sdpa": AttentionChoice("native", None, "any device (CPU too)", None, takes_mask=True),
    "flash": AttentionChoice("flash", "pip install 'flash-attn>=2.6.3' --no-build-isolation",
                             "NVIDIA Ampere or newer (sm80+)", 80, half_only=True),
    "flash3": AttentionChoice("_flash_3", "FlashAttention-3 (build the hopper/ folder of Dao-AILab/flash-attention)",
                              "NVIDIA Hopper (sm90: H100, H200)", 90, max_sm=90, half_only=True),
    "sage": AttentionChoice("sage", "pip install 'sageattention>=2.1.1'", "NVIDIA Ampere or newer (sm80+)", 80,
                            half_only=True),
    "xformers": AttentionChoice("xformers", "pip install 'xformers>=0.0.29'", "NVIDIA GPUs", 60, takes_mask=True),
}
NAMES = ("auto", *ATTENTION_CHOICES)

# `auto` on CUDA, fastest first. FA3 ~650 TFLOP/s vs FA2 ~370 on an H100 (FlashAttention-3's paper). Sage quantises
# Q and K to int8, so it comes after the exact kernels; xformers is never faster than torch's SDPA,
# which already runs FlashAttention-2 or memory-efficient kernels inside.
AUTO_ORDER = ("flash3", "flash", "sage")


def _installed(choice: AttentionChoice) -> bool:
    """Whether diffusers can use the backend's package (installed, recent enough, and importable)."""
    if choice.install is None:
        return True
    # diffusers' own test, also used by `set_attention_backend`: it knows the required versions and
    # treats a package that fails to import (e.g. an ABI mismatch) as missing.
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    try:
        _check_attention_backend_requirements(AttentionBackendName(choice.backend))
    except RuntimeError:
        return False
    return True


def _device_problem(name: str, choice: AttentionChoice, device: torch.device) -> str | None:
    """Why this kernel cannot run on `device`, or None."""
    if choice.min_sm is None:
        return None
    if device.type != "cuda":
        return f"{setting('attention', name)} needs {choice.gpus}, not the {device.type}; use {setting('attention', 'auto')} or sdpa"
    major, minor = torch.cuda.get_device_capability(device)
    sm = major * 10 + minor
    if sm < choice.min_sm or (choice.max_sm is not None and sm > choice.max_sm):
        gpu = torch.cuda.get_device_name(device)
        return f"{setting('attention', name)} needs {choice.gpus}, not {gpu} (sm{sm}); use {setting('attention', 'auto')}"
    return None


def _usable(name: str, device: torch.device, dtype: torch.dtype | None) -> bool:
    choice = ATTENTION_CHOICES[name]
    dtype_ok = dtype is None or not choice.half_only or dtype in HALF
    return dtype_ok and _device_problem(name, choice, device) is None and _installed(choice)


def pick_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Our kernel name to use: `name` validated, or for `auto` the fastest usable one on `device`.

    `dtype` is the model's compute dtype when known (FlashAttention and Sage take bf16/fp16 only).
    Raises UsageError (unknown name, package missing, wrong dtype) or DeviceError (wrong device).
    """
    device = torch.device(device)
    if name not in NAMES:
        raise UsageError(f"unknown {setting('attention', name, quoted=True)}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        if device.type != "cuda":
            return "sdpa"
        return next((n for n in AUTO_ORDER if _usable(n, device, dtype)), "sdpa")
    choice = ATTENTION_CHOICES[name]
    problem = _device_problem(name, choice, device)
    if problem:
        raise DeviceError(problem, field="attention")
    if not _installed(choice):
        raise UsageError(f"{setting('attention', name)} is not installed: {choice.install}; or use {setting('attention', 'auto')}")
    if choice.half_only and dtype is not None and dtype not in HALF:
        raise UsageError(f"{setting('attention', name)} runs in bf16/fp16 only, the model is {dtype}; "
                         f"use {setting('dtype', 'bf16')} or {setting('attention', 'sdpa')}")
    return name


def _model_dtype_device(transformer) -> tuple[torch.dtype, torch.device]:
    param = next(transformer.parameters())
    return param.dtype, param.device


def apply_backend(transformer, name: str, device: torch.device | None = None) -> str:
    """Run every attention processor of `transformer` on kernel `name` (ours, `auto` included); returns it.

    Validated against the device it will run on (`device`; by default where its weights are: under an
    offload plan they wait on the host) and its dtype. Only this model changes: diffusers' process-wide
    default backend, which `set_attention_backend` also sets, is put back.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    dtype, weights_device = _model_dtype_device(transformer)
    device = weights_device if device is None else torch.device(device)
    picked = pick_backend(name, device, dtype)
    active = _AttentionBackendRegistry._active_backend
    # diffusers warns "experimental" on every call: once per run is noise, so keep it quiet here.
    model_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        transformer.set_attention_backend(ATTENTION_CHOICES[picked].backend)
    finally:
        model_logger.setLevel(level)
        _AttentionBackendRegistry.set_active_backend(active)
    return picked


def _processors(transformer) -> list:
    from diffusers.models.attention import AttentionModuleMixin

    return [m.processor for m in transformer.modules()
            if isinstance(m, AttentionModuleMixin) and hasattr(m.processor, "_attention_backend")]
