"""Accelerators: few-step distillation LoRAs (weights.toml `[accelerators]`) and the settings they were made for.

An accelerator names a LoRA per model family and size (`kind-size`, e.g. `df-14B`), its strength and the
sampler settings it was distilled for (sampler, noise levels, guidance, shift). `accelerate(spec, name)` is the
checkpoint's spec with those settings as its defaults (what a request leaves unset takes them; a value given
still wins) and the LoRA to load. A model with no LoRA for the accelerator is refused, naming the ones that fit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import UsageError, setting
from .registry import Accelerator, AcceleratorLora, ModelSpec


def fit_key(spec: ModelSpec) -> str:
    """The family and size an accelerator's LoRA is listed under: `df-1.3B`, `i2v-14B`, `t2v-tiny`."""
    kind = "df" if spec.kind == "flf2v" else spec.kind
    return f"{kind}-{spec.size}"


def find(name: str) -> Accelerator:
    from .registry import load_registry

    known = load_registry().accelerators
    if name not in known:
        raise UsageError(f"{setting('accelerator', name, quoted=True)} is not known; use one of "
                         f"{', '.join(known)} (skyreels models lists them)", field="accelerator")
    return known[name]


def lora_for(spec: ModelSpec, name: str) -> tuple[Accelerator, AcceleratorLora]:
    """The accelerator and its LoRA for this model, or a one-line refusal naming the models it fits."""
    acc = find(name)
    key = fit_key(spec)
    if key not in acc.loras:
        from .registry import load_registry

        fitting = [alias for alias, s in load_registry().models.items() if fit_key(s) in acc.loras]
        raise UsageError(f"{setting('accelerator', name)} has no LoRA for {spec.alias} ({key}); it fits "
                         f"{', '.join(fitting) or ', '.join(acc.fits)}", field="accelerator")
    return acc, acc.loras[key]


def accelerate(spec: ModelSpec, name: str | None) -> tuple[ModelSpec, str | None]:
    """`spec` with the accelerator's settings as its defaults, and the LoRA to load (`PATH_OR_REPO:SCALE`);
    `(spec, None)` without one."""
    if name is None:
        return spec, None
    acc, lora = lora_for(spec, name)
    sigmas = lora.sigmas or acc.sigmas
    accelerated = replace(spec, sampler=acc.sampler, sigmas=sigmas, steps=len(sigmas), guidance=acc.guidance,
                          shift=lora.shift or acc.shift, accelerator=name)
    strength = acc.strength if lora.strength is None else lora.strength
    return accelerated, f"{lora_path(lora)}:{strength}"


def lora_path(lora: AcceleratorLora) -> str:
    """Where the LoRA is read from: a Hub file (the cache, or downloaded), or a local build for "local" ones."""
    if lora.revision != "local":
        return lora.source
    path = tiny_lora_file(lora.file)
    return str(path)


def tiny_lora_file(file: str) -> Path:
    """The tiny accelerator's LoRA, built on first use beside the tiny models."""
    from .hub import tiny_root
    from .tiny import save_tiny_lora

    path = tiny_root() / "accelerator" / file
    if not path.is_file():
        save_tiny_lora(Path(file).stem, path)
    return path
