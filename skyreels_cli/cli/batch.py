"""`skyreels batch jobs.toml`: every job run by its own command's code, each model loaded once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from .app import app, user_errors
from .options import Dtype, Overwrite, Quiet


@app.command()
def batch(
    file: Annotated[str, typer.Argument(help="The jobs file (TOML): defaults, then [[job]] tables.")],
    device: Annotated[str | None, typer.Option("--device", "-d", help="Device for every job (cuda, cuda:N, cpu); overrides the file.")] = None,
    dtype: Dtype = None, overwrite: Overwrite = False, quiet: Quiet = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every job and print what each would make; load and write nothing.")] = False,
) -> None:
    """Many videos from one file, each model loaded once for all its jobs.

    The file's top-level settings are defaults for every job; each [[job]] has a command (t2v, i2v or
    extend), an output and any option of that command under its name with underscores (base_frames,
    negative_prompt, ...). Paths are relative to the file. A failing job is reported and the others still
    run; a summary table ends the run, and the exit code is 1 if any job failed.

    Example file:

      model = "df-1.3b-540p"

      [[job]]

      command = "t2v"

      prompt = "a lighthouse in a storm"

      output = "storm.mp4"

    Examples:

      skyreels batch jobs.toml --dry-run

      skyreels batch jobs.toml --device cuda:1
    """
    with user_errors("batch"):
        from ..core.batch import ModelCache, in_model_order, load_batch, summary

        overrides = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        overrides.update({k: True for k, v in (("overwrite", overwrite), ("quiet", quiet)) if v})
        jobs = load_batch(file, _command_options(), overrides)
        with ModelCache().installed():
            outcomes = [_run_job(job, len(jobs), dry_run, quiet) for job in in_model_order(jobs)]
        if not quiet or any(o.failed for o in outcomes):
            typer.echo(summary(outcomes, dry_run), err=True)
        if any(o.failed for o in outcomes):
            raise typer.Exit(1)


def _commands() -> dict:
    from .generate import extend, i2v, t2v

    return {"t2v": t2v, "i2v": i2v, "extend": extend}


def _command_options() -> dict:
    from ..core.script import command_options

    return {name: command_options(function) for name, function in _commands().items()}


def _run_job(job, total: int, dry_run: bool, quiet: bool):
    """One job through its command's function; any error it raises becomes its outcome."""
    from ..core.batch import Outcome
    from ..errors import SkyreelsError

    if not quiet:
        typer.echo(f"{job.label}, {job.number} of {total}: {job.output}", err=True)
    started = time.perf_counter()
    try:
        with _errors_raised():
            _commands()[job.command](**{**job.options, "dry_run": dry_run})
    except SkyreelsError as err:
        return _failed(job, started, str(err))
    except typer.Exit as stop:  # the parser's or a command's own exit
        if stop.exit_code == 130:
            raise
        if stop.exit_code:
            return _failed(job, started, f"exit code {stop.exit_code}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001  one job's crash must not stop the others
        return _failed(job, started, f"{type(err).__name__}: {err}")
    return Outcome(job, "checked" if dry_run else "done", time.perf_counter() - started)


def _failed(job, started: float, message: str):
    from ..core.batch import Outcome

    typer.echo(f"error: {job.label}: {message}", err=True)
    return Outcome(job, "failed", time.perf_counter() - started, message)


@contextmanager
def _errors_raised() -> Iterator[None]:
    """The commands turn library errors into a printed line and an exit; in a batch we want the error itself,
    to report it with its job and go on. SKYREELS_DEBUG is what makes `user_errors` let it through."""
    before = os.environ.get("SKYREELS_DEBUG")
    os.environ["SKYREELS_DEBUG"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SKYREELS_DEBUG"]
        else:
            os.environ["SKYREELS_DEBUG"] = before
