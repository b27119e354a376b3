"""The sampler's time grid and the diffusion forcing step matrix: pure arithmetic.

The official SkyReels-V2 code samples on
`linspace(0.999, 0, N+1)[:-1]` (shifted), diffusers' UniPC on `linspace(1, 0.001, N+1)`.
Handing UniPC the official raw sigmas reproduces the official sampler exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

GRIDS = ("official", "diffusers")


def official_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas of the official sampler (UniPC applies the shift itself)."""
    return np.linspace(0.999, 0.0, steps + 1)[:-1]


class OfficialGridUniPCScheduler(UniPCMultistepScheduler):
    """UniPC that samples on the official SkyReels-V2 grid when asked for a step count.

    The diffusers pipelines call `set_timesteps(num_inference_steps)`; this keeps
    their code untouched while giving them the official sigmas.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None and num_inference_steps is not None:
            sigmas = official_sigmas(num_inference_steps)
        super().set_timesteps(device=device, sigmas=sigmas, mu=mu)


def make_scheduler(config, shift: float, grid: str = "official") -> UniPCMultistepScheduler:
    """A flow-matching UniPC from a checkpoint's scheduler config, with the shift always set explicitly."""
    if grid not in GRIDS:
        raise ValueError(f"unknown sigma grid {grid!r}; expected one of {GRIDS}")
    cls = OfficialGridUniPCScheduler if grid == "official" else UniPCMultistepScheduler
    return cls.from_config(config, flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")


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
