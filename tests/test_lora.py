"""LoRAs: made here with random low-rank weights in diffusers' format, they change the frames, scale 0 and
unloading give the original frames exactly, a misfit is refused whole naming its layers, the sidecar keeps
the file's hash. Needs the shared-file diff of issue 9 part c (load(loras=...), --lora)."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.errors import ModelError, ResumeError
from skyreels_cli.models import lora as L

from .conftest import ALIASES

SMALL = {"height": 64, "width": 64, "frames": 17, "steps": 3, "seed": 3}
REQUEST = sk.Request(prompt="a red fox running through snow", **SMALL)
# Self-attention projections of both tiny blocks: the layers style LoRAs usually adapt.
LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


def lora_state(shapes: dict, rank: int = 4, seed: int = 0, blocks=(0, 1), layers=LAYERS) -> dict:
    """diffusers-format LoRA tensors for `layers` of `blocks`, strong enough to move the frames."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for b in blocks:
        for layer in layers:
            out_features, in_features = shapes[f"blocks.{b}.{layer}"]
            state[f"transformer.blocks.{b}.{layer}.lora_A.weight"] = torch.randn(rank, in_features, generator=g) * 0.5
            state[f"transformer.blocks.{b}.{layer}.lora_B.weight"] = torch.randn(out_features, rank, generator=g) * 0.5
    return state


def frames_of(model, request=REQUEST) -> np.ndarray:
    return np.concatenate([w.frames for w in model.stream(request)])


def levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.fixture(scope="module")
def base(hub_models):
    model = sk.load(ALIASES["df"], device="cpu", progress=False)
    return model, frames_of(model)


@pytest.fixture(scope="module")
def lora_file(base, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_file(lora_state(L.weight_shapes(base[0].components["transformer"])), path)
    return path


def test_parse_lora_reads_an_optional_scale():
    assert L.parse_lora("style.safetensors:0.8") == L.LoraSpec("style.safetensors", 0.8)
    assert L.parse_lora("org/name") == L.LoraSpec("org/name", 1.0)
    assert L.parse_lora("org/name:-1.5e-1").scale == -0.15
    assert L.parse_lora("C:\\loras\\x.safetensors") == L.LoraSpec("C:\\loras\\x.safetensors")


def test_lora_changes_the_frames_and_unloads_exactly(base, lora_file):
    original = base[1]
    assert original.std() > 1 and levels(original[0], original[-1]) > 1, "flat frames would prove nothing"
    adapted = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[str(lora_file)])
    with_lora = frames_of(adapted)
    assert levels(with_lora, original) > 2, "the LoRA did not reach the frames"
    adapted.remove_loras()
    assert np.array_equal(frames_of(adapted), original)
    assert adapted.loras == [] and not hasattr(adapted.components["transformer"], "peft_config")


def test_scale_zero_gives_the_original_frames(base, lora_file):
    original = base[1]
    zero = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[f"{lora_file}:0"])
    assert np.array_equal(frames_of(zero), original)


def test_lora_before_group_offload_gives_the_same_frames(base, lora_file):
    """LoRAs go on before the memory plan: diffusers' group offload hooks then carry the adapters too."""
    plain = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[str(lora_file)], offload="none")
    grouped = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[str(lora_file)], offload="group")
    frames = frames_of(plain)
    assert levels(frames, base[1]) > 2
    assert np.array_equal(frames_of(grouped), frames)


