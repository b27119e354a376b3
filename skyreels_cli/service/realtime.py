"""`WS /v1/realtime/video`: a live job in the shape of vLLM-Omni's realtime video WebSocket, so its clients work.

JSON text frames control it, binary frames carry the video (fragmented MP4: the first chunk starts with
`ftyp`+`moov`; later ones are fragments whose decode times carry on; H.264 without B-frames), one chunk per
window:

    client  {"type": "session.start", "prompt", "model"?, "width"?, "height"?, "fps"?, "num_frames"?, "seed"?,
             "guidance_scale"?, "format": "m4s"?, ...}    within 10 s of connecting
    server  {"type": "video.start", "request_id": VIDEO_ID, "format": "m4s", "config": {...}}
    server  {"type": "video.chunk_metadata", "request_id", "kind": "media", "transport_chunk_index",
             "generation_chunk_index": WINDOW, "num_frames", "byte_length", "first_frame"}, then the chunk (binary)
    client  {"type": "session.interaction", "interaction": {"event_id", "event": {"prompt", "negative_prompt"?}}}
    server  {"type": "session.interaction.queued", "event_id", "window"}
    client  {"type": "session.stop"}  ->  the job stops after its window; the chunks made so far follow, then
    server  {"type": "session.done", "request_id", "chunks", "stopped": true}
    client  {"type": "session.ping"}  ->  {"type": "session.pong"}
    server  {"type": "error", "message", "code", "param"} on bad input (then it closes, if the session never began)

What differs from vLLM-Omni: the session is a job of the queue (`GET /v1/videos/{request_id}` shows it, its
settings remake it, it survives a restart of the service). `num_frames` is the most it makes (none: until stopped).
Any other field of `POST /v1/videos` may be given too (`steps`, `keep_last`, ...); a start image
(`image_reference`) is not taken here: submit it to `POST /v1/videos` and watch with `{"type": "session.start",
"video_id": ID}`, which joins a live job already running (from its newest window, or from `"from_window": N`).
A disconnect stops a session's own job (its video kept, `completed`), as vLLM-Omni aborts its generation; a job
joined by `video_id` goes on. With a token: `Authorization: Bearer`, `?token=` or the page's cookie.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from .fields import HttpError
from .live import steer
from .store import FINISHED

START_TIMEOUT_S = 10.0
POLL_S = 0.2
RENAMED = {"num_frames": "frames", "guidance_scale": "guidance"}  # vLLM-Omni's names -> ours
IGNORED = ("type", "format", "video_id", "from_window")


def add_route(app, service, row) -> None:
    """The WebSocket on the API (`api.create_app`, which lends `row`: a job's row by id, or a 404)."""
    @app.websocket("/v1/realtime/video")
    async def realtime_video(socket: WebSocket) -> None:
        await socket.accept()
        session = Session(socket, service, row)
        try:
            await session.run()
        except WebSocketDisconnect:
            pass
        finally:
            await session.end()


class Session:
    def __init__(self, socket: WebSocket, service, row) -> None:
        self.socket, self.service, self.store, self.row = socket, service, service.store, row
        self.video_id: str | None = None
        self.own = False      # the session made the job: a disconnect stops it
        self.stopped = False
        self.chunks = 0
        self.done = False
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict | bytes, data: bytes | None = None) -> None:
        """One message (with `data`: a metadata message and its binary chunk, with nothing between them)."""
        async with self._send_lock:
            if isinstance(message, bytes):
                await self.socket.send_bytes(message)
                return
            await self.socket.send_text(json.dumps(message))
            if data is not None:
                await self.socket.send_bytes(data)

    async def error(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        await self.send({"type": "error", "message": message, "code": code, "param": param})

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self.socket.receive_text(), START_TIMEOUT_S)
        except TimeoutError:
            await self.error(f"no session.start within {START_TIMEOUT_S:g} s", "timeout")
            return
        start = _json(first)
        if start is None or start.get("type") != "session.start":
            await self.error('the first message must be {"type": "session.start", "prompt": ...}', param="type")
            return
        try:
            row, window = await self.begin(start)
        except HttpError as err:
            await self.error(err.message, "invalid_request" if err.status < 500 else "server_error", err.param)
            return
        receiver = asyncio.create_task(self.receive())
        try:
            await self.stream(row, window)
        finally:
            receiver.cancel()

    async def begin(self, start: dict) -> tuple[dict, int]:
        """Submit the session's live job (or join one); video.start. The window to stream from."""
        if start.get("format", "m4s") != "m4s":
            raise HttpError(400, f'"format": {json.dumps(start["format"])}: this service streams "m4s" '
                                 "(fragmented MP4); HLS is at GET /v1/videos/{id}/live.m3u8", "format")
        if start.get("video_id") is not None:
            row = await run_in_threadpool(self.row, self.store, str(start["video_id"]))
            if not json.loads(row["job"])["request"].get("live"):
                raise HttpError(400, f"video {row['id']} is not live: there is nothing to stream", "video_id")
            window = start.get("from_window")
            if window is None:
                window = max(row["windows_done"] - 1, 0)  # the newest finished window
            elif isinstance(window, bool) or not isinstance(window, int) or window < 0:
                raise HttpError(400, f'"from_window": {json.dumps(window)} must be a window number, 0 or more',
                                "from_window")
        else:
            row = await self._submit(start)
            self.own, window = True, 0
        self.video_id = row["id"]
        await self.send({"type": "video.start", "request_id": row["id"], "format": "m4s",
                         "config": {"width": row["width"], "height": row["height"], "fps": row["fps"],
                                    "num_frames": row["frames"], "seed": row["seed"], "model": row["model"],
                                    "video": f"/v1/videos/{row['id']}", "playlist": f"/v1/videos/{row['id']}/live.m3u8"}})
        return row, window

    async def _submit(self, start: dict) -> dict:
        """A live extend job from the session's fields, admitted as `POST /v1/videos` admits it."""
        from .admission import admit
        from .fields import submission
        from .store import QueueFull, new_id

        given = {RENAMED.get(k, k): v for k, v in start.items() if k not in IGNORED}
        if "image_reference" in given:
            raise HttpError(400, "a start image is not taken over the WebSocket: submit it with POST /v1/videos "
                                 '("live": true) and join with {"type": "session.start", "video_id": ID}',
                            "image_reference")
        given = {**given, "command": "extend", "live": True}
        service = self.service
        sub = submission(given, {}, service.offer)
        job_id = new_id()
        new = await run_in_threadpool(lambda: admit(sub.job, job_id, service.state_dir, service.offer,
                                                    service.scheduler.fleet.capacity(), {}, gpus=sub.gpus,
                                                    priority=sub.priority))
        try:
            row, _ = await run_in_threadpool(lambda: self.store.add(new, job_id, max_queued=service.config.max_queued))
        except QueueFull:
            raise HttpError(429, "the queue is full; try again when some jobs have run") from None
        service.scheduler.notify()
        return row

    async def receive(self) -> None:
        """The client's messages while the video streams: prompt changes, stop, ping."""
        while True:
            message = _json(await self.socket.receive_text())
            kind = message.get("type") if message is not None else None
            if kind == "session.ping":
                await self.send({"type": "session.pong"})
            elif kind == "session.stop":
                await self.stop()
            elif kind == "session.interaction":
                await self.interaction(message)
            else:
                await self.error(f"unknown message type {kind!r}: session.interaction, session.stop and "
                                 "session.ping are taken", param="type")

    async def interaction(self, message: dict) -> None:
        interaction = message.get("interaction") if isinstance(message.get("interaction"), dict) else {}
        event = interaction.get("event") if isinstance(interaction.get("event"), dict) else {}
        prompt, negative = event.get("prompt"), event.get("negative_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            await self.error("the interaction's prompt is empty: describe what the video shows next", param="prompt")
            return
        if negative is not None and not isinstance(negative, str):
            await self.error("negative_prompt must be text", param="negative_prompt")
            return
        row = await run_in_threadpool(self.store.get, self.video_id)
        if row is None or row["status"] in FINISHED or row["cancel_requested"]:
            await self.error(f"video {self.video_id} takes no more prompts: it has ended or is stopping", "ended",
                             "id")
            return
        window = await run_in_threadpool(steer, self.service.scheduler, self.video_id,
                                         Path(json.loads(row["job"])["output"]), prompt.strip(), negative)
        await self.send({"type": "session.interaction.queued", "event_id": interaction.get("event_id"),
                         "window": window})

    async def stop(self) -> None:
        if self.video_id is not None and not self.stopped:
            self.stopped = True
            await run_in_threadpool(self.store.cancel, self.video_id)
            self.service.scheduler.notify()

    async def stream(self, row: dict, window: int) -> None:
        """Each finished window as a chunk, in order, until the job ends; then session.done."""
        from .live import segments_made

        output = Path(json.loads(row["job"])["output"])
        row_fps = row["fps"] or 24
        while True:
            row = await run_in_threadpool(self.store.get, self.video_id)  # first: then every window it made is seen
            made = await run_in_threadpool(segments_made, output)
            for segment in [s for s in made if s["window"] >= window]:
                chunk = await run_in_threadpool(_chunk, output, segment, row_fps, self.chunks == 0)
                if chunk is None:  # gone (keep_last) before it was read: the stream goes on after it
                    window = segment["window"] + 1
                    continue
                await self.send({"type": "video.chunk_metadata", "request_id": self.video_id, "kind": "media",
                                 "transport_chunk_index": self.chunks, "generation_chunk_index": segment["window"],
                                 "num_frames": segment["frames"], "first_frame": segment["first_frame"],
                                 "byte_length": len(chunk)}, chunk)
                self.chunks += 1
                window = segment["window"] + 1
            if row is None or row["status"] in FINISHED:
                self.done = True
                await self.send({"type": "session.done", "request_id": self.video_id, "chunks": self.chunks,
                                 "stopped": self.stopped or bool(row and row["cancel_requested"]),
                                 "status": row["status"] if row else "deleted"})
                return
            await asyncio.sleep(POLL_S)

    async def end(self) -> None:
        """A session that ends before its own job: the job stops (its video kept)."""
        if self.own and not self.done:
            await self.stop()
        try:
            await self.socket.close()
        except RuntimeError:  # already closed
            pass


def _json(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _chunk(output: Path, segment: dict, fps: float, init: bool) -> bytes | None:
    """A window's segment as a fragmented MP4 chunk (None: no longer on disk)."""
    import numpy as np

    from ..media.hls import fmp4_chunk, segment_name, stream_folder
    from ..media.videos import iter_video_frames

    path = stream_folder(output) / segment_name(segment["window"])
    try:
        frames = np.concatenate(list(iter_video_frames(path)))
    except Exception:  # noqa: BLE001  dropped by keep_last while it was read
        return None
    return fmp4_chunk(frames, fps, segment["first_frame"], init=init)
