"""Shot lists against a resolved request: each shot's length, the windows cut at the shots' boundaries, which
shot's prompt each window takes, and what the sidecar records of them.

The window plan is built shot by shot: every window's new frames lie inside one shot, so each window has
exactly one prompt (its shot's), a shot of any length gets its own windows however short, and each cut falls
where the list puts it (rounded up to whole latent frames, 4 pixel frames, and to whole causal blocks). The
overlap a window carries over from the one before is what continues the picture across a cut. A prompt
file's shots have no length: each lasts one window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import UsageError, setting
from ..forcing.frames import TEMPORAL, latent_frames, pixel_frames
from ..forcing.windows import Window, WindowPlan, plan_for_length, plan_windows
from .request import Request, Shot

if TYPE_CHECKING:
    from ..forcing.engine import Conditioning


# ------------------------------------------------------------------ each shot's length

def resolve_shots(r: Request, asked: int | None) -> Request:
    """Fill in each shot's length in frames and the request's total; `asked`: the frames the user gave, if any.

    `r` has its diffusion forcing defaults filled in (window and overlap lengths, fps).
    """
    if not r.shots:
        raise UsageError("the shot list is empty; give at least one shot with a prompt", field="shots")
    shots = tuple(_checked_shot(shot, i, r.fps) for i, shot in enumerate(r.shots))
    lengths = [shot.frames is None for shot in shots]
    if all(lengths):
        shots = _one_window_each(r, shots, asked)
    elif any(lengths):
        raise UsageError(f"shot {lengths.index(True) + 1} has no length; give every shot frames or seconds", field="shots")
    total = sum(shot.frames for shot in shots)
    if asked is not None and asked != total:
        raise UsageError(f"{setting('frames', asked)} differs from the shots' total of {total} frames; leave "
                         f"{setting('frames')} out", field="frames")
    return replace(r, shots=shots, frames=total, seconds=None, prompt=r.prompt or shots[0].prompt)


def _checked_shot(shot: Shot, i: int, fps: float) -> Shot:
    where = f"shot {i + 1}"
    if not shot.prompt.strip():
        raise UsageError(f"{where} has no prompt", field="shots")
    if shot.guidance is not None and not (math.isfinite(shot.guidance) and shot.guidance >= 0):
        raise UsageError(f"{where}: guidance must be a finite number, 0 or more, got {shot.guidance}", field="shots")
    frames = shot.frames
    if frames is None and shot.seconds is not None:
        if not (math.isfinite(shot.seconds) and shot.seconds > 0):
            raise UsageError(f"{where}: seconds must be a positive number, got {shot.seconds}", field="shots")
        if not math.isfinite(shot.seconds * fps):
            raise UsageError(f"{where}: seconds {shot.seconds} is too long at {fps} fps", field="shots")
        frames = max(1, round(shot.seconds * fps))
    if frames is not None and frames <= 0:
        raise UsageError(f"{where}: frames must be positive, got {frames}", field="shots")
    return shot._replace(frames=frames)


def _one_window_each(r: Request, shots: tuple[Shot, ...], asked: int | None) -> tuple[Shot, ...]:
    """Prompt-file shots: each lasts one window of the usual plan."""
    base, overlap, c = latent_frames(r.base_frames), latent_frames(r.overlap), r.causal_block
    start = _start_prefix(r)
    first = (base - start) - (base - start) % c
    later = (base - overlap) - (base - overlap) % c
    lengths = [_frame_at(start + first, start, bool(r.video))] + [TEMPORAL * later] * (len(shots) - 1)
    if asked is not None:
        plan = plan_for_length(asked, base_frames=r.base_frames, overlap_frames=r.overlap, causal_block=c,
                               image=bool(r.image), video=bool(r.video), end_image=bool(r.end_image))[1]
        if len(plan.windows) != len(shots):
            raise UsageError(f"the prompt file has {len(shots)} prompts, one per window, but "
                             f"{setting('frames', asked)} makes {len(plan.windows)} windows; use "
                             f"{setting('frames', sum(lengths))} or leave {setting('frames')} out", field="frames")
        ends = [_frame_at(w.length + _timeline_start(plan, w), start, bool(r.video)) for w in plan.windows]
        ends[-1] = asked
        lengths = [b - a for a, b in zip([0, *ends[:-1]], ends)]
    return tuple(shot._replace(frames=n) for shot, n in zip(shots, lengths))


def _timeline_start(plan: WindowPlan, window: Window) -> int:
    """The timeline latent index where `window` begins."""
    done = plan.start_prefix
    for w in plan.windows[: window.index]:
        done += w.new
    return done - window.prefix


def _start_prefix(r: Request) -> int:
    """Clean latent frames before the first new one: an input video's overlap, or a start image."""
    return latent_frames(r.overlap) if r.video else (1 if r.image else 0)


