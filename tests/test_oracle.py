"""Our frames against the diffusers SkyReels-V2 pipelines on the same tiny weights and seed."""

import numpy as np
import pytest
import torch
from diffusers import (
    SkyReelsV2DiffusionForcingImageToVideoPipeline,
    SkyReelsV2DiffusionForcingPipeline,
    SkyReelsV2ImageToVideoPipeline,
    SkyReelsV2Pipeline,
    UniPCMultistepScheduler,
)
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli import DEFAULT_NEGATIVE_PROMPT
from skyreels_cli.cli import app
from skyreels_cli.media.images import fit_image, load_image

from .conftest import ALIASES, CUSTOM_REPOS, SMALL, assert_frames_match, read_png_frames, to_uint8

SEED = 7
LATENT_TOLERANCE = 1e-5
_loaded: dict = {}


def our_latents(model: str, **request) -> torch.Tensor:
    """The latents of our whole video through the Python API (one model load per checkpoint)."""
    if model not in _loaded:
        _loaded[model] = sk.load(model, device="cpu", progress=False)
    req = sk.Request(seed=SEED, height=64, width=64, steps=4, **request)
    return torch.cat([w.latents for w in _loaded[model].stream(req)], dim=2)


def assert_latents_match(ours: torch.Tensor, pipe, *args, **kwargs) -> None:
    """Compare with the diffusers pipeline's latents (`output_type="latent"`) for the same call."""
    kwargs = {**kwargs, "output_type": "latent", "generator": torch.Generator("cpu").manual_seed(SEED)}
    theirs = pipe(*args, **kwargs).frames.float()
    if kwargs.get("last_image") is not None:
        theirs = theirs[:, :, :-1]  # diffusers drops the end image's latent only when it decodes
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = (ours - theirs).abs().max().item()
    assert err <= LATENT_TOLERANCE * max(1.0, theirs.abs().max().item()), f"latents differ by {err}"
    assert theirs.std() > 0.1


