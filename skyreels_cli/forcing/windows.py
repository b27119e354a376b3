"""How a diffusion forcing run splits into windows (pure arithmetic).

Counts here are latent frames. Each window holds a clean prefix (start image,
input video, or the last `overlap` latents of the window before) followed by
new frames; the new frames are grouped in causal blocks of `causal_block`.
A window runs `1 + ceil((L - B) / (B - O))` times for L latent frames in windows
of B with an overlap of O; `cuts` (a shot list's boundaries) end windows early
so that no window's new frames cross one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..errors import UsageError, setting
from .frames import TEMPORAL, latent_frames, pixel_frames


@dataclass(frozen=True)
class Window:
    index: int
    prefix: int            # clean latent frames at the start of the window
    length: int            # latent frames in the window (prefix included, end image excluded)
    blocks: tuple[int, ...]  # causal block sizes covering the window
    ready_blocks: int      # how many leading blocks are the clean prefix
    end_image: bool        # a clean end-image latent is appended after the window

    @property
    def new(self) -> int:
        return self.length - self.prefix


@dataclass(frozen=True)
class WindowPlan:
    total: int              # latent frames of the whole timeline, prefixes from inputs included
    start_prefix: int       # clean latent frames taken from the start image or input video
    base: int
    overlap: int
    causal_block: int
    windows: Sequence[Window]  # Windows: runs of the same window (a live plan's: the first, then one later window repeated)


def causal_blocks(prefix: int, new: int, causal_block: int) -> tuple[tuple[int, ...], int]:
    """Prefix blocks then new blocks; a prefix not a multiple of the block (a start image) is one block."""
    if prefix % causal_block == 0:
        prefix_blocks = (causal_block,) * (prefix // causal_block)
    else:
        prefix_blocks = (prefix,)
    return prefix_blocks + (causal_block,) * (new // causal_block), len(prefix_blocks)


def plan_windows(
    total: int, *, base: int, overlap: int, causal_block: int = 1, start_prefix: int = 0, end_image: bool = False,
    cuts: tuple[int, ...] = (),
) -> WindowPlan:
    """Windows for `total` latent frames, or UsageError naming the setting that cannot work.

    `cuts`: timeline positions (latent frames from the start, prefix included) that no window's new frames
    may cross; a window ends at the next cut and the following one continues from its last `overlap` frames.
    Each stretch between cuts must fill whole causal blocks (TailError otherwise)."""
    c = causal_block
    if c < 1:
        raise UsageError(f"{setting('causal_block')} must be at least 1, got {c}")
    long = total > base
    if long and overlap % c:
        # A carried-over prefix must fill whole blocks. (Window lengths need not: each window's
        # new frames are rounded down to whole blocks, so no frame is ever left undenoised.)
        below = max(c, overlap // c * c)
        raise UsageError(
            f"{setting('overlap', pixel_frames(overlap))} is {overlap} latent frames, not a multiple of {setting('causal_block', c)}; "
            f"use {setting('overlap', pixel_frames(below))} or {pixel_frames(below + c)}"
        )
    if long and not 0 < overlap < base:
        raise UsageError(
            f"{setting('overlap', pixel_frames(overlap))} must be smaller than {setting('base_frames', pixel_frames(base))}; "
            f"use {setting('overlap', pixel_frames(max(1, (base - 1) // 2)))} or a longer {setting('base_frames')}"
        )
    if start_prefix >= base:
        raise UsageError(f"the input video's overlap does not leave room for new frames; lower {setting('overlap')}")
    stops = sorted({cut for cut in cuts if start_prefix < cut < total} | {total})
    runs: list[tuple[Window, int]] = []  # each window shape and how many times it runs in a row
    count = 0
    done = start_prefix
    prefix = start_prefix
    while done < total or not count:
        stop = next(cut for cut in stops if cut > done) if done < total else total
        if count and long and base - prefix < c:  # then no length that needs a second window can work
            raise UsageError(f"{setting('overlap', pixel_frames(overlap))} leaves no room for a causal block of {c} new frames in "
                             f"{setting('base_frames', pixel_frames(base))} windows; lower {setting('overlap')}")
        room = min(base - prefix, stop - done)
        new = room - room % c
        if new <= 0:
            raise TailError(tail_message(c))
        last = done + new >= total
        blocks, ready = causal_blocks(prefix, new, c)
        window = Window(count, prefix, prefix + new, blocks, ready, end_image and last)
        # The windows after it that are the same (a later window's prefix, as many new frames, not the last
        # with an end image): counted, not listed, so a plan of a day of video costs what one of three windows does
        same = 0 if prefix != overlap or last else repeats(stop - done - new, new, end_image and stop == total)
        runs.append((window, 1 + same))
        count += 1 + same
        done += new * (1 + same)
        prefix = overlap
    if done != total:
        raise TailError(tail_message(c))
    return WindowPlan(total, start_prefix, base, overlap, c, Windows(tuple(runs)))


def repeats(left: int, new: int, end_image: bool) -> int:
    """How many more windows of `new` new frames fit in the `left` latent frames to the next cut; with an end
    image at that cut, the window that ends there differs (it carries the image)."""
    more = left // new
    return more - 1 if end_image and more and left == more * new else more


class Windows(Sequence):
    """A plan's windows as runs of the same window (`runs`: (window, times in a row)); each built when asked for."""

    def __init__(self, runs: tuple[tuple[Window, int], ...]) -> None:
        self.runs = runs
        self.count = sum(times for _, times in runs)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(index)
        for window, times in self.runs:
            if index < window.index + times:
                return window if index == window.index else replace(window, index=index)
        raise IndexError(index)

    def __iter__(self) -> Iterator[Window]:
        for window, times in self.runs:
            yield window
            yield from (replace(window, index=window.index + i) for i in range(1, times))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Windows):
            return self.runs == other.runs
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self.runs)

    def __repr__(self) -> str:
        return f"Windows({self.runs!r})"

    def distinct(self) -> tuple[Window, ...]:
        """One window of each run (the others repeat it)."""
        return tuple(window for window, _ in self.runs)


