"""Step caching that is correct for diffusion forcing: skip a model call only when the frames it updates barely moved.

TeaCache and first-block caches skip a transformer call when its input changed little since the last computed
call and reuse that call's result. In diffusion forcing each latent frame has its own noise level: a row of the
step matrix updates only some frames (the active ones), the clean prefix and finished frames never change, and the
set of active frames changes as blocks start and finish. A change measure over the whole tensor is then diluted by
frames that do not move and skips calls it must not. This cache works at the engine's velocity seam (one whole
transformer call) and decides per call from a cheap measure on the model input:

- the change is the relative L1 difference of the model input over the *active* frames only, accumulated over the
  calls since the last computed one (TeaCache-style); a call is skipped while that sum stays below `threshold`;
- a skipped call returns the last computed output (in flow matching the velocity is nearly constant along a
  step, and only the active frames' velocity is used by the solver);
- never skipped: the first and last rows of a window, a row in which some frame takes its final step (the last
  row's role for each asynchronous block), a row whose active frames differ from those of the cached call, and
  a call after `max_skips` skips in a row;
- state is per window (shapes and prefix change) and per pass name (`"cond"`, `"uncond"`, or one batched
  `"cfg"` pass), so guidance never mixes a conditional result into the unconditional pass.

`threshold = 0` never skips and never measures: outputs are exactly those of no cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class _PassState:
    """What one pass (cond, uncond, or a batched pair) remembers within a window."""

    output: torch.Tensor | None = None      # the last computed output, reused when skipping
    active: torch.Tensor | None = None      # the active frames of every call since `output` was computed
    last_input: torch.Tensor | None = None  # the previous call's input (computed or skipped)
    change: float = 0.0                     # relative change accumulated since `output` was computed
    skips: int = 0                          # skips in a row


@dataclass
class WindowCount:
    calls: int = 0
    skipped: int = 0
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)  # (row, pass name) of each skip


def relative_change(current: torch.Tensor, previous: torch.Tensor, active: torch.Tensor) -> float:
    """Relative L1 change over the active frames (dim 2), the largest over the batch."""
    frames = active.to(current.device)
    cur = current[:, :, frames].float()
    prev = previous[:, :, frames].float()
    dims = tuple(range(1, cur.ndim))
    diff = (cur - prev).abs().sum(dim=dims)
    scale = prev.abs().sum(dim=dims).clamp_min(1e-12)
    return (diff / scale).max().item()


class StepCache:
    """Skips model calls whose active frames barely changed; counts calls and skips per window.

    Use: `start_window(index, update, steps)` with each window's step matrix, `start_row(row)` before each
    row's model call(s), and `velocity(compute, name=..., model_in=...)` around each transformer call.
    """

    def __init__(self, threshold: float, max_skips: int = 2) -> None:
        if threshold < 0 or max_skips < 0:
            raise ValueError("step cache needs threshold >= 0 and max_skips >= 0")
        self.threshold = float(threshold)
        self.max_skips = int(max_skips)
        self.windows: list[WindowCount] = []
        self._states: dict[str, _PassState] = {}
        self._update = torch.zeros(0, 0, dtype=torch.bool)
        self._final = torch.zeros(0, dtype=torch.bool)
        self._row = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def start_window(self, index: torch.Tensor, update: torch.Tensor, steps: int) -> None:
        """Forget everything cached (a new window has new shapes and a new prefix) and take its step matrix.

        `index` and `update` are `forcing.schedule.step_matrix`'s `[rows, frames]` matrices, `steps` the
        sampling steps: a frame whose index reaches `steps` in a row takes its final step there.
        """
        self._states = {}
        self._update = update.detach().to("cpu", torch.bool)
        self._final = ((index.detach().cpu() == steps) & self._update).any(dim=1)
        self._row = 0
        self.windows.append(WindowCount())

    def start_row(self, row: int) -> None:
        """The step-matrix row whose model call(s) come next."""
        self._row = row

    def velocity(self, compute: Callable[[], torch.Tensor], *, name: str, model_in: torch.Tensor) -> torch.Tensor:
        """`compute()`'s result, or the output cached for `name` when the active frames barely changed."""
        if not self.windows:
            raise RuntimeError("StepCache.start_window must be called before velocity")
        count = self.windows[-1]
        count.calls += 1
        if not self.enabled:
            return compute()
        active = self._frames_mask(model_in.shape[2])
        state = self._states.setdefault(name, _PassState())
        if self._may_skip(state, active, model_in):
            state.skips += 1
            count.skipped += 1
            count.skipped_rows.append((self._row, name))
            return state.output.clone()
        output = compute()
        state.output, state.active = output, active
        state.change, state.skips = 0.0, 0
        return output

    def _frames_mask(self, frames: int) -> torch.Tensor:
        """The row's active frames over the model input; frames past the window (an end image) are inactive."""
        active = self._update[self._row]
        mask = torch.zeros(frames, dtype=torch.bool)
        n = min(frames, active.numel())
        mask[:n] = active[:n]
        return mask

    def _may_skip(self, state: _PassState, active: torch.Tensor, model_in: torch.Tensor) -> bool:
        """Update the accumulated change with this call's input and say whether the call may be skipped."""
        # A skipped call has the cached call's active frames, so those are also the previous call's.
        same_frames = state.output is not None and torch.equal(state.active, active) and bool(active.any())
        if same_frames:
            # Only the frames this row updates: the clean prefix and finished frames do not move (with add-noise
            # the prefix is re-noised every row, which says nothing of how far the updated frames moved).
            state.change += relative_change(model_in, state.last_input, active)
        state.last_input = model_in.detach().clone()
        # The first row has nothing cached; a frame's final step fixes its latent for good (in a synchronous
        # window that is the last row; asynchronously each block has its own).
        edge = self._row == 0 or self._row >= len(self._update) - 1 or bool(self._final[self._row])
        if edge or not same_frames or state.skips >= self.max_skips:
            return False
        return state.change < self.threshold

    # Reporting, for the console and the run's sidecar.

    @property
    def calls(self) -> int:
        return sum(w.calls for w in self.windows)

    @property
    def skipped(self) -> int:
        return sum(w.skipped for w in self.windows)

    def stats(self) -> dict:
        """Plain numbers for the sidecar: settings, totals and per-window counts."""
        return {
            "threshold": self.threshold,
            "max_skips": self.max_skips,
            "calls": self.calls,
            "skipped": self.skipped,
            "windows": [{"calls": w.calls, "skipped": w.skipped} for w in self.windows],
        }

    def summary(self) -> str:
        """One line for the console."""
        share = self.skipped / self.calls if self.calls else 0.0
        return f"step cache: skipped {self.skipped} of {self.calls} model calls ({share:.0%}), threshold {self.threshold}"
