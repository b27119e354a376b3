"""The VRAM planner: its plans (the loader's `MemoryPlan`), the choice `auto` makes under constraints, `skyreels
plan`'s output and errors, and its traces against real runs on the CPU."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

import skyreels_cli.cli.plan  # noqa: F401  (registers `skyreels plan` on the app)
from skyreels_cli.cli.app import app
from skyreels_cli.errors import UsageError, command_line_spelling
from skyreels_cli.models.architectures import TransformerArch, VaeArch, architecture
from skyreels_cli.models.naming import resolve_model
from skyreels_cli.runtime import memory, plan, trace

runner = CliRunner()
CUDA = torch.device("cuda")  # resolve_plan only reads the device's type; `vram_gb` stands in for its memory
DF13 = "df-1.3b-540p"
DF14 = "df-14b-540p"


@pytest.fixture(autouse=True, scope="module")
def trace_cache(tmp_path_factory):
    """A private trace cache for this module (shared by its tests: each full-size trace runs once), never the
    user's home."""
    folder = tmp_path_factory.mktemp("traces")
    mp = pytest.MonkeyPatch()
    mp.setenv("SKYREELS_CACHE", str(folder))
    # traces an earlier module made are remembered in-process too: forget them, so this module's file is filled
    trace._cached_in_process.cache_clear()
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def df13() -> list:
    """Every plan of DF-1.3B at its native size, predicted once for the module (not judged: no memory given)."""
    return plan.predict(resolve_model(DF13))


def invoke(*args):
    return runner.invoke(app, ["plan", *map(str, args)])


def key(p) -> tuple:
    return (p.offload, p.quantize, p.cfg, p.tiled_decode, p.text_encoder_device)


def fastest_fitting(predictions: list, vram_gb: float, **fixed):
    """The reference choice, by brute force: the fastest of the plans with `fixed` fields that fit."""
    ok = [p for p in predictions if p.peak <= vram_gb * plan.GB and p.available
          and all(getattr(p.plan, name) == value for name, value in fixed.items())]
    return min(ok, key=lambda p: plan.speed_rank(p.plan), default=None)


# ---------------------------------------------------------------------------------------------- one MemoryPlan

@pytest.mark.slow
def test_the_planner_predicts_the_loaders_plans(df13):
    assert plan.MemoryPlan is memory.MemoryPlan
    plans = [p.plan for p in df13]
    assert all(isinstance(p, memory.MemoryPlan) for p in plans)
    # every combination once (batched guidance: diffusion forcing only), fastest first
    assert len({key(p) for p in plans}) == len(plans) == 4 * 3 * 2 * 2 * 3
    assert plans == sorted(plans, key=plan.speed_rank) and key(plans[0]) == ("none", "none", "batched", False, "auto")
    assert key(plans[-1]) == ("sequential", "int8", "separate", True, "cpu")
    assert len(plan.plans(forcing=False)) == 4 * 3 * 2 * 3 and all(p.cfg == "separate" for p in plan.plans(False))
    # the speed order: offload first, then quantization, guidance, decode, text encoder
    fast = memory.MemoryPlan(offload="model", quantize="int8", cfg="separate", tiled_decode=True,
                             text_encoder_device="cpu")
    assert plan.speed_rank(fast) < plan.speed_rank(memory.MemoryPlan(offload="group"))
    assert plan.speed_rank(memory.MemoryPlan(cfg="batched", tiled_decode=True)) < plan.speed_rank(memory.MemoryPlan())
    # the text encoder read from disk per new prompt: slower than kept on the host, faster than the CPU
    assert [plan.speed_rank(memory.MemoryPlan(text_encoder_device=d)) for d in ("auto", "disk", "cpu")] == \
        sorted(plan.speed_rank(memory.MemoryPlan(text_encoder_device=d)) for d in ("auto", "disk", "cpu"))


