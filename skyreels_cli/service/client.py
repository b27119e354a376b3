"""The other end of the API: submit a `Job` to a running service, follow its events, download the video.

    client = Client("http://127.0.0.1:7860")
    video = client.submit(job)                       # the input files uploaded; the job object
    for event in client.follow(video["id"]):          # the library's events (sk.StepDone, ...), rebuilt
        ...
    client.download(video["id"], Path("fox.mp4"))

Only the standard library: `skyreels t2v ... --server URL` and `skyreels jobs` need nothing more. A refusal from
the service is a `RemoteError` (a `SkyreelsError`) with the service's one-line message and field.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

from ..core.events import PromptEnhanced, RunFinished, RunStarted, StepDone, WindowDone
from ..core.request import PATH_FIELDS
from ..errors import HTTP_FIELDS, Cancelled, SkyreelsError, UsageError

DEFAULT_URL = "http://127.0.0.1:7860"
EVENTS = {"run_started": RunStarted, "step_done": StepDone, "window_done": WindowDone, "run_finished": RunFinished,
          "prompt_enhanced": PromptEnhanced}
CHUNK = 1 << 20


class RemoteError(SkyreelsError):
    """The service refused a request, or a job failed there."""


class JobFailed(RemoteError):
    exit_code = 1


class Warned:
    """A `warning` event of the job (an input changed on the way in, a prompt cut short)."""

    def __init__(self, message: str) -> None:
        self.message = message


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120) -> None:
        self.url = (url or DEFAULT_URL).rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--server {url!r} is not a service's address; give e.g. {DEFAULT_URL}")
        self.parts = parts
        self.token = token
        self.timeout = timeout

    # ------------------------------------------------------------ requests

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        return kind(self.parts.hostname, self.parts.port, timeout=timeout or self.timeout)

    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _open(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float | None = None):
        conn = self._connection(timeout)
        try:
            conn.request(method, self.parts.path.rstrip("/") + path, body=body, headers=self._headers(headers))
            response = conn.getresponse()
        except OSError as err:
            conn.close()
            raise RemoteError(f"cannot reach the service at {self.url} ({err.strerror or err}); start one with "
                              "`skyreels serve`, or give its address with --server") from None
        if response.status >= 400:
            data = response.read()
            conn.close()
            try:
                error = json.loads(data)["error"]
                message, field = error["message"], error.get("param")
            except (ValueError, KeyError, TypeError):
                message, field = f"{response.status} {response.reason}", None
            raise RemoteError(f"the service at {self.url} says: {message}", field=field)
        return conn, response

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        conn, response = self._open(method, path, data, {"Content-Type": "application/json"} if data else None)
        try:
            return json.loads(response.read())
        finally:
            conn.close()

    # ------------------------------------------------------------ jobs

    def submit(self, job, *, idempotency_key: str | None = None, gpus: int | None = None) -> dict:
        """Submit a library `Job` (to run on `gpus` workers at once): its settings as fields, its input files as
        uploads. The job object."""
        settings, files = job_fields(job, gpus)
        body, kind = multipart(settings, files)
        headers = {"Content-Type": kind, "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        conn, response = self._open("POST", "/v1/videos", body, headers)
        try:
            return json.loads(response.read())
        finally:
            conn.close()

    def get(self, video_id: str) -> dict:
        return self.call("GET", f"/v1/videos/{video_id}")

    def list(self, limit: int = 20, after: str | None = None) -> dict:
        return self.call("GET", f"/v1/videos?limit={limit}" + (f"&after={after}" if after else ""))

    def cancel(self, video_id: str) -> dict:
        return self.call("POST", f"/v1/videos/{video_id}/cancel")

    def delete(self, video_id: str) -> dict:
        return self.call("DELETE", f"/v1/videos/{video_id}")

    def events(self, video_id: str, after: int = 0) -> Iterator[tuple[int, str, dict]]:
        """The job's server-sent events as (number, kind, data), from event `after` on, until it has finished;
        a dropped connection is taken up again where it left off."""
        last, dropped = after, 0
        while True:
            try:
                conn, response = self._open("GET", f"/v1/videos/{video_id}/events", headers={
                    "Accept": "text/event-stream", "Last-Event-ID": str(last)}, timeout=3600)
            except RemoteError:
                if dropped >= 3:
                    raise
                dropped += 1
                continue
            try:
                block: dict[str, str] = {}
                for raw in response:
                    line = raw.decode().rstrip("\r\n")
                    if line:
                        if not line.startswith(":"):
                            name, _, value = line.partition(": ")
                            block[name] = value
                        continue
                    if "event" in block:
                        last = int(block.get("id", last))
                        yield last, block["event"], json.loads(block["data"])
                    block = {}
                return  # the stream ends when the job has finished
            except (OSError, http.client.HTTPException, ValueError):
                dropped += 1
                if dropped > 3:
                    raise RemoteError(f"lost the service at {self.url} while following job {video_id}") from None
            finally:
                conn.close()

    def follow(self, video_id: str) -> Iterator[object]:
        """The library's events of the job as they happen (`sk.RunStarted`, `sk.StepDone`, ...; a `Warned` for each
        warning), read on a thread of their own so that Ctrl-C reaches the caller at once. Ends when the job
        completes; a failed job raises `JobFailed`, a cancelled one `sk.Cancelled`."""
        news: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                for item in self.events(video_id):
                    news.put(item)
                news.put(None)
            except BaseException as err:  # noqa: BLE001  handed to the caller's thread
                news.put(err)

        threading.Thread(target=read, name="skyreels-events", daemon=True).start()
        while True:
            try:
                item = news.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            _, kind, data = item
            if kind in EVENTS:
                yield library_event(kind, data, self.url)
            elif kind == "warning":
                yield Warned(data["message"])
            elif kind == "job" and data["status"] == "failed":
                raise JobFailed(f"job {video_id} failed at the service: {data.get('error', 'no reason given')}")
            elif kind == "job" and data["status"] == "cancelled":
                raise Cancelled(f"job {video_id} was cancelled at the service")

    def download(self, video_id: str, path: Path, variant: str = "video") -> Path:
        """The job's video (or `settings`) into `path`, whole or not at all."""
        conn, response = self._open("GET", f"/v1/videos/{video_id}/content?variant={variant}", timeout=600)
        partial = path.with_name(path.name + ".download")
        try:
            with open(partial, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
            os.replace(partial, path)
        finally:
            conn.close()
            partial.unlink(missing_ok=True)
        return path


def library_event(kind: str, data: dict, base: str):
    """A served event as the library's event object (its URLs made whole: the display shows where the preview is)."""
    cls = EVENTS[kind]
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in known}
    for name in ("preview", "path"):
        if values.get(name):
            values[name] = base + values[name]
    if cls is RunFinished:
        values.setdefault("path", None)
    return cls(**values)