def _frame_at(latent: int, start: int, video: bool) -> int:
    """Pixel frames (of those this run makes) before timeline latent index `latent`."""
    if video:
        return TEMPORAL * (latent - start)
    return pixel_frames(latent) if latent > 0 else 0


def _latent_end(frames: int, start: int, video: bool) -> int:
    """The timeline latent index just past the first `frames` pixel frames made."""
    if video:
        return start + -(-frames // TEMPORAL)
    return (frames + 2 * TEMPORAL - 2) // TEMPORAL  # the fewest latents whose 4L-3 frames cover `frames`


# ------------------------------------------------------------------ shots to windows

@dataclass(frozen=True)
class ShotLayout:
    plan: WindowPlan
    generated: int                       # pixel frames the plan makes (the output is cut to the request's)
    ranges: tuple[tuple[int, int], ...]  # each shot's (first frame, frames) in the frames made
    window_shot: tuple[int, ...]         # the shot (from 0) each window belongs to


def shot_layout(r: Request) -> ShotLayout:
    """Windows for a resolved shot list: each window's new frames inside one shot (see the module docstring)."""
    base, overlap, c = latent_frames(r.base_frames), latent_frames(r.overlap), r.causal_block
    video, start = bool(r.video), _start_prefix(r)
    ends = _shot_ends(r, start, c)
    plan = plan_windows(ends[-1], base=base, overlap=overlap, causal_block=c, start_prefix=start,
                        end_image=bool(r.end_image), cuts=tuple(ends[:-1]))
    if len(plan.windows) > 1 and plan.windows[0].length < overlap:
        need = _frame_at(overlap, start, video)
        raise UsageError(f"shot 1 is {r.shots[0].frames} frames, shorter than the {need} frames "
                         f"({setting('overlap')}) the next window continues from; make it at least {need} frames "
                         f"or lower {setting('overlap')}", field="shots")
    window_shot, done = [], start
    for window in plan.windows:
        done += window.new
        window_shot.append(next(shot for shot, end in enumerate(ends) if done <= end))
    return ShotLayout(plan, _frame_at(ends[-1], start, video), _ranges(r, ends, start, video), tuple(window_shot))


def _shot_ends(r: Request, start: int, c: int) -> list[int]:
    """Where each shot ends on the latent timeline: whole latent frames, whole causal blocks, at least one."""
    ends, asked, previous = [], 0, start
    for shot in r.shots:
        asked += shot.frames
        new = _latent_end(asked, start, bool(r.video)) - start
        end = max(start + -(-new // c) * c, previous + c)
        ends.append(end)
        previous = end
    return ends


def _ranges(r: Request, ends: list[int], start: int, video: bool) -> tuple[tuple[int, int], ...]:
    ranges = []
    first = 0
    for i, end in enumerate(ends):
        last = min(_frame_at(end, start, video), r.frames)
        if last <= first:
            raise UsageError(f"shot {i + 1} starts after the video's end: the shots before it were rounded up to "
                             f"whole causal blocks of {r.causal_block}; lengthen it or use "
                             f"{setting('causal_block', 1)}", field="shots")
        ranges.append((first, last - first))
        first = last
    return tuple(ranges)


def shot_plan(r: Request) -> tuple[int, WindowPlan]:
    """(frames made, window plan) of a resolved shot list: what `resolve.window_plan` gives for it."""
    layout = shot_layout(r)
    return layout.generated, layout.plan


# ------------------------------------------------------------------ conditioning and the record

def shot_conditioning(r: Request, encode: Callable[[str, str, float], Conditioning]) -> Callable[[int], Conditioning]:
    """Window index -> its shot's conditioning; every shot's embeddings are computed here, once, up front."""
    window_shot = shot_layout(r).window_shot
    known: dict[tuple, Conditioning] = {}
    per_shot = []
    for shot in r.shots:
        key = (shot.prompt, _or(shot.negative_prompt, r.negative_prompt), _or(shot.guidance, r.guidance))
        if key not in known:
            known[key] = encode(*key)
        per_shot.append(known[key])
    return lambda window: per_shot[window_shot[window]]


def _or(value, fallback):
    return fallback if value is None else value


def shots_record(r: Request) -> list[dict]:
    """For the sidecar: each shot's prompt, the frames made under it (counted from the first frame this run
    makes, after a continued video), the frames asked for, and the windows that used its prompt."""
    layout = shot_layout(r)
    return [{"prompt": shot.prompt, "first_frame": first, "frames": frames, "frames_asked": shot.frames,
             "guidance": _or(shot.guidance, r.guidance),
             "windows": [w for w, s in enumerate(layout.window_shot) if s == i]}
            for i, (shot, (first, frames)) in enumerate(zip(r.shots, layout.ranges))]
