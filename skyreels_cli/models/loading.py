"""Loading a checkpoint's components on the CPU, in the dtypes the run needs."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
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
                    transformer_first: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                    stored_as_read: Callable[[torch.nn.Module], None] | None = None,
                    later: Collection[str] = ()) -> dict:
    """Every component of the checkpoint on the CPU: the VAE in fp32, the rest in `dtype`.

    `transformer_first`: the transformer is read alone first and given to it (LoRAs, fp8 storage) before the
    other components are read, so host memory holds the transformer as stored beside the text encoder, not
    as loaded (a 14B transformer in fp8 is 14 GB instead of 28).
    `stored_as_read`: given the transformer before its weights are read (on the meta device), to give the
    parameters it stores otherwise their storage dtype (fp8); each shard's weights then take that form as the
    shard is read (`_shard_by_shard`), so the whole transformer is never held as loaded.

    `read`: the components whose weights are read (None: all). The others are not read at all: the VAE
    is built from its config on the meta device (the pipelines read its config, never its weights) and
    the rest are None. A context-parallel rank but the first reads only the transformer this way.
    `later`: components not read now (None), each read when needed (`read_text_encoder`).
    """
    import diffusers

    pipeline_cls = getattr(diffusers, KINDS[kind].pipeline)
    skipped = {} if read is None else {name: _empty(folder, name) for name in _component_names(folder)
                                       if name not in read}
    skipped.update({name: None for name in later})
    if transformer_first is not None and "transformer" not in skipped:
        skipped["transformer"] = transformer_first(_checked(folder, lambda: _read_transformer(folder, dtype,
                                                                                             stored_as_read)))
    pipe = _checked(folder, lambda: pipeline_cls.from_pretrained(folder, dtype={"vae": torch.float32,
                                                                                "default": dtype}, **skipped))
    return dict(pipe.components)


def read_text_encoder(folder: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The checkpoint's text encoder read straight onto `device` (transformers' `device_map`: shard by shard, so
    the host holds about one shard's pages, never the whole encoder), in `dtype` as `load_components` reads it."""
    import transformers

    _library, class_name = json.loads((Path(folder) / "model_index.json").read_text())["text_encoder"]
    return _checked(folder, lambda: getattr(transformers, class_name).from_pretrained(
        folder, subfolder="text_encoder", dtype=dtype, device_map=str(device)))


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


def _read_transformer(folder: Path, dtype: torch.dtype,
                      stored_as_read: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    import diffusers

    _library, class_name = json.loads((Path(folder) / "model_index.json").read_text())["transformer"]
    with _shard_by_shard(stored_as_read):
        return getattr(diffusers, class_name).from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)


@contextmanager
def _shard_by_shard(prepare: Callable[[torch.nn.Module], None] | None) -> Iterator[None]:
    """diffusers' loading with each shard's weights put into their stored form as the shard is assigned.

    diffusers reads a checkpoint shard by shard into the model built on the meta device (`load_model_dict_into_meta`
    per shard, its dtype and kept-fp32 rules applied), but the parameters are then views of the memory-mapped
    files: every shard stays mapped, and a cast after loading reads them all (the whole bf16 transformer in the
    process's memory, 32.8 GB for I2V-14B). Here `prepare` sees the meta model before the first shard (fp8 storage
    gives the layers it stores in fp8 their dtype there); after each shard is assigned, each of its tensors is
    cast to that dtype, or copied out of the mapping, so the shard is unmapped before the next is read. The
    numbers are those of the cast after loading (the same `.to`), and diffusers' hooks stay in charge of compute.
    """
    if prepare is None:
        yield
        return
    from diffusers.models import model_loading_utils as loader

    original = loader.load_model_dict_into_meta
    stored: dict[str, torch.dtype | None] = {}  # what `prepare` changed: that dtype; the rest as diffusers loads it

    def load_and_store(model, state_dict, *args, **kwargs):
        if not stored:
            built = {name: t.dtype for name, t in model.state_dict(keep_vars=True).items()}
            prepare(model)
            stored.update((name, t.dtype if t.dtype != built[name] else None)
                          for name, t in model.state_dict(keep_vars=True).items())
        result = original(model, state_dict, *args, **kwargs)
        for name in state_dict:
            if name in stored:
                _replace_tensor(model, name, stored[name])
        return result

    loader.load_model_dict_into_meta = load_and_store
    try:
        yield
    finally:
        loader.load_model_dict_into_meta = original


def _replace_tensor(model: torch.nn.Module, name: str, dtype: torch.dtype | None) -> None:
    """The parameter or buffer `name` as a tensor of its own: cast to `dtype` (fp8), or (None) copied out of the
    file's mapping as it is."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    old = owner._parameters[leaf] if leaf in owner._parameters else owner._buffers[leaf]
    new = old.detach().clone() if dtype is None or dtype == old.dtype else old.detach().to(dtype)
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(new, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = new


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
