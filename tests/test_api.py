"""The Python API as a user calls it: load once, many requests, streaming, and inputs that matter."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import skyreels_cli as sk

from .conftest import ALIASES, frames_of, mean_levels, read_png_frames

SMALL = dict(height=64, width=64, frames=17, steps=3)


@pytest.fixture(scope="module")
def df_model(hub_models):
    return sk.load(ALIASES["df"], device="cpu", progress=False)


@pytest.fixture(scope="module")
def i2v_model(hub_models):
    return sk.load(ALIASES["i2v"], device="cpu", progress=False)


def test_request_round_trips_through_a_dict():
    full = sk.Request(prompt="a fox", negative_prompt="blur", height=64, width=96, frames=57, steps=3, guidance=5.0,
                      shift=4.0, fps=16, seed=9, sigma_grid="diffusers", image="a.png", end_image="b.png",
                      base_frames=17, overlap=5, ar_step=2, causal_block=2, addnoise=10.0, causal_attention=True)
    for request in (sk.Request(prompt="a cat"), full):
        data = json.loads(json.dumps(request.to_dict()))
        assert data["version"] == 1
        assert sk.Request.from_dict(data) == request


def test_request_from_dict_names_an_unknown_field():
    with pytest.raises(sk.UsageError, match="'colour'"):
        sk.Request.from_dict({"prompt": "a cat", "colour": "red"})


def test_check_refuses_a_null_prompt_and_a_shot_list_item_too_many_by_their_fields(hub_models):
    """Once an AttributeError and a TypeError: a prompt of None is no prompt, a shot as a list has at most as many
    items as a Shot has fields; each a UsageError naming its field, from the library as from the service."""
    with pytest.raises(sk.UsageError, match="the prompt is empty") as err:
        sk.check(sk.Job("t2v", sk.Request(prompt=None), model=ALIASES["df"], load=sk.LoadOptions(device="cpu")))
    assert err.value.field == "prompt"
    with pytest.raises(sk.UsageError, match="has 6 items") as err:
        sk.Request(prompt="a", shots=[["a fox", 17, None, None, None, "more"]])
    assert err.value.field == "shots"
    assert sk.Request(prompt="a", shots=[["a fox", 17]]).shots[0].frames == 17, "a shorter list still is a shot"


def test_resolve_fills_the_model_defaults(df_model):
    resolved = df_model.resolve(sk.Request(prompt="a cat", frames=45))
    assert (resolved.height, resolved.width, resolved.steps, resolved.guidance) == (544, 960, 30, 6.0)
    assert resolved.base_frames == 97 and resolved.overlap == 17 and resolved.addnoise == 20.0
    assert resolved.seed is not None and resolved.negative_prompt == sk.DEFAULT_NEGATIVE_PROMPT
    assert df_model.resolve(resolved) == resolved


@pytest.mark.slow
def test_second_request_equals_a_fresh_process(df_model, tmp_path):
    """One loaded model, two different requests; the second's frames are what a new process makes."""
    first = frames_of(df_model, sk.Request(prompt="a red fox", seed=1, **SMALL))
    request = sk.Request(prompt="the dog running through snow", seed=2, **SMALL)
    second = frames_of(df_model, request)
    assert mean_levels(first, second) > 2
    script = (
        "import sys, json, numpy as np, skyreels_cli as sk\n"
        f"m = sk.load({ALIASES['df']!r}, device='cpu', progress=False)\n"
        "r = sk.Request.from_dict(json.loads(sys.argv[1]))\n"
        "np.save(sys.argv[2], np.concatenate([w.frames for w in m.stream(r)]))\n"
    )
    out = tmp_path / "fresh.npy"
    subprocess.run([sys.executable, "-c", script, json.dumps(request.to_dict()), str(out)], check=True, timeout=300)
    assert np.array_equal(np.load(out), second)


def test_stream_gives_the_frames_generate_writes(df_model, tmp_path):
    request = sk.Request(prompt="a red fox", seed=4, height=64, width=64, frames=45, steps=2, base_frames=17)
    windows = list(df_model.stream(request))
    # 12 latent frames in windows of 5 with an overlap of 2: 5 + 3 + 3 + 1 new latent frames.
    assert [w.index for w in windows] == [0, 1, 2, 3] and all(w.windows == 4 for w in windows)
    assert [w.first_frame for w in windows] == [0, 17, 29, 41]
    result = df_model.generate(request, output=f"{tmp_path / 'frames'}/")
    assert result.frames == 45 and result.request.seed == 4 and result.request.overlap == 5
    assert np.array_equal(read_png_frames(result.path), np.concatenate([w.frames for w in windows]))
    sidecar = json.loads(result.sidecar.read_text())
    assert sk.Request.from_dict(sidecar["request"]) == result.request


def test_prompt_start_and_end_images_each_change_the_frames(df_model, tmp_path, image_file):
    """Each input moves the frames by well over the oracle tests' 1-level tolerance, so a test
    that fed the wrong prompt or image could not pass."""
    other = tmp_path / "other.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(5).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(other)
    base = sk.Request(prompt="a red fox", seed=3, **SMALL)
    cases = {
        "prompt": (base, sk.Request(prompt="the dog", seed=3, **SMALL)),
        "start image": (sk.Request(prompt="a red fox", image=str(image_file), seed=3, **SMALL),
                        sk.Request(prompt="a red fox", image=str(other), seed=3, **SMALL)),
    }
    for causal in (False, True):
        cases[f"end image, causal attention {causal}"] = tuple(
            sk.Request(prompt="a red fox", end_image=str(end), causal_attention=causal, seed=3, **SMALL)
            for end in (image_file, other))
    for name, (a, b) in cases.items():
        assert mean_levels(frames_of(df_model, a), frames_of(df_model, b)) > 2, name


def test_i2v_prompt_and_image_change_the_frames(i2v_model, tmp_path, image_file):
    other = tmp_path / "other.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(5).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(other)
    a = frames_of(i2v_model, sk.Request(prompt="a red fox", image=str(image_file), seed=3, **SMALL))
    b = frames_of(i2v_model, sk.Request(prompt="the dog", image=str(image_file), seed=3, **SMALL))
    c = frames_of(i2v_model, sk.Request(prompt="a red fox", image=str(other), seed=3, **SMALL))
    assert mean_levels(a, b) > 1.5 and mean_levels(a, c) > 2


def test_a_t2v_model_refuses_an_image(hub_models):
    spec = sk.resolve_model(ALIASES["t2v"])
    with pytest.raises(sk.UsageError, match="takes no image"):
        sk.prepare(spec, sk.Request(prompt="a cat", image="x.png"))
    with pytest.raises(sk.UsageError, match="ar_step applies to diffusion forcing"):
        sk.prepare(spec, sk.Request(prompt="a cat", ar_step=5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_requests_on_cuda_with_the_text_encoder_stepping_aside(hub_models):
    model = sk.load(ALIASES["df"], device="cuda", dtype="bf16", progress=False)
    for prompt in ("a red fox", "the dog"):
        frames = frames_of(model, sk.Request(prompt=prompt, seed=1, **SMALL))
        assert frames.shape == (17, 64, 64, 3)
        assert next(model.components["text_encoder"].parameters()).device.type == "cpu"
