"""Where a run's video goes, and writing it out window by window as it is made.

An MP4 is built from one independently encoded segment per generation window,
joined by stream copy. A run that stops keeps its finished segments in a hidden
work folder, so `--resume` can continue from the last finished window and still
produce the same file an uninterrupted run would have made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import unicodedata
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import numpy as np
from PIL import Image

from .errors import InputFileError, OutputError, UsageError


def _ffmpeg() -> Any:
    # Imported on first use, so PNG output works where imageio-ffmpeg is not installed.
    import imageio_ffmpeg

    return imageio_ffmpeg

FRAME_DIGITS = 6
SLUG_MAX = 40
SEGMENTS_FILE = "segments.json"
# Fragmented MP4 is readable up to its last complete fragment (one starts at each keyframe),
# so an in-progress segment is never a file that needs a trailing index to decode.
FRAGMENTED = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]


@dataclass(frozen=True)
class OutputTarget:
    kind: str  # "mp4" or "png"
    path: Path  # the final .mp4 file, or the PNG frames directory
    sidecar: Path  # settings JSON written next to the output by finish()
    work_dir: Path  # hidden folder for in-progress data and resume state
    preview: Path | None  # mp4 only: plays everything finished so far during a run


# ---------------------------------------------------------------- choosing the output


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
        exists = any((target.path / name).exists() for name in (_frame_name(0), target.sidecar.name))
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


# ---------------------------------------------------------------- writing frames


class FrameSink:
    """Receives decoded frames window by window and writes them out as they come."""

    def __init__(
        self,
        target: OutputTarget,
        fps: int,
        metadata: dict,
        *,
        resume_frames: int = 0,
        crf: int = 17,
    ) -> None:
        self.target = target
        self._writer: _PngFrames | _Mp4Segments
        with _output_errors(target.path):
            if target.kind == "png":
                self._writer = _PngFrames(target, resume_frames)
            else:
                self._writer = _Mp4Segments(target, fps, json.dumps(metadata), crf, resume_frames)
        self._done = False

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 (T, H, W, 3), H and W even (multiples of 16 in practice)."""
        _check_frames(frames)
        if not len(frames):
            return  # an empty segment would break concatenation
        with _output_errors(self.target.path):
            self._writer.write(frames)

    def end_window(self) -> None:
        """Make everything written so far durable, so a later --resume can continue from here."""
        with _output_errors(self.target.path):
            self._writer.end_window()

    def finish(self, sidecar: dict) -> Path:
        """Put the output in place atomically, write its settings JSON, and clean up work files."""
        with _output_errors(self.target.path):
            self._writer.finish()
            write_json_atomic(self.target.sidecar, sidecar)
            shutil.rmtree(self.target.work_dir, ignore_errors=True)
            if self.target.preview is not None:
                self.target.preview.unlink(missing_ok=True)
        self._done = True
        return self.target.path

    def abort(self) -> None:
        """Stop encoding; nothing appears under the final name, and work_dir stays for --resume."""
        if not self._done:
            self._writer.abort()
            self._done = True

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Leaving without finish() is treated like an error: stop ffmpeg, keep resume state.
        self.abort()


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {frames.shape[1:3]}")


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """Turn OS and ffmpeg failures while writing into a one-line OutputError."""
    try:
        yield
    except OSError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OutputError(f"cannot write output {path}: {reason}; check free disk space and permissions") from err


class _PngFrames:
    """Lossless numbered PNGs, each put in place atomically as soon as it arrives."""

    def __init__(self, target: OutputTarget, resume_frames: int) -> None:
        self.folder = target.path
        self.frames_written = resume_frames
        self.folder.mkdir(parents=True, exist_ok=True)
        target.work_dir.mkdir(exist_ok=True)
        if not all((self.folder / _frame_name(i)).is_file() for i in range(resume_frames)):
            raise _mismatch(self.folder, resume_frames)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            image = Image.fromarray(frame, "RGB")
            _replace_atomically(self.folder / _frame_name(self.frames_written), lambda tmp: image.save(tmp, "PNG"))
            self.frames_written += 1

    def end_window(self) -> None:
        """Each frame was fsynced as it was written."""

    def finish(self) -> None:
        # Frames past the end are left over from an earlier, longer run in this folder.
        for stale in self.folder.glob("[0-9]" * FRAME_DIGITS + ".png"):
            if int(stale.stem) >= self.frames_written:
                stale.unlink()

    def abort(self) -> None:
        """Every frame on disk is complete, so there is nothing to stop."""


