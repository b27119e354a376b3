"""The scheduler: hands queued jobs to free workers and writes what the workers report into the queue.

One thread owns the workers (from a `Fleet`: processes of this machine, or Ray actors). It wakes when a job
arrives or is cancelled (`notify`), when a worker reports, or when one dies, and at least once a second; then it

- tells the workers of the jobs whose cancel was asked for;
- gives free workers the next jobs (highest priority, then first in), preferring for a job a free worker that
  already holds its model; a job with `gpus: N` gets N free workers of one machine, which form one process
  group for it (`groups.py`). A job that cannot start yet keeps its place: the free workers of the machine it
  waits on are held for it (nothing behind it takes them), so a big job is never starved by small ones; jobs
  behind it may still use other machines;
- records each report: the library's events (the job's progress, windows done, time left), and how the
  job ended (for a group job: when every member is back, by rank 0's report or a member's death);
- fails the job of a worker that died, with the reason (or, when the worker was lost with its machine, puts
  the job back in the queue to continue elsewhere), and starts a new worker in its place;
- adds the workers of machines that joined (a cluster), and removes the files of deleted jobs once no worker
  holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path

from .. import faults
from .folders import before_run, job_folders, public_text
from .groups import GroupJob
from .live import public_preview, record_made
from .store import Store
from .workers import Fleet, Worker

GROW_EVERY_S = 2.0  # how often the fleet is asked whether machines joined
MAX_LOST = 5        # a job whose worker was lost with its machine this many times fails


class Scheduler:
    def __init__(self, store: Store, state_dir: Path, fleet: Fleet) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.fleet = fleet
        self.workers: list[Worker] = []
        self.groups: dict[str, GroupJob] = {}  # group jobs running, by job id
        self._told_cancel: set[str] = set()
        self._windows: dict[str, int] = {}  # each running job's window count, for its percent done
        self._grown = 0.0
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = threading.Event()

    def remote_runner(self, job_id: str):
        """The worker running `job_id` (rank 0 of a group) when it keeps its own copy of the job's folder, which
        promises prompt changes itself; None otherwise (a local worker, a shared folder, or not running)."""
        for worker in list(self.workers):
            if worker.job == job_id and worker.keeps_own_copy:
                return worker
        return None

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
        self.workers = self.fleet.start()
        self._grown = time.monotonic()
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
            self.fleet.stop()

    def _tick(self) -> None:
        for worker in self.workers:
            for report in worker.reports():
                self._record(worker, report)
        for worker in list(self.workers):
            if not worker.alive():
                for report in worker.reports():  # its last words first
                    self._record(worker, report)
                self._replace(worker)
        self._end_groups()
        if time.monotonic() - self._grown > GROW_EVERY_S:
            self._grown = time.monotonic()
            self.workers += self.fleet.grow(self.workers)
        self._cancel()
        self._assign()
        self._remove_deleted()

    def _replace(self, dead: Worker) -> None:
        reason = dead.exit_reason()
        died = f"the worker {dead.name} ({dead.device}) died while running this job ({reason})"
        if dead.job in self.groups:
            self.groups[dead.job].member_ended(dead, None, died)
        elif dead.job is not None:
            self._worker_died(dead.job, died, dead.lost)
        dead.stop()
        new = self.fleet.replace(dead)
        print(f"skyreels serve: worker {dead.name} died ({reason}); "
              + ("starting a new one" if new is not None else "its place is gone"), file=sys.stderr)
        self.workers.remove(dead)
        if new is not None:
            self.workers.append(new)

    def _worker_died(self, job_id: str, died: str, lost: bool) -> None:
        """A job whose worker died: failed with the reason, or (its worker lost with its machine) queued again,
        to continue from what the service holds."""
        self._windows.pop(job_id, None)
        self._told_cancel.discard(job_id)
        row = self.store.get(job_id)
        if lost and row is not None and row["attempts"] < MAX_LOST and not row["cancel_requested"]:
            self.store.requeue(job_id, f"{died}; it goes on from its last finished window")
            return
        if row is not None and row["cancel_requested"]:
            self.store.finish(job_id, "cancelled")
            return
        self.store.finish(job_id, "failed", error=f"{died}; other jobs go on")

    def _cancel(self) -> None:
        for row in self.store.cancelling():
            if row["id"] in self._told_cancel:
                continue
            for worker in self.workers:
                if worker.job == row["id"]:
                    worker.cancel(row["id"])
            self._told_cancel.add(row["id"])

    # ------------------------------------------------------------ assigning

    def _assign(self) -> None:
        free = [w for w in self.workers if w.ready and w.job is None and w.alive()]
        if not free:
            return
        capacity = self.fleet.capacity()
        for row in self.store.waiting():
            if not free:
                break
            need = row["gpus"]
            if need == 1:
                members = [next((w for w in free if row["model"] in w.held), free[0])]
            else:
                members = self._group_members(free, need, row["model"], capacity)
                if len(members) < need:  # it waits; the free workers of the machine it waits on are held for it
                    for worker in members:
                        free.remove(worker)
                    continue
            for worker in members:
                free.remove(worker)
            self._dispatch(row, members)

    @staticmethod
    def _group_members(free: list[Worker], need: int, model: str, capacity: dict[str, int]) -> list[Worker]:
        """`need` free workers of one machine (those holding `model` first); or, when no machine has that many
        free, the free workers of the machine that can have most of them free soonest (held for the job). A job
        no machine can ever hold (its machine left a cluster) holds nothing."""
        by_node: dict[str, list[Worker]] = {}
        for worker in free:
            by_node.setdefault(worker.node, []).append(worker)
        fits = [node for node, size in capacity.items() if size >= need]
        if not fits:
            return []
        node = max(fits, key=lambda n: (len(by_node.get(n, [])) >= need, len(by_node.get(n, []))))
        workers = sorted(by_node.get(node, []), key=lambda w: model not in w.held)
        return workers[:need]

    def _dispatch(self, row: dict, members: list[Worker]) -> None:
        """Start the job on its worker (or its group of workers, rank 0 first)."""
        job = before_run(json.loads(row["job"]))
        if job is None:  # its video is whole: made by a run the service was killed before it heard the end of
            if self.store.start(row["id"], members[0].name):
                self.store.finish(row["id"], "completed")
            return
        name = "+".join(w.name for w in members)
        if not self.store.start(row["id"], name):
            return
        self._windows[row["id"]] = row["windows"] or 1
        if len(members) == 1:
            members[0].run(row["id"], job)
            return
        rendezvous = self.fleet.rendezvous(members)
        self.groups[row["id"]] = GroupJob(row["id"], members, rendezvous)
        for rank, worker in enumerate(members):
            worker.run(row["id"], job, rendezvous.member(rank, len(members)))

    def _end_groups(self) -> None:
        """Group jobs whose members are all back are recorded (rank 0's report, or a member's death); members
        that linger past the grace time after the job ended are stopped (and replaced)."""
        for job_id, group in list(self.groups.items()):
            for worker in group.stragglers():
                print(f"skyreels serve: worker {worker.name} did not leave the group of {job_id}; stopping it",
                      file=sys.stderr)
                group.member_ended(worker, None)
                worker.job = None  # it holds no job now: it is only replaced
                self._replace(worker)
            if not group.complete():
                continue
            del self.groups[job_id]
            group.rendezvous.close()
            outcome = group.outcome
            if outcome is not None and outcome["type"] == "done" or not group.dead:
                self._ended(job_id, outcome or {"type": "failed", "message": "the group ended without a report"})
            else:
                died = "; ".join(reason for _, reason in group.dead)
                self._worker_died(job_id, died, all(worker.lost for worker, _ in group.dead))

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
            worker.loads = report.get("loads", 0)
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
            self.store.record(job_id, "warning", {"message": public_text(report["message"], self.state_dir)})
        else:
            worker.job = None
            if job_id in self.groups:
                self.groups[job_id].member_ended(worker, report)
            else:
                self._ended(job_id, report)

    def _ended(self, job_id: str, report: dict) -> None:
        self._told_cancel.discard(job_id)
        self._windows.pop(job_id, None)
        kind = report["type"]
        if kind == "done":
            record_made(self.store, self.state_dir, job_id)
            self.store.finish(job_id, "completed")
        elif kind == "cancelled":
            self.store.finish(job_id, "cancelled")
        else:
            self.store.finish(job_id, "failed", error=public_text(report["message"], self.state_dir),
                              param=report.get("field"))

    def health(self) -> list[dict]:
        return [{"name": w.name, "device": w.device, "node": w.node, "pid": getattr(w, "pid", None),
                 "alive": w.alive(), "ready": w.ready, "job": w.job, "models": list(w.held),
                 "loads": getattr(w, "loads", 0)} for w in self.workers]


def public_event(job_id: str, event: dict) -> dict:
    """A worker's event as clients see it: the server's file paths become the job's URLs."""
    event = dict(event)
    if event.get("description"):  # "what is made -> where": the where is the server's
        event["description"] = event["description"].split(" -> ")[0]
    if event.get("preview"):
        event["preview"] = public_preview(job_id, str(event["preview"])) or \
            f"/v1/videos/{job_id}/content?variant=preview"
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
