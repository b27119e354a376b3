"""Accelerators (weights.toml `[accelerators]`, `--accelerator`) and guidance 1 as one pass, on the tiny models
and the tiny accelerator (a random LoRA built locally, as they are)."""

import json

import pytest

import skyreels_cli as sk
from skyreels_cli.core.resolve import resolve, run_shape
from skyreels_cli.models.accelerators import accelerate, fit_key
from skyreels_cli.models.registry import load_registry
from skyreels_cli.runtime.plan import plans

from .conftest import frames_of, invoke, mean_levels, one_line_error

FEW = dict(prompt="a red fox", seed=5, height=64, width=64, frames=17)
_models: dict = {}


def model(accelerator=None):
    if accelerator not in _models:
        _models[accelerator] = sk.load("tiny-df", device="cpu", progress=False, accelerator=accelerator)
    return _models[accelerator]


@pytest.mark.slow
def test_accelerator_settings_are_the_defaults_and_each_flag_still_wins():
    spec, lora = accelerate(load_registry().models["tiny-df"], "tiny")
    acc = load_registry().accelerators["tiny"]
    assert (spec.sampler, spec.sigmas, spec.steps, spec.guidance, spec.shift) == \
        (acc.sampler, acc.sigmas, len(acc.sigmas), acc.guidance, acc.shift)
    assert lora.endswith("t2v.safetensors:1.0")
    r = resolve(sk.Request(prompt="a fox"), spec)
    assert (r.sampler, r.sigmas, r.steps, r.guidance) == ("euler", acc.sigmas, 4, 1.0)
    r = resolve(sk.Request(prompt="a fox", steps=6, guidance=3.0, sampler="unipc"), spec)
    assert (r.sampler, r.sigmas, r.steps, r.guidance) == ("unipc", None, 6, 3.0)  # its noise levels dropped
    assert accelerate(load_registry().models["tiny-i2v"], "tiny")[1].endswith("i2v.safetensors:1.0")


def test_every_accelerator_lora_fits_its_family():
    """T2V LoRAs serve T2V and DF; I2V ones serve I2V only; lightx2v has no 1.3B LoRA."""
    for acc in load_registry().accelerators.values():
        for key, lora in acc.loras.items():
            assert ("i2v" in lora.file.lower()) == key.startswith("i2v"), (acc.name, key, lora.file)
    assert "df-1.3B" not in load_registry().accelerators["lightx2v"].loras
    assert fit_key(load_registry().models["df-14b-540p"]) in load_registry().accelerators["lightx2v"].loras


@pytest.mark.slow
def test_tiny_accelerator_lora_clearly_changes_the_frames():
    """Same sampler, noise levels and guidance: only the LoRA differs."""
    settings = dict(FEW, sampler="euler", sigmas=(1.0, 0.875, 0.75, 0.5), guidance=1.0)
    plain = frames_of(model(), sk.Request(**settings))
    accelerated = frames_of(model("tiny"), sk.Request(**settings))
    assert model("tiny").loras and model("tiny").spec.accelerator == "tiny"
    assert mean_levels(plain, accelerated) > 5


def _count_passes(m, request) -> tuple[int, list[bool]]:
    """Transformer forward passes and the prompt encoder's cfg flags of one run."""
    calls, cfg = [], []
    transformer, pipe = m.components["transformer"], m.pipe
    hook = transformer.register_forward_hook(lambda *_: calls.append(1))
    encode = pipe.encode_prompt

    def spy(*args, **kwargs):
        cfg.append(kwargs["do_classifier_free_guidance"])
        return encode(*args, **kwargs)

    pipe.encode_prompt = spy
    try:
        frames_of(m, request)
    finally:
        hook.remove()
        pipe.encode_prompt = encode
    return len(calls), cfg


@pytest.mark.slow
@pytest.mark.parametrize("guidance, passes, cfg", [(1.0, 4, False), (6.0, 8, True)])
def test_guidance_1_is_one_pass_without_a_negative_prompt(guidance, passes, cfg):
    count, flags = _count_passes(model(), sk.Request(**{**FEW, "prompt": f"a fox {guidance}"}, steps=4,
                                                     guidance=guidance))
    assert count == passes  # 4 steps of one synchronous window
    assert flags == [cfg]  # the negative prompt is encoded only for guidance


def test_planner_sees_no_guidance_batch_at_guidance_1():
    spec, _ = accelerate(load_registry().models["df-14b-540p"], "lightx2v")
    assert run_shape(spec, sk.Request(prompt="x")).guided is False
    assert run_shape(load_registry().models["df-14b-540p"], sk.Request(prompt="x")).guided is True
    shape = run_shape(spec, sk.Request(prompt="x"))
    assert {p.cfg for p in plans(shape.forcing and shape.guided)} == {"separate"}
    assert "batched" in {p.cfg for p in plans(True)}


@pytest.mark.slow
def test_accelerator_is_recorded_and_replayed(tmp_path):
    out = tmp_path / "a.mp4"
    result = invoke("extend", "a red fox", "-m", "tiny", "--accelerator", "tiny", "--frames", "17", "-H", "64",
                    "-W", "64", "--device", "cpu", "-o", out, "--quiet", "--seed", "3")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["model"]["accelerator"] == "tiny"
    assert sidecar["request"]["sampler"] == "euler" and sidecar["request"]["sigmas"] == [1.0, 0.875, 0.75, 0.5]
    assert sidecar["model"]["loras"][0]["scale"] == 1.0
    again = tmp_path / "b.mp4"
    result = invoke("extend", "--from", out, "-o", again, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    replayed = json.loads(again.with_name(again.name + ".json").read_text())
    assert replayed["model"]["accelerator"] == "tiny"
    assert replayed["model"]["loras"] == sidecar["model"]["loras"]


def test_models_lists_the_accelerators_with_what_they_fit():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "lightx2v: 4 steps (euler, sigmas 1, 0.9375, 0.8333, 0.625), guidance 1, shift 5" in text
    fits = next(line for line in text.splitlines()[text.splitlines().index(next(
        line for line in text.splitlines() if line.strip().startswith("lightx2v:"))) + 1:] if "fits:" in line)
    assert "df-14b-540p" in fits and "df-1.3b-540p" not in fits
    assert "strength by steps 12: 0.3, 8: 0.6, 4: 0.9" in text


def test_download_builds_the_tiny_accelerator():
    result = invoke("download", "tiny", "--quiet")
    assert result.exit_code == 0, result.output
    assert "tiny (t2v-tiny, df-tiny):" in result.output and "tiny (i2v-tiny):" in result.output


DRY = ["--frames", "17", "--dry-run"]


@pytest.mark.parametrize("args, words", [
    (["extend", "a fox", "-m", "df-1.3b-540p", "--accelerator", "lightx2v", *DRY],
     ["--accelerator lightx2v has no LoRA for df-1.3b-540p (df-1.3B)", "df-14b-540p"]),
    (["extend", "a fox", "-m", "tiny", "--accelerator", "causvid", *DRY], ["causvid", "df-1.3b-540p"]),
    (["extend", "a fox", "-m", "tiny", "--accelerator", "turbo", *DRY], ["'turbo' is not known", "lightx2v"]),
])
def test_accelerator_for_another_model_is_one_line(tmp_path, args, words):
    message = one_line_error(invoke(*args, "-o", tmp_path / "x.mp4"))
    for word in words:
        assert word in message, message
    assert not list(tmp_path.iterdir())
