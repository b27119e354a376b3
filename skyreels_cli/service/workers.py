"""Workers: what runs the jobs. The scheduler knows a worker only through `Worker`: hand it a job, cancel it,
read what it reports; `ProcessWorker` is one process on this machine (one per GPU, or one on the CPU), and a
Ray actor could be another (issue 17).

A worker process loads each model once and keeps it (`sk.ModelPool`), runs one job at a time through the
library's runner (`sk.run`), and reports plain data: the library's progress events, warnings, and how each
job ended. It writes only inside the job's own folder of the state directory. It dies with the service (the
kernel's parent-death signal, and the end of its pipe), so a killed service leaves no run writing behind it;
its own death (out of memory, a crash) costs only the job it held: the scheduler fails that job and starts a
new worker.

Reports (dicts, `type` first): `ready` (pid, device), `event` (job, event: a library event as data),
`warning` (job, message), `done` (job, result), `failed` (job, message, field), `cancelled` (job),
`held` (models: the aliases it has loaded).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Protocol

FAULT = "SKYREELS_FAULT"  # faults.py's variable: only a first worker gets it, so a replacement starts clean


class Worker(Protocol):
    """What the scheduler needs of a worker."""

    name: str                 # "cpu", "gpu0", ...
    device: str               # what the worker's jobs run on, as `LoadOptions.device` says it
    ready: bool               # started and waiting for work
    job: str | None           # the job it holds
    held: list[str]           # model aliases it has loaded

    def start(self) -> None: ...

    def run(self, job_id: str, job: dict) -> None:
        """Hand it one job (`Job.to_dict()`); it must be idle."""

    def cancel(self, job_id: str) -> None: ...

    def reports(self) -> list[dict]:
        """What it said since last asked; never blocks."""

    def handles(self) -> list:
        """What `multiprocessing.connection.wait` can wait on for news of this worker."""

    def alive(self) -> bool: ...

    def exit_reason(self) -> str: ...

    def stop(self) -> None: ...


@dataclass
class WorkerConfig:
    name: str
    device: str                          # "cpu" or "cuda" (the one GPU the worker sees)
    env: dict[str, str | None] = field(default_factory=dict)  # set (None: unset) before torch is imported
    threads: int | None = None           # torch's CPU threads (CPU workers share the cores)


class ProcessWorker:
    """A worker process of this machine (multiprocessing, spawned: a fresh interpreter)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name, self.device = config.name, config.device
        self.ready = False
        self.job: str | None = None
        self.held: list[str] = []
        self.pid: int | None = None
        self._process = None
        self._conn: Connection | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        self._process = context.Process(target=worker_main, args=(theirs, self.config, os.getpid()),
                                        name=f"skyreels-worker-{self.name}", daemon=True)
        self._process.start()
        theirs.close()
        self._conn = ours
        self.pid = self._process.pid

    def run(self, job_id: str, job: dict) -> None:
        self.job = job_id
        self._send({"type": "run", "job": job_id, "spec": job})

    def cancel(self, job_id: str) -> None:
        self._send({"type": "cancel", "job": job_id})

    def _send(self, message: dict) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # it died: the scheduler sees it through alive()
            pass

    def reports(self) -> list[dict]:
        out = []
        try:
            while self._conn.poll():
                out.append(self._conn.recv())
        except (EOFError, OSError):
            pass
        return out

    def handles(self) -> list:
        return [self._conn, self._process.sentinel]

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def exit_reason(self) -> str:
        code = self._process.exitcode if self._process is not None else None
        if code is None:
            return "it stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            return f"killed by {name}" + (" (out of memory, or killed by hand)" if name == "SIGKILL" else "")
        if code == 137:
            return "exit code 137 (killed: out of memory, or killed by hand)"
        return f"exit code {code}"

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.is_alive() and self.job is None and self.ready:
            self._send({"type": "stop"})  # idle: it ends cleanly
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()  # crash-only: what it was writing is resumable, as after a crash
        self._process.join(timeout=10)
        if self._conn is not None:
            self._conn.close()


# ------------------------------------------------------------------ inside the worker process

