"""`skyreels models`, `download` and `doctor`: what is known, what is here, what this machine offers."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, user_errors
from .options import Quiet


@app.command()
def models() -> None:
    """List the known models, whether each is in the cache, and its size on disk."""
    from ..models.accelerators import fit_key
    from ..models.hub import cached_snapshot, disk_size
    from ..models.registry import load_registry

    registry = load_registry()
    typer.echo(f"{'alias':<16} {'kind':<6} {'size':<5} {'native':<14} {'VRAM':>7}  {'cached':<10} repo")
    for alias, spec in registry.models.items():
        snapshot = cached_snapshot(spec)
        cached = f"{disk_size(snapshot) / 1e9:.2f} GB" if snapshot else "-"
        vram = f"{spec.vram_gb:.1f} GB" if spec.vram_gb else "-"
        native = f"{spec.width}x{spec.height}x{spec.frames}"
        typer.echo(f"{alias:<16} {spec.kind:<6} {spec.size:<5} {native:<14} {vram:>7}  {cached:<10} {spec.repo}")
    families = ", ".join(f"{name} ({', '.join(f'{c}: {a}' for c, a in m.items())})"
                         for name, m in registry.families.items())
    typer.echo(f"\nfamilies: {families}")
    typer.echo("defaults: " + ", ".join(f"{c}: {a}" for c, a in registry.defaults.items()))
    typer.echo("\naccelerators (--accelerator NAME, or NAME:STRENGTH; each setting can still be given by its own flag):")
    for name, acc in registry.accelerators.items():
        fits = [alias for alias, spec in registry.models.items() if fit_key(spec) in acc.loras]
        table = (", strength by steps " + ", ".join(f"{n}: {v:g}" for n, v in acc.strength_by_steps.items())
                 if acc.strength_by_steps else "")
        typer.echo(f"  {name}: {len(acc.sigmas)} steps ({acc.sampler}, sigmas {', '.join(f'{s:g}' for s in acc.sigmas)}), "
                   f"guidance {acc.guidance:g}, shift {acc.shift:g}, strength {acc.strength:g}{table}")
        typer.echo(f"    fits: {', '.join(fits)}")
        typer.echo(f"    source: {acc.source}")


@app.command()
def download(
    names: Annotated[list[str], typer.Argument(help="Aliases or Hub repo ids to fetch.")],
    force: Annotated[bool, typer.Option("--force", help="Fetch every file again (repairs a damaged cache).")] = False,
    quiet: Quiet = False,
) -> None:
    """Fetch models into the Hugging Face cache ahead of time (only the files skyreels loads), and check
    that every file is whole. A family (`tiny`) fetches, or for the tiny models builds, every model it covers.

    Examples:

        skyreels download df-1.3b-540p i2v-1.3b-540p
        skyreels download qwen2.5-1.5b     (the prompt enhancer of --enhance)
        skyreels download --force df-1.3b-540p
        skyreels download lightx2v     (the LoRAs of an accelerator)
    """
    from ..core.enhance import enhancer_folder, is_enhancer
    from ..models.hub import disk_size
    from ..models.registry import load_registry

    with user_errors("download"):
        for name in names:
            registry = load_registry()
            if name in registry.accelerators:  # `tiny` is both a family of models and their accelerator
                _download_accelerator(name)
                if name not in registry.families:
                    continue
            if is_enhancer(name):  # a prompt enhancer of weights.toml's [enhancers]: a transformers LLM
                path = enhancer_folder(name)
                typer.echo(f"{name}: {path} ({disk_size(path) / 1e9:.2f} GB, prompt enhancer)")
                continue
            for spec in _members(name):
                _download(spec, quiet, force)


def _members(name: str) -> list:
    """The models a download of `name` means: every model of a family once (`tiny`: tiny-df for t2v and extend,
    tiny-i2v for i2v), else the one model it names."""
    from ..models.naming import resolve_model
    from ..models.registry import load_registry

    family = load_registry().families.get(name)
    if family is None:
        return [resolve_model(name, None)]
    return [resolve_model(alias, None) for alias in dict.fromkeys(family.values())]


def _download_accelerator(name: str) -> None:
    """Fetch (or build) each LoRA file an accelerator lists, once, and print where it is."""
    from ..models.accelerators import lora_path
    from ..models.lora import resolve_lora
    from ..models.registry import load_registry

    acc = load_registry().accelerators[name]
    for lora in {lora.source: lora for lora in acc.loras.values()}.values():
        fits = ", ".join(key for key, other in acc.loras.items() if other.source == lora.source)
        path = resolve_lora(lora_path(lora)).path
        typer.echo(f"{name} ({fits}): {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _download(spec, quiet: bool, force: bool) -> None:
    """Fetch (or build) one model, check it, and print where it is."""
    from ..errors import ModelError
    from ..models.hub import disk_size, ensure_model, hub_mismatches

    path = ensure_model(spec, progress=not quiet, force=force)
    mismatches = hub_mismatches(spec, path)
    if mismatches:
        again = "the Hub's copy may have changed: check the revision" if force else \
            f"run `skyreels download --force {spec.alias}`"
        raise ModelError(f"model {spec.alias} is damaged: {mismatches[0]}; {again}")
    checked = "sizes and hashes match the Hub" if mismatches is not None else "all files whole"
    typer.echo(f"{spec.alias}: {path} ({disk_size(path) / 1e9:.2f} GB, {checked})")


@app.command()
def doctor() -> None:
    """Check this machine: torch and CUDA, GPUs and free memory, ffmpeg, diffusers, the model cache and where the
    tiny models are built; the last line sums up what works here.

    Exits 0 when all this machine can do works (a machine without a GPU runs the tiny models on the CPU: that is
    not a failure), 1 when something that should work does not (ffmpeg or a package missing, a GPU that cannot be
    queried, a damaged model in the cache)."""
    from .doctor import report

    lines, ok = report()
    for line in lines:
        typer.echo(line)
    raise typer.Exit(0 if ok else 1)
