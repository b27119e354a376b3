"""The VRAM planner: its choices, `skyreels plan`'s output and errors, and its traces against real runs on the CPU."""

import json

import pytest
import torch
from typer.testing import CliRunner

import skyreels_cli.cli.plan  # noqa: F401  (registers `skyreels plan` on the app)
from skyreels_cli.cli.app import app
from skyreels_cli.models.architectures import TransformerArch, VaeArch
from skyreels_cli.models.registry import resolve_model
from skyreels_cli.runtime import plan, trace

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def trace_cache(tmp_path_factory):
    """A private trace cache for this module (shared by its tests: each full-size trace runs once)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SKYREELS_CACHE", str(tmp_path_factory.mktemp("traces")))
    yield
    mp.undo()


def invoke(*args):
    return runner.invoke(app, ["plan", *map(str, args)])


def test_plenty_of_memory_keeps_everything_resident():
    result = invoke("df-1.3b-540p", "--vram", 80, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"offload", "quantize", "peak_gb", "fits", "chosen"} <= set(rows[0])
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["offload"] == "none" and chosen[0]["quantize"] == "none"
    assert chosen[0]["cfg"] == "batched" and chosen[0]["decode"] == "untiled"
    # every prediction is judged, and the smaller plans really are smaller
    assert all(isinstance(r["fits"], bool) for r in rows)
    peaks = {(r["offload"], r["cfg"], r["decode"], r["text_encoder"]): r["peak_gb"] for r in rows
             if r["quantize"] == "none"}
    assert peaks[("model", "separate", "tiled", "cpu")] < peaks[("none", "batched", "untiled", "gpu")]


def test_table_names_the_choice():
    result = invoke("df-1.3b-540p", "--vram", 8)
    assert result.exit_code == 0, result.output
    assert "auto picks for 8.0 GB: --offload" in result.stdout
    assert sum(line.rstrip().endswith("*") or "*  (" in line for line in result.stdout.splitlines()) == 1


def test_df_14b_fits_24_gb_with_weights_resident():
    spec = resolve_model("df-14b-540p")
    chosen = plan.choose(plan.predict(spec, vram_gb=24, cfg="separate"), 24)
    assert chosen.peak_gb <= 24
    assert chosen.plan.offload in ("none", "model") and chosen.plan.quantize == "fp8"
    # without per-frame modulation the same plan would not fit: the 14B per-token modulation costs ~11 GB
    per_token = trace.trace_transformer(spec_arch(spec), 544, 960, 25, weights="fp8", per_frame_modulation=False)
    ours = trace.trace_transformer(spec_arch(spec), 544, 960, 25, weights="fp8")
    assert per_token.activations - ours.activations > 8e9
    assert chosen.phases["denoise"] - ours.activations + per_token.activations + plan.MARGIN_BYTES > 24e9


def spec_arch(spec):
    from skyreels_cli.models.architectures import architecture

    return architecture(spec.kind, spec.size).transformer


def test_nothing_fits_is_one_line_exit_2():
    result = invoke("df-1.3b-540p", "--vram", 4)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no memory plan fits in 4 GB")


@pytest.mark.parametrize("args, message", [
    (("no-such-model",), "unknown model"),
    (("df-1.3b-540p", "--height", 500), "--height must be a positive multiple of 16"),
    (("df-1.3b-540p", "--frames", 0), "--frames must be a positive number"),
    (("df-1.3b-540p", "--quantize", "fp4"), "--quantize must be one of"),
    (("tiny-df",), "tiny test model"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = invoke(*args, "--vram", 24)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


# ---------------------------------------------------------------------------------------------- against reality

def _real_model(arch: TransformerArch):
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
    finally:
        torch.set_default_dtype(previous)
    trace._keep_in_fp32(model)
    return model


def _real_transformer_peak(model, height: int, width: int, latents: int) -> int:
    """Activation peak of one real forward on the CPU, measured by torch's MemTracker (not our tracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    cfg = model.config
    x = torch.randn(1, cfg.in_channels, latents, height // 8, width // 8, dtype=torch.bfloat16)
    t = torch.linspace(999, 0, latents).long()[None]  # a different noise level on every frame
    text = torch.randn(1, 512, cfg.text_dim, dtype=torch.bfloat16)
    tracker = MemTracker()
    tracker.track_external(model, x, t, text)
    with tracker, torch.no_grad():
        before = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, enable_diffusion_forcing=True,
                    return_dict=False)[0]
    assert out.float().std() > 0  # a real computation, not an empty one
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - before


@pytest.mark.parametrize("arch, height, width", [
    (TransformerArch(heads=2, head_dim=12, layers=2, ffn=32, text_dim=32, freq_dim=32), 64, 64),  # tiny
    (TransformerArch(heads=12, layers=2, ffn=8960), 96, 128),  # 2 blocks of the real 1.3B width
], ids=["tiny", "2x1536"])
def test_transformer_trace_matches_a_real_forward(arch, height, width):
    from skyreels_cli.runtime.modulation import (
        install_per_frame_modulation,
        remove_per_frame_modulation,
    )

    latents = 5
    model = _real_model(arch)
    predicted = {}
    for modulation in (False, True):
        if modulation:
            install_per_frame_modulation(model)
        predicted[modulation] = trace.trace_transformer(arch, height, width, latents,
                                                        per_frame_modulation=modulation).activations
        real = _real_transformer_peak(model, height, width, latents)
        assert real > 100_000
        assert abs(predicted[modulation] - real) <= 0.15 * real, (modulation, predicted[modulation], real)
    remove_per_frame_modulation(model)
    if arch.dim >= 1536:  # the per-token modulation copy is visible once the model is wide
        assert predicted[False] > 1.2 * predicted[True]


def test_vae_decode_trace_matches_a_real_decode():
    """One steady-state latent frame through a small VAE: traced on fake tensors vs measured for real."""
    from diffusers import AutoencoderKLWan
    from torch.distributed._tools.mem_tracker import MemTracker

    arch = VaeArch(base_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1)
    predicted = trace.trace_vae_decode(arch, 64, 96)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**arch.config()).eval()
    z = torch.randn(1, arch.z_dim, 1, 8, 12)
    cache = [None] * vae._cached_conv_counts["decoder"]
    with torch.no_grad():
        for first in (True, False):
            vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=first)
    tracker = MemTracker()
    tracker.track_external(vae, z, *[c for c in cache if isinstance(c, torch.Tensor)])
    with tracker, torch.no_grad():
        before = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
        out = vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0])
    real = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - before
    assert out.std() > 0 and real > 100_000
    assert abs(predicted.activations - real) <= 0.15 * real, (predicted.activations, real)
    cached = sum(c.untyped_storage().nbytes() for c in cache if isinstance(c, torch.Tensor))
    assert predicted.cache == cached


def test_live_bytes_agrees_with_mem_tracker():
    """Our fast counter and torch's MemTracker see the same peak on the same fake forward."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        x = torch.empty(128, 64)
        with trace.LiveBytes() as live, torch.no_grad():
            base = live.track(model, x)
            live.reset_peak()
            model(x)
        tracker = MemTracker()
        tracker.track_external(model, x)
        with tracker, torch.no_grad():
            before = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
            model(x)
        theirs = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - before
    assert live.peak - base == theirs > 0
