"""A batch file: many videos from one TOML file, each model loaded once for all the jobs that use it.

    model = "df-1.3b-540p"       # defaults for every job: any setting, under its name
    steps = 30
    [[job]]
    command = "t2v"              # t2v | i2v | extend
    prompt = "a lighthouse in a storm"
    output = "storm.mp4"
    [[job]]
    command = "i2v"
    image = "portrait.png"
    prompt = "she turns and smiles"

`read_batch` turns the file into `Job`s and checks them as a whole before anything runs: an unknown key, a
value of the wrong type or one no run can use is refused naming the key and its line. (An input file that is
missing is the job's own failure when it runs: an earlier job may be what makes it.) A job's settings are
the defaults (those its command takes), then its `script` (a shot list, extend only), then its own, then
`overrides` (the CLI's --device, --dtype, --overwrite), which apply to every job. Paths are relative to the
file's folder, and so is the `outputs/` folder a job without an output writes into.

`run_batch` runs them grouped by the model they load (in the order each model first appears, in file order
within a group), through a `ModelPool`; a failing job is reported and the others still run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Cancelled, SkyreelsError, UsageError
from .job import COMMANDS, Job, settings_names
from .settings_file import absolute_paths, check_keys, errors_at_lines, file_error, read_toml

BATCH_ONLY = ("script",)  # a job's shot list (extend): read into the job's settings and shots


@dataclass(frozen=True)
class Outcome:
    number: int     # the job's place in the file, from 1
    job: Job
    status: str     # "done", "checked" (dry run) or "failed"
    seconds: float
    message: str = ""  # why it failed
    result: object = None  # the Result of a job done; the Checked of a dry run

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def read_batch(path: str | Path, overrides: dict | None = None) -> list[Job]:
    """The jobs of a batch file, in file order, checked as a whole (see the module docstring)."""
    path = Path(path)
    data, text = read_toml(path)
    tables = data.pop("job", None)
    every = {name for command in COMMANDS for name in settings_names(command)} | set(BATCH_ONLY)
    check_keys(path, text, data, every - {"shots"}, "in the defaults")
    if not isinstance(tables, list) or not tables:
        raise file_error(path, text, 'no jobs; add [[job]] tables, each with command = "t2v", "i2v" or "extend"',
                         None)
    folder = path.resolve().parent
    defaults = absolute_paths(data, folder)
    jobs = [_job(path, text, i, table, defaults, folder, overrides or {}) for i, table in enumerate(tables)]
    _check_outputs(path, text, jobs)
    for i, job in enumerate(jobs):
        _check_values(path, text, i, job)
    return jobs


def _job(path: Path, text: str, i: int, table, defaults: dict, folder: Path, overrides: dict) -> Job:
    where = f"job {i + 1}"
    if not isinstance(table, dict):
        raise file_error(path, text, f"{where} must be a table ([[job]])", None, "job", i)
    command = table.get("command")
    if command not in COMMANDS:
        given = f", got {command!r}" if command is not None else ""
        raise file_error(path, text, f'{where} needs command = "t2v", "i2v" or "extend"{given}',
                         "command" if "command" in table else None, "job", i)
    names = set(settings_names(command)) - {"shots"}
    own = {k: v for k, v in table.items() if k != "command"}
    check_keys(path, text, own, names | ({"script"} if command == "extend" else set()), f"in {where} ({command})",
               "job", i)
    own = absolute_paths(own, folder)
    scripted = _script_settings(own.pop("script", None), path, text, i)  # more specific than the defaults
    merged = {k: v for k, v in defaults.items() if k in names and k not in scripted}  # the others: skipped
    merged.update(scripted)
    merged.update(own)
    merged.update({k: v for k, v in overrides.items() if k in names})
    if merged.get("output") is None and merged.get("output_dir") is None:
        merged["output_dir"] = str(folder / "outputs")  # beside the jobs file, not wherever it was started from
    with errors_at_lines(path, text, where, "job", i):
        return Job.from_settings(command, merged)


def _script_settings(script: str | None, path: Path, text: str, i: int) -> dict:
    if not script:
        return {}
    from .shot_list import read_script

    if not isinstance(script, str):
        raise file_error(path, text, f"job {i + 1}: script must be a path, got {script!r}", "script", "job", i)
    read = read_script(script)
    return {**read.settings, "shots": read.shots}


def _check_outputs(path: Path, text: str, jobs: list[Job]) -> None:
    """Two jobs writing the same output would overwrite one another."""
    seen: dict[str, int] = {}
    for number, job in enumerate(jobs, start=1):
        if not job.output:
            continue
        key = str(Path(job.output).expanduser().resolve())
        if key in seen:
            raise file_error(path, text, f"job {number} writes {job.output}, as job {seen[key]} does; give each "
                             "job its own output", "output", "job", number - 1)
        seen[key] = number


def _check_values(path: Path, text: str, i: int, job: Job) -> None:
    """Every value checked against the job's model as a run would (a seed drawn now is not kept): a bad one
    refuses the file at its line. A missing input file, an existing output or an unknown model is left to the
    job's own run."""
    from .runner import check

    with errors_at_lines(path, text, f"job {i + 1}", "job", i):
        try:
            check(job)
        except UsageError:
            raise
        except SkyreelsError:  # an input, an output, the model or the device: the job's own failure
            return


