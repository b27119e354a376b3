"""Safe by default, each guarantee tried: 127.0.0.1 only unless a token is given; with a token every request needs
it; no path on the server's disk from any field; outputs inside the state folder; random ids; size limits (413);
LoRAs by the names the service was started with; no CORS unless asked; a full queue answers 429; and a burst of
200 submissions from 20 threads, each sent twice with its Idempotency-Key, recorded exactly once each."""

import json
import re
import subprocess
import sys
import threading

import pytest

from .service_helpers import Server, multipart

TINY = {"model": "tiny", "prompt": "a red fox", "seed": 3, "steps": 2}
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def queue_only(hub_models, tmp_path_factory):
    """A service that keeps every job queued (no worker): what is recorded stays to be counted."""
    with Server(tmp_path_factory.mktemp("queue") / "state", "--model", "tiny", "--workers", "0", "--max-queued",
                "1000") as server:
        yield server


@pytest.fixture(scope="module")
def guarded(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("guarded") / "state", "--model", "tiny", "--workers", "0",
                "--token", TOKEN, token=TOKEN) as server:
        yield server


def recorded(server) -> list[dict]:
    jobs, after = [], ""
    while True:
        page = server.call("GET", f"/v1/videos?limit=100{after}")[1]
        jobs += page["data"]
        if not page["has_more"]:
            return jobs
        after = f"&after={page['last_id']}"


# ------------------------------------------------------------------ where it listens, who may call

def test_another_address_without_a_token_is_refused_at_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=120)
    message = done.stderr.strip()
    assert done.returncode == 2 and message.startswith("error: --host 0.0.0.0") and "--token" in message, message
    assert "\n" not in message and not (tmp_path / "state").exists()


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", "/v1/models"), ("GET", "/v1/options"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/v1/videos/video_000000000000000000000000"),
    ("GET", "/v1/videos/video_000000000000000000000000/content"),
    ("GET", "/v1/videos/video_000000000000000000000000/events"),
    ("POST", "/v1/videos/video_000000000000000000000000/cancel"),
    ("POST", "/v1/videos/video_000000000000000000000000/resume"),
    ("POST", "/v1/videos/video_000000000000000000000000/remix"), ("POST", "/v1/videos/extensions"),
    ("DELETE", "/v1/videos/video_000000000000000000000000"),
])
def test_with_a_token_every_request_needs_it(guarded, method, path):  # but /health's liveness (test_service_refusals)
    body = TINY if method == "POST" else None
    for token in ("", "wrong-token-of-length"):
        status, answer, headers = guarded.call(method, path, body, token=token)
        assert status == 401 and answer["error"]["param"] == "Authorization" and headers["www-authenticate"] == "Bearer"
    status, _, _ = guarded.call(method, path, body)
    assert status in (200, 400, 404), "with the token it goes through (to the endpoint's own answer)"


def test_the_page_loads_without_the_token_and_a_cookie_only_reads(guarded):
    assert guarded.call("GET", "/", token="")[0] == 200, "the page's own code holds no data"
    cookie = {"Cookie": f"skyreels_token={TOKEN}"}
    before = recorded(guarded)
    assert guarded.call("GET", "/v1/videos", headers=cookie, token="")[0] == 200
    status, body, _ = guarded.call("POST", "/v1/videos", TINY, headers=cookie, token="")
    assert status == 401, "changes need the header, which another site's page cannot send"
    assert recorded(guarded) == before


def test_without_a_token_only_this_machine_is_answered(queue_only):
    status, body, _ = queue_only.call("GET", "/health", headers={"Host": "evil.example:7860"})
    assert status == 400 and body["error"]["param"] == "Host", "DNS rebinding cannot reach it"
    assert queue_only.call("GET", "/health", headers={"Host": "localhost:7860"})[0] == 200


