"""How much work a run is, known before anything loads: transformer FLOPs from the checkpoint's config.

Per forward pass, with N video tokens, model width d, feed-forward width f and L layers, linear layers
cost N(12d² + 4df)L, self-attention 4N²dL and cross-attention to the text tokens 4N·T·dL (FLOP = 2 MAC;
T = 512, `TEXT_TOKENS`). A step with guidance is two passes.
"""

from __future__ import annotations

import json

from ..forcing.frames import latent_frames
from ..forcing.schedule import step_matrix
from ..forcing.windows import window_counts
from ..models.architectures import TEXT_TOKENS, TransformerArch
from ..models.hub import cached_snapshot
from ..models.registry import ModelSpec
from .request import Request
from .resolve import generated_frames, window_plan

# Sustained dense throughput assumed when nothing is measured: an H100 in bf16 at a realistic
# share of its peak, and a few CPU cores.
FLOPS_PER_SECOND = {"cuda": 400e12, "cpu": 100e9}


def forward_flops(arch: TransformerArch, tokens: int) -> float:
    d, f, n = arch.dim, arch.ffn, tokens
    return arch.layers * (n * (12 * d * d + 4 * d * f) + 4 * n * n * d + 4 * n * TEXT_TOKENS * d)


def run_flops(arch: TransformerArch, request: Request, spec: ModelSpec) -> float:
    """Transformer FLOPs of the whole run (every window, every step, both guidance passes)."""
    per_frame = (request.height // 16) * (request.width // 16)
    passes = 2 if request.guidance > 1 else 1
    if not spec.forcing:
        return request.steps * passes * forward_flops(arch, per_frame * latent_frames(generated_frames(request, spec)))
    total = 0.0
    for window, times in window_counts(window_plan(request)):
        rows = step_matrix(window.blocks, request.steps, request.ar_step, window.ready_blocks)[0].shape[0]
        total += times * rows * passes * forward_flops(arch, per_frame * (window.length + window.end_image))
    return total


def format_flops(flops: float) -> str:
    """`3.4 PFLOP`, `610 TFLOP`: the largest unit that keeps the number at 1 or more."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOP"


def estimated_seconds(flops: float, device_type: str) -> float:
    return flops / FLOPS_PER_SECOND[device_type]


def estimate(spec: ModelSpec, request: Request, device_type: str) -> tuple[float, float] | None:
    """(transformer FLOPs, rough seconds on `device_type`) of a resolved request, when the checkpoint's config
    is already on this machine; None otherwise."""
    folder = cached_snapshot(spec)
    config = None if folder is None else folder / "transformer" / "config.json"
    if config is None or not config.is_file():
        return None
    flops = run_flops(TransformerArch.from_config(json.loads(config.read_text())), request, spec)
    return flops, estimated_seconds(flops, device_type)
