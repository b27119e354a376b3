"""A batch file: many videos from one TOML file, each model loaded once for all the jobs that use it.

    model = "df-1.3b-540p"       # defaults for every job: any option, under its name
    steps = 30
    [[job]]
    command = "t2v"              # t2v | i2v | extend
    prompt = "a lighthouse in a storm"
    output = "storm.mp4"
    [[job]]
    command = "i2v"
    image = "portrait.png"
    prompt = "she turns and smiles"

A job's options are the defaults (those its command has), then its own, then the flags of
`skyreels batch` (--device, --dtype, --overwrite...), which apply to every job. Paths are relative
to the file's folder. Jobs run grouped by the model they load (in the order each model first
appears, in file order within a group); a failing job is reported and the others still run.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .script import Option, absolute_paths, check_keys, check_types, file_error, read_toml

COMMANDS = ("t2v", "i2v", "extend")
NOT_IN_BATCH = ("dry_run",)  # a batch is checked as a whole: skyreels batch --dry-run


@dataclass(frozen=True)
class BatchJob:
    number: int    # from 1, in file order
    command: str   # t2v | i2v | extend
    options: dict  # the command's options by name, as its function takes them

    @property
    def label(self) -> str:
        return f"job {self.number} ({self.command})"

    @property
    def output(self) -> str:
        return self.options.get("output") or "outputs/ (default name)"


@dataclass(frozen=True)
class Outcome:
    job: BatchJob
    status: str     # "done", "checked" (--dry-run) or "failed"
    seconds: float
    message: str = ""  # why it failed

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def load_batch(path: str | Path, commands: Mapping[str, Mapping[str, Option]], overrides: dict | None = None
               ) -> list[BatchJob]:
    """Parse a batch file; `commands`: each command's options (`script.command_options`); `overrides`: flags
    given on the command line, for every job. A problem with the file is one UsageError naming key and line."""
    path = Path(path)
    data, text = read_toml(path)
    jobs = data.pop("job", None)
    every = {name: option for options in commands.values() for name, option in options.items()}
    allowed = set(every) - set(NOT_IN_BATCH)
    check_keys(path, text, data, allowed, "in the defaults")
    check_types(path, text, data, every, "in the defaults")
    if not isinstance(jobs, list) or not jobs:
        raise UsageError(f'{path.name}: no jobs; add [[job]] tables, each with command = "t2v", "i2v" or "extend"')
    folder = path.resolve().parent
    defaults = absolute_paths(data, folder)
    parsed = [_job(path, text, i, job, commands, defaults, folder, overrides or {}) for i, job in enumerate(jobs)]
    _check_outputs(path, text, parsed)
    return parsed


def _job(path: Path, text: str, i: int, job, commands: Mapping[str, Mapping[str, Option]], defaults: dict,
         folder: Path, overrides: dict) -> BatchJob:
    where = f"job {i + 1}"
    if not isinstance(job, dict):
        raise file_error(path, text, f"{where} must be a table ([[job]])", None, "job", i)
    command = job.get("command")
    if command not in COMMANDS:
        given = f", got {command!r}" if command is not None else ""
        raise file_error(path, text, f'{where} needs command = "t2v", "i2v" or "extend"{given}',
                         "command" if "command" in job else None, "job", i)
    options = commands[command]
    own = {k: v for k, v in job.items() if k != "command"}
    check_keys(path, text, own, set(options) - set(NOT_IN_BATCH), f"in {where} ({command})", "job", i)
    check_types(path, text, own, options, f"in {where}", "job", i)
    own = absolute_paths(own, folder)
    scripted = _script_settings(own.get("script"), options)  # a job's script is more specific than the defaults
    merged = {name: option.default for name, option in options.items()}
    merged.update({k: v for k, v in defaults.items() if k in options and k not in scripted})  # others: skipped
    merged.update(own)
    merged.update({k: v for k, v in overrides.items() if k in options})
    missing = [name for name, value in merged.items() if value is inspect.Parameter.empty]
    if missing:
        raise file_error(path, text, f"{where} ({command}) has no {missing[0]}", None, "job", i)
    return BatchJob(i + 1, command, merged)


def _script_settings(script: str | None, options: Mapping[str, Option]) -> dict:
    if not script:
        return {}
    from .script import load_script

    return load_script(script, options).settings


def _check_outputs(path: Path, text: str, jobs: list[BatchJob]) -> None:
    """Two jobs writing the same output would overwrite one another."""
    seen: dict[str, int] = {}
    for job in jobs:
        output = job.options.get("output")
        if not output:
            continue
        key = str(Path(output).expanduser().resolve())
        if key in seen:
            raise file_error(path, text, f"job {job.number} writes {output}, as job {seen[key]} does; give each "
                             "job its own output", "output", "job", job.number - 1)
        seen[key] = job.number


def model_key(job: BatchJob, load_options: set[str]) -> str:
    """What loading the job's model depends on: the checkpoint and the options `load` takes."""
    from ..models.registry import resolve_model

    try:
        spec = resolve_model(job.options.get("model"), job.command)
        model = (spec.repo, spec.revision, str(spec.local_path))
    except Exception:  # noqa: BLE001  the job will fail and report it; it needs no group
        model = ("unresolved", job.number)
    how = sorted((k, repr(v)) for k, v in job.options.items() if k in load_options)
    return repr((model, how))


