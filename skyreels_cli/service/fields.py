"""An HTTP submission to a library `Job`: which fields a client may give, and what the service decides itself.

A client gives OpenAI's fields (`model`, `prompt`, `seconds`, `size` as "960x544", the start image as the
upload `input_reference`) and ours: `command`, every request field of that command (`frames`, `seed`,
`steps`, window settings, `shots`, ...), the run options of `run_options.RUN_OPTIONS` but those the
service owns (`device`, `vram_gb`: each worker plans for its own GPU), `loras` by the names the service
was started with, `enhance`, a `script` (a shot list's TOML text), `priority` and `gpus`. Every default and
check is the library's (`Job.from_settings`, then `sk.check` in `api.py`), its messages spelled as JSON
fields (`errors.http_spelling`). What would reach the server's disk is refused: input files come as
uploads, never as paths, and the output is chosen by the service.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.job import COMMAND_FIELDS, COMMANDS, Job
from ..core.request import FIELD_TYPES, PATH_FIELDS
from ..errors import HTTP_FIELDS, SkyreelsError, http_spelling
from ..run_options import BY_NAME

UPLOADS = {http: name for name, http in HTTP_FIELDS.items()}  # input_reference -> image, ...
OPENAI_FIELDS = ("model", "prompt", "seconds", "size")
SERVICE_FIELDS = ("command", "priority", "gpus", "script", "enhance", "keep_last")
OWNED = {  # fields the service decides: why a client cannot give them
    "device": "each worker runs on its own device",
    "vram_gb": "each worker plans for its own GPU's memory",
    "output": "each video is kept under its id: download it from /v1/videos/{id}/content",
    "output_dir": "each video is kept under its id: download it from /v1/videos/{id}/content",
    "overwrite": "each job writes its own new video",
    "resume": "the service resumes interrupted jobs itself",
    "prompt_original": "it is recorded when a prompt is enhanced",
    "ulysses": 'it lays out a job over several GPUs, so it comes with "gpus": N',
    "ring": 'it lays out a job over several GPUs, so it comes with "gpus": N',
}
LAYOUT = ("ulysses", "ring")  # the service's to choose unless a job asks for several GPUs
CLIENT_LOAD_OPTIONS = tuple(name for name in BY_NAME if name not in OWNED)
REQUEST_NAMES = tuple(dict.fromkeys(n for c in COMMANDS for n in COMMAND_FIELDS[c] if n not in PATH_FIELDS))
PRIORITY_RANGE = (-100, 100)
MAX_GPUS = 1 << 10


class HttpError(Exception):
    """A refused request: the HTTP status, a one-line message, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class Offer:
    """What this service offers its clients (`skyreels serve`'s options)."""

    models: tuple[str, ...] = ()          # the model names clients may give; empty: every registry name
    loras: dict[str, str] = field(default_factory=dict)  # name -> FILE[:SCALE], as the operator gave them
    gpus: int = 0                          # GPU workers (0: the service runs on the CPU)
    gpus_elsewhere: bool = False           # the workers' GPUs are on other machines (a Ray cluster)
    max_prompt_chars: int = 10_000
    max_frames: int = 2880                 # a job's length (two minutes at 24 fps); more is answered 413
    max_seconds: float = 120.0
    for_clients: bool = True               # outputs go to HTTP clients: their tags name no server path
    keep_last: float | None = None         # a live job's segments kept on disk, in seconds, unless it says (None: all)
    max_live_seconds: float | None = None  # a live job's most (None: until it is stopped)

    def model_names(self) -> list[str]:
        from ..models.registry import load_registry

        return list(self.models) or load_registry().names()

    def default_model(self, command: str) -> str | None:
        """The first offered model that runs `command` (None: the registry's default)."""
        from ..models.naming import resolve_model

        for name in self.models:
            try:
                resolve_model(name, command)
                return name
            except SkyreelsError:
                continue
        return None


@dataclass(frozen=True)
class Submission:
    job: Job
    priority: int = 0
    gpus: int = 1
    uploads: dict[str, Path] | None = None  # the files the job reads, by upload field, where not the request's own


def known_fields() -> tuple[str, ...]:
    """Every field `POST /v1/videos` takes (the uploads besides)."""
    return tuple(dict.fromkeys((*OPENAI_FIELDS, *SERVICE_FIELDS, *REQUEST_NAMES, *CLIENT_LOAD_OPTIONS)))


