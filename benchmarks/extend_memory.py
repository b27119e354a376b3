"""Peak host memory and time of a short vs a long `skyreels extend`, against diffusers.

Ours streams: each window's new latents are decoded and written to disk at once, so
host memory should not grow with the video's length. The diffusers
`SkyReelsV2DiffusionForcingPipeline` keeps every latent and decodes the whole video
at the end, so its memory grows with the length. Both do the same job (same tiny
random weights, prompts, seed, scheduler, window and overlap; an MP4 written with
libx264 crf 17) on the CPU, each run in a fresh subprocess, repeated; medians are
printed.

Memory is the peak of the summed RSS of the run's process tree (the Python process
plus its ffmpeg children), sampled every --interval seconds with psutil. Also kept:
the ffmpeg children's own peak, the kernel's exact high-water mark of the largest
single process in the tree (wait4 ru_maxrss: catches spikes between samples), and
the tree's CPU time (less sensitive than wall time on a busy machine).

    python benchmarks/extend_memory.py                  # full run: ~11 min on 2 idle cores
    python benchmarks/extend_memory.py --quick          # ~1-2 min smoke run
    python benchmarks/extend_memory.py --steady-malloc  # take glibc's heap slack out of the peaks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import psutil

PROMPT = "a red fox running through snow"
NEGATIVE = "blurry noise"  # given to both, so both encode the same two prompts
MB = 1024 * 1024
# glibc raises its mmap threshold after each large free, so later big temporaries come from the
# heap and stay resident after being freed: the peak RSS of identical runs then varies by ~15%.
# Pinning the threshold makes big temporaries mmap'd and returned at once (opt-in, not the default).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


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
    # Fed to ffmpeg in small uint8 chunks, so that writing adds as little as possible on top of
    # what the pipeline itself holds: the comparison is of the pipelines, not of our writer code.
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


def tree_rss(proc: psutil.Process, python_exe: str) -> tuple[int, int]:
    """RSS of the process and the summed RSS of its descendants (bytes); 0 for those gone.

    A descendant still running `python_exe` has been (v)forked but has not exec'd ffmpeg yet:
    it shares the parent's pages, and counting its RSS would count the parent twice.
    """
    def rss(p: psutil.Process, child: bool) -> int:
        try:
            return 0 if child and p.exe() == python_exe else p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return 0

    try:
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        children = []
    return rss(proc, False), sum(rss(c, True) for c in children)


def measure(cmd: list[str], interval: float, env: dict[str, str]) -> dict:
    """Run `cmd`, sampling its process tree's memory until it exits; raise if it fails."""
    python_exe = os.path.realpath(sys.executable)
    peak_total = peak_main = peak_children = samples = 0
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child never blocks on it
        started = time.perf_counter()
        popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        proc = psutil.Process(popen.pid)
        while True:
            # wait4 rather than Popen.wait: its rusage holds the exact high-water mark and the CPU
            # time of the tree (the child and the descendants it reaped), gone from psutil after exit.
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                break
            main, children = tree_rss(proc, python_exe)
            peak_total = max(peak_total, main + children)
            peak_main, peak_children = max(peak_main, main), max(peak_children, children)
            samples += 1
            time.sleep(interval)
        wall = time.perf_counter() - started
        popen.returncode = os.waitstatus_to_exitcode(status)  # reaped already: Popen must not wait again
        if popen.returncode != 0:
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            raise RuntimeError(f"{' '.join(cmd)}\nexited with {popen.returncode}:\n{tail}")
    return {
        "peak_rss_mb": peak_total / MB,  # sampled: python + ffmpeg children, summed
        "peak_rss_main_mb": peak_main / MB,  # sampled: the python process alone
        "peak_rss_children_mb": peak_children / MB,  # sampled: ffmpeg children, summed
        "maxrss_mb": usage.ru_maxrss / 1024,  # kernel: largest single process of the tree (KiB on Linux)
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "samples": samples,
    }


