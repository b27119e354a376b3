"""`skyreels batch jobs.toml --ray ADDRESS`: a batch file's jobs through the service's queue, on a Ray cluster.

    outcomes = run_on_cluster(sk.read_batch("jobs.toml"), "auto", state_dir=Path("state"))

The same machinery as `skyreels serve --ray`, in this process: the queue (SQLite in `state_dir`), the scheduler and
the cluster's workers (one actor per GPU, each loading a model once), and the page and API on 127.0.0.1 to watch
them. Each job's input files go into the queue's uploads, its video is made on whichever worker is free (jobs run
side by side, as many at once as there are workers) and sent back, then put at the job's own output with its
sidecar, atomically. A job that fails is its outcome; the others go on. Started again with the same `state_dir`
after a crash, the same file finds its jobs in the queue (each keyed by its place in the file and its settings) and
continues them: finished ones are delivered, an interrupted `extend` goes on from its last window.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.batch import Outcome
from ..core.job import Job
from ..errors import HTTP_FIELDS, SkyreelsError, UsageError, setting
from ..media.files import replace_atomically
from .admission import admit
from .fields import HttpError, Offer
from .store import FINISHED, Store, new_id

POLL_S = 0.2


@dataclass(frozen=True)
class Delivered:
    """A job's video, made on the cluster and put at its output."""

    path: Path
    sidecar: Path
    worker: str


def run_on_cluster(jobs: list[Job], address: str, *, state_dir: Path | None = None, cpu_workers: int = 1,
                   shared_dir: Path | None = None, on_job: Callable[[int, Job, str], None] | None = None,
                   on_outcome: Callable[[Outcome], None] | None = None,
                   on_page: Callable[[str], None] | None = None) -> list[Outcome]:
    """Every job through the queue on the cluster at `address`; the outcomes in file order. `on_job(number, job,
    worker)` is told when a job starts on a worker, `on_outcome` when it has ended, `on_page` the address of the
    page that shows the queue."""
    from .ray_fleet import RayFleet
    from .scheduler import Scheduler

    keep = state_dir is not None
    state = Path(state_dir).expanduser().resolve() if keep else Path(tempfile.mkdtemp(prefix="skyreels-batch-"))
    files = Path(shared_dir).expanduser().resolve() if shared_dir is not None else state
    fleet = RayFleet(address, files, cpu_workers, shared=shared_dir is not None)
    state.mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    store = Store(state / "queue.db")
    scheduler = Scheduler(store, files, fleet)
    offer = cluster_offer(int(fleet.gpus))
    scheduler.start()
    page = _page(store, scheduler, offer, files, address)
    try:
        if on_page is not None and page is not None:
            on_page(page.url)
        outcomes: dict[int, Outcome] = {}
        waiting: dict[str, tuple[int, Job, float]] = {}
        for number, job in enumerate(jobs, start=1):
            try:
                waiting[_submit(store, job, number, files, offer, fleet.capacity())] = (number, job, time.monotonic())
            except (SkyreelsError, HttpError) as err:
                outcomes[number] = Outcome(number, job, "failed", 0.0, str(err))
                if on_outcome is not None:
                    on_outcome(outcomes[number])
        scheduler.notify()
        started: dict[str, float] = {}  # a job's time is its run's, as a batch on one machine reports it
        while waiting:
            time.sleep(POLL_S)
            for job_id, (number, job, since) in list(waiting.items()):
                row = store.get(job_id)
                if row["status"] == "in_progress" and job_id not in started:
                    started[job_id] = time.monotonic()
                    if on_job is not None:
                        on_job(number, job, row["worker"])
                if row["status"] not in FINISHED:
                    continue
                del waiting[job_id]
                seconds = time.monotonic() - started.get(job_id, since)
                outcomes[number] = _outcome(row, number, job, seconds, files)
                if on_outcome is not None:
                    on_outcome(outcomes[number])
        return [outcomes[n] for n in sorted(outcomes)]
    finally:
        if page is not None:
            page.stop()
        scheduler.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


def cluster_offer(gpus: int) -> Offer:
    """What a batch file's jobs may ask of the cluster: as much as the same file asks without --ray. The jobs are
    the operator's own, so the service's bounds on what clients ask (`serve --max-frames/--max-seconds`) do not
    apply; sizes and the enhancer are checked as for any job."""
    return Offer(gpus=gpus, gpus_elsewhere=True, max_frames=sys.maxsize, max_seconds=math.inf, for_clients=False)


