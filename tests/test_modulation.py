"""Per-frame modulation gives diffusers' DF transformer output exactly, for every call shape we use.

Reference: the same tiny transformer instance with diffusers' own forward (before install or after
remove). Timesteps differ per frame, so a modulation applied to the wrong frame, or one frame's for all,
would change the output; `test_one_frames_timestep_moves_the_output` shows that it does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import SkyReelsV2Transformer3DModel
from diffusers.hooks import HookRegistry, ModelHook

from skyreels_cli.forcing.causal_attention import attention_mask_on, block_causal_mask
from skyreels_cli.models.tiny import build_components
from skyreels_cli.runtime import modulation
from skyreels_cli.runtime.modulation import (
    install_per_frame_modulation,
    remove_per_frame_modulation,
)


def per_frame_modulation_installed(transformer) -> bool:
    """True when `transformer` (and so its blocks) runs the per-frame modulation."""
    return modulation._is_ours(transformer, modulation._model_forward)

TIMESTEPS = [999, 874, 640, 431, 215, 37, 0]  # one per latent frame, all different
TEXT_LEN = 512  # the I2V attention processor splits image tokens off at 512 text tokens


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def df() -> SkyReelsV2Transformer3DModel:
    """Tiny DF transformer with the fps embedding (as DF-1.3B)."""
    return build_components("df", seed=1)["transformer"].eval()


@pytest.fixture(scope="module")
def df_no_fps(df) -> SkyReelsV2Transformer3DModel:
    """The same without the fps embedding (as DF-14B)."""
    model = SkyReelsV2Transformer3DModel.from_config(df.config, inject_sample_info=False).eval()
    model.load_state_dict(df.state_dict(), strict=False)  # the fps weights are the only ones left out
    return model


@pytest.fixture(scope="module")
def i2v() -> SkyReelsV2Transformer3DModel:
    return build_components("i2v", seed=2)["transformer"].eval()


def inputs(model, batch: int = 1, frames: int = 5, seed: int = 0, text_len: int = 16) -> dict:
    """Random latents (shared across the batch) and prompt embeddings (one per sample), per-frame timesteps."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, model.config.in_channels, frames, 8, 8, generator=g).expand(batch, -1, -1, -1, -1)
    embeds = torch.randn(batch, text_len, model.config.text_dim, generator=g)
    timestep = torch.tensor(TIMESTEPS[:frames]).expand(batch, -1)
    kwargs = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": embeds,
              "enable_diffusion_forcing": True, "return_dict": False}
    if model.config.inject_sample_info:
        kwargs["fps"] = [1]
    return kwargs


