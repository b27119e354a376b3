"""The vectorised UniPC against one diffusers scheduler per frame, and batched guidance against two passes."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

from skyreels_cli import DEFAULT_NEGATIVE_PROMPT
from skyreels_cli.forcing.engine import Conditioning, DiffusionForcingEngine, Sampling
from skyreels_cli.forcing.schedule import make_scheduler, step_matrix, timestep_rows
from skyreels_cli.forcing.solver import PerFrame, VectorisedUniPC, make_solver, supports
from skyreels_cli.forcing.windows import plan_for_length
from skyreels_cli.models.architectures import TEXT_TOKENS
from skyreels_cli.models.tiny import build_components

BASE = UniPCMultistepScheduler().config


def config(**changes) -> dict:
    """The base scheduler config with some values changed (diffusers ignores keys it lists as defaults)."""
    return {**{k: v for k, v in BASE.items() if not k.startswith("_")}, **changes}


LAYOUTS = [((1, 2, 2, 2), 1), ((2, 2, 2, 2), 1), ((3, 3, 3), 0), ((1, 1, 1, 1, 1, 1), 2)]


def assert_same_state(vec: VectorisedUniPC, ref: PerFrame, frames: int) -> None:
    for f in range(frames):
        ours, theirs = vec.frame_state(f), ref.frame_state(f)
        for key in ("step_index", "lower_order_nums", "this_order"):
            assert ours[key] == theirs[key], (f, key, ours[key], theirs[key])
        for a, b in zip([*ours["model_outputs"], ours["last_sample"]], [*theirs["model_outputs"], theirs["last_sample"]]):
            assert (a is None) == (b is None), f
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def drive(scheduler, steps: int, rows: torch.Tensor, update: torch.Tensor, frames: int,
          dtype=torch.float32, seed: int = 0) -> dict:
    """Run both solvers over the same rows of random velocities, checking latents and state after every row."""
    ref = PerFrame(scheduler, steps, frames, "cpu")
    vec = VectorisedUniPC(scheduler, steps, frames, "cpu")
    gen = torch.Generator().manual_seed(seed)
    ours = torch.randn(1, 4, frames, 3, 5, generator=gen)
    theirs, start = ours.clone(), ours.clone()
    mixed_steps = mixed_corrector = 0
    for row, t in enumerate(rows):
        # One frame more than the latents, as when an end image is appended to the model input.
        v = torch.randn(1, 4, frames + 1, 3, 5, generator=gen).to(dtype)
        active = torch.nonzero(update[row]).flatten()
        indices = {vec.step_index[f].item() for f in active}
        mixed_steps += len(indices) > 1
        mixed_corrector += len({bool(vec.has_last[f]) for f in active}) > 1
        ref.step(v, t, theirs, update[row])
        vec.step(v, t, ours, update[row])
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        assert_same_state(vec, ref, frames)
    return {"latents": ours, "start": start, "mixed_steps": mixed_steps, "mixed_corrector": mixed_corrector}


@pytest.mark.parametrize("layout,ar_step,steps,grid,shift",
                         list(itertools.product(LAYOUTS, (0, 5), (4, 10), ("official", "diffusers"), (8.0, 5.0))))
def test_vectorised_solver_equals_per_frame_schedulers(layout, ar_step, steps, grid, shift):
    blocks, ready = layout
    scheduler = make_scheduler(BASE, shift, grid)
    assert supports(scheduler)
    index, update = step_matrix(blocks, steps, ar_step, ready)
    rows = timestep_rows(index, VectorisedUniPC(scheduler, steps, 1, "cpu").timesteps)
    out = drive(scheduler, steps, rows, update, sum(blocks))
    prefix = sum(blocks[:ready])
    assert torch.equal(out["latents"][:, :, :prefix], out["start"][:, :, :prefix]), "the ready prefix moved"
    assert (out["latents"][:, :, prefix:] - out["start"][:, :, prefix:]).abs().amin(dim=(0, 1, 3, 4)).gt(0).all()
    if 0 < ar_step < steps and len(blocks) - ready > 1:
        # Frames at different steps and orders in one row, some on their first step (no corrector):
        # the per-frame indexing is really exercised.
        assert out["mixed_steps"] > 0 and out["mixed_corrector"] > 0


def test_bf16_velocity_rounds_as_the_scheduler_does():
    """A bf16 transformer's velocity: the scheduler's sigma*v product is rounded in bf16; ours must be too."""
    scheduler = make_scheduler(BASE, 8.0)
    index, update = step_matrix((1, 2, 2, 2), 10, 2, 1)
    rows = timestep_rows(index, VectorisedUniPC(scheduler, 10, 1, "cpu").timesteps)
    drive(scheduler, 10, rows, update, 7, dtype=torch.bfloat16)


@pytest.mark.parametrize("disable_corrector", [[], [0, 3]])
def test_any_frame_subset_any_step(disable_corrector):
    """Frames start at random rows and skip random rows (non-contiguous sets go through index_select)."""
    scheduler = make_scheduler(config(disable_corrector=disable_corrector), 5.0, "diffusers")
    assert scheduler.config.disable_corrector == disable_corrector
    steps, frames = 6, 7
    timesteps = VectorisedUniPC(scheduler, steps, 1, "cpu").timesteps
    rng = np.random.default_rng(0)
    done = np.zeros(frames, dtype=int)
    rows, updates = [], []
    while (done < steps).any():
        go = (rng.random(frames) < 0.5) & (done < steps)
        rows.append(timesteps[np.minimum(done, steps - 1)])
        updates.append(torch.from_numpy(go))
        done += go
    out = drive(scheduler, steps, torch.stack(rows), torch.stack(updates), frames, seed=1)
    assert out["mixed_steps"] > 0 and out["mixed_corrector"] > 0
    assert any(not _contiguous(u) for u in updates)


def _contiguous(mask: torch.Tensor) -> bool:
    idx = torch.nonzero(mask).flatten()
    return idx.numel() == 0 or int(idx[-1] - idx[0]) + 1 == idx.numel()


def test_first_order_solver_equals_per_frame_schedulers():
    scheduler = make_scheduler(config(solver_order=1), 8.0)
    assert scheduler.config.solver_order == 1 and supports(scheduler)
    index, update = step_matrix((1, 2, 2, 2), 6, 2, 1)
    drive(scheduler, 6, timestep_rows(index, VectorisedUniPC(scheduler, 6, 1, "cpu").timesteps), update, 7)


class OverriddenStep(UniPCMultistepScheduler):
    def step(self, *args, **kwargs):
        return super().step(*args, **kwargs)


@pytest.mark.parametrize("scheduler,vectorised", [
    (make_scheduler(BASE, 8.0, "official"), True),
    (make_scheduler(BASE, 8.0, "diffusers"), True),
    (make_scheduler(config(solver_type="bh1"), 8.0), False),  # diffusers ends it in NaN
    (make_scheduler(config(solver_order=3), 8.0), False),
    (make_scheduler(config(lower_order_final=False), 8.0), False),
    (UniPCMultistepScheduler(), False),  # epsilon prediction
    (OverriddenStep.from_config(make_scheduler(BASE, 8.0).config), False),
])
def test_unsupported_configurations_fall_back_to_per_frame_copies(scheduler, vectorised):
    solver = make_solver(scheduler, 4, 3, "cpu")
    assert isinstance(solver, VectorisedUniPC if vectorised else PerFrame)
    assert isinstance(make_solver(scheduler, 4, 3, "cpu", "per-frame"), PerFrame)
    with pytest.raises(ValueError):
        make_solver(scheduler, 4, 3, "cpu", "fast")


# The engine on tiny DF components.

@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def df(request):
    """Tiny DF components and guidance 5 with the official negative prompt; the transformer in fp32 or fp64."""
    components = build_components("df", seed=3)
    pipe = SkyReelsV2DiffusionForcingPipeline(**components)
    # As core/conditioning.py encodes them: both padded to the same length.
    positive, negative = pipe.encode_prompt("a red fox running through snow", negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                                            do_classifier_free_guidance=True,
                                            max_sequence_length=TEXT_TOKENS, device="cpu")
    components["transformer"].to(request.param)
    return components, Conditioning(positive.to(request.param), negative.to(request.param), 5.0)


def test_prompt_embeddings_have_one_shape(df):
    _, cond = df
    assert cond.prompt_embeds.shape == cond.negative_embeds.shape == (1, 512, 32)
    assert (cond.prompt_embeds - cond.negative_embeds).abs().max() > 0.1


def test_batched_guidance_equals_two_passes(df):
    components, cond = df
    engine = {mode: DiffusionForcingEngine(components["transformer"], components["vae"], None, "cpu", cfg=mode)
              for mode in ("separate", "batched")}
    latents = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(0)).to(cond.prompt_embeds.dtype)
    timesteps = torch.tensor([[0, 250, 500, 750, 999]])
    with torch.no_grad():
        separate = engine["separate"].velocity(latents, timesteps, cond, 24)
        batched = engine["batched"].velocity(latents, timesteps, cond, 24)
        swapped = engine["separate"].velocity(latents, timesteps, Conditioning(cond.negative_embeds,
                                                                               cond.prompt_embeds, 5.0), 24)
    # Batch 2 and batch 1 round differently (other GEMM blocking), and guidance 5 multiplies the difference of
    # the two passes by up to 11: the tolerance is relative to the velocity's scale (about 9 here).
    tol = (1e-12 if separate.dtype == torch.float64 else 1e-5) * separate.abs().max().item()
    torch.testing.assert_close(batched, separate, atol=tol, rtol=0)
    # Swapped halves would move the result far past the tolerance, and the frames really differ.
    assert (swapped - separate).abs().max() > 100 * 1e-5 * separate.abs().max()
    assert separate.std(dim=(0, 1, 3, 4)).min() > 0.1
    assert (separate[:, :, 1:] - separate[:, :, :-1]).abs().amax(dim=(0, 1, 3, 4)).min() > 0.1


def run_engine(components, cond, solver: str, cfg: str, grid: str) -> tuple[torch.Tensor, np.ndarray]:
    scheduler = make_scheduler(components["scheduler"].config, 8.0, grid)
    engine = DiffusionForcingEngine(components["transformer"], components["vae"], scheduler, "cpu",
                                    solver=solver, cfg=cfg)
    # Two windows of 5 latent frames, blocks of one frame running 2 steps apart, and an end image.
    _, plan = plan_for_length(29, base_frames=17, overlap_frames=5, causal_block=1, end_image=True)
    assert len(plan.windows) == 2
    sampling = Sampling(steps=4, ar_step=2, addnoise=20, causal_attention=True)
    end = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    outputs = list(engine.run(plan, lambda _: cond, sampling, torch.Generator().manual_seed(7), (8, 8),
                              end_latent=end))
    return torch.cat([o.latents for o in outputs], dim=2), np.concatenate([o.frames for o in outputs])


@pytest.mark.parametrize("grid", ["official", "diffusers"])
@pytest.mark.slow
def test_engine_vectorised_and_batched_equal_the_reference(df, grid):
    components, cond = df
    ref_latents, ref_frames = run_engine(components, cond, "per-frame", "separate", grid)
    assert ref_latents.shape[2] == 8 and ref_latents.std(dim=(0, 1, 3, 4)).min() > 0.1
    assert len({f.tobytes() for f in ref_frames}) == len(ref_frames), "frames are flat or repeated"
    scale = max(1.0, ref_latents.abs().max().item())
    fp64 = components["transformer"].dtype == torch.float64
    for solver, cfg in (("vectorised", "separate"), ("per-frame", "batched"), ("vectorised", "batched")):
        latents, frames = run_engine(components, cond, solver, cfg, grid)
        # In fp64 a batch of 2 rounds as two calls do, so every mode must agree to float64 precision. In fp32
        # the batch-2 matrix products round differently (about 1e-6 relative per call, see the test above),
        # which guidance 5 and this deliberately sensitive tiny model amplify over 20 rows to 1e-5..2e-4 of
        # the latents' scale; swapped or mixed-up halves would be off by far more.
        tol = 1e-9 if fp64 else (1e-5 if cfg == "separate" else 1e-3)
        err = (latents - ref_latents).abs().max().item()
        assert err <= tol * scale, (solver, cfg, err)
        assert frames.shape == ref_frames.shape
        assert np.abs(frames.astype(int) - ref_frames.astype(int)).max() <= 1, (solver, cfg)


def test_engine_rejects_unknown_modes():
    with pytest.raises(ValueError):
        DiffusionForcingEngine(None, None, None, "cpu", cfg="fused")
    with pytest.raises(ValueError):
        DiffusionForcingEngine(None, None, None, "cpu", solver="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vectorised_solver_on_cuda_equals_per_frame_schedulers():
    scheduler = make_scheduler(BASE, 8.0)
    steps, blocks = 10, (1, 4, 4, 4)
    index, update = step_matrix(blocks, steps, 5, 1)
    rows = timestep_rows(index, VectorisedUniPC(scheduler, steps, 1, "cpu").timesteps)
    frames = sum(blocks)
    ref = PerFrame(scheduler, steps, frames, torch.device("cuda"))
    vec = VectorisedUniPC(scheduler, steps, frames, torch.device("cuda"))
    gen = torch.Generator("cuda").manual_seed(0)
    ours = torch.randn(1, 16, frames, 8, 8, generator=gen, device="cuda")
    theirs = ours.clone()
    for row, t in enumerate(rows):
        v = torch.randn(1, 16, frames, 8, 8, generator=gen, device="cuda")
        ref.step(v, t, theirs, update[row])
        vec.step(v, t, ours, update[row])
    # The per-frame copies compute their scalars on the GPU, ours come from the CPU: last-bit differences.
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (ours - theirs).abs().max() < 1e-5 and ours.std(dim=(0, 1, 3, 4)).min() > 0.1
