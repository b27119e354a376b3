"""`skyreels serve --ray` on a local Ray cluster, on the tiny model on the CPU (issue 17).

1. Jobs per minute with one, two and three workers: one service on a cluster that grows a node at a time (each
   node declaring one GPU, so one worker, with one core's worth of threads), then shrinks again, measuring at each
   size on the way up and on the way down (the machine is shared: the two passes even out what else runs on it).
   The ratio to one worker is the figure; the absolute times are this machine's.
2. Ray's per-job overhead over the one-machine service: the same jobs back to back through `skyreels serve` (one
   worker process) and through `skyreels serve --ray` (one actor on a one-node cluster), both with the same
   threads, measured in turn.

    python benchmarks/cluster_throughput.py            # about 6 minutes on 2 CPU cores
    python benchmarks/cluster_throughput.py --jobs 12 --repeats 3 --json cluster.json

Needs the [ray] extra. Times are wall clock on this machine; the services, Ray and this script share it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_overhead import Service, load_average, machine  # noqa: E402


def wait_workers(service: Service, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [w for w in service.client.call("GET", "/health")["workers"] if w["alive"]]
        if len(workers) == count and all(w["ready"] for w in workers):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the service did not get {count} workers")


def warm(service: Service, workers: int) -> None:
    """Every worker has loaded the model: as many jobs at once as there are workers, until each has run one."""
    while True:
        health = service.client.call("GET", "/health")["workers"]
        if all(w["loads"] >= 1 for w in health if w["alive"]):
            return
        ids = [service.submit(seed=1000 + i)[1]["id"] for i in range(workers)]
        for video_id in ids:
            service.wait(video_id)


def per_minute(service: Service, jobs: int, seed: int) -> tuple[float, set]:
    start = time.time()
    ids = [service.submit(seed=seed + i)[1]["id"] for i in range(jobs)]
    used = {service.wait(video_id)["worker"] for video_id in ids}
    return 60 * jobs / (time.time() - start), used


def scaling(jobs: int) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    runs: dict[int, list[float]] = {1: [], 2: [], 3: []}
    nodes = []
    service = None
    try:
        nodes.append(cluster.add_node(num_cpus=1, num_gpus=1))
        service = Service("--ray", cluster.address)
        for size in (1, 2, 3, 2, 1):  # up, then down
            while len(nodes) < size:
                nodes.append(cluster.add_node(num_cpus=1, num_gpus=1))
            while len(nodes) > size:
                cluster.remove_node(nodes.pop())
            wait_workers(service, size)
            warm(service, size)
            rate, used = per_minute(service, jobs, seed=100 * size + len(runs[size]))
            assert len(used) == size, used
            runs[size].append(rate)
            print(f"  {size} worker(s): {rate:.1f} jobs/min", flush=True)
    finally:
        if service is not None:
            service.stop()
        cluster.shutdown()
    med = {n: statistics.median(r) for n, r in runs.items()}
    return {"jobs": jobs, "jobs_per_min": runs, "ratio_to_1": {n: med[n] / med[1] for n in runs}}


def overhead(jobs: int, repeats: int) -> dict:
    """Seconds per job, jobs back to back on a loaded model: the one-machine service and the Ray service, in turn."""
    from ray.cluster_utils import Cluster

    threads = os.cpu_count() or 1
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    cluster.add_node(num_cpus=threads, num_gpus=1)  # one worker, with every core's threads as the process worker
    served: dict[str, list[float]] = {"service": [], "ray": []}
    try:
        services = {"service": Service("--workers", "1"), "ray": Service("--ray", cluster.address)}
        try:
            for service in services.values():
                wait_workers(service, 1)
                warm(service, 1)
            for r in range(repeats):
                for name, service in services.items():
                    rate, _ = per_minute(service, jobs, seed=10_000 * r)
                    served[name].append(60 / rate)
        finally:
            for service in services.values():
                service.stop()
    finally:
        cluster.shutdown()
    added = [a - b for a, b in zip(served["ray"], served["service"])]
    return {"jobs": jobs, "threads": threads, "service_s_per_job": served["service"], "ray_s_per_job": served["ray"],
            "added_s_per_job": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the overhead measurement")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    import ray

    results = {**machine(), "ray": ray.__version__}
    print(f"{results['date']}, {results['machine']}, {results['cpus']} CPUs, torch {results['torch']}, "
          f"ray {results['ray']}", flush=True)
    print("jobs per minute as the cluster grows and shrinks:", flush=True)
    results["scaling"] = scaling(args.jobs)
    results["overhead"] = overhead(args.jobs, args.repeats)
    results["load_after"] = load_average()
    s, o = results["scaling"], results["overhead"]
    med = statistics.median
    for n in (1, 2, 3):
        print(f"{n} worker(s), {s['jobs']} jobs: {med(s['jobs_per_min'][n]):.1f} jobs/min, "
              f"{s['ratio_to_1'][n]:.2f}x one worker   {[round(x, 1) for x in s['jobs_per_min'][n]]}")
    print(f"per job, {o['jobs']} jobs back to back, one worker with {o['threads']} threads, median of "
          f"{args.repeats}: service {med(o['service_s_per_job']):.3f} s, ray {med(o['ray_s_per_job']):.3f} s, "
          f"added {med(o['added_s_per_job']):+.3f} s   {[round(x, 3) for x in o['added_s_per_job']]}")
    print(f"load average before {results['load_before']}, after {results['load_after']} (other work on the machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
