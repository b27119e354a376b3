"""Where a run's video goes: the -o value turned into an output target, and default names."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import OutputError, UsageError

FRAME_DIGITS = 6
SLUG_MAX = 40


@dataclass(frozen=True)
class OutputTarget:
    kind: str  # "mp4" or "png"
    path: Path  # the final .mp4 file, or the PNG frames directory
    sidecar: Path  # settings JSON written next to the output by finish()
    work_dir: Path  # hidden folder for in-progress data and resume state
    preview: Path | None  # mp4 only: plays everything finished so far during a run


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
    now: datetime | None = None,
) -> OutputTarget:
    """Turn the -o value into an OutputTarget, creating missing parent folders and nothing else."""
    if output is None:
        output = str(Path("outputs") / default_output_name(prompt, seed, now))
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        target = _png_target(Path(output))
        exists = any((target.path / name).exists() for name in (frame_name(0), target.sidecar.name))
    elif output.lower().endswith(".mp4"):
        target = _mp4_target(Path(output))
        exists = target.path.exists()
    else:
        raise UsageError(
            f"-o {output!r} is neither an .mp4 file nor a folder; "
            "use -o NAME.mp4 for a video or -o DIR/ for PNG frames"
        )
    if exists and not (overwrite or resume):
        raise OutputError(
            f"output {output} already exists; pass --overwrite to replace it or choose another -o"
        )
    _ensure_writable_parent(target.path)
    return target


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
        kind="png", path=path, sidecar=path / "settings.json", work_dir=path / ".skyreels", preview=None
    )


def _ensure_writable_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create folder {parent} for output {path} ({err.strerror}); choose another -o"
        ) from err
    # An existing PNG folder is written into, so it is the one that must be writable.
    folder = path if path.is_dir() else parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"folder {folder} is not writable; fix its permissions or choose another -o")


def frame_name(index: int) -> str:
    return f"{index:0{FRAME_DIGITS}d}.png"
