"""A live video as HLS: one MPEG-TS segment per finished window and an EVENT playlist that grows with them.

Any HLS player (ffplay, VLC, Safari; hls.js elsewhere) opens `live.m3u8` while the video is made, and sees
`#EXT-X-ENDLIST` once it ends. Each segment is encoded on its own (H.264 without B-frames, one keyframe at its
start) with its timestamps offset to where it sits in the video, so the segments play as one stream. The
playlist is replaced atomically: a reader sees the one before or the one after a window, never half of one.

`keep_last_s` keeps only the segments of the last S seconds on disk (at least S seconds: the newest segments
whose time reaches it); the playlist then starts at `#EXT-X-MEDIA-SEQUENCE` N, the first segment kept. The
record of every segment made (`segments.json`) lets a resumed run continue the numbering: a window is always
segment number `window`, so after a restart no segment is lost or repeated.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np

from .ffmpeg import ffmpeg
from .files import replace_atomically, write_json_atomic

PLAYLIST = "live.m3u8"
RECORD = "segments.json"
CRF = 17  # as the MP4 output's segments (media/sinks.py)


def stream_folder(output: Path) -> Path:
    """Where a live output's HLS stream goes: NAME.hls/ beside NAME.mp4 (DIR.hls/ beside a PNG folder)."""
    return output.with_name(output.stem + ".hls")


def segment_name(window: int) -> str:
    return f"w{window:06d}.ts"


