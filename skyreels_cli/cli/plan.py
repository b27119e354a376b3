"""`skyreels plan`: predicted peak VRAM and host memory of every memory plan for a model and size, and the one
`auto` picks."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer

from .app import app, user_errors
from .options import REQUEST_FLAGS

Height, Width, Frames = REQUEST_FLAGS["height"], REQUEST_FLAGS["width"], REQUEST_FLAGS["frames"]

Vram = Annotated[float | None, typer.Option("--vram", help="GPU memory in GB to plan for (default: the visible GPU's free memory).")]
HostRam = Annotated[float | None, typer.Option("--host-ram", help="Host memory in GB the plan must fit (default: this machine's available memory, or no limit with --vram).")]
Quantize = Annotated[str | None, typer.Option("--quantize", help="Only plans with this transformer storage: none, fp8 or int8.")]
Json = Annotated[bool, typer.Option("--json", help="Print every plan as JSON.")]
All = Annotated[bool, typer.Option("--all", help="List every variant, not only the best of each offload and quantization.")]
Accelerator = Annotated[str | None, typer.Option("--accelerator", help="Plan for a few-step accelerator's settings: "
                                                 "guidance 1 (one pass, no guidance batch) and its LoRA's memory.")]
Lora = Annotated[list[str] | None, typer.Option("--lora", help="A LoRA you will load with --lora (repeatable): "
                                                "its low-rank layers are counted beside the transformer's weights.")]


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="Registry alias or Hub repo id of a released architecture.")],
    height: Height = None, width: Width = None, frames: Frames = None, quantize: Quantize = None,
    vram: Vram = None, host_ram: HostRam = None, as_json: Json = False, show_all: All = False,
    accelerator: Accelerator = None, lora: Lora = None,
) -> None:
    """Predict peak GPU memory per phase and peak host memory for each memory plan (traced on fake tensors: no
    GPU, no download), and say which plan `--offload auto` picks.

    Examples:

        skyreels plan df-14b-540p --vram 24 --host-ram 32
        skyreels plan df-1.3b-540p --frames 257 --json
        skyreels plan df-14b-540p --vram 24 --accelerator lightx2v
        skyreels plan df-1.3b-540p --vram 12 --lora style.safetensors
    """
    from ..core.request import Request
    from ..core.resolve import accelerated, planned_shape
    from ..models.lora import adapter_bytes, resolve_lora
    from ..models.naming import resolve_model
    from ..run_options import QUANTIZES
    from ..runtime.plan import available_host_gb, choose, describe, flags, free_vram_gb, judge, predict

    with user_errors("plan"):
        if quantize is not None and quantize not in QUANTIZES:
            from ..errors import UsageError

            raise UsageError(f"--quantize must be one of {', '.join(QUANTIZES)}, got {quantize!r}")
        check_vram(vram)
        check_vram(host_ram, "--host-ram", "a 32 GB machine", 32)
        spec, _ = accelerated(resolve_model(model, None), accelerator)
        memory = vram if vram is not None else free_vram_gb()
        # This machine's host memory when planning for its GPU; a card given with --vram may sit in any host.
        host = host_ram if host_ram is not None or vram is not None else available_host_gb()
        # a GPU run holds a LoRA's layers in bf16 beside the weights (PEFT keeps them unquantized)
        given = adapter_bytes([resolve_lora(text) for text in lora or ()], 2)
        shape = None if spec.is_tiny else planned_shape(spec, Request(height=height, width=width, frames=frames),
                                                         given)
        predictions = predict(spec, shape, vram_gb=memory, **({"quantize": quantize} if quantize else {}))
        if memory is not None:
            predictions = judge(predictions, memory, host)
        rows = predictions if show_all or as_json else _best_of_each(predictions)
        if as_json:
            typer.echo(json.dumps([p.to_dict() for p in rows], indent=1))
        else:
            _table(spec.alias, rows)
            if spec.accelerator and shape is not None:
                typer.echo(f"with {spec.accelerator}: guidance {spec.guidance:g} ("
                           f"{'two passes' if shape.guided else 'one pass, no guidance batch'}), its LoRA "
                           f"{(shape.adapter_bytes - given) / 2**30:.2f} GB beside the transformer's weights")
            if given and shape is not None:
                typer.echo(f"with {len(lora)} LoRA{'s' * (len(lora) > 1)}: {given / 2**20:.1f} MB of low-rank "
                           "layers beside the transformer's weights")
        if memory is None:
            if not as_json:
                typer.echo("no GPU is visible: give --vram GB to see which plan fits")
            return
        chosen = choose(predictions, memory, host_gb=host)
        if not as_json:
            # What the loader's `resolve_plan` picks with --offload auto and --quantize as given here (auto: any).
            of_host = f" and {host:.1f} GB of host memory" if host is not None else ""
            over = f" ({chosen.note})" if chosen.note.startswith("predicted") else ""
            typer.echo(f"auto picks for {memory:.1f} GB{of_host} (--quantize {quantize or 'auto'}): "
                       f"{flags(chosen.plan)}, peak {chosen.peak_gb:.1f} GB, host {chosen.host_gb:.1f} GB: "
                       f"{describe(chosen.plan)}{over}")


def check_vram(vram: float | None, flag: str = "--vram", example: str = "a 24 GB card", gb: int = 24) -> None:
    """A --vram (or --host-ram) that is given must be a finite number of GB above 0 (inf, nan, 0 and below plan
    nothing)."""
    if vram is not None and not (math.isfinite(vram) and vram > 0):
        from ..errors import UsageError

        raise UsageError(f"{flag} must be a positive number of GB, got {vram}; e.g. {flag} {gb} for {example}")


def _best_of_each(predictions: list) -> list:
    """Per offload and quantization: the chosen or fastest fitting variant, else the smallest."""
    from ..runtime.plan import speed_rank

    groups: dict[tuple[str, str], list] = {}
    for p in predictions:
        groups.setdefault((p.plan.offload, p.plan.quantize), []).append(p)
    best = []
    for group in groups.values():
        fitting = [p for p in group if p.fits]
        best.append(min(fitting, key=lambda p: speed_rank(p.plan)) if fitting else min(group, key=lambda p: p.peak))
    return best


def _table(alias: str, rows: list) -> None:
    from ..runtime.plan import GB, MARGIN_BYTES, PHASES

    phases = [name for name in PHASES if any(name in p.phases for p in rows)]
    # The plan's settings first (`tiling`: decode in tiles or not; `encoder`: where the text encoder runs), then
    # the peak of each phase (text and image encoding, denoising, decoding): no name is used twice.
    head = f"{'offload':<10} {'quantize':<8} {'cfg':<8} {'tiling':<7} {'encoder':<7} " + \
        " ".join(f"{name:>7}" for name in phases) + f" {'peak':>7} {'host':>6}  {'fits':<4} chosen"
    typer.echo(f"{alias}: predicted peak GPU memory in GB per phase ({', '.join(phases)}; without the "
               f"{MARGIN_BYTES / GB:.1f} GB margin), peak and host memory with their margins; encoder: where the "
               "text encoder runs (disk: the GPU, read from disk for each new prompt)")
    typer.echo(head)
    for p in rows:
        fits = "-" if p.fits is None else ("yes" if p.fits else "no")
        cells = " ".join(f"{p.phases[name] / GB:>7.1f}" if name in p.phases else f"{'-':>7}" for name in phases)
        plan = p.plan
        decode, text = "tiled" if plan.tiled_decode else "untiled", {"cpu": "cpu", "disk": "disk"}.get(plan.text_encoder_device, "gpu")
        line = f"{plan.offload:<10} {plan.quantize:<8} {plan.cfg:<8} {decode:<7} {text:<7} " \
               f"{cells} {p.peak_gb:>7.1f} {p.host_gb:>6.1f}  {fits:<4} {'*' if p.chosen else ''}"
        typer.echo(line + (f"  ({p.note})" if p.note else ""))
