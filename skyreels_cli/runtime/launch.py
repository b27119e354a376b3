"""Starting a run on several processes: the half of context parallelism that runs before torch is imported.

`skyreels ... --gpus N` re-runs the command under torchrun. This module must not import torch: the command
line's Ctrl-C handling blocks SIGINT in every thread before the run starts (cli/interrupt.py), and a thread
torch starts at import, before that, would take the signal and leave a run in native code deaf to Ctrl-C.
"""

from __future__ import annotations

import os
import sys

from ..errors import DeviceError, UsageError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def strip_gpus(argv: list[str]) -> tuple[int | None, list[str]]:
    """`--gpus N` (or `--gpus=N`) taken out of `argv`: (N or None, the rest)."""
    out, count, skip = [], None, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            if i + 1 >= len(argv):
                raise UsageError("--gpus needs a number of processes, e.g. --gpus 2")
            count, skip = argv[i + 1], True
        elif arg.startswith("--gpus="):
            count = arg.split("=", 1)[1]
        else:
            out.append(arg)
    if count is None:
        return None, out
    if not str(count).isdigit() or int(count) < 1:
        raise UsageError(f"--gpus takes a whole number of processes, not {count!r}")
    return int(count), out


def launch_command(count: int, argv: list[str]) -> list[str]:
    """torchrun on this machine (quiet about a failed process: runtime/torchrun.py), `count` processes, each
    running `python -m skyreels_cli` with `argv`."""
    return [sys.executable, "-m", "skyreels_cli.runtime.torchrun", "--standalone", f"--nproc-per-node={count}",
            "--monitor-interval=0.5", "-m", "skyreels_cli", *argv]


def launch(count: int, argv: list[str]) -> int:
    """Run `skyreels ARGV` on `count` local processes; returns torchrun's exit code.

    Checked first: `count` GPUs must be visible unless the command runs on the CPU (`--device cpu`).
    """
    import subprocess

    on_cpu = any(a in ("cpu", "--device=cpu") for a in argv) and ("--device" in argv or "-d" in argv
                                                                  or "--device=cpu" in argv)
    if not on_cpu:
        check_gpus(count)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads_per_process(count)))}
    return subprocess.call(launch_command(count, argv), env=env)


def threads_per_process(count: int, cpus: int | None = None) -> int:
    """The CPU threads each of `count` processes gets: an equal share of this machine's cores.

    Set before torchrun, which otherwise sets OMP_NUM_THREADS=1 for every process: rank 0 then encodes the
    prompts on one core when the text encoder runs on the CPU (minutes for UMT5-XXL instead of one), and a
    CPU run computes single-threaded. A user's own OMP_NUM_THREADS is kept.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // count)


def check_gpus(wanted: int) -> None:
    """One GPU per process. (torch is imported here, after the choice to launch: the launcher only waits.)"""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > visible:
        raise DeviceError(f"{wanted} processes on this machine but {visible} GPUs visible: one GPU per process; "
                          f"use --gpus {visible} or fewer" if visible else
                          f"{wanted} GPU processes asked for but no GPU is visible; add --device cpu to run on "
                          "the CPU")
