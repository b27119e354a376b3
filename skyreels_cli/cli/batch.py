"""`skyreels batch jobs.toml`: the file's jobs through the library, each model loaded once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app, user_errors
from .flags import with_run_flags
from .options import Overwrite, Quiet


@app.command()
@with_run_flags(("device", "dtype"), given_only=True)
def batch(
    file: Annotated[str, typer.Argument(help="The jobs file (TOML): defaults, then [[job]] tables.")],
    overwrite: Overwrite = False, quiet: Quiet = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every job and print what each would make; load and write nothing.")] = False,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run the jobs side by side on a Ray cluster's workers, one per GPU, through the service's queue: auto (the cluster `ray start` made), local (start one here), or HOST:PORT.")] = None,
    state_dir: Annotated[Optional[str], typer.Option("--state-dir", help="With --ray: keep the queue here, so that the same command run again after a crash continues its jobs (default: a temporary folder).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="With --ray on a cluster without GPUs: workers per node.")] = 1,
    shared_dir: Annotated[Optional[str], typer.Option("--shared-dir", help="With --ray: a folder every node mounts at the same path, where the workers write directly.")] = None,
    *, load: dict,
) -> None:
    """Many videos from one file, each model loaded once for all its jobs.

    The file's top-level settings are defaults for every job; each [[job]] has a command (t2v, i2v or
    extend), an output and any setting of that command under its name with underscores (base_frames,
    negative_prompt, ...). Paths are relative to the file, and a job without an output writes into
    outputs/ beside it. The file is checked as a whole first; then a failing job is reported and the
    others still run; a summary table ends the run, and the exit code is 1 if any job failed.

    Example file:

        model = "df-1.3b-540p"
        [[job]]
        command = "t2v"
        prompt = "a lighthouse in a storm"
        output = "storm.mp4"

    Examples:

        skyreels batch jobs.toml --dry-run
        skyreels batch jobs.toml --device cuda:1
        skyreels batch jobs.toml --ray auto
    """
    with user_errors("batch", quiet):
        if ray is not None:
            _on_cluster(file, ray, overwrite, quiet, dry_run, state_dir, workers, shared_dir, load)
            return
        if state_dir is not None or shared_dir is not None:
            from ..errors import UsageError

            raise UsageError(f"{'--state-dir' if state_dir is not None else '--shared-dir'} is the queue's of a "
                             "batch on a cluster: it goes with --ray")
        from ..core.batch import read_batch, run_batch
        from ..core.pool import ModelPool

        overrides = {**load, **({"overwrite": True} if overwrite else {})}
        jobs = read_batch(file, overrides)
        pool = ModelPool(progress=not quiet)
        try:
            outcomes = run_batch(jobs, pool=pool, dry_run=dry_run, on_job=_announcer(len(jobs), quiet),
                                 on_outcome=_reporter(dry_run, quiet), **_run_options(quiet, dry_run))
        finally:
            pool.clear()
        if not quiet:
            typer.echo(summary(outcomes, dry_run), err=True)
        if any(o.failed for o in outcomes):
            raise typer.Exit(1)


def _on_cluster(file: str, address: str, overwrite: bool, quiet: bool, dry_run: bool, state_dir, workers: int,
                shared_dir, load: dict) -> None:
    """The jobs through the service's queue on a Ray cluster (service/batch.py), side by side."""
    from pathlib import Path

    from ..core.batch import read_batch
    from ..errors import UsageError
    from ..service.batch import run_on_cluster

    if dry_run:
        raise UsageError("--dry-run checks the jobs on this machine: leave out --ray (the cluster checks each job "
                         "when it is queued, and a bad one fails alone)")
    if "device" in load:
        raise UsageError("--device is the cluster's workers' to choose (each runs on its own GPU): leave it out "
                         "with --ray")
    jobs = read_batch(file, {**load, **({"overwrite": True} if overwrite else {})})

    def started(number: int, job, worker: str) -> None:
        if not quiet:
            typer.echo(f"job {number} ({job.command}), {number} of {len(jobs)}, on {worker}: {_output(job)}",
                       err=True)

    outcomes = run_on_cluster(jobs, address, state_dir=Path(state_dir) if state_dir else None, cpu_workers=workers,
                              shared_dir=Path(shared_dir) if shared_dir else None, on_job=started,
                              on_outcome=_reporter(False, quiet),
                              on_page=None if quiet else lambda url: typer.echo(f"queue and page: {url}", err=True))
    if not quiet:
        typer.echo(summary(outcomes), err=True)
    if any(o.failed for o in outcomes):
        raise typer.Exit(1)


def _run_options(quiet: bool, dry_run: bool) -> dict:
    from .progress import ProgressDisplay

    return {} if dry_run else {"on_event": None if quiet else ProgressDisplay(), "progress": not quiet}


def _announcer(total: int, quiet: bool):
    def announce(number: int, job) -> None:
        if not quiet:
            typer.echo(f"job {number} ({job.command}), {number} of {total}: {_output(job)}", err=True)
    return announce


def _reporter(dry_run: bool, quiet: bool):
    def report(outcome) -> None:
        if outcome.failed:
            typer.echo(f"error: job {outcome.number} ({outcome.job.command}): {outcome.message}", err=True)
        elif dry_run:
            checked = outcome.result
            typer.echo(f"{outcome.job.command}: {checked.describe()}")
            typer.echo(f"memory plan: {checked.memory_plan}")
        elif outcome.result is not None:
            typer.echo(str(outcome.result.path))
    return report


def _output(job) -> str:
    return job.output or f"{job.output_dir or 'outputs'}/ (default name)"


def summary(outcomes: list, dry_run: bool = False) -> str:
    """A table, in file order: each job's command, status, time and output (or why it failed)."""
    rows = [("job", "command", "status", "time", "output")]
    for o in outcomes:
        output = _output(o.job) if o.result is None or dry_run else str(o.result.path)
        rows.append((str(o.number), o.job.command, o.status, f"{o.seconds:.1f} s",
                     f"{output}: {o.message}" if o.failed else output))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    failed = sum(o.failed for o in outcomes)
    lines.append(f"{len(outcomes) - failed} of {len(outcomes)} jobs {'checked' if dry_run else 'done'}"
                 + (f", {failed} failed" if failed else ""))
    return "\n".join(line.rstrip() for line in lines)
