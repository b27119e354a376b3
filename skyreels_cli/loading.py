"""Loading a checkpoint into a diffusers pipeline on the chosen device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DeviceError, ModelError, UsageError
from .schedule import make_scheduler

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PIPELINE_CLASSES = {
    "t2v": "SkyReelsV2Pipeline",
    "i2v": "SkyReelsV2ImageToVideoPipeline",
    "df": "SkyReelsV2DiffusionForcingPipeline",
    "flf2v": "SkyReelsV2DiffusionForcingImageToVideoPipeline",
}


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device name; use cuda, cuda:N or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no CUDA GPU is visible; pass --device cpu, or run `skyreels doctor`")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; run `skyreels doctor`")
    if dev.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {device!r} is not supported; use cuda, cuda:N or cpu")
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


def load_pipeline(folder: Path, kind: str, device: torch.device, dtype: torch.dtype, shift: float, grid: str):
    """The diffusers pipeline for `kind`, VAE in fp32, the rest in `dtype`, scheduler shift set explicitly."""
    import diffusers

    pipeline_cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    try:
        pipe = pipeline_cls.from_pretrained(folder, dtype={"vae": torch.float32, "default": dtype})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None
    pipe.scheduler = make_scheduler(pipe.scheduler.config, shift, grid)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)