def test_text_encoder_beside_is_the_planners_verdict(df13):
    spec = resolve_model(DF13)
    roomy = {key(p.plan): p for p in plan.predict(spec, vram_gb=80)}
    resident = roomy[("none", "none", "separate", False, "auto")]
    assert resident.plan.text_encoder_beside and resident.phases["text"] > resident.phases["denoise"]
    # just too little memory for the text encoder beside the residents: they step out while it encodes
    tight_gb = (resident.phases["text"] + plan.MARGIN_BYTES) / plan.GB - 0.1
    tight = {key(p.plan): p for p in plan.predict(spec, vram_gb=tight_gb)}
    stepped = tight[("none", "none", "separate", False, "auto")]
    assert not stepped.plan.text_encoder_beside and "step out" in stepped.note
    assert stepped.phases["text"] < resident.phases["text"] - 2e9  # the transformer's bf16 weights left
    assert {k: v for k, v in stepped.phases.items() if k != "text"} == \
        {k: v for k, v in resident.phases.items() if k != "text"}
    # nothing to step out: other offloads, or the text encoder on the CPU
    assert tight[("model", "none", "separate", False, "auto")].plan.text_encoder_beside
    assert tight[("none", "none", "separate", False, "cpu")].plan.text_encoder_beside
    assert plan.resolve_plan(spec, CUDA, vram_gb=tight_gb, tiled_decode=True, cfg="separate",
                             text_encoder_device="auto")[0].text_encoder_beside is False


def test_diffusers_as_shipped_is_a_labelled_baseline_not_a_plan(df13):
    shipped = plan.baseline(resolve_model(DF13))
    assert isinstance(shipped, plan.BaselinePrediction) and not hasattr(shipped, "plan")
    assert shipped.label == "diffusers as shipped"
    fattest = max(df13, key=lambda p: p.peak)
    assert shipped.peak > fattest.peak + 5e9  # the text encoder resident and per-token modulation


# ---------------------------------------------------------------------------------------------- resolve_plan

def test_auto_picks_the_fastest_plan_that_fits():
    spec = resolve_model(DF13)
    chosen, reason = plan.resolve_plan(spec, CUDA, vram_gb=80)
    assert key(chosen) == ("none", "none", "batched", False, "auto") and chosen.text_encoder_beside
    assert reason.startswith("auto: offload none, quantize none, cfg batched, untiled decode") and "\n" not in reason
    assert reason.endswith("of 80.0 GB given, 17.7 GB of host memory")
    # the same choice as `skyreels plan` (quantize auto) and as brute force
    tight, _ = plan.resolve_plan(spec, CUDA, vram_gb=8, quantize="auto")
    assert tight == plan.choose(plan.predict(spec, vram_gb=8), 8).plan
    assert tight == fastest_fitting(plan.predict(spec, vram_gb=8), 8).plan
    assert key(tight) != key(chosen)


@pytest.mark.parametrize("fixed", [
    {},  # quantize "none" is the default: auto never quantizes unless asked to
    {"quantize": "auto"},
    {"quantize": "auto", "tiled_decode": False},
    {"quantize": "fp8", "text_encoder_device": "cpu"},
    {"offload": "model", "cfg": "batched"},
    {"quantize": "auto", "cfg": "separate", "tiled_decode": True},
])
def test_auto_respects_every_fixed_field(fixed):
    spec = resolve_model(DF13)
    chosen, reason = plan.resolve_plan(spec, CUDA, vram_gb=14, **fixed)
    constraints = {name: value for name, value in {"quantize": "none", **fixed}.items() if value != "auto"}
    expected = fastest_fitting(plan.predict(spec, vram_gb=14), 14, **constraints)
    assert chosen == expected.plan, reason
    assert f"predicted {expected.peak_gb:.1f} GB of 14.0 GB given" in reason


@pytest.mark.slow
def test_df_14b_at_24_gb_offloads_without_quantization_and_keeps_fp8_weights_resident():
    spec = resolve_model(DF14)
    bf16, reason = plan.resolve_plan(spec, CUDA, vram_gb=24, cfg="separate", quantize="none")
    assert bf16.quantize == "none" and bf16.offload in ("model", "group", "sequential"), reason
    fp8, _ = plan.resolve_plan(spec, CUDA, vram_gb=24, cfg="separate")  # quantize auto: fp8 avoids offloading
    assert fp8.offload == "none" and fp8.quantize == "fp8"
    chosen = plan.choose(plan.predict(spec, vram_gb=24, cfg="separate"), 24)
    assert chosen.plan == fp8 and chosen.peak_gb <= 24
    # without per-frame modulation the same plan would not fit: the 14B per-token modulation costs ~11 GB
    arch = architecture(spec.kind, spec.size).transformer
    per_token = trace.trace_transformer(arch, 544, 960, 25, weights="fp8", per_frame_modulation=False)
    ours = trace.trace_transformer(arch, 544, 960, 25, weights="fp8")
    assert per_token.activations - ours.activations > 8e9
    assert chosen.phases["denoise"] - ours.activations + per_token.activations + plan.MARGIN_BYTES > 24e9


