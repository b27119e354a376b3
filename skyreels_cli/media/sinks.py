"""Writing a run's frames out window by window as they are made.

An MP4 is built from one independently encoded segment per generation window,
joined by stream copy. A run that stops keeps its finished segments in a hidden
work folder, so `--resume` can continue from the last finished window and still
produce the same file an uninterrupted run would have made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .. import faults
from ..errors import OutputError, setting
from .ffmpeg import ffmpeg
from .files import fsync_file, replace_atomically, replace_folder, write_json_atomic
from .targets import FRAME_DIGITS, OutputTarget, frame_name

SEGMENTS_FILE = "segments.json"
# Fragmented MP4 is readable up to its last complete fragment (one starts at each keyframe),
# so an in-progress segment is never a file that needs a trailing index to decode.
FRAGMENTED = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]


class FrameSink:
    """Receives decoded frames window by window and writes them out as they come."""

    def __init__(
        self,
        target: OutputTarget,
        fps: float,
        metadata: dict,
        *,
        resume_frames: int = 0,
        total_frames: int | None = None,
        crf: int = 17,
        preview: bool = True,
    ) -> None:
        self.target = target
        self.total_frames = total_frames  # frames beyond it are dropped: the output has exactly this many
        self._writer: _PngFrames | _Mp4Segments
        with output_errors(target.path):
            target.work_dir.mkdir(exist_ok=True)  # first: it marks the preview as ours
            if target.kind == "png":
                self._writer = _PngFrames(target, resume_frames)
            else:
                self._writer = _Mp4Segments(target, fps, json.dumps(metadata), crf, resume_frames, preview)
        self._done = False

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 (T, H, W, 3), H and W even (multiples of 16 in practice)."""
        _check_frames(frames)
        if self.total_frames is not None:
            frames = frames[: max(0, self.total_frames - self.frames_written)]
        if not len(frames):
            return  # an empty segment would break concatenation
        with output_errors(self.target.path):
            self._writer.write(frames)

    def end_window(self) -> None:
        """Make everything written so far durable, so a later --resume can continue from here."""
        with output_errors(self.target.path):
            self._writer.end_window()

    def finish(self, sidecar: dict, metadata: dict | None = None) -> Path:
        """Put the output in place atomically, write its settings JSON, and clean up work files. `metadata`: the
        settings the video's tag carries, when they are known only now (a live run's, once it has stopped)."""
        target = self.target
        if metadata is not None and isinstance(self._writer, _Mp4Segments):
            self._writer.comment = json.dumps(metadata)
        with output_errors(target.path):
            self._writer.finish()
            write_json_atomic(target.build_sidecar, sidecar)
            if target.kind == "png":
                replace_folder(target.preview, target.path, target.work_dir / "replaced")
            else:
                target.preview.unlink(missing_ok=True)
            shutil.rmtree(target.work_dir, ignore_errors=True)  # last: while it exists, the preview is ours
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
def output_errors(path: Path) -> Iterator[None]:
    """Turn OS and ffmpeg failures while writing into a one-line OutputError."""
    try:
        yield
    except OSError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OutputError(f"cannot write output {path}: {reason}; check free disk space and permissions") from err


class _PngFrames:
    """Lossless numbered PNGs, built in DIR.partial/ (each frame whole as soon as it is there) and put in
    place as DIR/ when the run is complete, so an existing DIR/ is replaced only by a finished run."""

    def __init__(self, target: OutputTarget, resume_frames: int) -> None:
        self.folder = target.preview
        self.frames_written = resume_frames
        if resume_frames == 0 and self.folder.exists():
            shutil.rmtree(self.folder)  # an interrupted run's frames, being started over
        self.folder.mkdir(exist_ok=True)
        if not all((self.folder / frame_name(i)).is_file() for i in range(resume_frames)):
            raise _mismatch(target.path, resume_frames)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            image = Image.fromarray(frame, "RGB")
            replace_atomically(self.folder / frame_name(self.frames_written),
                               lambda tmp, image=image: image.save(tmp, "PNG"))
            self.frames_written += 1

    def end_window(self) -> None:
        """Each frame was fsynced as it was written."""

    def finish(self) -> None:
        # Frames past the end are left over from an interrupted run that went further.
        for stale in self.folder.glob("[0-9]" * FRAME_DIGITS + ".png"):
            if int(stale.stem) >= self.frames_written:
                stale.unlink()

    def abort(self) -> None:
        """Every frame on disk is complete, so there is nothing to stop."""


