"""Random checkpoints in the released Diffusers layout.

`tiny` ones make noise, not film, but exercise every code path (Hub layout,
loading, generation, writing) on a CPU in seconds. The `tiny` model aliases and
the test suite build them with the same function, so what users try is what we
test. `1.3b` ones are the released 1.3B architectures, every number read from
models/architectures.py: the kind's transformer (DF with its fps embedding, I2V
with its image projections), the real Wan VAE, CLIP ViT-H/14's whole vision tower
(I2V), and UMT5-XXL's encoder at its full width (4096) but `FULL_SIZE_TEXT_LAYERS`
layers deep and with the tiny vocabulary (the released 256k-token embedding alone
would be 4 GB). A GPU check of speed and memory with no download, and the
full-size oracle of the tests (tests/test_full_size_oracle.py).

    python -m skyreels_cli.models.tiny 1.3b df /tmp/df-1.3b-random
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .architectures import ARCHITECTURES, ROPE_POSITIONS, TEXT_TOKENS
from .kinds import KINDS

# The sizes of the tiny architecture; "1.3b" takes the released table's (models/architectures.py, `_full_size`).
TINY = dict(heads=2, head_dim=12, layers=2, ffn=32, freq=32, text_dim=32, text_ff=64, text_heads=4, text_kv=8,
            clip_dim=8, clip_image=16, clip_patch=4, vae=dict(base_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1))
ARCHS = ("tiny", "1.3b")
# UMT5-XXL has 24 encoder layers; one keeps its width (what the transformer reads) at 1/24 of the cost.
FULL_SIZE_TEXT_LAYERS = 1
VOCAB = ["<pad>", "</s>", "<unk>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
    "a", "the", "cat", "dog", "fox", "red", "running", "through", "snow", "blurry", "noise",
]
TINY_KINDS = ("t2v", "i2v", "df")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(VOCAB))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=TEXT_TOKENS
    )


def _text_encoder(vocab_size: int, a: dict):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=a["text_dim"], d_kv=a["text_kv"], d_ff=a["text_ff"], num_layers=2,
        num_heads=a["text_heads"], relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )
    return UMT5EncoderModel(config).eval()


def _vae(a: dict):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**{"z_dim": 16, "temperal_downsample": [False, True, True], **a["vae"]}).eval()


def _transformer(kind: str, a: dict):
    from diffusers import SkyReelsV2Transformer3DModel

    i2v = kind == "i2v"
    inner = a["heads"] * a["head_dim"]
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=a["heads"], attention_head_dim=a["head_dim"],
        in_channels=36 if i2v else 16, out_channels=16, text_dim=a["text_dim"], freq_dim=a["freq"],
        ffn_dim=a["ffn"], num_layers=a["layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=ROPE_POSITIONS, image_dim=a["clip_dim"] if i2v else None, added_kv_proj_dim=inner if i2v else None,
        inject_sample_info=kind == "df",
    ).eval()


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0, num_train_timesteps=1000
    )


def _make_responsive(components: dict) -> None:
    """Amplify the paths by which prompts and images steer a tiny random model.

    With plain random weights a different prompt or end image moves the frames by about one
    level, so a test that fed the wrong one would still pass. Padded text tokens are zeros, so
    the text projection without its first bias leaves them constant while real tokens grow;
    stronger, sharper self-attention lets start and end frames reach the others; a stronger
    VAE encoder mean makes different images give different latents. Each input then moves the
    frames by several levels on average (tests/test_api.py shows it).
    """
    import torch

    with torch.no_grad():
        text = components["transformer"].condition_embedder.text_embedder
        text.linear_1.bias.zero_()
        text.linear_2.weight.mul_(10)
        for block in components["transformer"].blocks:
            block.attn2.to_out[0].weight.mul_(4)
            block.attn1.to_out[0].weight.mul_(8)
            block.attn1.norm_q.weight.mul_(4)
        quant = components["vae"].quant_conv
        z_dim = quant.out_channels // 2  # mean, then log-variance
        quant.weight[:z_dim].mul_(20)
        quant.bias[:z_dim].mul_(20)


def build_components(kind: str, seed: int = 0, arch: str = "tiny") -> dict:
    """Random components for one checkpoint kind (t2v, i2v or df), reproducible from `seed`."""
    import torch

    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; expected one of {TINY_KINDS}")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    torch.manual_seed(seed)
    if arch != "tiny":
        return _full_size(kind)
    a = TINY
    tokenizer = _tokenizer()
    components = {
        "tokenizer": tokenizer,
        "text_encoder": _text_encoder(len(tokenizer), a),
        "vae": _vae(a),
        "transformer": _transformer(kind, a),
        "scheduler": _scheduler(),
    }
    if kind == "i2v":
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        components["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=a["clip_dim"], projection_dim=a["clip_dim"], num_hidden_layers=2, num_attention_heads=2,
            image_size=a["clip_image"], intermediate_size=2 * a["clip_dim"], patch_size=a["clip_patch"],
        )).eval()
        size = a["clip_image"]
        components["image_processor"] = CLIPImageProcessor(crop_size=size, size=size)
    _make_responsive(components)
    return components


def _full_size(kind: str) -> dict:
    """The released 1.3B architecture of `kind`, random, every size from the one table of them; the text
    encoder keeps UMT5-XXL's widths but only `FULL_SIZE_TEXT_LAYERS` layers and the tiny vocabulary."""
    from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    arch = ARCHITECTURES[(kind, "1.3B")]
    tokenizer = _tokenizer()
    text = {**arch.text_encoder.config(), "vocab_size": len(tokenizer), "num_layers": FULL_SIZE_TEXT_LAYERS}
    components = {
        "tokenizer": tokenizer,
        "text_encoder": UMT5EncoderModel(UMT5Config(**text)).eval(),
        "vae": AutoencoderKLWan(**arch.vae.config()).eval(),
        "transformer": SkyReelsV2Transformer3DModel(**arch.transformer.config()).eval(),
        "scheduler": _scheduler(),
    }
    if arch.image_encoder is not None:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        clip = arch.image_encoder
        components["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip.config())).eval()
        components["image_processor"] = CLIPImageProcessor(crop_size=clip.image, size={"shortest_edge": clip.image})
    return components


def save_checkpoint(kind: str, dest: Path, seed: int = 0, arch: str = "tiny") -> Path:
    """Write a random checkpoint of `kind` to `dest` in the Diffusers layout, atomically."""
    import diffusers

    dest = Path(dest)
    pipe_cls = getattr(diffusers, KINDS[kind].pipeline)
    components = build_components(kind, seed, arch)
    if arch != "tiny":  # stored as released: bf16 but for the VAE (half the disk; loads upcast them exactly)
        import torch

        for name in ("transformer", "text_encoder", "image_encoder"):
            if name in components:
                components[name].to(torch.bfloat16)
    pipe = pipe_cls(**components)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if arch == "tiny":  # marks a folder whose registry defaults are the tiny ones
            (tmp / "tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# The layers the tiny accelerator adapts in every block (the self- and cross-attention projections and the
# feed-forward), as diffusers names them: the layers the distillation LoRAs adapt.
LORA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
               "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
LORA_RANK = 4


def tiny_lora(kind: str, seed: int = 1) -> dict:
    """A random LoRA for the tiny transformer of `kind` ("t2v" fits T2V and DF, "i2v" the I2V one) in the
    diffusers/PEFT key format; strong enough that it clearly changes the frames."""
    import torch

    with torch.random.fork_rng(devices=[]):  # building it to read its shapes leaves the global RNG as it was
        transformer = _transformer("i2v" if kind == "i2v" else "t2v", TINY)
    modules = dict(transformer.named_modules())
    gen = torch.Generator().manual_seed(seed + (kind == "i2v"))
    state = {}
    for b in range(TINY["layers"]):
        for layer in LORA_LAYERS:
            weight = modules[f"blocks.{b}.{layer}"].weight
            out_features, in_features = weight.shape
            key = f"transformer.blocks.{b}.{layer}"
            state[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, in_features, generator=gen) / in_features ** 0.5
            state[f"{key}.lora_B.weight"] = torch.randn(out_features, LORA_RANK, generator=gen) * 0.5
    return state


def save_tiny_lora(kind: str, dest: Path) -> Path:
    """Write the tiny accelerator's LoRA for `kind` to `dest` (.safetensors), atomically."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        save_file(tiny_lora(kind), tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 4 or sys.argv[1] not in ARCHS or sys.argv[2] not in TINY_KINDS:
        sys.exit(f"usage: python -m skyreels_cli.models.tiny {{{'|'.join(ARCHS)}}} {{{'|'.join(TINY_KINDS)}}} DEST")
    print(save_checkpoint(sys.argv[2], Path(sys.argv[3]), arch=sys.argv[1]))