# ---------------------------------------------------------------- the benchmark


def command(impl: str, frames: int, args: argparse.Namespace, model: Path, output: Path) -> list[str]:
    shape = ["--height", str(args.height), "--width", str(args.width), "--base-frames", str(args.base_frames),
             "--overlap", str(args.overlap), "--steps", str(args.steps), "--frames", str(frames)]
    if impl in ("ours", "ours-plain"):
        # Shift 1 on the diffusers sigma grid is the scheduler the diffusers pipeline uses on this
        # checkpoint, and addnoise 0 its default: the same sampling, so the same amount of work.
        runner = ["-m", "skyreels_cli"] if impl == "ours" else ["-c", PLAIN_ALLOCATOR]
        return [sys.executable, *runner, "extend", PROMPT, "--model", str(model), "--device", "cpu",
                "--negative-prompt", NEGATIVE, "--guidance", "6", "--shift", "1", "--sigma-grid", "diffusers",
                "--addnoise", "0", "--seed", "0", "-o", str(output), "--overwrite", "--quiet", *shape]
    return [sys.executable, os.path.abspath(__file__), "--run-diffusers", "--model", str(model),
            "--output", str(output), *shape]


# ours with the command's allocator policy (skyreels_cli/cli/host_memory.py) switched off.
PLAIN_ALLOCATOR = ("import sys; import skyreels_cli.cli.host_memory as m; "
                   "m.keep_host_memory_flat = m.release_freed_memory = lambda *a: None; "
                   "sys.argv[0] = 'skyreels'; from skyreels_cli.cli import main; main()")


def build_checkpoint(folder: Path, env: dict[str, str]) -> Path:
    """The tiny DF checkpoint both sides load; built in a subprocess so this one never imports torch."""
    model = folder / "tiny-df"
    code = f"from skyreels_cli.models.tiny import save_checkpoint; save_checkpoint('df', {str(model)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return model


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(results: dict[str, dict[str, list[dict]]], args: argparse.Namespace) -> bool:
    """Print the medians as a Markdown table; True when ours meets the target."""
    rows = [("peak RSS, tree (MB)", "peak_rss_mb", ".0f"),
            ("peak RSS, ffmpeg children (MB)", "peak_rss_children_mb", ".0f"),
            ("peak RSS, kernel max (MB)", "maxrss_mb", ".0f"),
            ("wall time (s)", "wall_s", ".1f"), ("CPU time (s)", "cpu_s", ".1f")]
    print(f"\nmedians of {args.repeats} run(s): {args.width}x{args.height}, base {args.base_frames}, overlap "
          f"{args.overlap}, {args.steps} step(s), short {args.short_frames} / long {args.long_frames} frames"
          f"{', steady malloc' if args.steady_malloc else ''}\n")
    print(f"| {'':<40} | {'short':>7} | {'long':>7} | long:short |")
    print(f"|{'-' * 42}|{'-' * 8}:|{'-' * 8}:|{'-' * 11}:|")
    for impl, runs in results.items():
        for label, key, fmt in rows:
            short, long = median(runs["short"], key), median(runs["long"], key)
            ratio = f"{long / short:.2f}x" if short else "-"
            print(f"| {impl + ' ' + label:<40} | {short:>7{fmt}} | {long:>7{fmt}} | {ratio:>10} |")

    def growth(impl: str) -> float:
        return median(results[impl]["long"], "peak_rss_mb") / median(results[impl]["short"], "peak_rss_mb")

    ok = True
    print()
    if "ours" in results:
        ok = growth("ours") <= 1 + args.tolerance
        print(f"ours: long/short peak memory {growth('ours'):.3f} -> {'PASS' if ok else 'FAIL'} "
              f"(target: long within {args.tolerance:.0%} of short)")
    for other in ("ours-plain", "diffusers"):
        if other not in results:
            continue
        print(f"{other}: long/short peak memory {growth(other):.3f} "
              f"({'grows' if growth(other) > 1 + args.tolerance else 'does not grow'} with length)")
        if "ours" in results:
            ours, ref = results["ours"]["long"], results[other]["long"]
            mem, wall, cpu = (median(ours, key) / median(ref, key) for key in ("peak_rss_mb", "wall_s", "cpu_s"))
            print(f"long run, ours/{other}: peak memory {mem:.2f}x, wall time {wall:.2f}x, CPU time {cpu:.2f}x")
    return ok


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            **{name: version(name) for name in ("torch", "diffusers", "skyreels-cli")}}


