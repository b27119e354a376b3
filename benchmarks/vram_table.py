"""Simulated VRAM table: every released model at its native size, each memory plan, traced on fake tensors.

For each model: diffusers as shipped (every component on the GPU, per-token modulation, untiled decode,
two-pass guidance), the official published peak (`vram_gb` in weights.toml), and for each offload and
quantization our smallest predicted peak and the fastest variant that fits 24 GB. Runs on a CPU in
a minute or two (traces are cached: `skyreels_cli.runtime.trace.trace_cache_file()`).

    python benchmarks/vram_table.py            # markdown table on stdout
"""

from __future__ import annotations

from skyreels_cli.models.registry import load_registry
from skyreels_cli.run_options import OFFLOADS, QUANTIZES
from skyreels_cli.runtime.plan import baseline, judge, predict, speed_rank

CARD_GB = 24.0


def rows_for(spec) -> list[str]:
    judged = judge(predict(spec, vram_gb=CARD_GB), CARD_GB)
    shipped = baseline(spec)
    official = f"{spec.vram_gb:.1f}" if spec.vram_gb else "-"
    lines = []
    for offload in OFFLOADS:
        for quantize in QUANTIZES:
            group = [p for p in judged if p.plan.offload == offload and p.plan.quantize == quantize]
            least = min(group, key=lambda p: p.peak)
            fitting = [p for p in group if p.fits]
            best = min(fitting, key=lambda p: speed_rank(p.plan)) if fitting else None
            fit = f"{best.peak_gb:.1f} ({_variant(best.plan)})" if best else "-"
            mark = " *" if any(p.chosen for p in group) else ""
            lines.append(f"| {spec.alias} | {shipped.peak_gb:.1f} | {official} | {offload} | {quantize} | "
                         f"{least.peak_gb:.1f} | {fit}{mark} |")
    return lines


def _variant(plan) -> str:
    decode = "tiled" if plan.tiled_decode else "untiled"
    text = "cpu" if plan.text_encoder_device == "cpu" else "gpu" if plan.text_encoder_beside else "gpu alone"
    return f"{plan.cfg}, {decode}, text {text}"


def main() -> None:
    print(f"| model | diffusers as shipped (GB) | official (GB) | offload | quantize | our smallest (GB) | "
          f"fastest within {CARD_GB:g} GB |")
    print("|---|---|---|---|---|---|---|")
    for spec in load_registry().models.values():
        if not spec.is_tiny:
            for line in rows_for(spec):
                print(line, flush=True)


if __name__ == "__main__":
    main()