def worker_main(conn: Connection, config: WorkerConfig, parent: int) -> None:
    """The worker process: take jobs from the pipe, run them one at a time, report."""
    _die_with(parent)
    for name, value in config.env.items():  # before torch is imported: CUDA_VISIBLE_DEVICES, threads
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle; it ends the workers

    import queue
    import threading

    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    from ..core.pool import ModelPool

    jobs: queue.Queue = queue.Queue()
    cancels: dict[str, threading.Event] = {}

    def listen() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the service is gone: so is this worker, whatever it was doing
                os._exit(0)
            if message["type"] == "run":
                cancels[message["job"]] = threading.Event()
                jobs.put(message)
            elif message["type"] == "cancel" and message["job"] in cancels:
                cancels[message["job"]].set()
            elif message["type"] == "stop":
                jobs.put(None)

    threading.Thread(target=listen, name="skyreels-worker-pipe", daemon=True).start()
    conn.send({"type": "ready", "pid": os.getpid(), "device": config.device})
    pool = ModelPool(progress=False)
    while (message := jobs.get()) is not None:
        job_id = message["job"]
        conn.send(run_job(job_id, message["spec"], config.device, pool, cancels[job_id], conn.send))
        cancels.pop(job_id, None)
        conn.send({"type": "held", "models": [m.spec.alias for m in pool.models]})


def run_job(job_id: str, spec: dict, device: str, pool, cancel, send) -> dict:
    """Run one job; what it ended with, as a report. Its progress goes to `send` as it comes."""
    import traceback
    import warnings
    from dataclasses import replace

    from .. import run
    from ..core.job import Job
    from ..errors import Cancelled, SkyreelsError, SkyreelsWarning, http_spelling

    def on_event(event) -> None:
        send({"type": "event", "job": job_id, "event": event_data(event)})

    def on_warning(message, category, *args, **kwargs) -> None:
        if issubclass(category, SkyreelsWarning):
            send({"type": "warning", "job": job_id, "message": str(message)})

    try:
        with http_spelling(), warnings.catch_warnings():
            warnings.simplefilter("always", SkyreelsWarning)
            warnings.showwarning = on_warning
            job = Job.from_dict(spec)
            job = replace(job, load=replace(job.load, device=device))
            finished = _finished(job)
            if finished is not None:  # made by a run the service was killed before it heard the end of
                return {"type": "done", "job": job_id, "result": finished}
            job = replace(job, resume=_resumable(job))
            result = run(job, pool=pool, cancel=cancel, on_event=on_event, progress=False)
        return {"type": "done", "job": job_id,
                "result": {"frames": result.frames, "resumed": result.resumed, "timings_s": result.timings_s}}
    except Cancelled:  # the library's message says how to resume, which is the service's business here
        return {"type": "cancelled", "job": job_id}
    except SkyreelsError as err:
        return {"type": "failed", "job": job_id, "message": str(err), "field": err.field}
    except Exception as err:  # noqa: BLE001  a bug: its job fails, the worker and the others go on
        traceback.print_exc()
        return {"type": "failed", "job": job_id, "message": f"internal error: {type(err).__name__}: {err}",
                "field": None}


def _target(job):
    from ..media.targets import resolve_output

    return resolve_output(job.output, prompt="", seed=0, overwrite=True, create=False)


def _finished(job) -> dict | None:
    """The result of a job whose video is already whole (its run ended as the service died)."""
    from ..forcing.resume import state_path

    target = _target(job)
    if target.path.is_file() and target.sidecar.is_file() and not state_path(target.work_dir).is_file():
        return {"frames": job.request.frames, "resumed": False, "timings_s": {}}
    return None


def _resumable(job) -> bool:
    """Whether an interrupted run of this job left its resume state: then it continues from there. Otherwise the
    job's folder is emptied of what an interrupted run left (a clip starts again)."""
    import shutil

    from ..forcing.resume import state_path

    target = _target(job)
    if state_path(target.work_dir).is_file():
        return True
    folder = target.path.parent
    for entry in folder.iterdir() if folder.is_dir() else ():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return False


def event_data(event) -> dict:
    """A library event as plain data: its fields, and its kind as `type` (`step_done`, `window_done`, ...)."""
    import dataclasses
    import re

    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    data = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in data.items()}
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    return {"type": kind, **data}


def _die_with(parent: int) -> None:
    """Die when the service dies, even in the middle of native code: Linux's parent-death signal."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the signal was set up
        os._exit(0)
