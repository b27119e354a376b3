"""From a command's flags to a `Job`, and the job through the library's runner, drawn on stderr.

A command's flags give the request fields and run options that were set; `--from` fills in what a
recorded video was made with, `--script`/`--prompt-file` what a shot list gives (flags given win over
both). Then the job goes to `sk.check` (a dry run) or `sk.run`, with the progress display listening to
its events.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer

from ..errors import UsageError


@dataclass(frozen=True)
class JobFlags:
    """What a generating command was given."""

    command: str
    fields: dict                # request fields given (None: not given)
    load: dict                  # run options, by name
    model: str | None
    output: str | None
    overwrite: bool
    resume: bool
    enhance: str | None         # "default" or an enhancer's name; None: no enhancement
    from_: str | None           # --from: a recorded video, PNG folder or settings JSON
    quiet: bool
    dry_run: bool
    script: str | None = None   # extend --script
    prompt_file: str | None = None  # extend --prompt-file
    server: str | None = None   # --server: submit to a running service instead (cli/remote.py)
    gpus: int | None = None     # --gpus with --server: the job's GPUs at the service
    keep_last: float | None = None  # extend --live --keep-last S


def run_from_flags(flags: JobFlags, missing: tuple[str, str] | None = None) -> None:
    """Build the job the flags describe and run it (or only check it, with --dry-run).

    `missing`: the command's required argument and an example, when it was not given (fine with --from)."""
    from ..core.replay import read_recorded

    recorded = None if flags.from_ is None else read_recorded(flags.from_)
    if missing is not None and recorded is None:
        argument, example = missing
        raise UsageError(f"Missing argument '{argument}': e.g. skyreels {flags.command} {example}, or --from "
                         f"VIDEO.mp4 to run a recorded one again; see skyreels {flags.command} --help")
    job = build_job(flags, recorded)
    if flags.server is not None:
        from .remote import run_remote

        run_remote(job, flags.server, quiet=flags.quiet, dry_run=flags.dry_run, gpus=flags.gpus)
    elif flags.dry_run:
        _dry_run(job)
    else:
        run_job(job, quiet=flags.quiet)


def build_job(flags: JobFlags, recorded=None):
    """The job of a command's flags, with --from's recorded settings and a shot list's folded in."""
    from dataclasses import replace

    from ..core.job import COMMAND_FIELDS, Job
    from ..core.replay import replay_request
    from ..models.loading import check_device
    from ..models.naming import resolve_model

    fields = {name: value for name, value in flags.fields.items() if value is not None}
    settings = {**fields, **flags.load, "model": flags.model, "output": flags.output, "overwrite": flags.overwrite,
                "resume": flags.resume, "enhance": flags.enhance, "keep_last": flags.keep_last}
    if flags.script or flags.prompt_file:
        settings = _with_shot_list(flags, settings)
    elif flags.command == "extend":
        _check_length_and_prompt(settings, recorded)
    if recorded is None:
        return Job.from_settings(flags.command, {k: v for k, v in settings.items() if v is not None})
    model = settings["model"] or recorded.model_name  # the recorded model unless -m is given
    spec = resolve_model(model, flags.command)
    device = check_device(settings.get("device", "auto"), spec)
    dtype, quantize = recorded.load_options(device.type, settings.get("dtype"), settings.get("quantize", "auto"))
    accelerator = settings.get("accelerator") or recorded.model.get("accelerator")  # its LoRA is part of the model
    own = {k: v for k, v in {**settings, "model": model, "dtype": dtype, "quantize": quantize,
                             "accelerator": accelerator}.items()
           if v is not None and k not in COMMAND_FIELDS[flags.command]}
    return replace(Job.from_settings(flags.command, own), request=replay_request(recorded, fields,
                                                                                 forcing=spec.forcing))


def _check_length_and_prompt(settings: dict, recorded) -> None:
    if recorded is not None:
        return
    if settings.get("frames") is None and settings.get("seconds") is None and not settings.get("live"):
        raise UsageError("extend needs a length: --frames (e.g. 1440 for a minute at 24 fps) or --seconds")
    if not ((settings.get("prompt") or "").strip() or settings.get("image") or settings.get("video")):
        raise UsageError('extend needs a prompt, e.g. skyreels extend "a red fox running through snow" --frames 240')