@pytest.mark.slow
def test_misfit_is_refused_naming_the_layers_and_changes_nothing(base, lora_file, tmp_path):
    model, original = base
    transformer = model.components["transformer"]
    bad = lora_state(L.weight_shapes(transformer), blocks=(0,))
    bad["transformer.blocks.0.attn1.to_q.lora_A.weight"] = torch.randn(4, 48)  # a layer of another model size
    bad["transformer.blocks.7.attn1.to_q.lora_A.weight"] = torch.randn(4, 24)  # a block this model lacks
    bad["transformer.blocks.7.attn1.to_q.lora_B.weight"] = torch.randn(24, 4)
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ModelError) as refused:
        L.apply_loras(transformer, [str(lora_file), str(tmp_path / "bad.safetensors")], "tiny")
    message = str(refused.value)
    assert "\n" not in message and "blocks.0.attn1.to_q" in message and "blocks.7.attn1.to_q" in message
    assert "blocks.0.attn1.to_k" not in message and "nothing was applied" in message
    assert not hasattr(transformer, "peft_config")
    assert np.array_equal(frames_of(model), original)


@pytest.mark.slow
def test_an_error_while_loading_unloads_what_was_loaded(base, lora_file, monkeypatch):
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin as Loader

    model, original = base
    real = Loader.load_lora_into_transformer.__func__
    calls = []

    def second_fails(cls, state, transformer, **kwargs):
        calls.append(kwargs["adapter_name"])
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return real(cls, state, transformer, **kwargs)

    monkeypatch.setattr(Loader, "load_lora_into_transformer", classmethod(second_fails))
    with pytest.raises(RuntimeError, match="disk gone"):
        L.apply_loras(model.components["transformer"], [str(lora_file), str(lora_file)])
    assert len(calls) == 2 and not hasattr(model.components["transformer"], "peft_config")
    assert np.array_equal(frames_of(model), original)


def test_original_wan_format_is_read_like_diffusers_format(base):
    shapes = L.weight_shapes(base[0].components["transformer"])
    diffusers_state = lora_state(shapes, layers=("attn1.to_q", "attn2.to_v", "ffn.net.0.proj"))
    names = {"attn1.to_q": "self_attn.q", "attn2.to_v": "cross_attn.v", "ffn.net.0.proj": "ffn.0"}
    wan = {}
    for key, value in diffusers_state.items():
        block, layer, part = key.split(".")[2], key.split(".", 3)[3].rsplit(".lora_", 1)[0], key.split(".lora_")[1]
        wan[f"diffusion_model.blocks.{block}.{names[layer]}.lora_{'down' if part[0] == 'A' else 'up'}.weight"] = value
    converted = L.read_lora(L.ResolvedLora(L.LoraSpec("wan"), _saved(wan), ""))
    assert converted.keys() == diffusers_state.keys()
    assert all(torch.equal(converted[k], diffusers_state[k]) for k in converted)
    assert L.mismatches(converted, shapes) == []


def _saved(state: dict):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "wan.safetensors"
    save_file(state, path)
    return path


@pytest.mark.slow
def test_cli_records_the_lora_and_refuses_a_misfit(hub_models, lora_file, tmp_path):
    runner = CliRunner()
    args = ["extend", "a red fox running", "-m", ALIASES["df"], "--height", "64", "--width", "64", "--frames", "17",
            "--steps", "3", "--seed", "3", "--device", "cpu", "-q"]
    out = tmp_path / "fox.mp4"
    done = runner.invoke(app, [*args, "--lora", f"{lora_file}:0.7", "-o", str(out)])
    assert done.exit_code == 0, done.output
    [record] = json.loads((tmp_path / "fox.mp4.json").read_text())["model"]["loras"]
    assert record["path"] == str(lora_file.resolve()) and record["scale"] == 0.7
    assert record["sha256"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()

    other = tmp_path / "other.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 40),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(24, 4)}, other)
    refused = runner.invoke(app, [*args, "--lora", str(other), "-o", str(tmp_path / "no.mp4")])
    assert refused.exit_code == 2 and "blocks.0.attn1.to_q" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "no.mp4").exists()
    missing = runner.invoke(app, [*args, "--lora", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "n.mp4")])
    assert missing.exit_code == 2 and "nope.safetensors" in missing.output


