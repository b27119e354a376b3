"""A job's files between the service and a worker on another machine, with no shared filesystem.

A worker of a cluster runs its job in a scratch folder of its own machine laid out as the service's state folder
is (`videos/ID/`, `uploads/ID/`). The service sends it the job's uploads, and when the job continues an
interrupted run, the library's work folder it holds (resume state, finished segments, their list): `read`, then
`materialize` on the worker. After each finished window the worker sends back what changed in the job's video
folder (`Changes`: the new segment, the segment list, the window log, the resume state), and at the end the video
and its sidecar, each file whole; the service writes them into its own folder (`apply`), the resume state last, so
that what it holds is always a state the library can resume from (a state never points at a segment the service
lacks), and makes the preview from its segments itself (`rebuild_preview`), as the library's sink does.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..forcing.resume import STATE_FILE
from ..media.files import replace_atomically

# Not shipped: the preview (each side makes its own from the segments), the run's lock, ffmpeg's scratch, temp files.
SKIPPED_SUFFIXES = (".partial.mp4", ".lock", ".log", ".tmp")
SKIPPED_NAMES = ("concat.txt",)
SEGMENTS = "segments.json"


def shipped(path: Path) -> bool:
    return not path.name.endswith(SKIPPED_SUFFIXES) and path.name not in SKIPPED_NAMES


def read(root: Path, folders: list[str]) -> dict[str, bytes]:
    """Every shipped file under `root/FOLDER` for each folder (paths relative to `root`, as text)."""
    out = {}
    for name in folders:
        folder = Path(root) / name
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file() and shipped(path):
                out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def materialize(root: Path, folders: list[str], files: dict[str, bytes]) -> None:
    """`root/FOLDER` for each folder holding exactly `files` (what a run left there before is removed first)."""
    root = Path(root)
    for name in folders:
        shutil.rmtree(root / name, ignore_errors=True)
    for rel, data in files.items():
        path = _inside(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@dataclass
class Changes:
    """What changed in a folder since it was last looked at: files new or changed (whole), files gone."""

    files: dict[str, bytes] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"files": self.files, "removed": self.removed}


class Watcher:
    """Watches one folder under `root` for changes (by size and modification time)."""

    def __init__(self, root: Path, folder: str) -> None:
        self.root = Path(root)
        self.folder = folder
        self._seen: dict[str, tuple[int, int]] = {}

    def changes(self) -> Changes:
        now: dict[str, tuple[int, int]] = {}
        out = Changes()
        folder = self.root / self.folder
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if not path.is_file() or not shipped(path):
                continue
            rel = path.relative_to(self.root).as_posix()
            stat = path.stat()
            now[rel] = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(rel) != now[rel]:
                out.files[rel] = path.read_bytes()
        out.removed = sorted(set(self._seen) - set(now))
        self._seen = now
        return out


def apply(root: Path, changes: dict, rewrite: tuple[str, str] | None = None) -> None:
    """Write `changes` (`Changes.to_dict()`) under `root`: each file atomically, the resume state last; then the
    files gone are removed, and folders left empty. `rewrite`: (old, new) text replaced in JSON files (the worker's
    scratch folder in a sidecar becomes the service's)."""
    root = Path(root)
    files = changes.get("files", {})
    for rel in sorted(files, key=lambda r: (Path(r).name == STATE_FILE, r)):
        data = files[rel]
        if rewrite is not None and rel.endswith(".json"):
            data = data.decode().replace(*rewrite).encode()
        path = _inside(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp, data=data: tmp.write_bytes(data))
    for rel in changes.get("removed", []):
        path = _inside(root, rel)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def rebuild_preview(work_dir: Path, preview: Path) -> None:
    """The preview (everything finished so far) joined from the segments the service holds, as the sink joins
    them (stream copy); removed when there are none."""
    import json
    import subprocess

    from ..media.ffmpeg import ffmpeg

    try:
        segments = json.loads((work_dir / SEGMENTS).read_text())["segments"]
    except (OSError, ValueError, KeyError):
        segments = []
    if not segments or not all((work_dir / s["file"]).is_file() for s in segments):
        preview.unlink(missing_ok=True)
        return
    listing = work_dir / f".preview.{os.getpid()}.txt"
    listing.write_text("".join(f"file '{s['file']}'\n" for s in segments))
    try:
        cmd = [ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-f", "concat", "-i", str(listing), "-map", "0:v",
               "-c", "copy", "-movflags", "+faststart", "-f", "mp4"]
        replace_atomically(preview, lambda tmp: subprocess.run([*cmd, str(tmp)], check=True, capture_output=True))
    finally:
        listing.unlink(missing_ok=True)


def _inside(root: Path, rel: str) -> Path:
    """`root/rel`, refused if it would lead outside `root` (a worker names only its job's own files)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or path == root.resolve():
        raise ValueError(f"{rel!r} is not a file inside the state folder")
    return path