class _Encoder:
    """One ffmpeg process encoding raw RGB frames from its stdin into an MP4 segment.

    Its messages go to a log file, never to the user's terminal; a failure is an OSError
    carrying ffmpeg's last line, which the sink turns into one clear message.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float, crf: int, comment: str) -> None:
        self.path = path
        self.log = path.with_suffix(".log")
        cmd = [ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264", "-crf", str(crf),
               "-pix_fmt", "yuv420p", *FRAGMENTED, "-metadata", f"comment={comment}", "-f", "mp4", str(path)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)

    def send(self, frames: np.ndarray) -> None:
        try:
            self.proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            self.proc.wait()
            raise self._failure() from None

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            raise self._failure()
        self.log.unlink(missing_ok=True)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.unlink(missing_ok=True)

    def _failure(self) -> OSError:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return OSError(f"ffmpeg failed: {lines[-1] if lines else 'exit code ' + str(self.proc.returncode)}")


class _Mp4Segments:
    """One ffmpeg process and segment file per window; segments.json lists the finished ones."""

    def __init__(self, target: OutputTarget, fps: float, comment: str, crf: int, resume_frames: int,
                 preview: bool = True) -> None:
        self.target = target
        self.preview = preview  # False: no NAME.partial.mp4 (a live run's would be joined again at every window)
        self.fps = fps
        self.comment = comment
        self.crf = crf
        self.work_dir = target.work_dir
        self.segments = self._keep_segments(resume_frames)
        self.frames_written = resume_frames
        self._encoder: _Encoder | None = None  # the open segment's ffmpeg
        self._open_frames = 0
        if self.segments and preview:
            self._refresh_preview()
        else:
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
        self._encoder.send(frames)
        faults.point("segment_write")
        self._open_frames += len(frames)
        self.frames_written += len(frames)

    def _open_segment(self, width: int, height: int) -> None:
        self._encoder = _Encoder(self._open_path(), width, height, self.fps, self.crf, self.comment)

    def end_window(self) -> None:
        if self._close_segment() and self.preview:
            self._refresh_preview()

    def _close_segment(self) -> bool:
        """Wait for the open segment's ffmpeg, fsync and record it; False if none was open."""
        if self._encoder is None:
            return False
        self._encoder.close()
        self._encoder = None
        path = self._open_path()
        if not path.is_file() or path.stat().st_size == 0:
            raise OSError(f"ffmpeg wrote nothing to {path}")
        fsync_file(path)
        self.segments.append({"file": path.name, "frames": self._open_frames})
        self._open_frames = 0
        write_json_atomic(self.work_dir / SEGMENTS_FILE, {"segments": self.segments})
        return True

    def _refresh_preview(self) -> None:
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
        cmd = [ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-f", "concat", "-i", str(listing)]
        cmd += ["-map", "0:v", "-c", "copy", "-movflags", "+faststart"]
        cmd += ["-metadata", f"comment={self.comment}", "-f", "mp4"]
        faults.point("concat")
        replace_atomically(dest, lambda tmp: _run_ffmpeg([*cmd, str(tmp)]))

    def abort(self) -> None:
        if self._encoder is None:
            return
        self._encoder.kill()
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
        f"start again without {setting('resume', True)} and with {setting('overwrite', True)}"
    )


def _run_ffmpeg(cmd: list[str]) -> None:
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"]
        raise OSError(f"ffmpeg failed: {lines[-1]}")
