"""Tiny random checkpoints in the released Diffusers layout.

They make noise, not film, but exercise every code path (Hub layout, loading,
generation, writing) on a CPU in seconds. The `tiny` model aliases and the test
suite build them with the same function, so what users try is what we test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TEXT_DIM = 32
VOCAB = ["<pad>", "</s>", "<unk>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
    "a", "the", "cat", "dog", "fox", "red", "running", "through", "snow", "blurry", "noise",
]
KINDS = ("t2v", "i2v", "df")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(VOCAB))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )
    return UMT5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _transformer(kind: str):
    from diffusers import SkyReelsV2Transformer3DModel

    i2v = kind == "i2v"
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=36 if i2v else 16, out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        image_dim=8 if i2v else None, added_kv_proj_dim=24 if i2v else None,
        inject_sample_info=kind == "df",
    ).eval()


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0, num_train_timesteps=1000
    )


def build_components(kind: str, seed: int = 0) -> dict:
    """Random components for one checkpoint kind (t2v, i2v or df), reproducible from `seed`."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; expected one of {KINDS}")
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    components = {
        "tokenizer": tokenizer,
        "text_encoder": _text_encoder(len(tokenizer)),
        "vae": _vae(),
        "transformer": _transformer(kind),
        "scheduler": _scheduler(),
    }
    if kind == "i2v":
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        components["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2,
            image_size=16, intermediate_size=16, patch_size=4,
        )).eval()
        components["image_processor"] = CLIPImageProcessor(crop_size=16, size=16)
    return components


PIPELINE_CLASS = {
    "t2v": "SkyReelsV2Pipeline",
    "i2v": "SkyReelsV2ImageToVideoPipeline",
    "df": "SkyReelsV2DiffusionForcingPipeline",
}


def save_checkpoint(kind: str, dest: Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint of `kind` to `dest` in the Diffusers layout, atomically."""
    import diffusers

    dest = Path(dest)
    pipe_cls = getattr(diffusers, PIPELINE_CLASS[kind])
    pipe = pipe_cls(**build_components(kind, seed))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def place_in_hub_cache(src: Path, repo_id: str, hub_cache: Path, commit: str = "0" * 40) -> Path:
    """Lay out `src` as the Hub cache does for `repo_id` (refs/main + snapshots/<commit>)."""
    repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(src, snapshot, ignore=shutil.ignore_patterns("tiny.json"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot
