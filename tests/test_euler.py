"""The flow-matching Euler sampler and --sigmas against diffusers' pipelines driven by FlowMatchEulerDiscreteScheduler
on the same tiny weights, seed and noise levels (latents to 1e-5, as tests/test_oracle.py holds UniPC)."""

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SkyReelsV2DiffusionForcingPipeline,
    SkyReelsV2ImageToVideoPipeline,
    SkyReelsV2Pipeline,
    UniPCMultistepScheduler,
)

from skyreels_cli.forcing.euler import VectorisedEuler
from skyreels_cli.forcing.schedule import make_scheduler, step_matrix
from skyreels_cli.forcing.solver import PerFrame
from skyreels_cli.media.images import fit_image, load_image

from .conftest import ALIASES
from .test_oracle import assert_latents_match, common, our_latents

# Noise levels on whole timesteps (875, 750, 500): diffusers' DF pipeline builds its step matrix from integers.
SIGMAS = (1.0, 0.875, 0.75, 0.5)
OTHER = (1.0, 0.8, 0.6, 0.3)


class GivenSigmas(FlowMatchEulerDiscreteScheduler):
    """diffusers' Euler handed fixed noise levels whatever step count the pipeline asks for; its step takes the
    integer timesteps of the DF pipeline's step matrix as floats (written independently of ours)."""

    given: tuple = SIGMAS

    def set_timesteps(self, num_inference_steps=None, device=None, **_):
        super().set_timesteps(sigmas=list(self.given), device=device)

    def step(self, model_output, timestep, sample, **kwargs):
        return super().step(model_output, timestep.float() if torch.is_tensor(timestep) else float(timestep),
                            sample, **kwargs)


def euler_reference(pipeline_cls, folder, sigmas=SIGMAS):
    pipe = pipeline_cls.from_pretrained(folder, dtype=torch.float32)
    pipe.scheduler = GivenSigmas.from_config(pipe.scheduler.config, shift=1.0)
    pipe.scheduler.given = sigmas
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
def test_t2v_euler_matches_diffusers_and_other_sigmas_differ(hub_models):
    pipe = euler_reference(SkyReelsV2Pipeline, hub_models["t2v"])
    latents = our_latents(ALIASES["t2v"], prompt="a red fox", frames=17, sampler="euler", sigmas=SIGMAS)
    assert_latents_match(latents, pipe, "a red fox", num_frames=17, guidance_scale=6.0, **common())
    other = our_latents(ALIASES["t2v"], prompt="a red fox", frames=17, sampler="euler", sigmas=OTHER)
    with pytest.raises(AssertionError, match="latents differ"):  # the comparison can fail
        assert_latents_match(other, pipe, "a red fox", num_frames=17, guidance_scale=6.0, **common())


class GivenSigmasUniPC(UniPCMultistepScheduler):
    """diffusers' UniPC on flow sigmas, handed fixed noise levels whatever step count the pipeline asks for."""

    given: tuple = SIGMAS

    def set_timesteps(self, num_inference_steps=None, device=None, **_):
        super().set_timesteps(sigmas=np.array(self.given), device=device)  # it takes an array


@pytest.mark.slow
def test_t2v_unipc_takes_given_sigmas_as_diffusers_does(hub_models):
    """--sigmas holds for UniPC too: each step starts from the level given (no shift), as diffusers' UniPC given
    the same levels; other levels fail the comparison."""
    pipe = SkyReelsV2Pipeline.from_pretrained(hub_models["t2v"], dtype=torch.float32)
    pipe.scheduler = GivenSigmasUniPC.from_config(pipe.scheduler.config, flow_shift=1.0, use_flow_sigmas=True,
                                                  prediction_type="flow_prediction")
    pipe.set_progress_bar_config(disable=True)
    latents = our_latents(ALIASES["t2v"], prompt="a red fox", frames=17, sampler="unipc", sigmas=SIGMAS)
    assert_latents_match(latents, pipe, "a red fox", num_frames=17, guidance_scale=6.0, **common())
    other = our_latents(ALIASES["t2v"], prompt="a red fox", frames=17, sampler="unipc", sigmas=OTHER)
    with pytest.raises(AssertionError, match="latents differ"):
        assert_latents_match(other, pipe, "a red fox", num_frames=17, guidance_scale=6.0, **common())


@pytest.mark.slow
def test_i2v_euler_matches_diffusers(hub_models, image_file):
    pipe = euler_reference(SkyReelsV2ImageToVideoPipeline, hub_models["i2v"])
    latents = our_latents(ALIASES["i2v"], prompt="the waves roll in", image=str(image_file), frames=17,
                          sampler="euler", sigmas="1.0,0.875,0.75,0.5")
    image = fit_image(load_image(image_file), 64, 64)
    assert_latents_match(latents, pipe, image, "the waves roll in", num_frames=17, guidance_scale=5.0, **common())


