"""Accelerators: few-step distillation LoRAs (weights.toml `[accelerators]`) and the settings they were made for.

An accelerator names a LoRA per model family and size (`kind-size`, e.g. `df-14B`), its strength and the
sampler settings it was distilled for (sampler, noise levels, guidance, shift). `accelerate(spec, name)` is the
checkpoint's spec with those settings as its defaults (what a request leaves unset takes them; a value given
still wins) and the LoRA to load. A model with no LoRA for the accelerator is refused, naming the ones that fit.
"""

from __future__ import annotations

import math
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


def split_strength(text: str) -> tuple[str, float | None]:
    """`NAME[:STRENGTH]` (as `--lora FILE:SCALE`): the accelerator and the LoRA strength given, if any."""
    name, colon, tail = text.partition(":")
    if not colon:
        return text, None
    try:
        strength = float(tail)
    except ValueError:
        strength = math.nan
    if not math.isfinite(strength) or strength <= 0:
        raise UsageError(f"{setting('accelerator', text, quoted=True)}: the strength after ':' must be a positive "
                         f"number (e.g. {name}:0.7)", field="accelerator")
    return name, strength


def accelerate(spec: ModelSpec, name: str | None, steps: int | None = None) -> tuple[ModelSpec, str | None]:
    """`spec` with the accelerator's settings as its defaults for `steps` (None: its published count), and the
    LoRA to load (`PATH_OR_REPO:SCALE`); `(spec, None)` without one. `name` may carry a strength (`causvid:0.7`),
    which wins over the one the steps pick."""
    if name is None:
        return spec, None
    base, given = split_strength(name)
    acc, lora = lora_for(spec, base)
    published = lora.sigmas or acc.sigmas
    steps = len(published) if steps is None else steps
    strength = given if given is not None else strength_for(acc, lora, steps)
    accelerated = replace(spec, sampler=acc.sampler, sigmas=noise_levels(acc, published, steps), steps=steps,
                          guidance=acc.guidance, shift=lora.shift or acc.shift, accelerator=name,
                          accelerator_strength=strength)
    return accelerated, f"{lora_path(lora)}:{strength}"


def noise_levels(acc: Accelerator, published: tuple[float, ...], steps: int) -> tuple[float, ...] | None:
    """The levels `steps` start from: the published ones for their count; for another count, as the accelerator's
    ports do (`other_steps`): "first", the first `steps` of them (Kijai's `flowmatch_causvid` and Wan2GP's
    `causvid` solver take `timesteps[:steps]`), beyond them the shifted grid; "grid", the shifted grid of `steps`
    (None: the request's shift makes it, as for any model)."""
    if steps == len(published):
        return published
    if acc.other_steps == "first" and steps < len(published):
        return published[:steps]
    return None


def strength_for(acc: Accelerator, lora: AcceleratorLora, steps: int) -> float:
    """The LoRA strength for `steps`: the LoRA's own where its entry fixes one, else the authors' table by steps
    (its published count takes the accelerator's strength); a count the table lacks is refused, naming those
    it has."""
    if lora.strength is not None:
        return lora.strength
    if not acc.strength_by_steps or steps == len(acc.sigmas):
        return acc.strength
    if steps not in acc.strength_by_steps:
        counts = sorted({*acc.strength_by_steps, len(acc.sigmas)})
        raise UsageError(f"{setting('steps', steps)} with {setting('accelerator', acc.name)}: its strength is "
                         f"published for {', '.join(map(str, counts))} steps; give one of those, or a strength "
                         f"({setting('accelerator', f'{acc.name}:{acc.strength:g}')})", field="steps")
    return acc.strength_by_steps[steps]


def check_steps(spec: ModelSpec, steps: int) -> int:
    """A model loaded with an accelerator runs `steps` only at the strength it was loaded with: a count that takes
    another strength is refused, saying how to load for it (the CLI and `run` load for the request's steps)."""
    if spec.accelerator is None or steps == spec.steps:
        return steps
    base, given = split_strength(spec.accelerator)
    if given is not None:
        return steps
    acc, lora = lora_for(spec, base)
    wanted = strength_for(acc, lora, steps)
    if wanted != spec.accelerator_strength:
        raise UsageError(f"{setting('steps', steps)} takes {base}'s LoRA at strength {wanted:g}, but this model was "
                         f"loaded for {spec.steps} steps at {spec.accelerator_strength:g}: load it for {steps} steps "
                         f"(plan_for=Request(steps={steps})) or fix the strength ({setting('accelerator', f'{base}:{spec.accelerator_strength:g}')})",
                         field="steps")
    return steps


def lora_bytes(spec: ModelSpec) -> int:
    """GPU bytes of the accelerator's LoRA layers on `spec` (0 without one): rank x (inputs + outputs) of each
    attention projection (self and cross, 4 each) and feed-forward linear of every block, in bf16; PEFT keeps
    them beside the weights, unquantized."""
    if spec.accelerator is None or spec.is_tiny:
        return 0
    from .architectures import architecture

    _, lora = lora_for(spec, split_strength(spec.accelerator)[0])
    t = architecture(spec.kind, spec.size).transformer
    per_block = 8 * (t.dim + t.dim) + 2 * (t.dim + t.ffn)
    return 2 * lora.rank * per_block * t.layers


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
