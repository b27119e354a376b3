"""Streaming decode, and the engine's invariants that diffusers cannot check for us."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.forcing.decoding import StreamingDecoder, denormalize

from .conftest import ALIASES, read_png_frames


@pytest.mark.parametrize("splits", [[13], [1, 12], [5, 4, 4], [2, 3, 1, 7]])
def test_streaming_decode_equals_one_decode(hub_models, splits):
    vae = AutoencoderKLWan.from_pretrained(hub_models["df"] / "vae").eval()
    z = torch.randn(1, 16, 13, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = vae.decode(denormalize(vae, z)).sample.clamp(-1, 1)
    decoder = StreamingDecoder(vae)
    parts, start = [], 0
    for n in splits:
        parts.append(decoder.decode(z[:, :, start:start + n]))
        start += n
    assert torch.equal(torch.cat(parts, dim=2), whole)


def test_streaming_decode_resumes_from_saved_state(hub_models):
    vae = AutoencoderKLWan.from_pretrained(hub_models["df"] / "vae").eval()
    z = torch.randn(1, 16, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    straight = StreamingDecoder(vae)
    expected = torch.cat([straight.decode(z[:, :, :4]), straight.decode(z[:, :, 4:])], dim=2)
    first = StreamingDecoder(vae)
    head = first.decode(z[:, :, :4])
    second = StreamingDecoder(vae)
    second.load_state_dict(first.state_dict())
    assert torch.equal(torch.cat([head, second.decode(z[:, :, 4:])], dim=2), expected)


@pytest.mark.slow
def test_decoder_state_is_rebuilt_exactly_from_its_last_latents(hub_models):
    """Past the replay length, a fresh decoder fed only the last latents continues bit for bit;
    one latent fewer than the receptive field would not (so the margin is real, not luck)."""
    from skyreels_cli.forcing.decoding import replay_length

    vae = AutoencoderKLWan.from_pretrained(hub_models["df"] / "vae").eval()
    keep = replay_length(vae)
    assert keep == 32  # 29.5 latent frames of receptive field, rounded up, plus 2
    z = torch.randn(1, 16, 50, 4, 4, generator=torch.Generator().manual_seed(2))
    straight = StreamingDecoder(vae)
    straight.decode(z[:, :, :40])
    expected = straight.decode(z[:, :, 40:])
    first = StreamingDecoder(vae)
    first.decode(z[:, :, :40])
    saved = first.state_dict()
    assert saved["history"].shape[2] == keep and saved["latents_seen"] == 40
    resumed = StreamingDecoder(vae)
    assert resumed.load_state_dict(saved) == keep
    assert torch.equal(resumed.decode(z[:, :, 40:]), expected)
    short = StreamingDecoder(vae)
    short.load_state_dict({"history": saved["history"][:, :, -29:], "latents_seen": 40})
    assert not torch.equal(short.decode(z[:, :, 40:]), expected)


def test_end_image_is_seen_by_every_frame_under_causal_attention():
    from skyreels_cli.forcing.causal_attention import block_causal_mask

    mask = block_causal_mask((2, 2, 1), 1, "cpu", visible_tail=1)[0, 0]
    assert mask[:, -1].all(), "every frame attends to the end image"
    assert not mask[0, 2] and mask[2, 0], "otherwise block-causal"


EXTEND = ["extend", "a red fox", "-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64",
          "--steps", "3", "--frames", "45", "--base-frames", "17", "--overlap", "5", "--quiet"]


def run(tmp_path, name, *extra):
    out = tmp_path / name
    result = CliRunner().invoke(app, [*EXTEND, *extra, "-o", f"{out}/"])
    assert result.exit_code == 0, result.output
    return read_png_frames(out)


@pytest.mark.slow
def test_addnoise_runs_are_reproducible_from_the_seed(hub_models, tmp_path):
    a = run(tmp_path, "a", "--addnoise", "20", "--seed", "3")
    b = run(tmp_path, "b", "--addnoise", "20", "--seed", "3")
    c = run(tmp_path, "c", "--addnoise", "20", "--seed", "4")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_addnoise_changes_the_continuation(hub_models, tmp_path):
    clean = run(tmp_path, "clean", "--addnoise", "0", "--seed", "3")
    noisy = run(tmp_path, "noisy", "--addnoise", "20", "--seed", "3")
    window = 17  # the first window has no prefix, so add-noise cannot touch it
    assert np.array_equal(clean[:window], noisy[:window])
    assert not np.array_equal(clean[window:], noisy[window:])


def test_causal_attention_mask_is_scoped_to_the_call(hub_models):
    from diffusers import SkyReelsV2Transformer3DModel

    from skyreels_cli.forcing.causal_attention import attention_mask_on, block_causal_mask

    model = SkyReelsV2Transformer3DModel.from_pretrained(hub_models["df"] / "transformer")
    before = dict(model.config)
    seen = []

    def forward_recording_mask():
        handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[4]))
        model(torch.randn(1, 16, 4, 8, 8), torch.full((1, 4), 500), torch.randn(1, 8, 32),
              enable_diffusion_forcing=True, fps=[1])
        handle.remove()

    mask = block_causal_mask((2, 2), 16, "cpu")
    with attention_mask_on(model, mask):
        forward_recording_mask()
    forward_recording_mask()
    assert seen[0] is mask and seen[1] is None
    assert mask.shape[-1] == 64 and not mask[0, 0, 0, 63] and mask[0, 0, 63, 0]
    assert dict(model.config) == before


@pytest.mark.slow
def test_video_continuation_keeps_the_input_and_adds_new_frames(hub_models, tmp_path):
    # A lossless input video, so the copied frames can be compared exactly.
    import imageio_ffmpeg

    frames_in = run(tmp_path, "source", "--frames", "21", "--seed", "1")
    video = tmp_path / "in.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (64, 64), fps=24, codec="libx264rgb",
                                         output_params=["-qp", "0"], macro_block_size=1)
    writer.send(None)
    writer.send(frames_in.tobytes())
    writer.close()
    out = run(tmp_path, "continued", "--video", str(video), "--frames", "24", "--seed", "2")
    assert out.shape == (21 + 24, 64, 64, 3)
    assert np.array_equal(out[:21], frames_in)
    assert not np.array_equal(out[21:25], out[17:21]), "the seam repeats frames"


@pytest.mark.slow
def test_end_image_is_dropped_in_long_mode(hub_models, tmp_path, image_file):
    out = run(tmp_path, "ends", "--image", str(image_file), "--end-image", str(image_file), "--seed", "2")
    assert out.shape[0] == 45


def test_start_image_stays_clean_in_async_mode(hub_models):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from skyreels_cli.forcing.engine import Conditioning, DiffusionForcingEngine, Sampling
    from skyreels_cli.forcing.schedule import make_scheduler
    from skyreels_cli.forcing.windows import plan_windows

    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(hub_models["df"])
    engine = DiffusionForcingEngine(pipe.transformer, pipe.vae, make_scheduler(pipe.scheduler.config, 8.0), "cpu")
    window = plan_windows(5, base=5, overlap=2, causal_block=2, start_prefix=1).windows[0]
    assert window.blocks == (1, 2, 2) and window.ready_blocks == 1
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 5, 8, 8, generator=gen)
    before = latents.clone()
    cond = Conditioning(torch.randn(1, 512, 32), None, 1.0)
    engine.denoise_window(latents, window, cond, Sampling(steps=3, ar_step=1, causal_attention=True), gen)
    assert torch.equal(latents[:, :, :1], before[:, :, :1])
    assert not torch.equal(latents[:, :, 1:], before[:, :, 1:])
