"""The small result of one part of the GPU check (benchmarks/gpu_check.sh): what comes back from a lent machine.

Only a few small files come back from $OUT (at most 8, 16 MiB each), so the runs write their frames under WORK
and this writes into OUT: summary-PART.json (every figure), summary-PART.txt (a short table and the log's
tail), and for `commands` three small first frames. For `plans` each run's measured peak VRAM is set beside
the planner's prediction for the same plan and size (the random 1.3B checkpoint's text encoder is one layer
deep: the prediction is made for that architecture).

    python benchmarks/gpu_summary.py PART WORK OUT LOG
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

THUMBNAILS = ("tiny-t2v", "real-t2v", "real-extend")
THUMB_WIDTH = 320
LOG_TAIL = 40


def runs(work: Path) -> dict[str, dict]:
    """Each run folder's sidecar figures, by folder name."""
    found = {}
    for settings in sorted(work.glob("*/settings.json")):
        run = json.loads(settings.read_text()).get("run", {})
        found[settings.parent.name] = {key: run.get(key) for key in
                                       ("frames_written", "timings_s", "peak_vram_gb", "runtime")}
    return found


def predicted_gb(runtime: dict, height: int = 544, width: int = 960, frames: int = 97) -> float | None:
    """The planner's peak for the random DF-1.3B checkpoint's architecture under the run's plan."""
    from skyreels_cli.models.architectures import architecture
    from skyreels_cli.models.tiny import FULL_SIZE_TEXT_LAYERS, VOCAB
    from skyreels_cli.run_options import PLAN_FIELDS
    from skyreels_cli.runtime.plan import Shape, predict

    arch = architecture("df", "1.3B")
    arch = replace(arch, text_encoder=replace(arch.text_encoder, layers=FULL_SIZE_TEXT_LAYERS, vocab=len(VOCAB)))
    fields = {name: runtime[name] for name in PLAN_FIELDS if name in runtime}
    matches = predict(arch, Shape.window(height, width, frames), vram_gb=80, **fields)
    return round(matches[0].peak_gb, 2) if matches else None


def thumbnails(work: Path, out: Path, part: str) -> list[str]:
    from PIL import Image

    made = []
    for name in THUMBNAILS:
        frames = sorted((work / name).glob("[0-9]*.png"))
        if frames:
            image = Image.open(frames[0]).convert("RGB")
            image.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
            target = out / f"{part}-{name}.png"
            image.save(target, optimize=True)
            made.append(target.name)
    return made


def summary(part: str, work: Path, out: Path, log: Path) -> dict:
    found = runs(work)
    if part == "plans":
        for figures in found.values():
            if figures["runtime"]:
                figures["predicted_gb"] = predicted_gb(figures["runtime"])
    speed = [json.loads(p.read_text()) for p in sorted(out.glob("gpu_speed_*.json"))]
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return {"part": part, "runs": found, "speed": speed,
            "failed": [line for line in lines if line.startswith("exit ") and not line.startswith("exit 0 ")],
            "pytest": next((line for line in reversed(lines) if " passed" in line or " failed" in line), None),
            "log_tail": lines[-LOG_TAIL:]}


def text(report: dict) -> str:
    rows = [f"GPU check, part {report['part']}"]
    for name, r in report["runs"].items():
        total = sum((r.get("timings_s") or {}).values()) if isinstance(r.get("timings_s"), dict) else None
        rows.append(f"{name:<22} frames {r['frames_written']}  peak VRAM {r['peak_vram_gb']} GB"
                    + (f"  predicted {r['predicted_gb']} GB" if "predicted_gb" in r else "")
                    + (f"  {total:.1f} s" if total is not None else ""))
    for speed in report["speed"]:
        rows.append(f"{speed['model']} {speed['size']} on {speed['gpu']}")
        for r in speed["results"]:
            rows.append(f"  {r['variant']:<12} " + (
                f"{r['s_per_step']:.3f} s/step, x{r.get('speedup_vs_diffusers', 0):.2f} vs diffusers, "
                f"x{r['over_floor']:.2f} the floor, peak {r['peak_vram_gb']} GB (predicted {r['predicted_gb']})"
                if "s_per_step" in r else r.get("error", "")))
    if report["pytest"]:
        rows.append(f"tests: {report['pytest']}")
    rows += [f"FAILED {line}" for line in report["failed"]]
    return "\n".join(rows + ["", "log tail:", *report["log_tail"]]) + "\n"


def main(part: str, work: str, out: str, log: str) -> None:
    work_dir, out_dir = Path(work), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = summary(part, work_dir, out_dir, Path(log))
    if part == "commands":
        report["thumbnails"] = thumbnails(work_dir, out_dir, part)
    (out_dir / f"summary-{part}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"summary-{part}.txt").write_text(text(report))
    print(text(report))


if __name__ == "__main__":
    main(*sys.argv[1:5])