def submission(given: dict, uploads: dict[str, Path], offer: Offer, *, form: bool = False) -> Submission:
    """The job a submission describes, checked as far as the fields go (`sk.check` does the rest).

    `given`: the fields (JSON values, or text from a form when `form`); `uploads`: the files received, by field
    (input_reference, end_reference, input_video), already saved where the service keeps them."""
    given = dict(given)
    gpus = given.pop("gpus", 1)
    if form:
        gpus = _from_text("gpus", gpus)
    gpus = _whole(gpus, "gpus", 1, MAX_GPUS)
    _refuse_unknown(given, layout=gpus > 1)
    if form:
        given = {name: _from_text(name, value) for name, value in given.items()}
    for name in ("prompt", "negative_prompt"):
        _limit(name, given.get(name), offer)
    _limit_shots(given.get("shots"), offer)
    command = given.pop("command", None) or ("i2v" if "input_reference" in uploads else "t2v")
    if command not in COMMANDS:
        raise HttpError(400, f'"command": {json.dumps(command)} is not one of {", ".join(COMMANDS)}', "command")
    priority = _whole(given.pop("priority", 0), "priority", *PRIORITY_RANGE)
    settings = _openai(given)
    script = settings.pop("script", None)
    if script is not None:
        settings = {**_script_settings(script, offer), **settings}
    for name in settings:
        if name in REQUEST_NAMES and name not in COMMAND_FIELDS[command]:
            takes = [c for c in COMMANDS if name in COMMAND_FIELDS[c]]
            raise HttpError(400, f'"{name}" is not a field of {command} ({" and ".join(takes)} take it)', name)
    for http, name in UPLOADS.items():
        if http in uploads:
            if name not in COMMAND_FIELDS[command]:
                raise HttpError(400, f"{http} is not taken by {command}", http)
            settings[name] = str(uploads[http])
    if command == "i2v" and "image" not in settings:
        raise HttpError(400, "i2v needs a start image: send it as the upload input_reference", "input_reference")
    settings["model"] = _model(settings.get("model"), command, offer)
    if "loras" in settings:
        settings["loras"] = _loras(settings["loras"], offer)
    if "enhance" in settings:
        settings["enhance"] = _enhance(settings["enhance"])
    if settings.get("live") and gpus > 1:
        raise HttpError(400, '"gpus": a live job runs on one worker, which reads its prompt changes; leave "gpus" '
                             "out", "gpus")
    if settings.get("live") and "keep_last" not in settings and offer.keep_last is not None:
        settings["keep_last"] = offer.keep_last  # the service's default (serve --keep-last)
    with http_spelling():
        try:
            job = Job.from_settings(command, settings)
        except SkyreelsError as err:
            raise as_http(err) from None
    return Submission(job, priority, gpus)


def as_http(err: SkyreelsError, uploads: dict[str, Path] | None = None) -> HttpError:
    """A library error as a 400 naming the HTTP field; the server's paths of the uploads do not show."""
    message = str(err)
    param = HTTP_FIELDS.get(err.field, err.field) if err.field else None
    for http, path in (uploads or {}).items():
        if str(path) in message:
            message = message.replace(str(path), "(the uploaded file)")
            param = param or http
    message = re.sub(r"\S*/uploads/video_[0-9a-f]{24}/(\w+)\S*", r"\1", message)
    return HttpError(400, message, param)


# ------------------------------------------------------------------ each kind of field

def _refuse_unknown(given: dict, layout: bool = False) -> None:
    """Refuse a field no client may give; `layout`: the job asks for several GPUs, so it may lay them out."""
    for name in given:
        if layout and name in LAYOUT:
            continue
        if name in UPLOADS:
            raise HttpError(400, f"{name} is a file: send it as a multipart upload", name)
        if name in PATH_FIELDS:
            raise HttpError(400, f'"{name}" would be a path on the server; send the file as the multipart upload '
                                 f"{HTTP_FIELDS[name]}", name)
        if name in OWNED:
            raise HttpError(400, f'"{name}" is chosen by the service: {OWNED[name]}', name)
        if name not in known_fields():
            raise HttpError(400, f"unknown field {name!r}; known fields: {', '.join(known_fields())}, and the "
                                 f"uploads {', '.join(UPLOADS)}", name)


def _kind(name: str) -> type:
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    if name in BY_NAME:
        return tuple if BY_NAME[name].repeatable else BY_NAME[name].type
    return {"priority": int, "gpus": int, "seconds": float, "keep_last": float}.get(name, str)


def _from_text(name: str, value):
    """A form field's text as the value its field holds: "42" -> 42, "true" -> True, JSON for lists."""
    kind = _kind(name)
    if isinstance(value, list):  # a repeated form field
        return [_from_text(name, v) for v in value] if kind is tuple else _from_text(name, value[-1])
    if not isinstance(value, str) or kind is str:
        return value
    text = value.strip()
    if name == "enhance" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind in (tuple, list) or name == "shots":
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise HttpError(400, f'"{name}" is not valid JSON: give a list, e.g. ["style"]', name) from None
        return [text] if kind is tuple else text
    if kind is bool:
        if text.lower() in ("true", "1", "on", "yes"):
            return True
        if text.lower() in ("false", "0", "off", "no"):
            return False
        raise HttpError(400, f'"{name}": {json.dumps(value)} is not true or false', name)
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise HttpError(400, f'"{name}": {json.dumps(value)} is not {what}', name) from None
    if kind is int:
        return int(number) if math.isfinite(number) and number.is_integer() else number
    return number


