"""The `skyreels` command line: parse and validate, then call the library."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Annotated, Optional

import typer

from .errors import SkyreelsError, UsageError

app = typer.Typer(
    name="skyreels",
    help="Turn the released SkyReels-V2 checkpoints into video files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by the generating commands: declared once, used by each.
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Registry alias, Hub repo id or local folder.")]
Output = Annotated[Optional[str], typer.Option("--output", "-o", help="NAME.mp4, or DIR/ for PNG frames.")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed (default: drawn and reported).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (model default).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", "-g", help="Classifier-free guidance scale.")]
Shift = Annotated[Optional[float], typer.Option("--shift", help="Flow-matching time shift.")]
Height = Annotated[Optional[int], typer.Option("--height", "-H", help="Height in pixels, a multiple of 16.")]
Width = Annotated[Optional[int], typer.Option("--width", "-W", help="Width in pixels, a multiple of 16.")]
Frames = Annotated[Optional[int], typer.Option("--frames", "-f", help="Number of frames, 4k+1 (e.g. 97).")]
Fps = Annotated[Optional[int], typer.Option("--fps", help="Frames per second of the output.")]
Negative = Annotated[Optional[str], typer.Option("--negative-prompt", "-n", help="What to avoid (official list by default).")]
Device = Annotated[str, typer.Option("--device", "-d", help="cuda, cuda:N or cpu.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU).")]
Grid = Annotated[str, typer.Option("--sigma-grid", help="official (SkyReels-V2 sampler) or diffusers (as shipped).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; print only the output path.")]


@contextmanager
def user_errors():
    """Library errors become one line on stderr and an exit code; SKYREELS_DEBUG=1 shows the traceback."""
    try:
        yield
    except SkyreelsError as exc:
        if os.environ.get("SKYREELS_DEBUG"):
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; an extend run continues with the same command and --resume", err=True)
        raise typer.Exit(130) from None


def _generate(command: str, prompt: str, output: str | None, overwrite: bool, quiet: bool, resume: bool,
              options: dict, adjust=None) -> None:
    from .generate import run, saved_seed
    from .loading import check_device, dtype_name, pick_dtype
    from .registry import resolve_model
    from .settings import fill, validate
    from .writers import resolve_output

    spec = resolve_model(options.pop("model"), command)
    settings = fill(spec, command, prompt, options)
    if adjust is not None:
        settings = adjust(settings, options)
    validate(settings)
    device = check_device(settings.device)
    settings = replace(settings, dtype=dtype_name(pick_dtype(settings.dtype, device)))
    if resume and output is None:
        raise UsageError("--resume needs the -o path of the interrupted run")
    target = resolve_output(output, prompt=prompt, seed=settings.seed, overwrite=overwrite, resume=resume)
    if resume and options.get("seed") is None:
        seed = saved_seed(target)
        settings = replace(settings, seed=settings.seed if seed is None else seed)
    def announce() -> None:
        if not quiet:
            typer.echo(f"{command}: {settings.model}, {settings.width}x{settings.height}, {settings.frames} frames, "
                       f"seed {settings.seed}", err=True)

    path = run(spec, settings, target, resume=resume, progress=not quiet, on_start=announce)
    typer.echo(str(path))


def _orient_to_image(settings, options):
    """Without --height/--width, a portrait start image gives a portrait video."""
    from .images import load_image, oriented_size

    if settings.image is None or options.get("height") is not None or options.get("width") is not None:
        return settings
    img = load_image(settings.image, "IMAGE" if settings.command == "i2v" else "--image")
    height, width = oriented_size(img.size, settings.height, settings.width)
    return replace(settings, height=height, width=width)


@app.command()
def t2v(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, frames: Frames = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "cuda", dtype: Dtype = None, sigma_grid: Grid = "official",
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Text to video: one clip from a prompt.

    Examples:

      skyreels t2v "a red fox running through snow"

      skyreels t2v "a cat" --model tiny --device cpu -o cat.mp4
    """
    with user_errors():
        _generate("t2v", prompt, output, overwrite, quiet, False, dict(
            model=model, seed=seed, steps=steps, guidance=guidance, shift=shift, height=height, width=width,
            frames=frames, fps=fps, negative_prompt=negative_prompt, device=device, dtype=dtype,
            sigma_grid=_grid(sigma_grid)))


