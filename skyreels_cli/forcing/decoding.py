"""Decoding latents to pixels a piece at a time, identical to one whole decode, with a small exact state.

The Wan VAE decoder is causal in time: `AutoencoderKLWan._decode` runs it one
latent frame at a time, carrying a cache of each causal convolution's last
inputs. Keeping that cache between calls (instead of clearing it) lets a long
video be decoded window by window with the same result as one decode, while
memory stays that of one window.

The cache is large (4.9 GB at 544x960), but it depends only on the last few
latent frames: every causal convolution looks back two frames of its own
timeline, and nothing else in the decoder mixes time. So a fresh decoder fed
the last `replay_length(vae)` latents holds exactly the cache of the long
decode. The resume state keeps those latents (about 20 MB at 544x960) instead
of the cache.

With tiling (`tiling.py`) each spatial tile keeps its own cache, and replaying the same
latents through the tiled path rebuilds every tile's cache, so the resume state is the same.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import faults
from .tiling import TiledStream, TileSettings, tile_grid


def _decoder_cache_size(vae) -> int:
    counts = getattr(vae, "_cached_conv_counts", None)
    if counts is not None:
        return counts["decoder"]
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())


def replay_length(vae) -> int:
    """Latent frames that determine the decoder's cache exactly: its receptive field in time, plus one.

    Walks the decoder in order, adding each causal convolution's look-back (kernel - 1 frames of
    its own timeline) divided by that timeline's rate (pixel frames per latent frame), which
    doubles after each temporal upsampling. Checked against long decodes (benchmarks/RESULTS.md):
    37.5 for the released VAE architecture, where a replay of 38 latents is exact and of 37 is not;
    29.5 for the tiny test VAE, where 30 is exact and 29 is not.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    def walk(module: torch.nn.Module, rate: int) -> tuple[float, int]:
        if isinstance(module, WanResample):
            if module.mode != "upsample3d":
                return 0.0, rate
            return (module.time_conv.kernel_size[0] - 1) / rate, rate * 2
        if isinstance(module, WanCausalConv3d):
            return (module.kernel_size[0] - 1) / rate, rate
        total = 0.0
        for child in module.children():
            seen, rate = walk(child, rate)
            total += seen
        return total, rate

    field, _ = walk(vae.decoder, 1)
    return math.ceil(field) + 2  # two frames of margin over the measured minimum


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
    """Decodes consecutive chunks of one latent video; `decode` calls continue where the last stopped.

    `tiling`: decode in spatial tiles with the VAE's tile settings (as diffusers' `enable_tiling`
    does, same result); None follows `vae.use_tiling`. Pictures no bigger than one tile decode
    untiled, as in diffusers. `offload_tiles`: keep only the tile being decoded on the device.
    """

    def __init__(self, vae, progress: bool = False, tiling: bool | None = None, offload_tiles: bool = True) -> None:
        self.vae = vae
        self.progress = progress
        self.tiling = vae.use_tiling if tiling is None else tiling
        self.offload_tiles = offload_tiles
        self.cache: list = [None] * _decoder_cache_size(vae)
        self.tiles: TiledStream | None = None  # cut on the first tiled decode, when the picture size is known
        self.latents_seen = 0
        self.keep = replay_length(vae)
        self.history: torch.Tensor | None = None  # the last `keep` latents decoded, on the host

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents `[B, C, T, h, w]` to pixels `[B, 3, T', H, W]` in [-1, 1]."""
        self._remember(latents)
        return self._decode(latents, progress=self.progress)

    def _decode(self, latents: torch.Tensor, progress: bool) -> torch.Tensor:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        z = denormalize(vae, latents.to(self.device))
        tiles = self._tiles(z)
        if tiles is None:
            out = self._decode_whole(z, progress)
        else:
            out = tiles.decode(z, first=self.latents_seen == 0, progress=progress)
            self.latents_seen += z.shape[2]
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return torch.clamp(out, min=-1.0, max=1.0)

    def _tiles(self, z: torch.Tensor) -> TiledStream | None:
        """The tiled stream for this picture, or None where diffusers would not tile it either."""
        if not self.tiling:
            return None
        if self.tiles is None:
            settings = TileSettings.of(self.vae)
            grid = tile_grid(z.shape[-2] * settings.ratio, z.shape[-1] * settings.ratio, settings)
            if not grid.tiled:
                return None
            self.tiles = TiledStream(self.vae, grid, settings, offload=self.offload_tiles)
        return self.tiles

    def _decode_whole(self, z: torch.Tensor, progress: bool) -> torch.Tensor:
        vae = self.vae
        self._unpark()
        x = vae.post_quant_conv(z)
        outs = []
        for i in tqdm(range(x.shape[2]), desc="decoding", leave=False, disable=not progress):
            first = self.latents_seen == 0
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=first))
            self.latents_seen += 1
            faults.point("decode_frame")
        return torch.cat(outs, dim=2)

    def _remember(self, latents: torch.Tensor) -> None:
        latents = latents.detach().to("cpu", torch.float32)
        joined = latents if self.history is None else torch.cat([self.history, latents], dim=2)
        self.history = joined[:, :, -self.keep :].clone()

    def park(self) -> None:
        """Move the cache to the host while the transformer works (4.9 GB at 544x960 on a GPU)."""
        if self.device.type != "cpu":
            self.cache = [c.to("cpu") if isinstance(c, torch.Tensor) else c for c in self.cache]
            if self.tiles is not None:
                self.tiles.park()

    def _unpark(self) -> None:
        device = self.device
        self.cache = [c.to(device) if isinstance(c, torch.Tensor) else c for c in self.cache]

    def state_dict(self) -> dict:
        """Enough to rebuild the cache exactly: the last latents decoded and how many there were."""
        return {"history": self.history, "latents_seen": self.latents_seen}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> int:
        """Rebuild the cache by decoding the saved latents again; returns how many were decoded."""
        self.cache = [None] * len(self.cache)
        self.tiles = None
        self.latents_seen = 0
        self.history = state["history"]
        if self.history is not None:
            self._decode(self.history, progress=False)
        self.latents_seen = state["latents_seen"]
        return 0 if self.history is None else self.history.shape[2]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Pixels `[1, 3, T, H, W]` in [-1, 1] to frames `[T, H, W, 3]` uint8, rounding to the nearest level."""
    frames = (video[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)
    return (frames * 255).round().to(torch.uint8).cpu().numpy()
