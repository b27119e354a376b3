"""The resume state of a diffusion forcing run: written after each window, read by `--resume`.

It holds what is needed to continue exactly: the request and model it belongs to,
the engine's state (prefix latents, the latents that rebuild the decoder's cache,
the generator) and how many frames are already in the output. A few tens of MB at
544x960 however long the video (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import __version__, faults
from ..errors import OutputError, ResumeError, again_with, setting
from ..media.files import replace_atomically
from .engine import EngineState

STATE_FILE = "state.pt"
# One JSON line per finished window (its colour statistics): a record that grows by ~100 bytes a window, kept
# out of the state so the state stays the same size however long the video.
WINDOW_LOG = "windows.jsonl"


def state_path(work_dir: Path) -> Path:
    return work_dir / STATE_FILE


def save_state(work_dir: Path, request: dict, model: dict, state: EngineState, frames_written: int,
               generated: int = 0) -> Path:
    """Write the state atomically: a reader sees the previous window's state or this one's, whole."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(work_dir)

    def write(tmp: Path) -> None:
        torch.save({"request": request, "model": model, "engine": state.to_dict(), "frames_written": frames_written,
                    "generated": generated, "version": __version__}, tmp)
        faults.point("state_saving")  # a kill here leaves the previous state whole

    try:
        replace_atomically(path, write)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError
        reason = getattr(err, "strerror", None) or "the write failed"
        raise OutputError(f"cannot save the resume state in {work_dir} ({reason}); the previous window's state is "
                          f"kept: free disk space, then {again_with('resume')}") from None
    return path


def load_state(work_dir: Path, output: Path) -> dict:
    path = state_path(work_dir)
    if not path.is_file():
        raise ResumeError(f"no saved run to resume for {output}; run it again without {setting('resume', True)}")
    try:
        saved = torch.load(path, weights_only=True)
        saved["engine"] = EngineState.from_dict(saved["engine"])
        return saved
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError):
        raise ResumeError(f"the saved state {path} is unreadable; start over with {setting('overwrite', True)}") from None


def discard_state(work_dir: Path) -> None:
    state_path(work_dir).unlink(missing_ok=True)
    (work_dir / WINDOW_LOG).unlink(missing_ok=True)


def log_window(work_dir: Path, record: dict) -> None:
    """Append one window's record, on disk before that window's state is saved."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / WINDOW_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())


def logged_windows(work_dir: Path, before: int) -> list[dict]:
    """The records of windows 0 .. before-1: those the saved state covers. A record written by a run killed before
    its state was saved (or a line cut short by the kill) is left out, and the log is rewritten without it."""
    path = work_dir / WINDOW_LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("window", before) < before:
            records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records
