"""A live job through the service: its prompt changes carried to the worker, its HLS stream served.

    POST /v1/videos/{id}/prompt          {"prompt", "negative_prompt"}: from the next window not yet started
    GET  /v1/videos/{id}/live.m3u8       the EVENT playlist (#EXT-X-ENDLIST once it has ended)
    GET  /v1/videos/{id}/live/SEGMENT    its segments (w000000.ts, ...)

Steering goes through a small SQLite file in the job's own folder (`steering.db`), which both the API and the
worker process open: the API records each change with the window it promised, the worker reads the change that
applies as it starts each window (`StorePrompts`). Both happen in one write transaction each, so a promise is
never broken: a change recorded before window k's start is read by it, one recorded after is promised k + 1.
Being on disk beside the video, the changes survive a restart of the service (a window made again takes the
same prompt), and the worker reads them in any process that sees the job's folder.

Players cannot send a bearer header, so with a token the playlist and its segments also take `?token=TOKEN`
(GET only; the page's cookie works too), and the playlist served with one names its segments with it: one
URL, `.../live.m3u8?token=TOKEN`, is all ffplay, VLC or hls.js needs.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from ..core.live import LivePrompts
from ..media.hls import PLAYLIST, RECORD, stream_folder

STEERING = "steering.db"
SEGMENT = re.compile(r"w\d{6}\.ts")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    window INTEGER NOT NULL,           -- the window it was promised for
    prompt TEXT NOT NULL,
    negative_prompt TEXT,
    at REAL NOT NULL                   -- when it was asked for (wall clock)
);
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    started INTEGER NOT NULL,          -- the last window the worker started
    timeline TEXT NOT NULL             -- the prompts applied so far, window -> prompt (core/live.py)
);
"""


