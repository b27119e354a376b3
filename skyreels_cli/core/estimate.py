"""How much work a run is, known before anything loads: transformer FLOPs from the checkpoint's config.

REFERENCE.md §6: per forward pass, with N video tokens, model width d, feed-forward width f and
L layers, linear layers cost N(12d² + 4df)L, self-attention 4N²dL and cross-attention to the 512
text tokens 4N·512·dL (FLOP = 2 MAC). A step with guidance is two passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..forcing.frames import latent_frames
from ..models.registry import ModelSpec
from .request import Request

TEXT_TOKENS = 512
# Sustained dense throughput assumed when nothing is measured: an H100 in bf16 at a realistic
# share of its peak, and a few CPU cores.
FLOPS_PER_SECOND = {"cuda": 400e12, "cpu": 100e9}


@dataclass(frozen=True)
class Architecture:
    dim: int
    ffn: int
    layers: int

    @classmethod
    def of(cls, folder: Path) -> Architecture:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
        return cls(config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"],
                   config["num_layers"])


def forward_flops(arch: Architecture, tokens: int) -> float:
    d, f, n = arch.dim, arch.ffn, tokens
    return arch.layers * (n * (12 * d * d + 4 * d * f) + 4 * n * n * d + 4 * n * TEXT_TOKENS * d)


def run_flops(arch: Architecture, request: Request, spec: ModelSpec) -> float:
    """Transformer FLOPs of the whole run (every window, every step, both guidance passes)."""
    from ..forcing.schedule import step_matrix
    from .resolve import generated_frames, window_plan

    per_frame = (request.height // 16) * (request.width // 16)
    passes = 2 if request.guidance > 1 else 1
    if not spec.forcing:
        return request.steps * passes * forward_flops(arch, per_frame * latent_frames(generated_frames(request, spec)))
    total = 0.0
    for window in window_plan(request).windows:
        rows = step_matrix(window.blocks, request.steps, request.ar_step, window.ready_blocks)[0].shape[0]
        total += rows * passes * forward_flops(arch, per_frame * (window.length + window.end_image))
    return total


def estimated_seconds(flops: float, device_type: str) -> float:
    return flops / FLOPS_PER_SECOND[device_type]
