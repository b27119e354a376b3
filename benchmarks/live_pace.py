"""A live video's pace: the real-time factor (seconds of video made per second of wall time) and the delay from
a prompt change to the first frame showing it (issue 24).

1. Measured here: a live `extend` on the tiny DF model on the CPU, steered once, its `WindowDone` events read.
2. Predicted on an H100 for DF-1.3B-540P (544x960, windows of 97 frames, overlap 17: 80 new frames a window), from
   the transformer's FLOPs per window (core/estimate.py's formula) at the compute floor of 800 TFLOP/s (bf16 matrix
   rate measured on an H100, REFERENCE §6): 30 steps with guidance (two passes a step), and a 4-step setting
   without guidance (one pass), as the few-step LoRAs run. Decoding and text encoding are left out, so these are
   bounds: real runs are slower.

A prompt takes effect from the next window not yet started: given just after a window starts, it waits for that
window and then its own, so the delay to its first frame is between one and two windows' time.

    python benchmarks/live_pace.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/live_pace.py --windows 6 --json live.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import skyreels_cli as sk  # noqa: E402
from skyreels_cli.core.estimate import forward_flops  # noqa: E402
from skyreels_cli.forcing.frames import latent_frames  # noqa: E402
from skyreels_cli.forcing.schedule import step_matrix  # noqa: E402
from skyreels_cli.forcing.windows import live_plan  # noqa: E402
from skyreels_cli.models.architectures import ARCHITECTURES  # noqa: E402

H100_FLOPS = 800e12  # REFERENCE §6: the bf16 matrix rate measured on an H100
TINY = dict(height=64, width=64, steps=4, base_frames=17, overlap=5, seed=1)  # 12 new frames a window


def measure(windows: int) -> dict:
    """A live run of `windows` windows on the tiny DF model, its prompt changed when the first window is out."""
    prompts, rtf, latency = sk.LivePrompts(), [], []

    def on_event(event) -> None:
        if isinstance(event, sk.WindowDone):
            if event.rtf is not None and event.window > 0:  # the first window also pays for the text encoder
                rtf.append(event.rtf)
            if event.prompt_latency_s is not None:
                latency.append(event.prompt_latency_s)
            if event.window == 0:
                prompts.set("the cat running through the snow")

    frames = 17 + 12 * (windows - 1)
    with tempfile.TemporaryDirectory() as folder:
        job = sk.Job("extend", sk.Request(prompt="a red fox", live=True, frames=frames, **TINY), model="tiny-df",
                     load=sk.LoadOptions(device="cpu"), output=str(Path(folder) / "live.mp4"))
        sk.run(job, prompts=prompts, on_event=on_event, progress=False)
    return {"windows": windows, "rtf_median": statistics.median(rtf), "rtf_each": rtf,
            "prompt_latency_s": latency[0] if latency else None, "size": "64x64, 4 steps, 12 new frames a window"}


def predict(steps: int, guidance: bool) -> dict:
    """DF-1.3B-540P on an H100 at the compute floor: a later live window's time, RTF and prompt delay."""
    arch = ARCHITECTURES[("df", "1.3B")].transformer
    _, plan = live_plan(10_000, base_frames=97, overlap_frames=17)
    window = plan.windows[1]  # every window after the first is this one
    rows = step_matrix(window.blocks, steps, 0, window.ready_blocks)[0].shape[0]
    tokens = (544 // 16) * (960 // 16) * window.length
    flops = rows * (2 if guidance else 1) * forward_flops(arch, tokens)
    seconds = flops / H100_FLOPS
    video = 4 * window.new / 24
    return {"steps": steps, "guidance": guidance, "window_frames": 4 * window.new, "window_video_s": round(video, 3),
            "flops_per_window": flops, "seconds_per_window": round(seconds, 2), "rtf": round(video / seconds, 3),
            "prompt_delay_s": [round(seconds, 2), round(2 * seconds, 2)],
            "speedup_for_real_time": round(seconds / video, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5, help="windows of the measured CPU run")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    import torch

    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.platform(),
               "cpus": os.cpu_count(), "torch": torch.__version__, "cpu": measure(args.windows),
               "h100": [predict(30, True), predict(4, False)], "latent_frames_per_window": latent_frames(97)}
    c = results["cpu"]
    print(f"{results['date']}, {results['machine']}, {results['cpus']} CPUs, torch {results['torch']}")
    print(f"CPU, tiny DF ({c['size']}): RTF median {c['rtf_median']:.3f} over {len(c['rtf_each'])} windows; "
          f"prompt change to first frame {c['prompt_latency_s']} s")
    for p in results["h100"]:
        print(f"H100 predicted, DF-1.3B-540P, {p['steps']} steps{' with guidance' if p['guidance'] else ', no guidance'}: "
              f"{p['flops_per_window'] / 1e15:.2f} PFLOP a window of {p['window_frames']} frames "
              f"({p['window_video_s']} s of video) -> {p['seconds_per_window']} s, RTF {p['rtf']}, prompt delay "
              f"{p['prompt_delay_s'][0]}-{p['prompt_delay_s'][1]} s; real time needs {p['speedup_for_real_time']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
