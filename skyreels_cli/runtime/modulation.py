"""Per-frame timestep modulation for a loaded diffusers SkyReels-V2 transformer in diffusion-forcing mode.

With per-frame timesteps (B, F) diffusers repeats every frame's modulation for each of its tokens
(`timestep_proj` (B, 6, F*h*w, dim)), and every block adds an fp32 copy of that to its table: most of
the activation peak at full size. The numbers only vary by frame, so here they stay (B, F, 1, dim) and
broadcast over a (B, F, h*w, dim) view of the hidden states. Same arithmetic, same casting order, so the
output equals diffusers'. Installed per instance (bound methods), never by copying the model class:

    install_per_frame_modulation(transformer)   # DF calls now modulate per frame
    remove_per_frame_modulation(transformer)    # back to diffusers' own forward
"""

from __future__ import annotations

import types
from typing import Any

import torch
from diffusers import SkyReelsV2Transformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale


def install_per_frame_modulation(transformer: SkyReelsV2Transformer3DModel) -> None:
    """Bind per-frame modulation to `transformer` and its blocks; a second call does nothing.

    Install before offload hooks or accelerate hooks: those wrap whatever `forward` the module has
    when they are added, so added afterwards they wrap ours; added before, binding ours would drop them.
    """
    if not isinstance(transformer, SkyReelsV2Transformer3DModel):
        raise TypeError(f"expected a SkyReelsV2Transformer3DModel, got {type(transformer).__name__}")
    modules = [(transformer, _model_forward), *((block, _block_forward) for block in transformer.blocks)]
    for module, forward in modules:  # check all first, so a refusal leaves the model untouched
        if not _is_ours(module, forward) and _wrapped(module):
            raise RuntimeError(
                f"{type(module).__name__}.forward is already wrapped (offload or other hooks?): "
                "install per-frame modulation before adding hooks"
            )
    for module, forward in modules:
        if not _is_ours(module, forward):
            module.forward = types.MethodType(forward, module)


def remove_per_frame_modulation(transformer: SkyReelsV2Transformer3DModel) -> None:
    """Restore diffusers' forward on `transformer` and its blocks; does nothing when not installed."""
    modules = [(transformer, _model_forward), *((block, _block_forward) for block in transformer.blocks)]
    for module, forward in modules:
        if not _is_ours(module, forward) and _wrapped(module):
            raise RuntimeError(
                f"{type(module).__name__}.forward was wrapped after installation: remove those hooks first"
            )
    for module, forward in modules:
        if _is_ours(module, forward):
            del module.forward  # the class's forward shows through again


def _is_ours(module: torch.nn.Module, forward: types.FunctionType) -> bool:
    return getattr(vars(module).get("forward"), "__func__", None) is forward


def _wrapped(module: torch.nn.Module) -> bool:
    """Something other than the class's own forward is bound on the instance (a hook wrapper, most likely).

    A removed diffusers hook leaves the class's bound forward on the instance: that one is harmless.
    """
    bound = vars(module).get("forward")
    return bound is not None and getattr(bound, "__func__", None) is not type(module).forward


def _model_forward(
    self: SkyReelsV2Transformer3DModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None = None,
    enable_diffusion_forcing: bool = False,
    fps: Any = None,
    return_dict: bool = True,
    attention_kwargs: dict[str, Any] | None = None,
) -> Transformer2DModelOutput | tuple[torch.Tensor]:
    """diffusers' forward, except that per-frame timesteps stay per frame (not per token)."""
    if not (enable_diffusion_forcing and timestep.dim() == 2):
        # clip calls (one timestep per sample) are untouched; odd DF calls fail as diffusers fails
        return type(self).forward(
            self, hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
            encoder_hidden_states_image=encoder_hidden_states_image,
            enable_diffusion_forcing=enable_diffusion_forcing, fps=fps, return_dict=return_dict,
            attention_kwargs=attention_kwargs,
        )
    # keyword arguments: apply_lora_scale reads attention_kwargs from kwargs
    return _forward_per_frame(
        self, hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
        encoder_hidden_states_image=encoder_hidden_states_image, fps=fps, return_dict=return_dict,
        attention_kwargs=attention_kwargs,
    )


