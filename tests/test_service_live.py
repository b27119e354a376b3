"""A live job through the service, over real sockets on 127.0.0.1: its HLS playlist grows window by window and
its segments decode; a prompt change lands at the window it was promised for, and the video equals a plain run of
its recorded shot list (`extend --from` its settings); a stop completes it with its whole video and an ENDLIST;
keep_last bounds the segments on disk; bad input is a 4xx naming the field and changes nothing. Each step waits on
the job's own progress, never on a sleep; `frames` bounds every job (a live job stops at it at the latest)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skyreels_cli.service.fields import Offer, submission

from .conftest import read_video
from .service_helpers import TINY_EXTEND, Server

TOKEN = "s3cret-token"
LIVE = {**TINY_EXTEND, "live": True, "frames": 2000}  # 17 frames, then 12 a window; stopped long before its most


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("live") / "state", "--model", "tiny", "--token", TOKEN, token=TOKEN) as server:
        yield server


def segments_of(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def playlist_of(server, job_id: str) -> str:
    status, body, headers = server.call("GET", f"/v1/videos/{job_id}/live.m3u8")
    assert status == 200 and headers["content-type"].startswith("application/vnd.apple.mpegurl"), (status, body)
    return body.decode()


def steering_rows(server, job_id: str) -> int:
    import sqlite3

    path = server.state_dir / "videos" / job_id / "steering.db"
    if not path.is_file():
        return 0
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]


@pytest.mark.slow
def test_the_playlist_grows_a_prompt_lands_where_promised_and_stop_completes_it(server, tmp_path):
    job = server.submit(LIVE)
    assert job["live"]["playlist"] == f"/v1/videos/{job['id']}/live.m3u8" and job["live"]["timeline"] == []
    server.wait(job["id"], until=lambda j: j["windows_done"] >= 1)
    first = playlist_of(server, job["id"])
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in first and "#EXT-X-ENDLIST" not in first
    assert segments_of(first)[0] == "live/w000000.ts", first
    # Players fetch by URL alone: the playlist taken with ?token= names its segments with it.
    status, body, _ = server.call("GET", f"/v1/videos/{job['id']}/live.m3u8?token={TOKEN}", token="")
    assert status == 200 and segments_of(body.decode())[0] == f"live/w000000.ts?token={TOKEN}"
    status, data, _ = server.call("GET", f"/v1/videos/{job['id']}/live/w000000.ts?token={TOKEN}", token="")
    assert status == 200
    (tmp_path / "w0.ts").write_bytes(data)
    assert read_video(tmp_path / "w0.ts")[0].shape == (17, 48, 48, 3), "the first window's segment decodes"
    for path in ("live.m3u8", "live/w000000.ts", "live.m3u8?token=wrong-token"):
        assert server.call("GET", f"/v1/videos/{job['id']}/{path}", token="")[0] == 401
    assert server.call("POST", f"/v1/videos/{job['id']}/prompt?token={TOKEN}", {"prompt": "x"}, token="")[0] == 401

    status, change, _ = server.call("POST", f"/v1/videos/{job['id']}/prompt", {"prompt": "a blue bird"})
    assert status == 200 and change["object"] == "video.prompt", change
    promised = change["window"]
    assert promised >= 2, "window 1 had started: the change waits for the next one"
    server.wait(job["id"], until=lambda j: j["windows_done"] > promised + 1)
    grown = segments_of(playlist_of(server, job["id"]))
    assert grown[:promised + 2] == [f"live/w{n:06d}.ts" for n in range(promised + 2)], "one segment per window"
    assert server.call("POST", f"/v1/videos/{job['id']}/cancel")[0] == 200
    done = server.wait(job["id"], "completed")
    assert done["live"]["timeline"] == [{"window": 0, "prompt": "a red fox", "negative_prompt": None},
                                        {"window": promised, "prompt": "a blue bird", "negative_prompt": None}]
    final = playlist_of(server, job["id"])
    assert final.rstrip().endswith("#EXT-X-ENDLIST")
    windows = len(segments_of(final))
    assert done["windows"] == done["windows_done"] == windows and done["frames"] == 17 + 12 * (windows - 1)
    (tmp_path / "live.mp4").write_bytes(server.content(job["id"]))
    made, _ = read_video(tmp_path / "live.mp4")
    assert len(made) == done["frames"], "stopped: the whole video of every window made"

    # The settings are the shot list that makes the same frames: `extend --from` them.
    settings = server.content(job["id"], "settings")
    assert settings["live"]["hls"] == f"/v1/videos/{job['id']}/live.m3u8"
    cut = 17 + 12 * (promised - 1)
    assert [s["frames"] for s in settings["request"]["shots"]] == [cut, done["frames"] - cut]
    (tmp_path / "live.json").write_text(json.dumps(settings))
    subprocess.run([sys.executable, "-m", "skyreels_cli", "extend", "--from", str(tmp_path / "live.json"), "-o",
                    str(tmp_path / "again.mp4"), "--quiet"], check=True, capture_output=True, cwd=tmp_path)
    again, _ = read_video(tmp_path / "again.mp4")
    assert np.array_equal(again, made), "the recorded timeline remakes the same frames"
    # ... and the comparison can fail: without the change, the frames after the cut are others.
    plain = server.wait(server.submit({**TINY_EXTEND, "frames": done["frames"]})["id"], "completed")
    (tmp_path / "plain.mp4").write_bytes(server.content(plain["id"]))
    unsteered, _ = read_video(tmp_path / "plain.mp4")
    assert np.array_equal(unsteered[:cut], made[:cut]) and not np.allclose(unsteered[cut:], made[cut:], atol=8)

    # A finished live job takes no more prompts, and nothing is recorded.
    status, body, _ = server.call("POST", f"/v1/videos/{job['id']}/prompt", {"prompt": "too late"})
    assert status == 409 and body["error"]["param"] == "id", body
    assert steering_rows(server, job["id"]) == 1


@pytest.mark.slow
def test_keep_last_bounds_the_segments_on_disk_and_the_video_keeps_everything(server, tmp_path):
    job = server.submit({**LIVE, "keep_last": 0.5})  # a window is 12 frames, 0.5 s: only the newest is kept
    assert job["live"]["keep_last"] == 0.5
    server.wait(job["id"], until=lambda j: j["windows_done"] >= 4)
    folder = server.state_dir / "videos" / job["id"] / "video.hls"
    on_disk = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"w\d{6}\.ts", p.name))
    assert 1 <= len(on_disk) <= 2 and "w000000.ts" not in on_disk, on_disk
    text = playlist_of(server, job["id"])
    assert int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1)) >= 2, text
    status, body, _ = server.call("GET", f"/v1/videos/{job['id']}/live/w000000.ts")
    assert status == 404 and body["error"]["param"] == "name"
    server.call("POST", f"/v1/videos/{job['id']}/cancel")
    done = server.wait(job["id"], "completed")
    (tmp_path / "kept.mp4").write_bytes(server.content(job["id"]))
    assert len(read_video(tmp_path / "kept.mp4")[0]) == done["frames"] == 17 + 12 * (done["windows"] - 1)


@pytest.mark.slow
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(server):
    before = server.call("GET", "/health")[1]["queue"]
    for fields, param in (({"model": "tiny", "prompt": "a cat", "live": True}, "live"),
                          ({**LIVE, "gpus": 2}, "gpus"),
                          ({**TINY_EXTEND, "keep_last": 5}, "keep_last"),
                          ({**LIVE, "keep_last": -1}, "keep_last")):
        status, body, _ = server.call("POST", "/v1/videos", fields)
        assert status == 400 and body["error"]["param"] == param, (fields, body)
    assert server.call("GET", "/health")[1]["queue"] == before, "nothing queued"

    plain = server.submit({**TINY_EXTEND, "frames": 17})
    status, body, _ = server.call("POST", f"/v1/videos/{plain['id']}/prompt", {"prompt": "a dog"})
    assert status == 400 and body["error"]["param"] == "live", body
    live = server.submit({**LIVE, "frames": 17})  # one window at most
    for change, param in (({"prompt": "  "}, "prompt"), ({}, "prompt"), ({"prompt": 3}, "prompt"),
                          ({"prompt": "a dog", "negative_prompt": 5}, "negative_prompt"),
                          ({"prompt": "a dog", "seed": 1}, "seed")):
        status, body, _ = server.call("POST", f"/v1/videos/{live['id']}/prompt", change)
        assert status == 400 and body["error"]["param"] == param, (change, body)
    status, body, _ = server.call("POST", "/v1/videos/video_000000000000000000000000/prompt", {"prompt": "a dog"})
    assert status == 404 and body["error"]["param"] == "id"
    assert steering_rows(server, live["id"]) == 0, "no refused change was recorded"
    done = server.wait(live["id"], "completed")
    assert done["live"]["timeline"] == [{"window": 0, "prompt": "a red fox", "negative_prompt": None}]
    server.wait(plain["id"], "completed")
    status, body, _ = server.call("GET", f"/v1/videos/{plain['id']}/live.m3u8")
    assert status == 404 and body["error"]["param"] == "id"


def test_the_service_default_keep_last_applies_to_live_jobs_only_where_they_do_not_say():
    offer = Offer(models=("tiny",), keep_last=30.0)
    assert submission({**LIVE}, {}, offer).job.keep_last == 30.0
    assert submission({**LIVE, "keep_last": 5}, {}, offer).job.keep_last == 5
    assert submission({**TINY_EXTEND}, {}, offer).job.keep_last is None, "not live: no segments to keep"


def realtime(server, token: str | None = TOKEN):
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(server.url.replace("http://", "ws://") + "/v1/realtime/video", additional_headers=headers,
                   open_timeout=30, max_size=None)


@pytest.mark.slow
def test_the_websocket_session_streams_fmp4_takes_a_prompt_and_stops_as_vllm_omni_clients_expect(server, tmp_path):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        realtime(server, token=None).recv(timeout=30)
    with realtime(server) as ws:  # bad input: an error naming the field, nothing queued
        before = server.call("GET", "/health")[1]["queue"]
        ws.send(json.dumps({"type": "session.start", "model": "tiny", "prompt": " "}))
        error = json.loads(ws.recv(timeout=60))
        assert error["type"] == "error" and error["param"] == "prompt", error
        assert server.call("GET", "/health")[1]["queue"] == before

    start = {"type": "session.start", "model": "tiny", "prompt": "a red fox", "format": "m4s", "width": 48,
             "height": 48, "num_frames": 2000, "seed": 5, "steps": 2, "base_frames": 17, "overlap": 5}
    stream, metadata, others = bytearray(), [], []
    with realtime(server) as ws:
        ws.send(json.dumps(start))
        begun = json.loads(ws.recv(timeout=60))
        assert begun["type"] == "video.start" and begun["format"] == "m4s", begun
        video_id, promised = begun["request_id"], None
        while True:
            message = ws.recv(timeout=120)
            if isinstance(message, bytes):
                assert metadata and metadata[-1]["byte_length"] == len(message), "each chunk right after its metadata"
                stream += message
                if len(metadata) == 1:
                    assert message[4:8] == b"ftyp", "the first chunk starts the MP4"
                    ws.send(json.dumps({"type": "session.ping"}))
                    ws.send(json.dumps({"type": "session.interaction",
                                        "interaction": {"event_id": "e1", "event": {"prompt": "a blue bird"}}}))
                elif promised is not None and metadata[-1]["generation_chunk_index"] == promised:
                    ws.send(json.dumps({"type": "session.stop"}))
                continue
            message = json.loads(message)
            if message["type"] == "video.chunk_metadata":
                assert message["transport_chunk_index"] == len(metadata) == message["generation_chunk_index"]
                metadata.append(message)
            elif message["type"] == "session.interaction.queued":
                promised = message["window"]
                others.append(message)
            elif message["type"] == "session.done":
                done_message = message
                break
            else:
                others.append(message)
    assert {"type": "session.pong"} in others and others[-1]["event_id"] == "e1", others
    assert done_message == {"type": "session.done", "request_id": video_id, "chunks": len(metadata), "stopped": True,
                            "status": "completed"}
    job = server.job(video_id)
    assert job["live"]["timeline"][-1] == {"window": promised, "prompt": "a blue bird", "negative_prompt": None}
    (tmp_path / "stream.mp4").write_bytes(bytes(stream))
    frames, fps = read_video(tmp_path / "stream.mp4")
    assert len(frames) == job["frames"] == sum(m["num_frames"] for m in metadata) and fps == 24, \
        "the chunks appended play as the whole video"
    (tmp_path / "video.mp4").write_bytes(server.content(video_id))
    assert np.abs(frames.astype(int) - read_video(tmp_path / "video.mp4")[0]).mean() < 12, "the same pictures"


@pytest.mark.slow
def test_a_live_job_survives_the_service_killed_mid_stream_with_its_timeline_and_playlist(hub_models, tmp_path):
    state = tmp_path / "state"
    # Before any worker runs it (none: --workers 0), the job is steered from its first window; then the service
    # is killed as SIGKILL would, right after the job's second window is in the queue: the worker is mid-window.
    with Server(state, "--model", "tiny", "--workers", "0") as idle:
        job = idle.submit(LIVE)
        assert idle.call("POST", f"/v1/videos/{job['id']}/prompt", {"prompt": "a grey wolf"})[1]["window"] == 0
    first = Server(state, "--model", "tiny", env={"SKYREELS_FAULT": "service_window_recorded:2"}).start()
    assert first.proc.wait(timeout=300) == 137, first.log()

    with Server(state, "--model", "tiny") as again:
        resumed = again.wait(job["id"], until=lambda j: j["windows_done"] >= 3)
        assert resumed["attempts"] == 2 and resumed["live"]["timeline"][0]["prompt"] == "a grey wolf"
        promised = again.call("POST", f"/v1/videos/{job['id']}/prompt", {"prompt": "a blue bird"})[1]["window"]
        again.wait(job["id"], until=lambda j: j["windows_done"] > promised)
        again.call("POST", f"/v1/videos/{job['id']}/cancel")
        done = again.wait(job["id"], "completed")
        assert [d["done"] for k, d in again.events(job["id"]) if k == "run_started"][1] >= 1, "it went on"
        assert done["live"]["timeline"] == [{"window": 0, "prompt": "a grey wolf", "negative_prompt": None},
                                            {"window": promised, "prompt": "a blue bird", "negative_prompt": None}]
        playlist = playlist_of(again, job["id"])
        assert segments_of(playlist) == [f"live/w{n:06d}.ts" for n in range(done["windows"])], \
            "no segment lost or repeated"
        assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
        # The same frames as its shot list made in one go.
        shots = again.content(job["id"], "settings")["request"]["shots"]
        plain = again.submit({**TINY_EXTEND, "frames": done["frames"],
                              "shots": [{"prompt": s["prompt"], "frames": s["frames"]} for s in shots]})
        again.wait(plain["id"], "completed")
        (tmp_path / "live.mp4").write_bytes(again.content(job["id"]))
        (tmp_path / "plain.mp4").write_bytes(again.content(plain["id"]))
        live, plain_frames = read_video(tmp_path / "live.mp4")[0], read_video(tmp_path / "plain.mp4")[0]
        assert len(live) == done["frames"] and np.array_equal(live, plain_frames), "as an uninterrupted run"


@pytest.mark.slow
def test_extend_live_with_a_server_posts_the_lines_of_stdin_and_ctrl_c_completes_it(server, tmp_path):
    import os
    import signal

    flags = ["--model", "tiny", "--height", "48", "--width", "48", "--steps", "2", "--frames", "2000",
             "--base-frames", "17", "--overlap", "5", "--seed", "5"]
    proc = subprocess.Popen([sys.executable, "-m", "skyreels_cli", "extend", "a red fox", "--live", *flags,
                             "--server", server.url, "-o", str(tmp_path / "fox.mp4")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SKYREELS_TOKEN": TOKEN})
    lines = []
    for line in proc.stderr:  # its own progress says when it is submitted and where to watch
        lines.append(line)
        if line.startswith("submitted to"):
            video_id = line.split(": ")[1].split(",")[0].strip()
            break
    server.wait(video_id, until=lambda j: j["windows_done"] >= 1)
    proc.stdin.write("a blue bird\n")
    proc.stdin.flush()
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("prompt from window"):
            promised = int(line.split()[3].rstrip(":")) - 1
            break
    server.wait(video_id, until=lambda j: j["windows_done"] > promised)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, "".join(lines) + err
    done = server.job(video_id)
    assert done["status"] == "completed" and out.strip() == str(tmp_path / "fox.mp4")
    assert done["live"]["timeline"][-1] == {"window": promised, "prompt": "a blue bird", "negative_prompt": None}
    assert len(read_video(tmp_path / "fox.mp4")[0]) == done["frames"]
    assert json.loads((tmp_path / "fox.mp4.json").read_text())["live"]["timeline"] == done["live"]["timeline"]


@pytest.mark.slow
def test_the_page_plays_the_live_stream_and_its_prompt_box_and_stop_button_work(server):
    from .test_service_page import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SKYREELS_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    job = server.submit(LIVE)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{server.url}/#token={TOKEN}")
        page.select_option("#command", "extend")
        page.wait_for_selector("#advanced-fields label[data-field='live']", state="attached")
        item = page.locator(f"#jobs li[data-id='{job['id']}']")
        video = item.locator("video.live-video")
        video.wait_for(state="attached", timeout=60_000)
        video.evaluate("v => new Promise(ok => { const t = () => v.currentTime > 0 ? ok() : setTimeout(t, 50); t(); })")
        at = video.evaluate("v => v.currentTime")
        video.evaluate("(v, at) => new Promise(ok => { const t = () => v.currentTime > at ? ok() : setTimeout(t, 50); "
                       "t(); })", at)
        assert video.evaluate("v => v.videoWidth") == 48, "the stream plays, and goes on"

        item.locator(".live-prompt").fill("a blue bird")
        item.locator(".steer button").click()
        note = item.locator(".live-note")
        note.filter(has_text="from window").wait_for(timeout=30_000)
        promised = int(note.inner_text().split()[2].rstrip(":")) - 1
        server.wait(job["id"], until=lambda j: j["windows_done"] > promised)
        item.locator("button.stop").click()
        done = server.wait(job["id"], "completed")
        assert done["live"]["timeline"][-1] == {"window": promised, "prompt": "a blue bird", "negative_prompt": None}
        page.locator("#videos .card").first.wait_for(timeout=30_000)
        assert errors == [], errors
        browser.close()


def test_a_live_job_is_bounded_by_max_live_seconds_not_by_the_other_jobs_lengths(hub_models, tmp_path):
    from skyreels_cli.service.admission import admit
    from skyreels_cli.service.fields import HttpError

    def admitted(fields, **limits):
        offer = Offer(models=("tiny",), **limits)
        return admit(submission(fields, {}, offer).job, "video_" + "0" * 24, tmp_path, offer, {"here": 1})

    endless = {k: v for k, v in LIVE.items() if k != "frames"}
    assert 4980 < admitted({**LIVE, "frames": 5000}, max_frames=2880).frames <= 5000, "its most: not bounded as others"
    with pytest.raises(HttpError) as refused:
        admitted({**TINY_EXTEND, "frames": 5000}, max_frames=2880)
    assert refused.value.param == "frames", "a plain job still is bounded"
    assert admitted(endless, max_live_seconds=10.0).frames <= 240, "none given: the bound is its most"
    with pytest.raises(HttpError) as refused:
        admitted({**LIVE, "frames": 5000}, max_live_seconds=10.0)
    assert refused.value.status == 413 and refused.value.param == "frames"
