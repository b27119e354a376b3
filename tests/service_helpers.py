"""A real `skyreels serve` for the tests: a subprocess on a free port of 127.0.0.1, spoken to through sockets.

    with Server(tmp_path / "state", "--model", "tiny") as server:
        status, body = server.call("POST", "/v1/videos", {"prompt": "a cat", "model": "tiny"})
        job = server.wait(body["id"], "completed")

The environment is the test session's (conftest.py: the private offline Hub cache, where the tiny models are
built), plus what a test adds (`env=`: a fault point, say).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

START_S = 120
TINY_EXTEND = {"command": "extend", "model": "tiny", "prompt": "a red fox", "height": 48, "width": 48, "steps": 2,
               "frames": 57, "base_frames": 17, "overlap": 5, "seed": 5}  # five windows of a few steps


class Server:
    def __init__(self, state_dir: Path, *args: str, env: dict | None = None, token: str | None = None,
                 cwd: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.cwd = cwd
        self.args = [str(a) for a in args]
        self.env = {**os.environ, **(env or {})}
        self.token = token
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.url = ""

    # ------------------------------------------------------------ life

    def start(self, wait_ready: bool = True) -> Server:
        command = [sys.executable, "-m", "skyreels_cli", "serve", "--port", "0", "--state-dir", str(self.state_dir),
                   *self.args]
        self.lines = []
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=self.env, cwd=self.cwd)
        listening = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if "listening on http://" in line:
                    self.url = line.split("listening on ")[1].split()[0].rstrip("/")
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + START_S
        while not listening.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start: {self.log()}")
        if wait_ready:
            self.wait_workers()
        return self

    def wait_workers(self, count: int | None = None) -> list[dict]:
        """Until every worker (or `count` of them) has started and waits for work."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            workers = self.call("GET", "/health")[1]["workers"]
            if all(w["ready"] and w["alive"] for w in workers) and (count is None or len(workers) == count):
                return workers
            time.sleep(0.1)
        raise AssertionError(f"the workers did not start: {self.log()}")

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc is not None else 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    # ------------------------------------------------------------ requests

    def call(self, method: str, path: str, body=None, *, headers: dict | None = None, raw: bytes | None = None,
             token: str | None = None) -> tuple[int, dict | bytes, dict]:
        """One request; (status, the JSON body or the bytes, the response headers). `token`: None sends the
        server's, "" none. `raw` may be an iterator of chunks: sent chunked, without a length."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        headers = dict(headers or {})
        token = token if token is not None else self.token
        if token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        chunked = data is not None and not isinstance(data, bytes)
        conn.request(method, path, body=data, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        payload = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        conn.close()
        if reply_headers.get("content-type", "").startswith("application/json") and payload:  # HEAD: no body
            return response.status, json.loads(payload), reply_headers
        return response.status, payload, reply_headers

    def submit(self, fields: dict, files: dict | None = None, headers: dict | None = None) -> dict:
        """POST /v1/videos (multipart when there are `files`: field -> (name, bytes)); the job object."""
        if files:
            raw, kind = multipart(fields, files)
            status, body, _ = self.call("POST", "/v1/videos", raw=raw, headers={"Content-Type": kind, **(headers or {})})
        else:
            status, body, _ = self.call("POST", "/v1/videos", fields, headers=headers)
        assert status == 200, (status, body)
        return body

    def job(self, job_id: str) -> dict:
        status, body, _ = self.call("GET", f"/v1/videos/{job_id}")
        assert status == 200, (status, body)
        return body

    def wait(self, job_id: str, *statuses: str, timeout: float = 300, until=None) -> dict:
        """Poll the job until its status is one of `statuses` (or `until(job)` holds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses or (until is not None and until(job)):
                return job
            if job["status"] in ("completed", "failed", "cancelled") and until is None:
                raise AssertionError(f"job {job_id} ended {job['status']}: {job['error']}")
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {statuses}: {self.job(job_id)}\n{self.log()}")

    def content(self, job_id: str, variant: str = "video") -> bytes:
        status, body, _ = self.call("GET", f"/v1/videos/{job_id}/content?variant={variant}")
        assert status == 200, (status, body)
        return body

    def events(self, job_id: str) -> list[tuple[str, dict]]:
        """The job's server-sent events, read to their end (the job must be finished)."""
        status, body, headers = self.call("GET", f"/v1/videos/{job_id}/events")
        assert status == 200 and headers["content-type"].startswith("text/event-stream"), (status, body)
        out = []
        for block in body.decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
            if "event" in fields:
                out.append((fields["event"], json.loads(fields["data"])))
        return out


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def need_ray():
    """Ray (the [ray] extra), or a skip where it is not installed; where CI installed it (SKYREELS_REQUIRE_RAY=1,
    set by .ci/run) its absence fails instead, so the cluster tests cannot be skipped into a green run."""
    try:
        import ray
    except ImportError:
        if os.environ.get("SKYREELS_REQUIRE_RAY"):
            pytest.fail("Ray is not installed: CI installs the [ray] extra (pip install -e '.[test,ray]')")
        pytest.skip("the [ray] extra is not installed (pip install '.[ray]')", allow_module_level=True)
    return ray
