"""Spatial tiles for the streaming decode: diffusers' Wan tiling, with one causal cache per tile kept across calls.

`AutoencoderKLWan.tiled_decode` cuts the latent picture into overlapping tiles, decodes each
tile through all frames with its own causal cache, then blends each tile into the ones above
and to its left. Every step of the blend works frame by frame, so the same blend applied to a
chunk of frames gives the same pixels as on the whole video; and a tile's causal cache can be
carried from one chunk to the next just as the untiled one. So a tiled decode streams window by
window with the result of one tiled decode, while the device holds one tile's activations and
(with `offload`) one tile's cache instead of the whole picture's.

The tile settings are the VAE's own (`vae.tile_sample_min_height` ..., set by
`vae.enable_tiling(...)`), so the same settings give the same result as diffusers.
`tile_grid` and `decode_memory` (the causal caches' bytes) are pure, for planning memory before
decoding anything; the activation peak of a decode is traced, not estimated: `runtime.trace.trace_vae_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import faults

# A steady-state decode keeps two frames of each causal convolution's input (diffusers' CACHE_T).
_CACHED_FRAMES = 2


@dataclass(frozen=True)
class TileSettings:
    """diffusers' tile settings in pixels, plus what converts them to latents and decoder outputs."""

    min_height: int = 256
    min_width: int = 256
    stride_height: int = 192
    stride_width: int = 192
    ratio: int = 8  # pixels per latent, spatially
    patch_size: int | None = None  # the decoder's output is patchified by this much (Wan 2.2); None for Wan 2.1

    @classmethod
    def of(cls, vae) -> TileSettings:
        """The settings `vae.tiled_decode` would use now."""
        return cls(
            vae.tile_sample_min_height, vae.tile_sample_min_width, vae.tile_sample_stride_height,
            vae.tile_sample_stride_width, vae.spatial_compression_ratio, vae.config.patch_size,
        )

    def blend(self) -> tuple[int, int]:
        """Rows and columns of decoder output blended between neighbouring tiles (as `tiled_decode` computes them)."""
        p = self.patch_size or 1
        return self.min_height // p - self.stride_height // p, self.min_width // p - self.stride_width // p

    def output_stride(self) -> tuple[int, int]:
        """Rows and columns of decoder output each tile contributes after blending."""
        p = self.patch_size or 1
        return self.stride_height // p, self.stride_width // p


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the grid and the latent rows/columns it decodes."""

    row: int
    col: int
    top: int
    left: int
    height: int
    width: int

    def window(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., self.top : self.top + self.height, self.left : self.left + self.width]


@dataclass(frozen=True)
class TileGrid:
    """The tiles diffusers cuts a latent picture into, row by row; one whole-picture tile when it would not tile."""

    latent_height: int
    latent_width: int
    tiled: bool
    rows: tuple[tuple[Tile, ...], ...]

    @property
    def count(self) -> int:
        return sum(len(row) for row in self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return len(self.rows), len(self.rows[0])

    def tiles(self) -> list[Tile]:
        return [tile for row in self.rows for tile in row]


def tile_grid(height: int, width: int, settings: TileSettings | None = None) -> TileGrid:
    """The tile grid for a `height` x `width` pixel video (multiples of `settings.ratio`).

    Exactly `AutoencoderKLWan.tiled_decode`'s loops: tiling starts when the latent picture is
    taller or wider than one tile (`_decode`'s test), tiles start every `stride // ratio`
    latents and are `min // ratio` latents big, cut at the picture's edge (so edge tiles can be
    small, and a tile may start inside the one before's overlap: diffusers decodes it anyway).
    E.g. with the defaults (256/192): 544x960 -> 3 x 5 = 15 tiles of at most 32x32 latents
    (256x256 pixels); 720x1280 -> 4 x 7 = 28; 256x256 -> untiled.
    """
    s = settings or TileSettings()
    h, w = height // s.ratio, width // s.ratio
    tile_h, tile_w = s.min_height // s.ratio, s.min_width // s.ratio
    if w <= tile_w and h <= tile_h:
        return TileGrid(h, w, False, ((Tile(0, 0, 0, 0, h, w),),))
    rows = tuple(
        tuple(
            Tile(r, c, top, left, min(tile_h, h - top), min(tile_w, w - left))
            for c, left in enumerate(range(0, w, s.stride_width // s.ratio))
        )
        for r, top in enumerate(range(0, h, s.stride_height // s.ratio))
    )
    return TileGrid(h, w, True, rows)


@dataclass(frozen=True)
class _Conv:
    channels: int  # input channels of a cached causal convolution
    scale: int  # its spatial size over the latent's


def _cached_convs(vae) -> list[_Conv]:
    """The decoder's cached causal convolutions in order, with the resolution each runs at."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    found: list[_Conv] = []

    def walk(module: torch.nn.Module, scale: int) -> int:
        if isinstance(module, WanResample):
            if not module.mode.startswith("upsample"):
                return scale
            if module.mode == "upsample3d":  # its time_conv runs before the spatial upsampling
                found.append(_Conv(module.time_conv.in_channels, scale))
            return scale * 2
        if isinstance(module, WanCausalConv3d):
            if module.kernel_size[0] > 1:  # 1x1x1 convolutions (shortcuts) keep no cache
                found.append(_Conv(module.in_channels, scale))
            return scale
        for child in module.children():
            scale = walk(child, scale)
        return scale

    walk(vae.decoder, 1)
    return found


@dataclass(frozen=True)
class DecodeMemory:
    """The decoder's causal cache for one picture size: per tile (the largest) and all tiles together, in bytes."""

    tiles: int
    tile_cache_bytes: int  # causal cache of the largest tile (of the whole picture when untiled)
    total_cache_bytes: int  # every tile's cache: host memory when tiles are offloaded, else device memory


def decode_memory(vae, height: int, width: int, tiled: bool = True, dtype_bytes: int | None = None) -> DecodeMemory:
    """The decoder's causal cache at `height` x `width` pixels at steady state, per tile and in all (exact:
    4.94 GB fp32 for the released VAE at 544x960, untiled).

    Reads only the decoder's structure and tile settings, so a VAE built on the meta device
    works (`with torch.device("meta"): AutoencoderKLWan.from_config(config)`). Compare
    `tiled=False` (the plain streaming decode) with `tiled=True` under the VAE's tile settings.
    The activation peak on top of it is the planner's, traced on fake tensors rather than estimated
    here (`runtime.trace.trace_vae_decode`): one steady-state latent frame of the released VAE peaks
    at 5.22 GB fp32 at 544x960 untiled, 0.66 GB per 256-pixel tile.
    """
    size = dtype_bytes or torch.finfo(vae.dtype).bits // 8
    settings = TileSettings.of(vae)
    grid = tile_grid(height, width, settings) if tiled else tile_grid(height, width, _never_tile(settings))
    cache_per_latent = sum(c.channels * _CACHED_FRAMES * c.scale**2 for c in _cached_convs(vae)) * size
    areas = [t.height * t.width for t in grid.tiles()]
    return DecodeMemory(tiles=grid.count, tile_cache_bytes=cache_per_latent * max(areas),
                        total_cache_bytes=cache_per_latent * sum(areas))


def _never_tile(s: TileSettings) -> TileSettings:
    big = 1 << 30
    return TileSettings(big, big, big, big, s.ratio, s.patch_size)


class TiledStream:
    """Decodes consecutive chunks of VAE-space latents tile by tile, each tile keeping its own causal cache.

    With `offload`, a tile's cache goes back to the host once its part of the chunk is decoded,
    so the device holds one tile's cache at a time (host memory holds them all:
    `decode_memory(...).total_cache_bytes`).
    """

    def __init__(self, vae, grid: TileGrid, settings: TileSettings, offload: bool = True) -> None:
        self.vae = vae
        self.grid = grid
        self.settings = settings
        self.offload = offload
        size = vae._cached_conv_counts["decoder"]
        self.caches: dict[tuple[int, int], list] = {(t.row, t.col): [None] * size for t in grid.tiles()}

    def decode(self, z: torch.Tensor, first: bool, progress: bool = False) -> torch.Tensor:
        """VAE latents `[B, C, T, h, w]` to blended decoder output, before unpatchify and clamp.

        `first` says whether `z` starts the video (the decoder treats its first frame apart).
        """
        if z.shape[-2:] != (self.grid.latent_height, self.grid.latent_width):
            raise ValueError(f"latents are {tuple(z.shape[-2:])}, the tiles were cut for "
                             f"{(self.grid.latent_height, self.grid.latent_width)}")
        bar = tqdm(total=self.grid.count * z.shape[2], desc="decoding tiles", leave=False, disable=not progress)
        rows = [[self._decode_tile(tile, z, first, bar) for tile in row] for row in self.grid.rows]
        bar.close()
        return self._blend(rows, z.shape[-2] * self.settings.ratio, z.shape[-1] * self.settings.ratio)

    def _decode_tile(self, tile: Tile, z: torch.Tensor, first: bool, bar: tqdm) -> torch.Tensor:
        vae, key = self.vae, (tile.row, tile.col)
        cache = [c.to(z.device) if isinstance(c, torch.Tensor) else c for c in self.caches[key]]
        outs = []
        for k in range(z.shape[2]):
            # Frame by frame through post_quant_conv, as `tiled_decode` does, so rounding is the same.
            x = vae.post_quant_conv(tile.window(z[:, :, k : k + 1]))
            outs.append(vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first and k == 0))
            bar.update()
            faults.point("decode_frame")
        self.caches[key] = _to_host(cache) if self.offload else cache
        return torch.cat(outs, dim=2)

    def _blend(self, rows: list[list[torch.Tensor]], height: int, width: int) -> torch.Tensor:
        # `tiled_decode`'s blend, step for step: blend_v/blend_h write into the current tile, and
        # the already blended tiles above and to the left are what the next ones blend with.
        vae, (blend_h, blend_w) = self.vae, self.settings.blend()
        stride_h, stride_w = self.settings.output_stride()
        p = self.settings.patch_size or 1
        result_rows = []
        for i, row in enumerate(rows):
            result_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = vae.blend_v(rows[i - 1][j], tile, blend_h)
                if j > 0:
                    tile = vae.blend_h(row[j - 1], tile, blend_w)
                result_row.append(tile[:, :, :, :stride_h, :stride_w])
            result_rows.append(torch.cat(result_row, dim=-1))
        return torch.cat(result_rows, dim=3)[:, :, :, : height // p, : width // p]

    def park(self) -> None:
        """Move every tile's cache to the host."""
        self.caches = {key: _to_host(cache) for key, cache in self.caches.items()}


def _to_host(cache: list) -> list:
    return [c.to("cpu") if isinstance(c, torch.Tensor) else c for c in cache]
