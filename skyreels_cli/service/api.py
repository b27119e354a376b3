"""The HTTP API: the shape of OpenAI's Videos API over the queue, the page at `/`, the schema at `/docs`.

    POST   /v1/videos                  submit (JSON, or multipart with the uploads); the job object
    GET    /v1/videos                  newest first: ?limit=20&after=ID
    GET    /v1/videos/{id}             the job object
    GET    /v1/videos/{id}/content     the MP4; ?variant=preview (what is finished so far), ?variant=settings
    GET    /v1/videos/{id}/events      server-sent events: the library's progress events and the job's status
    POST   /v1/videos/{id}/cancel      (a live video: stops after its window, completed with all it made)
    POST   /v1/videos/{id}/prompt      a live video's prompt from its next window; live.m3u8 (service/live.py)
    WS     /v1/realtime/video          a live video as vLLM-Omni's WebSocket streams it (service/realtime.py)
    DELETE /v1/videos/{id}             cancels if needed, then removes its files
    GET    /v1/models, /v1/options, /health

A refused request is a 4xx whose body is `{"error": {"message": ONE LINE, "type": ..., "param": FIELD}}`;
nothing is queued then. The guard in front of it all (`guard.py`): the token, the request size, the Host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from .admission import admit
from .fields import UPLOADS, HttpError, Offer, Submission, submission
from .guard import Guard, HeadAsGet
from .live import live_fields
from .store import FINISHED, ID_PATTERN, QueueFull, Store, new_id

PAGE = Path(__file__).parent / "page"
IMAGES = {"thumbnail": ("thumbnail.webp", "image/webp"), "spritesheet": ("spritesheet.jpg", "image/jpeg")}
SPRITES = 16          # frames in a spritesheet, spread over the video
SPRITE_WIDTH = 256    # a frame's width there at most
MAX_IDEMPOTENCY_KEY = 255
CHUNK = 1 << 20


@dataclass
class Service:
    store: Store
    scheduler: object            # a Scheduler: notify() and health()
    offer: Offer
    state_dir: Path
    config: object               # the ServiceConfig it was started with


def create_app(service: Service) -> FastAPI:
    config, store = service.config, service.store
    app = FastAPI(title="skyreels", version=__version__, docs_url="/docs", redoc_url=None,
                  description="A local video service over the SkyReels-V2 checkpoints, in the shape of OpenAI's "
                              "Videos API. POST /v1/videos takes JSON or multipart (the start image as "
                              "input_reference); see /v1/options for every field.")
    app.state.service = service
    app.add_middleware(HeadAsGet)  # innermost: the Guard sees HEAD (a read) and the routes a GET
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(Guard, token=config.token, max_body=int(config.max_upload_mb * 1e6),
                       loopback_only=not config.token)

    @app.exception_handler(HttpError)
    async def refused(_: Request, err: HttpError) -> JSONResponse:
        return error(err.status, err.message, err.param)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = first.get("loc", ["", ""])[-1]
        return error(400, f"{where}: {first.get('msg', 'invalid')}", str(where))

    # ------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    # ------------------------------------------------------------ submitting

    @app.post("/v1/videos", summary="Submit a video", openapi_extra=_submit_schema())
    async def create_video(request: Request) -> JSONResponse:
        return await enqueue(request, lambda given, uploads, form, folder: submission(
            *_references(given, uploads, folder), service.offer, form=form))

    @app.post("/v1/videos/extensions", summary="Continue a video (an upload, or a finished job's) with diffusion "
                                                "forcing: `seconds` are the new part")
    async def extend_video(request: Request) -> JSONResponse:
        def build(given, uploads, form, folder):
            given, uploads = _references(given, uploads, folder)
            source = given.pop("video", None)
            if "input_video" not in uploads:
                if not isinstance(source, dict) or not isinstance(source.get("id"), str):
                    raise HttpError(400, 'give the video to extend: the upload "video", or {"video": {"id": ID}} '
                                         "naming a completed video of this service", "video")
                uploads["input_video"] = _finished_video(source["id"], folder)
            elif source is not None:
                raise HttpError(400, 'give "video" once: an upload or {"id": ID}', "video")
            command = given.setdefault("command", "extend")
            if command != "extend":
                raise HttpError(400, f'"command": {json.dumps(command)}: an extension is an extend', "command")
            return submission(given, uploads, service.offer, form=form)

        return await enqueue(request, build, files={"video": "input_video"})

    @app.post("/v1/videos/{video_id}/remix", summary="The same video again (request and seed) with a new prompt")
    async def remix(video_id: str, request: Request) -> JSONResponse:
        row = await run_in_threadpool(_row, store, video_id)

        def build(given, uploads, form, folder):
            prompt = given.pop("prompt", None)
            if not isinstance(prompt, str) or not prompt.strip():
                raise HttpError(400, 'a remix needs its new "prompt", e.g. {"prompt": "the same fox at night"}',
                                "prompt")
            if given:
                name = next(iter(given))
                raise HttpError(400, f'a remix changes the prompt only; {name!r} is not taken (submit a new video '
                                     "for other changes)", name)
            return _remixed(row, prompt, folder, service.offer)

        return await enqueue(request, build, remixed_from=video_id)

    @app.post("/v1/videos/{video_id}/resume", summary="Continue a cancelled or failed extend from its last window")
    def resume(video_id: str) -> dict:
        row = _row(store, video_id)
        state = service.state_dir / "videos" / video_id / ".video.mp4.skyreels" / "state.pt"
        if row["status"] not in ("cancelled", "failed"):
            raise HttpError(409, f"video {video_id} is {row['status']}: only a cancelled or failed one is resumed",
                            "id")
        if not state.is_file():
            raise HttpError(409, f"video {video_id} kept no finished window to continue from (only an extend "
                                 "keeps them); submit it again", "id")
        row = store.resume(video_id)
        service.scheduler.notify()
        return video_object(store, row)

    def _finished_video(source_id: str, folder: Path) -> Path:
        """A completed video of this service, copied among a new job's uploads (deleting it later harms no one)."""
        source = _row(store, source_id) if isinstance(source_id, str) else None
        video = service.state_dir / "videos" / source_id / "video.mp4"
        if source["status"] != "completed" or not video.is_file():
            raise HttpError(400, f"video {source_id} is {source['status']}: only a completed video is extended", "video")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(video, folder / "input_video.mp4"))

    async def enqueue(request: Request, build, remixed_from: str | None = None,
                      files: dict[str, str] | None = None) -> JSONResponse:
        """Read a submission, `build` the job it asks for (`build(fields, uploads, form, uploads_dir)` -> a
        Submission), admit it and queue it; the job object. An Idempotency-Key sent again with the same
        submission answers the job it made; with another submission, 409. `files`: uploads under other names."""
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise HttpError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", "Idempotency-Key")
        job_id = new_id()
        uploads_dir = service.state_dir / "uploads" / job_id
        try:
            given, uploads, form = await _read_body(request, uploads_dir, files or {})
            fingerprint = await run_in_threadpool(_fingerprint, request.url.path, given, uploads)
            if key is not None:
                row = await run_in_threadpool(store.by_key, key)
                if row is not None:
                    shutil.rmtree(uploads_dir, ignore_errors=True)
                    return JSONResponse(video_object(store, _same_key(row, fingerprint)))
            sub = await run_in_threadpool(build, given, uploads, form, uploads_dir)
            # in the pool, capacity too: a Ray fleet asks its cluster, which must not hold up the event loop
            new = await run_in_threadpool(lambda: admit(sub.job, job_id, service.state_dir, service.offer,
                                                        service.scheduler.fleet.capacity(), sub.uploads or uploads,
                                                        gpus=sub.gpus, priority=sub.priority))
            row, created = await run_in_threadpool(
                lambda: store.add(new, job_id, idempotency_key=key, fingerprint=fingerprint,
                                  max_queued=config.max_queued, remixed_from=remixed_from))
        except QueueFull:
            shutil.rmtree(uploads_dir, ignore_errors=True)
            raise HttpError(429, f"the queue is full ({config.max_queued} jobs waiting); try again when some have "
                                 "run") from None
        except BaseException:
            shutil.rmtree(uploads_dir, ignore_errors=True)
            raise
        if not created:  # the same key, submitted twice at once: the other one won
            shutil.rmtree(uploads_dir, ignore_errors=True)
            _same_key(row, fingerprint)
        service.scheduler.notify()
        return JSONResponse(video_object(store, row))

    # ------------------------------------------------------------ reading

    @app.get("/v1/videos", summary="List videos, newest first (order=asc: oldest first)")
    def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> dict:
        if not 1 <= limit <= 100:
            raise HttpError(400, f"limit {limit} must be from 1 to 100", "limit")
        if order not in ("asc", "desc"):
            raise HttpError(400, f"order {cut(order)!r} is not asc or desc; give order=asc for the oldest first, "
                                 "desc (the default) for the newest", "order")
        try:
            rows, more = store.page(limit, after, order)
        except KeyError:
            raise HttpError(400, f"after {cut(after)!r} is no video of this service; give the last_id of the page "
                                 "before, or leave after out for the first page", "after") from None
        data = [video_object(store, row) for row in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/videos/{video_id}", summary="A video job")
    def get_video(video_id: str) -> dict:
        return video_object(store, _row(store, video_id))

    @app.get("/v1/videos/{video_id}/content", summary="The MP4, the preview so far, or the settings")
    def content(video_id: str, variant: str = "video") -> Response:
        row = _row(store, video_id)
        folder = service.state_dir / "videos" / video_id
        video = folder / "video.mp4"
        if variant == "settings":
            sidecar = folder / "video.mp4.json"
            if row["status"] != "completed" or not sidecar.is_file():
                raise HttpError(404, f"video {video_id} is {row['status']}: its settings are written when it is "
                                     "completed; GET /v1/videos/{id} has the request meanwhile", "variant")
            return JSONResponse(_public_settings(sidecar, service.state_dir, video_id, service.offer))
        if variant in IMAGES:
            if row["status"] != "completed" or not video.is_file():
                raise HttpError(404, f"video {video_id} is {row['status']}: its {variant} is made from the finished "
                                     "video", "variant")
            path, kind = _image(video, variant)
            return FileResponse(path, media_type=kind, filename=f"{video_id}_{variant}{path.suffix}")
        if variant not in ("video", "preview"):
            raise HttpError(400, f"variant {cut(variant)!r} is not one of video, thumbnail, spritesheet, preview, "
                                 "settings", "variant")
        if row["status"] == "completed" and video.is_file():
            return FileResponse(video, media_type="video/mp4", filename=f"{video_id}.mp4")
        preview = folder / "video.partial.mp4"
        # What is finished so far: while it runs, and after a cancel or a failure (what resume continues from)
        if variant == "preview" and row["status"] != "queued" and preview.is_file():
            # Read whole now: the worker replaces it as windows finish.
            return Response(preview.read_bytes(), media_type="video/mp4", headers={"Cache-Control": "no-store"})
        what = "no window is finished yet" if variant == "preview" and row["status"] in ("queued", "in_progress") \
            else f"it is {row['status']}"
        hint = "; ?variant=preview plays what is finished so far" if row["status"] == "in_progress" else ""
        raise HttpError(404, f"video {video_id} has no {variant} to send: {what}{hint}", "variant")

    @app.get("/v1/videos/{video_id}/events", summary="Progress as server-sent events")
    async def events(video_id: str, request: Request, after: str = "0") -> StreamingResponse:
        await run_in_threadpool(_row, store, video_id)
        header = request.headers.get("last-event-id")
        last = _event_number(header, "Last-Event-ID") if header else _event_number(after, "after")
        return StreamingResponse(_event_stream(store, video_id, last, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ changing

    @app.post("/v1/videos/{video_id}/cancel", summary="Cancel a queued or running video")
    def cancel(video_id: str) -> dict:
        _row(store, video_id)
        row = store.cancel(video_id)
        service.scheduler.notify()
        return video_object(store, row)

    @app.delete("/v1/videos/{video_id}", summary="Cancel if needed, then remove a video and its files")
    def delete(video_id: str) -> dict:
        _row(store, video_id)
        store.mark_deleted(video_id)
        service.scheduler.notify()
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    from .live import add_routes as add_live_routes
    from .realtime import add_route as add_realtime_route

    add_live_routes(app, service, _row, video_object)
    add_realtime_route(app, service, _row)

    # ------------------------------------------------------------ the service

    @app.get("/v1/models", summary="The models offered, what is cached, what each worker holds")
    def models() -> dict:
        return {"object": "list", "data": _models(service)}

    @app.get("/v1/options", summary="Every field of a submission, by command: what the page's form is made of")
    def options() -> dict:
        from .options import form_schema

        return form_schema(service.offer)

    @app.get("/health", summary="Liveness for anyone; workers and queue with the token")
    def health(request: Request) -> dict:
        if config.token and not request.scope.get("skyreels_authorized"):
            return {"status": "ok"}  # a load balancer's probe: nothing about the machine
        return {"status": "ok", "version": __version__, "workers": service.scheduler.health(),
                "queue": store.counts(), "max_queued": config.max_queued}

    return app


# ------------------------------------------------------------------ helpers

def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
            429: "rate_limit_error"}.get(status, "invalid_request_error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    # A value echoed in a message is cut (a 300-digit number, a 100,000-character id); the message stays one line
    message = re.sub(r"\S{81,}", lambda m: cut(m[0]), message.replace("\n", " "))
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def video_object(store: Store, row: dict) -> dict:
    """A job as the API shows it: OpenAI's video object, and ours."""
    fps = row["fps"] or 24
    job = json.loads(row["job"])
    error_ = {"message": row["error"], "param": row["error_param"]} if row["error"] else None
    return {
        "id": row["id"], "object": "video", "created_at": row["created_at"], "status": row["status"],
        "progress": row["progress"], "model": row["model"], "prompt": job["request"]["prompt"],
        "seconds": f"{round(row['frames'] / fps, 2):g}",
        "size": f"{row['width']}x{row['height']}", "error": error_, "completed_at": row["completed_at"],
        "command": row["command"], "frames": row["frames"], "fps": fps, "seed": row["seed"],
        "windows": row["windows"], "windows_done": row["windows_done"],
        "eta_s": row["eta_s"] if row["status"] in ("queued", "in_progress") else None,
        "queue_position": store.position(row), "priority": row["priority"], "gpus": row["gpus"],
        "worker": row["worker"], "attempts": row["attempts"],
        "expires_at": None,  # kept until deleted
        "remixed_from_video_id": row.get("remixed_from"),
        **live_fields(job, Path(job["output"]), row["id"]),
    }


def _event_number(text: str, name: str) -> int:
    """An event's number from a header or the query: a whole number an event can have."""
    if not re.fullmatch(r"\d{1,18}", text.strip()):
        raise HttpError(400, f"{name} {cut(text)!r} is not an event number; give the id of the last event received "
                             "(a whole number, 0 for all)", name)
    return int(text)


def cut(text: str, most: int = 60) -> str:
    """A value a client sent, short enough to echo in a message."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def _references(given: dict, uploads: dict[str, Path], folder: Path) -> tuple[dict, dict[str, Path]]:
    """OpenAI's `input_reference` as an object: {"image_url": "data:image/png;base64,..."} is saved as the upload
    it stands for. A remote URL is refused: the service fetches nothing from the network."""
    given, uploads = dict(given), dict(uploads)
    reference = given.get("input_reference")
    if not isinstance(reference, dict):
        return given, uploads
    del given["input_reference"]
    if "input_reference" in uploads:
        raise HttpError(400, "input_reference is given twice: as an upload and as an object", "input_reference")
    if "file_id" in reference:
        raise HttpError(400, "this service keeps no files by id: send input_reference as an upload, or as "
                             '{"image_url": "data:image/png;base64,..."}', "input_reference")
    url = reference.get("image_url")
    match = re.fullmatch(r"data:image/(\w+)(?:;[\w=.+-]+)*;base64,([A-Za-z0-9+/=\s]*)", url) \
        if isinstance(url, str) else None
    if match is None:
        what = "a remote URL: this service fetches nothing from the network" if isinstance(url, str) and \
            re.match(r"\w+://", url) else "not a data URL"
        raise HttpError(400, f"input_reference image_url is {what}; send the image itself, as an upload or as "
                             '"data:image/png;base64,..."', "input_reference")
    try:
        data = base64.b64decode(match[2], validate=False)
    except ValueError:
        raise HttpError(400, "input_reference image_url is not valid base64", "input_reference") from None
    if not data:
        raise HttpError(400, "input_reference is an empty image", "input_reference")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"input_reference.{match[1].lower() if match[1].isalnum() and len(match[1]) < 6 else 'img'}"
    path.write_bytes(data)
    uploads["input_reference"] = path
    return given, uploads


def _remixed(row: dict, prompt: str, folder: Path, offer: Offer) -> Submission:
    """Job `row` again, its seed and every setting kept, with a new prompt; its input files copied with it (the
    source may be deleted before the remix runs)."""
    from ..core.job import Job
    from ..errors import HTTP_FIELDS

    if len(prompt) > offer.max_prompt_chars:
        raise HttpError(413, f'"prompt" is {len(prompt)} characters long; this service takes at most '
                             f"{offer.max_prompt_chars}", "prompt")
    job = Job.from_dict(json.loads(row["job"]))
    request, uploads = replace(job.request, prompt=prompt, prompt_original=None), {}
    for name, http in HTTP_FIELDS.items():
        path = getattr(request, name)
        if path:
            folder.mkdir(parents=True, exist_ok=True)
            uploads[http] = Path(shutil.copyfile(path, folder / f"{http}{Path(path).suffix}"))
            request = replace(request, **{name: str(uploads[http])})
    return Submission(replace(job, request=request), row["priority"], row["gpus"], uploads)


def _image(video: Path, variant: str) -> tuple[Path, str]:
    """The video's thumbnail (its first frame, at its size) or spritesheet (frames spread over it, in a grid),
    made once beside it."""
    import numpy as np
    from PIL import Image

    from ..media.videos import iter_video_frames, probe_video

    name, kind = IMAGES[variant]
    path = video.parent / name
    if path.is_file() and path.stat().st_mtime >= video.stat().st_mtime:
        return path, kind
    count = probe_video(video)["frames"]
    shown = 1 if variant == "thumbnail" else min(SPRITES, count)
    wanted = {round(i * (count - 1) / max(shown - 1, 1)) for i in range(shown)}
    frames, seen = [], 0
    for chunk in iter_video_frames(video):
        frames += [frame for i, frame in enumerate(chunk, seen) if i in wanted]
        seen += len(chunk)
        if len(frames) == len(wanted):
            break
    if variant == "thumbnail":
        image = Image.fromarray(frames[0])
    else:
        height, width = frames[0].shape[:2]
        scale = min(1.0, SPRITE_WIDTH / width)
        tile = (max(1, round(width * scale)), max(1, round(height * scale)))
        columns = math.ceil(math.sqrt(len(frames)))
        rows = math.ceil(len(frames) / columns)
        image = Image.new("RGB", (tile[0] * columns, tile[1] * rows))
        for i, frame in enumerate(frames):
            image.paste(Image.fromarray(np.asarray(frame)).resize(tile), (tile[0] * (i % columns), tile[1] * (i // columns)))
    partial = path.with_suffix(".partial" + path.suffix)
    image.save(partial, format="WEBP" if path.suffix == ".webp" else "JPEG", quality=90)
    partial.replace(path)
    return path, kind


def _fingerprint(path: str, given: dict, uploads: dict[str, Path]) -> str:
    """A digest of a submission: its endpoint, its fields and its files' bytes (not their server paths)."""
    digest = hashlib.sha256(json.dumps([path, given], sort_keys=True, default=str).encode())
    for name in sorted(uploads):
        digest.update(name.encode())
        with open(uploads[name], "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _same_key(row: dict, fingerprint: str) -> dict:
    """The job an Idempotency-Key made, if this is the same submission again; else a 409."""
    if row.get("fingerprint") not in (None, fingerprint):
        raise HttpError(409, f"this Idempotency-Key was used for another submission ({row['id']}); send a new key "
                             "for a new job, or the same body to get that job", "Idempotency-Key")
    return row


def _row(store: Store, video_id: str) -> dict:
    row = store.get(video_id) if ID_PATTERN.fullmatch(video_id) else None
    if row is None:
        raise HttpError(404, f"no video {cut(video_id)!r} here; GET /v1/videos lists them", "id")
    return row


async def _read_body(request: Request, uploads_dir: Path, files_as: dict[str, str] | None = None,
                     ) -> tuple[dict, dict[str, Path], bool]:
    """The submission's fields and its uploads (saved under `uploads_dir`), and whether it was a form. `files_as`:
    an endpoint's own names of uploads (the SDK's `video` of an extension is our input_video). A form's
    `name[key]` (how the SDK sends an object, e.g. `input_reference[image_url]`) is the field `name`: {key: ...}."""
    files_as = files_as or {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("", "application/json"):
        try:
            given = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HttpError(400, "the body is not valid JSON") from None
        except RecursionError:
            raise HttpError(400, "the body's JSON is nested too deep; a submission is a flat object of fields") \
                from None
        if not isinstance(given, dict):
            raise HttpError(400, "the body must be a JSON object of fields, e.g. {\"prompt\": \"a cat\"}")
        return given, {}, False
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HttpError(415, f"content type {kind} is not taken: send application/json or multipart/form-data")
    form = await request.form(max_files=len(UPLOADS), max_fields=200)
    given: dict = {}
    uploads: dict[str, Path] = {}
    for name in form:
        values = form.getlist(name)
        files = [v for v in values if hasattr(v, "read")]
        nested = re.fullmatch(r"(\w+)\[(\w+)\]", name)
        if nested and not files:
            given.setdefault(nested[1], {})
            if not isinstance(given[nested[1]], dict):
                raise HttpError(400, f"{nested[1]} is given both as a value and as an object", nested[1])
            given[nested[1]][nested[2]] = values[-1]
            continue
        name = files_as.get(name, name) if files else name
        if files:
            if name not in UPLOADS:
                raise HttpError(400, f"{cut(name)!r} is not an upload this service takes; the uploads are "
                                     f"{', '.join([*files_as, *UPLOADS])}", name)
            if len(values) > 1:
                raise HttpError(400, f"{name} is given {len(values)} times; send one file", name)
            uploads[name] = await _save(files[0], uploads_dir, name)
        else:
            given[name] = values if len(values) > 1 else values[0]
    return given, uploads, True


async def _save(upload, folder: Path, name: str) -> Path:
    """An upload saved as `folder/NAME.EXT` (the client's file name goes no further than its extension)."""
    suffix = Path(upload.filename or "").suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            out.write(chunk)
    if path.stat().st_size == 0:
        raise HttpError(400, f"{name} is an empty file", name)
    return path


async def _event_stream(store: Store, video_id: str, last: int, request: Request):
    """Each event after `last` as it is recorded, until the job has finished (or is gone)."""
    quiet = 0.0
    while True:
        row = await run_in_threadpool(store.get, video_id)  # first: a finished job's events are all recorded
        rows = await run_in_threadpool(store.events, video_id, last)
        for event in rows:
            last = event["n"]
            yield f"id: {event['n']}\nevent: {event['type']}\ndata: {json.dumps(event['data'])}\n\n"
        if row is None or row["status"] in FINISHED:
            return
        if await request.is_disconnected():
            return
        quiet = 0.0 if rows else quiet + 0.2
        if quiet >= 15:
            quiet = 0.0
            yield ": still working\n\n"
        await asyncio.sleep(0.2)


def _public_settings(sidecar: Path, state_dir: Path, video_id: str, offer: Offer) -> dict:
    """The sidecar as clients see it: no paths of the server (the output is its URL, the uploads their fields,
    the LoRAs their names)."""
    text = sidecar.read_text()
    text = text.replace(json.dumps(str(state_dir / "videos" / video_id / "video.mp4"))[1:-1],
                        f"/v1/videos/{video_id}/content")
    for http in UPLOADS:
        text = re.sub(rf'"[^"]*/uploads/{video_id}/{http}[^"]*"', f'"{http}"', text)
    settings = json.loads(text.replace(json.dumps(str(state_dir))[1:-1] + "/", ""))
    names = {str(Path(path.rsplit(":", 1)[0] if ":" in Path(path).name else path).expanduser().resolve()): name
             for name, path in offer.loras.items()}
    if isinstance(settings.get("live"), dict) and settings["live"].get("hls"):  # a live job's stream: its URL
        settings["live"]["hls"] = f"/v1/videos/{video_id}/live.m3u8"
    for lora in settings.get("model", {}).get("loras", []):
        lora["path"] = names.get(lora.get("path"), "(a LoRA of the service)")
    return settings


def _models(service: Service) -> list[dict]:
    from ..models.hub import cached_snapshot
    from ..models.naming import resolve_model
    from ..models.registry import load_registry

    registry = load_registry()
    workers = service.scheduler.health()
    out = []
    for name in service.offer.model_names():
        if name in registry.families:
            out.append({"id": name, "object": "model", "created": 0, "owned_by": "skyreels", "kind": "family",
                        "members": registry.families[name]})
            continue
        spec = resolve_model(name, None)
        out.append({"id": name, "object": "model", "created": 0, "owned_by": "skyreels", "kind": spec.kind,
                    "size": spec.size, "native": f"{spec.width}x{spec.height}x{spec.frames}",
                    "cached": cached_snapshot(spec) is not None or spec.is_tiny,
                    "held_by": [w["name"] for w in workers if spec.alias in w["models"]]})
    return out


def _submit_schema() -> dict:
    """The request body in the OpenAPI schema, from the same table the fields are checked against."""
    from .options import submit_properties

    properties = submit_properties()
    form = {**properties, **{name: {"type": "string", "format": "binary"} for name in UPLOADS}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "properties": properties}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form}}}}}
