"""Loading a checkpoint's components on the CPU, in the dtypes the run needs."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

import torch

from ..errors import DeviceError, ModelError, UsageError, setting
from .kinds import KINDS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def auto_device(device: str | torch.device | None = "auto") -> torch.device:
    """`device` as torch names it; "auto" (or None) is CUDA when a GPU is visible, else the CPU. The one meaning of
    "auto" for every device setting (checked further for a model by `check_device`)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str | torch.device | None = "auto", spec=None) -> torch.device:
    """The torch device for `device` ("auto": `auto_device`, where the CPU is for tiny models only)."""
    if device is None or str(device) == "auto":
        dev = auto_device(device)
        if dev.type == "cuda" or spec is None or spec.is_tiny:
            return dev
        raise DeviceError(
            f"no CUDA GPU is visible, and {spec.alias} on the CPU would take days; pass {setting('device', 'cpu')} to run it "
            "anyway, or run `skyreels doctor` to see why CUDA is missing"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"{setting('device', device, quoted=True)} is not a device name; use auto, cuda, cuda:N or cpu") from None
    if dev.type not in ("cuda", "cpu"):
        raise UsageError(f"{setting('device', device, quoted=True)} is not supported; use auto, cuda, cuda:N or cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"CUDA was asked for but no CUDA GPU is visible; pass {setting('device', 'cpu')}, or run `skyreels doctor`")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"{setting('device', device)}: only {torch.cuda.device_count()} CUDA device(s) here; run `skyreels doctor`")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The transformer's dtype: bf16 on CUDA and fp32 on the CPU unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"{setting('dtype', dtype, quoted=True)} is not known; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def load_components(folder: Path, kind: str, dtype: torch.dtype, read: Collection[str] | None = None,
                    transformer_first: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict:
    """Every component of the checkpoint on the CPU: the VAE in fp32, the rest in `dtype`.

    `transformer_first`: the transformer is read alone first and given to it (LoRAs, fp8 storage) before the
    other components are read, so host memory holds the transformer as stored beside the text encoder, not
    as loaded (a 14B transformer in fp8 is 14 GB instead of 28).

    `read`: the components whose weights are read (None: all). The others are not read at all: the VAE
    is built from its config on the meta device (the pipelines read its config, never its weights) and
    the rest are None. A context-parallel rank but the first reads only the transformer this way.
    """
    import diffusers

    pipeline_cls = getattr(diffusers, KINDS[kind].pipeline)
    skipped = {} if read is None else {name: _empty(folder, name) for name in _component_names(folder)
                                       if name not in read}
    if transformer_first is not None and "transformer" not in skipped:
        skipped["transformer"] = transformer_first(_checked(folder, lambda: _read_transformer(folder, dtype)))
    pipe = _checked(folder, lambda: pipeline_cls.from_pretrained(folder, dtype={"vae": torch.float32,
                                                                                "default": dtype}, **skipped))
    return dict(pipe.components)


def loaded_bytes(components: dict) -> int:
    """Bytes of checkpoint weights the components hold: their state dicts, as stored in memory (buffers the
    models compute themselves, such as rotary tables, are not weights; meta stand-ins hold none)."""
    seen: dict[int, int] = {}
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            for t in component.state_dict().values():
                if not t.is_meta:
                    seen[t.data_ptr()] = t.numel() * t.element_size()  # tied weights once
    return sum(seen.values())


def _checked(folder: Path, read: Callable):
    try:
        return read()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None


def _read_transformer(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    _library, class_name = json.loads((Path(folder) / "model_index.json").read_text())["transformer"]
    return getattr(diffusers, class_name).from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)


def is_empty(module) -> bool:
    """A stand-in built from a config on the meta device (see `load_components`)."""
    return isinstance(module, torch.nn.Module) and any(p.is_meta for p in module.parameters())


def _component_names(folder: Path) -> list[str]:
    index = json.loads((Path(folder) / "model_index.json").read_text())
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


def _empty(folder: Path, name: str):
    if name != "vae":
        return None
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights():
        return AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(Path(folder) / "vae"))
