"""A run's progress as events, and the arithmetic of the time left: one estimate over all windows.

A run tells whoever listens (`model.generate(..., on_event=callback)`, `sk.run(job, on_event=...)`) that it
started, that a step or a window is done, and that it finished; each event carries the time elapsed and
the estimate of the time left (`eta_s`, None until some work is done). The estimate weighs each window by
its work (model rows times latent frames), so a short last window or a resumed run does not skew it. The
CLI's display (`cli/progress.py`) only formats these events; a service streams them as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..forcing.schedule import step_matrix
from ..forcing.windows import WindowPlan


@dataclass(frozen=True)
class RunStarted:
    windows: int                     # windows in the whole run (1 for a clip)
    frames: int                      # frames this run makes
    preview: Path | None             # plays what is finished so far: NAME.partial.mp4 or DIR.partial/ (None: no file)
    done: int = 0                    # windows finished before this run (resumed)
    description: str = ""            # what is made, and where (one line)
    memory_plan: str = ""            # the model's memory plan and why it was chosen (one line)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    runtime: dict = field(default_factory=dict)  # how the model runs (as the sidecar's run.runtime)


@dataclass(frozen=True)
class StepDone:
    window: int                      # from 0
    step: int                        # model rows done in this window, 1..steps
    steps: int                       # model rows in this window
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass(frozen=True)
class WindowDone:
    window: int                      # from 0
    windows: int
    frames: int                      # frames in the output so far
    preview: Path | None = None      # plays everything finished so far (None: no file, or a single clip)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    # A live run's pace: seconds of video this window made per second of wall time it took (1.0: real time)
    rtf: float | None = None
    # A live run's window that is the first to show a new prompt: seconds from the change to its frames out
    prompt_latency_s: float | None = None


@dataclass(frozen=True)
class RunFinished:
    frames: int                      # frames this run made
    seconds: float                   # wall time of this run
    path: Path | None                # the output (None: streamed, no file)
    in_file: int | None = None       # frames in the output: a continued video's and earlier runs' too

    @property
    def elapsed_s(self) -> float:
        return self.seconds


@dataclass(frozen=True)
class PromptEnhanced:
    """The job's prompt was rewritten by a local LLM before the video model loaded (`Job.enhance`)."""

    original: str
    prompt: str
    enhancer: str                    # the repo id or folder that wrote it
    seconds: float


Event = PromptEnhanced | RunStarted | StepDone | WindowDone | RunFinished
OnEvent = Callable[[Event], None]


class RunClock:
    """Elapsed time and time left of one run: `costs` per window, the run starting at window `start`."""

    def __init__(self, costs: Sequence[float], start: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.costs, self.start, self.clock = tuple(costs) or (1.0,), start, clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return round(self.clock() - self.t0, 3)

    def eta(self, window: int, fraction: float) -> float | None:
        """Seconds left now that `fraction` of `window` is done."""
        left = eta(self.elapsed(), self.costs, self.start, window, fraction)
        return None if left is None else round(left, 3)


def window_costs(plan: WindowPlan, steps: int, ar_step: int) -> tuple[float, ...]:
    """Each window's work: its model rows (asynchronous windows have more) times its latent frames."""
    rows = (step_matrix(w.blocks, steps, ar_step, w.ready_blocks)[0].shape[0] for w in plan.windows)
    return tuple(float(r * w.length) for r, w in zip(rows, plan.windows))


def work_done(costs: Sequence[float], start: int, window: int, fraction: float) -> float:
    """Work done in this run: windows `start`..`window-1` whole, and `fraction` of window `window`."""
    current = costs[window] * min(max(fraction, 0.0), 1.0) if window < len(costs) else 0.0
    return float(sum(costs[start:window]) + current)


def remaining_seconds(elapsed: float, done: float, total: float) -> float | None:
    """Time left at the rate seen so far: `total` work in this run, `done` of it in `elapsed` seconds.

    None until some work is done (no rate yet)."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0.0) * elapsed / done


def eta(elapsed: float, costs: Sequence[float], start: int, window: int, fraction: float) -> float | None:
    """Seconds left over all windows: run resumed at window `start`, now in `window`, `fraction` of it done."""
    return remaining_seconds(elapsed, work_done(costs, start, window, fraction), float(sum(costs[start:])))


def seconds_per_frame(seconds: float, frames: int) -> float | None:
    return seconds / frames if frames > 0 else None


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`, `2d03h`: short enough for one status line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
