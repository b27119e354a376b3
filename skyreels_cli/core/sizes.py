"""Video sizes from a resolution and an aspect ratio: one table, near the models' native pixel counts.

The checkpoints were trained at 544x960 (540P) and 720x1280 (720P). Other shapes work as long as both sides are
multiples of 16 (the VAE's 8x and the transformer's 2x2 patches), and they look best when they keep about the
native number of pixels: that is what the attention saw in training and what the memory plans assume.
"""

from __future__ import annotations

import math

from ..errors import UsageError, setting

ASPECTS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4)}
NATIVE: dict[str, tuple[int, int]] = {"540p": (544, 960), "720p": (720, 1280)}  # (height, width)
STEP = 16
# An aspect ratio off by 1% shows (circles become ellipses); a pixel count off by 1% does not: weigh the ratio more.
RATIO_WEIGHT = 2.0

# (resolution, aspect) -> (height, width): `fit_size` at each native pixel count (a test keeps them equal).
SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("540p", "16:9"): (544, 960), ("540p", "9:16"): (960, 544), ("540p", "1:1"): (720, 720),
    ("540p", "4:3"): (624, 832), ("540p", "3:4"): (832, 624),
    ("720p", "16:9"): (720, 1280), ("720p", "9:16"): (1280, 720), ("720p", "1:1"): (960, 960),
    ("720p", "4:3"): (832, 1104), ("720p", "3:4"): (1104, 832),
}


def check_aspect(aspect: str) -> str:
    """`aspect` as a key of ASPECTS ("16x9" and spaces accepted); UsageError listing the choices otherwise."""
    key = aspect.strip().lower().replace("x", ":").replace("/", ":").replace(" ", "")
    if key not in ASPECTS:
        raise UsageError(f"{setting('aspect', aspect, quoted=True)} is not one of {', '.join(ASPECTS)}", field="aspect")
    return key


def check_resolution(resolution: str) -> str:
    key = resolution.strip().lower()
    key = key if key.endswith("p") else key + "p"
    if key not in NATIVE:
        raise UsageError(f"{setting('resolution', resolution, quoted=True)} is not one of {', '.join(NATIVE)}",
                         field="resolution")
    return key


def ratio(aspect: str) -> float:
    """Width over height."""
    w, h = ASPECTS[aspect]
    return w / h


def nearest_aspect(width: int, height: int) -> str:
    """The listed aspect closest to width:height (by the log of the ratio: 2:1 is as far from 1:1 as 1:2)."""
    return min(ASPECTS, key=lambda a: abs(math.log(width / height / ratio(a))))


def fit_size(pixels: float, aspect_ratio: float) -> tuple[int, int]:
    """(height, width), both multiples of 16, closest to `aspect_ratio` (w/h) and `pixels` together."""
    if aspect_ratio < 1:  # solved in landscape and turned, so 3:4 is exactly 4:3 on its side
        height, width = fit_size(pixels, 1 / aspect_ratio)
        return width, height
    side = math.isqrt(int(pixels))
    candidates = [(h, w) for h in range(STEP, side + 2 * STEP, STEP) for w in range(h, 4 * side + STEP, STEP)]
    return min(candidates, key=lambda hw: _misfit(hw[0], hw[1], pixels, aspect_ratio))


def _misfit(height: int, width: int, pixels: float, aspect_ratio: float) -> float:
    return RATIO_WEIGHT * abs(math.log(width / height / aspect_ratio)) + abs(math.log(width * height / pixels))


def _turned(aspect: str) -> str:
    w, h = aspect.split(":")
    return f"{h}:{w}"


def round16(value: float) -> int:
    return max(STEP, round(value / STEP) * STEP)


def table_size(aspect: str, resolution: str | None, native: tuple[int, int]) -> tuple[int, int]:
    """(height, width) for `aspect` at `resolution`, or at the model's own size `native` (height, width) if None.

    A model's own aspect gives its own size; other aspects keep its pixel count (the table at 540P/720P).
    """
    if resolution is not None:
        return SIZES[(resolution, aspect)]
    height, width = native
    own = nearest_aspect(width, height)
    if aspect in (own, _turned(own)):
        return (min(native), max(native)) if ratio(aspect) >= 1 else (max(native), min(native))
    for name, size in NATIVE.items():
        if size[0] * size[1] == height * width:
            return SIZES[(name, aspect)]
    return fit_size(height * width, ratio(aspect))


def pick_size(height: int | None, width: int | None, *, aspect: str | None, resolution: str | None,
              native: tuple[int, int], source: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
    """The (height, width) a request asks for; None where the model's default should fill it in as before.

    `native`: the model's (height, width). `source`: the start image's or continued video's (width, height): its
    aspect is the default. A side given explicitly wins over the aspect; the other follows the aspect.
    """
    aspect = None if aspect is None else check_aspect(aspect)
    resolution = None if resolution is None else check_resolution(resolution)
    if aspect is not None and height is not None and width is not None:
        raise UsageError(f"{setting('aspect')} with both {setting('height')} and {setting('width')}: give one side (the other follows the aspect), "
                         f"or drop {setting('aspect')}", field="aspect")
    if resolution is not None and (height is not None or width is not None):
        raise UsageError(f"{setting('resolution')} sets both sides: give it without {setting('height')} and {setting('width')}, or drop it", field="resolution")
    if height is not None and width is not None:
        return height, width
    if aspect is None and source is not None:
        aspect = nearest_aspect(*source)
    if aspect is None and resolution is None:
        return height, width  # no size asked for: the model's defaults, as without these options
    if aspect is None:
        aspect = nearest_aspect(native[1], native[0])
    if height is not None:
        return height, round16(height * ratio(aspect))
    if width is not None:
        return round16(width / ratio(aspect)), width
    return table_size(aspect, resolution, native)