def _with_shot_list(flags: JobFlags, settings: dict) -> dict:
    """The settings with a --script or --prompt-file folded in: the flags given win over the file's settings,
    the shots give the prompts and the length."""
    from ..core.shot_list import read_prompt_file, read_script

    if flags.script and flags.prompt_file:
        raise UsageError("give --script or --prompt-file, not both")
    if (settings.get("prompt") or "").strip():
        which = "--script" if flags.script else "--prompt-file"
        raise UsageError(f"the prompts of a {which} come from the file; leave out the PROMPT argument")
    if flags.enhance is not None:  # --enhance rewrites the one prompt of a request; a shot list's are the shots'
        raise UsageError("--enhance rewrites a single prompt; with a shot list, write each shot's prompt in full")
    given = {name: value for name, value in settings.items() if _given(value)}
    given.pop("prompt", None)
    if flags.prompt_file:
        return {**given, "shots": read_prompt_file(flags.prompt_file)}
    script = read_script(flags.script)
    return {**script.settings, **given, "shots": script.shots}


def _given(value) -> bool:
    """A flag's value that says something: not left at None, off, empty or auto."""
    return not (value is None or value is False or value == () or value == "auto")


def _dry_run(job) -> None:
    """Print what the job would make. Under torchrun (--gpus N) the first process checks it for all of them."""
    from .. import check
    from ..core.estimate import format_flops
    from ..core.events import format_duration
    from ..runtime.launch import launched_by_torchrun

    parallel = None
    if launched_by_torchrun():
        from ..runtime.parallel import init_parallel

        parallel = init_parallel(job.load.device)
        if not parallel.is_main:
            parallel.share(None)  # wait while the first checks: processes of one group end together
            return
    try:
        checked = check(job, parallel=parallel)
    finally:
        if parallel is not None:
            parallel.share(None)
    if checked.enhance:
        typer.echo(checked.enhance, err=True)
    work = ""
    if checked.estimate:
        flops, seconds = checked.estimate
        work = f"; about {format_flops(flops)} of transformer work, {format_duration(seconds)} on {checked.device.type}"
    typer.echo(f"{job.command}: {checked.describe()}{work}")
    typer.echo(f"memory plan: {checked.memory_plan}")


def run_job(job, *, quiet: bool, pool=None) -> None:
    """`sk.run(job)` with the progress display on stderr (nothing with `quiet`), then the output's path on stdout."""
    from .. import run
    from .host_memory import keep_host_memory_flat, release_freed_memory
    from .progress import ProgressDisplay

    on_window = None
    if job.command == "extend":
        keep_host_memory_flat()
        on_window = release_freed_memory
    if job.request.live:
        result = _run_live(job, quiet=quiet, pool=pool, on_window=on_window)
    else:
        result = run(job, pool=pool, on_event=None if quiet else ProgressDisplay(), on_window=on_window,
                     progress=not quiet)
    if result is None:  # a process of a several-GPU run but the first: it writes nothing
        return
    if result.resumed and not quiet:
        typer.echo(f"resumed: the decoder's state was rebuilt by decoding {result.replayed_latents} latent frames "
                   "again", err=True)
    if result.step_cache and not quiet:
        c = result.step_cache
        typer.echo(f"step cache: skipped {c['skipped']} of {c['calls']} model calls, threshold {c['threshold']}",
                   err=True)
    typer.echo(str(result.path))



def _run_live(job, *, quiet: bool, pool, on_window):
    """A live job: new prompts from standard input, one a line, each from the next window not yet started (said on
    stderr); at the end of input it goes on. The first Ctrl-C ends it after the window being made, keeping
    everything (the video, its sidecar and timeline); it also ends at its --frames/--seconds, if given."""
    import sys
    import threading

    from .. import run
    from ..core.live import LivePrompts
    from ..core.run import Cancel
    from .interrupt import ctrl_c_stops
    from .progress import ProgressDisplay

    prompts, cancel = LivePrompts(), Cancel()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                window = prompts.set(line.strip())
                if not quiet:
                    typer.echo(f"prompt from window {window + 1}: {line.strip()}", err=True)

    threading.Thread(target=read, name="live-prompts", daemon=True).start()
    with ctrl_c_stops(cancel.set):
        return run(job, pool=pool, on_event=None if quiet else ProgressDisplay(), on_window=on_window,
                   progress=not quiet, cancel=cancel, prompts=prompts)
