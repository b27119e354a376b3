"""Jobs over several workers (`"gpus": N`, context parallelism) on `skyreels serve`: two CPU workers form one gloo
group for a job and make the video one process makes, byte for byte; such a job keeps its place in the queue
until both are free; a rank that dies fails only that job, and both workers take the next group job."""

import json
import sqlite3

import numpy as np
import pytest

from .conftest import read_video
from .service_helpers import Server

# Services of two worker processes each making videos: about a minute.
pytestmark = pytest.mark.slow

# 64x64: 16 tokens a latent frame, which two processes split evenly; four windows.
EXTEND = {"command": "extend", "model": "tiny", "prompt": "a red fox", "height": 64, "width": 64, "steps": 2,
          "frames": 45, "base_frames": 17, "overlap": 5, "seed": 5}


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("groups") / "state", "--model", "tiny", "--workers", "2") as server:
        yield server


def event_times(server, job_id: str) -> dict[str, float]:
    """When the queue recorded each status of the job (the first time)."""
    db = sqlite3.connect(server.state_dir / "queue.db")
    rows = db.execute("SELECT at, data FROM events WHERE job_id = ? AND type = 'job' ORDER BY n", (job_id,))
    out: dict[str, float] = {}
    for at, data in rows:
        out.setdefault(json.loads(data)["status"], at)
    db.close()
    return out


def both_workers(job: dict) -> bool:
    """The job ran on both workers (ranks in either order: rank 0 is whichever was free first)."""
    return sorted(job["worker"].split("+")) == ["cpu0", "cpu1"]


def test_a_two_gpu_job_makes_the_video_of_one_process(server, tmp_path):
    group = server.submit({**EXTEND, "gpus": 2})
    alone = server.submit(EXTEND)
    assert group["gpus"] == 2 and alone["gpus"] == 1
    done = server.wait(group["id"], "completed")
    assert both_workers(done) and done["windows_done"] == done["windows"] == 4
    server.wait(alone["id"], "completed")
    video = server.content(group["id"])
    assert video == server.content(alone["id"]), "the same bytes as one process makes"
    (tmp_path / "group.mp4").write_bytes(video)
    frames, _ = read_video(tmp_path / "group.mp4")
    assert len(frames) == 45 and np.abs(np.diff(frames.astype(int), axis=0)).mean() > 1, "the frames move"
    other = server.wait(server.submit({**EXTEND, "gpus": 2, "seed": 6})["id"], "completed")
    assert server.content(other["id"]) != video, "another seed, another video: the comparison can fail"

    runtime = server.content(group["id"], "settings")["run"]["runtime"]
    assert runtime["parallel"]["processes"] == 2 and runtime["parallel"]["ulysses"] == 2
    events = server.events(group["id"])
    assert [k for k, _ in events].count("run_started") == 1, "rank 0 alone reports"
    assert [d["window"] for k, d in events if k == "window_done"] == [0, 1, 2, 3]
    workers = server.call("GET", "/health")[1]["workers"]
    assert all(w["ready"] and w["job"] is None for w in workers), "both free again"


def test_a_ring_layout_asked_for_is_used(server):
    done = server.wait(server.submit({**EXTEND, "gpus": 2, "ring": 2})["id"], "completed")
    parallel = server.content(done["id"], "settings")["run"]["runtime"]["parallel"]
    assert (parallel["ulysses"], parallel["ring"]) == (1, 2)


def test_a_group_job_keeps_its_place_until_both_workers_are_free(server):
    long = server.submit({**EXTEND, "frames": 129, "seed": 7})  # one worker is busy with it a while
    group = server.submit({**EXTEND, "gpus": 2, "seed": 8})
    behind = server.submit({**EXTEND, "seed": 9})
    for job in (long, group, behind):
        server.wait(job["id"], "completed")
    t = {job["id"]: event_times(server, job["id"]) for job in (long, group, behind)}
    assert t[long["id"]]["in_progress"] < t[group["id"]]["in_progress"], "the long job ran first"
    assert t[group["id"]]["in_progress"] >= t[long["id"]]["completed"], "the group waited for both workers"
    # the free worker was held for the group job: the job behind it did not take it (it may start as soon as the
    # group's rank 1 is done, before rank 0 has written the video: only the order of starts is the queue's)
    assert t[behind["id"]]["in_progress"] >= t[group["id"]]["in_progress"], "the job behind jumped the group"


def test_a_cancelled_group_job_frees_both_workers(server):
    job = server.submit({**EXTEND, "gpus": 2, "frames": 129, "seed": 10})
    server.wait(job["id"], until=lambda j: j["windows_done"] >= 1)
    server.call("POST", f"/v1/videos/{job['id']}/cancel")
    assert server.wait(job["id"], "cancelled")["error"] is None
    pids = {w["name"]: w["pid"] for w in server.call("GET", "/health")[1]["workers"]}
    after = server.wait(server.submit({**EXTEND, "gpus": 2, "seed": 11})["id"], "completed")
    assert both_workers(after)
    assert {w["name"]: w["pid"] for w in server.call("GET", "/health")[1]["workers"]} == pids, "the same workers"
    assert "did not leave" not in server.log(), "rank 1 left when rank 0 stopped, not when it was stopped"


def test_a_rank_that_dies_fails_only_its_job_and_both_workers_work_again(hub_models, tmp_path):
    # Rank 1 dies (exit 137) in its sixth denoising row: window 2 of the group job. Rank 0's next collective fails.
    env = {"SKYREELS_FAULT": "denoise_row:6", "SKYREELS_FAULT_RANK": "1"}
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "2", env=env) as server:
        before = {w["name"]: w["pid"] for w in server.call("GET", "/health")[1]["workers"]}
        doomed = server.submit({**EXTEND, "gpus": 2})
        behind = server.submit({**EXTEND, "seed": 6})
        failed = server.wait(doomed["id"], "failed")
        first, second = failed["worker"].split("+")  # ranks 0 and 1
        message = failed["error"]["message"]
        assert f"the worker {second} (cpu) died while running this job" in message and "137" in message, message
        assert server.wait(behind["id"], "completed")["attempts"] == 1
        again = server.wait(server.submit({**EXTEND, "gpus": 2})["id"], "completed")
        assert both_workers(again) and again["attempts"] == 1
        straight = server.wait(server.submit(EXTEND)["id"], "completed")
        assert server.content(again["id"]) == server.content(straight["id"])
        after = {w["name"]: w["pid"] for w in server.wait_workers()}
        assert after[second] != before[second], "the dead worker was replaced"
        assert after[first] == before[first], "rank 0 heard of it in its next collective, left the group, went on"
        assert f"worker {second} died" in server.log()


def test_the_command_line_submits_gpus_with_server(server, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "fox.mp4"
    args = ["extend", "a red fox", "-m", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--frames", "45",
            "--base-frames", "17", "--overlap", "5", "--seed", "5", "--gpus", "2", "--server", server.url, "-o",
            str(out), "-q"]
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == str(out), done.stderr
    [job] = server.call("GET", "/v1/videos?limit=1")[1]["data"]
    assert job["gpus"] == 2 and both_workers(job), "one submission, run on both workers"
    alone = server.wait(server.submit(EXTEND)["id"], "completed")
    assert out.read_bytes() == server.content(alone["id"])
