"""Files that readers see whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Have write() fill a temp file beside path, fsync it, then rename it over path: readers see the old file or
    the whole new one. The temp file is this process's own, so two processes writing one path never mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # Windows cannot open a directory to fsync the rename
        fsync_file(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(new: Path, final: Path, trash: Path) -> None:
    """Put the finished folder `new` in place of `final`, moving an old `final` to `trash` first."""
    import shutil

    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(new, final)
    if trash.exists():
        shutil.rmtree(trash)
    if os.name == "posix":
        fsync_file(final.parent)
