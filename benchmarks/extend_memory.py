"""Peak host memory and wall time of a short vs a long `skyreels extend`, against diffusers.

Ours streams: each window's new latents are decoded and written to disk at once, so
host memory should not grow with the video's length. The diffusers
`SkyReelsV2DiffusionForcingPipeline` keeps every latent and decodes the whole video
at the end, so its memory grows with the length. Both run the same job on tiny
random weights on the CPU, each run in a fresh subprocess, repeated; medians are
printed.

Memory is the peak of the summed RSS of the run's process tree (the Python process
plus its ffmpeg children), sampled every --interval seconds with psutil. The kernel's
exact high-water mark of the largest single process in the tree (wait4 ru_maxrss,
which catches spikes between samples) and the CPU time of the tree are recorded too.

    python benchmarks/extend_memory.py             # full run, ~15 min on 2 cores
    python benchmarks/extend_memory.py --quick     # ~1-2 min smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

PROMPT = "a red fox running through snow"
NEGATIVE = "blurry noise"  # passed to both, so both encode the same two prompts
MB = 1024 * 1024


# ---------------------------------------------------------------- the diffusers side (runs in a subprocess)


def run_diffusers(args: argparse.Namespace) -> None:
    """The reference pipeline doing the same job as `skyreels extend`, writing an MP4 the same way."""
    import imageio_ffmpeg
    import numpy as np
    import torch
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    video = pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
        num_frames=args.frames, base_num_frames=args.base_frames, overlap_history=args.overlap,
        num_inference_steps=args.steps, guidance_scale=6.0, generator=torch.Generator().manual_seed(0),
        output_type="np", addnoise_condition=0,
    ).frames[0]
    # Same encoder settings as ours (libx264, crf 17), fed in small uint8 chunks so that the
    # writing adds as little as possible on top of what the pipeline itself holds.
    writer = imageio_ffmpeg.write_frames(
        args.output, (args.width, args.height), fps=24, codec="libx264", quality=None,
        macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "17"],
    )
    writer.send(None)
    for start in range(0, len(video), 16):
        chunk = (video[start : start + 16] * 255).round().clip(0, 255).astype(np.uint8)
        writer.send(np.ascontiguousarray(chunk))
    writer.close()


# ---------------------------------------------------------------- measuring a subprocess


def tree_rss(proc: psutil.Process, exe: str) -> tuple[int, int]:
    """RSS of the process itself and of its descendants (bytes); 0 for those already gone.

    A child that is still `exe` (Python) has been forked or vforked but has not exec'd ffmpeg
    yet: it shares the parent's pages, and counting its RSS would double the parent's.
    """
    def rss(p: psutil.Process, skip_python: bool = False) -> int:
        try:
            if skip_python and p.exe() == exe:
                return 0
            return p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return 0

    try:
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        children = []
    return rss(proc), sum(rss(c, skip_python=True) for c in children)


def measure(cmd: list[str], interval: float, env: dict[str, str]) -> dict:
    """Run `cmd`, sampling its process tree's memory until it exits; raise if it fails."""
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child must never block on a full pipe
    started = time.perf_counter()
    popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc = psutil.Process(popen.pid)
    exe = os.path.realpath(sys.executable)
    peak_total = peak_main = peak_children = 0
    samples = 0
    while True:
        # wait4 instead of Popen.wait: its rusage is the exact high-water mark and CPU time of the
        # whole tree (the child and the descendants it reaped), which psutil cannot see after exit.
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            break
        main, children = tree_rss(proc, exe)
        peak_total = max(peak_total, main + children)
        peak_main = max(peak_main, main)
        peak_children = max(peak_children, children)
        samples += 1
        time.sleep(interval)
    wall = time.perf_counter() - started
    popen.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    if popen.returncode != 0:
        log.seek(0)
        raise RuntimeError(f"{' '.join(cmd)} failed ({popen.returncode}):\n{log.read()[-3000:].decode(errors='replace')}")
    log.close()
    return {
        "peak_rss_mb": peak_total / MB,           # sampled, python + ffmpeg children summed
        "peak_rss_main_mb": peak_main / MB,       # sampled, the python process alone
        "peak_rss_children_mb": peak_children / MB,
        "maxrss_mb": usage.ru_maxrss / 1024,      # kernel, largest single process in the tree (KiB on Linux)
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # less sensitive than wall time to a busy machine
        "samples": samples,
    }


# ---------------------------------------------------------------- the benchmark


def commands(impl: str, frames: int, args: argparse.Namespace, model: Path, output: Path) -> list[str]:
    shape = ["--height", str(args.height), "--width", str(args.width), "--base-frames", str(args.base_frames),
             "--overlap", str(args.overlap), "--steps", str(args.steps), "--frames", str(frames)]
    if impl == "ours":
        # shift 1 and the diffusers sigma grid: the scheduler the diffusers pipeline uses on this checkpoint.
        return [sys.executable, "-m", "skyreels_cli", "extend", PROMPT, "--model", str(model), "--device", "cpu",
                "--negative-prompt", NEGATIVE, "--guidance", "6", "--shift", "1", "--sigma-grid", "diffusers",
                "--addnoise", "0", "--seed", "0", "-o", str(output), "--overwrite", "--quiet", *shape]
    return [sys.executable, os.path.abspath(__file__), "--run-diffusers", "--model", str(model),
            "--output", str(output), *shape]


