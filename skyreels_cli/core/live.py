"""A live video's prompts: changed while it runs, applied from the next window not yet started, and recorded as
a timeline (window -> prompt) that is a shot list, so the same frames can be made again.

    prompts = sk.LivePrompts()
    job = sk.Job("extend", sk.Request(prompt="a fox in the snow", live=True), output="fox.mp4")
    threading.Thread(target=sk.run, args=(job,), kwargs={"prompts": prompts, "cancel": stop}).start()
    prompts.set("the fox jumps into a river")   # -> 3: window 3 is the first to show it
    stop.cancel()                                # the video ends after its last finished window, complete

The run asks `for_window(k)` as window k starts; a prompt set while window k runs lands at k + 1. The timeline
is a list of `{"window", "prompt", "negative_prompt"}` (each entry lasting until the next one's window);
`replay_request` turns it and the frames made into the equivalent shot list, which a plain `extend` makes
frame for frame the same (the windows of a live run end where the shot list's cuts fall).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import UsageError
from ..forcing.windows import distinct_windows, live_frames_made
from .request import Request, Shot


class LivePrompts:
    """Thread-safe prompt source of a live run: `set` from any thread, the run reads it before each window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._timeline: list[dict] = []
        self._pending: tuple[str, str | None, float] | None = None
        self._started = -1  # the last window whose prompt was taken
        self._changed_at: dict[int, float] = {}  # window -> when the prompt it shows first was set

    def set(self, prompt: str, negative_prompt: str | None = None) -> int:
        """Steer the video: `prompt` (and `negative_prompt`, None: the request's) from the next window not yet
        started, whose index is returned. A later `set` before that window starts replaces this one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("the new prompt is empty; describe what the video shows next", field="prompt")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise UsageError(f"negative_prompt must be text, got {negative_prompt!r}", field="negative_prompt")
        with self._lock:
            self._pending = (prompt.strip(), negative_prompt, self._clock())
            return self._started + 1

    def for_window(self, window: int, request: Request) -> tuple[str, str | None]:
        """The prompt and negative prompt of `window` (called by the run as it starts the window, in order)."""
        with self._lock:
            self._started = max(self._started, window)
            if not self._timeline:
                self._timeline.append({"window": window, "prompt": request.prompt, "negative_prompt": None})
            if self._pending is not None:
                prompt, negative, at = self._pending
                self._pending = None
                last = self._timeline[-1]
                if last["window"] == window:  # set before the first window started: it starts with it
                    self._timeline[-1] = {"window": window, "prompt": prompt, "negative_prompt": negative}
                elif (prompt, negative) != (last["prompt"], last["negative_prompt"]):
                    self._timeline.append({"window": window, "prompt": prompt, "negative_prompt": negative})
                    self._changed_at[window] = at
            last = self._timeline[-1]
            return last["prompt"], last["negative_prompt"]

    def restore(self, timeline: list[dict]) -> None:
        """Continue a resumed run's timeline (its windows already made keep their prompts)."""
        with self._lock:
            self._timeline = [dict(entry) for entry in timeline]
            if timeline:
                self._started = max(self._started, timeline[-1]["window"])

    def timeline(self) -> list[dict]:
        with self._lock:
            return [dict(entry) for entry in self._timeline]

    def latency(self, window: int, now: float | None = None) -> float | None:
        """Seconds from the prompt change that `window` is the first to show to now (its frames out); None if it
        shows no new prompt."""
        with self._lock:
            at = self._changed_at.get(window)
        return None if at is None else round((self._clock() if now is None else now) - at, 3)


def replay_request(request: Request, timeline: list[dict], windows: int) -> Request:
    """The shot list that makes the same frames as a live run of `request` (resolved) stopped after `windows`
    windows: one shot per timeline entry, as long as the windows it lasted. A plain `extend`, not live."""
    plan = distinct_windows(_plan(request))
    first_new = plan[0].new
    later_new = plan[1].new if len(plan) > 1 else plan[0].new
    start = plan[0].prefix  # the start image's or continued video's latents
    made = [live_frames_made(n, first_new, later_new, start, bool(request.video)) if n else 0
            for n in range(windows + 1)]
    entries = [e for e in timeline if e["window"] < windows]
    shots = []
    for i, entry in enumerate(entries):
        end = entries[i + 1]["window"] if i + 1 < len(entries) else windows
        shots.append(Shot(entry["prompt"], made[end] - made[entry["window"]], None, entry["negative_prompt"]))
    return replace(request, live=None, shots=tuple(shots), frames=made[windows], seconds=None)


def _plan(request: Request):
    from .resolve import window_plan

    return window_plan(request)


def real_time_factor(frames: int, fps: float, seconds: float) -> float | None:
    """Seconds of video made per second of wall time (1.0: as fast as it plays); None before any time passed."""
    return round(frames / fps / seconds, 4) if seconds > 0 else None