def job_fields(job, gpus: int | None = None) -> tuple[dict, dict[str, Path]]:
    """A library `Job` as a submission: (fields, uploads by field). What the service owns is left out or refused:
    the output (downloaded here), the device (its workers'), resuming (it resumes its jobs itself), the layout of
    a job on one GPU."""
    if job.resume:
        raise UsageError("--resume is not needed with --server: the service continues its interrupted jobs itself")
    given = job.load.given()
    owned = ("device", "vram_gb") if gpus is not None and gpus > 1 else ("device", "vram_gb", "ulysses", "ring")
    for name in owned:
        if name in given and not (name == "device" and given[name] == "auto"):
            from ..errors import setting

            raise UsageError(f"{setting(name, given[name])} is the service's to choose (each worker plans for its "
                             "own device); leave it out with --server", field=name)
        given.pop(name, None)
    request = {k: v for k, v in job.request.to_dict().items() if v is not None and k not in ("version",)}
    files = {HTTP_FIELDS[name]: Path(request.pop(name)) for name in PATH_FIELDS if name in request}
    for name in PATH_FIELDS:
        path = files.get(HTTP_FIELDS[name])
        if path is not None and not path.is_file():
            from ..errors import InputFileError, setting

            raise InputFileError(f"{setting(name, str(path))}: no such file", field=name)
    out = {"command": job.command, **request, **{k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}}
    if job.model is not None:
        out["model"] = job.model
    if job.enhance is not None:
        out["enhance"] = True if job.enhance == "default" else job.enhance
    if gpus is not None:
        out["gpus"] = gpus
    if job.keep_last is not None:
        out["keep_last"] = job.keep_last
    return out, files


def multipart(fields_: dict, files: dict[str, Path]) -> tuple[bytes, str]:
    """A multipart/form-data body: each field as text (lists and tables as JSON), each file as an upload."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields_.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + text.encode() + b"\r\n")
    for name, path in files.items():
        filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
