"""Which attention kernel (`--attention`) runs the transformer: our names, mapped onto diffusers' dispatcher.

One table says, per name, the diffusers backends that run it (its own package first, then the prebuilt build
the `kernels` package fetches from the Hub), how to get it, the GPUs it runs on and whether it takes an attention
mask. `resolve_kernel` validates a choice against what is installed, the GPU, the dtype, whether a dense mask
reaches attention and how the run is split over processes (`layout`: one GPU, Ulysses or ring), and names the
diffusers backend that runs it (`auto` takes the fastest usable one); `apply_backend` sets it on a model.
Block-causal attention (forcing/causal_attention.py) never passes a mask, so it works with all of them; a
checkpoint whose config sets `num_frame_per_block` > 1 makes diffusers build a dense boolean mask, which only
SDPA takes (see `MASK_BACKENDS`).

What diffusers 0.42 says about each backend is read from its registry (`_AttentionBackendRegistry`): which support
context parallelism, which need bf16/fp16. The one fact it does not register is which return the log-sum-exp that
ring attention merges partial results with (`RETURNS_LSE`, read from its forward ops; tests/test_backends_by_gpu.py
holds it against the source).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import DeviceError, UsageError, setting

HALF = (torch.bfloat16, torch.float16)
LAYOUTS = ("one", "ulysses", "ring")  # one process; context parallel across heads; across the sequence
# Hub kernels come through `kernels` (`pip install kernels`, or the [kernels] extra), fetched on first use.
HUB = "pip install kernels (prebuilt, fetched from the Hugging Face Hub on first use)"


@dataclass(frozen=True)
class AttentionChoice:
    backends: tuple[str, ...]  # diffusers `AttentionBackendName` values that run it, preferred first
    install: str | None  # how to get it; None: ships with torch
    gpus: str  # where it runs, in words
    min_sm: int | None  # lowest CUDA compute capability (major*10 + minor); None: any device, CPU too
    max_sm: int | None = None  # highest one, for kernels built for one GPU generation
    sms: tuple[int, ...] | None = None  # the only generations it runs on, where the kernel lists them
    takes_mask: bool = False  # whether a dense boolean attention mask is honoured

    @property
    def backend(self) -> str:
        """The backend of its own package (the first)."""
        return self.backends[0]


ATTENTION_CHOICES: dict[str, AttentionChoice] = {
    # Under ring attention SDPA's own paths return no log-sum-exp: torch's flash kernel (`_native_flash`) does.
    "sdpa": AttentionChoice(("native", "_native_flash"), None, "any device (CPU too)", None, takes_mask=True),
    # flash-attn compiles against the installed torch: without --no-build-isolation pip builds it against another.
    "flash": AttentionChoice(("flash", "flash_hub"),
                             "pip install 'flash-attn>=2.6.3' --no-build-isolation (builds for a while), or " + HUB,
                             "NVIDIA Ampere or newer (sm80+)", 80),
    "flash3": AttentionChoice(("_flash_3", "_flash_3_hub"),
                              "build hopper/ of Dao-AILab/flash-attention (python setup.py install), or " + HUB,
                              "NVIDIA Hopper (sm90: H100, H200)", 90, max_sm=90),
    # PyPI's `sageattention` is 1.0.6, which diffusers refuses (it needs 2.1.1+): SageAttention 2 is built from
    # its repository. `sageattn` raises "Unsupported CUDA architecture" outside these generations (sm100: B200).
    "sage": AttentionChoice(("sage", "sage_hub"),
                            "pip install git+https://github.com/thu-ml/SageAttention --no-build-isolation, or " + HUB,
                            "NVIDIA sm80, sm86, sm89, sm90 or sm120 (A100, RTX 30/40, L40, H100, RTX 50)", 80,
                            sms=(80, 86, 89, 90, 120)),
    "xformers": AttentionChoice(("xformers",), "pip install 'xformers>=0.0.29'", "NVIDIA GPUs", 60),
}
NAMES = ("auto", *ATTENTION_CHOICES)

# `auto` on CUDA, fastest first. FA3 ~650 TFLOP/s vs FA2 ~370 on an H100 (FlashAttention-3's paper). Sage quantises
# Q and K to int8, so it comes after the exact kernels; xformers is never faster than torch's SDPA,
# which already runs FlashAttention-2 or memory-efficient kernels inside.
AUTO_ORDER = ("flash3", "flash", "sage")

# Backends whose forward op returns the log-sum-exp (diffusers 0.42: native, NPU, xformers, sage_varlen and the
# efficient and math paths raise "does not support return_lse"). Ring attention needs it.
RETURNS_LSE = frozenset({"flash", "flash_hub", "_flash_3_hub", "sage", "sage_hub", "_native_cudnn", "_native_flash"})
# Backends that honour a dense boolean mask. FA2/FA3/Sage raise on one; xformers casts it to the query's dtype,
# an additive 0/1 bias, so a causal mask is silently ignored; torch's flash kernel takes none.
MASK_BACKENDS = frozenset({"native"})


@dataclass(frozen=True)
class Picked:
    """A kernel as it will run: our name and the diffusers backend for the device, dtype and layout."""

    name: str
    backend: str


def _registry():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


def _installed(backend: str) -> bool:
    """Whether diffusers can use the backend's package (installed, recent enough, and importable; for a Hub
    kernel: `kernels` installed)."""
    # diffusers' own test, also used by `set_attention_backend`: it knows the required versions and
    # treats a package that fails to import (e.g. an ABI mismatch) as missing.
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except RuntimeError:
        return False
    return True


def runs_layout(backend: str, layout: str) -> bool:
    """Whether diffusers runs `backend` split over processes as `layout` says (from its registry)."""
    if layout == "one":
        return True
    supported = backend in _registry()._supports_context_parallel
    return supported and (layout == "ulysses" or backend in RETURNS_LSE)


def _half_only(backend: str) -> bool:
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_qkv_dtype_bf16_or_fp16

    return _check_qkv_dtype_bf16_or_fp16 in _registry()._constraints[AttentionBackendName(backend)]


def _sm(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def _device_problem(name: str, choice: AttentionChoice, device: torch.device) -> str | None:
    """Why this kernel cannot run on `device`, or None."""
    if choice.min_sm is None:
        return None
    if device.type != "cuda":
        return f"{setting('attention', name)} needs {choice.gpus}, not the {device.type}; use {setting('attention', 'auto')} or sdpa"
    sm = _sm(device)
    if sm < choice.min_sm or (choice.max_sm is not None and sm > choice.max_sm) or (choice.sms and sm not in choice.sms):
        gpu = torch.cuda.get_device_name(device)
        return f"{setting('attention', name)} needs {choice.gpus}, not {gpu} (sm{sm}); use {setting('attention', 'auto')}"
    return None


def _dtype_ok(backend: str, device: torch.device, dtype: torch.dtype | None) -> bool:
    # On the CPU only SDPA runs; its ring path is routed to torch's CPU flash kernel, which takes fp32 too.
    return dtype is None or device.type != "cuda" or dtype in HALF or not _half_only(backend)


def _candidates(name: str, device: torch.device, dtype: torch.dtype | None, layout: str, masked: bool,
                skip: frozenset[str] = frozenset()) -> list[str]:
    """The backends that can run kernel `name` here, preferred first (none: it cannot)."""
    choice = ATTENTION_CHOICES[name]
    if _device_problem(name, choice, device) or (masked and not choice.takes_mask):
        return []
    return [b for b in choice.backends if b not in skip and runs_layout(b, layout) and _dtype_ok(b, device, dtype)
            and (not masked or b in MASK_BACKENDS) and _installed(b)]


def resolve_kernel(name: str, device: torch.device | str, dtype: torch.dtype | None = None, *, layout: str = "one",
                   masked: bool = False, skip: frozenset[str] = frozenset()) -> Picked:
    """The kernel to run and its diffusers backend: `name` validated, or for `auto` the fastest usable one.

    `dtype` is the model's compute dtype when known (FlashAttention and Sage take bf16/fp16 only); `layout` how
    the run is split over processes (see LAYOUTS); `masked` whether a dense boolean mask reaches self-attention.
    Raises UsageError (unknown name, package missing, wrong dtype or layout) or DeviceError (wrong device).
    """
    device = torch.device(device)
    if name not in NAMES:
        raise UsageError(f"unknown {setting('attention', name, quoted=True)}; choose one of {', '.join(NAMES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    order = ("sdpa",) if name == "auto" and device.type != "cuda" else (*AUTO_ORDER, "sdpa") if name == "auto" else (name,)
    for kernel in order:
        found = _candidates(kernel, device, dtype, layout, masked, skip)
        if found:
            return Picked(kernel, found[0])
    if name == "auto":  # even SDPA cannot: ring attention on the GPU in fp32
        raise UsageError(_layout_problem("sdpa", layout, dtype))
    error = _why_not(name, device, dtype, layout, masked)
    error.field = "attention"  # the setting at fault (a service answers it as the 4xx's param)
    raise error


def _why_not(name: str, device: torch.device, dtype: torch.dtype | None, layout: str, masked: bool) -> Exception:
    choice = ATTENTION_CHOICES[name]
    problem = _device_problem(name, choice, device)
    if problem:
        return DeviceError(problem)
    if masked and not choice.takes_mask:
        return UsageError(f"{setting('attention', name)} takes no attention mask, and this checkpoint's "
                          f"num_frame_per_block > 1 makes diffusers build one; use {setting('attention', 'sdpa')}")
    if not any(_installed(b) for b in choice.backends):
        return UsageError(f"{setting('attention', name)} is not installed: {choice.install}; "
                          f"or use {setting('attention', 'auto')}")
    installed = [b for b in choice.backends if _installed(b)]
    if not any(_dtype_ok(b, device, dtype) for b in installed):
        return UsageError(f"{setting('attention', name)} runs in bf16/fp16 only, the model is {dtype}; "
                          f"use {setting('dtype', 'bf16')} or {setting('attention', 'sdpa')}")
    return UsageError(_layout_problem(name, layout, dtype))


def _layout_problem(name: str, layout: str, dtype: torch.dtype | None) -> str:
    """Why `name` cannot run split as `layout` says, naming the kernels that can."""
    split = "ring attention" if layout == "ring" else "Ulysses attention"
    if dtype is not None and dtype not in HALF and any(runs_layout(b, layout) for b in ATTENTION_CHOICES[name].backends):
        return (f"{setting('attention', name)} runs {split} on a GPU in bf16/fp16 only, the model is {dtype}; "
                f"use {setting('dtype', 'bf16')}")
    able = []
    for kernel, choice in ATTENTION_CHOICES.items():
        splits = [b for b in choice.backends if runs_layout(b, layout)]
        if splits:
            able.append(kernel if splits[0] == choice.backend or kernel == "sdpa"
                        else f"{kernel} (its Hub build: pip install kernels)")
    fix = f", or {setting('ulysses')} alone where the heads divide" if layout == "ring" else ""
    return (f"{setting('attention', name)} as installed cannot run {split} across processes in diffusers; "
            f"use {setting('attention')} {' or '.join(able)}{fix}")


def pick_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None, *, layout: str = "one",
                 masked: bool = False) -> str:
    """Our kernel name to use: `name` validated, or for `auto` the fastest usable one (see `resolve_kernel`)."""
    return resolve_kernel(name, device, dtype, layout=layout, masked=masked).name


def planned_layout(world: int, ring: int | None) -> str:
    """The layout a run of `world` processes will have, as far as it is known before the model's config is read:
    ring when asked for, else Ulysses (the heads decide later whether some ring is needed)."""
    if world <= 1:
        return "one"
    return "ring" if ring is not None and ring > 1 else "ulysses"


def model_dtype(transformer) -> torch.dtype:
    """The dtype attention runs in: diffusers' `ModelMixin.dtype` skips the layers kept in fp32
    (`_keep_in_fp32_modules`: `scale_shift_table` is the first parameter of a bf16 SkyReels-V2) and reports
    the compute dtype under layerwise casting (fp8 storage)."""
    return transformer.dtype


def checkpoint_needs_mask(folder) -> bool:
    """`needs_mask` for a checkpoint folder, read from its transformer's config before any weight is."""
    import json
    from pathlib import Path

    config = Path(folder) / "transformer" / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("num_frame_per_block", 1) > 1