class OfficialGrid(UniPCMultistepScheduler):
    """diffusers' UniPC handed the official sigmas, written independently of ours."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        sigmas = np.linspace(0.999, 0, num_inference_steps + 1)[:-1]
        super().set_timesteps(device=device, sigmas=sigmas)


def reference(pipeline_cls, folder, shift, grid="official"):
    pipe = pipeline_cls.from_pretrained(folder, dtype=torch.float32)
    cls = OfficialGrid if grid == "official" else UniPCMultistepScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config, flow_shift=shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def common(**extra):
    return dict(
        negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=64, width=64, num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **extra,
    )


def ours(tmp_path, *args) -> np.ndarray:
    out = tmp_path / "frames"
    result = CliRunner().invoke(app, [*args, "--seed", str(SEED), "-o", f"{out}/", "--quiet"])
    assert result.exit_code == 0, result.output
    return read_png_frames(out)


@pytest.mark.parametrize("grid", ["official", "diffusers"])
def test_t2v_checkpoint_matches_diffusers(hub_models, tmp_path, grid):
    mine = ours(tmp_path, "t2v", "a red fox running through snow", "-m", ALIASES["t2v"], *SMALL, "--sigma-grid", grid)
    pipe = reference(SkyReelsV2Pipeline, hub_models["t2v"], shift=8.0, grid=grid)
    theirs = pipe("a red fox running through snow", num_frames=17, guidance_scale=6.0, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["t2v"], prompt="a red fox running through snow", frames=17, sigma_grid=grid)
    assert_latents_match(latents, pipe, "a red fox running through snow", num_frames=17, guidance_scale=6.0,
                         **common())


@pytest.mark.parametrize("grid", ["official", "diffusers"])
@pytest.mark.slow
def test_t2v_on_df_checkpoint_matches_diffusers(hub_models, tmp_path, grid):
    mine = ours(tmp_path, "t2v", "a red fox", "-m", ALIASES["df"], *SMALL, "--sigma-grid", grid)
    pipe = reference(SkyReelsV2DiffusionForcingPipeline, hub_models["df"], shift=8.0, grid=grid)
    theirs = pipe("a red fox", num_frames=17, guidance_scale=6.0, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["df"], prompt="a red fox", frames=17, sigma_grid=grid)
    assert_latents_match(latents, pipe, "a red fox", num_frames=17, guidance_scale=6.0, **common())


@pytest.mark.slow
def test_grids_differ(hub_models, tmp_path):
    """The two grids give different frames: the grid option is not a no-op."""
    a = ours(tmp_path / "a", "t2v", "a red fox", "-m", ALIASES["df"], *SMALL, "--sigma-grid", "official")
    b = ours(tmp_path / "b", "t2v", "a red fox", "-m", ALIASES["df"], *SMALL, "--sigma-grid", "diffusers")
    assert np.abs(a.astype(int) - b.astype(int)).max() > 1


def test_i2v_matches_diffusers(hub_models, tmp_path, image_file):
    mine = ours(tmp_path, "i2v", str(image_file), "the waves roll in", "-m", ALIASES["i2v"], *SMALL)
    pipe = reference(SkyReelsV2ImageToVideoPipeline, hub_models["i2v"], shift=5.0)
    image = fit_image(load_image(image_file), 64, 64)
    theirs = pipe(image, "the waves roll in", num_frames=17, guidance_scale=5.0, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["i2v"], prompt="the waves roll in", image=str(image_file), frames=17)
    assert_latents_match(latents, pipe, image, "the waves roll in", num_frames=17, guidance_scale=5.0, **common())


LONG = ["--frames", "57", "--base-frames", "17", "--overlap", "5", "--addnoise", "0"]


def test_extend_long_synchronous_matches_diffusers(hub_models, tmp_path):
    mine = ours(tmp_path, "extend", "a red fox", "-m", ALIASES["df"], *SMALL[:4], *SMALL[6:], *LONG)
    assert len(mine) == 57
    pipe = reference(SkyReelsV2DiffusionForcingPipeline, hub_models["df"], shift=8.0)
    call = dict(num_frames=57, base_num_frames=17, overlap_history=5, addnoise_condition=0, guidance_scale=6.0)
    theirs = pipe("a red fox", **call, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["df"], prompt="a red fox", frames=57, base_frames=17, overlap=5, addnoise=0)
    assert_latents_match(latents, pipe, "a red fox", **call, **common())


@pytest.mark.slow
def test_extend_long_asynchronous_matches_diffusers(hub_models, tmp_path):
    # Window 8 latent frames, overlap 2, causal block 2: 16 latent frames in three windows.
    args = ["--frames", "61", "--base-frames", "29", "--overlap", "5", "--addnoise", "0",
            "--ar-step", "2", "--causal-block", "2", "--causal-attention"]
    mine = ours(tmp_path, "extend", "a red fox", "-m", ALIASES["df"], *SMALL[:4], *SMALL[6:], *args)
    pipe = reference(SkyReelsV2DiffusionForcingPipeline, hub_models["df"], shift=8.0)
    call = dict(num_frames=61, base_num_frames=29, overlap_history=5, addnoise_condition=0, ar_step=2,
                causal_block_size=2, guidance_scale=6.0)
    theirs = pipe("a red fox", **call, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["df"], prompt="a red fox", frames=61, base_frames=29, overlap=5, addnoise=0,
                          ar_step=2, causal_block=2, causal_attention=True)
    assert_latents_match(latents, pipe, "a red fox", **call, **common())


def test_extend_start_image_matches_diffusers_df_i2v(hub_models, tmp_path, image_file):
    # 41 frames = 11 latent frames = windows of 5, 5, 5 with overlap 2: every window full, since
    # diffusers' DF image-to-video pipeline crashes on a shorter last window.
    long = ["--frames", "41", "--base-frames", "17", "--overlap", "5", "--addnoise", "0"]
    mine = ours(tmp_path, "extend", "a red fox", "-m", ALIASES["df"], "--image", str(image_file),
                *SMALL[:4], *SMALL[6:], *long, "--shift", "5", "--guidance", "5")
    pipe = reference(SkyReelsV2DiffusionForcingImageToVideoPipeline, hub_models["df"], shift=5.0)
    image = fit_image(load_image(image_file), 64, 64)
    call = dict(num_frames=41, base_num_frames=17, overlap_history=5, addnoise_condition=0, guidance_scale=5.0)
    theirs = pipe(image, "a red fox", **call, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["df"], prompt="a red fox", image=str(image_file), frames=41, base_frames=17,
                          overlap=5, addnoise=0, shift=5, guidance=5)
    assert_latents_match(latents, pipe, image, "a red fox", **call, **common())


def test_extend_start_and_end_image_matches_diffusers_df_i2v(hub_models, tmp_path, image_file):
    end = tmp_path / "end.png"
    load_image(image_file).transpose(0).save(end)
    mine = ours(tmp_path, "extend", "a red fox", "-m", ALIASES["df"], "--image", str(image_file),
                "--end-image", str(end), *SMALL, "--addnoise", "0", "--shift", "5", "--guidance", "5")
    pipe = reference(SkyReelsV2DiffusionForcingImageToVideoPipeline, hub_models["df"], shift=5.0)
    call = dict(num_frames=17, addnoise_condition=0, last_image=fit_image(load_image(end), 64, 64),
                guidance_scale=5.0)
    theirs = pipe(fit_image(load_image(image_file), 64, 64), "a red fox", **call, **common()).frames[0]
    assert len(mine) == 17
    assert_frames_match(mine, to_uint8(theirs))
    latents = our_latents(ALIASES["df"], prompt="a red fox", image=str(image_file), end_image=str(end), frames=17,
                          addnoise=0, shift=5, guidance=5)
    assert_latents_match(latents, pipe, fit_image(load_image(image_file), 64, 64), "a red fox", **call, **common())


@pytest.mark.parametrize("kind", ["t2v", "i2v", "df"])
def test_hub_repo_outside_the_registry_runs_its_kind(hub_models, tmp_path, image_file, kind):
    """A repo id the registry does not know gets its kind from model_index.json, and that kind's
    engine and defaults (guidance, shift): the frames equal the pipeline of its kind."""
    pipeline_cls, guidance, shift = {
        "t2v": (SkyReelsV2Pipeline, 6.0, 8.0), "i2v": (SkyReelsV2ImageToVideoPipeline, 5.0, 5.0),
        "df": (SkyReelsV2DiffusionForcingPipeline, 6.0, 8.0)}[kind]
    command = {"t2v": ["t2v", "a red fox"], "i2v": ["i2v", str(image_file), "a red fox"],
               "df": ["extend", "a red fox", "--addnoise", "0"]}[kind]
    mine = ours(tmp_path, *command, "-m", CUSTOM_REPOS[kind], *SMALL)
    pipe = reference(pipeline_cls, hub_models[kind], shift=shift)
    args = (fit_image(load_image(image_file), 64, 64), "a red fox") if kind == "i2v" else ("a red fox",)
    theirs = pipe(*args, num_frames=17, guidance_scale=guidance, **common()).frames[0]
    assert_frames_match(mine, to_uint8(theirs))
