"""`skyreels serve` through real sockets: a job through the queue and a worker process to the same video the library
makes, its events, uploads, the queue's order and priorities, cancel and delete, and bad requests refused on one line
naming the field with nothing queued."""

import io
import json

import numpy as np
import pytest
from PIL import Image

import skyreels_cli as sk

from .conftest import read_video
from .service_helpers import TINY_EXTEND, Server

TINY = {"model": "tiny", "prompt": "a red fox", "seed": 3, "steps": 2}


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("service") / "state", "--model", "tiny", "--model", "df-1.3b-540p") as server:
        yield server


def png(width=80, height=48) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def library_video(tmp_path, command: str, request: sk.Request, name: str) -> bytes:
    """What the library makes of the same job, called directly in this process."""
    job = sk.Job(command, request, model="tiny", load=sk.LoadOptions(device="cpu"), output=str(tmp_path / name))
    return sk.run(job, progress=False).path.read_bytes()


# ------------------------------------------------------------------ a job from end to end

@pytest.mark.slow  # makes videos, or starts a service of its own
def test_a_job_goes_through_the_queue_to_the_video_the_library_makes(server, tmp_path):
    job = server.submit(TINY)
    assert job["object"] == "video" and job["status"] in ("queued", "in_progress") and job["id"].startswith("video_")
    assert (job["model"], job["size"], job["frames"], job["seed"], job["windows"]) == ("tiny-df", "80x48", 17, 3, 1)
    done = server.wait(job["id"], "completed")
    assert done["progress"] == 100 and done["windows_done"] == 1 and done["worker"] == "cpu" and done["error"] is None
    video = server.content(job["id"])
    assert video == library_video(tmp_path, "t2v", sk.Request(prompt="a red fox", seed=3, steps=2), "lib.mp4")
    settings = server.content(job["id"], "settings")
    assert settings["request"]["seed"] == 3 and settings["run"]["output"] == f"/v1/videos/{job['id']}/content"
    assert str(server.state_dir) not in json.dumps(settings), "no server path in what clients read"


@pytest.mark.slow  # makes videos, or starts a service of its own
def test_the_events_replay_the_librarys_progress_in_order(server):
    job = server.wait(server.submit({**TINY_EXTEND, "frames": 25})["id"], "completed")
    events = server.events(job["id"])
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["job", "job", "run_started"] and kinds[-2:] == ["run_finished", "job"]
    assert [data["status"] for kind, data in events if kind == "job"] == ["queued", "in_progress", "completed"]
    windows = [data["window"] for kind, data in events if kind == "window_done"]
    assert windows == list(range(job["windows"])) and job["windows"] > 1
    steps = [data for kind, data in events if kind == "step_done"]
    assert len(steps) >= job["windows"] * 2 and all(s["eta_s"] is not None for s in steps[1:])
    started = events[2][1]
    assert started["preview"] == f"/v1/videos/{job['id']}/content?variant=preview"
    assert "->" not in started["description"], "where the server writes is its business"
    _, body, _ = server.call("GET", f"/v1/videos/{job['id']}/events", headers={"Last-Event-ID": "3"})
    numbers = [int(line[4:]) for line in body.decode().splitlines() if line.startswith("id: ")]
    assert numbers == list(range(4, len(events) + 1)), "a client that lost the stream takes it up where it was"


@pytest.mark.slow  # makes videos, or starts a service of its own
def test_an_uploaded_start_image_makes_the_same_i2v_video_as_the_library(server, tmp_path):
    data = png()
    job = server.submit({"prompt": "a red fox", "seed": 4, "steps": 2}, files={"input_reference": ("fox.png", data)})
    assert job["command"] == "i2v" and job["model"] == "tiny-i2v"
    server.wait(job["id"], "completed")
    (tmp_path / "start.png").write_bytes(data)
    request = sk.Request(prompt="a red fox", seed=4, steps=2, image=str(tmp_path / "start.png"))
    (tmp_path / "served.mp4").write_bytes(server.content(job["id"]))
    library_video(tmp_path, "i2v", request, "lib.mp4")
    assert np.array_equal(read_video(tmp_path / "served.mp4")[0], read_video(tmp_path / "lib.mp4")[0]), \
        "the upload is the start image, as given"


