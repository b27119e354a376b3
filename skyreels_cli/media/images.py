"""Reading input images and videos and fitting them to the output size."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputFileError, setting, warn

IMAGE_FILES = "give the path of a PNG or JPEG file"
# Fitting an image this much bigger, or keeping less than this share of it, is told as a warning.
UPSCALE_WARN = 4.0   # each pixel of the image becomes 4x4 or more of the frame: a blurry, blocky frame
KEPT_WARN = 0.5      # the centre crop cuts away more than half of the image's width or height
# What load_image records in the image's `info` for fit_image's warnings (PIL keeps unknown keys).
SOURCE_KEY, FRAMES_KEY = "skyreels.source", "skyreels.frames"


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an input file ("does not exist", "is a folder", ...), or None if it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a folder on its path is a file)"
    except PermissionError:
        return "cannot be reached (permission denied on a folder of its path)"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        return f"is not a regular file ({kind})"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def load_image(path: str | Path, option: str = "IMAGE") -> Image.Image:
    """An RGB image as it is meant to be seen: EXIF orientation applied, 16-bit and palette images converted.

    An animated image gives its first frame; the image's `info` records where it came from and how many frames
    it had, for `fit_image` to say what it changed."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise InputFileError(f"{option} {path} {problem}; {IMAGE_FILES}")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputFileError(f"{option} {path} is not a readable image; give a PNG or JPEG file") from None
    rgb.info[SOURCE_KEY] = f"{option} {path}"
    rgb.info[FRAMES_KEY] = frames
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: PIL's convert() would clip everything above 255 to white.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 or img.mode != "I" else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def oriented_size(image_size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(height, width) turned to the image's orientation: a portrait image gives portrait video."""
    img_w, img_h = image_size
    if (img_h > img_w) != (height > width) and img_h != img_w:
        return width, height
    return height, width


def fit_image(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale to cover height x width, then crop the centre; a warning says so when that blurs the picture
    (a tiny image), cuts most of it away (an aspect far from the frame's) or drops frames (an animated image)."""
    for message in fit_warnings(image, height, width):
        warn(message)
    return _fit(image, height, width)


def fit_warnings(image: Image.Image, height: int, width: int) -> list[str]:
    """What `fit_image` would tell about fitting `image` to height x width (sizes written width x height)."""
    source = image.info.get(SOURCE_KEY, "the image")
    found = []
    frames = image.info.get(FRAMES_KEY, 1)
    if frames > 1:
        found.append(f"{source} is an animated image of {frames} frames: only its first frame is used")
    (scaled_w, scaled_h), scale = _scaled(image, height, width)
    kept_w, kept_h = width / scaled_w, height / scaled_h
    tiny, cut = scale >= UPSCALE_WARN, min(kept_w, kept_h) < KEPT_WARN
    if tiny or cut:
        how = f"scaled up {scale:.3g} times" if tiny else "scaled"
        message = f"{source} is {image.width}x{image.height}: {how} to {scaled_w}x{scaled_h}"
        if (scaled_w, scaled_h) != (width, height):
            message += f" and centre-cropped to {width}x{height}"
        if cut:
            side, kept = ("width", kept_w) if kept_w < kept_h else ("height", kept_h)
            message += f", which keeps {kept * 100:.2g}% of its {side}"
        advice = []
        if tiny:
            advice.append(f"the frame will be blurry: give an image of at least {width}x{height}")
        if cut:
            advice.append("crop it to the part that matters first, or ask for a size near its shape "
                          f"({setting('aspect')}, {setting('width')}, {setting('height')})")
        found.append(message + "; " + "; ".join(advice))
    return found


def _scaled(image: Image.Image, height: int, width: int) -> tuple[tuple[int, int], float]:
    scale = max(width / image.width, height / image.height)
    return (max(width, round(image.width * scale)), max(height, round(image.height * scale))), scale


def _fit(image: Image.Image, height: int, width: int) -> Image.Image:
    size, _ = _scaled(image, height, width)
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """`fit_image` for each frame of a uint8 [T, H, W, 3] array (no-op when the size already matches; no
    warnings: a continued video's rescaling is told once, when the request is resolved)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(_fit(Image.fromarray(f), height, width)) for f in frames])