def _model_dtype_device(transformer) -> tuple[torch.dtype, torch.device]:
    return model_dtype(transformer), next(transformer.parameters()).device


def needs_mask(transformer) -> bool:
    """Whether diffusers feeds this transformer's self-attention a dense boolean mask (its config's
    `num_frame_per_block` > 1)."""
    return getattr(transformer.config, "num_frame_per_block", 1) > 1


def apply_backend(transformer, name: str, device: torch.device | None = None, *, layout: str = "one") -> str:
    """Run every attention processor of `transformer` on kernel `name` (ours, `auto` included); returns it.

    Validated against the device it will run on (`device`; by default where its weights are: under an
    offload plan they wait on the host), its dtype, its mask and the `layout` of the run. Only this model
    changes: diffusers' process-wide default backend, which `set_attention_backend` also sets, is put back.
    A Hub kernel that cannot be fetched is a one-line error, or for `auto` the next kernel.
    """
    dtype, weights_device = _model_dtype_device(transformer)
    device = weights_device if device is None else torch.device(device)
    skip: frozenset[str] = frozenset()
    while True:
        picked = resolve_kernel(name, device, dtype, layout=layout, masked=needs_mask(transformer), skip=skip)
        try:
            _set_backend(transformer, picked.backend)
            return picked.name
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            if not picked.backend.endswith("_hub"):
                raise
            if name != "auto":
                raise UsageError(f"{setting('attention', name)}: could not fetch its Hub kernel "
                                 f"({str(exc).splitlines()[0][:160]}); fetch it once online (HF_HUB_OFFLINE unset) "
                                 f"or use {setting('attention', 'auto')}") from None
            skip = skip | {picked.backend}


