"""`skyreels serve --ray`: the service's workers as Ray actors, one per GPU of the cluster.

    fleet = RayFleet("auto", state_dir)      # joins the cluster `ray start` made ("local": starts one here)
    scheduler = Scheduler(store, state_dir, fleet)

For each node the fleet reserves its GPUs in a placement group packed on that node (STRICT_PACK, one bundle of one
GPU each) and starts one `WorkerActor` (ray_actor.py) per bundle; a group job (`gpus: N`) gets N actors of one
node, which form one process group as the workers of one machine do (groups.py). On a cluster without any GPU (a
laptop's `--ray local`), each node gets `--workers` actors sharing its cores instead. Every few seconds the fleet
looks for nodes that joined (and GPUs that came free) and starts workers there.

`RayWorker` is an actor as the scheduler sees a worker (`workers.Worker`): a thread per actor collects its reports
(`poll`), writes the files they carry into the state folder (shipping.py) before the scheduler reads them, and
notices the actor's death. An actor that dies with its node is `lost`: its job goes back to the queue and continues
on another worker from the last window the service holds.
"""

from __future__ import annotations

import hashlib
import queue
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import UsageError
from .shipping import apply, read, rebuild_preview

INSTALL = 'Ray is not installed: pip install "skyreels-cli[ray]" (or pip install ".[ray]" in a checkout)'
PLACEMENT_WAIT_S = 120.0  # a placement group that cannot be placed this long (its node went) is given up
PROMISE_S = 30.0  # a prompt change's answer from the node running the job (one SQLite write there)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def connect(address: str, cpus: int | None = None):
    """Join the cluster at `address` ("auto": the one `ray start` made on this machine; "local": start one in this
    process; else HOST:PORT or ray://HOST:PORT)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"address": "local", "include_dashboard": False, "num_cpus": cpus} if address == "local" \
        else {"address": address}
    try:
        ray.init(**kwargs, namespace="skyreels", log_to_driver=True, logging_level="WARNING",
                 configure_logging=True)
    except ConnectionError as err:
        raise UsageError(f"--ray {address}: no Ray cluster there ({err}); start one with `ray start --head`, or use "
                         "--ray local") from None
    return ray


class RayWorker:
    """One actor, as the scheduler sees a worker."""

    def __init__(self, fleet: RayFleet, name: str, node: str, placement, bundle: int) -> None:
        self.fleet = fleet
        self.name, self.node = name, node
        self.device = "cuda" if fleet.gpus else "cpu"
        self.placement, self.bundle = placement, bundle
        self.ready = False
        self.job: str | None = None
        self.held: list[str] = []
        self.loads = 0
        self.lost = False
        self.pid: int | None = None
        self._actor = None
        self._reports: queue.Queue = queue.Queue()
        self._dead: str | None = None
        self._stopping = threading.Event()
        self.keeps_own_copy = False  # the job it runs is in this node's copy of its folder (rank 0, no --shared-dir)
        self._wake_r, self._wake_w = socket.socketpair()  # objects, not bare descriptors: safe to close
        self._wake_r.setblocking(False)

    def start(self) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .ray_actor import WorkerActor

        ray = self.fleet.ray
        strategy = PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=self.bundle)
        resources = {"num_gpus": 1, "num_cpus": 0} if self.fleet.gpus else {"num_cpus": self.fleet.cpus_per_worker}
        self._actor = ray.remote(WorkerActor).options(
            **resources, scheduling_strategy=strategy, max_concurrency=4, max_restarts=0,
            name=f"skyreels-{self.fleet.key}-{self.name}-{time.time_ns()}",
        ).remote(self.name, str(self.fleet.scratch), str(self.fleet.state_dir), self.fleet.threads(self.node),
                 ship=not self.fleet.shared)
        threading.Thread(target=self._listen, name=f"skyreels-ray-{self.name}", daemon=True).start()

    def _listen(self) -> None:
        """Collect the actor's reports (the files they carry written first), until it dies or is stopped."""
        ray = self.fleet.ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            info = ray.get(self._actor.ready.remote())
            self.pid, self.device = info["pid"], info["device"]
            self._put({"type": "ready", "pid": info["pid"], "device": info["device"]})
            while not self._stopping.is_set():
                try:
                    reports = ray.get(self._actor.poll.remote(1.0))
                except ActorUnavailableError:  # for a moment (its node is busy): ask again
                    time.sleep(0.5)
                    continue
                for report in reports:
                    changes = report.pop("changes", None)
                    if changes is not None:
                        self._receive(report["job"], changes)
                    self._put(report)
        except RayActorError as err:
            self.lost = "node has died" in str(err) or not self.fleet.node_alive(self.node)
            self._dead = "its node left the cluster" if self.lost else _first_line(err)
        except Exception as err:  # noqa: BLE001  the service goes on; this worker is taken for dead
            if not self._stopping.is_set():
                self._dead = f"the service lost it ({type(err).__name__}: {_first_line(err)})"
        finally:
            if self._dead is None:
                self._dead = "stopped"
            self._wake()

    def _receive(self, job_id: str, changes: dict) -> None:
        """A window's (or the finished video's) files, into the service's folder of the job."""
        apply(self.fleet.state_dir, changes, rewrite=(str(self.fleet.scratch), str(self.fleet.state_dir)))
        folder = self.fleet.state_dir / "videos" / job_id
        work_dir = folder / ".video.mp4.skyreels"
        if work_dir.is_dir():
            rebuild_preview(work_dir, folder / "video.partial.mp4")
        else:
            (folder / "video.partial.mp4").unlink(missing_ok=True)

    def _put(self, report: dict) -> None:
        self._reports.put(report)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def promise(self, job_id: str, prompt: str, negative_prompt: str | None) -> int | None:
        """A live job's prompt change, promised by the actor from its copy of the job's folder: the window it lands
        at; None when the job is not there (it has just ended on the node) or the actor cannot answer (its node
        went: the job starts again from what the service holds, where the change is then promised)."""
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return self.fleet.ray.get(self._actor.promise.remote(job_id, prompt, negative_prompt),
                                      timeout=PROMISE_S)
        except (GetTimeoutError, RayActorError):
            return None

    def run(self, job_id: str, job: dict, group: dict | None = None) -> None:
        self.job = job_id
        main = group is None or group["rank"] == 0
        ship = main and not self.fleet.shared
        self.keeps_own_copy = ship
        files = read(self.fleet.state_dir, [f"videos/{job_id}", f"uploads/{job_id}"]) if ship else {}
        self._actor.run.remote(job_id, job, group, files)

    def cancel(self, job_id: str) -> None:
        self._actor.cancel.remote(job_id)

    def reports(self) -> list[dict]:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # nothing more to read
            pass
        out = []
        while True:
            try:
                out.append(self._reports.get_nowait())
            except queue.Empty:
                return out

    def handles(self) -> list:
        return [self._wake_r]

    def alive(self) -> bool:
        return self._dead is None

    def exit_reason(self) -> str:
        return self._dead or "it stopped answering"

    def stop(self) -> None:
        self._stopping.set()
        if self._actor is not None:
            try:
                self.fleet.ray.kill(self._actor)
            except Exception:  # noqa: BLE001  already gone
                pass
        if self._dead is None:
            self._dead = "stopped"
        self._wake_r.close()
        self._wake_w.close()


