"""The scheduler: hands queued jobs to free workers and writes what the workers report into the queue.

One thread owns the workers. It wakes when a job arrives or is cancelled (`notify`), when a worker reports,
or when one dies; then it

- tells the workers of the jobs whose cancel was asked for;
- gives each free worker the next job (highest priority, then first in), preferring for a job a free worker
  that already holds its model;
- records each report: the library's events (the job's progress, windows done, time left), and how the
  job ended;
- fails the job of a worker that died, with the reason, and starts a new worker in its place;
- removes the files of deleted jobs once no worker holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

from .. import faults
from .store import Store
from .workers import FAULT, Worker, WorkerConfig


class Scheduler:
    def __init__(self, store: Store, state_dir: Path, configs: list[WorkerConfig],
                 make_worker: Callable[[WorkerConfig], Worker]) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.configs = configs
        self.make_worker = make_worker
        self.workers: list[Worker] = []
        self._told_cancel: set[str] = set()
        self._windows: dict[str, int] = {}  # each running job's window count, for its percent done
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = threading.Event()

    # ------------------------------------------------------------ life

    def start(self) -> None:
        interrupted = self.store.requeue_interrupted()
        if interrupted:
            print(f"skyreels serve: {len(interrupted)} interrupted job(s) back in the queue", file=sys.stderr)
        self._thread = threading.Thread(target=self._loop, name="skyreels-scheduler", daemon=True)
        self._thread.start()
        self.started.wait(timeout=60)

    def stop(self) -> None:
        """Stop the workers (their jobs stay in_progress: the next start puts them back in the queue)."""
        self._stopping.set()
        self.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def notify(self) -> None:
        """Look at the queue now (a job arrived, a cancel was asked for)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        # Workers are started from this thread, which lives as long as the service: each dies with it.
        self.workers = [self._start(config) for config in self.configs]
        self.started.set()
        try:
            while not self._stopping.is_set():
                try:
                    self._tick()
                except Exception:  # noqa: BLE001  a bug here must not stop the queue: said, then tried again
                    traceback.print_exc()
                    time.sleep(1)
                handles = [h for w in self.workers for h in w.handles()]
                ready = wait([self._wake_r, *handles], timeout=1.0)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
        finally:
            for worker in self.workers:
                worker.stop()

    def _tick(self) -> None:
        for worker in self.workers:
            for report in worker.reports():
                self._record(worker, report)
        for i, worker in enumerate(self.workers):
            if not worker.alive():
                for report in worker.reports():  # its last words first
                    self._record(worker, report)
                self.workers[i] = self._replace(worker)
        self._cancel()
        self._assign()
        self._remove_deleted()

    def _start(self, config: WorkerConfig) -> Worker:
        worker = self.make_worker(config)
        worker.start()
        return worker

    def _replace(self, dead: Worker) -> Worker:
        reason = dead.exit_reason()
        if dead.job is not None:
            self.store.finish(dead.job, "failed", error=f"the worker {dead.name} ({dead.device}) died while running "
                              f"this job ({reason}); other jobs go on")
        print(f"skyreels serve: worker {dead.name} died ({reason}); starting a new one", file=sys.stderr)
        dead.stop()
        config = dead.config if hasattr(dead, "config") else next(c for c in self.configs if c.name == dead.name)
        config = WorkerConfig(config.name, config.device, {**config.env, FAULT: None}, config.threads)
        return self._start(config)

    def _cancel(self) -> None:
        for row in self.store.cancelling():
            if row["id"] in self._told_cancel:
                continue
            worker = next((w for w in self.workers if w.job == row["id"]), None)
            if worker is not None:
                worker.cancel(row["id"])
            self._told_cancel.add(row["id"])

    def _assign(self) -> None:
        free = [w for w in self.workers if w.ready and w.job is None and w.alive()]
        if not free:
            return
        for row in self.store.waiting():
            if not free:
                break
            worker = next((w for w in free if row["model"] in w.held), free[0])
            if self.store.start(row["id"], worker.name):
                self._windows[row["id"]] = row["windows"] or 1
                worker.run(row["id"], json.loads(row["job"]))
                free.remove(worker)

    def _remove_deleted(self) -> None:
        for job_id in self.store.deleted_idle():
            if any(w.job == job_id for w in self.workers):
                continue
            for folder in job_folders(self.state_dir, job_id):
                shutil.rmtree(folder, ignore_errors=True)
            self.store.remove(job_id)

    # ------------------------------------------------------------ reports

    def _record(self, worker: Worker, report: dict) -> None:
        kind = report["type"]
        if kind == "ready":
            worker.ready = True
            return
        if kind == "held":
            worker.held = list(report["models"])
            return
        job_id = report["job"]
        if kind == "event":
            event = public_event(job_id, report["event"])
            self.store.record(job_id, event["type"], event, **progress_fields(event, self._windows.get(job_id, 1)))
            # Where a test kills the service: the event is in the queue, the worker goes on.
            if event["type"] == "window_done":
                faults.point("service_window_recorded")
            elif event["type"] == "step_done":
                faults.point("service_step_recorded")
        elif kind == "warning":
            self.store.record(job_id, "warning", {"message": report["message"]})
        else:
            worker.job = None
            self._told_cancel.discard(job_id)
            self._windows.pop(job_id, None)
            if kind == "done":
                self.store.finish(job_id, "completed")
            elif kind == "cancelled":
                self.store.finish(job_id, "cancelled")
            else:
                self.store.finish(job_id, "failed", error=report["message"], param=report.get("field"))

    def health(self) -> list[dict]:
        return [{"name": w.name, "device": w.device, "pid": getattr(w, "pid", None), "alive": w.alive(),
                 "ready": w.ready, "job": w.job, "models": list(w.held)} for w in self.workers]


def job_folders(state_dir: Path, job_id: str) -> list[Path]:
    """Where a job's files are: its video folder and its uploads."""
    return [Path(state_dir) / "videos" / job_id, Path(state_dir) / "uploads" / job_id]


def public_event(job_id: str, event: dict) -> dict:
    """A worker's event as clients see it: the server's file paths become the job's URLs."""
    event = dict(event)
    if event.get("description"):  # "what is made -> where": the where is the server's
        event["description"] = event["description"].split(" -> ")[0]
    if event.get("preview"):
        event["preview"] = f"/v1/videos/{job_id}/content?variant=preview"
    if event.get("path"):
        event["path"] = f"/v1/videos/{job_id}/content"
    return event


def progress_fields(event: dict, windows: int) -> dict:
    """The job's progress columns an event changes: windows done, percent (99 at most until it is completed: the
    video is whole only when its file is in place), time left. `windows`: the job's window count."""
    kind = event["type"]
    out = {"eta_s": event["eta_s"]} if "eta_s" in event else {}
    if kind == "run_started":
        windows = max(event["windows"], 1)
        out.update(windows=windows, windows_done=event["done"])
        done = event["done"]
    elif kind == "step_done":
        done = event["window"] + event["step"] / max(event["steps"], 1)
    elif kind == "window_done":
        out["windows_done"] = event["window"] + 1
        done = event["window"] + 1
    else:
        return out
    out["progress"] = min(99, int(100 * done / max(windows, 1)))
    return out
