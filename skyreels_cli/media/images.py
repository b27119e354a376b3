"""Reading input images and videos and fitting them to the output size."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputFileError

IMAGE_FILES = "give the path of a PNG or JPEG file"


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
    """An RGB image as it is meant to be seen: EXIF orientation applied, 16-bit and palette images converted."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise InputFileError(f"{option} {path} {problem}; {IMAGE_FILES}")
    try:
        with Image.open(path) as img:
            return to_rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputFileError(f"{option} {path} is not a readable image; give a PNG or JPEG file") from None


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
    """Scale to cover height x width, then crop the centre."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """`fit_image` for each frame of a uint8 [T, H, W, 3] array (no-op when the size already matches)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(fit_image(Image.fromarray(f), height, width)) for f in frames])
