"""`skyreels t2v`, `i2v` and `extend`: flags to a Request, then the library does the rest."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app, user_errors
from .options import (
    Aspect, Attention, Cache, Cfg, Compile, Device, DryRun, Dtype, Enhance, Enhancer, Fps, Frames, From, Gpus, Grid,
    Guidance, Height, Lora, Model, Negative, Offload, Output, Overwrite, Quantize, Quiet, Resolution, Ring, Seconds, Seed,
    Shift, Steps, TextEncoderDevice, TiledDecode, Ulysses, Width,
)

LONG_RUN_S = 3600  # warn up front about runs longer than this
COLOR_MATCH_HELP = ("Match each new window's colour (mean and spread of each channel) to the frames it "
                    "continues from, against brightness and colour drift. A correction, not a cure: it removes "
                    "a global shift per window, not local errors, and it also evens out a change of light the "
                    "prompt asks for.")


def _amount(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.1f} {unit}"
    return f"{flops:.0f} FLOP"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.0f} s"


def _spec(model: str | None, command: str, recorded=None):
    from ..models.registry import resolve_model

    if model is None and recorded is not None:  # --from: the recorded model unless -m is given
        model = recorded.model_name
    return resolve_model(model, command)


def _recorded(from_: str | None):
    """The settings recorded in the --from video, folder or JSON (None without --from)."""
    from ..core.replay import read_recorded

    return None if from_ is None else read_recorded(from_)


def _missing(argument: str, command: str, example: str):
    from ..errors import UsageError

    return UsageError(f"Missing argument '{argument}': e.g. skyreels {command} {example}, or --from VIDEO.mp4 to run "
                      f"a recorded one again; see skyreels {command} --help")


def _run(command: str, spec, device: str, dtype: str | None, output: str | None, overwrite: bool,
         quiet: bool, dry_run: bool, resume: bool = False, runtime: dict | None = None,
         loras: list[str] | None = None, enhancer: str | None = None, recorded=None, **fields) -> None:
    """Check everything, load the model, generate, print the output path (with dry_run: only check).

    `runtime`: how the model runs (offload, quantize, cfg, tiled_decode, text_encoder_device, attention, compile).
    `loras`: --lora values; `enhancer`: the --enhance LLM ("" for the default), None for no enhancement.
    `recorded`: settings read by --from, which the request fields given (not None) override.
    """
    runtime = dict(runtime or {})
    parallel = _join_parallel(device)  # under torchrun: rank 0 leads, the others follow it
    if parallel is not None and not parallel.is_main:
        return _follow(parallel, spec, dtype, runtime, loras)
    try:
        _lead(command, spec, device, dtype, output, overwrite, quiet, dry_run, resume, runtime, loras, enhancer,
              recorded, parallel, fields)
    finally:
        if parallel is not None and not parallel.shared_job:
            parallel.share(None)  # stopped before loading (an error, --dry-run): the others wait for nothing


def _lead(command, spec, device, dtype, output, overwrite, quiet, dry_run, resume, runtime, loras, enhancer, recorded,
          parallel, fields) -> None:
    """`_run` on a single process, or on rank 0 of a context-parallel run."""
    from .. import load, prepare
    from ..core.enhance import enhance_fields
    from ..models.loading import check_device, dtype_name, pick_dtype
    from ..models.lora import resolve_lora
    from ..runtime.attention import pick_backend
    from ..runtime.compile import check_compile
    from ..runtime.parallel import check_layout_options
    from ..runtime.plan import resolve_plan
    from .memory import keep_host_memory_flat, release_freed_memory
    from .progress import ProgressDisplay

    check_layout_options(runtime.get("ulysses"), runtime.get("ring"), parallel)  # --dry-run refuses them too
    dev = parallel.device if parallel is not None else check_device(device, spec)
    if recorded is not None:
        dtype, runtime["quantize"] = recorded.load_options(dev.type, dtype, runtime.get("quantize", "auto"))
    # Checked here too so that --dry-run refuses a kernel that cannot run on this device, as a run would.
    pick_backend(runtime.get("attention", "auto"), dev, pick_dtype(dtype, dev))
    if runtime.get("compile"):
        check_compile(dev)
    dtype = dtype_name(pick_dtype(dtype, dev))
    loras = [resolve_lora(text) for text in loras or []]  # a missing file is refused before anything loads
    fields = enhance_fields(fields, enhancer, dev, dry_run=dry_run, say=None if quiet else _say)
    job = prepare(spec, _request(recorded, fields, spec), output, overwrite=overwrite, resume=resume, dtype=dtype,
                  processes=1 if parallel is None else parallel.world)
    if job.saved and runtime.get("quantize", "auto") == "auto":  # continue with the weights it started with
        runtime["quantize"] = job.saved["model"].get("quantize", "none")
    estimate = job.estimate(dev.type)
    if dry_run:
        job.release()
        r = job.request
        frames = r.base_frames if spec.forcing else r.frames
        _, reason = resolve_plan(spec, dev, height=r.height, width=r.width, frames=frames,
                                 **{k: v for k, v in runtime.items() if k not in NOT_MEMORY})
        work = f"; about {_amount(estimate[0])} of transformer work, {_duration(estimate[1])} on {dev.type}" \
            if estimate else ""
        typer.echo(f"{command}: {job.describe()}{work}")
        typer.echo(f"memory plan: {reason}")
        return
    if estimate and estimate[1] > LONG_RUN_S and not quiet:
        typer.echo(f"warning: this run is about {_amount(estimate[0])} of transformer work, roughly "
                   f"{_duration(estimate[1])} on {dev.type} (Ctrl-C stops it; --dry-run checks a plan first)", err=True)
    if parallel is not None:  # the other ranks load the same way, then follow this job
        parallel.share((dtype, runtime, job.request))
        parallel.shared_job = True
    try:
        loaded = load(spec, device=str(dev), dtype=dtype, progress=not quiet, plan_for=job.request, loras=loras,
                      parallel=parallel or False, **runtime)
    except BaseException:
        job.release()
        raise
    if not quiet:
        typer.echo(f"{command}: {job.describe()}", err=True)
        typer.echo(f"memory plan: {loaded.memory_reason}", err=True)
        if parallel is not None:
            from .info import parallel_line

            typer.echo(parallel_line(loaded.runtime["parallel"]), err=True)
    on_window = None
    if command == "extend":
        keep_host_memory_flat()
        on_window = release_freed_memory
    result = loaded.run(job, on_window=on_window, progress=None if quiet else ProgressDisplay())
    if result.resumed and not quiet:
        typer.echo(f"resumed: the decoder's state was rebuilt by decoding {result.replayed_latents} latent frames "
                   "again", err=True)
    if result.step_cache and not quiet:
        c = result.step_cache
        typer.echo(f"step cache: skipped {c['skipped']} of {c['calls']} model calls, threshold {c['threshold']}",
                   err=True)
    typer.echo(str(result.path))


NOT_MEMORY = ("attention", "compile", "ulysses", "ring")  # runtime options the memory planner does not take


def _join_parallel(device: str):
    """This process's place in a torchrun launch (None when not launched by torchrun)."""
    from ..runtime.parallel import init_parallel, launched_by_torchrun

    return init_parallel(device) if launched_by_torchrun() else None


