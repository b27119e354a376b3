"""Continuing what was stopped, through the API: `POST /v1/videos/{id}/resume` puts a failed (or cancelled) extend
back in the queue, and it finishes from its last window to the same bytes as an uninterrupted run; what it made
before it stopped is still served as the preview. And nothing a client receives names a path of the server."""

import json
import re

import pytest

from skyreels_cli.media.videos import read_comment
from skyreels_cli.service.folders import public_text

from .service_helpers import TINY_EXTEND, Server, multipart

pytestmark = pytest.mark.slow  # services of their own, videos made


def test_a_failed_extend_resumes_from_its_last_window_to_the_same_bytes(hub_models, tmp_path):
    state = tmp_path / "state"
    # The worker dies as SIGKILL would right after its third window is saved: the job fails, its windows kept.
    with Server(state, "--model", "tiny", env={"SKYREELS_FAULT": "window_saved:3"}) as server:
        job = server.submit(TINY_EXTEND)
        assert job["windows"] == 5
        failed = server.wait(job["id"], "failed")
        assert failed["windows_done"] >= 2, failed  # the third window's event may die with the worker
        assert len(server.content(job["id"], "preview")) > 0, "what was made is still served"
        assert server.call("POST", f"/v1/videos/{job['id']}/resume")[0] == 200
        resumed = server.wait(job["id"], "completed")
        assert resumed["attempts"] == 2 and resumed["error"] is None
        starts = [d["done"] for k, d in server.events(job["id"]) if k == "run_started"]
        assert starts[0] == 0 and starts[-1] == 3, "the second run starts after the kept windows"
        status, body, _ = server.call("POST", f"/v1/videos/{job['id']}/resume")
        assert status == 409 and body["error"]["param"] == "id", "a completed video is not resumed"
        resumed_bytes = server.content(job["id"])
    with Server(state, "--model", "tiny") as server:
        straight = server.wait(server.submit(TINY_EXTEND)["id"], "completed")
        assert straight["attempts"] == 1
        assert server.content(straight["id"]) == resumed_bytes, "byte-identical to an uninterrupted run"


def test_nothing_a_client_receives_names_a_server_path(hub_models, tmp_path):
    """A job fails at run time with the output's server path in its exception (a disk error while its third
    window is written), is resumed and completes: its error, warnings, events, preview (the tag written by the
    library while it ran), finished video, thumbnail, spritesheet and settings name no path of the server."""
    import io

    from PIL import Image

    state = tmp_path / "state"
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(image, format="PNG")  # scaled up 6 times: warned about
    received: list[str] = []

    def tag(data: bytes) -> str:
        (tmp_path / "got.mp4").write_bytes(data)
        return read_comment(tmp_path / "got.mp4") or ""

    with Server(state, "--model", "tiny", env={"SKYREELS_FAULT": "segment_write:3:raise"}) as server:
        raw, kind = multipart(TINY_EXTEND, {"input_reference": ("start.png", image.getvalue())})
        status, job, _ = server.call("POST", "/v1/videos", raw=raw, headers={"Content-Type": kind})
        assert status == 200, job
        failed = server.wait(job["id"], "failed")
        error = failed["error"]["message"]
        assert error.startswith(f"cannot write output /v1/videos/{job['id']}/content: fault injected at segment_write"), error
        preview = tag(server.content(job["id"], "preview"))
        assert json.loads(preview)["request"]["image"] == "input_reference", preview
        received += [json.dumps(failed), json.dumps(server.events(job["id"])), preview]
        assert server.call("POST", f"/v1/videos/{job['id']}/resume")[0] == 200
        done = server.wait(job["id"], "completed")
        events = server.events(job["id"])
        warnings = [data["message"] for kind, data in events if kind == "warning"]
        assert any("input_reference" in w for w in warnings), warnings  # the field, where the path was
        finished = tag(server.content(job["id"]))
        received += [json.dumps(done), json.dumps(events), json.dumps(server.call("GET", "/v1/videos")[1]),
                     json.dumps(server.content(job["id"], "settings")), finished,
                     server.content(job["id"], "thumbnail").decode("latin-1"),
                     server.content(job["id"], "spritesheet").decode("latin-1")]
    for text in received:
        assert str(state) not in text and str(tmp_path) not in text and "/uploads/" not in text, text[:500]
    assert json.loads(finished)["request"]["image"] == "input_reference"
    sidecar = json.loads((state / "videos" / job["id"] / "video.mp4.json").read_text())
    assert sidecar["request"]["image"].startswith(str(state)), "the server's own record keeps the path"


def test_a_failure_names_the_upload_by_its_field():
    files = "/srv/skyreels/state"
    message = f"image {files}/uploads/video_{'a' * 24}/input_reference.png is 1x1; give a larger image"
    public = public_text(message, files)
    assert public == "image input_reference is 1x1; give a larger image"
    assert not re.search(r"/srv", public_text(f"cannot write {files}/videos/x", files))
    output = f"cannot write output {files}/videos/video_{'b' * 24}/video.mp4: disk full"
    assert public_text(output, files) == f"cannot write output /v1/videos/video_{'b' * 24}/content: disk full"