def build_checkpoint(folder: Path, env: dict[str, str]) -> Path:
    """The tiny DF checkpoint both sides load, written by a subprocess so this process never imports torch."""
    model = folder / "tiny-df"
    code = f"from skyreels_cli.tiny import save_checkpoint; save_checkpoint('df', {str(model)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return model


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(results: dict, args: argparse.Namespace) -> bool:
    """Print the table of medians; True when ours stays within the tolerance."""
    def row(name: str, impl: str, key: str, fmt: str) -> str:
        short, long = (median(results[impl][n], key) for n in ("short", "long"))
        return f"| {name:<28} | {short:{fmt}} | {long:{fmt}} | {long / short:5.2f}x |"

    print(f"\nmedians of {args.repeats} runs; {args.width}x{args.height}, base {args.base_frames}, overlap "
          f"{args.overlap}, {args.steps} step(s); short {args.short_frames} frames, long {args.long_frames} frames\n")
    print(f"| {'':<28} | {'short':>8} | {'long':>8} | long:short |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|-----------:|")
    labels = [("peak RSS, tree (MB)", "peak_rss_mb", "8.0f"), ("peak RSS, kernel max (MB)", "maxrss_mb", "8.0f"),
              ("wall time (s)", "wall_s", "8.1f"), ("CPU time (s)", "cpu_s", "8.1f")]
    for impl in results:
        for label, key, fmt in labels:
            print(row(f"{impl} {label}", impl, key, fmt))
    ok = True
    if "ours" in results:
        growth = median(results["ours"]["long"], "peak_rss_mb") / median(results["ours"]["short"], "peak_rss_mb")
        ok = growth <= 1 + args.tolerance
        print(f"\nours: long/short peak memory {growth:.3f} -> {'PASS' if ok else 'FAIL'} "
              f"(target: within {args.tolerance:.0%})")
    if "diffusers" in results:
        growth = median(results["diffusers"]["long"], "peak_rss_mb") / median(results["diffusers"]["short"], "peak_rss_mb")
        print(f"diffusers: long/short peak memory {growth:.3f} ({'grows' if growth > 1 + args.tolerance else 'flat'})")
    if len(results) == 2:
        mem = median(results["ours"]["long"], "peak_rss_mb") / median(results["diffusers"]["long"], "peak_rss_mb")
        wall = median(results["ours"]["long"], "wall_s") / median(results["diffusers"]["long"], "wall_s")
        cpu = median(results["ours"]["long"], "cpu_s") / median(results["diffusers"]["long"], "cpu_s")
        print(f"long run, ours/diffusers: memory {mem:.2f}x, wall time {wall:.2f}x, CPU time {cpu:.2f}x")
    return ok


def benchmark(args: argparse.Namespace) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    impls = ["ours", "diffusers"] if args.impl == "both" else [args.impl]
    results: dict[str, dict[str, list[dict]]] = {impl: {"short": [], "long": []} for impl in impls}
    with tempfile.TemporaryDirectory(prefix="extend-memory-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        model = build_checkpoint(folder, env)
        # Interleave implementations and lengths within each repeat, so that a slow spell on this
        # shared machine spreads over all cases instead of landing on one.
        for rep in range(args.repeats):
            for impl in impls:
                for name, frames in (("short", args.short_frames), ("long", args.long_frames)):
                    out = folder / "out"
                    out.mkdir()
                    run = measure(commands(impl, frames, args, model, out / "video.mp4"), args.interval, env)
                    shutil.rmtree(out)  # also drops ours' work folder, so no run sees another's files
                    results[impl][name].append(run)
                    print(f"[{rep + 1}/{args.repeats}] {impl:<9} {name:<5} {frames:>5} frames: "
                          f"{run['peak_rss_mb']:7.0f} MB (kernel {run['maxrss_mb']:.0f}), "
                          f"{run['wall_s']:6.1f} s wall, {run['cpu_s']:6.1f} s CPU", flush=True)
    ok = report(results, args)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}
        Path(args.json).write_text(json.dumps({"settings": settings, "runs": results}, indent=2) + "\n")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # 128x128: the tiny VAE decode is what costs time here (the same work for both sides, linear in
    # pixels x frames); at 256x256 a single 1,025-frame run takes ~6 min on 2 cores. At 128x128 the
    # decoded 1,025-frame float32 video diffusers holds is still 200 MB per copy.
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--short-frames", type=int, default=89, help="3 windows at the default window size")
    p.add_argument("--long-frames", type=int, default=1025)
    p.add_argument("--base-frames", type=int, default=33, help="window in pixel frames, 4k+1")
    p.add_argument("--overlap", type=int, default=5, help="frames shared between windows, 4k+1")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impl", choices=("both", "ours", "diffusers"), default="both")
    p.add_argument("--interval", type=float, default=0.025, help="memory sampling period in seconds")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed long:short peak memory growth for ours")
    p.add_argument("--quick", action="store_true", help="smoke run: 64x64, long 257 frames, 1 repeat")
    p.add_argument("--json", help="write the raw figures of every run to this file")
    p.add_argument("--workdir", help="where to put the checkpoint and outputs (default: system temp)")
    # Internal: the diffusers runner, started by the benchmark in a subprocess.
    p.add_argument("--run-diffusers", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.height = args.width = 64
        args.long_frames, args.repeats = 257, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_diffusers:
        run_diffusers(args)
        return 0
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