def _follow(parallel, spec, dtype, runtime: dict, loras) -> None:
    """A rank but the first: load as rank 0 did, then take part in its job; prints nothing."""
    from .. import load
    from ..models.lora import resolve_lora

    started = parallel.share(None)
    if started is None:  # rank 0 stopped before loading (a usage error, --dry-run): it says why
        return
    dtype, runtime, request = started
    loaded = load(spec, device=str(parallel.device), dtype=dtype, progress=False, plan_for=request,
                  loras=[resolve_lora(text) for text in loras or []], parallel=parallel, **runtime)
    loaded.follow()


def _request(recorded, fields: dict, spec):
    from ..core.replay import replay_request
    from ..core.request import Request

    if recorded is not None:
        return replay_request(recorded, fields, forcing=spec.forcing)
    return Request(**{name: value for name, value in fields.items() if value is not None})


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _enhancer(enhance: bool, enhancer: str | None) -> str | None:
    """--enhancer implies --enhance; "" stands for the registry's default enhancer."""
    return enhancer if enhancer else ("" if enhance else None)


def _runtime(offload: str, quantize: str, cfg: str, tiled_decode: bool | None, text_encoder_device: str | None,
             attention: str, compile: bool, ulysses: int | None = None, ring: int | None = None) -> dict:
    return {"offload": offload, "quantize": quantize, "cfg": cfg, "tiled_decode": tiled_decode,
            "text_encoder_device": text_encoder_device or "auto", "attention": attention, "compile": compile,
            "ulysses": ulysses, "ring": ring}


