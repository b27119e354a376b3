"""`skyreels t2v`, `i2v` and `extend`: flags to a Job, then the library's runner (cli/jobs.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app, user_errors
from .flags import with_request_flags, with_run_flags
from .jobs import JobFlags, run_from_flags
from .options import DryRun, Enhance, Enhancer, From, Gpus, Model, Output, Overwrite, Quiet, Resume, Server


@app.command()
@with_run_flags()
@with_request_flags("t2v")
def t2v(
    prompt: Annotated[str | None, typer.Argument(help="What the video shows.", show_default=False)] = None,
    model: Model = None, output: Output = None, overwrite: Overwrite = False, quiet: Quiet = False,
    dry_run: DryRun = False, enhance: Enhance = False, enhancer: Enhancer = None, from_: From = None,
    gpus: Gpus = None, server: Server = None, *, fields: dict, load: dict,
) -> None:
    """Text to video: one clip from a prompt.

    Examples:

        skyreels t2v "a red fox running through snow"
        skyreels t2v "a cat" --model tiny --device cpu -o cat.mp4
        skyreels t2v "a lighthouse at dawn" --aspect 9:16
    """
    with user_errors("t2v", quiet):
        run_from_flags(JobFlags("t2v", {"prompt": prompt, **fields}, load, model, output, overwrite, False,
                                _enhance(enhance, enhancer), from_, quiet, dry_run, server=server, gpus=gpus),
                       missing=("PROMPT", '"a red fox running through snow"') if prompt is None else None)


@app.command()
@with_run_flags()
@with_request_flags("i2v")
def i2v(
    image: Annotated[str | None, typer.Argument(help="First frame: resized and centre-cropped to the video size.",
                                                show_default=False)] = None,
    prompt: Annotated[str | None, typer.Argument(help="What happens next.", show_default=False)] = None,
    model: Model = None, output: Output = None, overwrite: Overwrite = False, quiet: Quiet = False,
    dry_run: DryRun = False, enhance: Enhance = False, enhancer: Enhancer = None, from_: From = None,
    gpus: Gpus = None, server: Server = None, *, fields: dict, load: dict,
) -> None:
    """Image to video: animate a still image. A portrait image gives a portrait video.

    Examples:

        skyreels i2v photo.png "the waves roll in"
        skyreels i2v photo.png --model tiny --device cpu -o frames/
    """
    with user_errors("i2v", quiet):
        run_from_flags(JobFlags("i2v", {"prompt": prompt, "image": image, **fields}, load, model, output, overwrite,
                                False, _enhance(enhance, enhancer), from_, quiet, dry_run, server=server, gpus=gpus),
                       missing=("IMAGE", 'photo.png "the waves roll in"') if image is None else None)


@app.command()
@with_run_flags()
@with_request_flags("extend")
def extend(
    prompt: Annotated[str | None, typer.Argument(help="What the video shows.", show_default=False)] = None,
    model: Model = None, output: Output = None, overwrite: Overwrite = False, resume: Resume = False,
    quiet: Quiet = False, dry_run: DryRun = False, enhance: Enhance = False, enhancer: Enhancer = None,
    script: Annotated[Optional[str], typer.Option("--script", help="A shot list (TOML): settings, then [[shot]] tables with a prompt and frames or seconds each; one continuous video, cut between shots. Flags given win over the file.")] = None,
    prompt_file: Annotated[Optional[str], typer.Option("--prompt-file", help="One prompt per line, one line per window (blank lines and # comments skipped).")] = None,
    from_: From = None, gpus: Gpus = None, server: Server = None,
    keep_last: Annotated[Optional[float], typer.Option("--keep-last", help="With --live: keep only the last this many seconds of HLS segments on disk (the video and its timeline stay whole).")] = None,
    *, fields: dict, load: dict,
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

    --live makes windows until Ctrl-C (or --frames/--seconds, then the most), watchable as it is made
    (NAME.hls/live.m3u8); each line on standard input steers it from the next window; see docs/live.md.
    """
    with user_errors("extend", quiet):
        flags = JobFlags("extend", {"prompt": prompt, **fields}, load, model, output, overwrite, resume,
                         _enhance(enhance, enhancer), from_, quiet, dry_run, script, prompt_file, server, gpus,
                         keep_last)
        run_from_flags(flags)


def _enhance(enhance: bool, enhancer: str | None) -> str | None:
    """--enhancer implies --enhance; "default" is the registry's enhancer."""
    return enhancer if enhancer else ("default" if enhance else None)


def _defaults(command: str) -> str:
    """The help's last paragraph: the real defaults, read from the registry."""
    from ..models.registry import load_registry

    registry = load_registry()
    spec = registry.models[registry.defaults[command]]
    window = f", windows of {spec.base_frames} frames" if command == "extend" else ""
    return (f"\n\n    Defaults: model {spec.alias} ({spec.width}x{spec.height}, {spec.frames} frames, {spec.steps} steps, "
            f"guidance {spec.guidance}, shift {spec.shift}, {spec.fps} fps{window}); device auto; output "
            "`outputs/<time>_<seed>_<prompt>.mp4`.")


for _command in (t2v, i2v, extend):
    if _command.__doc__ is not None:  # None under python -OO, which drops docstrings
        _command.__doc__ += _defaults(_command.__name__)
