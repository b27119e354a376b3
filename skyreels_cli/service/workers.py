"""Workers: what runs the jobs. The scheduler knows a worker only through `Worker`: hand it a job (alone, or as
one rank of a group), cancel it, read what it reports; and it gets its workers from a `Fleet`, which starts them,
replaces the dead and (on a cluster) adds workers for machines that join. `ProcessWorker` is one process on this
machine (one per GPU, or CPU workers), `ProcessFleet` the fixed set of them; `service/ray_workers.py` has the
Ray actors (issue 17).

A worker process loads each model once and keeps it (`sk.ModelPool`), runs one job at a time through the
library's runner (`sk.run`), and reports plain data: the library's progress events, warnings, and how each
job ended. It writes only inside the job's own folder of the state directory. It dies with the service (the
kernel's parent-death signal, and the end of its pipe), so a killed service leaves no run writing behind it;
its own death (out of memory, a crash) costs only the job it held: the scheduler fails that job and starts a
new worker. A job with several GPUs runs on several workers at once, each joining one process group for it
(`service/groups.py`): rank 0 reports and writes, the others follow.

Reports (dicts, `type` first): `ready` (pid, device), `event` (job, event: a library event as data),
`warning` (job, message), `done` (job, result), `failed` (job, message, field), `cancelled` (job),
`held` (models: the aliases it has loaded; loads: how many times it has loaded one).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Protocol

FAULT = "SKYREELS_FAULT"  # faults.py's variable: only a first worker gets it, so a replacement starts clean


class Worker(Protocol):
    """What the scheduler needs of a worker."""

    name: str                 # "cpu", "gpu0", ...
    device: str               # what the worker's jobs run on, as `LoadOptions.device` says it
    node: str                 # the machine it runs on: a group job's workers share one
    ready: bool               # started and waiting for work
    job: str | None           # the job it holds
    held: list[str]           # model aliases it has loaded
    loads: int                # times it has loaded a model (each one once, unless memory made it free one)
    lost: bool                # it died with its machine (not of its job): the job goes back to the queue
    keeps_own_copy: bool      # its job reads the job's files from its own copy (a Ray node without a shared folder)

    def start(self) -> None: ...

    def run(self, job_id: str, job: dict, group: dict | None = None) -> None:
        """Hand it one job (`Job.to_dict()`); it must be idle. `group`: its place in a group job
        (`groups.Rendezvous.member`)."""

    def cancel(self, job_id: str) -> None: ...

    def reports(self) -> list[dict]:
        """What it said since last asked; never blocks."""

    def handles(self) -> list:
        """What `multiprocessing.connection.wait` can wait on for news of this worker."""

    def alive(self) -> bool: ...

    def promise(self, job_id: str, prompt: str, negative_prompt: str | None) -> int | None:
        """With `keeps_own_copy`: a live job's prompt change promised in that copy (service/live.py `steer`)."""

    def exit_reason(self) -> str: ...

    def stop(self) -> None: ...


class Fleet(Protocol):
    """Where the scheduler's workers come from."""

    def start(self) -> list[Worker]:
        """The first workers, started."""

    def replace(self, dead: Worker) -> Worker | None:
        """A worker started in the place of one that died (None: its place is gone, e.g. its machine)."""

    def grow(self, workers: list[Worker]) -> list[Worker]:
        """Workers started for capacity that appeared since (a machine that joined a cluster); called often."""

    def rendezvous(self, members: list[Worker]):
        """Where a group job's members meet (`groups.Rendezvous`)."""

    def capacity(self) -> dict[str, int]:
        """Workers per machine that the fleet can have: how many GPUs a job may ask for."""

    def stop(self) -> None:
        """After the workers are stopped: let go of what the fleet holds (a cluster connection)."""


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
        self.node = socket.gethostname()
        self.ready = False
        self.job: str | None = None
        self.held: list[str] = []
        self.loads = 0
        self.lost = False  # a process of this machine dies of its job (or by hand), never of another machine
        self.keeps_own_copy = False  # it reads the service's own folder
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

    def run(self, job_id: str, job: dict, group: dict | None = None) -> None:
        self.job = job_id
        self._send({"type": "run", "job": job_id, "spec": job, "group": group})

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


