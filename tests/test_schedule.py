"""The sampler grid, the step matrix and the window plan: pure arithmetic."""

import pytest
import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

from skyreels_cli.forcing.schedule import make_scheduler, step_matrix, timestep_rows


def timesteps_for(steps: int, shift: float, grid: str = "official") -> torch.Tensor:
    """The integer timesteps a run of `steps` steps feeds the transformer."""
    scheduler = make_scheduler(UniPCMultistepScheduler().config, shift, grid)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_official_grid_timesteps():
    # The official grid at N=30, shift 8.
    assert timesteps_for(30, 8.0)[-4:].tolist() == [551, 470, 363, 216]
    assert timesteps_for(30, 8.0, "diffusers")[-4:].tolist() == [553, 473, 367, 221]


@pytest.mark.parametrize(
    "frames,block,ar,ready,rows",
    [(25, 5, 5, 0, 50), (25, 1, 0, 0, 30), (25, 5, 0, 0, 30), (25, 5, 5, 1, 45), (10, 1, 1, 0, 39)],
)
def test_row_counts(frames, block, ar, ready, rows):
    index, update = step_matrix([block] * (frames // block), 30, ar, ready)
    assert index.shape == update.shape == (rows, frames)


@pytest.mark.parametrize("blocks,ar,ready", [([5] * 5, 5, 0), ([5] * 5, 5, 1), ([1] * 8, 3, 2), ([1, 4, 4, 4], 2, 1),
                                              ([2] * 6, 0, 2)])
def test_schedule_invariants(blocks, ar, ready):
    steps = 12
    index, update = step_matrix(blocks, steps, ar, ready)
    ready_frames = sum(blocks[:ready])
    # Noise never decreases from an earlier frame to a later one: a lower index is noisier.
    assert (index[:, :-1] >= index[:, 1:]).all()
    # Prefix frames are clean from the start and never updated.
    assert not update[:, :ready_frames].any()
    assert (index[:, :ready_frames] == steps + 1).all()
    # Every other frame is updated exactly once per step and ends on the last step.
    assert (update[:, ready_frames:].sum(0) == steps).all()
    assert (index[-1] >= steps).all()
    # Frames of one block move together.
    start = 0
    for size in blocks:
        assert (index[:, start:start + size] == index[:, start:start + 1]).all()
        start += size


@pytest.mark.parametrize("frames,block,ar,ready", [(25, 5, 5, 0), (25, 1, 0, 0), (25, 5, 5, 5), (12, 2, 3, 2)])
def test_step_matrix_equals_diffusers(frames, block, ar, ready):
    timesteps = timesteps_for(10, 8.0)
    theirs, _, their_update, _ = SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, frames, timesteps, frames, ar, ready, block
    )
    index, update = step_matrix([block] * (frames // block), 10, ar, ready // block)
    assert torch.equal(timestep_rows(index, timesteps), theirs)
    assert torch.equal(update, their_update)