def test_resume_with_other_loras_is_refused(base, lora_file):
    from types import SimpleNamespace

    from skyreels_cli.core.run import _check_resumable

    model = base[0]
    record = L.resolve_lora(str(lora_file)).record
    job = SimpleNamespace(saved={"model": {"quantize": "none", "loras": [record]}}, target=SimpleNamespace(path="x"))
    with pytest.raises(ResumeError, match="other LoRAs"):
        _check_resumable(job, model)
    model.loras = [{**record, "path": "/elsewhere/copy.safetensors"}]  # the same file moved: still the same run
    try:
        _check_resumable(job, model)
    finally:
        model.loras = []


def _two_layouts(path, rank: int = 4, dim: int = 32):
    """A LoRA file in PEFT's and Kohya's key layouts at once, with an alpha and a whole-tensor delta beside."""
    save_file({
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(rank, dim),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(dim, rank),
        "diffusion_model.blocks.1.self_attn.q.lora_down.weight": torch.zeros(2 * rank, dim),
        "diffusion_model.blocks.1.self_attn.q.lora_up.weight": torch.zeros(dim, 2 * rank),
        "diffusion_model.blocks.1.self_attn.q.alpha": torch.tensor(8.0),
        "diffusion_model.blocks.1.norm3.diff": torch.zeros(dim),  # added to the weight: nothing kept beside it
    }, path)
    return L.ResolvedLora(L.LoraSpec(str(path)), path, "")


def test_a_loras_low_rank_layers_are_counted_from_its_header(tmp_path):
    lora = _two_layouts(tmp_path / "mixed.safetensors")
    assert L.adapter_bytes([lora], 2) == (4 * 32 * 2 + 8 * 32 * 2) * 2
    assert L.adapter_bytes([lora, lora], 4) == 2 * (4 * 32 * 2 + 8 * 32 * 2) * 4
    assert L.adapter_bytes([], 2) == 0
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="broken.safetensors is not a readable .safetensors file"):
        L.adapter_bytes([L.ResolvedLora(L.LoraSpec("b"), tmp_path / "broken.safetensors", "")], 2)


def test_load_plans_for_the_loras_it_is_given(hub_models, lora_file, monkeypatch):
    """The memory plan is chosen for the LoRA's layers beside the weights (a --lora was planned as if absent)."""
    import skyreels_cli.core.model as M

    shapes, real = [], M.choose_plan
    monkeypatch.setattr(M, "choose_plan", lambda spec, dev, shape, *rest: shapes.append(shape) or
                        real(spec, dev, shape, *rest))
    model = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[str(lora_file)])
    expected = L.adapter_bytes([L.resolve_lora(str(lora_file))], 4)  # fp32 on the CPU
    assert expected > 0
    assert shapes[-1].adapter_bytes == expected == model.adapter_bytes
    sk.load(ALIASES["df"], device="cpu", progress=False)
    assert shapes[-1].adapter_bytes == 0


@pytest.mark.slow
def test_the_planner_and_plan_command_count_a_given_lora(tmp_path):
    from skyreels_cli.core.resolve import planned_shape
    from skyreels_cli.models.registry import load_registry
    from skyreels_cli.runtime.plan import predict

    spec = load_registry().models["df-1.3b-540p"]
    request = sk.Request(frames=97)
    plain = {p.plan: p.peak for p in predict(spec, planned_shape(spec, request), offload="none", quantize="none")}
    for p in predict(spec, planned_shape(spec, request, 3 << 20), offload="none", quantize="none"):
        assert p.peak - plain[p.plan] == 3 << 20, "the layers sit on the GPU beside weights kept there"
    _two_layouts(tmp_path / "style.safetensors", rank=64, dim=1536)
    result = CliRunner().invoke(app, ["plan", "df-1.3b-540p", "--vram", "24", "--lora",
                                      str(tmp_path / "style.safetensors")])
    assert result.exit_code == 0, result.output
    assert "with 1 LoRA: 1.1 MB of low-rank layers beside the transformer's weights" in result.output, result.output