def _set_backend(transformer, backend: str) -> None:
    active = _registry()._active_backend
    # diffusers warns "experimental" on every call: once per run is noise, so keep it quiet here.
    model_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        transformer.set_attention_backend(backend)
    finally:
        model_logger.setLevel(level)
        _registry().set_active_backend(active)


# The package behind each kernel: (distribution, the version diffusers 0.42 needs or None).
PACKAGES = {"flash": ("flash-attn", "2.6.3"), "flash3": ("flash_attn_3", None), "sage": ("sageattention", "2.1.1"),
            "xformers": ("xformers", "0.0.29")}


def kernel_status() -> list[tuple[str, str]]:
    """(kernel, what this machine has of it) for `skyreels doctor`: version and whether diffusers can use it,
    or how to get it; then `kernels`, which fetches prebuilt ones."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    rows = []
    for name, (dist, needs) in PACKAGES.items():
        choice = ATTENTION_CHOICES[name]
        try:
            have = version(dist)
        except PackageNotFoundError:
            rows.append((name, f"not installed: {choice.install}"))
            continue
        if needs and Version(have) < Version(needs):
            rows.append((name, f"{have}, too old for diffusers (needs {needs}+): {choice.install}"))
        elif not _installed(choice.backend):
            rows.append((name, f"{have}, but it does not import (built for another torch?): {choice.install}"))
        else:
            rows.append((name, have))
    try:
        hub = [n for n, c in ATTENTION_CHOICES.items() if any(b.endswith("_hub") for b in c.backends)]
        rows.append(("kernels", f"{version('kernels')}: prebuilt {', '.join(hub)} from the Hub "
                                "(fetched on first use; cached after)"))
    except PackageNotFoundError:
        rows.append(("kernels", "not installed: pip install kernels (prebuilt FlashAttention 2/3 and Sage)"))
    return rows


def _processors(transformer) -> list:
    from diffusers.models.attention import AttentionModuleMixin

    return [m.processor for m in transformer.modules()
            if isinstance(m, AttentionModuleMixin) and hasattr(m.processor, "_attention_backend")]
