"""Accelerators (weights.toml `[accelerators]`, `--accelerator`) and guidance 1 as one pass, on the tiny models
and the tiny accelerator (a random LoRA built locally, as they are)."""

import json
from dataclasses import replace

import pytest

import skyreels_cli as sk
from skyreels_cli.core.resolve import resolve, run_shape
from skyreels_cli.models.accelerators import accelerate, fit_key, lora_bytes
from skyreels_cli.models.lora import weight_shapes
from skyreels_cli.models.registry import load_registry
from skyreels_cli.runtime.plan import plans, predict, resolve_plan

from .conftest import frames_of, invoke, mean_levels, one_line_error
from .test_lora import lora_state

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
    spec, _ = accelerate(load_registry().models["tiny-df"], "tiny:1.0", steps=6)  # a strength given: any count
    r = resolve(sk.Request(prompt="a fox", steps=6, guidance=3.0, sampler="unipc"), spec)
    assert (r.sampler, r.sigmas, r.steps, r.guidance) == ("unipc", None, 6, 3.0)  # past its levels: the grid
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


CAUSVID_14B = [(None, 9, 0.6, 9), (4, 4, 0.9, 4), (8, 8, 0.6, 8), (12, 12, 0.3, None)]


@pytest.mark.parametrize("steps, count, strength, levels", CAUSVID_14B)
def test_causvid_strength_and_noise_levels_follow_the_steps(steps, count, strength, levels):
    """The authors' table by steps (8 at 0.5-0.7: the middle); the first N of Kijai's timesteps, as his
    flowmatch_causvid and Wan2GP's causvid solver take them; past the 9 published, the shift-7 grid."""
    spec, lora = accelerate(load_registry().models["df-14b-540p"], "causvid", steps)
    published = load_registry().accelerators["causvid"].sigmas
    assert (spec.steps, spec.accelerator_strength, spec.shift) == (count, strength, 7.0)
    assert lora.endswith(f"Wan21_CausVid_14B_T2V_lora_rank32_v2.safetensors:{strength}")
    assert spec.sigmas == (published[:levels] if levels else None)
    r = resolve(sk.Request(prompt="a fox", steps=steps), spec)
    assert (r.steps, r.sigmas) == (count, spec.sigmas)


def test_causvid_strength_given_wins_and_the_13b_lora_keeps_its_own():
    spec, lora = accelerate(load_registry().models["df-14b-540p"], "causvid:0.45", 4)
    assert lora.endswith(":0.45") and spec.accelerator == "causvid:0.45" and spec.steps == 4
    spec, lora = accelerate(load_registry().models["df-1.3b-540p"], "causvid", 8)  # its entry fixes 1.0
    assert lora.endswith(":1.0") and spec.sigmas is None and spec.shift == 2.0


@pytest.mark.parametrize("args, words", [
    (["--steps", "6"], ["--steps 6 with --accelerator causvid: its strength is published for 4, 8, 9, 12 steps",
                        "--accelerator causvid:0.6)"]),
    (["--sigmas", "1,0.9,0.8,0.7,0.6,0.5"], ["--steps 6 with --accelerator causvid"]),  # six levels: six steps
])
def test_causvid_step_count_without_a_published_strength_is_one_line(tmp_path, args, words):
    message = one_line_error(invoke("extend", "a fox", "-m", "df-14b-540p", "--accelerator", "causvid", *args, *DRY,
                                    "-o", tmp_path / "x.mp4"))
    for word in words:
        assert word in message, message
    assert not list(tmp_path.iterdir())


def test_accelerator_strength_must_be_a_positive_number(tmp_path):
    message = one_line_error(invoke("extend", "a fox", "-m", "tiny", "--accelerator", "tiny:fast", *DRY,
                                    "-o", tmp_path / "x.mp4"))
    assert "--accelerator 'tiny:fast': the strength after ':' must be a positive number" in message