@app.command()
def t2v(
    prompt: Annotated[str | None, typer.Argument(help="What the video shows.", show_default=False)] = None,
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, frames: Frames = None, seconds: Seconds = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "auto", dtype: Dtype = None, sigma_grid: Grid = None,
    offload: Offload = "auto", quantize: Quantize = "auto", cfg: Cfg = "auto", tiled_decode: TiledDecode = None,
    text_encoder_device: TextEncoderDevice = "auto", attention: Attention = "auto", compile: Compile = False,
    cache: Cache = None, overwrite: Overwrite = False, quiet: Quiet = False, dry_run: DryRun = False,
    lora: Lora = None, enhance: Enhance = False, enhancer: Enhancer = None,
    resolution: Resolution = None, aspect: Aspect = None, from_: From = None,
    gpus: Gpus = None, ulysses: Ulysses = None, ring: Ring = None,
) -> None:
    """Text to video: one clip from a prompt.

    Examples:

      skyreels t2v "a red fox running through snow"

      skyreels t2v "a cat" --model tiny --device cpu -o cat.mp4

      skyreels t2v "a lighthouse at dawn" --aspect 9:16
    """
    with user_errors("t2v"):
        recorded = _recorded(from_)
        if prompt is None and recorded is None:
            raise _missing("PROMPT", "t2v", '"a red fox running through snow"')
        _run("t2v", _spec(model, "t2v", recorded), device, dtype, output, overwrite, quiet, dry_run, cache=cache,
             recorded=recorded, resolution=resolution, aspect=aspect,
             runtime=_runtime(offload, quantize, cfg, tiled_decode, text_encoder_device, attention, compile, ulysses,
                              ring),
             loras=lora, enhancer=_enhancer(enhance, enhancer), prompt=prompt, seed=seed,
             steps=steps, guidance=guidance, shift=shift, height=height, width=width, frames=frames, seconds=seconds, fps=fps,
             negative_prompt=negative_prompt, sigma_grid=sigma_grid)


@app.command()
def i2v(
    image: Annotated[str | None, typer.Argument(help="First frame: resized and centre-cropped to the video size.",
                                                show_default=False)] = None,
    prompt: Annotated[str | None, typer.Argument(help="What happens next.", show_default=False)] = None,
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, frames: Frames = None, seconds: Seconds = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "auto", dtype: Dtype = None, sigma_grid: Grid = None,
    offload: Offload = "auto", quantize: Quantize = "auto", cfg: Cfg = "auto", tiled_decode: TiledDecode = None,
    text_encoder_device: TextEncoderDevice = "auto", attention: Attention = "auto", compile: Compile = False,
    cache: Cache = None, overwrite: Overwrite = False, quiet: Quiet = False, dry_run: DryRun = False,
    lora: Lora = None, enhance: Enhance = False, enhancer: Enhancer = None,
    resolution: Resolution = None, aspect: Aspect = None, from_: From = None,
    gpus: Gpus = None, ulysses: Ulysses = None, ring: Ring = None,
) -> None:
    """Image to video: animate a still image. A portrait image gives a portrait video.

    Examples:

      skyreels i2v photo.png "the waves roll in"

      skyreels i2v photo.png --model tiny --device cpu -o frames/
    """
    with user_errors("i2v"):
        recorded = _recorded(from_)
        if image is None and recorded is None:
            raise _missing("IMAGE", "i2v", 'photo.png "the waves roll in"')
        _run("i2v", _spec(model, "i2v", recorded), device, dtype, output, overwrite, quiet, dry_run, cache=cache,
             recorded=recorded, resolution=resolution, aspect=aspect,
             runtime=_runtime(offload, quantize, cfg, tiled_decode, text_encoder_device, attention, compile, ulysses,
                              ring),
             loras=lora, enhancer=_enhancer(enhance, enhancer), prompt=prompt, image=image, seed=seed,
             steps=steps, guidance=guidance, shift=shift, height=height, width=width, frames=frames, seconds=seconds, fps=fps,
             negative_prompt=negative_prompt, sigma_grid=sigma_grid)


