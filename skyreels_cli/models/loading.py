"""Loading a checkpoint's components on the CPU, in the dtypes the run needs."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DeviceError, ModelError, UsageError
from .kinds import KINDS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_device(device: str | torch.device | None = "auto", spec=None) -> torch.device:
    """The torch device for `device` ("auto": CUDA when visible, else the CPU for tiny models)."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if spec is None or spec.is_tiny:
            return torch.device("cpu")
        raise DeviceError(
            f"no CUDA GPU is visible, and {spec.alias} on the CPU would take days; pass --device cpu to run it "
            "anyway, or run `skyreels doctor` to see why CUDA is missing"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a device name; use auto, cuda, cuda:N or cpu") from None
    if dev.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {device!r} is not supported; use auto, cuda, cuda:N or cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no CUDA GPU is visible; pass --device cpu, or run `skyreels doctor`")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; run `skyreels doctor`")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The transformer's dtype: bf16 on CUDA and fp32 on the CPU unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not known; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def load_components(folder: Path, kind: str, dtype: torch.dtype) -> dict:
    """Every component of the checkpoint on the CPU: the VAE in fp32, the rest in `dtype`."""
    import diffusers

    pipeline_cls = getattr(diffusers, KINDS[kind].pipeline)
    try:
        pipe = pipeline_cls.from_pretrained(folder, dtype={"vae": torch.float32, "default": dtype})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None
    return dict(pipe.components)