@pytest.mark.slow  # makes videos, or starts a service of its own
def test_form_fields_take_their_types_and_openai_names(server):
    job = server.submit({"model": "tiny", "prompt": "a cat", "seconds": "1", "size": "64x48", "seed": "8",
                         "steps": "2", "command": "extend", "base_frames": "17", "overlap": "5",
                         "causal_attention": "false"}, files={"input_reference": ("cat.png", png())})
    assert (job["command"], job["size"], job["frames"], job["seconds"], job["seed"]) == ("extend", "64x48", 24, "1", 8)
    server.wait(job["id"], "completed")


# ------------------------------------------------------------------ the queue

@pytest.mark.slow  # makes videos, or starts a service of its own
def test_priority_first_then_first_in_first_out(hub_models, tmp_path):
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0") as server:
        a, b, c = (server.submit({**TINY, "seed": s}) for s in (1, 2, 3))
        urgent = server.submit({**TINY, "seed": 4, "priority": 5})
        positions = {j["seed"]: server.job(j["id"])["queue_position"] for j in (a, b, c, urgent)}
        assert positions == {4: 0, 1: 1, 2: 2, 3: 3}
        cancelled = server.call("POST", f"/v1/videos/{b['id']}/cancel")[1]
        assert cancelled["status"] == "cancelled" and cancelled["queue_position"] is None
        assert server.job(c["id"])["queue_position"] == 2
        listed = server.call("GET", "/v1/videos?limit=2")[1]
        assert [j["seed"] for j in listed["data"]] == [4, 3] and listed["has_more"]
        rest = server.call("GET", f"/v1/videos?limit=10&after={listed['last_id']}")[1]
        assert [j["seed"] for j in rest["data"]] == [2, 1] and not rest["has_more"]


@pytest.mark.slow  # makes videos, or starts a service of its own
def test_cancel_stops_a_running_job_and_delete_removes_its_files(server):
    job = server.submit({**TINY_EXTEND, "steps": 8, "frames": 121})
    server.wait(job["id"], "in_progress", until=lambda j: j["progress"] > 0)
    assert server.call("POST", f"/v1/videos/{job['id']}/cancel")[0] == 200
    cancelled = server.wait(job["id"], "cancelled")
    assert cancelled["error"] is None and cancelled["windows_done"] < cancelled["windows"]
    assert [d["status"] for k, d in server.events(job["id"]) if k == "job"] == ["queued", "in_progress", "cancelled"]
    assert (server.state_dir / "videos" / job["id"]).is_dir()
    status, body, _ = server.call("DELETE", f"/v1/videos/{job['id']}")
    assert status == 200 and body == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert server.call("GET", f"/v1/videos/{job['id']}")[0] == 404
    server.wait(server.submit(TINY)["id"], "completed")  # the scheduler has looked at the queue since
    assert not (server.state_dir / "videos" / job["id"]).exists()


def test_models_health_and_the_schema(server):
    models = server.call("GET", "/v1/models")[1]
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny", "df-1.3b-540p"]
    assert models["data"][1]["kind"] == "df" and models["data"][1]["held_by"] == []
    health = server.call("GET", "/health")[1]
    assert health["status"] == "ok" and [w["device"] for w in health["workers"]] == ["cpu"]
    schema = server.call("GET", "/openapi.json")[1]
    body = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "frames", "seed", "base_frames", "offload", "loras", "size", "seconds"} <= set(body["properties"])
    assert "device" not in body["properties"] and "output" not in body["properties"]
    assert server.call("GET", "/docs")[0] == 200


# ------------------------------------------------------------------ bad requests

BAD = [
    ({"frames": -4}, 400, "frames", '"frames": -4'),
    ({"frames": "ten"}, 400, "frames", "frames must be a whole number"),
    ({"framez": 9}, 400, "framez", "unknown field 'framez'"),
    ({"size": "big"}, 400, "size", "WIDTHxHEIGHT"),
    ({"height": 50}, 400, "height", "16"),
    ({"model": "sora-2"}, 400, "model", "not offered here"),
    ({"model": "df-1.3b-540p"}, 400, "model", "this service runs on the CPU, where df-1.3b-540p would take days"),
    ({"command": "edit"}, 400, "command", "t2v, i2v, extend"),
    ({"base_frames": 17}, 400, "base_frames", "extend"),
    ({"steps": 0}, 400, "steps", "steps"),
    ({"offload": "most"}, 400, "offload", "none, model, group"),
    ({"seed": "abc"}, 400, "seed", "seed must be a whole number"),
    ({"priority": 1000}, 400, "priority", "-100 to 100"),
    ({"gpus": 2}, 400, "gpus", "more than this service has on one machine (1 worker, one GPU each)"),
    ({"gpus": 0}, 400, "gpus", "from 1 to"),
    ({"ulysses": 2}, 400, "ulysses", 'comes with "gpus": N'),
    ({"loras": ["style"]}, 400, "loras", "not a LoRA of this service"),
    ({"enhance": "/tmp/llm"}, 400, "enhance", "give true"),
    ({"command": "i2v"}, 400, "input_reference", "start image"),
    ({"prompt": "x" * 10_001}, 413, "prompt", "at most 10000"),
    ({"sigmas": [1.0, 0.5, 0.75]}, 400, "sigmas", '"sigmas" must decrease'),
    ({"sigmas": [1.0, 0.5], "steps": 4}, 400, "steps", "2 noise levels"),
    ({"sampler": "heun"}, 400, "sampler", "unipc, euler"),
    ({"accelerator": "lightx2v"}, 400, "accelerator", "has no LoRA for tiny-df"),
]


@pytest.mark.parametrize("fields, status, param, words", BAD, ids=[json.dumps(b[0])[:30] for b in BAD])
def test_a_bad_request_is_one_line_naming_the_field_and_nothing_is_queued(server, fields, status, param, words):
    before = server.call("GET", "/health")[1]["queue"], uploads(server)
    code, body, _ = server.call("POST", "/v1/videos", {**TINY, **fields})
    assert code == status, body
    message = body["error"]["message"]
    assert body["error"]["param"] == param and words in message and "\n" not in message, body
    assert "Traceback" not in message and str(server.state_dir) not in message
    assert (server.call("GET", "/health")[1]["queue"], uploads(server)) == before, "nothing queued, no upload kept"


def uploads(server) -> set:
    return set((server.state_dir / "uploads").glob("*/*"))