@torch.no_grad()
def both(model, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(diffusers' output, ours) for the same call; leaves the model as diffusers shipped it."""
    reference = model(**kwargs)[0]
    install_per_frame_modulation(model)
    try:
        ours = model(**kwargs)[0]
    finally:
        remove_per_frame_modulation(model)
    return reference, ours


def assert_varies_over_frames(out: torch.Tensor) -> None:
    """The output is not flat: frames differ, so a frame-mixing mistake would show."""
    per_frame = out.transpose(1, 2).flatten(2)  # (B, F, rest)
    assert (per_frame[:, 1:] - per_frame[:, :1]).abs().amax() > 0.1


@pytest.mark.parametrize("frames", [5, 7])
@pytest.mark.parametrize("with_fps", [True, False], ids=["fps", "no-fps"])
def test_df_batch_of_one_equals_diffusers(df, df_no_fps, with_fps, frames):
    model = df if with_fps else df_no_fps
    reference, ours = both(model, **inputs(model, frames=frames))
    assert_varies_over_frames(reference)
    exact(ours, reference)


@pytest.mark.parametrize("with_fps", [True, False], ids=["fps", "no-fps"])
def test_df_batch_of_two_equals_diffusers_and_single_calls(df, df_no_fps, with_fps):
    """Batched guidance: two prompts, same latents and timesteps; each sample as if run alone."""
    model = df if with_fps else df_no_fps
    kwargs = inputs(model, batch=2, frames=6)
    reference, ours = both(model, **kwargs)
    exact(ours, reference)
    assert (ours[0] - ours[1]).abs().amax() > 0.1  # the two prompts lead to different outputs
    install_per_frame_modulation(model)
    try:
        with torch.no_grad():
            alone = [model(**{**kwargs, "hidden_states": kwargs["hidden_states"][i:i + 1],
                                "timestep": kwargs["timestep"][i:i + 1],
                                "encoder_hidden_states": kwargs["encoder_hidden_states"][i:i + 1]})[0]
                     for i in range(2)]
            if with_fps:  # one fps value per sample, as the engine passes it (diffusers fails on that)
                exact(model(**{**kwargs, "fps": [1, 1]})[0], ours)
    finally:
        remove_per_frame_modulation(model)
    # a batch of two vs two calls: matmuls of another shape round differently, so not bit for bit
    torch.testing.assert_close(ours, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_shared_timestep_row_broadcasts_over_the_batch(df):
    """A (1, F) timestep with a batch of two works as in diffusers."""
    kwargs = inputs(df, batch=2, frames=5)
    kwargs["timestep"] = kwargs["timestep"][:1]
    reference, ours = both(df, **kwargs)
    exact(ours, reference)


def test_one_frames_timestep_moves_the_output(df):
    """The comparison means something: changing one frame's timestep changes the output, ours follows."""
    kwargs = inputs(df, frames=5)
    base, _ = both(df, **kwargs)
    timestep = kwargs["timestep"].clone()
    timestep[0, 2] = 100
    moved_ref, moved_ours = both(df, **{**kwargs, "timestep": timestep})
    exact(moved_ours, moved_ref)
    change = (moved_ref - base).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
    assert change[2] > 0.1
    assert change[2] == change.max()  # most at the frame whose noise level changed


def test_config_causal_mask(df):
    """The config's num_frame_per_block > 1 path: diffusers builds a block-causal mask; ours the same."""
    model = copy.deepcopy(df)
    kwargs = inputs(model, frames=6)
    full, _ = both(model, **kwargs)
    model._set_ar_attention(2)
    reference, ours = both(model, **kwargs)
    exact(ours, reference)
    assert (reference - full).abs().amax() > 0.1  # the mask mattered


def test_mask_injected_by_pre_hook(df):
    """Our engine feeds a mask through block pre-hooks (positional arg 4): blocks still see it."""
    kwargs = inputs(df, frames=6)
    mask = block_causal_mask((2, 2, 2), tokens_per_frame=16, device=torch.device("cpu"))
    full, _ = both(df, **kwargs)
    with attention_mask_on(df, mask):
        reference, ours = both(df, **kwargs)
    exact(ours, reference)
    assert (reference - full).abs().amax() > 0.1


@pytest.mark.parametrize("diffusion_forcing", [False, True], ids=["clip", "df"])
def test_i2v_transformer(i2v, diffusion_forcing):
    """Image tokens through the added k/v projections, in a clip call (delegated) and a DF call."""
    kwargs = inputs(i2v, batch=2, frames=5, text_len=TEXT_LEN)
    g = torch.Generator().manual_seed(3)
    kwargs["encoder_hidden_states_image"] = torch.randn(2, 4, i2v.config.image_dim, generator=g)
    if not diffusion_forcing:
        kwargs.update(timestep=torch.tensor([640, 640]), enable_diffusion_forcing=False)
    reference, ours = both(i2v, **kwargs)
    assert_varies_over_frames(reference)
    exact(ours, reference)
    without_image, _ = both(i2v, **{**kwargs, "encoder_hidden_states_image": kwargs["encoder_hidden_states_image"] * 0})
    assert (without_image - reference).abs().amax() > 1e-3  # the image tokens were used


def test_clip_call_on_df_model_is_diffusers(df):
    """enable_diffusion_forcing=False with one timestep per sample: diffusers' own forward, bit for bit."""
    kwargs = {**inputs(df, frames=5), "timestep": torch.tensor([500]), "enable_diffusion_forcing": False}
    reference, ours = both(df, **kwargs)
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


def test_return_dict_and_attention_kwargs(df):
    kwargs = {**inputs(df, frames=5), "return_dict": True, "attention_kwargs": {"scale": 1.0}}
    with torch.no_grad():
        reference = df(**kwargs).sample
        install_per_frame_modulation(df)
        try:
            ours = df(**kwargs).sample
        finally:
            remove_per_frame_modulation(df)
    exact(ours, reference)


def test_bfloat16_close_to_diffusers(hub_models):
    """Loaded as a CUDA run loads it (bf16, diffusers' kept-fp32 layers), never cast: the dtype mix of a real run."""
    from skyreels_cli.models.loading import load_components

    model = load_components(hub_models["df"], "df", torch.bfloat16, read=("transformer", "scheduler"))["transformer"]
    assert model.scale_shift_table.dtype == torch.float32 and model.dtype == torch.bfloat16
    kwargs = inputs(model, batch=2, frames=5)
    kwargs.update(hidden_states=kwargs["hidden_states"].bfloat16(),
                  encoder_hidden_states=kwargs["encoder_hidden_states"].bfloat16())
    reference, ours = both(model, **kwargs)
    assert ours.dtype == reference.dtype == torch.bfloat16
    assert_varies_over_frames(reference.float())
    torch.testing.assert_close(ours, reference, atol=2e-2, rtol=1.6e-2)


def test_gradient_checkpointing_and_backward(df_no_fps):
    """Training path: same output and same gradients with checkpointed blocks."""
    model = copy.deepcopy(df_no_fps).train()
    model.enable_gradient_checkpointing()
    kwargs = inputs(model, frames=5)

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model(**kwargs)[0]
        out.square().mean().backward()
        return out.detach(), model.blocks[0].scale_shift_table.grad.clone()

    reference, reference_grad = grads()
    install_per_frame_modulation(model)
    ours, our_grad = grads()
    exact(ours, reference)
    assert reference_grad.abs().amax() > 0
    torch.testing.assert_close(our_grad, reference_grad, atol=1e-6, rtol=1e-5)


def test_install_and_remove_are_idempotent(df):
    kwargs = inputs(df, frames=5)
    with torch.no_grad():
        reference = df(**kwargs)[0]
        install_per_frame_modulation(df)
        bound = (vars(df)["forward"], vars(df.blocks[0])["forward"])
        install_per_frame_modulation(df)
        assert per_frame_modulation_installed(df)
        assert (vars(df)["forward"], vars(df.blocks[0])["forward"]) == bound  # not wrapped twice
        ours = df(**kwargs)[0]
        remove_per_frame_modulation(df)
        remove_per_frame_modulation(df)
        assert not per_frame_modulation_installed(df)
        assert all("forward" not in vars(m) for m in (df, *df.blocks))  # the class's forward again
        restored = df(**kwargs)[0]
    exact(ours, reference)
    torch.testing.assert_close(restored, reference, atol=0, rtol=0)


class CountCalls(ModelHook):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def test_hooks_added_after_install_wrap_ours(df):
    """diffusers hooks (offloading uses them) added after installation run around our block forward."""
    df = copy.deepcopy(df)  # hooks leave a registry behind
    kwargs = inputs(df, frames=5)
    reference, _ = both(df, **kwargs)
    install_per_frame_modulation(df)
    hook = CountCalls()
    registry = HookRegistry.check_if_exists_or_initialize(df.blocks[1])
    registry.register_hook(hook, "count")
    try:
        with torch.no_grad():
            ours = df(**kwargs)[0]
        assert hook.calls == 1
        with pytest.raises(RuntimeError, match="remove those hooks first"):
            remove_per_frame_modulation(df)
    finally:
        registry.remove_hook("count")
        remove_per_frame_modulation(df)
    exact(ours, reference)
    assert all("forward" not in vars(m) for m in (df, *df.blocks))


def test_install_refuses_a_hooked_model_and_leaves_it_alone(df):
    """Binding ours over an offload hook would silently drop it: refuse, change nothing."""
    df = copy.deepcopy(df)
    registry = HookRegistry.check_if_exists_or_initialize(df.blocks[1])
    registry.register_hook(CountCalls(), "count")
    try:
        with pytest.raises(RuntimeError, match="install per-frame modulation before"):
            install_per_frame_modulation(df)
        assert not per_frame_modulation_installed(df)
        assert "forward" not in vars(df.blocks[0])
    finally:
        registry.remove_hook("count")
    install_per_frame_modulation(df)  # what a removed hook leaves behind is the class's forward: fine
    assert per_frame_modulation_installed(df)


def test_rejects_mismatched_timesteps(df):
    install_per_frame_modulation(df)
    try:
        with pytest.raises(ValueError, match="timestep has 4 frames"), torch.no_grad():
            df(**{**inputs(df, frames=5), "timestep": torch.tensor([TIMESTEPS[:4]])})
    finally:
        remove_per_frame_modulation(df)
