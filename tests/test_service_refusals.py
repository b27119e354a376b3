"""Requests that once made the service answer 500, queue nonsense or say the wrong thing, each tried through real
sockets against a service that keeps its jobs queued: every refusal a 4xx with `{"error": {"message", "type",
"param"}}`, `param` naming the field at fault, one short line, nothing queued."""

import json
import re

import pytest

import skyreels_cli as sk
from skyreels_cli.core.resolve import resolve, window_plan

from .service_helpers import Server

TINY = {"model": "tiny", "prompt": "a red fox", "seed": 3, "steps": 2}
EXTEND = {**TINY, "command": "extend", "height": 48, "width": 48}
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def queue_only(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("refusals") / "state", "--model", "tiny", "--workers", "0") as server:
        yield server


def refused(server, body=None, *, raw=None, path="/v1/videos", method="POST", headers=None):
    before = server.call("GET", "/health")[1]["queue"]
    status, answer, _ = server.call(method, path, body, raw=raw, headers=headers)
    assert 400 <= status < 500, (status, answer)
    error = answer["error"]
    assert set(error) >= {"message", "type", "param"} and "\n" not in error["message"], answer
    assert not re.search(r"\S{200}", error["message"]), "a value is never echoed whole"
    assert server.call("GET", "/health")[1]["queue"] == before, "nothing queued"
    return status, error


FIELDS = [  # (fields, the param at fault, words of the message)
    ({"prompt": None}, "prompt", "the prompt is empty"),
    ({"aspect": "7:3"}, "aspect", "not one of"),
    ({"resolution": "999p"}, "resolution", "not one of"),
    ({**EXTEND, "color_match": "sepia"}, "color_match", "must be one of"),
    ({**EXTEND, "shots": [{"prompt": "a", "seconds": -1}]}, "shots", "seconds must be a positive number"),
    ({**EXTEND, "shots": []}, "shots", "the shot list is empty"),
    ({**EXTEND, "shots": [["a", 17, None, None, None, "extra"]]}, "shots", "has 6 items"),
    ({"fps": 1e-9}, "fps", "fps"),
    ({"seed": int("9" * 300)}, "seed", "seed"),
    ({"attention": "flash"}, "attention", "attention"),
]


@pytest.mark.parametrize("fields, param, words", FIELDS, ids=[json.dumps(f[0])[:40] for f in FIELDS])
def test_a_field_at_fault_is_named(queue_only, fields, param, words):
    status, error = refused(queue_only, {**TINY, **fields})
    assert status == 400 and error["param"] == param and words in error["message"], error


def test_the_prompt_limit_holds_inside_shots(queue_only):
    for shot in ({"prompt": "x" * 20_000, "frames": 17}, {"prompt": "a", "frames": 17, "negative_prompt": "n" * 900_000}):
        status, error = refused(queue_only, {**EXTEND, "shots": [shot]})
        assert status == 413 and error["param"] == "shots" and "at most 10000" in error["message"], error


def test_json_nested_too_deep_is_a_bad_body(queue_only):
    status, error = refused(queue_only, raw=b"[" * 100_000 + b"]" * 100_000,
                            headers={"Content-Type": "application/json"})
    assert status == 400 and "nested" in error["message"], error


def test_a_bad_last_event_id_is_refused_by_its_header(queue_only):
    job = queue_only.submit(TINY)
    for value in ("abc", "9" * 400, "-1"):
        status, error = refused(queue_only, path=f"/v1/videos/{job['id']}/events", method="GET",
                                headers={"Last-Event-ID": value})
        assert status == 400 and error["param"] == "Last-Event-ID", error
    status, error = refused(queue_only, path=f"/v1/videos/{job['id']}/events?after={'9' * 400}", method="GET")
    assert error["param"] == "after", error
    queue_only.call("DELETE", f"/v1/videos/{job['id']}")


def test_a_long_id_is_cut_in_the_message(queue_only):
    status, error = refused(queue_only, path="/v1/videos/video_" + "a" * 100_000, method="GET")
    assert status == 404 and error["param"] == "id", error


def test_gpus_beyond_a_service_without_workers_asks_for_one(queue_only):
    status, error = refused(queue_only, {**TINY, "gpus": 2})
    assert error["param"] == "gpus" and "0 or fewer" not in error["message"] and '"gpus": 1' in error["message"]


def test_attention_flash_on_the_cpu_blames_the_device_not_the_model(queue_only):
    _, error = refused(queue_only, {**TINY, "attention": "flash"})
    assert "would take days" not in error["message"] and "not the cpu" in error["message"], error


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(queue_only):
    key = {"Idempotency-Key": "same-key-other-body"}
    first = queue_only.submit(TINY, headers=key)
    assert queue_only.submit(TINY, headers=key)["id"] == first["id"], "the same body again: the same job"
    status, error = refused(queue_only, {**TINY, "prompt": "a blue fox"}, headers=key)
    assert status == 409 and error["param"] == "Idempotency-Key", error
    queue_only.call("DELETE", f"/v1/videos/{first['id']}")


