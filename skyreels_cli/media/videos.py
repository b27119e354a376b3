"""Reading input videos: frames, lengths, frame rate and the comment tag, through imageio-ffmpeg."""

from __future__ import annotations

import re
import subprocess
from collections import deque
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from .ffmpeg import ffmpeg
from .images import path_problem

VIDEO_FILES = "give a video file ffmpeg can decode, e.g. an MP4"


def iter_video_frames(path: Path, chunk: int = 16, option: str = "video") -> Iterator[np.ndarray]:
    """Frames in uint8 arrays of at most `chunk` frames, holding no more than that at a time."""
    _, frames = _stream(Path(path), option)
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def read_last_frames(path: Path, n: int, option: str = "video") -> tuple[np.ndarray, float]:
    """The last n frames, decoding the whole video but holding only n frames at a time."""
    fps, frames = _stream(Path(path), option)
    tail = deque(frames, maxlen=n)
    if len(tail) < n:
        raise InputFileError(f"{option} {path} has {len(tail)} frames but {n} are needed; use a longer video")
    return np.stack(list(tail)), fps


def probe_video(path: Path, option: str = "video") -> dict:
    """Frame count (exact, by decoding), size, fps and the comment tag of a video."""
    path = Path(path)
    fps, frames = _stream(path, option)
    first = next(frames, None)
    frames.close()
    if first is None:
        raise InputFileError(f"{option} {path} has no frames; choose another video")
    try:
        count, _ = ffmpeg().count_frames_and_secs(str(path))
    except RuntimeError as err:
        raise _unreadable(path, err, option) from err
    height, width = first.shape[:2]
    return {"frames": count, "width": width, "height": height, "fps": fps, "comment": read_comment(path, option)}


def _stream(path: Path, option: str = "video") -> tuple[float, Generator[np.ndarray, None, None]]:
    """The fps and a lazy iterator over RGB frames; ffmpeg failures become InputFileError."""
    check_video_path(path, option)
    reader = ffmpeg().read_frames(str(path))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        reader.close()
        raise _unreadable(path, err, option) from err
    width, height = meta["size"]

    def frames() -> Generator[np.ndarray, None, None]:
        try:
            for buf in reader:
                yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as err:
            raise _unreadable(path, err, option) from err
        finally:
            reader.close()

    return float(meta["fps"]), frames()


def check_video_path(path: Path, option: str = "video") -> None:
    """InputFileError unless `path` is a regular file (it says what it is instead: missing, a folder, a device)."""
    problem = path_problem(Path(path))
    if problem is not None:
        raise InputFileError(f"{option} {path} {problem}; {VIDEO_FILES}")


def _unreadable(path: Path, err: BaseException, option: str = "video") -> InputFileError:
    return InputFileError(f"cannot read {option} {path} ({ffmpeg_reason(err, path)}); check that it is a video "
                          "ffmpeg can decode")


def ffmpeg_reason(err: BaseException, path: Path | None = None) -> str:
    """ffmpeg's line about a failure, without its `[in#0 @ 0x...]` context or the file's name: the first line of
    its error output, or the last of the log that imageio-ffmpeg appends after `=== stderr ===`."""
    text = str(err).strip()
    if "=== stderr ===" in text:
        text = "\n".join(reversed(text.split("=== stderr ===", 1)[1].strip().splitlines()))
    first_line = (text.splitlines() or [type(err).__name__])[0]
    first_line = re.sub(r"^(\[[^\]]*\]\s*)+", "", first_line).strip()
    if path is not None and first_line.startswith(f"{path}: "):
        first_line = first_line[len(f"{path}: "):]
    return first_line or type(err).__name__


def read_comment(path: Path, option: str = "video") -> str | None:
    """The comment tag of a video (None when it has none); InputFileError when ffmpeg cannot read the file."""
    check_video_path(path, option)
    cmd = [ffmpeg().get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        raise _unreadable(path, RuntimeError(result.stderr.decode(errors="replace")), option)
    return _global_tags(result.stdout.decode("utf-8", errors="replace")).get("comment")


def _global_tags(text: str) -> dict[str, str]:
    """Parse ffmpeg's ffmetadata format up to its first [SECTION]; `\\` escapes = ; # \\ and newline."""
    tags = {}
    for match in re.finditer(r"((?:\\.|[^\\\n])*)\n", text, re.S):
        line = match.group(1)
        if line.startswith("["):
            break
        pair = re.fullmatch(r"((?:\\.|[^\\=])*)=(.*)", line, re.S)
        if pair and not line.startswith((";", "#")):
            key, value = (re.sub(r"\\(.)", r"\1", part, flags=re.S) for part in pair.groups())
            tags[key] = value
    return tags
