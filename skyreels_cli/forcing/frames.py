"""Frame-count arithmetic and validation (pure functions).

The Wan VAE compresses time 4x with a causal first frame, so a video has
4k+1 frames and (F-1)//4+1 latent frames.
"""

from __future__ import annotations

from ..errors import UsageError, setting

TEMPORAL = 4
SPATIAL = 16  # VAE 8x times transformer patch 2x


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL + 1


def pixel_frames(latents: int) -> int:
    return (latents - 1) * TEMPORAL + 1


# The smallest count worth suggesting per option: a window of one frame (--base-frames 1) leaves no room for
# an overlap and new frames, so windows.py refuses it for any video longer than one frame.
SMALLEST = {"base_frames": 5}


def nearest_valid_frames(frames: int, least: int = 1) -> tuple[int, ...]:
    """The valid counts (4k+1, at least `least`) just below and just above `frames`; only the one above when
    none below is valid."""
    below = (frames - 1) // TEMPORAL * TEMPORAL + 1
    above = below + TEMPORAL
    if above < least:
        above = (least - 1 + TEMPORAL - 1) // TEMPORAL * TEMPORAL + 1  # the smallest valid count >= least
    return (below, above) if below >= least else (above,)


def check_frames(frames: int, name: str = "frames") -> None:
    """`frames` of setting `name` is a count of 4k+1 frames, or a UsageError naming it."""
    if frames < 1 or (frames - 1) % TEMPORAL:
        if frames < 1:
            raise UsageError(f"{setting(name, frames)} must be a positive count of the form 4k+1 (e.g. 97)",
                             field=name)
        counts = nearest_valid_frames(frames, SMALLEST.get(name, 1))
        raise UsageError(f"{setting(name, frames)} is not of the form 4k+1: use {' or '.join(map(str, counts))}",
                         field=name)


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if value < SPATIAL or value % SPATIAL:
            lower = max(SPATIAL, value // SPATIAL * SPATIAL)
            raise UsageError(f"{setting(name, value)} is not a positive multiple of 16: use {lower} or "
                             f"{lower + SPATIAL}", field=name)


def check_positive(value: float, name: str) -> None:
    """`value` of setting `name` is a positive finite number, or a UsageError naming it."""
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise UsageError(f"{setting(name, value)} must be a positive number", field=name)
