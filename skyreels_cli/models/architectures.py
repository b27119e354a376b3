"""The full-size architectures of the released checkpoints, as data (CI has no network to read their configs).

One table for every component a checkpoint holds: the transformer by kind and size (the released configs),
UMT5-XXL's encoder, CLIP ViT-H/14's vision tower (I2V only) and the Wan VAE (diffusers'
`AutoencoderKLWan()` defaults). The planner builds these on fake tensors to trace memory; the
`config()` methods give the keyword arguments of the diffusers / transformers classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import ModelError

TEXT_TOKENS = 512  # UMT5-XXL's prompt length in every SkyReels-V2 pipeline (a longer prompt is cut)
ROPE_POSITIONS = 1024  # rotary positions per axis of every released transformer (rope_max_seq_len)


@dataclass(frozen=True)
class TransformerArch:
    """A `SkyReelsV2Transformer3DModel` configuration (the fields that differ between checkpoints)."""

    heads: int
    layers: int
    ffn: int
    head_dim: int = 128
    text_dim: int = 4096
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    image_dim: int | None = None  # CLIP tokens through extra key/value projections (I2V)
    inject_sample_info: bool = False  # the fps embedding (DF-1.3B)

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def from_config(cls, config: dict) -> TransformerArch:
        """The architecture a checkpoint's transformer/config.json describes."""
        return cls(heads=config["num_attention_heads"], layers=config["num_layers"], ffn=config["ffn_dim"],
                   head_dim=config["attention_head_dim"], text_dim=config["text_dim"], freq_dim=config["freq_dim"],
                   in_channels=config["in_channels"], out_channels=config["out_channels"],
                   image_dim=config.get("image_dim"), inject_sample_info=bool(config.get("inject_sample_info")))

    def config(self) -> dict:
        return {
            "patch_size": (1, 2, 2), "num_attention_heads": self.heads, "attention_head_dim": self.head_dim,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "text_dim": self.text_dim,
            "freq_dim": self.freq_dim, "ffn_dim": self.ffn, "num_layers": self.layers, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": ROPE_POSITIONS, "image_dim": self.image_dim,
            "added_kv_proj_dim": self.dim if self.image_dim else None, "inject_sample_info": self.inject_sample_info,
        }


@dataclass(frozen=True)
class TextEncoderArch:
    """UMT5's encoder (`UMT5EncoderModel`), fed `tokens` tokens per prompt."""

    d_model: int = 4096
    layers: int = 24
    heads: int = 64
    d_kv: int = 64
    d_ff: int = 10240
    vocab: int = 256384
    tokens: int = TEXT_TOKENS

    def config(self) -> dict:
        return {"vocab_size": self.vocab, "d_model": self.d_model, "d_kv": self.d_kv, "d_ff": self.d_ff,
                "num_layers": self.layers, "num_heads": self.heads, "feed_forward_proj": "gated-gelu"}


@dataclass(frozen=True)
class ImageEncoderArch:
    """CLIP's vision tower (`CLIPVisionModelWithProjection`), ViT-H/14 at 224 pixels."""

    hidden: int = 1280
    layers: int = 32
    heads: int = 16
    intermediate: int = 5120
    projection: int = 1024
    image: int = 224
    patch: int = 14

    def config(self) -> dict:
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "intermediate_size": self.intermediate, "projection_dim": self.projection, "image_size": self.image,
                "patch_size": self.patch, "hidden_act": "gelu"}


@dataclass(frozen=True)
class VaeArch:
    """`AutoencoderKLWan` keyword arguments; empty = diffusers' defaults (base_dim 96, z_dim 16), the released VAE."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2

    def config(self) -> dict:
        return {"base_dim": self.base_dim, "z_dim": self.z_dim, "dim_mult": list(self.dim_mult),
                "num_res_blocks": self.num_res_blocks}


@dataclass(frozen=True)
class Architecture:
    """Every component of one checkpoint."""

    name: str
    transformer: TransformerArch
    text_encoder: TextEncoderArch = TextEncoderArch()
    vae: VaeArch = VaeArch()
    image_encoder: ImageEncoderArch | None = None

    def key(self) -> dict:
        """Plain data naming this architecture (for caches)."""
        return asdict(self)


T_1_3B = TransformerArch(heads=12, layers=30, ffn=8960)
T_14B = TransformerArch(heads=40, layers=40, ffn=13824)
CLIP_H14 = ImageEncoderArch()
_I2V = {"in_channels": 36, "image_dim": 1280}

# By (kind, size) as weights.toml names them. FLF2V runs through the diffusion forcing engine with a
# 16-channel DF transformer (diffusers' DF image-to-video pipeline has no image encoder).
ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("df", "1.3B"): Architecture("DF-1.3B", replace(T_1_3B, inject_sample_info=True)),
    ("df", "14B"): Architecture("DF-14B", T_14B),
    ("t2v", "1.3B"): Architecture("T2V-1.3B", T_1_3B),
    ("t2v", "14B"): Architecture("T2V-14B", T_14B),
    ("i2v", "1.3B"): Architecture("I2V-1.3B", replace(T_1_3B, **_I2V), image_encoder=CLIP_H14),
    ("i2v", "14B"): Architecture("I2V-14B", replace(T_14B, **_I2V), image_encoder=CLIP_H14),
    ("flf2v", "1.3B"): Architecture("FLF2V-1.3B", T_1_3B),
}


def architecture(kind: str, size: str) -> Architecture:
    """The architecture of a released checkpoint; ModelError for one this table does not hold."""
    arch = ARCHITECTURES.get((kind, size))
    if arch is None:
        known = ", ".join(f"{k}-{s}" for k, s in ARCHITECTURES)
        raise ModelError(f"no architecture is known for a {kind} checkpoint of size {size!r}; known: {known}")
    return arch
