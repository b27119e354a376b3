"""The flow-matching Euler step for every latent frame of a diffusion forcing window, one step-matrix row at a time.

Euler keeps no history: a frame at step i moves from sigma[i] to sigma[i+1] along the predicted velocity,
`x' = x + (sigma[i+1] - sigma[i]) * v`. `solver.PerFrame` is the reference (one diffusers scheduler per frame,
stepped frame by frame); `VectorisedEuler` gathers each updated frame's step size and updates them all in one
operation, with diffusers' rounding: the sample in fp32, the step size in the velocity's dtype (a 0-dim
tensor takes the other operand's), the result cast back to it.
"""

from __future__ import annotations

import copy

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .solver import SOLVERS, PerFrame, _put, _selector, _take, make_solver


def make_sampler(scheduler, steps: int, frames: int, device: torch.device, kind: str = "vectorised"):
    """The solver for one window by the scheduler it is given: Euler here, UniPC (solver.py) otherwise.
    `kind`: "vectorised" (all frames of a row at once) or "per-frame" (one scheduler copy per frame)."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return make_solver(scheduler, steps, frames, device, kind)
    if kind not in SOLVERS:
        raise ValueError(f"unknown solver {kind!r}; expected one of {SOLVERS}")
    return (VectorisedEuler if kind == "vectorised" else PerFrame)(scheduler, steps, frames, device)


class VectorisedEuler:
    """Euler for all frames of a window at once; `step` equals the per-frame copies' steps."""

    def __init__(self, scheduler, steps: int, frames: int, device: torch.device) -> None:
        template = copy.deepcopy(scheduler)
        template.set_timesteps(steps)
        self.timesteps = template.timesteps
        self.device = torch.device(device)
        sigmas = template.sigmas.float().cpu()
        self.dt = sigmas[1:] - sigmas[:-1]  # each step's size, as diffusers computes it (fp32)
        self.step_index = torch.zeros(frames, dtype=torch.long)  # on the CPU: no device sync to decide

    def step(self, velocity: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor,
             update: torch.Tensor) -> torch.Tensor:
        """Advance the frames marked in `update` in place. `velocity` may hold more frames than `latents`
        (an end image appended to the model input)."""
        frames = torch.nonzero(update.cpu()).flatten()
        if frames.numel() == 0:
            return latents
        sel = _selector(frames, self.device)
        v = _take(velocity, sel)
        dt = self.dt[self.step_index[frames]].to(self.device, v.dtype, non_blocking=True).view(1, 1, -1, 1, 1)
        x = _take(latents, sel).float()
        _put(latents, sel, (x + dt * v).to(v.dtype))
        self.step_index[frames] += 1
        return latents