def in_model_order(jobs: list[BatchJob]) -> list[BatchJob]:
    """Jobs grouped by the model they load, groups in order of first appearance, file order within each."""
    from .model import load

    # load()'s keywords, and the CLI's name for the one it spells otherwise (--lora: loras=)
    options = (set(inspect.signature(load).parameters) | {"lora"}) - {"model", "plan_for", "progress", "command"}
    keys = {job.number: model_key(job, options) for job in jobs}
    first: dict[str, int] = {}
    for job in jobs:
        first.setdefault(keys[job.number], job.number)
    return sorted(jobs, key=lambda job: (first[keys[job.number]], job.number))


class ModelCache:
    """Stands in for `skyreels_cli.load` during a batch: a model asked for again with the same settings is the
    one already loaded. One model is kept at a time (jobs run grouped by model), so two never share the GPU.
    The first job of a group decides the memory plan (`plan_for`)."""

    def __init__(self) -> None:
        self.model = None
        self.key: str | None = None
        self.loads = 0

    def load(self, model=None, **options):
        from . import model as core

        progress = options.pop("progress", True)
        plan_for = options.pop("plan_for", None)
        key = repr((model, sorted((k, repr(v)) for k, v in options.items())))
        if key != self.key:
            self.release()
            self.model = core.load(model, progress=progress, plan_for=plan_for, **options)
            self.key = key
            self.loads += 1
        self.model.progress = progress
        return self.model

    def release(self) -> None:
        """Free the model held, before the next one loads."""
        if self.model is None:
            return
        self.model = self.key = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextmanager
    def installed(self) -> Iterator[ModelCache]:
        """`skyreels_cli.load` (what the commands call) is this cache's `load` while inside."""
        import skyreels_cli

        before = skyreels_cli.__dict__.get("load")
        skyreels_cli.load = self.load
        try:
            yield self
        finally:
            if before is None:
                del skyreels_cli.load  # loaded lazily again on next use
            else:
                skyreels_cli.load = before
            self.release()


def summary(outcomes: list[Outcome], dry_run: bool = False) -> str:
    """A table, in file order: each job's command, status, time and output (or why it failed)."""
    rows = [("job", "command", "status", "time", "output")]
    for o in sorted(outcomes, key=lambda o: o.job.number):
        rows.append((str(o.job.number), o.job.command, o.status, f"{o.seconds:.1f} s",
                     f"{o.job.output}: {o.message}" if o.failed else o.job.output))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    failed = sum(o.failed for o in outcomes)
    lines.append(f"{len(outcomes) - failed} of {len(outcomes)} jobs {'checked' if dry_run else 'done'}"
                 + (f", {failed} failed" if failed else ""))
    return "\n".join(line.rstrip() for line in lines)