@apply_lora_scale("attention_kwargs")
def _forward_per_frame(
    self: SkyReelsV2Transformer3DModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None,
    fps: Any,
    return_dict: bool,
    attention_kwargs: dict[str, Any] | None,  # only for apply_lora_scale, as in diffusers
) -> Transformer2DModelOutput | tuple[torch.Tensor]:
    batch, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = self.config.patch_size
    grid = (frames // p_t, height // p_h, width // p_w)
    if timestep.shape[1] != grid[0]:
        raise ValueError(f"timestep has {timestep.shape[1]} frames, the latents {grid[0]} (after patching)")

    rotary_emb = self.rope(hidden_states)
    hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2)
    causal_mask = _config_causal_mask(grid, self.config.num_frame_per_block, hidden_states.device)

    temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image
    )
    timestep_proj = timestep_proj.unflatten(-1, (6, -1))  # (B, F, 6, dim)
    if encoder_hidden_states_image is not None:
        encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)
    if self.config.inject_sample_info:
        timestep_proj = timestep_proj + _fps_modulation(self, fps, hidden_states.device)
    # (B, 6, F, 1, dim): one row per latent frame; the blocks broadcast it over the frame's tokens
    modulation = timestep_proj.transpose(1, 2).unsqueeze(3).contiguous()

    for block in self.blocks:  # through Module.__call__: pre-hooks, offload hooks and compile still apply
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(
                block, hidden_states, encoder_hidden_states, modulation, rotary_emb, causal_mask
            )
        else:
            hidden_states = block(hidden_states, encoder_hidden_states, modulation, rotary_emb, causal_mask)

    # output modulation as diffusers does it (no fp32 cast of temb), per frame: (B, F, 1, dim) each
    shift, scale = (self.scale_shift_table.view(1, 2, 1, 1, -1) + temb[:, None, :, None]).unbind(1)
    shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)  # multi-device placement
    hidden_states = (
        self.norm_out(hidden_states.float()).unflatten(1, (grid[0], -1)) * (1 + scale) + shift
    ).flatten(1, 2).type_as(hidden_states)
    hidden_states = self.proj_out(hidden_states)

    hidden_states = hidden_states.reshape(batch, *grid, p_t, p_h, p_w, -1)
    output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return Transformer2DModelOutput(sample=output) if return_dict else (output,)


def _block_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """A SkyReels-V2 block taking per-frame modulation (B, 6, F, 1, dim); other shapes go to diffusers'."""
    if temb.dim() != 5:
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, attention_mask)
    by_frame = (temb.shape[2], -1)  # tokens are frame-major after patching: (B, F*h*w, dim) -> (B, F, h*w, dim)
    # the fp32 sum diffusers makes per token, made per frame: (B, F, 1, dim) each
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
        self.scale_shift_table.view(1, 6, 1, 1, -1) + temb.float()
    ).unbind(1)
    # Same casts in the same order as diffusers' block. Written inline, never bound to a name, so every
    # fp32 intermediate is freed exactly when diffusers frees it (a name would keep it alive: +1 fp32 copy).

    # 1. Self-attention
    norm_hidden_states = (
        self.norm1(hidden_states.float()).unflatten(1, by_frame) * (1 + scale_msa) + shift_msa
    ).flatten(1, 2).type_as(hidden_states)
    attn_output = self.attn1(norm_hidden_states, None, attention_mask, rotary_emb)
    hidden_states = (
        hidden_states.float().unflatten(1, by_frame) + attn_output.unflatten(1, by_frame) * gate_msa
    ).flatten(1, 2).type_as(hidden_states)

    # 2. Cross-attention (no modulation)
    norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
    attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
    hidden_states = hidden_states + attn_output

    # 3. Feed-forward
    norm_hidden_states = (
        self.norm3(hidden_states.float()).unflatten(1, by_frame) * (1 + c_scale_msa) + c_shift_msa
    ).flatten(1, 2).type_as(hidden_states)
    ff_output = self.ffn(norm_hidden_states)
    return (
        hidden_states.float().unflatten(1, by_frame) + ff_output.float().unflatten(1, by_frame) * c_gate_msa
    ).flatten(1, 2).type_as(hidden_states)


def _fps_modulation(self: SkyReelsV2Transformer3DModel, fps: Any, device: torch.device) -> torch.Tensor:
    """The fps embedding's modulation, (n, 1, 6, dim) for n = 1 or B fps values, added to every frame.

    diffusers repeats one row per frame along the batch axis, which works only for a single fps value;
    per sample here, so a batch (classifier-free guidance) can carry one fps value per sample.
    """
    fps = torch.as_tensor(fps, dtype=torch.long, device=device).reshape(-1)
    return self.fps_projection(self.fps_embedding(fps)).unflatten(1, (6, -1)).unsqueeze(1)


def _config_causal_mask(grid: tuple[int, int, int], per_block: int, device: torch.device) -> torch.Tensor | None:
    """The block-causal token mask diffusers builds when the config's `num_frame_per_block` > 1."""
    if per_block <= 1:
        return None
    frames, height, width = grid
    if frames % per_block:
        raise ValueError(f"{frames} latent frames are not a whole number of causal blocks of {per_block}")
    block_of_frame = torch.arange(frames // per_block, device=device).repeat_interleave(per_block)
    frame_mask = block_of_frame.unsqueeze(0) <= block_of_frame.unsqueeze(1)  # [query frame, key frame]
    tokens = height * width
    return frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)[None, None]
