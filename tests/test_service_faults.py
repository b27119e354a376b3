"""The service's guarantees under faults, each made to happen at a chosen point (SKYREELS_FAULT), never after a
sleep: the service killed with its job half made finds it again and finishes it, an `extend` from its last finished
window to the same bytes as an uninterrupted run, a clip from the start; a worker that dies fails only its own job,
with the reason, and is replaced."""

import time

import psutil
import pytest

from .service_helpers import TINY_EXTEND, Server

# Services started, killed and started again: about a minute.
pytestmark = pytest.mark.slow


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_a_killed_service_resumes_its_extend_job_to_the_same_bytes(hub_models, tmp_path):
    state = tmp_path / "state"
    # Dies as SIGKILL would, right after window 1 of the job is in the queue: the worker is mid-window 2.
    first = Server(state, "--model", "tiny", env={"SKYREELS_FAULT": "service_window_recorded:1"}).start()
    [worker] = first.call("GET", "/health")[1]["workers"]
    job = first.submit(TINY_EXTEND)
    assert job["windows"] >= 3
    assert first.proc.wait(timeout=300) == 137, first.log()
    assert gone(worker["pid"]), "the worker died with the service: nothing writes behind a dead service"
    assert (state / "videos" / job["id"] / ".video.mp4.skyreels" / "state.pt").is_file()

    with Server(state, "--model", "tiny") as again:
        resumed = again.wait(job["id"], "completed")
        assert resumed["attempts"] == 2 and resumed["windows_done"] == resumed["windows"]
        events = again.events(job["id"])
        assert {"status": "queued", "reason": "the service restarted"} in [d for k, d in events if k == "job"]
        restarts = [d["done"] for k, d in events if k == "run_started"]
        assert restarts[0] == 0 and restarts[1] >= 1, "the second run starts after the finished windows"
        assert again.content(job["id"], "settings")["run"]["resumed"] is True
        straight = again.wait(again.submit(TINY_EXTEND)["id"], "completed")
        assert straight["attempts"] == 1
        assert again.content(job["id"]) == again.content(straight["id"]), "byte-identical to an uninterrupted run"


def test_a_killed_service_starts_a_clip_again_from_the_start(hub_models, tmp_path):
    state = tmp_path / "state"
    clip = {"model": "tiny", "prompt": "a cat", "steps": 4}  # no seed given: the one drawn is kept
    first = Server(state, "--model", "tiny", env={"SKYREELS_FAULT": "service_step_recorded:2"}).start()
    job = first.submit(clip)
    assert first.proc.wait(timeout=300) == 137, first.log()
    with Server(state, "--model", "tiny") as again:
        done = again.wait(job["id"], "completed")
        assert done["attempts"] == 2 and done["seed"] == job["seed"]
        assert [d["done"] for k, d in again.events(job["id"]) if k == "run_started"] == [0, 0]
        straight = again.wait(again.submit({**clip, "seed": job["seed"]})["id"], "completed")
        assert again.content(job["id"]) == again.content(straight["id"])


def test_a_dead_worker_fails_only_its_job_with_the_reason_and_is_replaced(hub_models, tmp_path):
    # The first worker dies (exit 137, as the kernel's out-of-memory killer leaves it) in its second denoising
    # row; the one that replaces it starts without the fault.
    with Server(tmp_path / "state", "--model", "tiny", env={"SKYREELS_FAULT": "denoise_row:2"}) as server:
        [before] = server.call("GET", "/health")[1]["workers"]
        doomed = server.submit({**TINY_EXTEND, "frames": 25})
        after = server.submit({**TINY_EXTEND, "frames": 25, "seed": 6})
        failed = server.wait(doomed["id"], "failed")
        message = failed["error"]["message"]
        assert "worker cpu (cpu) died while running this job" in message and "137" in message, message
        assert server.wait(after["id"], "completed")["attempts"] == 1, "the next job runs on the new worker"
        [now] = server.wait_workers()
        assert now["pid"] != before["pid"] and gone(before["pid"])
        assert "worker cpu died" in server.log()


def test_the_preview_plays_what_is_finished_while_the_job_runs(hub_models, tmp_path):
    from .conftest import read_video

    # The worker blocks in native code in window 2 (its third denoising row): window 1 is finished, and stays
    # the only one for as long as the test looks.
    with Server(tmp_path / "state", "--model", "tiny", env={"SKYREELS_FAULT": "denoise_row:3:hang"}) as server:
        job = server.submit(TINY_EXTEND)
        running = server.wait(job["id"], until=lambda j: j["windows_done"] == 1)
        assert running["status"] == "in_progress" and 0 < running["progress"] < 100
        (tmp_path / "preview.mp4").write_bytes(server.content(job["id"], "preview"))
        frames, fps = read_video(tmp_path / "preview.mp4")
        assert len(frames) == 17 and frames.shape[1:3] == (48, 48) and fps == 24, "window 1, whole"
        for variant in ("video", "settings"):
            status, body, _ = server.call("GET", f"/v1/videos/{job['id']}/content?variant={variant}")
            assert status == 404 and body["error"]["param"] == "variant", body
        assert "variant=preview plays what is finished" in server.call(
            "GET", f"/v1/videos/{job['id']}/content")[1]["error"]["message"]