class TailError(UsageError):
    """The last window's new frames do not fill whole causal blocks."""


def tail_message(c: int) -> str:
    return f"{setting('frames')} leaves a last window whose new latent frames are not a multiple of " \
           f"{setting('causal_block', c)}"


def _plan_exact(frames: int, base_frames: int, overlap_frames: int, causal_block: int, image: bool, video: bool,
                end_image: bool) -> WindowPlan:
    """The plan for exactly `frames` frames, or TailError (without looking for lengths that work)."""
    base, overlap = latent_frames(base_frames), latent_frames(overlap_frames)
    start = overlap if video else (1 if image else 0)
    total = start + new_latents_for_video(frames) if video else latent_frames(frames)
    return plan_windows(
        total, base=base, overlap=overlap, causal_block=causal_block, start_prefix=start, end_image=end_image
    )


def plan_for_length(
    frames: int, *, base_frames: int, overlap_frames: int, causal_block: int = 1,
    image: bool = False, video: bool = False, end_image: bool = False,
) -> tuple[int, WindowPlan]:
    """Any positive length: the shortest length at or above `frames` that a plan can make, and that plan.

    Lengths are whole latent frames (4k+1, or a multiple of 4 new frames after a video) whose last
    window fills whole causal blocks; the output is then cut to exactly `frames`.
    """
    if video:
        start = -(-frames // TEMPORAL) * TEMPORAL
    else:
        start = pixel_frames(latent_frames(frames + TEMPORAL - 1)) if frames > 1 else 1
    limit = start + TEMPORAL * 4 * max(causal_block, latent_frames(base_frames))
    for n in range(start, limit, TEMPORAL):
        try:
            return n, _plan_exact(n, base_frames, overlap_frames, causal_block, image, video, end_image)
        except TailError:
            continue
    raise UsageError(f"no length at or above {setting('frames', frames)} fills whole causal blocks of {causal_block} with "
                     f"{setting('base_frames', base_frames)} and {setting('overlap', overlap_frames)}; use {setting('causal_block', 1)}")


def new_latents_for_video(new_frames: int) -> int:
    """Latent frames that continue a video by `new_frames` pixel frames (4 per latent)."""
    if new_frames < TEMPORAL or new_frames % TEMPORAL:
        below = max(TEMPORAL, new_frames // TEMPORAL * TEMPORAL)
        raise UsageError(
            f"with {setting('video')}, {setting('frames')} counts the new frames and must be a multiple of 4; use {below} or {below + TEMPORAL}"
        )
    return new_frames // TEMPORAL


def distinct_windows(plan: WindowPlan) -> Sequence[Window]:
    """Every window of a plan whose shape may differ from the others': all of them, or a live plan's two."""
    return plan.windows.distinct() if isinstance(plan.windows, Windows) else plan.windows


def live_plan(max_frames: int, *, base_frames: int, overlap_frames: int, causal_block: int = 1,
              image: bool = False, video: bool = False) -> tuple[int, WindowPlan]:
    """A live run's plan: whole windows of the usual shape until the next would pass `max_frames`, at least one.

    Returns (frames made by all of them, plan). The first window and a later one are planned as any run's two
    windows would be (the same checks), the rest repeat the later one."""
    base, overlap = latent_frames(base_frames), latent_frames(overlap_frames)
    start = overlap if video else (1 if image else 0)
    first_new = (base - start) - (base - start) % causal_block
    later_new = (base - overlap) - (base - overlap) % causal_block
    if first_new <= 0:
        raise TailError(tail_message(causal_block))
    two = plan_windows(start + first_new + max(later_new, 1), base=base, overlap=overlap, causal_block=causal_block,
                       start_prefix=start)
    first, later = two.windows[0], two.windows[1]
    made_first = live_frames_made(1, first.new, later.new, start, video)
    count = 1 + max(0, (max_frames - made_first) // (TEMPORAL * later.new))
    # none built until asked for: a plan for a day of video costs what one for two windows does
    windows = Windows(((first, 1),) + (((later, count - 1),) if count > 1 else ()))
    total = start + first.new + later.new * (count - 1)
    return live_frames_made(count, first.new, later.new, start, video), \
        WindowPlan(total, start, base, overlap, causal_block, windows)  # type: ignore[arg-type]


def live_frames_made(windows: int, first_new: int, later_new: int, start: int, video: bool) -> int:
    """Frames a live run's first `windows` windows put in the output (a start image's frame included, a continued
    video's not)."""
    latents = first_new + later_new * (windows - 1)
    return TEMPORAL * latents if video else pixel_frames(start + latents)


def window_counts(plan: WindowPlan) -> Iterator[tuple[Window, int]]:
    """Each distinct window and how many times it runs."""
    windows = plan.windows
    if isinstance(windows, Windows):
        yield from windows.runs
        return
    for window in windows:
        yield window, 1