def test_frames_beyond_the_service_bound_are_refused_without_listing_windows(queue_only):
    status, error = refused(queue_only, {**EXTEND, "frames": 2_073_600})
    assert status == 413 and error["param"] == "frames" and "--max-frames" in error["message"], error
    assert refused(queue_only, {**EXTEND, "seconds": 100_000})[1]["param"] == "seconds"
    job = queue_only.submit({**EXTEND, "frames": 1440})  # the long videos people make are admitted
    request = resolve(sk.Request(prompt="a", height=48, width=48, frames=1440, seed=3, steps=2), _tiny_df())
    assert job["windows"] == len(window_plan(request).windows) > 1
    queue_only.call("DELETE", f"/v1/videos/{job['id']}")


def test_list_paging_with_an_unknown_cursor_is_refused_naming_after(queue_only):
    # Once the first page again (a client paging by last_id went round for ever); a huge limit names limit
    status, error = refused(queue_only, path="/v1/videos?after=video_" + "0" * 24, method="GET")
    assert status == 400 and error["param"] == "after", error
    assert refused(queue_only, path="/v1/videos?after=" + "x" * 100_000, method="GET")[1]["param"] == "after"
    assert refused(queue_only, path="/v1/videos?limit=" + "9" * 400, method="GET")[1]["param"] == "limit"
    jobs = [queue_only.submit(TINY)["id"] for _ in range(3)]
    status, page, _ = queue_only.call("GET", f"/v1/videos?limit=1&after={jobs[2]}")
    assert status == 200 and page["data"][0]["id"] == jobs[1], "a known cursor pages on"
    # order=asc (the OpenAI SDK's list(order=...)): oldest first, the cursor paging on towards the newest
    status, page, _ = queue_only.call("GET", f"/v1/videos?limit=1&order=asc&after={jobs[0]}")
    assert status == 200 and page["data"][0]["id"] == jobs[1] and page["has_more"], page
    oldest = queue_only.call("GET", "/v1/videos?limit=100&order=asc")[1]["data"]
    newest = queue_only.call("GET", "/v1/videos?limit=100")[1]["data"]
    assert [v["id"] for v in oldest] == [v["id"] for v in reversed(newest)] and oldest[-1]["id"] == jobs[2]
    status, error = refused(queue_only, path="/v1/videos?order=newest", method="GET")
    assert status == 400 and error["param"] == "order" and "asc or desc" in error["message"], error
    for job in jobs:
        queue_only.call("DELETE", f"/v1/videos/{job}")


def test_head_answers_as_get_without_a_body(queue_only):
    # Once 405 on every path: a load balancer's or a downloader's probe
    job = queue_only.submit(TINY)
    queue_only.call("POST", f"/v1/videos/{job['id']}/cancel")  # ended: its events end too
    for path in ("/health", "/v1/videos", f"/v1/videos/{job['id']}", "/v1/models", f"/v1/videos/{job['id']}/events",
                 f"/v1/videos/{job['id']}/content"):
        got, head = queue_only.call("GET", path), queue_only.call("HEAD", path)
        assert head[0] == got[0] and head[1] == b"", (path, head)
        assert head[2]["content-type"] == got[2]["content-type"], path
    assert queue_only.call("HEAD", "/v1/videos")[2]["content-length"] == queue_only.call("GET", "/v1/videos")[2]["content-length"]
    running = queue_only.submit(TINY)  # queued for ever here: a GET of its events would never end, a HEAD does
    assert queue_only.call("HEAD", f"/v1/videos/{running['id']}/events")[:2] == (200, b"")
    queue_only.call("DELETE", f"/v1/videos/{running['id']}")
    queue_only.call("DELETE", f"/v1/videos/{job['id']}")


def test_sizes_are_bounded_by_the_model(queue_only):
    status, error = refused(queue_only, {**TINY, "width": 4096, "height": 4096, "frames": 500})
    assert error["param"] in ("width", "height", "frames"), error


def _tiny_df():
    from skyreels_cli.models.naming import resolve_model

    return resolve_model("tiny", "extend")


# ------------------------------------------------------------------ /health

def test_health_answers_liveness_without_the_token_and_details_with_it(hub_models, tmp_path):
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--token", TOKEN, token=TOKEN) as server:
        status, body, _ = server.call("GET", "/health", token="")
        assert status == 200 and body == {"status": "ok"}, body
        status, body, _ = server.call("GET", "/health")
        assert status == 200 and "workers" in body and "queue" in body
