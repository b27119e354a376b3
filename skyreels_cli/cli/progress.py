"""One progress display for a whole run, fed by the library's events (core/events.py).

On a terminal it redraws one line (window, step, elapsed, time left, preview); into a file or pipe
it writes one plain line per window, so logs of hour-long runs stay readable. Either way the run
starts with what is made and its memory plan, and ends with a one-line summary. The times are the
events' own: this only formats them.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..core.events import (
    Event,
    PromptEnhanced,
    RunFinished,
    RunStarted,
    StepDone,
    WindowDone,
    format_duration,
    seconds_per_frame,
)

REDRAW_S = 0.1  # a terminal line is redrawn at most this often on step events (tiny models step in ms)


class ProgressDisplay:
    """Callable on the library's events; writes to `stream` (stderr by default). `clock` paces redraws."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.width = width
        self.started: RunStarted | None = None
        self.window = 0  # the window being made
        self.step = ""
        self.elapsed, self.eta = 0.0, None  # as the last event said
        self.last_draw = -REDRAW_S
        self.drawn = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, PromptEnhanced):
            self._print(f"enhanced prompt ({event.enhancer}, {event.seconds:.1f} s): {event.prompt}")
            return
        self.elapsed, self.eta = event.elapsed_s, getattr(event, "eta_s", None)
        if isinstance(event, RunStarted):
            self.started, self.window = event, event.done
            self._opening(event)
            self._draw(force=True)
        elif isinstance(event, StepDone):
            self.window = event.window
            self.step = f"step {event.step}/{event.steps}"
            self._draw()
        elif isinstance(event, WindowDone):
            self.window, self.step = event.window + 1, ""
            if self.tty:
                self._draw(force=True)
            elif event.windows > 1:
                self._print(self._window_line(event))
        elif isinstance(event, RunFinished):
            self._clear()
            self._print(summary(event))

    # ------------------------------------------------------------ text

    def _opening(self, event: RunStarted) -> None:
        if event.description:
            self._print(event.description)
        if event.memory_plan:
            self._print(f"memory plan: {event.memory_plan}")
        if event.runtime.get("parallel"):
            from .info import parallel_line

            self._print(parallel_line(event.runtime["parallel"]))

    def _times(self) -> str:
        about = "estimating time left" if self.eta is None else f"about {format_duration(self.eta)} left"
        return f"{format_duration(self.elapsed)} elapsed, {about}"

    def _preview(self) -> str:
        s = self.started
        # The preview exists once a window is finished; a single clip has none worth naming.
        if s is None or s.preview is None or s.windows < 2 or self.window == 0:
            return ""
        return f"; preview: {s.preview}"

    def _window_line(self, event: WindowDone) -> str:
        if event.rtf is not None:  # a live run: no end, its pace instead of the time left
            steered = "" if event.prompt_latency_s is None else \
                f", the new prompt out {event.prompt_latency_s:.1f} s after it was given"
            return (f"window {event.window + 1} done, {event.frames} frames, {event.rtf:.2f}x real time{steered}"
                    f"{self._preview()}")
        return f"window {event.window + 1}/{event.windows} done, {event.frames} frames, {self._times()}{self._preview()}"

    def _status_line(self) -> str:
        s = self.started
        windows = s.windows if s else 1
        where = f"window {min(self.window + 1, windows)}/{windows}" if windows > 1 else ""
        parts = ", ".join(p for p in (where, self.step) if p)
        return f"{parts + ' | ' if parts else ''}{self._times()}{self._preview()}"

    # ------------------------------------------------------------ output

    def _draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = self.clock()
        if not force and now - self.last_draw < REDRAW_S:
            return
        self.last_draw = now
        width = self.width or shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + self._status_line()[: max(width - 1, 10)])
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def summary(event: RunFinished) -> str:
    """The run's last line: frames, time, seconds per frame. Where the file holds more than this run made (a
    continued video, a resumed run) both counts show: `extend --video X --frames N` makes N new frames."""
    rate = seconds_per_frame(event.seconds, event.frames)
    per = "" if rate is None else f", {rate:.2f} s per frame"
    made = f"{event.frames} frames"
    if event.in_file is not None and event.in_file != event.frames:
        made = f"{event.frames} new frames ({event.in_file} in the file)"
    return f"done: {made} in {format_duration(event.seconds)}{per}"
