"""Settings files (batch files, shot lists): TOML read with the line of every key, for one-line errors.

tomllib keeps no positions, so a key's line is found by scanning the text: headers open sections, keys
start a line. An error about a setting names the file, the line and the key; paths in a file are relative
to the file's folder.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputFileError, UsageError, file_spelling

PATH_KEYS = ("image", "end_image", "video", "output", "output_dir", "script", "prompt_file")


def read_toml(path: str | Path) -> tuple[dict, str]:
    """A TOML file's data and text; a missing file or a syntax error is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path.name}: not valid TOML: {err}") from None


_HEADER = re.compile(r"^\s*\[(\[)?\s*([^\]]+?)\s*\]")


def key_line(text: str, key: str, table: str | None = None, index: int = 0) -> int | None:
    """The line (from 1) where `key` is set: at the top level, or in the `index`-th `[[table]]`.
    Without `key`, the line of the table's header."""
    assign = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*[=.]""") if key else None
    section, seen = None, -1
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = header.group(2).strip("\"'")
            if section == table and header.group(1):
                seen += 1
                if key is None and seen == index:
                    return number
            continue
        here = section is None if table is None else (section == table and seen == index)
        if here and assign is not None and assign.match(line):
            return number
    return None


def file_error(path: Path, text: str, message: str, key: str | None, table: str | None = None,
               index: int = 0) -> UsageError:
    """A one-line error naming the file and, where found, the line of `key`."""
    line = key_line(text, key, table, index) if key or table else None
    if line is None and key and table is not None:
        line = key_line(text, key)  # a default at the top, which the table took
    if line is None and table is not None:
        line = key_line(text, None, table, index)  # the table's header, for a key that is missing
    return UsageError(f"{path.name}{f' line {line}' if line else ''}: {message}")


def check_keys(path: Path, text: str, data: dict, allowed: Collection[str], where: str,
               table: str | None = None, index: int = 0) -> None:
    """Refuse the first key not in `allowed`, naming it, its line and the keys that are."""
    for key in data:
        if key not in allowed:
            raise file_error(path, text, f"unknown key {key!r} {where}; known keys: {', '.join(sorted(allowed))}",
                             key, table, index)


def absolute_paths(settings: dict, folder: Path) -> dict:
    """Input and output paths in a file are relative to the file's folder."""
    out = dict(settings)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            keep_slash = "/" if value.endswith("/") else ""  # DIR/ means PNG frames
            out[key] = str(folder / value) + keep_slash
    return out


@contextmanager
def errors_at_lines(path: Path, text: str, where: str, table: str | None = None, index: int = 0) -> Iterator[None]:
    """A UsageError about one setting (its `field`) raised inside names the file, that key's line and `where`;
    settings are named as the file writes them (`frames = -4`)."""
    try:
        with file_spelling():
            yield
    except UsageError as err:
        if err.field is None:
            raise file_error(path, text, f"{where}: {err}", None, table, index) from None
        raise file_error(path, text, f"{err} ({where})", err.field, table, index) from None