def _frame_name(index: int) -> str:
    return f"{index:0{FRAME_DIGITS}d}.png"


class _KillEncoder(BaseException):
    """Thrown into imageio_ffmpeg's writer: any BaseException makes it kill ffmpeg instead of waiting."""


class _Mp4Segments:
    """One ffmpeg process and segment file per window; segments.json lists the finished ones."""

    def __init__(self, target: OutputTarget, fps: int, comment: str, crf: int, resume_frames: int) -> None:
        self.target = target
        self.fps = fps
        self.comment = comment
        self.crf = crf
        self.work_dir = target.work_dir
        self.work_dir.mkdir(exist_ok=True)
        self.segments = self._keep_segments(resume_frames)
        self.frames_written = resume_frames
        self._encoder: Any = None  # the imageio_ffmpeg generator of the open segment
        self._open_frames = 0
        if self.segments:
            self._refresh_preview()
        elif target.preview is not None:
            target.preview.unlink(missing_ok=True)

    def _keep_segments(self, resume_frames: int) -> list[dict]:
        """The finished segments holding exactly the first resume_frames frames; others are deleted."""
        recorded = _read_segments(self.work_dir / SEGMENTS_FILE)
        kept: list[dict] = []
        total = 0
        for segment in recorded:
            if total >= resume_frames:
                break
            kept.append(segment)
            total += segment["frames"]
        if total != resume_frames or not all((self.work_dir / s["file"]).is_file() for s in kept):
            raise _mismatch(self.target.path, resume_frames)
        keep = {s["file"] for s in kept}
        for path in self.work_dir.glob("seg_*.mp4"):
            if path.name not in keep:
                path.unlink()
        write_json_atomic(self.work_dir / SEGMENTS_FILE, {"segments": kept})
        return kept

    def write(self, frames: np.ndarray) -> None:
        if self._encoder is None:
            self._open_segment(width=frames.shape[2], height=frames.shape[1])
        self._encoder.send(np.ascontiguousarray(frames))
        self._open_frames += len(frames)
        self.frames_written += len(frames)

    def _open_segment(self, width: int, height: int) -> None:
        self._encoder = _ffmpeg().write_frames(
            str(self._open_path()),
            (width, height),
            fps=self.fps,
            codec="libx264",
            quality=None,  # rate control comes from -crf below
            macro_block_size=1,  # never let imageio rescale frames
            ffmpeg_log_level="error",
            output_params=["-crf", str(self.crf), *FRAGMENTED, "-metadata", f"comment={self.comment}", "-f", "mp4"],
        )
        self._encoder.send(None)

    def end_window(self) -> None:
        if self._close_segment():
            self._refresh_preview()

    def _close_segment(self) -> bool:
        """Wait for the open segment's ffmpeg, fsync and record it; False if none was open."""
        if self._encoder is None:
            return False
        self._encoder.close()
        self._encoder = None
        path = self._open_path()
        if not path.is_file() or path.stat().st_size == 0:
            raise OutputError(f"ffmpeg did not write {path}; see its error above, then rerun with --resume")
        _fsync_file(path)
        self.segments.append({"file": path.name, "frames": self._open_frames})
        self._open_frames = 0
        write_json_atomic(self.work_dir / SEGMENTS_FILE, {"segments": self.segments})
        return True

    def _refresh_preview(self) -> None:
        assert self.target.preview is not None
        self._concat(self.target.preview)

    def finish(self) -> None:
        self._close_segment()
        if not self.segments:
            raise ValueError("no frames were written, so there is no video to finish")
        self._concat(self.target.path)

    def _concat(self, dest: Path) -> None:
        """Join the finished segments without re-encoding into dest, replacing it atomically."""
        listing = self.work_dir / "concat.txt"
        listing.write_text("".join(f"file '{s['file']}'\n" for s in self.segments))
        cmd = [_ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-f", "concat", "-i", str(listing)]
        cmd += ["-map", "0:v", "-c", "copy", "-movflags", "+faststart"]
        cmd += ["-metadata", f"comment={self.comment}", "-f", "mp4"]
        _replace_atomically(dest, lambda tmp: _run_ffmpeg([*cmd, str(tmp)]))

    def abort(self) -> None:
        if self._encoder is None:
            return
        try:
            self._encoder.throw(_KillEncoder())
        except _KillEncoder:
            pass
        self._encoder = None
        # An unfinished segment is useless to --resume, which restarts from the last window boundary.
        self._open_path().unlink(missing_ok=True)

    def _open_path(self) -> Path:
        """The segment being written now: the one after the finished ones."""
        return self.work_dir / f"seg_{len(self.segments):05d}.mp4"


def _read_segments(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["segments"])
    except (ValueError, KeyError, TypeError):
        return []


def _mismatch(output: Path, resume_frames: int) -> OutputError:
    return OutputError(
        f"the saved partial output for {output} does not match the {resume_frames} frames to resume from; "
        "rerun without --resume and with --overwrite"
    )


def _run_ffmpeg(cmd: list[str]) -> None:
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"]
        raise OSError(f"ffmpeg failed: {lines[-1]}")


# ---------------------------------------------------------------- small file helpers


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    text = json.dumps(data, indent=2) + "\n"
    _replace_atomically(path, lambda tmp: tmp.write_text(text))


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Have write() fill a temp file beside path, fsync it, then rename it over path."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # Windows cannot open a directory to fsync the rename
        _fsync_file(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading videos


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames as uint8 (T, H, W, 3), and the frame rate."""
    fps, frames = _stream(Path(path))
    stacked = list(frames)
    if not stacked:
        raise InputFileError(f"video {path} has no frames; choose another video")
    return np.stack(stacked), fps


def iter_video_frames(path: Path, chunk: int = 16) -> Iterator[np.ndarray]:
    """Frames in uint8 arrays of at most `chunk` frames, holding no more than that at a time."""
    _, frames = _stream(Path(path))
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def read_last_frames(path: Path, n: int) -> tuple[np.ndarray, float]:
    """The last n frames, decoding the whole video but holding only n frames at a time."""
    fps, frames = _stream(Path(path))
    tail = deque(frames, maxlen=n)
    if len(tail) < n:
        raise InputFileError(f"video {path} has {len(tail)} frames but {n} are needed; use a longer video")
    return np.stack(list(tail)), fps


def probe_video(path: Path) -> dict:
    """Frame count (exact, by decoding), size, fps and the comment tag of a video."""
    path = Path(path)
    fps, frames = _stream(path)
    first = next(frames, None)
    frames.close()
    if first is None:
        raise InputFileError(f"video {path} has no frames; choose another video")
    try:
        count, _ = _ffmpeg().count_frames_and_secs(str(path))
    except RuntimeError as err:
        raise _unreadable(path, err) from err
    height, width = first.shape[:2]
    return {"frames": count, "width": width, "height": height, "fps": fps, "comment": _comment(path)}


def _stream(path: Path) -> tuple[float, Generator[np.ndarray, None, None]]:
    """The fps and a lazy iterator over RGB frames; ffmpeg failures become InputFileError."""
    if not path.is_file():
        raise InputFileError(f"video {path} does not exist; check the path")
    reader = _ffmpeg().read_frames(str(path))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        reader.close()
        raise _unreadable(path, err) from err
    width, height = meta["size"]

    def frames() -> Generator[np.ndarray, None, None]:
        try:
            for buf in reader:
                yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as err:
            raise _unreadable(path, err) from err
        finally:
            reader.close()

    return float(meta["fps"]), frames()


def _unreadable(path: Path, err: BaseException) -> InputFileError:
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return InputFileError(f"cannot read video {path} ({first_line}); check that it is a video ffmpeg can decode")


def _comment(path: Path) -> str | None:
    cmd = [_ffmpeg().get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        raise _unreadable(path, RuntimeError(result.stderr.decode(errors="replace")))
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
