"""The exceptions the library raises for problems a user can fix, and how their messages name a setting.

The CLI turns each into one line on stderr and an exit code; a Python caller gets a normal exception with
the same message, spelled for Python: a message names a setting through `setting()`, which writes
`--frames 17` while the command line is running (`command_line_spelling()`) and `frames=17` otherwise.
`field` on an error names the setting that is wrong (a Request or LoadOptions field), for callers that
point at it: a batch file's line, an HTTP field. The service's messages name settings as JSON fields
(`http_spelling()`: `"frames": 17`, and the uploads by their field: `input_reference`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager


class SkyreelsError(Exception):
    """A problem with the user's input or environment: message says what and how to fix it."""

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the setting at fault, when there is one


class UsageError(SkyreelsError):
    """A bad option value or combination."""


class ModelError(SkyreelsError):
    """An unknown model, a model of the wrong kind, or one that cannot be found or loaded."""


class InputFileError(SkyreelsError):
    """An image or video given as input that is missing or unreadable."""


class OutputError(SkyreelsError):
    """An output path that exists already or cannot be written."""


class DeviceError(SkyreelsError):
    """A device that was asked for but is not there."""


class ResumeError(SkyreelsError):
    """A --resume that has no saved state or whose settings differ."""


class OutOfMemory(SkyreelsError):
    """The GPU ran out of memory; the message names a plan predicted to fit."""


class Cancelled(SkyreelsError):
    """The run was cancelled (its `cancel` event was set); a diffusion forcing run keeps its finished windows
    for `resume=True`."""

    exit_code = 130


class PeerLost(SkyreelsError):
    """Another process of a context-parallel run stopped (it, or its machine, says why)."""

    exit_code = 1


class SkyreelsWarning(UserWarning):
    """Something a user may not expect (an input changed on the way in, a prompt cut short); the run goes on.

    The CLI prints each as one `warning: ...` line on stderr (none with --quiet); a Python caller gets
    an ordinary warning it can filter, record or turn into an error with the `warnings` module.
    """


def warn(message: str) -> None:
    """Say `message` once as a SkyreelsWarning (one line: what happened and what to do about it)."""
    import warnings

    warnings.warn(SkyreelsWarning(message), stacklevel=2)


# ------------------------------------------------------------------ naming a setting in a message

_SPELLING: contextvars.ContextVar[str] = contextvars.ContextVar("skyreels_spelling", default="python")
# Settings whose command-line flag is not --name-with-dashes.
FLAGS = {"output": "-o", "loras": "--lora", "vram_gb": "--vram"}
# Settings whose HTTP field is not their name: input files arrive as uploads under OpenAI's field names.
HTTP_FIELDS = {"image": "input_reference", "end_image": "end_reference", "video": "input_video"}
_UNSET = object()


@contextmanager
def command_line_spelling() -> Iterator[None]:
    """Messages raised inside name settings as flags (`--frames 17`): the CLI's own spelling."""
    token = _SPELLING.set("cli")
    try:
        yield
    finally:
        _SPELLING.reset(token)


@contextmanager
def file_spelling() -> Iterator[None]:
    """Messages raised inside name settings as a TOML file writes them (`frames = -4`)."""
    token = _SPELLING.set("file")
    try:
        yield
    finally:
        _SPELLING.reset(token)


@contextmanager
def http_spelling() -> Iterator[None]:
    """Messages raised inside name settings as the service's JSON fields (`"frames": -4`); an upload is named by
    its field alone (its path is the server's business)."""
    token = _SPELLING.set("http")
    try:
        yield
    finally:
        _SPELLING.reset(token)


def on_command_line() -> bool:
    return _SPELLING.get() == "cli"


def setting(name: str, value: object = _UNSET, *, quoted: bool = False) -> str:
    """How the user writes setting `name` (with `value`): `--base-frames 3` on the command line,
    `base_frames=3` from Python (`quoted`: `--attention 'fast'` on the command line too). A true flag
    alone (`setting("overwrite", True)`) is `--overwrite`."""
    spelling = _SPELLING.get()
    if spelling == "cli":
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        if value is _UNSET or value is True:
            return flag
        return f"{flag} {value!r}" if quoted else f"{flag} {value}"
    if spelling == "file":
        import json

        return name if value is _UNSET else f"{name} = {json.dumps(value) if isinstance(value, str) else value}"
    if spelling == "http":
        import json

        if name in HTTP_FIELDS or value is _UNSET:
            return f'"{HTTP_FIELDS.get(name, name)}"'
        return f'"{name}": {json.dumps(value, default=str)}'
    return name if value is _UNSET else f"{name}={value!r}"


def kept_after_stop(resumable: bool) -> str:
    """What a run stopped early leaves behind (Ctrl-C, cancel, out of memory, a lost process): a diffusion forcing
    run's finished windows, which the same run with resume continues; otherwise nothing."""
    return f"the finished windows are kept: {again_with('resume')} to continue" if resumable else \
        "nothing was written"


def again_with(name: str) -> str:
    """The advice to repeat the call with a flag set: `run the same command with --resume`,
    `run it again with resume = true` or `call again with resume=True`."""
    spelling = _SPELLING.get()
    if spelling == "cli":
        return f"run the same command with {setting(name, True)}"
    if spelling == "http":
        return f'submit it again with "{name}": true'
    return f"run it again with {name} = true" if spelling == "file" else f"call again with {name}=True"
