"""`Request`: one video, described completely enough to make it again.

The same object is what a Python caller passes, what the CLI builds from its
flags, what the sidecar records and what `--resume` compares. Unset fields
(None) take the model's defaults when the request is resolved against a model
(`resolve.py`); a resolved request has every field that applies filled in.
"""

from __future__ import annotations

import math
import os
import typing
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
    sampler: str | None = None  # "unipc" (the reference's) or "euler" (flow-matching Euler, what few-step LoRAs use)
    sigmas: tuple[float, ...] | None = None  # the noise level each step starts from, as given (no shift); sets steps
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
    shots: tuple[Shot, ...] | None = None  # a shot list (diffusion forcing): frames is their sum (core/shot_plan.py)
    # extend only: windows until stopped (cancel), frames/seconds then the most; steered by sk.LivePrompts (core/live.py)
    live: bool | None = None

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if self.prompt is None:  # unset, as every other field's None: no prompt (an i2v clip may go without)
            object.__setattr__(self, "prompt", "")
        if self.sigmas is not None:  # "1.0,0.75" (a flag, a form), a list (JSON) or a tuple: a tuple of numbers
            object.__setattr__(self, "sigmas", _sigmas(self.sigmas))
        for f in fields(self):
            if f.name not in ("shots", "sigmas"):
                object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), FIELD_TYPES[f.name]))
        if self.shots is not None:  # from JSON or a saved state: dicts (or lists) back to Shots
            object.__setattr__(self, "shots", _shots(self.shots))

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.sigmas is not None:
            data["sigmas"] = list(self.sigmas)
        if self.shots is not None:  # plain dicts: readable in the sidecar, loadable with weights_only
            data["shots"] = [shot._asdict() for shot in self.shots]
        return {"version": REQUEST_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> Request:
        if not isinstance(data, dict):
            raise UsageError(f"a request is a table of fields, got {type(data).__name__}")
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


def _held(hint) -> type:
    """The type a field's annotation allows besides None: `int | None` -> int, `tuple[Shot, ...] | None` -> tuple."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return typing.get_origin(args[0]) or args[0]


# What each field holds (besides None), from the annotations: the checks of `Request(...)` for a Python caller,
# and of the values a batch or shot-list file gives.
FIELD_TYPES: dict[str, type] = {name: _held(hint) for name, hint in typing.get_type_hints(Request).items()}
_WHAT = {str: "text", int: "a whole number", float: "a number", bool: "True or False"}


def _checked(name: str, value, kind: type):
    """`value` if a `kind` field can hold it (an int is a fine float), else a UsageError naming the field."""
    if value is None or (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value) \
            and value.is_integer():
        hint = f"; give {int(value)}"
    else:
        hint = ""
    raise UsageError(f"{name} must be {_WHAT[kind]}, got {value!r}{hint}", field=name)


def _sigmas(value) -> tuple[float, ...]:
    """Noise levels as a tuple of floats, from a tuple, a list or comma-separated text; checked in resolve."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"sigmas must be noise levels such as 1.0,0.9375,0.8333,0.625, got {value!r}", field="sigmas")
    # text items may hold several levels ("1.0,0.75": a flag or a form field)
    items = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
    items = [] if len(items) == 1 and isinstance(items[0], str) and not items[0].strip() else items
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            out.append(float(item.strip() if isinstance(item, str) else item))
        except (TypeError, ValueError):
            raise UsageError(f"sigmas: {item!r} is not a number; give noise levels such as 1.0,0.9375,0.8333,0.625",
                             field="sigmas") from None
    return tuple(out)


def _shots(shots) -> tuple[Shot, ...]:
    if not isinstance(shots, (list, tuple)):
        raise UsageError(f"Request shots must be a list of Shot(prompt, frames=...), got {type(shots).__name__}",
                         field="shots")
    out = []
    for i, shot in enumerate(shots):
        if isinstance(shot, dict):
            unknown = sorted(set(shot) - set(Shot._fields))
            if unknown:
                raise UsageError(f"shot {i + 1}: unknown key {unknown[0]!r}; known: {', '.join(Shot._fields)}",
                                 field="shots")
            shot = Shot(**shot)
        elif isinstance(shot, (list, tuple)):
            if not 1 <= len(shot) <= len(Shot._fields):
                raise UsageError(f"shot {i + 1} as a list has {len(shot)} items; it takes 1 to {len(Shot._fields)}: "
                                 f"{', '.join(Shot._fields)}", field="shots")
            shot = Shot(*shot)
        else:
            raise UsageError(f"shot {i + 1} must be a Shot(prompt, frames=...), got {shot!r}", field="shots")
        if not isinstance(shot.prompt, str):
            raise UsageError(f"shot {i + 1}: prompt must be text, got {shot.prompt!r}", field="shots")
        for key, kind in (("frames", int), ("guidance", float), ("negative_prompt", str), ("seconds", float)):
            try:
                _checked(key, getattr(shot, key), kind)
            except UsageError:
                raise UsageError(f"shot {i + 1}: {key} must be {_WHAT[kind]}, got {getattr(shot, key)!r}",
                                 field="shots") from None
        out.append(shot)
    return tuple(out)