def _submit(store: Store, job: Job, number: int, files: Path, offer: Offer, capacity: dict[str, int]) -> str:
    """Record `job` in the queue (once: a job already there from an earlier run of the same file is found again by
    its key); its id. Its output is checked here first: an MP4 that is not there yet, or `overwrite`."""
    if job.resume:
        raise UsageError(f"{setting('resume', True)} is the queue's business with --ray: run the same batch with the "
                         "same --state-dir and it continues its interrupted jobs")
    key = "batch:" + hashlib.sha256(json.dumps([number, job.to_dict()], sort_keys=True).encode()).hexdigest()
    found = store.by_key(key)
    if found is not None:
        return found["id"]
    job_id = new_id()
    uploads = files / "uploads" / job_id
    try:
        sent = _with_uploads(job, uploads)
        new = admit(sent, job_id, files, offer, capacity, {HTTP_FIELDS[n]: Path(getattr(sent.request, n))
                                                           for n in HTTP_FIELDS if getattr(sent.request, n)},
                    output_name=MADE[_target(job, 0).kind])
        _target(job, new.seed)  # refused now if it could not be written at the end
        store.add(new, job_id, idempotency_key=key)
    except BaseException:
        shutil.rmtree(uploads, ignore_errors=True)
        raise
    return job_id


def _with_uploads(job: Job, folder: Path) -> Job:
    """The job with its input files copied among the queue's uploads (the workers get them from there)."""
    from ..errors import InputFileError

    changes = {}
    for name, http in HTTP_FIELDS.items():
        path = getattr(job.request, name)
        if path is None:
            continue
        if not Path(path).is_file():
            raise InputFileError(f"{setting(name, str(path))}: no such file", field=name)
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / f"{http}{Path(path).suffix.lower()}"
        shutil.copyfile(path, copy)
        changes[name] = str(copy)
    return replace(job, request=replace(job.request, **changes)) if changes else job


def _target(job: Job, seed: int):
    from ..media.targets import resolve_output

    return resolve_output(job.output, prompt=job.request.prompt or "", seed=seed, overwrite=job.overwrite,
                          folder=job.output_dir, create=False)


MADE = {"mp4": "video.mp4", "png": "frames/"}  # what a job makes in its folder on the cluster, by output kind


def _outcome(row: dict, number: int, job: Job, seconds: float, files: Path) -> Outcome:
    """A finished job's outcome; a completed one's video and sidecar put at the job's output."""
    if row["status"] != "completed":
        why = row["error"] or row["status"]
        return Outcome(number, job, "failed", seconds, why)
    try:
        target = _target(replace(job, overwrite=True), row["seed"])
        made = files / "videos" / row["id"] / MADE[target.kind]
        if _same(made, target.path):
            # delivered by an earlier run of this batch (the same --state-dir) that stopped before it said so
            return Outcome(number, job, "done", seconds, result=Delivered(target.path, target.sidecar, row["worker"]))
        target = _target(job, row["seed"])
        target.path.parent.mkdir(parents=True, exist_ok=True)
        made_sidecar = made / "settings.json" if target.kind == "png" else made.with_name(made.name + ".json")
        sidecar = made_sidecar.read_text().replace(json.dumps(str(made))[1:-1], json.dumps(str(target.path))[1:-1])
        if target.kind == "png":  # the frames, then the settings that say they are whole
            _deliver_folder(made, target.path)
        else:
            replace_atomically(target.path, lambda tmp: shutil.copyfile(made, tmp))
        replace_atomically(target.sidecar, lambda tmp: tmp.write_text(sidecar))
    except (OSError, SkyreelsError) as err:
        message = str(err) if isinstance(err, SkyreelsError) else f"cannot write {job.output}: {err}"
        return Outcome(number, job, "failed", seconds, message)
    return Outcome(number, job, "done", seconds, result=Delivered(target.path, target.sidecar, row["worker"]))


def _same(made: Path, target: Path) -> bool:
    """`target` already holds what the job made (a file's bytes; a folder's frames)."""
    if made.is_file():
        return target.is_file() and target.read_bytes() == made.read_bytes()
    frames = sorted(p.name for p in made.glob("*.png")) if made.is_dir() else []
    return bool(frames) and target.is_dir() and sorted(p.name for p in target.glob("*.png")) == frames and all(
        (target / name).read_bytes() == (made / name).read_bytes() for name in frames)


def _deliver_folder(made: Path, target: Path) -> None:
    """A PNG folder's frames put at `target` (made beside it, then moved in: no half folder under its name)."""
    incoming = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(made, incoming, ignore=shutil.ignore_patterns("settings.json"))
    if target.is_dir():
        shutil.rmtree(target)
    incoming.rename(target)


class _Page:
    """The service's page and API over this batch's queue, on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        from .server import bind

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def _page(store: Store, scheduler, offer: Offer, files: Path, address: str) -> _Page | None:
    from .api import Service, create_app
    from .server import ServiceConfig

    try:
        config = ServiceConfig(state_dir=files, port=0, ray=address)
        return _Page(create_app(Service(store, scheduler, offer, files, config)))
    except (OSError, UsageError):  # no socket here: the batch runs all the same
        return None