def steering_path(output: str | Path) -> Path:
    """The steering file of the job writing `output` (its own folder)."""
    return Path(output).parent / STEERING


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def promise(path: Path, prompt: str, negative_prompt: str | None) -> int:
    """Record a prompt change; the window it takes effect from (the next one the worker has not started)."""
    db = _open(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT started FROM progress WHERE id = 0").fetchone()
        window = (row[0] if row else -1) + 1
        db.execute("INSERT INTO prompts (window, prompt, negative_prompt, at) VALUES (?, ?, ?, ?)",
                   (window, prompt, negative_prompt, time.time()))
        db.execute("COMMIT")
        return window
    finally:
        db.close()


def record(path: Path, window: int, prompt: str, negative_prompt: str | None) -> None:
    """Keep a change another process promised (for `window`) here too: it survives a restart of the service."""
    db = _open(path)
    try:
        db.execute("INSERT INTO prompts (window, prompt, negative_prompt, at) VALUES (?, ?, ?, ?)",
                   (window, prompt, negative_prompt, time.time()))
    finally:
        db.close()


def steer(scheduler, job_id: str, output: Path, prompt: str, negative_prompt: str | None) -> int:
    """A prompt change for a live job, and the window it lands at. Where the job runs on a worker that keeps its
    own copy of the job's folder (a Ray node without --shared-dir), that worker promises it (it alone knows the
    window it has started) and the change is kept here too; otherwise it is promised here, where the worker
    reads it (or, queued, where the job's files are sent from)."""
    path = steering_path(output)
    worker = scheduler.remote_runner(job_id)
    window = worker.promise(job_id, prompt, negative_prompt) if worker is not None else None
    if window is None:
        return promise(path, prompt, negative_prompt)
    record(path, window, prompt, negative_prompt)
    return window


def progress(path: Path) -> tuple[int, list[dict]]:
    """(the last window started, -1 before the first; the timeline applied so far)."""
    if not path.is_file():
        return -1, []
    db = _open(path)
    try:
        row = db.execute("SELECT started, timeline FROM progress WHERE id = 0").fetchone()
        return (row[0], json.loads(row[1])) if row else (-1, [])
    finally:
        db.close()


class StorePrompts(LivePrompts):
    """The worker's prompt source of a live job: before each window, the latest change promised for it or an
    earlier window (from `steering.db`), and the timeline written back for the job object."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def for_window(self, window: int, request):
        db = _open(self.path)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO progress (id, started, timeline) VALUES (0, ?, '[]') "
                       "ON CONFLICT(id) DO UPDATE SET started = MAX(started, excluded.started)", (window,))
            row = db.execute("SELECT prompt, negative_prompt, at FROM prompts WHERE window <= ? ORDER BY n DESC "
                             "LIMIT 1", (window,)).fetchone()
            db.execute("COMMIT")
            if row is not None:
                with self._lock:  # as `set` would have, at the time it was asked for (on this clock)
                    self._pending = (row[0], row[1], self._clock() - max(0.0, time.time() - row[2]))
            chosen = super().for_window(window, request)
            db.execute("UPDATE progress SET timeline = ? WHERE id = 0", (json.dumps(self.timeline()),))
            return chosen
        finally:
            db.close()


def live_fields(job: dict, output: Path, job_id: str) -> dict:
    """What the job object adds for a live job: where to watch, the window last started, the timeline."""
    if not job["request"].get("live"):
        return {}
    started, timeline = progress(steering_path(output))
    return {"live": {"playlist": f"/v1/videos/{job_id}/live.m3u8", "window": started, "timeline": timeline,
                     "keep_last": job.get("keep_last")}}


def playlist(output: Path, token: str | None) -> str | None:
    """The job's playlist, its segments named relative to it (with `?token=` when it was asked for with one)."""
    path = stream_folder(Path(output)) / PLAYLIST
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    suffix = f"?token={quote(token, safe='')}" if token else ""
    return "\n".join(f"live/{line}{suffix}" if SEGMENT.fullmatch(line) else line for line in text.split("\n"))


def segments_made(output: Path) -> list[dict]:
    """The segments of the job's stream on disk, in order: window, frames, first_frame (media/hls.py's record)."""
    try:
        record = json.loads((stream_folder(Path(output)) / RECORD).read_text())["segments"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [s for s in record if not s.get("dropped")]


def segment(output: Path, name: str) -> Path | None:
    """A segment's file, if `name` is one and it is on disk."""
    if not SEGMENT.fullmatch(name):
        return None
    path = stream_folder(Path(output)) / name
    return path if path.is_file() else None


# ------------------------------------------------------------------ the routes

def add_routes(app, service, _row, video_object) -> None:
    """The live job's endpoints on the API (`api.create_app`, which lends its `_row` and `video_object`)."""
    from .fields import HttpError, _limit
    from .store import FINISHED

    store = service.store

    def output(video_id: str) -> Path:
        return service.state_dir / "videos" / video_id / "video.mp4"

    @app.post("/v1/videos/{video_id}/prompt", summary="Steer a live video from its next window")
    async def change_prompt(video_id: str, request: Request) -> dict:
        try:
            given = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(given, dict):
            raise HttpError(400, 'the body must be a JSON object, e.g. {"prompt": "the fox jumps"}')
        for name in given:
            if name not in ("prompt", "negative_prompt"):
                raise HttpError(400, f"unknown field {name!r}; a prompt change takes prompt and negative_prompt",
                                name)
        prompt, negative = given.get("prompt"), given.get("negative_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise HttpError(400, '"prompt" is empty: describe what the video shows next', "prompt")
        if negative is not None and not isinstance(negative, str):
            raise HttpError(400, f'"negative_prompt": {json.dumps(negative)} must be text', "negative_prompt")
        for name, text in (("prompt", prompt), ("negative_prompt", negative)):
            _limit(name, text, service.offer)
        row = await run_in_threadpool(_row, store, video_id)
        if not json.loads(row["job"])["request"].get("live"):
            raise HttpError(400, f"video {video_id} is not live: only a job submitted with \"live\": true takes "
                                 "prompt changes (a finished video can be extended with a new prompt)", "live")
        if row["status"] in FINISHED or row["cancel_requested"]:
            state = row["status"] if row["status"] in FINISHED else "stopping"
            raise HttpError(409, f"video {video_id} is {state}: it takes no more prompts", "id")
        window = await run_in_threadpool(steer, service.scheduler, video_id, output(video_id), prompt.strip(),
                                         negative)
        return {"id": video_id, "object": "video.prompt", "window": window, "prompt": prompt.strip(),
                "negative_prompt": negative, "video": video_object(store, store.get(video_id))}

    def live_job(video_id: str) -> dict:
        row = _row(store, video_id)
        if not json.loads(row["job"])["request"].get("live"):
            raise HttpError(404, f"video {video_id} is not live: it has no stream; GET its content when it is "
                                 "completed", "id")
        return row

    @app.get("/v1/videos/{video_id}/live.m3u8", summary="A live video's HLS playlist (EVENT)")
    def live_playlist(video_id: str, token: str | None = None) -> Response:
        row = live_job(video_id)
        text = playlist(output(video_id), token)
        if text is None:
            raise HttpError(404, f"video {video_id} is {row['status']}: its stream starts with its first "
                                 "window; try again shortly", "id")
        return Response(text, media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-store"})

    @app.get("/v1/videos/{video_id}/live/{name}", summary="A segment of a live video's stream")
    def live_segment(video_id: str, name: str) -> Response:
        live_job(video_id)
        path = segment(output(video_id), name)
        if path is None:
            raise HttpError(404, f"no segment {name!r} of video {video_id}: the playlist names those there are "
                                 "(older ones go with keep_last)", "name")
        return FileResponse(path, media_type="video/mp2t")


# ------------------------------------------------------------------ hooks of admission and the scheduler

def live_bounded(job, offer):
    """A live job's most under `serve --max-live-seconds` (none: it runs until stopped): one that gives none gets
    that bound, one that asks for more is refused (413). The limits of other jobs' lengths do not apply: a live
    job is stopped by its client, and `keep_last` bounds its disk."""
    from dataclasses import replace

    from .fields import HttpError

    r, bound = job.request, offer.max_live_seconds
    if not r.live or bound is None:
        return job
    fps = r.fps or 24
    most = r.frames / fps if r.frames is not None else r.seconds
    if most is None:
        return replace(job, request=replace(r, seconds=bound))
    if most > bound:
        name = "frames" if r.frames is not None else "seconds"
        raise HttpError(413, f"{most:g} s is longer than this service lets a live video run ({bound:g} s; serve "
                             "--max-live-seconds); ask for less, or leave the length out to run until stopped "
                             "within it", name)
    return job


def record_made(store, files_dir: Path, job_id: str) -> None:
    """A live job that ended: its row's frames and windows become what it made (they were its most), from its
    sidecar."""
    row = store.get(job_id)
    if row is None or not json.loads(row["job"])["request"].get("live"):
        return
    try:
        settings = json.loads((Path(files_dir) / "videos" / job_id / "video.mp4.json").read_text())
        frames, windows = int(settings["request"]["frames"]), int(settings["live"]["windows"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    with store._lock() as db:
        db.execute("UPDATE jobs SET frames = ?, windows = ? WHERE id = ?", (frames, windows, job_id))


def public_preview(job_id: str, preview: str) -> str | None:
    """A live job's events name its playlist as their preview: its URL (None: not a live preview)."""
    return f"/v1/videos/{job_id}/live.m3u8" if preview.endswith("/" + PLAYLIST) else None
