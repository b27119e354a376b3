"""What `skyreels serve` costs and buys, on the tiny model on the CPU (issue 16).

1. Submission to first step: the first job of a fresh service (its worker has not loaded the model), a second job
   (the model is loaded), and a fresh process making the same video (python start, imports, load, first step).
2. The service's added time per job: N jobs back to back through the service (model loaded) against the same N
   jobs through the library on a loaded model in this process (`sk.run(job, pool=...)`).
3. The queue's throughput with two CPU workers against one (each worker gets cores / workers threads).

    python benchmarks/service_overhead.py            # about 3 minutes on 2 CPU cores
    python benchmarks/service_overhead.py --jobs 20 --json service.json

Times are wall clock on this machine; the service and this script share it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from skyreels_cli.service.client import Client  # noqa: E402

JOB = {"model": "tiny", "prompt": "a red fox running through snow", "steps": 4}  # 80x48, 17 frames


class Service:
    """`skyreels serve` in a subprocess on a free port, with its own state folder."""

    def __init__(self, *args: str) -> None:
        self.state = tempfile.mkdtemp(prefix="skyreels-bench-")
        self.proc = subprocess.Popen([sys.executable, "-m", "skyreels_cli", "serve", "--port", "0", "--state-dir",
                                      self.state, "--model", "tiny", *args], stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0].rstrip("/")
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.client = Client(self.url)
        while not all(w["ready"] for w in self.client.call("GET", "/health")["workers"]):
            time.sleep(0.05)

    def submit(self, **fields) -> tuple[float, dict]:
        return time.time(), self.client.call("POST", "/v1/videos", {**JOB, **fields})

    def wait(self, video_id: str) -> dict:
        while (job := self.client.get(video_id))["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.02)
        assert job["status"] == "completed", job
        return job

    def event_time(self, video_id: str, kind: str) -> float:
        """When the service recorded the job's first event of `kind` (its clock is this machine's)."""
        import sqlite3

        db = sqlite3.connect(Path(self.state) / "queue.db")
        (at,) = db.execute("SELECT at FROM events WHERE job_id = ? AND type = ? ORDER BY n LIMIT 1",
                           (video_id, kind)).fetchone()
        db.close()
        return at

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def fresh_process_first_step() -> tuple[float, float]:
    """A new interpreter makes the same video: (seconds to its first step, seconds to the end), from its launch."""
    out = Path(tempfile.mkdtemp()) / "fresh.mp4"
    script = (
        "import json, sys, time\n"
        "import skyreels_cli as sk\n"
        "first = []\n"
        "def on_event(e):\n"
        "    if isinstance(e, sk.StepDone) and not first: first.append(time.time())\n"
        f"job = sk.Job('t2v', sk.Request(prompt={JOB['prompt']!r}, steps={JOB['steps']}), model='tiny',\n"
        f"             load=sk.LoadOptions(device='cpu'), output={str(out)!r})\n"
        "sk.run(job, on_event=on_event, progress=False)\n"
        "print(json.dumps({'first': first[0], 'end': time.time()}))\n"
    )
    start = time.time()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return times["first"] - start, times["end"] - start


def first_steps(repeats: int) -> dict:
    cold, warm, fresh = [], [], []
    for _ in range(repeats):
        service = Service()
        try:
            for into in (cold, warm):
                t0, job = service.submit()
                service.wait(job["id"])
                into.append(service.event_time(job["id"], "step_done") - t0)
        finally:
            service.stop()
        fresh.append(fresh_process_first_step())
    return {"first_job_s": cold, "second_job_s": warm, "fresh_process_first_step_s": [f for f, _ in fresh],
            "fresh_process_total_s": [t for _, t in fresh]}


def overhead(jobs: int, repeats: int) -> dict:
    """Per job: through the service (model loaded, jobs back to back) and through the library directly, the two
    measured in turn `repeats` times (the machine is shared: turns even out what else runs on it)."""
    import skyreels_cli as sk

    pool = sk.ModelPool(progress=False)
    folder = Path(tempfile.mkdtemp())

    def job(i: int) -> sk.Job:
        return sk.Job("t2v", sk.Request(prompt=JOB["prompt"], steps=JOB["steps"], seed=i), model="tiny",
                      load=sk.LoadOptions(device="cpu"), output=str(folder / f"{i}-{time.time_ns()}.mp4"))

    sk.run(job(0), pool=pool, progress=False)  # loads the model
    service = Service()
    served, direct = [], []
    try:
        service.wait(service.submit(seed=0)[1]["id"])  # loads the model
        for _ in range(repeats):
            start = time.time()
            ids = [service.submit(seed=i + 1)[1]["id"] for i in range(jobs)]
            for video_id in ids:
                service.wait(video_id)
            served.append((time.time() - start) / jobs)
            start = time.time()
            for i in range(jobs):
                sk.run(job(i + 1), pool=pool, progress=False)
            direct.append((time.time() - start) / jobs)
    finally:
        service.stop()
    return {"jobs": jobs, "service_s_per_job": served, "library_s_per_job": direct,
            "added_s_per_job": [a - b for a, b in zip(served, direct)]}


def throughput(jobs: int, repeats: int) -> dict:
    """Jobs per minute with one and with two CPU workers, measured in turn `repeats` times."""
    runs: dict[int, list] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            service = Service("--workers", str(workers))
            try:
                warm = [service.submit(seed=100 + w)[1]["id"] for w in range(workers)]  # each worker loads the model
                for video_id in warm:
                    service.wait(video_id)
                start = time.time()
                ids = [service.submit(seed=i)[1]["id"] for i in range(jobs)]
                used = {service.wait(video_id)["worker"] for video_id in ids}
                runs[workers].append(60 * jobs / (time.time() - start))
                assert len(used) == workers, used
            finally:
                service.stop()
    return {"jobs": jobs, "1_worker_jobs_per_min": runs[1], "2_workers_jobs_per_min": runs[2],
            "ratio_2_vs_1": statistics.median(runs[2]) / statistics.median(runs[1])}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict:
    """Where and when the figures were taken (the results file records them beside the figures)."""
    import torch

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "load_before": load_average(), "job": JOB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per overhead and throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="turns of each measurement (medians are printed)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    results = {**machine(), "first_step": first_steps(args.repeats),
               "overhead": overhead(args.jobs, args.repeats), "throughput": throughput(args.jobs, args.repeats),
               "load_after": load_average()}
    f = results["first_step"]
    print(f"{results['date']}, {results['machine']}, {results['cpus']} CPUs, torch {results['torch']}")
    print("submission (or process start) to first step, median of", args.repeats)
    for name, label in (("first_job_s", "first job of a fresh service"), ("second_job_s", "second job, model loaded"),
                        ("fresh_process_first_step_s", "fresh process (start to first step)"),
                        ("fresh_process_total_s", "fresh process (start to end)")):
        print(f"  {label:<40} {statistics.median(f[name]):7.2f} s   {[round(x, 2) for x in f[name]]}")
    o = results["overhead"]
    med = statistics.median
    print(f"per job, {o['jobs']} jobs back to back on a loaded model, median of {args.repeats}: service "
          f"{med(o['service_s_per_job']):.3f} s, library {med(o['library_s_per_job']):.3f} s, added "
          f"{med(o['added_s_per_job']):+.3f} s   {[round(x, 3) for x in o['added_s_per_job']]}")
    t = results["throughput"]
    for workers, key in ((1, "1_worker_jobs_per_min"), (2, "2_workers_jobs_per_min")):
        print(f"throughput, {workers} CPU worker(s), {t['jobs']} jobs: {med(t[key]):.1f} jobs/min   "
              f"{[round(x, 1) for x in t[key]]}")
    print(f"two workers vs one: {t['ratio_2_vs_1']:.2f}x")
    print(f"load average before {results['load_before']}, after {results['load_after']} (other work on the machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