def _limit(name: str, text, offer: Offer) -> None:
    if isinstance(text, str) and len(text) > offer.max_prompt_chars:
        raise HttpError(413, f'"{name}" is {len(text)} characters long; this service takes at most '
                             f"{offer.max_prompt_chars}", name)


def _limit_shots(shots, offer: Offer) -> None:
    """A shot's prompt and negative prompt are prompts: the same limit (a shot is a dict or a list)."""
    if not isinstance(shots, (list, tuple)):
        return
    for i, shot in enumerate(shots):
        texts = shot.values() if isinstance(shot, dict) else shot if isinstance(shot, (list, tuple)) else ()
        longest = max((len(t) for t in texts if isinstance(t, str)), default=0)
        if longest > offer.max_prompt_chars:
            raise HttpError(413, f"shot {i + 1} has a text {longest} characters long; this service takes at most "
                                 f"{offer.max_prompt_chars} in a prompt", "shots")


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f'"{name}": {json.dumps(value)} must be a whole number from {low} to {high}', name)
    return value


def _openai(given: dict) -> dict:
    """OpenAI's `size` ("960x544") and `seconds` ("4") as our width, height and seconds."""
    size = given.pop("size", None)
    if size is not None:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size) if isinstance(size, str) else None
        if match is None:
            raise HttpError(400, f'"size": {json.dumps(size)} is not WIDTHxHEIGHT, e.g. "960x544"', "size")
        for name in ("width", "height"):
            if name in given:
                raise HttpError(400, f'give "size" or "{name}", not both', name)
        given["width"], given["height"] = int(match[1]), int(match[2])
    seconds = given.get("seconds")
    if isinstance(seconds, str):
        try:
            given["seconds"] = float(seconds)
        except ValueError:
            raise HttpError(400, f'"seconds": {json.dumps(seconds)} is not a number of seconds', "seconds") from None
    return given


def _model(name, command: str, offer: Offer) -> str | None:
    """A model the service offers, by name (a client never names a folder or an arbitrary repo)."""
    if name is None:
        return offer.default_model(command)
    offered = offer.model_names()
    if not isinstance(name, str) or name not in offered:
        raise HttpError(400, f'"model": {json.dumps(name)} is not offered here; use one of: {", ".join(offered)}',
                        "model")
    return name


def _loras(names, offer: Offer) -> list[str]:
    """LoRAs by the names the service was started with, each with an optional :SCALE."""
    items = [names] if isinstance(names, str) else names
    if not isinstance(items, (list, tuple)) or not all(isinstance(n, str) for n in items):
        raise HttpError(400, '"loras" must be a list of names, e.g. ["style"] or ["style:0.8"]', "loras")
    out = []
    for item in items:
        name, _, scale = item.partition(":")
        if name not in offer.loras:
            offered = ", ".join(offer.loras) or "none (start it with --lora NAME=FILE)"
            raise HttpError(400, f'"loras": {json.dumps(name)} is not a LoRA of this service; it offers: {offered}',
                            "loras")
        path = offer.loras[name]
        if scale:
            path = f"{path.rsplit(':', 1)[0] if _has_scale(path) else path}:{scale}"
        out.append(path)
    return out


def _has_scale(text: str) -> bool:
    head, sep, tail = text.rpartition(":")
    try:
        float(tail)
    except ValueError:
        return False
    return bool(sep and head)


def _enhance(value) -> str | None:
    """true: the registry's enhancer; or an enhancer of the registry by name (never a folder)."""
    from ..core.enhance import enhancer_table

    if isinstance(value, bool):
        return "default" if value else None
    _, table = enhancer_table()
    if isinstance(value, str) and value in table:
        return value
    raise HttpError(400, f'"enhance": {json.dumps(value)}: give true, or one of {", ".join(table)}', "enhance")


def _script_settings(text, offer: Offer) -> dict:
    """A shot list's TOML text as settings (`shots` and the file's settings), checked as the fields are."""
    from ..core.shot_list import read_script

    if not isinstance(text, str):
        raise HttpError(400, '"script" is the text of a shot list (TOML with [[shot]] tables)', "script")
    _limit("script", text, offer)
    with tempfile.TemporaryDirectory(prefix="skyreels-script-") as folder:
        path = Path(folder) / "script.toml"
        path.write_text(text)
        with http_spelling():
            try:
                script = read_script(path)
            except SkyreelsError as err:
                raise HttpError(400, f"script: {str(err).replace(str(path), 'script')}", "script") from None
    settings = {name: value for name, value in script.settings.items() if value is not None}
    for name in settings:
        if name in PATH_FIELDS or name in OWNED or name not in known_fields():
            raise HttpError(400, f'script: "{name}" cannot be set by a shot list sent to the service (input files '
                                 "come as uploads, the rest is the service's)", "script")
    return {**settings, "shots": [shot._asdict() for shot in script.shots]}