@app.command()
def extend(
    prompt: Annotated[str | None, typer.Argument(help="What the video shows.", show_default=False)] = None,
    frames: Frames = None,
    seconds: Seconds = None,
    base_frames: Annotated[Optional[int], typer.Option("--base-frames", help="Window length in frames, 4k+1 (model default: 97 at 540P, 121 at 720P).")] = None,
    overlap: Annotated[Optional[int], typer.Option("--overlap", help="Frames each window shares with the one before, 4k+1 (17, less for short windows).")] = None,
    ar_step: Annotated[Optional[int], typer.Option("--ar-step", help="Asynchronous lag between causal blocks in steps (0: synchronous).")] = None,
    causal_block: Annotated[Optional[int], typer.Option("--causal-block", help="Latent frames per causal block (1; 5 with --ar-step 5).")] = None,
    addnoise: Annotated[Optional[float], typer.Option("--addnoise", help="Noise on the carried-over frames, 0-50 (20; reduces drift).")] = None,
    causal_attention: Annotated[Optional[bool], typer.Option("--causal-attention", help="Block-causal attention inside a window.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Start frame.")] = None,
    end_image: Annotated[Optional[str], typer.Option("--end-image", help="Last frame.")] = None,
    video: Annotated[Optional[str], typer.Option("--video", help="Continue this video; --frames then counts new frames.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run writing to the same -o.")] = False,
    color_match: Annotated[bool, typer.Option("--color-match", help=COLOR_MATCH_HELP)] = False,
    script: Annotated[Optional[str], typer.Option("--script", help="A shot list (TOML): settings, then [[shot]] tables with a prompt and frames or seconds each; one continuous video, cut between shots. Flags given win over the file.")] = None,
    prompt_file: Annotated[Optional[str], typer.Option("--prompt-file", help="One prompt per line, one line per window (blank lines and # comments skipped).")] = None,
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "auto", dtype: Dtype = None, sigma_grid: Grid = None,
    offload: Offload = "auto", quantize: Quantize = "auto", cfg: Cfg = "auto", tiled_decode: TiledDecode = None,
    text_encoder_device: TextEncoderDevice = "auto", attention: Attention = "auto", compile: Compile = False,
    cache: Cache = None, overwrite: Overwrite = False, quiet: Quiet = False, dry_run: DryRun = False,
    lora: Lora = None, enhance: Enhance = False, enhancer: Enhancer = None,
    resolution: Resolution = None, aspect: Aspect = None, from_: From = None,
    gpus: Gpus = None, ulysses: Ulysses = None, ring: Ring = None,
) -> None:
    """Long video with diffusion forcing, window by window, streamed to disk as it is made.

    Memory stays that of one window however long the video. After each window the
    state is saved beside the output; if the run is interrupted, the same command
    with --resume continues it and gives the same result.

    Unlike the reference code, lengths that would leave undenoised tail frames are
    refused with lengths that work, a start image stays fixed in asynchronous mode,
    the end image is not repeated in the output (and is seen by every frame under
    --causal-attention), and --addnoise is reproducible from the seed.

    Examples:

      skyreels extend "a sailboat crossing the bay at dusk" --seconds 30

      skyreels extend "the fox keeps running" --video fox.mp4 --frames 240 -o fox-long.mp4

      skyreels extend "a city at night" --frames 257 --ar-step 5 --causal-block 5 --causal-attention

    A shot list (--script film.toml) gives settings and [[shot]] tables, each with a prompt and frames or
    seconds: one continuous video, windows cut between shots; see the README.
    """
    with user_errors("extend"):
        o = dict(locals())  # every option by name: a --script or --prompt-file fills in those not given
        from ..errors import UsageError

        if script or prompt_file:
            from ..core.script import script_options

            o = script_options(o, extend, script, prompt_file)
        recorded, shots = _recorded(o["from_"]), o.get("shots")
        if recorded is None and o["frames"] is None and o["seconds"] is None and not shots:
            raise UsageError("extend needs a length: --frames (e.g. 1440 for a minute at 24 fps) or --seconds")
        if recorded is None and not ((o["prompt"] or "").strip() or o["image"] or o["video"] or shots):
            raise UsageError('extend needs a prompt, e.g. skyreels extend "a red fox running through snow" --frames 240')
        _run("extend", _spec(o["model"], "extend", recorded), o["device"], o["dtype"], o["output"], o["overwrite"],
             o["quiet"], o["dry_run"], o["resume"], cache=o["cache"], recorded=recorded, resolution=o["resolution"],
             aspect=o["aspect"], runtime=_runtime(o["offload"], o["quantize"], o["cfg"], o["tiled_decode"],
                                                  o["text_encoder_device"], o["attention"], o["compile"],
                                                  o["ulysses"], o["ring"]),
             loras=o["lora"], enhancer=_enhancer(o["enhance"], o["enhancer"]),
             color_match=_color_mode(o["color_match"]),
             **{name: o[name] for name in EXTEND_FIELDS}, shots=shots)


EXTEND_FIELDS = ("prompt", "frames", "base_frames", "overlap", "ar_step", "causal_block", "addnoise", "causal_attention",
                 "image", "end_image", "video", "seconds", "seed", "steps", "guidance", "shift", "height", "width",
                 "fps", "negative_prompt", "sigma_grid")


def _color_mode(on: bool) -> str | None:
    from ..media.colour import DEFAULT_MODE

    return DEFAULT_MODE if on else None


def _defaults(command: str) -> str:
    """The help's last paragraph: the real defaults, read from the registry."""
    from ..models.registry import load_registry

    registry = load_registry()
    spec = registry.models[registry.defaults[command]]
    window = f", windows of {spec.base_frames} frames" if command == "extend" else ""
    return (f"\n\n    Defaults: model {spec.alias} ({spec.width}x{spec.height}, {spec.frames} frames, {spec.steps} steps, "
            f"guidance {spec.guidance}, shift {spec.shift}, {spec.fps} fps{window}); device auto; output "
            "outputs/<time>_<seed>_<prompt>.mp4.")


for _command in (t2v, i2v, extend):
    _command.__doc__ += _defaults(_command.__name__)
