"""`Request`: one video, described completely enough to make it again.

The same object is what a Python caller passes, what the CLI builds from its
flags, what the sidecar records and what `--resume` compares. Unset fields
(None) take the model's defaults when the request is resolved against a model
(`resolve.py`); a resolved request has every field that applies filled in.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from ..errors import UsageError

REQUEST_VERSION = 1
PATH_FIELDS = ("image", "end_image", "video")


class Shot(NamedTuple):
    """One part of a shot list (`extend --script`): its prompt and length; None takes the request's value.

    A shot with neither `frames` nor `seconds` lasts one window (`--prompt-file`)."""

    prompt: str
    frames: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Request:
    prompt: str = ""
    negative_prompt: str | None = None  # None: the official list of artefacts to avoid
    height: int | None = None
    width: int | None = None
    aspect: str | None = None  # "16:9", "9:16", "1:1", "4:3", "3:4": picks height and width (core/sizes.py)
    resolution: str | None = None  # "540p" or "720p"; a resolved request keeps only the height and width
    frames: int | None = None  # any positive count; with `video`: the number of new frames
    seconds: float | None = None  # the length in seconds instead of frames (frames = seconds x fps)
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    fps: float | None = None
    seed: int | None = None  # None: drawn when resolved, and recorded
    sigma_grid: str | None = None  # "official" (SkyReels-V2 sampler) or "diffusers"
    image: str | None = None  # start frame (i2v, or diffusion forcing)
    end_image: str | None = None  # last frame (diffusion forcing)
    video: str | None = None  # a video to continue (diffusion forcing)
    # diffusion forcing windows
    base_frames: int | None = None
    overlap: int | None = None
    ar_step: int | None = None
    causal_block: int | None = None
    addnoise: float | None = None
    causal_attention: bool | None = None
    cache: float | None = None  # step cache threshold (0: off); skipped calls change the frames a little
    color_match: str | None = None  # "off", "latent" or "pixel": each window's colour pulled to what it continues
    prompt_original: str | None = None  # the user's prompt when --enhance rewrote it into `prompt`
    shots: tuple[Shot, ...] | None = None  # a shot list (diffusion forcing): frames is their sum (core/script.py)

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))
        if self.shots is not None:  # from JSON or a saved state: dicts (or lists) back to Shots
            shots = tuple(Shot(**s) if isinstance(s, dict) else Shot(*s) for s in self.shots)
            object.__setattr__(self, "shots", shots)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.shots is not None:  # plain dicts: readable in the sidecar, loadable with weights_only
            data["shots"] = [shot._asdict() for shot in self.shots]
        return {"version": REQUEST_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> Request:
        data = dict(data)
        version = data.pop("version", REQUEST_VERSION)
        if version != REQUEST_VERSION:
            raise UsageError(f"request version {version} is not supported (this skyreels reads {REQUEST_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown request field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
        return cls(**data)

    def differences(self, other: Request) -> list[str]:
        """Names of the fields whose values differ."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