def test_nothing_fitting_the_constraints_is_one_line_naming_the_smallest():
    spec = resolve_model(DF14)
    with pytest.raises(plan.NoPlanFits) as info:
        plan.resolve_plan(spec, CUDA, vram_gb=24, offload="none", quantize="none", cfg="separate")
    message = str(info.value)
    least = min(plan.predict(spec, vram_gb=24, offload="none", quantize="none", cfg="separate"),
                key=lambda p: p.peak)
    assert "\n" not in message
    assert message.startswith("no memory plan with offload='none', quantize='none', cfg='separate' fits in 24 GB; ")
    assert f"the smallest, {plan.describe(least.plan)}, needs {least.peak_gb:.1f} GB" in message
    assert least.peak_gb > 24


def test_a_plan_fixed_in_full_is_returned_with_its_prediction():
    spec = resolve_model(DF13)
    fixed = {"offload": "none", "quantize": "none", "cfg": "batched", "tiled_decode": False,
             "text_encoder_device": "cpu"}
    given, reason = plan.resolve_plan(spec, CUDA, vram_gb=4, **fixed)
    (predicted,) = plan.predict(spec, vram_gb=4, **fixed)
    assert given == predicted.plan and key(given) == tuple(fixed.values())
    assert reason == f"as given: {plan.describe(given)}: predicted {predicted.peak_gb:.1f} GB of 4.0 GB given " \
                     f"(predicted not to fit)"


def test_free_gpu_memory_is_the_default(monkeypatch):
    spec = resolve_model(DF13)
    monkeypatch.setattr(plan, "free_vram_gb", lambda device=None: 80.0)
    monkeypatch.setattr(plan, "available_host_gb", lambda: 64.0)
    assert plan.resolve_plan(spec, CUDA)[1].endswith("of 80.0 GB free, 17.7 GB of host memory")
    monkeypatch.setattr(plan, "free_vram_gb", lambda device=None: 3.0)
    with pytest.raises(plan.NoPlanFits, match=r"^no memory plan fits in the 3.0 GB free; the smallest, "):
        plan.resolve_plan(spec, CUDA, quantize="auto")


def test_cpu_tiny_and_unknown_models_get_the_plain_plan_with_no_prediction(monkeypatch):
    def no_trace(*args, **kwargs):
        raise AssertionError("nothing is predicted here")

    monkeypatch.setattr(plan, "predict", no_trace)
    monkeypatch.setattr(plan, "free_vram_gb", no_trace)
    df14 = resolve_model(DF14)
    cases = [(df14, torch.device("cpu"), "on the CPU"), (resolve_model("tiny-df"), CUDA, "tiny test model"),
             (dataclasses.replace(df14, size="?"), CUDA, "no known architecture")]
    for spec, device, why in cases:
        chosen, reason = plan.resolve_plan(spec, device)
        assert chosen == plan.UNPLANNED and key(chosen) == ("none", "none", "separate", False, "auto")
        assert reason.startswith("auto ") and why in reason and "\n" not in reason
        assert plan.smaller_plan(spec, device, chosen, vram_gb=8) is None
    fixed, reason = plan.resolve_plan(df14, torch.device("cpu"), offload="group", quantize="fp8", tiled_decode=True)
    assert key(fixed) == ("group", "fp8", "separate", True, "auto")
    assert "quantize fp8" in reason and reason.endswith("text encoder on the CPU")  # where this run encodes
    assert plan.resolve_plan(resolve_model("tiny-df"), CUDA)[1].endswith("text encoder on the GPU")


def test_bad_names_are_one_line_usage_errors():
    spec = resolve_model(DF13)
    with pytest.raises(UsageError, match=r"^offload='disk' is not known; use one of auto, none, model"):
        plan.resolve_plan(spec, CUDA, offload="disk", vram_gb=24)
    with pytest.raises(UsageError, match=r"^cfg='batched' needs a diffusion forcing model; t2v-14b-540p"):
        plan.resolve_plan(resolve_model("t2v-14b-540p"), CUDA, cfg="batched", vram_gb=24)


