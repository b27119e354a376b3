"""LoRA files as they are published, on the tiny transformer: ComfyUI/Kijai (`diffusion_model.`, lora_down/up,
`.alpha`, `.diff_b`, norm `.diff`), musubi-tuner (`lora_unet_`), diffusers and PEFT. Loading each gives the
weights and the forward of the same change merged into the weights by hand (W + s*alpha/rank*B@A,
bias + s*diff_b, norm + s*diff), and a wrong alpha or a dropped key is shown to move both; the format is told
from the keys; keys that fit nothing (an I2V LoRA on a DF model) are refused on one line, the model untouched."""

import copy
import json

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.errors import ModelError
from skyreels_cli.models import lora as L
from skyreels_cli.models.tiny import TINY, _transformer
from skyreels_cli.models.tiny_lora import FORMATS, save_tiny_lora

from .conftest import ALIASES

STRENGTH = 0.7


_BUILT: dict[str, torch.nn.Module] = {}


def tiny(kind: str = "df") -> torch.nn.Module:
    """A fresh copy of the tiny `kind` transformer (built once: random weights, seed 0)."""
    if kind not in _BUILT:
        torch.manual_seed(0)
        _BUILT[kind] = _transformer(kind, TINY)
    return copy.deepcopy(_BUILT[kind])


def merged_by_hand(base, lora, strength=STRENGTH, *, alpha=None, drop=()) -> dict[str, torch.Tensor]:
    """`base`'s weights with `lora`'s change added by the published rule; `alpha` and `drop` (layer or parameter
    names left out) make it wrong on purpose."""
    state = {k: v.clone() for k, v in base.state_dict().items()}
    scale = strength * (alpha or lora.alpha) / lora.rank
    for layer, (down, up) in lora.layers.items():
        if layer not in drop:
            state[f"{layer}.weight"] += scale * up @ down
    for layer, bias in lora.biases.items():
        if layer not in drop:
            state[f"{layer}.bias"] += strength * bias
    for name, delta in lora.deltas.items():
        if name not in drop:
            state[name] += strength * delta
    return state


def effective(transformer) -> dict[str, torch.Tensor]:
    """The weights a transformer with PEFT adapters computes with: each adapter merged into its layer (on a copy)."""
    model = copy.deepcopy(transformer)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".lora_" not in k}


def gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def forward(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    latents, text = torch.randn(1, 16, 1, 4, 4, generator=g), torch.randn(1, 6, TINY["text_dim"], generator=g)
    with torch.no_grad():
        return transformer(latents, torch.tensor([700]), text, fps=[0], return_dict=False)[0]


def with_weights(base, state):
    model = copy.deepcopy(base)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_as_the_change_merged_by_hand(fmt, tmp_path):
    base = tiny()
    path = tmp_path / "style.safetensors"
    lora = save_tiny_lora(path, fmt, rank=4, alpha=2.0)  # alpha/rank = 0.5
    assert lora.layers and (fmt == "musubi" or lora.biases) and (fmt != "comfyui" or lora.deltas)
    model = copy.deepcopy(base)
    L.apply_loras(model, [f"{path}:{STRENGTH}"], "tiny")
    hand, weights = merged_by_hand(base, lora), effective(model)
    assert gap(weights, hand) < 1e-5
    out, expected = forward(model), forward(with_weights(base, hand))
    assert (out - expected).abs().max() < 1e-5 and (out - forward(base)).abs().max() > 1e-2

    # The comparison can fail: a wrong alpha, or one key left out, moves the weights (and the output).
    wrong = [merged_by_hand(base, lora, alpha=lora.rank), merged_by_hand(base, lora, drop={"blocks.1.attn2.to_v"})]
    if lora.deltas:
        wrong.append(merged_by_hand(base, lora, drop={"blocks.0.norm2.weight"}))
    assert all(gap(weights, state) > 1e-3 for state in wrong)
    assert (out - forward(with_weights(base, wrong[0]))).abs().max() > 1e-4

    L.remove_loras(model)  # the transformer's own weights back, exactly
    assert gap(dict(model.state_dict()), dict(base.state_dict())) == 0


@pytest.mark.parametrize("kind", ["i2v", "t2v"])
def test_comfyui_lora_on_its_own_family(kind, tmp_path):
    """An I2V LoRA's image keys (k_img, v_img, norm_k_img) land on an I2V model; a T2V LoRA fits an I2V model too
    (diffusers pads the image projections with zeros)."""
    base = tiny("i2v")
    lora = save_tiny_lora(tmp_path / "l.safetensors", "comfyui", kind)
    assert any("add_k_proj" in layer for layer in lora.layers) == (kind == "i2v")
    model = copy.deepcopy(base)
    L.apply_loras(model, [f"{tmp_path / 'l.safetensors'}:{STRENGTH}"], "tiny-i2v")
    assert gap(effective(model), merged_by_hand(base, lora)) < 1e-5


def test_the_format_is_told_from_the_keys():
    assert L.detect_format(["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]) == "comfyui"
    assert L.detect_format(["blocks.0.cross_attn.k.lora_A.weight"]) == "comfyui"  # Wan names, no prefix
    assert L.detect_format(["lora_unet_blocks_0_ffn_0.lora_up.weight", "lora_unet_blocks_0_ffn_0.alpha"]) == "musubi"
    assert L.detect_format(["transformer.blocks.0.attn1.to_q.lora_A.weight"]) == "diffusers"
    assert L.detect_format(["base_model.model.blocks.0.attn1.to_q.lora_B.weight"]) == "diffusers"
    assert L.detect_format(["blocks.0.attn1.to_q.weight", "scale_shift_table"]) is None  # a checkpoint, not a LoRA
    assert L.detect_format([]) is None


def test_a_file_of_no_known_format_is_one_line(tmp_path):
    save_file({"model.layers.0.q_proj.weight": torch.zeros(2, 2)}, tmp_path / "llm.safetensors")
    model = tiny()
    with pytest.raises(ModelError) as refused:
        L.apply_loras(model, [str(tmp_path / "llm.safetensors")], "tiny")
    message = str(refused.value)
    assert "\n" not in message and "llm.safetensors" in message and "not a LoRA format" in message
    assert "model.layers.0.q_proj.weight" in message and "lora_unet_" in message and "diffusion_model." in message
    assert not hasattr(model, "peft_config")


def test_a_peft_lora_without_its_config_is_refused(tmp_path):
    """Its alpha lives in adapter_config.json: without it, loading at alpha = rank would be a guess."""
    path = tmp_path / "adapter_model.safetensors"
    save_tiny_lora(path, "peft")
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(ModelError) as refused:
        L.apply_loras(tiny(), [str(path)], "tiny")
    assert "\n" not in str(refused.value) and "needs its adapter_config.json" in str(refused.value)


@pytest.mark.parametrize("fmt", ["comfyui", "musubi", "diffusers"])
def test_an_i2v_lora_on_a_df_model_is_refused_whole(fmt, tmp_path):
    base = tiny("df")
    path = tmp_path / f"i2v-{fmt}.safetensors"
    save_tiny_lora(path, fmt, "i2v")  # fits the DF model except for its image layers
    model = copy.deepcopy(base)
    with pytest.raises(ModelError) as refused:
        L.apply_loras(model, [str(path)], "df-1.3b-540p")
    message = str(refused.value)
    assert "\n" not in message and path.name in message and "df-1.3b-540p" in message
    assert "image-to-video LoRA" in message and "add_" in message and "nothing was applied" in message
    # k_img and v_img of both blocks: lora_down/up (diffusers: lora_A/B and lora_B.bias), ComfyUI's diff_b and
    # norm_k_img.diff too.
    assert f" {dict(comfyui=4 * 2 + 4 + 2, musubi=4 * 2, diffusers=4 * 3)[fmt]} of its " in message
    assert not hasattr(model, "peft_config") and L.ORIGINALS not in model.__dict__
    assert gap(dict(model.state_dict()), dict(base.state_dict())) == 0


def test_keys_of_layers_the_model_lacks_are_counted_and_named(tmp_path):
    """Not an image layer: a block this model does not have, a layer no converter knows, a text-encoder key."""
    path = tmp_path / "odd.safetensors"
    save_tiny_lora(path, "comfyui")
    from safetensors.torch import load_file

    state = load_file(path)
    state["diffusion_model.blocks.7.self_attn.q.lora_down.weight"] = torch.randn(4, 24)
    state["diffusion_model.blocks.7.self_attn.q.lora_up.weight"] = torch.randn(24, 4)
    state["diffusion_model.blocks.0.self_attn.norm_q.lora_down.weight"] = torch.randn(4, 24)
    state["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(4, 8)
    save_file(state, path)
    model = tiny()
    with pytest.raises(ModelError) as refused:
        L.apply_loras(model, [str(path)], "tiny")
    message = str(refused.value)
    assert "\n" not in message and f" 4 of its {len(state) - 20} tensors " in message  # its 20 alphas folded in
    assert "(e.g. lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight)" in message
    assert "made for this model's family and size" in message and "image-to-video" not in message
    assert not hasattr(model, "peft_config")


def test_a_norm_delta_of_the_wrong_size_is_named(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_tiny_lora(path, "comfyui")
    from safetensors.torch import load_file

    state = load_file(path)
    state["diffusion_model.blocks.1.norm3.diff"] = torch.zeros(48)  # a norm of a wider model
    save_file(state, path)
    with pytest.raises(ModelError, match=r"blocks\.1\.norm3\.diff \(a change of 48 for blocks\.1\.norm2\.weight of 24\)"):
        L.apply_loras(tiny(), [str(path)], "tiny")


def test_musubi_lora_covering_some_layers_loads(tmp_path):
    """diffusers' own musubi converter wants every layer of every block; a LoRA trained on the self-attention of
    block 1 alone loads here."""
    base = tiny()
    full = save_tiny_lora(tmp_path / "all.safetensors", "musubi")
    from safetensors.torch import load_file

    part = {k: v for k, v in load_file(tmp_path / "all.safetensors").items() if "blocks_1_self_attn" in k}
    assert len(part) == 12
    save_file(part, tmp_path / "part.safetensors")
    model = copy.deepcopy(base)
    L.apply_loras(model, [f"{tmp_path / 'part.safetensors'}:{STRENGTH}"], "tiny")
    full.layers = {k: v for k, v in full.layers.items() if k.startswith("blocks.1.attn1.")}
    assert gap(effective(model), merged_by_hand(base, full)) < 1e-5


@pytest.mark.slow
def test_cli_generates_with_a_comfyui_lora_as_merged_by_hand(hub_models, tmp_path):
    """Through the real load and generate: the CLI takes the file at a strength and records it; the library's
    frames with it equal those of the same model with the change merged into its weights by hand."""
    path = tmp_path / "kijai.safetensors"
    lora = save_tiny_lora(path, "comfyui")
    request = sk.Request(prompt="a red fox running", height=64, width=64, frames=17, steps=2, seed=3)
    adapted = sk.load(ALIASES["df"], device="cpu", progress=False, loras=[f"{path}:{STRENGTH}"])
    frames = np.concatenate([w.frames for w in adapted.stream(request)])
    adapted.remove_loras()  # the model's own weights back; then the same change merged into them by hand
    transformer = adapted.components["transformer"]
    transformer.load_state_dict(merged_by_hand(copy.deepcopy(transformer), lora))
    by_hand = np.concatenate([w.frames for w in adapted.stream(request)])
    assert frames.std() > 1 and np.abs(frames.astype(int) - by_hand.astype(int)).max() <= 1

    out = tmp_path / "fox.mp4"
    args = ["extend", "a red fox running", "-m", ALIASES["df"], "--height", "64", "--width", "64", "--frames", "17",
            "--steps", "2", "--seed", "3", "--device", "cpu", "-q"]
    done = CliRunner().invoke(app, [*args, "--lora", f"{path}:{STRENGTH}", "-o", str(out)])
    assert done.exit_code == 0, done.output
    [record] = json.loads((tmp_path / "fox.mp4.json").read_text())["model"]["loras"]
    assert record["path"] == str(path.resolve()) and record["scale"] == STRENGTH
    image = tmp_path / "i2v.safetensors"
    save_tiny_lora(image, "comfyui", "i2v")
    refused = CliRunner().invoke(app, [*args, "--lora", str(image), "-o", str(tmp_path / "no.mp4")])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "image-to-video LoRA" in refused.output and not (tmp_path / "no.mp4").exists()


def test_two_loras_add_up_and_an_error_undoes_both(tmp_path, monkeypatch):
    """Deltas of two LoRAs on the same weights add up (one LoRA of `.diff`/`.diff_b` keys alone); unloading, or an
    error while loading, puts every weight back exactly."""
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin as Loader
    from safetensors.torch import load_file

    base = tiny()
    first = save_tiny_lora(tmp_path / "a.safetensors", "comfyui", seed=1)
    second = save_tiny_lora(tmp_path / "b.safetensors", "comfyui", seed=2)
    save_file({k: v for k, v in load_file(tmp_path / "b.safetensors").items() if ".diff" in k},
              tmp_path / "b.safetensors")
    second.layers = {}
    loras = [f"{tmp_path / 'a.safetensors'}:{STRENGTH}", f"{tmp_path / 'b.safetensors'}:0.5"]
    model = copy.deepcopy(base)
    L.apply_loras(model, loras, "tiny")
    both = merged_by_hand(with_weights(base, merged_by_hand(base, first)), second, 0.5)
    weights = effective(model)
    assert gap(weights, both) < 1e-5 and gap(weights, merged_by_hand(base, first)) > 1e-3
    L.remove_loras(model)
    assert gap(dict(model.state_dict()), dict(base.state_dict())) == 0

    def fails(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(Loader, "load_lora_into_transformer", fails)
    with pytest.raises(RuntimeError, match="disk gone"):  # after the first LoRA's deltas went on
        L.apply_loras(model, loras, "tiny")
    assert L.ORIGINALS not in model.__dict__ and gap(dict(model.state_dict()), dict(base.state_dict())) == 0
