"""Spatially tiled streaming decode: the same pixels as diffusers' tiled decode, chunk by chunk and across a resume."""

import pytest
import torch

from skyreels_cli.forcing.decoding import StreamingDecoder, denormalize
from skyreels_cli.forcing.tiling import TileSettings, _cached_convs, decode_memory, tile_grid
from skyreels_cli.models.tiny import build_components

# 48-pixel tiles every 32 pixels: 6-latent tiles every 4 latents, 16 pixels blended between neighbours.
TILES = {"tile_sample_min_height": 48, "tile_sample_min_width": 48,
         "tile_sample_stride_height": 32, "tile_sample_stride_width": 32}


@pytest.fixture(scope="module")
def vae():
    vae = build_components("df", seed=0)["vae"].float().eval()
    vae.enable_tiling(**TILES)
    return vae


def latents(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Model-space latents that vary in time and space, so misplaced tiles or frames would show."""
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


def diffusers_decode(vae, z: torch.Tensor, tiled: bool) -> torch.Tensor:
    vae.use_tiling = tiled
    try:
        with torch.no_grad():
            return vae.decode(denormalize(vae, z)).sample
    finally:
        vae.use_tiling = True


def stream(decoder: StreamingDecoder, z: torch.Tensor, splits: list[int]) -> torch.Tensor:
    parts, start = [], 0
    for n in splits:
        parts.append(decoder.decode(z[:, :, start : start + n]))
        start += n
    assert start == z.shape[2]
    return torch.cat(parts, dim=2)


@pytest.mark.parametrize(("hw", "splits", "grid"), [
    ((8, 12), [3, 4], (2, 3)),
    ((8, 11), [2, 2, 3], (2, 3)),  # a narrow last column of tiles
    ((9, 8), [1, 6], (3, 2)),  # a one-row last row, and a chunk that is only the first frame
])
@pytest.mark.slow
def test_tiled_streaming_decode_equals_diffusers_tiled_decode(vae, hw, splits, grid):
    z = latents(sum(splits), *hw)
    expected = diffusers_decode(vae, z, tiled=True)
    decoder = StreamingDecoder(vae, tiling=True)
    got = stream(decoder, z, splits)
    assert decoder.tiles is not None and decoder.tiles.grid.shape == grid
    assert got.shape == expected.shape == (1, 3, 4 * sum(splits) - 3, hw[0] * 8, hw[1] * 8)
    assert expected.std(dim=2).mean() > 0.05 and expected.std(dim=(3, 4)).mean() > 0.05, "varies in time and space"
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_tiling_really_happens_and_stays_close_to_untiled(vae):
    z = latents(5, 8, 12, seed=1)
    untiled = diffusers_decode(vae, z, tiled=False)
    assert torch.equal(stream(StreamingDecoder(vae, tiling=False), z, [2, 3]), untiled)
    tiled = stream(StreamingDecoder(vae, tiling=True), z, [2, 3])
    gap = (tiled - untiled).abs()
    assert gap.max() > 1e-3, "tile edges see zero padding where the whole picture sees neighbours"
    # Close: the tiny random VAE sees far past its small tiles, so "close" is relative to how much
    # other latents move the picture (misplaced or swapped tiles would move it about that much).
    other = (diffusers_decode(vae, latents(5, 8, 12, seed=9), tiled=False) - untiled).abs()
    assert gap.mean() < 0.6 * other.mean()
    # `tiling=None` follows the VAE's own switch, as `vae.decode` does.
    assert torch.equal(StreamingDecoder(vae).decode(z), tiled)
    vae.use_tiling = False
    try:
        assert torch.equal(StreamingDecoder(vae).decode(z), untiled)
    finally:
        vae.use_tiling = True


def test_picture_within_one_tile_decodes_untiled(vae):
    z = latents(3, 6, 6, seed=2)
    decoder = StreamingDecoder(vae, tiling=True)
    assert torch.equal(decoder.decode(z), diffusers_decode(vae, z, tiled=False))
    assert decoder.tiles is None


@pytest.mark.slow
def test_tiled_decode_resumes_from_saved_state(vae):
    z = latents(7, 8, 12, seed=3)
    straight = stream(StreamingDecoder(vae, tiling=True), z, [3, 4])
    first = StreamingDecoder(vae, tiling=True)
    head = first.decode(z[:, :, :3])
    first.park()
    saved = first.state_dict()
    assert set(saved) == {"history", "latents_seen"} and saved["history"].shape[2] == 3
    second = StreamingDecoder(vae, tiling=True)
    assert second.load_state_dict(saved) == 3
    assert torch.equal(torch.cat([head, second.decode(z[:, :, 3:])], dim=2), straight)


@pytest.mark.slow
def test_tiled_resume_past_the_replay_length_is_exact(vae):
    """The resume state is only the last `keep` latents: replaying them rebuilds every tile's cache."""
    z = latents(38, 8, 8, seed=4)  # 2 x 2 tiles
    keep = StreamingDecoder(vae).keep
    straight = StreamingDecoder(vae, tiling=True)
    straight.decode(z[:, :, :35])
    expected = straight.decode(z[:, :, 35:])
    first = StreamingDecoder(vae, tiling=True)
    first.decode(z[:, :, :35])
    saved = first.state_dict()
    assert saved["history"].shape[2] == keep < 35
    resumed = StreamingDecoder(vae, tiling=True)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.decode(z[:, :, 35:]), expected)