def test_smaller_plan_after_an_out_of_memory_is_the_fastest_lower_one_that_fits():
    spec = resolve_model(DF13)
    big, _ = plan.resolve_plan(spec, CUDA, vram_gb=80)
    every = plan.predict(spec, vram_gb=12)
    current = next(p for p in plan.predict(spec, vram_gb=12, **dict(zip(
        ("offload", "quantize", "cfg", "tiled_decode", "text_encoder_device"), key(big)))))
    smaller = plan.smaller_plan(spec, CUDA, big, vram_gb=12)
    lower = [p for p in every if p.peak < current.peak]
    assert smaller == fastest_fitting(lower, 12).plan and key(smaller) != key(big)
    smallest = min(every, key=lambda p: p.peak).plan
    assert plan.smaller_plan(spec, CUDA, smallest, vram_gb=80) is None
    assert plan.smaller_plan(spec, CUDA, big, vram_gb=2) is None  # nothing fits 2 GB


# ---------------------------------------------------------------------------------------------- skyreels plan

def test_plenty_of_memory_keeps_everything_resident():
    result = invoke(DF13, "--vram", 80, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"offload", "quantize", "cfg", "tiled_decode", "text_encoder_device", "text_encoder_beside", "peak_gb",
            "fits", "chosen"} <= set(rows[0])
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["offload"] == "none" and chosen[0]["quantize"] == "none"
    assert chosen[0]["cfg"] == "batched" and chosen[0]["tiled_decode"] is False
    # every prediction is judged, and the smaller plans really are smaller
    assert all(isinstance(r["fits"], bool) for r in rows)
    peaks = {(r["offload"], r["cfg"], r["tiled_decode"], r["text_encoder_device"]): r["peak_gb"] for r in rows
             if r["quantize"] == "none"}
    assert peaks[("model", "separate", True, "cpu")] < peaks[("none", "batched", False, "auto")]


def test_table_names_the_choice():
    result = invoke(DF13, "--vram", 8)
    assert result.exit_code == 0, result.output
    chosen = plan.choose(plan.predict(resolve_model(DF13), vram_gb=8), 8)
    with command_line_spelling():  # as the command prints them
        flags = plan.flags(chosen.plan)
    assert f"auto picks for 8.0 GB (--quantize auto): {flags}, peak {chosen.peak_gb:.1f} GB" in result.stdout
    assert flags.startswith("--offload ") and plan.flags(chosen.plan).startswith("offload='")
    assert sum(line.rstrip().endswith("*") or "*  (" in line for line in result.stdout.splitlines()) == 1
    head = next(line for line in result.stdout.splitlines() if line.startswith("offload"))
    assert head.split()[:5] == ["offload", "quantize", "cfg", "tiling", "encoder"]


def test_nothing_fits_is_one_line_exit_2():
    result = invoke(DF13, "--vram", 4)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no memory plan fits in 4 GB; the smallest, ")


@pytest.mark.parametrize("args, message", [
    (("no-such-model",), "unknown model"),
    ((DF13, "--height", 500), "--height 500 is not a positive multiple of 16: use 496 or 512"),
    ((DF13, "--frames", 0), "--frames 0 must be a positive number"),
    ((DF13, "--quantize", "fp4"), "--quantize must be one of"),
    (("tiny-df",), "tiny test model"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = invoke(*args, "--vram", 24)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_traces_are_cached_in_the_private_folder(trace_cache, df13):
    from skyreels_cli.forcing.tiling import decode_memory

    path = trace.trace_cache_file()
    assert path.parent == trace_cache and path.exists()
    assert "vae_decode" in {json.loads(entry)[0] for entry in json.loads(path.read_text())}
    # the decode cache the planner traced is the one tiling.py counts from the decoder's structure
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        released = AutoencoderKLWan()
    for tiled in (False, True):
        traced = trace.trace_vae_decode(VaeArch(), 544, 960, tiled=tiled)
        counted = decode_memory(released, 544, 960, tiled=tiled, dtype_bytes=4)
        assert (traced.tile_cache, traced.cache, traced.tiles) == \
            (counted.tile_cache_bytes, counted.total_cache_bytes, counted.tiles)


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
    # one block of the real 1.3B width (small text embeddings: bf16 matmuls are slow on a CPU)
    (TransformerArch(heads=12, layers=1, ffn=8960, text_dim=32), 64, 96),
], ids=["tiny", "1x1536"])
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