@pytest.mark.slow
def test_steps_pick_the_strength_recorded_and_replayed(tmp_path):
    """The tiny accelerator's table gives 2 steps strength 0.5: the run, its sidecar and --from all use it."""
    out = tmp_path / "a.mp4"
    result = invoke("extend", "a red fox", "-m", "tiny", "--accelerator", "tiny", "--steps", "2", "--frames", "17",
                    "-H", "64", "-W", "64", "--device", "cpu", "-o", out, "--quiet", "--seed", "3")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["model"]["loras"][0]["scale"] == 0.5
    assert sidecar["request"]["sigmas"] == [1.0, 0.875] and sidecar["request"]["steps"] == 2
    again = tmp_path / "b.mp4"
    result = invoke("extend", "--from", out, "-o", again, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    replayed = json.loads(again.with_name(again.name + ".json").read_text())
    assert replayed["model"]["loras"] == sidecar["model"]["loras"]
    assert replayed["request"]["sigmas"] == [1.0, 0.875]


def test_model_loaded_for_other_steps_refuses_a_strength_it_lacks():
    """Loaded for its 4 steps (strength 1.0), a 2-step request would need 0.5: refused, saying how to load."""
    with pytest.raises(sk.UsageError, match="takes tiny's LoRA at strength 0.5, but this model was loaded for 4"):
        frames_of(model("tiny"), sk.Request(**FEW, steps=2))


def test_a_model_loaded_for_the_steps_runs_them():
    m = sk.load("tiny-df", device="cpu", progress=False, accelerator="tiny", plan_for=sk.Request(steps=2))
    assert m.loras[0]["scale"] == 0.5 and m.spec.steps == 2 and m.spec.sigmas == (1.0, 0.875)


@pytest.mark.parametrize("args", [["--accelerator", "tiny"], ["--guidance", "1"]])
def test_cfg_batched_at_guidance_1_is_one_line(tmp_path, args):
    """Nothing to batch: refused as --cfg batched on a two-pass model is (the planner never changes a choice)."""
    run = ["extend", "a fox", "-m", "tiny", "--cfg", "batched", "--device", "cpu", "-H", "64", "-W", "64", *DRY]
    message = one_line_error(invoke(*run, *args, "-o", tmp_path / "x.mp4"))
    assert "--cfg batched has nothing to batch at guidance 1" in message and "guidance above 1" in message
    assert not list(tmp_path.iterdir())
    result = invoke(*run, *args, "--guidance", "3", "-o", tmp_path / "x.mp4")  # a guidance to batch: accepted
    assert result.exit_code == 0 and "cfg batched" in result.output, result.output


def test_library_plan_refuses_cfg_batched_at_guidance_1():
    tiny = load_registry().models["tiny-df"]
    with pytest.raises(sk.UsageError, match="nothing to batch at guidance 1") as caught:
        resolve_plan(replace(tiny, guidance=1.0), "cpu", cfg="batched")  # an accelerator's default guidance
    assert caught.value.field == "cfg"
    assert resolve_plan(tiny, "cpu", cfg="batched")[0].cfg == "batched"  # guided: batched as asked
    with pytest.raises(sk.UsageError, match="nothing to batch"):  # the request's guidance counts, not the model's
        resolve_plan(tiny, "cpu", run_shape(tiny, sk.Request(prompt="x", guidance=1.0)), cfg="batched")


@pytest.mark.slow
def test_planner_counts_the_accelerator_lora():
    """lightx2v's rank-64 LoRA on every attention and feed-forward linear of the 14B blocks: 0.57 GiB in bf16,
    on the GPU beside weights kept there."""
    spec, _ = accelerate(load_registry().models["df-14b-540p"], "lightx2v")
    assert lora_bytes(spec) == 2 * 64 * (8 * 2 * 5120 + 2 * (5120 + 13824)) * 40
    without = replace(spec, accelerator=None)  # the same settings, no LoRA
    peaks = {p.plan: p.peak for p in predict(without, offload="none", quantize="none")}
    for p in predict(spec, offload="none", quantize="none"):
        assert p.peak - peaks[p.plan] == lora_bytes(spec)


@pytest.mark.slow
def test_plan_command_plans_for_the_accelerator():
    result = invoke("plan", "df-14b-540p", "--vram", "24", "--accelerator", "lightx2v")
    assert result.exit_code == 0, result.output
    assert "with lightx2v: guidance 1 (one pass, no guidance batch), its LoRA 0.57 GB" in result.output
    rows = result.output.splitlines()
    assert not any(" batched " in row for row in rows) and "--cfg separate" in rows[-1]
    plain = invoke("plan", "df-14b-540p", "--vram", "24")
    assert any(" batched " in row for row in plain.output.splitlines())
    wrong = one_line_error(invoke("plan", "df-1.3b-540p", "--accelerator", "lightx2v"))
    assert "has no LoRA for df-1.3b-540p" in wrong


def test_user_lora_and_accelerator_both_apply_the_users_first():
    shapes = weight_shapes(model().components["transformer"])
    from safetensors.torch import save_file

    path = model().folder.parent / "user-style.safetensors"
    save_file(lora_state(shapes), str(path))
    m = sk.load("tiny-df", device="cpu", progress=False, accelerator="tiny", loras=(f"{path}:0.7",))
    assert [(rec["path"], rec["scale"]) for rec in m.loras] == \
        [(str(path), 0.7), (model("tiny").loras[0]["path"], 1.0)]


BATCH = """model = "tiny"
accelerator = "tiny"
height = 64
width = 64
frames = 17

[[job]]
command = "extend"
prompt = "a fox"
steps = 2
output = "a.mp4"

[[job]]
command = "extend"
prompt = "a dog"
steps = 3
output = "b.mp4"
"""


def test_batch_jobs_take_the_accelerator_for_their_steps(tmp_path):
    (tmp_path / "jobs.toml").write_text(BATCH)
    message = one_line_error(invoke("batch", tmp_path / "jobs.toml", "--device", "cpu", "--dry-run"))
    assert 'line 16: steps = 3 with accelerator = "tiny": its strength is published for 2, 4 steps' in message
    assert 'accelerator = "tiny:1"' in message and "(job 2)" in message
    (tmp_path / "jobs.toml").write_text(BATCH.replace("steps = 3", "steps = 4"))
    result = invoke("batch", tmp_path / "jobs.toml", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("extend: tiny-df, 64x64, 17 frames") == 2
    assert not (tmp_path / "a.mp4").exists()


@pytest.mark.slow
def test_the_pool_holds_one_model_per_strength():
    """The service's pool: a job whose steps take another strength gets its own model; the same steps share one."""
    from skyreels_cli.core.pool import ModelPool

    pool, tiny = ModelPool(progress=False), load_registry().models["tiny-df"]
    options = sk.LoadOptions(device="cpu", accelerator="tiny")
    two = pool.get(accelerate(tiny, "tiny", 2)[0], options, plan_for=sk.Request(steps=2))
    four = pool.get(accelerate(tiny, "tiny", 4)[0], options, plan_for=sk.Request(steps=4))
    assert (two.loras[0]["scale"], four.loras[0]["scale"], pool.loads) == (0.5, 1.0, 2)
    assert pool.get(accelerate(tiny, "tiny", 2)[0], options, plan_for=sk.Request(steps=2)) is two and pool.loads == 2