class RayFleet:
    """The workers of a Ray cluster: one actor per GPU (or `cpu_workers` per node on a cluster without GPUs)."""

    def __init__(self, address: str, state_dir: Path, cpu_workers: int = 1, shared: bool = False) -> None:
        self.ray = connect(address, cpus=None)
        self.address = address
        self.state_dir = Path(state_dir)  # where the service keeps the jobs' files
        self.cpu_workers = cpu_workers
        self.shared = shared  # every node sees `state_dir` at its path: the workers write there, nothing is shipped
        self.key = hashlib.sha256(f"{socket.gethostname()}:{self.state_dir}".encode()).hexdigest()[:12]
        # The same path on every node: a job's files (and what its MP4 records of them) do not depend on the node.
        self.scratch = self.state_dir if shared else Path(tempfile.gettempdir()) / f"skyreels-ray-{self.key}"
        self.gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        self._pending: list[tuple[object, str, int, float]] = []  # (placement group, node, bundles, since)
        self._groups: dict[str, list] = {}  # node -> its placement groups
        self._counts: dict[str, int] = {}   # node -> workers named so far

    # ------------------------------------------------------------ the cluster

    def _nodes(self) -> dict[str, dict]:
        return {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}

    def node_alive(self, node: str) -> bool:
        return node in self._nodes()

    def _units(self, node: dict) -> int:
        """Workers a node can have: its GPUs; on a cluster without GPUs, `cpu_workers` (at most one per core)."""
        resources = node.get("Resources", {})
        if self.gpus:
            return int(resources.get("GPU", 0))
        return min(self.cpu_workers, int(resources.get("CPU", 0)))

    @property
    def cpus_per_worker(self) -> int:
        return 1

    def threads(self, node: str) -> int:
        """torch's CPU threads for a worker of `node`: its cores shared among its workers."""
        info = self._nodes().get(node)
        if info is None:
            return 1
        return max(1, int(info.get("Resources", {}).get("CPU", 1)) // max(1, self._units(info)))

    def capacity(self) -> dict[str, int]:
        return {node_id: self._units(node) for node_id, node in self._nodes().items()}

    # ------------------------------------------------------------ workers

    def start(self) -> list:
        """The workers of every node the cluster has now (waiting a while for their placement)."""
        workers = self.grow([])
        deadline = time.monotonic() + 60
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.2)
            workers += self.grow(workers)
        return workers

    def grow(self, workers: list) -> list:
        """Workers for every unit of a node that has none yet: a placement group per node with room, and an actor
        per bundle once it is placed."""
        from ray.util import placement_group, remove_placement_group

        nodes = self._nodes()
        have: dict[str, int] = {}
        for worker in workers:
            if worker.alive():
                have[worker.node] = have.get(worker.node, 0) + 1
        for _, node, bundles, _ in self._pending:
            have[node] = have.get(node, 0) + bundles
        for node_id, node in nodes.items():
            missing = self._units(node) - have.get(node_id, 0)
            if missing > 0:
                bundle = {"GPU": 1} if self.gpus else {"CPU": self.cpus_per_worker}
                group = placement_group([bundle] * missing, strategy="STRICT_PACK",
                                        bundle_label_selector=[{"ray.io/node-id": node_id}] * missing)
                self._pending.append((group, node_id, missing, time.monotonic()))
        started = []
        for entry in list(self._pending):
            group, node_id, bundles, since = entry
            if group.wait(timeout_seconds=0):
                self._pending.remove(entry)
                self._groups.setdefault(node_id, []).append(group)
                for i in range(bundles):
                    started.append(self._worker(node_id, group, i))
            elif node_id not in nodes or time.monotonic() - since > PLACEMENT_WAIT_S:
                self._pending.remove(entry)
                remove_placement_group(group)
        return started

    def _worker(self, node: str, group, bundle: int) -> RayWorker:
        n = self._counts.get(node, 0)
        self._counts[node] = n + 1
        worker = RayWorker(self, f"{node[:8]}-{'gpu' if self.gpus else 'cpu'}{n}", node, group, bundle)
        worker.start()
        return worker

    def replace(self, dead: RayWorker) -> RayWorker | None:
        """A new actor in the dead one's bundle while its node lives; none when the node is gone (its placement
        group is removed: when the node, or another, has room again, `grow` starts workers there)."""
        if self.node_alive(dead.node):
            worker = RayWorker(self, dead.name, dead.node, dead.placement, dead.bundle)
            worker.start()
            return worker
        from ray.util import remove_placement_group

        for group in self._groups.pop(dead.node, []):
            try:
                remove_placement_group(group)
            except Exception:  # noqa: BLE001  gone with its node
                pass
        return None

    def rendezvous(self, members: list):
        from .groups import Rendezvous

        return Rendezvous(self.ray.util.get_node_ip_address())

    def stop(self) -> None:
        try:
            self.ray.shutdown()
        except Exception as err:  # noqa: BLE001
            print(f"skyreels serve: leaving the Ray cluster: {err}", file=sys.stderr)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__

