"""What runs on a node of a Ray cluster: one worker actor per GPU (or per share of a CPU-only node's cores).

The actor is the worker process of `workers.py` in another shape: it loads each model once and keeps it
(`sk.ModelPool`), runs one job at a time through the same `run_job` (alone, or as one rank of a group job), and
queues the same reports, which the service collects by calling `poll`. It shares no filesystem with the service:
a job runs in this node's scratch folder, laid out as the service's state folder is (`shipping.py`), into which
the service's files for the job are first written; after each finished window, and at the end, rank 0's report
carries what changed in the job's video folder back to the service (with `--shared-dir`, every node sees the
service's folder at its own path, and the job runs there directly: nothing is shipped). Models come from this node's own Hugging Face
cache, fetched once per node (a file lock in that cache: the node's other workers wait and then find them).

Plain Python: `ray_fleet.py` makes it an actor (`ray.remote`), so this module imports without Ray.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import threading
from pathlib import Path

from .workers import held


class WorkerActor:
    def __init__(self, name: str, scratch: str, service_root: str, threads: int | None = None,
                 ship: bool = True) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.scratch = Path(scratch)
        self.service_root = service_root
        self.ship = ship  # False: `scratch` is the service's own folder, shared by every node (--shared-dir)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._reports: queue.Queue = queue.Queue()
        self._cancels: dict[str, threading.Event] = {}
        self._busy = threading.Lock()
        from ..core.pool import ModelPool

        self._pool = ModelPool(progress=False)

    def ready(self) -> dict:
        import ray

        return {"pid": os.getpid(), "device": self.device, "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname()}

    def run(self, job_id: str, spec: dict, group: dict | None, files: dict[str, bytes]) -> None:
        """Start one job (`Job.to_dict()` in the service's paths) with the service's files for it; returns at once,
        its reports come through `poll`."""
        self._cancels[job_id] = threading.Event()
        threading.Thread(target=self._run, args=(job_id, spec, group, files), name=f"skyreels-job-{job_id}",
                         daemon=True).start()

    def cancel(self, job_id: str) -> None:
        if job_id in self._cancels:
            self._cancels[job_id].set()

    def promise(self, job_id: str, prompt: str, negative_prompt: str | None) -> int | None:
        """A prompt change for the live job running here, recorded in this node's copy of its folder, which its
        run reads before each window (service/live.py): the window it lands at; None when the job is not here."""
        from .live import STEERING, promise

        folder = self.scratch / "videos" / job_id
        if job_id not in self._cancels or not folder.is_dir():
            return None
        return promise(folder / STEERING, prompt, negative_prompt)

    def poll(self, timeout: float = 1.0) -> list[dict]:
        """The reports since the last call, waiting up to `timeout` seconds for the first."""
        out = []
        try:
            out.append(self._reports.get(timeout=timeout))
            while True:
                out.append(self._reports.get_nowait())
        except queue.Empty:
            pass
        return out

    # ------------------------------------------------------------ one job

    def _run(self, job_id: str, spec: dict, group: dict | None, files: dict[str, bytes]) -> None:
        import json

        from .shipping import Watcher, materialize
        from .workers import run_job

        with self._busy:
            folders = [f"videos/{job_id}", f"uploads/{job_id}"]
            root = str(self.scratch)
            main = group is None or group["rank"] == 0
            ship = main and self.ship  # rank 0 alone reads and writes the job's files
            watcher = Watcher(self.scratch, folders[0])
            try:
                if ship:
                    materialize(self.scratch, folders, files)
                    watcher.changes()  # what the service holds already is not sent back
                spec = json.loads(json.dumps(spec).replace(self.service_root, root))
                self._fetch_once(spec)
            except Exception as err:  # noqa: BLE001  its job fails, the actor goes on
                self._reports.put({"type": "failed", "job": job_id, "field": None,
                                   "message": f"the worker {self.name} could not prepare the job: {err}"})
                return

            def send(report: dict) -> None:
                if ship and (report.get("event", {}).get("type") == "window_done" or report["type"] == "done"):
                    report = {**report, "changes": watcher.changes().to_dict()}
                self._reports.put(report)

            report = run_job(job_id, spec, self.device, self._pool, self._cancels[job_id], send, group=group)
            send(report)
            if ship:  # the service holds what the job made (or what it would continue from): the node keeps nothing
                for folder in folders:
                    shutil.rmtree(self.scratch / folder, ignore_errors=True)
            self._cancels.pop(job_id, None)
            self._reports.put(held(self._pool))

    def _fetch_once(self, spec: dict) -> None:
        """The job's model in this node's Hugging Face cache: fetched by one worker of the node while the others
        wait (then they find it there)."""
        import fcntl

        from ..core.job import Job
        from ..models.hub import ensure_model, hf_home
        from ..models.naming import resolve_model
        from ..quiet import third_party_quiet

        job = Job.from_dict(spec)
        lock = hf_home() / ".skyreels-fetch.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                with third_party_quiet(True):
                    ensure_model(resolve_model(job.model, job.command), progress=False)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
