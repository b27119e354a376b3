"""A live job through the service, over real sockets on 127.0.0.1: its HLS playlist grows window by window and
its segments decode; a prompt change lands at the window it was promised for, the frames after it those of the
same shot list made plainly; a stop completes it with its whole video and an ENDLIST; bad input is a 4xx naming
the field and changes nothing. Steps are driven by the job's own progress (a fault point holds the worker at a
chosen window), never by sleeps; `frames` bounds every job."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .service_helpers import TINY_EXTEND, Server

pytestmark = pytest.mark.slow  # a service and a few live jobs of the tiny model

LIVE = {**TINY_EXTEND, "live": True, "frames": 69}  # at most five windows (17, then 12 new frames each)


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("live") / "state", "--model", "tiny", token="s3cret-token") as server:
        yield server


def decode_ts(data: bytes, tmp_path, name: str) -> np.ndarray:
    from .conftest import read_video

    path = tmp_path / name
    path.write_bytes(data)
    frames, _ = read_video(path)
    return frames


def test_a_live_job_streams_window_by_window_and_stop_completes_it(server, tmp_path):
    job = server.submit(LIVE)
    assert job["live"]["playlist"] == f"/v1/videos/{job['id']}/live.m3u8"
    running = server.wait(job["id"], until=lambda j: j["windows_done"] >= 2)
    status, text, headers = server.call("GET", f"/v1/videos/{job['id']}/live.m3u8")
    assert status == 200 and headers["content-type"].startswith("application/vnd.apple.mpegurl"), (status, text)
    text = text.decode()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text or running["status"] != "in_progress"
    segments = [line for line in text.splitlines() if line.startswith("live/")]
    assert segments[:2] == ["live/w000000.ts", "live/w000001.ts"], text
    status, data, _ = server.call("GET", f"/v1/videos/{job['id']}/{segments[0]}")
    assert status == 200
    assert decode_ts(data, tmp_path, "w0.ts").shape[1:] == (48, 48, 3)

    stopped = server.call("POST", f"/v1/videos/{job['id']}/cancel")[1]
    done = server.wait(job["id"], "completed")
    assert done["frames"] >= 17, stopped
    text = server.call("GET", f"/v1/videos/{job['id']}/live.m3u8")[1].decode()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    settings = server.content(job["id"], "settings")
    assert settings["live"]["windows"] == len([ln for ln in text.splitlines() if ln.startswith("live/")])
