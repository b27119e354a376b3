"""Replay: the settings skyreels recorded with a video, read back and merged with the options given now.

Every output carries its settings twice: in the MP4's comment tag (it travels with the file) and in the sidecar
JSON beside it (NAME.mp4.json, or DIR/settings.json for PNG frames), which adds how the run went. A recorded
request is already resolved, so running it again with the same model, dtype and weight storage makes the same frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, setting
from .request import Request
from .resolve import FORCING_FIELDS

SETTINGS_NAME = "settings.json"  # the sidecar inside a PNG frames folder
SIZE_FIELDS = ("height", "width")
# Options that choose the size again: the recorded height and width were derived from the old ones.
RESIZING = ("aspect", "resolution", "image", "video")


@dataclass(frozen=True)
class Recorded:
    """What skyreels recorded about one output."""

    source: Path          # the video, folder or JSON it was read from
    settings: Path        # the file the settings came from (the video itself when read from its tag)
    request: dict         # `Request.to_dict()` of the resolved request
    model: dict           # alias, repo, revision, kind, dtype, quantize, device
    run: dict | None      # timings, frames, runtime, ...: only in the sidecar (None when read from the tag)
    version: str | None   # the skyreels that made it
    shots: list | None = None  # a shot list's frames as made: prompt, first_frame, frames, windows (sidecar only)

    @property
    def model_name(self) -> str:
        """What to pass as --model: the registry alias while it still names the recorded repo, else the repo."""
        from ..models.registry import load_registry

        alias, repo = self.model.get("alias"), self.model.get("repo")
        spec = load_registry().models.get(alias) if alias else None
        return alias if spec is not None and spec.repo == repo else (repo or alias)

    def load_options(self, device_type: str, dtype: str | None, quantize: str) -> tuple[str | None, str]:
        """(dtype, quantize) for loading: the recorded ones unless given (None/"auto"); they change the frames.

        Only on the same kind of device: a bf16 CUDA run replayed on the CPU takes the CPU's default instead.
        """
        recorded_type = str(self.model.get("device", "")).split(":")[0]
        if recorded_type != device_type:
            return dtype, quantize
        return (dtype if dtype is not None else self.model.get("dtype"),
                quantize if quantize != "auto" else self.model.get("quantize", "auto"))


MADE_BY_SKYREELS = "give a video, a PNG frames folder or a settings JSON made by skyreels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def read_recorded(path: str | Path, option: str | None = None) -> Recorded:
    """The settings recorded for a skyreels output: a video, a PNG frames folder or a settings JSON.

    `option` is how the caller names the input in its messages: an option (`--from`) or a command
    (`skyreels info`)."""
    from ..media.images import path_problem

    option = option or setting("from")
    source = Path(path)
    where = f"{option} {path}" if option.startswith("-") else f"{option}: {path}"
    problem = path_problem(source)
    if problem is not None and not source.is_dir():
        raise InputFileError(f"{where} {problem}; {MADE_BY_SKYREELS}")
    if source.is_dir():
        where_json = source / SETTINGS_NAME
        settings = _read_json(where_json)
    elif source.suffix.lower() == ".json":
        where_json = source
        settings = _read_json(where_json)
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        folder = source.parent / SETTINGS_NAME
        here = f" (its folder {source.parent} holds the settings: give the folder)" if folder.is_file() else ""
        raise InputFileError(f"{where} is an image, not a video; {MADE_BY_SKYREELS}{here}")
    else:
        settings, where_json = _video_settings(source, where)
    if settings is None:
        raise InputFileError(f"{where} carries no skyreels settings (a skyreels output has them in its comment tag "
                             f"or in {_sidecar_of(source).name}); a video, PNG folder or settings JSON made by "
                             "skyreels is needed")
    return Recorded(source=source, settings=where_json, request=dict(settings["request"]),
                    model=dict(settings.get("model") or {}), run=settings.get("run"),
                    version=settings.get("skyreels"), shots=settings.get("shots"))


def _sidecar_of(source: Path) -> Path:
    return source / SETTINGS_NAME if source.is_dir() else source.with_name(source.name + ".json")


def _video_settings(video: Path, where: str) -> tuple[dict | None, Path]:
    """The comment tag's settings, completed by the sidecar beside the video when both describe the same run.
    A file ffmpeg cannot read is refused in one line, unless a sidecar named after it still tells."""
    from ..media.videos import read_comment  # ffmpeg's view of the tag, without decoding the frames

    sidecar_path = _sidecar_of(video)
    sidecar = _read_json(sidecar_path)
    try:
        tag = _parse(read_comment(video))
    except InputFileError:
        if sidecar is not None:
            return sidecar, sidecar_path
        raise InputFileError(f"{where} is not a video skyreels can read; {MADE_BY_SKYREELS}") from None
    if sidecar is not None and (tag is None or sidecar["request"] == tag["request"]):
        return sidecar, sidecar_path  # a tag lost in re-encoding: the sidecar named after the video still tells
    return tag, video


def _read_json(path: Path) -> dict | None:
    try:
        return _parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _parse(text: str | None) -> dict | None:
    """Settings written by skyreels (a version and a request), or None for anything else."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(data, dict) and "skyreels" in data and isinstance(data.get("request"), dict):
        return data
    return None


def replay_request(recorded: Recorded, overrides: dict, *, forcing: bool) -> Request:
    """The recorded request with every override that is not None put over it.

    Recorded values that were derived from an overridden one are dropped so they are derived again: the size
    when a new aspect, resolution, image or video is given; the frame count when the length was given in seconds
    (or when --seconds is given now); and, for a model that is not diffusion forcing (`forcing` False), the window
    settings a diffusion forcing model had filled in.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    data = dict(recorded.request)
    if any(name in given for name in RESIZING):
        _drop(data, SIZE_FIELDS, given)
    if "image" in given:
        _drop(data, ("video",), given)
    if "video" in given:
        _drop(data, ("image",), given)
    if "frames" in given:
        _drop(data, ("seconds",), given)
    elif "seconds" in given or data.get("seconds") is not None:
        _drop(data, ("frames",), given)  # recomputed from seconds x fps, so a new --fps keeps the length in seconds
    if not forcing:
        _drop(data, FORCING_FIELDS, given)
    return Request.from_dict({**data, **given})


def _drop(data: dict, names: tuple[str, ...], given: dict) -> None:
    for name in names:
        if name not in given:
            data.pop(name, None)