def in_model_order(jobs: list[Job]) -> list[tuple[int, Job]]:
    """(number from 1, job), grouped by the model each loads: groups in order of first appearance, file order
    within each."""
    keys = [_model_key(job) for job in jobs]
    first: dict[str, int] = {}
    for number, key in enumerate(keys, start=1):
        first.setdefault(key, number)
    return sorted(enumerate(jobs, start=1), key=lambda item: (first[keys[item[0] - 1]], item[0]))


def _model_key(job: Job) -> str:
    """What loading the job's model depends on: the checkpoint and its load options."""
    from ..models.naming import resolve_model

    try:
        spec = resolve_model(job.model, job.command)
        model = (spec.repo, spec.revision, str(spec.local_path))
    except SkyreelsError:  # the job will fail and report it; it needs no group
        model = ("unresolved", job.model)
    return repr((model, sorted(job.load.to_dict().items())))


def run_batch(jobs: list[Job], *, pool=None, dry_run: bool = False, on_job: Callable[[int, Job], None] | None = None,
              on_outcome: Callable[[Outcome], None] | None = None, **run_options) -> list[Outcome]:
    """Every job, grouped by model, through one pool (each model loaded once); each job's failure is its
    outcome and the others go on. `dry_run`: each job checked, nothing loaded or written. `on_job` is told
    before a job starts, `on_outcome` after; `run_options` (cancel, on_event, progress...) go to `sk.run`."""
    from .pool import ModelPool
    from .runner import check, run

    own_pool = pool is None
    pool = ModelPool(progress=run_options.get("progress", True)) if own_pool else pool
    outcomes = []
    try:
        for number, job in in_model_order(jobs):
            if on_job is not None:
                on_job(number, job)
            started = time.perf_counter()
            try:
                result = check(job) if dry_run else run(job, pool=pool, **run_options)
                outcome = Outcome(number, job, "checked" if dry_run else "done", time.perf_counter() - started,
                                  result=result)
            except Cancelled:  # the whole batch stops
                raise
            except SkyreelsError as err:
                outcome = Outcome(number, job, "failed", time.perf_counter() - started, str(err))
            except Exception as err:  # noqa: BLE001  one job's crash must not stop the others
                outcome = Outcome(number, job, "failed", time.perf_counter() - started,
                                  f"{type(err).__name__}: {err}")
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        if own_pool:
            pool.clear()
    return sorted(outcomes, key=lambda o: o.number)