@pytest.mark.slow
def test_df_synchronous_euler_matches_diffusers(hub_models):
    pipe = euler_reference(SkyReelsV2DiffusionForcingPipeline, hub_models["df"])
    call = dict(num_frames=57, base_num_frames=17, overlap_history=5, addnoise_condition=0, guidance_scale=6.0)
    latents = our_latents(ALIASES["df"], prompt="a red fox", frames=57, base_frames=17, overlap=5, addnoise=0,
                          sampler="euler", sigmas=SIGMAS)
    assert_latents_match(latents, pipe, "a red fox", **call, **common())


@pytest.mark.slow
def test_df_asynchronous_euler_matches_diffusers(hub_models):
    pipe = euler_reference(SkyReelsV2DiffusionForcingPipeline, hub_models["df"])
    call = dict(num_frames=61, base_num_frames=29, overlap_history=5, addnoise_condition=0, ar_step=2,
                causal_block_size=2, guidance_scale=6.0)
    latents = our_latents(ALIASES["df"], prompt="a red fox", frames=61, base_frames=29, overlap=5, addnoise=0,
                          ar_step=2, causal_block=2, causal_attention=True, sampler="euler", sigmas=SIGMAS)
    assert_latents_match(latents, pipe, "a red fox", **call, **common())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sigmas", [None, (1.0, 0.9375, 0.8333, 0.625)])
@pytest.mark.parametrize("ar_step", [0, 2])
def test_vectorised_euler_equals_per_frame_copies(sigmas, ar_step, dtype):
    """Every row of an asynchronous step matrix (a clean prefix block, blocks at different steps): the
    vectorised update equals one diffusers Euler scheduler per frame, on noise levels off whole timesteps too,
    with a bf16 model's velocities as well (the same rounding)."""
    config = FlowMatchEulerDiscreteScheduler().config
    scheduler = make_scheduler(config, 8.0, sampler="euler", sigmas=sigmas)
    steps = len(sigmas) if sigmas else 5
    index, update = step_matrix((1, 2, 2, 2), steps, ar_step, ready_blocks=1)
    frames = index.shape[1]
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, frames, 3, 3, generator=gen)
    ours, ref = latents.clone(), latents.clone()
    vectorised = VectorisedEuler(scheduler, steps, frames, torch.device("cpu"))
    per_frame = PerFrame(scheduler, steps, frames, torch.device("cpu"))
    template = torch.cat([torch.tensor([999.0]), vectorised.timesteps, torch.tensor([0.0])])
    for row in range(index.shape[0]):
        v = torch.randn(1, 4, frames, 3, 3, generator=gen).to(dtype)
        t = template[index[row]]
        vectorised.step(v, t.long(), ours, update[row])
        per_frame.step(v, t, ref, update[row])
    assert torch.equal(ours, ref)
    assert torch.equal(ours[:, :, :1], latents[:, :, :1])  # the clean prefix is never updated
    assert (ours[:, :, 1:] - latents[:, :, 1:]).abs().min() > 0  # every other frame moved


# ------------------------------------------------------------ bad input: one line, exit 2, nothing written

TINY_RUN = ["t2v", "a fox", "-m", "tiny", "--device", "cpu", "--frames", "17"]
BAD = [
    (["--sigmas", "1.0,0.5,0.75"], ["--sigmas must decrease step by step (0.5 then 0.75)", "e.g. --sigmas"]),
    (["--sigmas", "1.5,0.5"], ["--sigmas: 1.5 is not in (0, 1]"]),
    (["--sigmas", "0.5,0"], ["--sigmas: 0 is not in (0, 1]"]),
    (["--sigmas", ""], ["--sigmas is empty"]),
    (["--sigmas", "1.0,fast"], ["'fast' is not a number"]),
    (["--sigmas", "1.0,0.5", "--steps", "4"], ["--steps 4 disagrees with the 2 noise levels of --sigmas",
                                               "leave out --steps"]),
    (["--sampler", "heun"], ["--sampler 'heun' is not one of unipc, euler"]),
]


@pytest.mark.parametrize("args, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_sampler_settings_are_one_line(tmp_path, args, words):
    from .conftest import invoke, one_line_error

    message = one_line_error(invoke(*TINY_RUN, *args, "-o", tmp_path / "x.mp4"))
    for word in words:
        assert word in message, message
    assert not list(tmp_path.iterdir())
