"""`skyreels info`: the settings recorded in a skyreels output, as a reader wants them (or as JSON)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .app import app, user_errors


@app.command()
def info(
    source: Annotated[str, typer.Argument(help="A video, PNG frames folder or settings JSON made by skyreels.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the recorded settings as JSON.")] = False,
) -> None:
    """Print the settings a skyreels output was made with: the request, the model, and how the run went
    (timings, frames, memory plan, colour per window). `--from` runs them again.

    Examples:

        skyreels info fox.mp4
        skyreels t2v --from fox.mp4 --seed 8 -o fox-8.mp4
    """
    from ..core.replay import read_recorded

    with user_errors("info"):
        recorded = read_recorded(source, "skyreels info")
        if as_json:
            data = {"skyreels": recorded.version, "request": recorded.request, "model": recorded.model}
            typer.echo(json.dumps(data if recorded.run is None else {**data, "run": recorded.run}, indent=2,
                                  ensure_ascii=False))
            return
        for line in describe(recorded):
            typer.echo(line)


def describe(recorded) -> list[str]:
    """The lines `skyreels info` prints for a `Recorded`."""
    lines = [f"{recorded.source}: made by skyreels {recorded.version} (settings read from {recorded.settings})"]
    lines += _model_lines(recorded.model)
    lines += ["request:"] + [f"  {name:<17} {value}" for name, value in _request_items(recorded.request)]
    lines += _shot_lines(recorded.shots or recorded.request.get("shots") or [])
    if recorded.run is None:
        lines.append("run: not recorded in the video itself (its sidecar JSON was not beside it)")
    else:
        lines += _run_lines(recorded.run)
        lines += colour_table(recorded.run.get("colour") or [])
    lines.append(f"run again: skyreels t2v|i2v|extend --from {recorded.source} [options to change]")
    return lines


def _model_lines(model: dict) -> list[str]:
    where = f"{model.get('repo')}@{model.get('revision')}" if model.get("revision") else model.get("repo")
    line = (f"model: {model.get('alias')} ({model.get('kind')}; {where}), {model.get('dtype')}, "
            f"weights {model.get('quantize', 'none')}, on {model.get('device')}")
    return [line]


def _request_items(request: dict) -> list[tuple[str, str]]:
    from ..core.resolve import DEFAULT_NEGATIVE_PROMPT

    items = []
    for name, value in request.items():
        if value is None or name in ("version", "shots"):
            continue
        if name == "negative_prompt" and value == DEFAULT_NEGATIVE_PROMPT:
            value = "(the official list)"
        items.append((name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return items


def _shot_lines(shots: list[dict]) -> list[str]:
    """A shot list as a table: where each shot starts in the generated video, its length and prompt (as made
    when the sidecar says; else as asked, cuts then rounded up to whole latent frames)."""
    if not shots:
        return []
    lines, first = ["shots:", "  shot  from frame  frames  prompt"], 0
    for number, shot in enumerate(shots, start=1):
        first = shot.get("first_frame", first)
        lines.append(f"  {number:>4}  {first:>10}  {shot['frames']:>6}  {shot['prompt']}")
        first += shot["frames"]
    return lines


def _run_lines(run: dict) -> list[str]:
    timings = run.get("timings_s") or {}
    frames = run.get("frames_written")
    shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    lines = [f"run: {frames} frames -> {run.get('output')}" + (f"; {shown}" if shown else "")]
    if frames and timings.get("generate"):
        lines.append(f"  {timings['generate'] / frames:.2f} s per frame while generating")
    if run.get("peak_vram_gb") is not None:
        lines.append(f"  peak VRAM {run['peak_vram_gb']} GB")
    if run.get("runtime"):
        runtime = dict(run["runtime"])
        ranks = runtime.pop("parallel", None)
        lines.append("  runtime: " + ", ".join(f"{k} {v}" for k, v in runtime.items()))
        if ranks:
            lines.append("  " + parallel_line(ranks))
    if run.get("resumed"):
        lines.append(f"  resumed (decoder state rebuilt from {run.get('replayed_latents', 0)} latent frames)")
    cache = run.get("step_cache")
    if cache:
        lines.append(f"  step cache: skipped {cache.get('skipped')} of {cache.get('calls')} model calls, "
                     f"threshold {cache.get('threshold')}")
    known = {"frames_written", "timings_s", "output", "resumed", "replayed_latents", "peak_vram_gb", "runtime",
             "step_cache", "colour"}
    lines += [f"  {name}: {json.dumps(value, ensure_ascii=False)}" for name, value in run.items() if name not in known]
    return lines


def parallel_line(ranks: dict) -> str:
    """The sidecar's `run.runtime.parallel` on one line (also printed when a parallel run starts)."""
    layout = " x ".join(f"{name} {ranks[name]}" for name in ("ulysses", "ring") if ranks.get(name, 1) > 1)
    line = f"parallel: {ranks.get('processes')} processes" + (f" ({layout})" if layout else "")
    if ranks.get("startup_s"):
        line += f", ready in {max(ranks['startup_s']):.1f} s"
    weights = ranks.get("loaded_bytes")
    if weights and len(weights) > 1:
        line += (f", weights read {weights[0] / 1e9:.3g} GB by the first process, "
                 f"{max(weights[1:]) / 1e9:.3g} GB by each other")
    return line


def colour_table(colour: list[dict]) -> list[str]:
    """Each window's mean and spread of R, G and B (levels 0-255) and the brightness drift over the run, as
    `media/colour.py` defines it (`drift`: the trend after the first window, the measure the tests hold)."""
    from ..media.colour import DRIFT_WINDOWS, drift, trend

    if not colour:
        return []
    lines = ["colour per window (levels 0-255):",
             f"  {'window':>6} {'from frame':>10}   {'mean R':>6} {'G':>6} {'B':>6}   {'std R':>6} {'G':>6} {'B':>6}"]
    for entry in colour:
        mean, std = entry.get("mean", [0, 0, 0]), entry.get("std", [0, 0, 0])
        lines.append(f"  {entry.get('window', '?'):>6} {entry.get('first_frame', '?'):>10}   "
                     + " ".join(f"{v:6.1f}" for v in mean) + "   " + " ".join(f"{v:6.1f}" for v in std))
    measured = [entry for entry in colour if len(entry.get("mean") or []) == 3]
    if len(measured) < DRIFT_WINDOWS:
        lines.append(f"  brightness drift: not measured (it needs {DRIFT_WINDOWS} windows or more: the first is left "
                     "out)")
        return lines
    moved, shown = trend(measured), f"{drift(measured):.1f}"
    way = "steady" if shown == "0.0" else "brighter" if moved > 0 else "darker"
    lines.append(f"  brightness drift: {shown} levels ({way}) along the trend of the windows after the first")
    return lines
