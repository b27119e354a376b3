"""Where the memory of one `skyreels extend` run goes, window by window.

Runs the CLI in this process, and after each window (a hook on FrameSink.end_window)
prints: RSS now and its peak during the window (sampled every 5 ms), glibc's heap
split into bytes in use (live allocations) and bytes freed but kept, with
--tracemalloc Python-level allocations (numpy included; not torch's CPU tensors),
and the time FrameSink.end_window took (segment close + preview rewrite).
At the end it lists the source lines whose Python allocations grew most between the
first window and the last one.

    python benchmarks/extend_memory_profile.py --frames 1025 --size 192
    python benchmarks/extend_memory_profile.py --frames 1025 --size 192 --tracemalloc
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import tempfile
import threading
import time
import tracemalloc

import psutil

MB = 1024 * 1024


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def heap() -> tuple[float, float]:
    """glibc's view, summed over all arenas: (bytes in use incl. mmap'd chunks, bytes free but kept), MB."""
    info = LIBC.mallinfo2()
    return (info.uordblks + info.hblkhd) / MB, info.fordblks / MB


class PeakSampler(threading.Thread):
    """Keeps the highest RSS seen since the last reset (psutil every 5 ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak = psutil.Process(), 0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def take(self) -> int:
        peak, self.peak = max(self.peak, self.proc.memory_info().rss), 0
        return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=1025)
    p.add_argument("--size", type=int, default=192, help="height and width")
    p.add_argument("--base-frames", type=int, default=33)
    p.add_argument("--overlap", type=int, default=5)
    p.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    args = p.parse_args()

    from skyreels_cli import cli
    from skyreels_cli.media.sinks import FrameSink
    from skyreels_cli.models.tiny import save_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="extend-profile-")
    model = save_checkpoint("df", os.path.join(tmp.name, "tiny-df"))
    sampler = PeakSampler()
    sampler.start()
    if args.tracemalloc:
        tracemalloc.start(8)
    snapshots: list = []
    windows = [0]
    print(f"{'window':>6} {'frames':>6} {'RSS MB':>7} {'peak MB':>7} {'heap used':>9} {'heap kept':>9} "
          f"{'py now MB':>9} {'py peak MB':>10} {'end_window s':>12}")
    end_window = FrameSink.end_window

    def hooked(sink: FrameSink) -> None:
        started = time.perf_counter()
        end_window(sink)  # closes the window's segment, then rewrites the preview from all segments
        write_s = time.perf_counter() - started
        windows[0] += 1
        rss, peak = sampler.proc.memory_info().rss / MB, sampler.take() / MB
        used, free = heap()
        py_now, py_peak = (x / MB for x in tracemalloc.get_traced_memory()) if args.tracemalloc else (0.0, 0.0)
        if args.tracemalloc:
            tracemalloc.reset_peak()
            # Keep two snapshots only (the first window's and the latest): each holds every live
            # trace, ~12 MB of Python objects here, so keeping them all would itself grow RSS.
            snapshots[min(len(snapshots), 1):] = [tracemalloc.take_snapshot()]
        print(f"{windows[0]:>6} {sink.frames_written:>6} {rss:7.0f} {peak:7.0f} {used:9.0f} {free:9.0f} "
              f"{py_now:9.1f} {py_peak:10.1f} {write_s:12.3f}", flush=True)

    FrameSink.end_window = hooked  # type: ignore[method-assign]
    # The same job as benchmarks/extend_memory.py runs for "ours".
    argv = ["extend", "a red fox running through snow", "--model", str(model), "--device", "cpu",
            "--frames", str(args.frames), "--base-frames", str(args.base_frames), "--overlap", str(args.overlap),
            "--steps", "1", "--height", str(args.size), "--width", str(args.size), "--seed", "0",
            "--negative-prompt", "blurry noise", "--shift", "1", "--sigma-grid", "diffusers", "--addnoise", "0",
            "-o", os.path.join(tmp.name, "out.mp4"), "--overwrite", "--quiet"]
    with tmp:
        cli.app(args=argv, prog_name="skyreels", standalone_mode=False)
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"kernel high-water mark of this process: {high_water:.0f} MB")
    if len(snapshots) == 2:
        print("\nPython allocations that grew most from the first window to the last one:")
        for stat in snapshots[1].compare_to(snapshots[0], "lineno")[:8]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB  {stat.count_diff:+6d} blocks  {stat.traceback[0]}")


if __name__ == "__main__":
    main()