class ProcessFleet:
    """The workers of `skyreels serve` on one machine: one process per configuration, replaced when it dies."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        self.configs = configs

    def start(self) -> list[Worker]:
        return [self._start(config) for config in self.configs]

    def replace(self, dead: Worker) -> Worker:
        config = dead.config
        return self._start(WorkerConfig(config.name, config.device, {**config.env, FAULT: None}, config.threads))

    def grow(self, workers: list[Worker]) -> list[Worker]:
        return []

    def rendezvous(self, members: list[Worker]):
        from .groups import Rendezvous

        return Rendezvous("127.0.0.1")

    def capacity(self) -> dict[str, int]:
        return {socket.gethostname(): len(self.configs)}

    def stop(self) -> None:
        pass

    @staticmethod
    def _start(config: WorkerConfig) -> ProcessWorker:
        worker = ProcessWorker(config)
        worker.start()
        return worker


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
        conn.send(run_job(job_id, message["spec"], config.device, pool, cancels[job_id], conn.send,
                          group=message.get("group")))
        cancels.pop(job_id, None)
        conn.send(held(pool))


def held(pool) -> dict:
    """The `held` report: the models a worker keeps loaded, and how many loads it has made in all."""
    return {"type": "held", "models": [m.spec.alias for m in pool.models], "loads": pool.loads}


def run_job(job_id: str, spec: dict, device: str, pool, cancel, send, group: dict | None = None) -> dict:
    """Run one job; what it ended with, as a report. Its progress goes to `send` as it comes.

    `group`: this worker's place in a group job (`groups.Rendezvous.member`): it frees the models it holds if the
    job's would not fit beside them, joins the group, runs its rank of the job and leaves. Only rank 0 reports
    progress and writes; the others report `done` when they are free again."""
    import warnings

    from .. import run
    from ..errors import SkyreelsWarning, http_spelling

    main = group is None or group["rank"] == 0  # the others of a group say nothing: rank 0 speaks for the job

    def on_event(event) -> None:
        send({"type": "event", "job": job_id, "event": event_data(event)})

    def on_warning(message, category, *args, **kwargs) -> None:
        if issubclass(category, SkyreelsWarning) and main:
            send({"type": "warning", "job": job_id, "message": str(message)})

    with http_spelling(), warnings.catch_warnings():
        warnings.simplefilter("always", SkyreelsWarning)
        warnings.showwarning = on_warning
        if group is None:
            job = _job(spec, device)
            prompts = _live_prompts(job)
            return _report(job_id, lambda: run(job, pool=pool, cancel=cancel, on_event=on_event, progress=False,
                                               prompts=prompts))
        try:
            return _run_in_group(job_id, _job(spec, device), group, pool, cancel if main else None,
                                 on_event if main else None)
        except Exception as err:  # noqa: BLE001  joining or leaving failed: the job fails, the worker goes on
            return _failure(job_id, err)


def _job(spec: dict, device: str):
    """The job as this worker runs it: on its device."""
    from dataclasses import replace

    from ..core.job import Job

    job = Job.from_dict(spec)
    return replace(job, load=replace(job.load, device=device))


def _live_prompts(job):
    """A live job's prompts: the changes the API records beside its video (service/live.py); None otherwise."""
    if not job.request.live:
        return None
    from .live import StorePrompts, steering_path

    return StorePrompts(steering_path(job.output))


def _run_in_group(job_id: str, job, group: dict, pool, cancel, on_event) -> dict:
    """This worker's rank of a group job, as a report. The models it holds make room first where memory needs it;
    the group's model is loaded for the job and freed with it (it is bound to the group)."""
    import gc

    from .. import run
    from ..models.naming import resolve_model
    from .groups import joined

    pool.make_room(resolve_model(job.model, job.command), job.load)
    try:
        with joined(group, job.load.device) as parallel:
            report = _report(job_id, lambda: run(job, parallel=parallel, cancel=cancel, on_event=on_event,
                                                 progress=False))
            # The group's model (and the meshes its hooks hold) goes before the group is left: then a rank
            # still waiting in a collective (rank 0 stopped: cancelled, failed) hears of it at once.
            gc.collect()
        return report
    finally:
        gc.collect()
        _empty_cuda_cache()


def _report(job_id: str, call) -> dict:
    """`call()` (a run) as a report: `done` with the Result's figures (none for a rank but the first of a group,
    whose run returns None), or how it stopped."""
    try:
        result = call()
    except Exception as err:  # noqa: BLE001  every way a run stops is a report
        return _failure(job_id, err)
    figures = None
    if result is not None:
        figures = {"frames": result.frames, "resumed": result.resumed, "timings_s": result.timings_s}
    return {"type": "done", "job": job_id, "result": figures}


def _failure(job_id: str, err: Exception) -> dict:
    import traceback

    from ..errors import Cancelled, SkyreelsError

    if isinstance(err, Cancelled):  # the library's message says how to resume, which is the service's business
        return {"type": "cancelled", "job": job_id}
    if isinstance(err, SkyreelsError):
        return {"type": "failed", "job": job_id, "message": str(err), "field": err.field}
    # a bug: its job fails, the worker and the others go on
    traceback.print_exception(err)
    return {"type": "failed", "job": job_id, "message": f"internal error: {type(err).__name__}: {err}", "field": None}


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
