"""The sampler's time grid and the diffusion forcing step matrix: pure arithmetic.

The official SkyReels-V2 code samples on
`linspace(0.999, 0, N+1)[:-1]` (shifted), diffusers' UniPC on `linspace(1, 0.001, N+1)`.
Handing UniPC the official raw sigmas reproduces the official sampler exactly.

Two samplers (`SAMPLERS`): UniPC (the reference's) and the flow-matching Euler step the few-step distillation
LoRAs were trained with (`x' = x + (sigma_next - sigma) * v`). Either takes explicit noise levels (`sigmas`,
the level each step starts from, used as given: no shift, the last step goes to 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

GRIDS = ("official", "diffusers")
SAMPLERS = ("unipc", "euler")


def official_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas of the official sampler (UniPC applies the shift itself)."""
    return np.linspace(0.999, 0.0, steps + 1)[:-1]


class OfficialGridUniPCScheduler(UniPCMultistepScheduler):
    """UniPC that samples on the official SkyReels-V2 grid when asked for a step count.

    The diffusers pipelines call `set_timesteps(num_inference_steps)`; this keeps
    their code untouched while giving them the official sigmas.
    """

    fixed_sigmas: tuple[float, ...] | None = None  # given noise levels: used whatever step count is asked

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if self.fixed_sigmas is not None:
            sigmas = np.array(self.fixed_sigmas)
        elif sigmas is None and num_inference_steps is not None:
            sigmas = official_sigmas(num_inference_steps)
        super().set_timesteps(device=device, sigmas=sigmas, mu=mu)


class GridEuler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler on the official grid (shifted) or on given noise levels (as given).

    It counts its steps from the first (`set_begin_index(0)`), so a step may be handed the integer timestep a
    diffusion forcing row feeds the model (diffusers' Euler refuses integers and would look a float up).
    """

    fixed_sigmas: tuple[float, ...] | None = None
    grid: str = "official"

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if self.fixed_sigmas is not None:
            sigmas = list(self.fixed_sigmas)
        elif sigmas is None and num_inference_steps is not None:
            raw = official_sigmas(num_inference_steps) if self.grid == "official" else \
                np.linspace(1.0, 1 / self.config.num_train_timesteps, num_inference_steps + 1)[:-1]
            sigmas = list(raw)
        super().set_timesteps(device=device, sigmas=sigmas, mu=mu)
        self.set_begin_index(0)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
            timestep = timestep.float()
        elif isinstance(timestep, int):
            timestep = float(timestep)
        return super().step(model_output, timestep, sample, *args, **kwargs)


def make_scheduler(config, shift: float, grid: str = "official", sampler: str = "unipc",
                   sigmas: tuple[float, ...] | None = None):
    """A flow-matching scheduler from a checkpoint's scheduler config, with the shift always set explicitly.

    `sigmas`: the noise level each step starts from, used as given (no shift)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown sigma grid {grid!r}; expected one of {GRIDS}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    shift = 1.0 if sigmas is not None else shift
    if sampler == "euler":
        scheduler = GridEuler.from_config(config, shift=shift, use_dynamic_shifting=False)
        scheduler.grid = grid
    else:
        cls = OfficialGridUniPCScheduler if grid == "official" or sigmas is not None else UniPCMultistepScheduler
        scheduler = cls.from_config(config, flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")
    if sigmas is not None:
        scheduler.fixed_sigmas = tuple(float(s) for s in sigmas)
    return scheduler


def step_matrix(
    block_sizes: Sequence[int], num_steps: int, ar_step: int, ready_blocks: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion forcing schedule for one window.

    Returns `(index, update)`, both `[rows, frames]`: `index` is each frame's
    position in `[999, t_1 .. t_N, 0]` (0: pure noise, N+1: clean), `update`
    marks the frames the solver advances in that row. One row is one model
    call. A block advances one step per row and may run at most `ar_step`
    steps behind the block before it (0: all advance together); the first
    `ready_blocks` blocks are clean and never updated. Blocks may differ in
    size, so a start image can be a block of one frame ahead of blocks of C.
    """
    if ar_step < 0 or num_steps < 1 or any(size < 1 for size in block_sizes):
        raise ValueError("step_matrix needs ar_step >= 0, num_steps >= 1 and positive block sizes")
    done, clean = num_steps, num_steps + 1
    prev = [clean] * ready_blocks + [0] * (len(block_sizes) - ready_blocks)
    rows, updates = [], []
    while any(p < done for p in prev):
        row = []
        for b, p in enumerate(prev):
            if b == 0 or prev[b - 1] >= done:
                row.append(min(p + 1, clean))
            else:
                row.append(max(row[b - 1] - ar_step, 0))
        updates.append([r != p and r != clean for r, p in zip(row, prev)])
        rows.append(row)
        prev = row
    sizes = torch.tensor(list(block_sizes))
    index = torch.tensor(rows, dtype=torch.long).repeat_interleave(sizes, dim=1)
    update = torch.tensor(updates, dtype=torch.bool).repeat_interleave(sizes, dim=1)
    return index, update


def timestep_rows(index: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Map a step-index matrix to the timesteps fed to the model (999 for noise, 0 for clean)."""
    template = torch.cat([torch.tensor([999]), timesteps.long().cpu(), torch.tensor([0])])
    return template[index]