@app.command()
def i2v(
    image: Annotated[str, typer.Argument(help="First frame: resized and centre-cropped to the video size.")],
    prompt: Annotated[str, typer.Argument(help="What happens next.")] = "",
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, frames: Frames = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "cuda", dtype: Dtype = None, sigma_grid: Grid = "official",
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Image to video: animate a still image. A portrait image gives a portrait video.

    Examples:

      skyreels i2v photo.png "the waves roll in"

      skyreels i2v photo.png --model tiny --device cpu -o frames/
    """
    with user_errors():
        _generate("i2v", prompt, output, overwrite, quiet, False, dict(
            model=model, seed=seed, steps=steps, guidance=guidance, shift=shift, height=height, width=width,
            frames=frames, fps=fps, negative_prompt=negative_prompt, device=device, dtype=dtype,
            sigma_grid=_grid(sigma_grid), image=image), adjust=_orient_to_image)


def _grid(value: str) -> str:
    from .schedule import GRIDS

    if value not in GRIDS:
        raise UsageError(f"--sigma-grid must be one of {', '.join(GRIDS)}, got {value!r}")
    return value


@app.command()
def extend(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")] = "",
    frames: Frames = None,
    base_frames: Annotated[Optional[int], typer.Option("--base-frames", help="Window length in frames, 4k+1 (model default: 97 at 540P, 121 at 720P).")] = None,
    overlap: Annotated[int, typer.Option("--overlap", help="Frames each window shares with the one before, 4k+1.")] = 17,
    ar_step: Annotated[int, typer.Option("--ar-step", help="Asynchronous lag between causal blocks in steps (0: synchronous).")] = 0,
    causal_block: Annotated[int, typer.Option("--causal-block", help="Latent frames per causal block (5 with --ar-step 5).")] = 1,
    addnoise: Annotated[float, typer.Option("--addnoise", help="Noise on the carried-over frames, 0-50 (reduces drift).")] = 20.0,
    causal_attention: Annotated[bool, typer.Option("--causal-attention", help="Block-causal attention inside a window.")] = False,
    image: Annotated[Optional[str], typer.Option("--image", help="Start frame.")] = None,
    end_image: Annotated[Optional[str], typer.Option("--end-image", help="Last frame.")] = None,
    video: Annotated[Optional[str], typer.Option("--video", help="Continue this video; --frames then counts new frames (a multiple of 4).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run writing to the same -o.")] = False,
    model: Model = None, output: Output = None, seed: Seed = None, steps: Steps = None, guidance: Guidance = None,
    shift: Shift = None, height: Height = None, width: Width = None, fps: Fps = None,
    negative_prompt: Negative = None, device: Device = "cuda", dtype: Dtype = None, sigma_grid: Grid = "official",
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Long video with diffusion forcing, window by window, streamed to disk as it is made.

    Memory stays that of one window however long the video. After each window the
    state is saved beside the output; if the run is interrupted, the same command
    with --resume continues it and gives the same result.

    Unlike the reference code, lengths that would leave undenoised tail frames are
    refused with lengths that work, a start image stays fixed in asynchronous mode,
    the end image is not repeated in the output, and --addnoise is reproducible
    from the seed.

    Examples:

      skyreels extend "a sailboat crossing the bay at dusk" --frames 737

      skyreels extend "the fox keeps running" --video fox.mp4 --frames 240 -o fox-long.mp4

      skyreels extend "a city at night" --frames 257 --ar-step 5 --causal-block 5 --causal-attention
    """
    with user_errors():
        if image and video:
            raise UsageError("--image and --video cannot be used together: a continued video already has its start")
        _generate("extend", prompt, output, overwrite, quiet, resume, dict(
            model=model, seed=seed, steps=steps, guidance=guidance, shift=shift, height=height, width=width,
            frames=frames, fps=fps, negative_prompt=negative_prompt, device=device, dtype=dtype,
            sigma_grid=_grid(sigma_grid), image=image, end_image=end_image, video=video,
            base_frames=base_frames, overlap=overlap, ar_step=ar_step, causal_block=causal_block,
            addnoise=addnoise, causal_attention=causal_attention), adjust=_extend_defaults)


def _extend_defaults(settings, options):
    """Window size from the model; size and fps from the input video or start image."""
    from .settings import validate_extend, video_defaults

    if options.get("frames") is None:
        raise UsageError("extend needs --frames: the length of the video (e.g. 257 for about 10 s at 24 fps)")
    if settings.video:
        settings = video_defaults(settings, options)
    elif settings.image:
        settings = _orient_to_image(settings, options)
    validate_extend(settings)
    return settings


@app.command()
def models() -> None:
    """List the known models, whether each is in the cache, and its size on disk."""
    from .hub import cached_snapshot, disk_size
    from .registry import load_registry

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


@app.command()
def download(
    names: Annotated[list[str], typer.Argument(help="Aliases or Hub repo ids to fetch.")],
    quiet: Quiet = False,
) -> None:
    """Fetch models into the Hugging Face cache ahead of time (only the files skyreels loads).

    Example:

      skyreels download df-1.3b-540p i2v-1.3b-540p
    """
    from .hub import disk_size, ensure_model
    from .registry import resolve_model

    with user_errors():
        for name in names:
            spec = resolve_model(name, None)
            path = ensure_model(spec, progress=not quiet)
            typer.echo(f"{spec.alias}: {path} ({disk_size(path) / 1e9:.2f} GB)")


@app.command()
def doctor() -> None:
    """Check this machine: torch and CUDA, GPUs and free memory, ffmpeg, diffusers, the model cache."""
    from .doctor import report

    lines, ok = report()
    for line in lines:
        typer.echo(line)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    app(prog_name="skyreels")


if __name__ == "__main__":
    sys.exit(main())
