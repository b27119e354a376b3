"""The ffmpeg binary that imageio-ffmpeg ships, imported on first use (PNG output works without it)."""

from __future__ import annotations

from typing import Any


def ffmpeg() -> Any:
    import imageio_ffmpeg

    return imageio_ffmpeg