def test_tile_grid_follows_diffusers_loops():
    grid = tile_grid(544, 960)
    assert grid.tiled and grid.shape == (3, 5) and grid.count == 15
    assert {(t.height, t.width) for t in grid.tiles()} == {(32, 32), (32, 24), (20, 32), (20, 24)}
    assert [t.left for t in grid.rows[0]] == [0, 24, 48, 72, 96]
    assert tile_grid(720, 1280).shape == (4, 7)
    assert not tile_grid(256, 256).tiled and tile_grid(256, 256).count == 1
    wide = tile_grid(264, 256)  # one latent row over a tile starts tiling both ways, as `_decode` does
    assert wide.shape == (2, 2) and wide.rows[1][1].height == 9 and wide.rows[1][1].width == 8
    small = TileSettings(48, 48, 32, 32)
    assert tile_grid(64, 96, small).shape == (2, 3) and tile_grid(64, 88, small).rows[0][-1].width == 3
    assert small.blend() == (16, 16) and small.output_stride() == (32, 32)


def test_tile_settings_are_the_vaes(vae):
    assert TileSettings.of(vae) == TileSettings(48, 48, 32, 32, 8, None)


def test_decode_memory_counts_the_cache_the_decoder_keeps(vae):
    """The estimate's cache equals the bytes a decoder really holds after a few frames, untiled and per tile."""
    z = latents(4, 8, 12, seed=5)
    plain = StreamingDecoder(vae, tiling=False)
    plain.decode(z)
    held = sum(c.numel() * c.element_size() for c in plain.cache if isinstance(c, torch.Tensor))
    untiled = decode_memory(vae, 64, 96, tiled=False)
    assert untiled.tiles == 1 and untiled.tile_cache_bytes == untiled.total_cache_bytes == held
    tiled_decoder = StreamingDecoder(vae, tiling=True)
    tiled_decoder.decode(z)
    per_tile = [sum(c.numel() * c.element_size() for c in cache if isinstance(c, torch.Tensor))
                for cache in tiled_decoder.tiles.caches.values()]
    tiled = decode_memory(vae, 64, 96)
    assert tiled.tiles == 6 and tiled.tile_cache_bytes == max(per_tile) and tiled.total_cache_bytes == sum(per_tile)
    assert tiled.tile_cache_bytes < untiled.tile_cache_bytes < tiled.total_cache_bytes  # overlap is decoded twice


def test_decode_memory_of_the_released_vae_at_540p():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        released = AutoencoderKLWan()  # the defaults are the released Wan 2.1 VAE; meta: no memory, no weights
    assert len(_cached_convs(released)) == 32
    whole = decode_memory(released, 544, 960, tiled=False, dtype_bytes=4)
    assert whole.tile_cache_bytes == whole.total_cache_bytes == 4_939_345_920  # 4.9 GB at 960x544
    tiled = decode_memory(released, 544, 960, dtype_bytes=4)
    # 15 tiles of at most 256x256 pixels: one holds an eighth of the whole cache, all hold more (overlaps)
    assert tiled.tiles == 15 and tiled.tile_cache_bytes == 619_839_488 and tiled.total_cache_bytes > 1.5 * 4_939_345_920


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_tiles_on_cuda_match_the_cpu_and_leave_caches_on_the_host(vae):
    z = latents(5, 8, 12, seed=6)
    cpu = stream(StreamingDecoder(vae, tiling=True), z, [2, 3])
    gpu_vae = build_components("df", seed=0)["vae"].float().eval().to("cuda")
    gpu_vae.enable_tiling(**TILES)
    decoder = StreamingDecoder(gpu_vae, tiling=True)
    got = stream(decoder, z, [2, 3]).cpu()
    caches = [c for cache in decoder.tiles.caches.values() for c in cache if isinstance(c, torch.Tensor)]
    assert caches and all(c.device.type == "cpu" for c in caches)
    torch.testing.assert_close(got, cpu, atol=1e-4, rtol=1e-4)
