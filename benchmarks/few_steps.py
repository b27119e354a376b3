"""Few steps: transformer forward passes and FLOPs per window, default settings against each accelerator.

For DF-1.3B-540P, DF-14B-540P and T2V-14B-540P at their native size (544x960, one 97-frame window: 25 latent
frames): one full-size forward of the released transformer is built and run on fake tensors (no weights, no
data; as runtime/trace.py traces memory) under `FlopCounterMode`, with attention on the math path so that its
matmuls are counted. A window's passes are its step-matrix rows times the guidance passes (2 with guidance > 1,
1 at guidance 1), from the resolved request of each setting (core/resolve.py: the accelerator's steps, noise
levels and guidance as defaults). Predicted seconds per window are the FLOPs at the compute floor of
REFERENCE §6 (800 TFLOP/s, the bf16 matrix rate measured on an H100): a floor, not a measurement. The peak is the
planner's (runtime/plan.py) for the fastest plan that fits an 80 GB card, at the run's shape (no batch-2 plan
without guidance). Runs on a CPU in a few minutes.

    python benchmarks/few_steps.py            # markdown table on stdout
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from skyreels_cli.core.request import Request
from skyreels_cli.core.resolve import resolve, run_shape, window_plan
from skyreels_cli.forcing.schedule import step_matrix
from skyreels_cli.models.accelerators import accelerate, lora_for
from skyreels_cli.models.architectures import TEXT_TOKENS, architecture
from skyreels_cli.models.registry import load_registry
from skyreels_cli.runtime.plan import judge, predict
from skyreels_cli.runtime.trace import CLIP_TOKENS, default_dtype

MODELS = ("df-1.3b-540p", "df-14b-540p", "t2v-14b-540p")
FLOOR = 800e12  # FLOP/s: bf16 matrix rate measured on an H100 (REFERENCE §6)
CARD_GB = 80.0
_forward: dict = {}


def forward_flops(spec) -> int:
    """FLOPs of one full-size transformer forward at the native window (fake tensors, counted)."""
    from diffusers import SkyReelsV2Transformer3DModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel

    key = (spec.kind, spec.size)
    if key in _forward:
        return _forward[key]
    arch = architecture(spec.kind, spec.size).transformer
    latents = (spec.base_frames - 1) // 4 + 1
    with FakeTensorMode(), default_dtype(torch.bfloat16):
        model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
        x = torch.empty(1, arch.in_channels, latents, spec.height // 8, spec.width // 8)
        forcing = spec.forcing
        t = torch.zeros((1, latents) if forcing else (1,), dtype=torch.long)
        kwargs = dict(hidden_states=x, timestep=t, encoder_hidden_states=torch.empty(1, TEXT_TOKENS, arch.text_dim),
                      enable_diffusion_forcing=forcing, return_dict=False)
        if arch.image_dim:
            kwargs["encoder_hidden_states_image"] = torch.empty(1, CLIP_TOKENS, arch.image_dim)
        if arch.inject_sample_info:
            kwargs["fps"] = [0]
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(**kwargs)
    _forward[key] = counter.get_total_flops()
    return _forward[key]


def window_passes(spec, request: Request) -> tuple[int, int]:
    """(step-matrix rows of the first window, transformer passes per row) of a resolved request."""
    if spec.forcing:
        window = window_plan(request).windows[0]
        rows = step_matrix(window.blocks, request.steps, request.ar_step, window.ready_blocks)[0].shape[0]
    else:
        rows = request.steps
    return rows, 2 if request.guidance > 1 else 1


def peak_gb(spec, request: Request) -> str:
    judged = judge(predict(spec, run_shape(spec, request), vram_gb=CARD_GB), CARD_GB)
    chosen = [p for p in judged if p.chosen]
    if not chosen:
        return "no plan fits"
    p = chosen[0]
    return f"{p.peak_gb:.1f} (offload {p.plan.offload}, quantize {p.plan.quantize}, cfg {p.plan.cfg})"


def rows_for(alias: str) -> list[str]:
    base = load_registry().models[alias]
    lines, default_flops = [], None
    for name in (None, *load_registry().accelerators):
        if name == "tiny":
            continue
        try:
            spec, _ = accelerate(base, name)
        except Exception as err:  # noqa: BLE001  (no LoRA of this accelerator fits: say so in the table)
            lines.append(f"| {alias} | {name} | - | - | - | - | - | {str(err).split(';')[0]} |")
            continue
        request = resolve(Request(prompt="a red fox", seed=0, frames=spec.base_frames), spec)
        rows, per_row = window_passes(spec, request)
        flops = rows * per_row * forward_flops(spec)
        default_flops = default_flops or flops
        how = "default" if name is None else f"{name} ({lora_for(base, name)[1].file})"
        setting = f"{request.steps} {request.sampler}, guidance {request.guidance:g}"
        lines.append(f"| {alias} | {how} | {setting} | {rows * per_row} | {flops / 1e15:.1f} | "
                     f"{default_flops / flops:.1f}x | {flops / FLOOR:.1f} | {peak_gb(spec, request)} |")
    return lines


def main() -> None:
    started = time.perf_counter()
    print("| model | settings | steps, guidance | passes per window | PFLOP per window | fewer FLOPs | "
          "predicted s per window (H100 floor) | planner's peak GB on 80 GB |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for alias in MODELS:
        for line in rows_for(alias):
            print(line, flush=True)
    for (kind, size), flops in _forward.items():
        print(f"\none forward, {kind} {size} at 544x960x97: {flops / 1e15:.3f} PFLOP")
    print(f"\n({time.perf_counter() - started:.0f} s on this machine)")


if __name__ == "__main__":
    main()
