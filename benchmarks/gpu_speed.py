"""Seconds per denoising step on a CUDA GPU: diffusers as shipped against skyreels, option by option.

One diffusion forcing window at the model's native size, random full-size weights (no download) and
random prompt embeddings given directly (no text encoder), so it runs on a lent machine with no network.
A step is what the engine does per row of the step matrix: the guided model evaluation (two calls, or one
of batch 2) and the solver update of every frame. Printed and written to $OUT/gpu_speed.json:

- seconds per step for diffusers as shipped (per-token modulation, two guidance calls, one UniPC copy per
  frame, its default attention) and for skyreels with each option alone and all together;
- each one's speed-up over diffusers in the same run, and its ratio to the compute floor
  (the transformer FLOPs at 800 TFLOP/s, the bf16 matrix rate measured on an H100);
- each one's peak VRAM next to the planner's prediction for the same forward (traced on fake tensors).

    python benchmarks/gpu_speed.py --model df-1.3b-540p
    python benchmarks/gpu_speed.py --model df-14b-540p --variants diffusers,all,plan --vram 24

Targets (issue 8): DF-1.3B-540P at least 1.8x faster per step than diffusers and within 1.3x of the floor;
DF-14B-540P in 24 GB (`plan`: the planner's choice for --vram, the process capped to it) at no more than
1.3x the time of the unlimited `all`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skyreels_cli.core.estimate import forward_flops
from skyreels_cli.forcing.engine import Conditioning, DiffusionForcingEngine
from skyreels_cli.forcing.schedule import make_scheduler, step_matrix, timestep_rows
from skyreels_cli.forcing.solver import make_solver
from skyreels_cli.models.architectures import architecture
from skyreels_cli.models.naming import resolve_model
from skyreels_cli.runtime.trace import default_dtype

FLOOR_FLOPS = 800e12  # bf16 dense matrix rate measured on an H100
TEXT_TOKENS = 512
# name -> the options it turns on (each alone, then all together)
VARIANTS = {
    "diffusers": {},
    "modulation": {"modulation": True},
    "batched-cfg": {"cfg": "batched"},
    "solver": {"solver": "vectorised"},
    "attention": {"attention": "auto"},
    "fp8": {"quantize": "fp8"},
    "compile": {"compile": True},
    "all": {"modulation": True, "cfg": "batched", "solver": "vectorised", "attention": "auto", "compile": True},
    "all-fp8": {"modulation": True, "cfg": "batched", "solver": "vectorised", "attention": "auto", "compile": True,
                "quantize": "fp8"},
    "plan": {"plan": True},  # the planner's choice for --vram, with the process capped to that memory
}


def transformer_arch(spec, smoke: bool):
    arch = architecture(spec.kind, spec.size).transformer
    # --smoke: the same code paths with a two-layer model on the CPU, to check this script without a GPU
    return replace(arch, heads=2, layers=2, ffn=64, head_dim=16, text_dim=4096) if smoke else arch


def build_transformer(spec, device: torch.device, smoke: bool = False):
    from diffusers import SkyReelsV2Transformer3DModel

    arch = transformer_arch(spec, smoke)
    torch.manual_seed(0)
    with device, default_dtype(torch.bfloat16):
        model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
    for name, module in model.named_modules():  # as from_pretrained keeps them
        if any(key in name.split(".") for key in model._keep_in_fp32_modules):
            module.float()
    model.scale_shift_table.data = model.scale_shift_table.data.float()
    for block in model.blocks:
        block.scale_shift_table.data = block.scale_shift_table.data.float()
    return model, arch


def apply_options(model, options: dict, device: torch.device, stack: ExitStack, spec, args) -> dict:
    from skyreels_cli.runtime.attention import apply_backend
    from skyreels_cli.runtime.compile import compile_blocks
    from skyreels_cli.runtime.memory import apply_offload_hooks, apply_quantization
    from skyreels_cli.runtime.modulation import install_per_frame_modulation

    used = dict(options)
    if options.get("plan"):
        from skyreels_cli.runtime.plan import Shape, resolve_plan

        plan, reason = resolve_plan(spec, device, Shape.window(args.height, args.width, args.frames),
                                    vram_gb=args.vram)
        used.update(plan=reason, cfg=plan.cfg, modulation=True, solver="vectorised", attention="auto")
        options = {**used, "quantize": plan.quantize, "offload": plan.offload}
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.vram * 1e9 / total), device)
    if options.get("modulation"):
        install_per_frame_modulation(model)
    if options.get("quantize", "none") != "none":
        apply_quantization(model, options["quantize"])
    if options.get("offload", "none") != "none":
        apply_offload_hooks(model, options["offload"], device)
    else:
        model.to(device)
    if options.get("attention"):
        used["attention"] = apply_backend(model, options["attention"], device)
    if options.get("compile"):
        compile_blocks(model, device)
    return used


def one_step(engine, solver, latents, t_row, update_row, cond, fps) -> None:
    timesteps = t_row.to(latents.device).unsqueeze(0)
    v = engine.velocity(latents.to(torch.bfloat16), timesteps, cond, fps)
    solver.step(v, t_row, latents, update_row)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, options: dict, spec, args, device) -> dict:
    """One variant's figures, with nothing of an earlier variant left on the device (`release`): per-frame
    modulation and diffusers' hooks bind methods to the model (reference cycles), so only the cycle
    collector frees a model, and a peak read beside a leftover one would be wrong."""
    cuda = device.type == "cuda"
    release(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = _timed(name, options, spec, args, device)
    finally:
        release(device)  # the model and its tensors die with _timed's frame, its cycles here
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return result


def release(device: torch.device) -> None:
    """Free what is only reachable through reference cycles, then hand the cached blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def _timed(name: str, options: dict, spec, args, device) -> dict:
    cuda = device.type == "cuda"
    with ExitStack() as stack:
        model, arch = build_transformer(spec, torch.device("cpu") if options.get("plan") else device, args.smoke)
        used = apply_options(model, options, device, stack, spec, args)
        cfg = used.get("cfg", "separate")
        engine = DiffusionForcingEngine(model, None, None, device, cfg=cfg)
        frames = (args.frames - 1) // 4 + 1
        h, w = args.height // 8, args.width // 8
        g = torch.Generator(device).manual_seed(0)
        latents = torch.randn(1, 16, frames, h, w, device=device, generator=g)
        embeds = torch.randn(1, TEXT_TOKENS, 4096, device=device, dtype=torch.bfloat16, generator=g)
        cond = Conditioning(embeds, torch.randn_like(embeds), 6.0)
        scheduler = make_scheduler(_scheduler_config(), 8.0, "official")
        solver = make_solver(scheduler, args.steps_in_schedule, frames, device, used.get("solver", "per-frame"))
        index, update = step_matrix((frames,), args.steps_in_schedule, 0, 0)
        rows = timestep_rows(index, solver.timesteps)
        warmup = 2 if used.get("compile") else 1
        for row in range(warmup):
            one_step(engine, solver, latents, rows[row], update[row], cond, 24)
        _sync(device)
        started = time.perf_counter()
        for row in range(warmup, warmup + args.steps):
            one_step(engine, solver, latents, rows[row], update[row], cond, 24)
        _sync(device)
        seconds = (time.perf_counter() - started) / args.steps
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else 0.0
    tokens = frames * (h // 2) * (w // 2)
    floor = 2 * forward_flops(arch, tokens) / FLOOR_FLOPS
    return {"variant": name, "options": used, "s_per_step": round(seconds, 4), "floor_s": round(floor, 4),
            "over_floor": round(seconds / floor, 2), "peak_vram_gb": round(peak, 2),
            "predicted_gb": _predicted(spec, args, used)}


def _scheduler_config() -> dict:
    from skyreels_cli.models.tiny import _scheduler

    return _scheduler().config


def _predicted(spec, args, used: dict) -> float | None:
    """The planner's trace of the same forward: weights plus activations (no text encoder, no VAE here)."""
    try:
        from skyreels_cli.runtime.trace import trace_transformer

        arch = transformer_arch(spec, args.smoke)
        weights = {"none": "bf16", "fp8": "fp8", "int8": "int8"}[used.get("quantize", "none")]
        t = trace_transformer(arch, args.height, args.width, (args.frames - 1) // 4 + 1,
                              batch=2 if used.get("cfg") == "batched" else 1, weights=weights,
                              per_frame_modulation=bool(used.get("modulation")))
        return round((t.weights + t.activations) / 1e9, 2)
    except Exception as exc:  # the prediction is a comparison, not the benchmark
        print(f"  (no prediction: {exc})", file=sys.stderr)
        return None


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, object, torch.device]:
    """(the arguments with the window's size filled in, the model's spec, the device)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="df-1.3b-540p")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "plan"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after warm-up)")
    parser.add_argument("--steps-in-schedule", type=int, default=30)
    parser.add_argument("--vram", type=float, default=24.0, help="memory the `plan` variant is capped to (GB)")
    parser.add_argument("--frames", type=int, help="window length (default: the model's)")
    parser.add_argument("--smoke", action="store_true", help="a two-layer model at 64x64x17 on the CPU: checks the "
                        "script, measures nothing")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_speed.py needs a CUDA GPU (--smoke checks the script on the CPU)")
    spec = resolve_model(args.model, "extend")
    args.height, args.width = (64, 64) if args.smoke else (spec.height, spec.width)
    args.frames = 17 if args.smoke else (args.frames or spec.base_frames)
    return args, spec, torch.device("cpu" if args.smoke else "cuda")


def main() -> None:
    args, spec, device = parse()
    results = []
    for name in args.variants.split(","):
        print(f"== {name}", flush=True)
        try:
            results.append(measure(name, VARIANTS[name], spec, args, device))
        except Exception as exc:  # one option missing on this machine must not lose the others' figures
            results.append({"variant": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
        print(json.dumps(results[-1]), flush=True)
    base = next((r["s_per_step"] for r in results if r["variant"] == "diffusers" and "s_per_step" in r), None)
    unlimited = next((r["s_per_step"] for r in results if r["variant"] == "all" and "s_per_step" in r), None)
    for r in results:
        if "s_per_step" in r and base:
            r["speedup_vs_diffusers"] = round(base / r["s_per_step"], 2)
        if r["variant"] == "plan" and "s_per_step" in r and unlimited:
            r["over_unlimited_all"] = round(r["s_per_step"] / unlimited, 2)
    report = {"model": spec.alias, "size": f"{args.width}x{args.height}x{args.frames}",
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "results": results}
    print(f"\n{'variant':<12} {'s/step':>8} {'x diffusers':>11} {'x floor':>8} {'peak GB':>8} {'predicted':>9}")
    for r in results:
        if "s_per_step" in r:
            print(f"{r['variant']:<12} {r['s_per_step']:>8.3f} {r.get('speedup_vs_diffusers', 0):>11.2f} "
                  f"{r['over_floor']:>8.2f} {r['peak_vram_gb']:>8.2f} {r['predicted_gb'] or 0:>9.2f}")
        else:
            print(f"{r['variant']:<12} {r['error']}")
    out = Path(os.environ.get("OUT", "."))
    (out / f"gpu_speed_{spec.alias}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
