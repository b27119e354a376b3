"""The command line as a client of a running service: `t2v|i2v|extend ... --server URL` and `skyreels jobs`.

A generating command builds its `Job` as always (cli/jobs.py), then submits it to the service instead of running
it here (skyreels_cli/service/client.py): the input files are uploaded, the same progress display follows the
service's events, and the video and its settings are downloaded to -o. The token, when the service has one,
comes from $SKYREELS_TOKEN (or `skyreels jobs --token`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Optional

import typer

from ..errors import SkyreelsError, UsageError, warn
from .app import app, user_errors


class StoppedFollowing(SkyreelsError):
    exit_code = 130


def run_remote(job, server: str, *, quiet: bool, dry_run: bool = False, gpus: int | None = None) -> None:
    """Submit `job` to the service at `server` (on `gpus` of its workers), follow it on stderr, download the
    video; print its path."""
    from dataclasses import replace

    from ..service.client import Client, Warned
    from .progress import ProgressDisplay

    if dry_run:
        raise UsageError("--dry-run checks on this machine; the service checks a job when it is submitted (a bad "
                         "one is refused, nothing queued): leave out --server or --dry-run")
    target = _target(job, None) if job.output is not None else None  # refused now, before anything is sent
    client = Client(server, token=os.environ.get("SKYREELS_TOKEN"))
    video = client.submit(replace(job, output=None, output_dir=None, overwrite=False), gpus=gpus)
    if not quiet:
        where = f", {video['queue_position']} ahead of it" if video.get("queue_position") else ""
        typer.echo(f"submitted to {client.url}: {video['id']}{where}", err=True)
    display = None if quiet else ProgressDisplay()
    try:
        with _steered(client, video, quiet):
            for event in client.follow(video["id"]):
                if isinstance(event, Warned):
                    warn(event.message)
                elif display is not None:
                    display(event)
    except KeyboardInterrupt:
        raise StoppedFollowing(f"stopped following; job {video['id']} goes on at the service (`skyreels jobs cancel "
                               f"{video['id']} --server {client.url}` cancels it)") from None
    target = target or _target(job, video["seed"])
    client.download(video["id"], target.path)
    client.download(video["id"], target.sidecar, "settings")
    typer.echo(str(target.path))


@contextmanager
def _steered(client, video: dict, quiet: bool):
    """A live job's steering from here: each line of standard input is a prompt change posted to the service (the
    window it lands at said on stderr); the first Ctrl-C stops the job there, which then completes with everything
    it made (a second one stops following)."""
    if not video.get("live"):
        yield
        return
    import sys
    import threading

    from .interrupt import ctrl_c_stops

    if not quiet:
        typer.echo(f"live: watch {client.url}{video['live']['playlist']}; each line typed steers it, Ctrl-C stops it",
                   err=True)

    def read() -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                change = client.call("POST", f"/v1/videos/{video['id']}/prompt", {"prompt": line.strip()})
            except SkyreelsError as err:  # it has ended meanwhile, say: told, and the video still comes
                warn(str(err))
                return
            if not quiet:
                typer.echo(f"prompt from window {change['window'] + 1}: {line.strip()}", err=True)

    threading.Thread(target=read, name="live-prompts", daemon=True).start()
    with ctrl_c_stops(lambda: client.cancel(video["id"])):
        yield


def _target(job, seed: int | None):
    """Where the download goes: -o (an MP4: the service sends one), or the default name in outputs/."""
    from ..errors import setting
    from ..media.targets import resolve_output

    if job.output is not None and not job.output.lower().endswith(".mp4"):
        raise UsageError(f"{setting('output', job.output)}: a service sends an MP4; give -o NAME.mp4", field="output")
    return resolve_output(job.output, prompt=job.request.prompt, seed=seed if seed is not None else 0,
                          overwrite=job.overwrite, folder=job.output_dir)


# ------------------------------------------------------------------ skyreels jobs

@app.command()
def jobs(
    action: Annotated[str, typer.Argument(help="list (the default) or cancel.", show_default=False)] = "list",
    video_id: Annotated[Optional[str], typer.Argument(help="The job to cancel (its id, video_..., as listed).",
                                                      show_default=False)] = None,
    server: Annotated[Optional[str], typer.Option("--server", envvar="SKYREELS_SERVER", help="The service's address (default $SKYREELS_SERVER, else http://127.0.0.1:7860).")] = None,
    token: Annotated[Optional[str], typer.Option("--token", envvar="SKYREELS_TOKEN", help="The service's token, if it has one (default $SKYREELS_TOKEN).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many to list, newest first (at most 100).")] = 20,
) -> None:
    """The jobs of a running service (skyreels serve), newest first: status, progress, model, size, prompt; or
    cancel one (an extend keeps its finished windows).

    The service's address and token come from --server and --token, or from $SKYREELS_SERVER and
    $SKYREELS_TOKEN.

    Examples:

        skyreels jobs
        skyreels jobs --server http://127.0.0.1:7860 --limit 50
        skyreels jobs cancel video_0123456789abcdef01234567
    """
    from ..service.client import Client

    with user_errors("jobs"):
        if action not in ("list", "cancel"):
            raise UsageError(f"skyreels jobs {action}: give list (the default) or cancel ID")
        if action == "cancel" and not video_id:
            raise UsageError("skyreels jobs cancel needs the job's id, e.g. skyreels jobs cancel video_0123...; "
                             "`skyreels jobs` lists them")
        client = Client(server, token)
        if action == "cancel":
            job = client.cancel(video_id)
            ending = " (it stops at its next step)" if job["status"] == "in_progress" else ""
            typer.echo(f"{job['id']}: {job['status']}{ending}")
            return
        if not 1 <= limit <= 100:
            raise UsageError(f"--limit {limit}: give 1 to 100")
        listed = client.list(limit=limit)
    typer.echo(f"{'id':<30} {'status':<11} {'done':>4}  {'model':<14} {'size':<9} {'frames':>6}  {'created':<16}  prompt")
    for job in listed["data"]:
        created = datetime.fromtimestamp(job["created_at"]).strftime("%Y-%m-%d %H:%M")
        prompt = (job.get("prompt") or "").replace("\n", " ")
        typer.echo(f"{job['id']:<30} {job['status']:<11} {str(job['progress']) + '%':>4}  {job['model']:<14} "
                   f"{job['size']:<9} {job['frames']:>6}  {created:<16}  {prompt[:60]}")
    if listed["has_more"]:
        typer.echo(f"(more: --limit {min(limit * 2, 100)})")
