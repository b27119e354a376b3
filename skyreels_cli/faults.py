"""Named points where a test can make a run die hard, at a chosen moment instead of after a sleep.

`SKYREELS_FAULT=NAME:N` ends the process with exit code 137 (as SIGKILL would) the N-th time
the point NAME is reached; `NAME:N:hang` blocks there in native code instead, as one very long
operation would (the process stays alive and its other threads run: a rank of a parallel run keeps beating
while it stalls, so `step_done:2:hang` makes the stall the watchdog must catch); `NAME:N:raise` raises an
OSError there instead, as a failing disk would (the run fails, the process lives on). With `SKYREELS_FAULT_RANK=R` it fires only in rank R of a process group (the process whose
`RANK` is R), so a test can make one process of a context-parallel run die. Unset, every point is a no-op.
"""

from __future__ import annotations

import os
from collections import Counter

_hits: Counter[str] = Counter()


def point(name: str) -> None:
    wanted = os.environ.get("SKYREELS_FAULT")
    if not wanted:
        return
    rank = os.environ.get("SKYREELS_FAULT_RANK")
    if rank is not None and os.environ.get("RANK") != rank:
        return
    _hits[name] += 1
    target, _, count = wanted.partition(":")
    count, _, action = count.partition(":")
    if target == name and _hits[name] == int(count or 1):
        if action == "hang":  # stand-in for one long native operation: blocks outside Python
            import ctypes
            import sys

            print(f"fault: hanging at {name}", file=sys.stderr, flush=True)
            ctypes.CDLL(None).sleep(3600)
        if action == "raise":
            raise OSError(f"fault injected at {name}")
        os._exit(137)