class HlsWriter:
    """Writes window `n`'s frames as segment n of `folder`/live.m3u8; `next_window`: where a resumed run goes on."""

    def __init__(self, folder: Path, fps: float, *, keep_last_s: float | None = None, next_window: int = 0) -> None:
        self.folder, self.fps, self.keep_last_s = Path(folder), fps, keep_last_s
        self.folder.mkdir(parents=True, exist_ok=True)
        # Every segment made: window, frames, first frame; those after `next_window` were made by a run killed
        # before its state was saved, and are made again.
        self.segments = [s for s in _read(self.folder / RECORD) if s["window"] < next_window]
        for path in self.folder.glob("w*.ts"):
            if not any(path.name == segment_name(s["window"]) for s in self.segments):
                path.unlink()
        self.ended = False
        self._write_playlist()

    @property
    def frames(self) -> int:
        return sum(s["frames"] for s in self.segments)

    def add(self, window: int, frames: np.ndarray) -> Path:
        """Encode one finished window's frames (uint8 [T, H, W, 3]) as its segment and list it."""
        path = self.folder / segment_name(window)
        first = self.frames
        _encode(path, frames, self.fps, offset_s=first / self.fps)
        self.segments.append({"window": window, "frames": int(len(frames)), "first_frame": first})
        write_json_atomic(self.folder / RECORD, {"segments": self.segments})
        dropped = self._drop_old()
        self._write_playlist()
        for old in dropped:  # after the playlist stops naming them
            (self.folder / segment_name(old["window"])).unlink(missing_ok=True)
        return path

    def end(self) -> None:
        """The video is complete: the playlist says so (`#EXT-X-ENDLIST`)."""
        self.ended = True
        self._write_playlist()

    def on_disk(self) -> list[dict]:
        """The segments the playlist names (all of them without `keep_last_s`)."""
        return [s for s in self.segments if not s.get("dropped")]

    def _drop_old(self) -> list[dict]:
        if self.keep_last_s is None:
            return []
        kept, seconds = [], 0.0
        for segment in reversed(self.on_disk()):
            if seconds >= self.keep_last_s:
                segment["dropped"] = True
                kept.append(segment)
                continue
            seconds += segment["frames"] / self.fps
        if kept:
            write_json_atomic(self.folder / RECORD, {"segments": self.segments})
        return kept

    def _write_playlist(self) -> None:
        listed = self.on_disk()
        target = max([math.ceil(s["frames"] / self.fps) for s in listed] or [1])
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{listed[0]['window'] if listed else len(self.segments)}"]
        for s in listed:
            lines += [f"#EXTINF:{s['frames'] / self.fps:.6f},", segment_name(s["window"])]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        text = "\n".join(lines) + "\n"
        replace_atomically(self.folder / PLAYLIST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _encode(path: Path, frames: np.ndarray, fps: float, offset_s: float) -> None:
    """One MPEG-TS segment: H.264, no B-frames (each frame decodable as it arrives), timestamps from `offset_s`."""
    height, width = frames.shape[1:3]
    cmd = [ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264", "-crf", str(CRF),
           "-bf", "0", "-pix_fmt", "yuv420p", "-output_ts_offset", f"{offset_s:.6f}", "-muxdelay", "0",
           "-f", "mpegts"]

    def write(tmp: Path) -> None:
        result = subprocess.run([*cmd, str(tmp)], input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"]
            raise OSError(f"ffmpeg failed: {lines[-1]}")

    replace_atomically(path, write)


def _read(path: Path) -> list[dict]:
    try:
        return list(json.loads(path.read_text())["segments"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


# ------------------------------------------------------------------ fragmented MP4 chunks (vLLM-Omni's shape)

def fmp4_chunk(frames: np.ndarray, fps: float, first_frame: int, *, init: bool) -> bytes:
    """One window as a chunk of a fragmented MP4 stream, as vLLM-Omni's `/v1/realtime/video` sends them: H.264
    without B-frames, a fragment per frame; the first chunk (`init`) starts with `ftyp`+`moov`, later ones are
    fragments only, their decode times continuing from `first_frame`. Appended one after another (a file, or
    Media Source Extensions) they play as one video: every window's encode has the same `moov` (same settings,
    same size), so only the first is kept."""
    height, width = frames.shape[1:3]
    cmd = [ffmpeg().get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264", "-crf", str(CRF), "-bf", "0", "-pix_fmt", "yuv420p",
           "-movflags", "+frag_keyframe+empty_moov+default_base_moof+frag_every_frame", "-f", "mp4", "-"]
    result = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"]
        raise OSError(f"ffmpeg failed: {lines[-1]}")
    data = bytearray(result.stdout)
    head = _init_length(data)
    ticks = round(_timescale(data[:head]) / fps * first_frame)
    _shift_decode_times(data, head, ticks)
    return bytes(data if init else data[head:])


def _boxes(data, start: int, end: int):
    """(type, offset, size) of each box in data[start:end]."""
    i = start
    while i + 8 <= end:
        size = int.from_bytes(data[i:i + 4], "big")
        kind = bytes(data[i + 4:i + 8]).decode("latin-1")
        if size < 8:
            return
        yield kind, i, size
        i += size


def _init_length(data) -> int:
    """Bytes of the leading `ftyp` and `moov`."""
    end = 0
    for kind, offset, size in _boxes(data, 0, len(data)):
        if kind not in ("ftyp", "moov"):
            break
        end = offset + size
    return end


def _timescale(init) -> int:
    """The video track's time units per second (moov/trak/mdia/mdhd)."""
    def find(start: int, end: int, path: tuple[str, ...]) -> int:
        for kind, offset, size in _boxes(init, start, end):
            if kind == path[0]:
                if len(path) > 1:
                    return find(offset + 8, offset + size, path[1:])
                version = init[offset + 8]
                at = offset + 12 + (16 if version == 1 else 8)  # past flags, creation and modification times
                return int.from_bytes(init[at:at + 4], "big")
        raise OSError("ffmpeg wrote an MP4 without a track timescale")

    return find(0, len(init), ("moov", "trak", "mdia", "mdhd"))


def _shift_decode_times(data: bytearray, start: int, ticks: int) -> None:
    """Add `ticks` to every fragment's base media decode time (moof/traf/tfdt), in place."""
    for kind, offset, size in _boxes(data, start, len(data)):
        if kind != "moof":
            continue
        for traf, t_offset, t_size in _boxes(data, offset + 8, offset + size):
            if traf != "traf":
                continue
            for box, b_offset, _ in _boxes(data, t_offset + 8, t_offset + t_size):
                if box == "tfdt":
                    width = 8 if data[b_offset + 8] == 1 else 4
                    at = b_offset + 12
                    value = int.from_bytes(data[at:at + width], "big") + ticks
                    data[at:at + width] = value.to_bytes(width, "big")
