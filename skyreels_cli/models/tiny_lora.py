"""Small LoRA files for the tiny models, in each layout LoRAs are published in.

`save_tiny_lora(path, fmt)` writes random low-rank layers (alpha != rank), bias deltas and norm deltas for the
tiny transformer of a kind (models/tiny.py) as ComfyUI/Kijai, musubi-tuner, diffusers or PEFT write them, and
returns what it wrote under diffusers' names (`TinyLora`), so a test can merge the same change into the weights
by hand and compare. The Wan names are written from this module's own table, not diffusers' converters: the
files are an independent check of how those are read (models/lora.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .tiny import TINY, _transformer

FORMATS = ("comfyui", "musubi", "diffusers", "peft")
# diffusers' name -> the original Wan module name, for what a tiny LoRA changes (applied in order).
WAN_NAMES = (
    (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."), (r"\.to_q$", ".q"), (r"\.to_k$", ".k"),
    (r"\.to_v$", ".v"), (r"\.to_out\.0$", ".o"), (r"\.add_k_proj$", ".k_img"), (r"\.add_v_proj$", ".v_img"),
    (r"\.norm_added_k$", ".norm_k_img"), (r"\.ffn\.net\.0\.proj$", ".ffn.0"), (r"\.ffn\.net\.2$", ".ffn.2"),
    (r"\.norm2$", ".norm3"), (r"\.scale_shift_table$", ".modulation"),
)
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class TinyLora:
    """What a tiny LoRA file holds, under diffusers' names: the change it makes at strength s is
    weight += s * alpha/rank * up @ down for each of `layers`, bias += s * `biases[layer]`, and
    parameter += s * `deltas[parameter]` (norm weights and biases, the blocks' modulation)."""

    rank: int
    alpha: float
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (down, up)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)


def wan_name(name: str) -> str:
    """A diffusers layer or parameter name (`blocks.0.attn1.to_q`) as the original Wan code names it
    (`blocks.0.self_attn.q`)."""
    for pattern, replacement in WAN_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


def tiny_lora(kind: str = "df", *, rank: int = 4, alpha: float = 2.0, seed: int = 0, biases: bool = True,
              deltas: bool = True) -> TinyLora:
    """Random LoRA weights for every attention and feed-forward projection of the tiny `kind` transformer (an
    I2V one's image projections too), with bias deltas and norm/modulation deltas when asked."""
    model = _transformer(kind, TINY)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    lora = TinyLora(rank, alpha)
    for b in range(TINY["layers"]):
        wanted = [f"attn{a}.{p}" for a in (1, 2) for p in PROJECTIONS] + ["ffn.net.0.proj", "ffn.net.2"]
        wanted += ["attn2.add_k_proj", "attn2.add_v_proj"] if kind == "i2v" else []
        for layer in (f"blocks.{b}.{w}" for w in wanted):
            out_features, in_features = shapes[f"{layer}.weight"]
            lora.layers[layer] = (torch.randn(rank, in_features, generator=g) * 0.3,
                                  torch.randn(out_features, rank, generator=g) * 0.3)
            if biases:
                lora.biases[layer] = torch.randn(out_features, generator=g) * 0.1
        if deltas:
            norms = ["norm2.weight", "norm2.bias", "attn1.norm_q.weight", "attn1.norm_k.weight",
                     "attn2.norm_k.weight", "scale_shift_table"]
            norms += ["attn2.norm_added_k.weight"] if kind == "i2v" else []
            for name in (f"blocks.{b}.{n}" for n in norms):
                lora.deltas[name] = torch.randn(shapes[name], generator=g) * 0.1
    return lora


def save_tiny_lora(path: str | Path, fmt: str, kind: str = "df", **options) -> TinyLora:
    """Write a `tiny_lora(kind, **options)` to `path` in layout `fmt` (one of FORMATS) and return it.

    musubi-tuner writes only low-rank layers (no bias or norm deltas), diffusers and PEFT no norm deltas: those
    are left out of the file and of what is returned. PEFT's own layout also writes adapter_config.json beside
    the file."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, not {fmt!r}")
    from safetensors.torch import save_file

    if fmt == "musubi":
        options.update(biases=False, deltas=False)
    elif fmt in ("diffusers", "peft"):
        options.update(deltas=False)
    lora = tiny_lora(kind, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("comfyui", "musubi"):
        save_file(_wan_state(lora, fmt), path)
    else:
        # PEFT scales lora_B's bias by alpha/rank with the rest of the layer: stored divided, the change is the same.
        state = {}
        for layer, (down, up) in lora.layers.items():
            state[f"{layer}.lora_A.weight"], state[f"{layer}.lora_B.weight"] = down, up
            if layer in lora.biases:
                state[f"{layer}.lora_B.bias"] = lora.biases[layer] * (lora.rank / lora.alpha)
        config = {"r": lora.rank, "lora_alpha": lora.alpha, "lora_bias": bool(lora.biases),
                  "target_modules": sorted({layer.split(".", 2)[2] for layer in lora.layers})}
        if fmt == "diffusers":
            from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin

            SkyReelsV2LoraLoaderMixin.save_lora_weights(path.parent, transformer_lora_layers=state,
                                                        weight_name=path.name,
                                                        transformer_lora_adapter_metadata=config)
        else:
            save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()}, path)
            (path.parent / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return lora


def _wan_state(lora: TinyLora, fmt: str) -> dict[str, torch.Tensor]:
    """ComfyUI/Kijai keys (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`, `.diff_b`, norm
    `.diff`) or musubi's (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.alpha`)."""
    def key(module: str, part: str) -> str:
        name = wan_name(module)
        return f"lora_unet_{name.replace('.', '_')}.{part}" if fmt == "musubi" else f"diffusion_model.{name}.{part}"

    state = {}
    for layer, (down, up) in lora.layers.items():
        state[key(layer, "lora_down.weight")], state[key(layer, "lora_up.weight")] = down, up
        state[key(layer, "alpha")] = torch.tensor(lora.alpha)
        if layer in lora.biases:
            state[key(layer, "diff_b")] = lora.biases[layer]
    for name, delta in lora.deltas.items():
        layer, _, tensor = name.rpartition(".")
        if tensor in ("weight", "bias"):
            state[key(layer, "diff" if tensor == "weight" else "diff_b")] = delta
        else:  # a bare parameter (the modulation): its own name, .diff
            state[key(name, "diff")] = delta
    return state