def test_a_bad_upload_is_refused_by_its_field_and_its_file_removed(server):
    before = uploads(server)
    status, body, _ = server.call("POST", "/v1/videos", raw=b"not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    from .service_helpers import multipart

    raw, kind = multipart({**TINY, "command": "i2v"}, {"input_reference": ("x.png", b"this is no image")})
    status, body, _ = server.call("POST", "/v1/videos", raw=raw, headers={"Content-Type": kind})
    assert status == 400 and body["error"]["param"] == "input_reference", body
    assert "input_reference" in body["error"]["message"] and "uploads" not in body["error"]["message"], body
    assert uploads(server) == before
    status, body, _ = server.call("GET", "/v1/videos/video_0123/content")
    assert status == 404 and body["error"]["param"] == "id"


def test_without_ray_installed_ray_is_one_line_saying_how_to_install(monkeypatch, tmp_path):
    import sys

    from .conftest import invoke, one_line_error

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as where it is not installed
    message = one_line_error(invoke("serve", "--ray", "auto", "--port", "0", "--state-dir", tmp_path / "state"))
    assert "pip install" in message and "[ray]" in message, message
    assert not (tmp_path / "state").exists(), "nothing made"


def test_admitting_a_day_of_video_counts_its_windows_without_listing_them(tmp_path, monkeypatch):
    """2,073,600 frames (a day at 24 fps) admitted by a service whose --max-frames allows it: the window count is
    right, and no window is built one by one on the way (each `Window` made is counted; listing the plan would
    make 25,920 of them). The default cap refuses it, 413 naming frames."""
    import math
    from dataclasses import dataclass

    from skyreels_cli.forcing import windows
    from skyreels_cli.forcing.frames import latent_frames
    from skyreels_cli.service.admission import admit
    from skyreels_cli.service.fields import HttpError, Offer

    made = []

    @dataclass(frozen=True)
    class Counted(windows.Window):
        def __post_init__(self) -> None:
            made.append(self.index)

    monkeypatch.setattr(windows, "Window", Counted)
    job = sk.Job("extend", sk.Request(prompt="a fox", frames=2_073_600, seed=1), model="df-1.3b-540p")
    offer = Offer(gpus=2, gpus_elsewhere=True, max_frames=3_000_000, max_seconds=200_000)
    new = admit(job, "video_" + "0" * 24, tmp_path, offer, {"node": 2})
    total, base, overlap = latent_frames(2_073_600), latent_frames(97), latent_frames(17)
    assert new.windows == 1 + math.ceil((total - base) / (base - overlap)) == 25920
    assert 0 < len(made) < 100, f"{len(made)} windows built to admit it"
    with pytest.raises(HttpError) as refused:
        admit(job, "video_" + "1" * 24, tmp_path, Offer(gpus=2, gpus_elsewhere=True), {"node": 2})
    assert refused.value.status == 413 and refused.value.param == "frames"
    # `batch --ray` runs the operator's own file: as long a job as the same file runs without --ray
    from skyreels_cli.service.batch import cluster_offer

    assert admit(job, "video_" + "2" * 24, tmp_path, cluster_offer(2), {"node": 2}).windows == 25920


def test_a_cluster_whose_gpus_are_elsewhere_admits_a_real_model_checked_as_far_as_this_machine_can(tmp_path):
    # `serve --ray` on a head without a GPU: the released model cannot be checked on a GPU here, but everything else is
    from skyreels_cli.service.admission import admit
    from skyreels_cli.service.fields import HttpError, Offer

    job = sk.Job("extend", sk.Request(prompt="a fox", frames=257, seed=1), model="df-1.3b-540p")
    new = admit(job, "video_" + "0" * 24, tmp_path, Offer(gpus=2, gpus_elsewhere=True), {"node": 2})
    assert (new.model, new.frames, new.windows, new.width, new.height) == ("df-1.3b-540p", 257, 3, 960, 544)
    with pytest.raises(HttpError, match="frames") as bad:
        admit(sk.Job("extend", sk.Request(prompt="a fox", frames=-4), model="df-1.3b-540p"), "video_" + "1" * 24,
              tmp_path, Offer(gpus=2, gpus_elsewhere=True), {"node": 2})
    assert bad.value.param == "frames"
    if not torch_has_cuda():  # on one machine, its own lack of a GPU is the answer
        with pytest.raises(HttpError) as here:
            admit(job, "video_" + "2" * 24, tmp_path, Offer(gpus=2), {"node": 2})
        assert here.value.status == 400
    assert not any(tmp_path.iterdir()), "nothing written"


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CLUSTER_MISUSE = [
    (["serve", "--shared-dir", "shared"], "goes with --ray"),
    (["serve", "--ray", "auto", "--gpus", "0,1"], "with --ray every GPU of the cluster gets a worker"),
    (["batch", "jobs.toml", "--ray", "local", "--dry-run"], "--dry-run checks the jobs on this machine"),
    (["batch", "jobs.toml", "--ray", "local", "--device", "cpu"], "--device is the cluster's workers' to choose"),
    (["batch", "jobs.toml", "--state-dir", "state"], "it goes with --ray"),
]


@pytest.mark.parametrize("args, words", CLUSTER_MISUSE, ids=[" ".join(a[:3]) for a, _ in CLUSTER_MISUSE])
def test_cluster_options_used_wrongly_are_one_line_before_anything_starts(args, words, tmp_path, monkeypatch):
    from .conftest import invoke, one_line_error

    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.toml").write_text('[[job]]\ncommand = "t2v"\nprompt = "a cat"\nmodel = "tiny"\n')
    extra = ["--state-dir", "state", "--port", "0"] if args[0] == "serve" else ["--quiet"]
    assert words in one_line_error(invoke(*args, *extra))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.toml"], "nothing made"
