"""Decoding latents to pixels a piece at a time, identical to one whole decode.

The Wan VAE decoder is causal in time: `AutoencoderKLWan._decode` runs it one
latent frame at a time, carrying a cache of each causal convolution's last
inputs. Keeping that cache between calls (instead of clearing it) lets a long
video be decoded window by window with the same result as one decode, while
memory stays that of one window.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


def _decoder_cache_size(vae) -> int:
    counts = getattr(vae, "_cached_conv_counts", None)
    if counts is not None:
        return counts["decoder"]
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Built exactly as the diffusers pipelines build them, so results match theirs bit for bit.
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, inv_std


def denormalize(vae, latents: torch.Tensor) -> torch.Tensor:
    """Model latents to VAE latents."""
    latents = latents.to(vae.dtype)
    mean, inv_std = _stats(vae, latents)
    return latents / inv_std + mean


def normalize(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents to model latents (inverse of `denormalize`)."""
    mean, inv_std = _stats(vae, latents)
    return (latents - mean) * inv_std


class StreamingDecoder:
    """Decodes consecutive chunks of one latent video; `decode` calls continue where the last stopped."""

    def __init__(self, vae, progress: bool = False) -> None:
        self.vae = vae
        self.progress = progress
        self.cache: list = [None] * _decoder_cache_size(vae)
        self.latents_seen = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents `[B, C, T, h, w]` to pixels `[B, 3, T', H, W]` in [-1, 1]."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        x = vae.post_quant_conv(denormalize(vae, latents))
        outs = []
        for i in tqdm(range(x.shape[2]), desc="decoding", leave=False, disable=not self.progress):
            first = self.latents_seen == 0
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=first))
            self.latents_seen += 1
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return torch.clamp(out, min=-1.0, max=1.0)

    def state_dict(self) -> dict:
        cache = [c.cpu() if isinstance(c, torch.Tensor) else c for c in self.cache]
        return {"cache": cache, "latents_seen": self.latents_seen}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.vae.parameters()).device
        self.cache = [c.to(device) if isinstance(c, torch.Tensor) else c for c in state["cache"]]
        self.latents_seen = state["latents_seen"]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Pixels `[1, 3, T, H, W]` in [-1, 1] to frames `[T, H, W, 3]` uint8, rounding to the nearest level."""
    frames = (video[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)
    return (frames * 255).round().to(torch.uint8).cpu().numpy()