def benchmark(args: argparse.Namespace) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **(STEADY_MALLOC if args.steady_malloc else {})}
    impls = {"both": ["ours", "diffusers"], "allocator": ["ours", "ours-plain"]}.get(args.impl, [args.impl])
    results: dict[str, dict[str, list[dict]]] = {impl: {"short": [], "long": []} for impl in impls}
    with tempfile.TemporaryDirectory(prefix="extend-memory-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        model = build_checkpoint(folder, env)
        # Every case once per repeat, rather than each case 3 times in a row: a slow spell on
        # this shared machine then spreads over all cases instead of landing on one.
        for rep in range(args.repeats):
            for impl in impls:
                for name, frames in (("short", args.short_frames), ("long", args.long_frames)):
                    out = folder / "out"
                    out.mkdir()
                    run = measure(command(impl, frames, args, model, out / "video.mp4"), args.interval, env)
                    shutil.rmtree(out)  # with ours' work folder: no run sees another's files
                    results[impl][name].append(run)
                    print(f"[{rep + 1}/{args.repeats}] {impl:<9} {name:<5} {frames:>5} frames: "
                          f"{run['peak_rss_mb']:6.0f} MB (kernel {run['maxrss_mb']:.0f}), "
                          f"{run['wall_s']:6.1f} s wall, {run['cpu_s']:6.1f} s CPU", flush=True)
    ok = report(results, args)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k in SETTINGS}
        data = {"settings": settings, "machine": machine(), "runs": results}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if ok else 1


SETTINGS = ("height", "width", "short_frames", "long_frames", "base_frames", "overlap", "steps", "repeats",
            "interval", "tolerance", "steady_malloc", "quick")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 192x192: the decoded 1,025-frame float32 video diffusers holds is 450 MB a copy, so decoded
    # frames dominate its memory. The cost on 2 cores is the tiny VAE's decode (the same work for
    # both, ~0.26 s per latent frame here), not attention: at 256x256 one long run takes ~3 min
    # and the default run would take over 25 min.
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--short-frames", type=int, default=89, help="default: 3 windows")
    p.add_argument("--long-frames", type=int, default=1025, help="default: 37 windows")
    p.add_argument("--base-frames", type=int, default=33, help="window in pixel frames, 4k+1")
    p.add_argument("--overlap", type=int, default=5, help="frames shared between windows, 4k+1")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impl", choices=("both", "ours", "diffusers", "allocator"), default="both",
                   help="allocator: ours with and without the command's glibc policy")
    p.add_argument("--interval", type=float, default=0.025, help="memory sampling period, seconds")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed long:short peak memory growth of ours")
    p.add_argument("--steady-malloc", action="store_true",
                   help=f"run both with {STEADY_MALLOC} (glibc), taking allocator slack out of the peaks")
    p.add_argument("--quick", action="store_true", help="smoke run: 128x128, long 513 frames, 1 repeat")
    p.add_argument("--json", help="write every run's raw figures here")
    p.add_argument("--workdir", help="where the checkpoint and outputs go (default: system temp)")
    # Internal: the diffusers runner, which the benchmark starts in a subprocess.
    p.add_argument("--run-diffusers", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.height = args.width = 128
        args.long_frames, args.repeats = 513, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_diffusers:
        run_diffusers(args)
        return 0
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
