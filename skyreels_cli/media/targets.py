"""Where a run's video goes: the -o value turned into an output target, and default names."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import OutputError, UsageError, setting

FRAME_DIGITS = 6
SLUG_MAX = 40
NAME_MAX = 255  # bytes in one file name on common file systems


@dataclass(frozen=True)
class OutputTarget:
    kind: str  # "mp4" or "png"
    path: Path  # the final .mp4 file, or the PNG frames folder
    sidecar: Path  # where the settings JSON ends up (inside the folder for PNG)
    work_dir: Path  # hidden folder beside the output: resume state, finished segments
    preview: Path  # what is finished so far: NAME.partial.mp4, or the folder DIR.partial/ the frames are built in

    @property
    def lock(self) -> Path:
        return self.work_dir.with_name(self.work_dir.name + ".lock")

    @property
    def build_sidecar(self) -> Path:
        """Where the sidecar is written before the output is put in place."""
        return self.preview / self.sidecar.name if self.kind == "png" else self.sidecar


def default_output_name(prompt: str, seed: int, now: datetime | None = None) -> str:
    """A name that sorts by time and says what the video is: `20250101-120000_42_a-red-fox.mp4`."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{seed}_{_slug(prompt)}.mp4"


def _slug(prompt: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    slug = ""
    for word in re.findall(r"[a-z0-9]+", ascii_text.lower()):
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > SLUG_MAX:
            # Cut only a first word that alone is too long; otherwise stop at a word boundary.
            slug = slug or word[:SLUG_MAX]
            break
        slug = candidate
    return slug or "video"


def resolve_output(
    output: str | None,
    *,
    prompt: str,
    seed: int,
    overwrite: bool,
    resume: bool = False,
    inputs: tuple[str | None, ...] = (),
    now: datetime | None = None,
    folder: str | Path | None = None,
    create: bool = True,
) -> OutputTarget:
    """Turn the -o value into an OutputTarget, refusing anything that would touch files that are not ours.

    No `output`: a default name in `folder` (default: outputs/ here). Creates missing parent folders
    (unless not `create`: then only checks that they could be) and nothing else. `inputs` are the run's
    input files, which must not lie inside the output.
    """
    if output is None:
        output = str(Path(folder if folder is not None else "outputs") / default_output_name(prompt, seed, now))
    if not output.strip():
        raise UsageError(f"{setting('output')} is empty; give NAME.mp4 for a video or DIR/ for PNG frames", field="output")
    _check_characters(output)
    path = Path(output)
    if path.name in ("", ".", ".."):  # "./", "..": the folder they name
        path = path.resolve()
        if not path.name:
            raise UsageError(f"{setting('output', output, quoted=True)} is the top folder; give NAME.mp4 for a video or DIR/ "
                             "for PNG frames", field="output")
    _check_names(path)
    if output.endswith(("/", os.sep)) or (path.is_dir() and not output.lower().endswith(".mp4")):
        target = _png_target(path)
    elif output.lower().endswith(".mp4"):
        target = _mp4_target(path)
    else:
        raise UsageError(
            f"{setting('output', output, quoted=True)} is neither an .mp4 file nor a folder; "
            f"use {setting('output', 'NAME.mp4')} for a video or {setting('output', 'DIR/')} for PNG frames", field="output"
        )
    _check_inputs(target, inputs)
    _check_existing(target, output, overwrite or resume)
    if create:
        _ensure_writable_parent(target.path)
    else:
        _check_writable_parent(target.path)
    return target


def _check_characters(output: str) -> None:
    """Refuse control characters (newline, tab, escape, NUL, ...) in -o: they break every script that reads the
    printed path back (`$(skyreels ... -q)`, one path a line) and most terminals that show it."""
    for position, char in enumerate(output):
        if unicodedata.category(char) == "Cc":
            what = CONTROL_NAMES.get(char, f"the control character U+{ord(char):04X}")
            raise UsageError(f"{setting('output', output, quoted=True)} holds {what} (character {position + 1}); choose a name without "
                             "newlines, tabs or other control characters")


CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte",
                 "\x1b": "an escape character"}


def _mp4_target(path: Path) -> OutputTarget:
    return OutputTarget(
        kind="mp4",
        path=path,
        sidecar=path.with_name(path.name + ".json"),
        work_dir=path.with_name(f".{path.name}.skyreels"),
        preview=path.with_name(f"{path.stem}.partial.mp4"),
    )


def _png_target(path: Path) -> OutputTarget:
    return OutputTarget(
        kind="png", path=path, sidecar=path / "settings.json", work_dir=path.with_name(f".{path.name}.skyreels"),
        preview=path.with_name(f"{path.name}.partial"),
    )


def _check_names(path: Path) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UsageError(f"{setting('output')}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long; "
                             f"file systems allow {NAME_MAX}; choose a shorter name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{setting('output', path)}: {parent} is a file, not a folder; choose another {setting('output')}")
            break


def _check_existing(target: OutputTarget, output: str, replacing: bool) -> None:
    path = target.path
    if target.kind == "mp4" and path.is_dir():
        raise OutputError(f"{setting('output', output)}: {path} is a folder; give a new file name, or {path}/ for PNG frames in it")
    if target.kind == "png" and path.exists() and not path.is_dir():
        raise OutputError(f"{setting('output', output)}: {path} is a file, not a folder; choose another {setting('output')}")
    if target.preview.exists() and not target.work_dir.is_dir():
        raise OutputError(f"{target.preview} exists and was not made by skyreels; move it or choose another {setting('output')}")
    if target.kind == "png" and path.is_dir() and any(path.iterdir()) and not is_png_output(path):
        raise OutputError(f"folder {path} holds files skyreels did not write; choose a new or empty folder for {setting('output')}")
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not replacing:
        raise OutputError(f"output {output} already exists; pass {setting('overwrite', True)} to replace it or choose another {setting('output')}")


def is_png_output(folder: Path) -> bool:
    """A folder of frames with the settings.json a finished skyreels run writes, and nothing else."""
    try:
        settings = json.loads((folder / "settings.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(settings, dict) or not ({"skyreels", "skyreels_version"} & settings.keys()):
        return False
    frame = re.compile(rf"\d{{{FRAME_DIGITS}}}\.png")
    return all(p.name == "settings.json" or frame.fullmatch(p.name) for p in folder.iterdir())


def _check_inputs(target: OutputTarget, inputs: tuple[str | None, ...]) -> None:
    for given in inputs:
        if not given:
            continue
        where = Path(given).resolve()
        inside = [target.path.resolve()] if target.kind == "mp4" else [target.path.resolve(), target.preview.resolve()]
        if any(where == place or place in where.parents for place in inside):
            raise OutputError(f"the input {given} is inside the output {target.path}; choose another {setting('output')}")


def _ensure_writable_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create folder {parent} for output {path} ({err.strerror}); choose another {setting('output')}"
        ) from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"folder {parent} is not writable; fix its permissions or choose another {setting('output')}")


def _check_writable_parent(path: Path) -> None:
    """What `_ensure_writable_parent` would do, without creating anything: the nearest folder that exists
    must let us create the rest."""
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"folder {existing} is not writable; fix its permissions or choose another {setting('output')}")


def frame_name(index: int) -> str:
    return f"{index:0{FRAME_DIGITS}d}.png"