@pytest.mark.slow  # a service of its own
def test_no_cors_unless_asked(queue_only, tmp_path):
    origin = {"Origin": "https://example.com"}
    _, _, headers = queue_only.call("GET", "/v1/videos", headers=origin)
    assert "access-control-allow-origin" not in headers
    status, _, headers = queue_only.call("OPTIONS", "/v1/videos", headers={
        **origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in headers
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--cors", "https://example.com") as server:
        _, _, headers = server.call("GET", "/v1/videos", headers=origin)
        assert headers["access-control-allow-origin"] == "https://example.com"


# ------------------------------------------------------------------ nothing reaches the server's disk

PATHS = ["/etc/passwd", "../x", "../../state/queue.db"]
FIELDS = ["image", "end_image", "video", "output", "output_dir", "model", "loras", "enhance", "script",
          "input_reference", "end_reference", "input_video"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", FIELDS)
def test_a_path_in_any_field_is_refused(queue_only, name, path):
    before = len(recorded(queue_only))
    status, body, _ = queue_only.call("POST", "/v1/videos", {**TINY, "command": "extend", "frames": 17, name: path})
    assert status == 400 and body["error"]["param"] == name, body
    assert len(recorded(queue_only)) == before


def test_a_shot_list_cannot_name_a_file_either(queue_only):
    script = 'seed = 1\n[[shot]]\nprompt = "a fox"\nframes = 17\nimage = "../x.png"\n'
    status, body, _ = queue_only.call("POST", "/v1/videos", {"command": "extend", "model": "tiny", "script": script})
    assert status == 400 and body["error"]["param"] == "script" and "uploads" in body["error"]["message"], body
    fine = 'seed = 1\n[[shot]]\nprompt = "a fox"\nframes = 17\n[[shot]]\nprompt = "a cat"\nframes = 20\n'
    job = queue_only.submit({"command": "extend", "model": "tiny", "script": fine, "base_frames": 17, "overlap": 5})
    assert job["frames"] == 37 and job["seed"] == 1


def test_urls_cannot_climb_out_either(queue_only):
    for path in ("/v1/videos/..%2F..%2Fqueue.db/content", "/v1/videos/../../queue.db", "/page/../queue.db",
                 "/page/%2e%2e/queue.db", "/v1/videos/video_../content"):
        status, body, _ = queue_only.call("GET", path)
        assert status == 404, (path, status)
        assert b"SQLite" not in (body if isinstance(body, bytes) else json.dumps(body).encode())


def test_an_uploads_name_goes_no_further_than_its_extension(queue_only):
    from .test_service import png

    job = queue_only.submit({**TINY, "command": "i2v"}, files={"input_reference": ("../../../evil.png", png())})
    saved = list((queue_only.state_dir / "uploads" / job["id"]).iterdir())
    assert [p.name for p in saved] == ["input_reference.png"]
    assert not (queue_only.state_dir.parent / "evil.png").exists()


def test_ids_are_random(queue_only):
    ids = [queue_only.submit({**TINY, "seed": i})["id"] for i in range(20)]
    assert len(set(ids)) == 20 and all(re.fullmatch(r"video_[0-9a-f]{24}", i) for i in ids)
    digits = [int(i[6:], 16) for i in ids]
    assert len({d >> 90 for d in digits}) > 10, "no counter in them"


@pytest.mark.slow  # a service of its own
def test_outputs_stay_inside_the_state_folder(hub_models, tmp_path):
    home = tmp_path / "cwd"  # the service runs in a folder of its own: nothing may appear there
    home.mkdir()
    with Server(tmp_path / "state", "--model", "tiny", cwd=home) as server:
        job = server.wait(server.submit(TINY)["id"], "completed")
        assert (tmp_path / "state" / "videos" / job["id"] / "video.mp4").is_file()
    assert list(home.iterdir()) == []


# ------------------------------------------------------------------ limits

@pytest.mark.slow  # a service of its own
def test_a_body_larger_than_the_limit_is_413(hub_models, tmp_path):
    from .test_service import png

    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--max-upload-mb", "0.01") as server:
        big = png(400, 300) + b"\0" * 20_000
        raw, kind = multipart({**TINY, "command": "i2v"}, {"input_reference": ("big.png", big)})
        status, body, _ = server.call("POST", "/v1/videos", raw=raw, headers={"Content-Type": kind})
        assert status == 413 and "--max-upload-mb" in body["error"]["message"], body
        chunked = server.call("POST", "/v1/videos", raw=iter([raw[:5000], raw[5000:]]),
                              headers={"Content-Type": kind, "Transfer-Encoding": "chunked"})
        assert chunked[0] == 413, "a body without a length is cut off as it outgrows the limit"
        assert recorded(server) == [] and not any((server.state_dir / "uploads").glob("*/*"))


@pytest.mark.slow  # a service of its own
def test_a_full_queue_answers_429_and_records_nothing(hub_models, tmp_path):
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--max-queued", "2") as server:
        for seed in (1, 2):
            server.submit({**TINY, "seed": seed})
        status, body, _ = server.call("POST", "/v1/videos", {**TINY, "seed": 3})
        assert status == 429 and "queue is full" in body["error"]["message"]
        assert len(recorded(server)) == 2


@pytest.mark.slow  # a service of its own
def test_loras_only_by_the_names_the_service_was_started_with(hub_models, tmp_path):
    from safetensors.torch import save_file

    import skyreels_cli as sk
    from skyreels_cli.models import lora as L

    from .test_lora import lora_state

    model = sk.load("tiny", device="cpu", progress=False)
    path = tmp_path / "style.safetensors"
    save_file(lora_state(L.weight_shapes(model.components["transformer"])), path)
    with Server(tmp_path / "state", "--model", "tiny", "--lora", f"style={path}") as server:
        status, body, _ = server.call("POST", "/v1/videos", {**TINY, "loras": [str(path)]})
        assert status == 400 and "it offers: style" in body["error"]["message"]
        job = server.wait(server.submit({**TINY, "loras": ["style:0.5"]})["id"], "completed")
        [lora] = server.content(job["id"], "settings")["model"]["loras"]
        assert lora["scale"] == 0.5 and lora["path"] == "style", "the name, not where the file is on the server"


# ------------------------------------------------------------------ many at once

@pytest.mark.slow  # 400 requests
def test_a_burst_of_200_submissions_from_20_threads_each_recorded_once(queue_only):
    """Each submission is sent twice, by two threads at about the same time, with the same Idempotency-Key."""
    before = {j["id"] for j in recorded(queue_only)}
    keys = [f"burst-{i}" for i in range(200)]
    answers: dict[str, list[str]] = {key: [] for key in keys}
    errors = []
    start = threading.Barrier(20)

    def send(worker: int) -> None:
        start.wait()
        mine = [k for i, k in enumerate(keys) if i % 10 == worker % 10]  # each key is sent by two threads
        for key in mine if worker < 10 else reversed(mine):
            status, body, _ = queue_only.call("POST", "/v1/videos", {**TINY, "prompt": key, "seed": 1},
                                              headers={"Idempotency-Key": key})
            if status != 200:
                errors.append((status, body))
            else:
                answers[key].append(body["id"])

    threads = [threading.Thread(target=send, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert all(len(ids) == 2 and ids[0] == ids[1] for ids in answers.values()), "a retried key gives the same job"
    new = [j for j in recorded(queue_only) if j["id"] not in before]
    assert len(new) == 200 and {j["id"] for j in new} == {ids[0] for ids in answers.values()}
    assert sorted(j["prompt"] for j in new) == sorted(keys), "each submission is there once"
