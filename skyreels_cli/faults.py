"""Named points where a test can make a run die hard, at a chosen moment instead of after a sleep.

`SKYREELS_FAULT=NAME:N` ends the process with exit code 137 (as SIGKILL would) the N-th time
the point NAME is reached. Unset, every point is a no-op.
"""

from __future__ import annotations

import os
from collections import Counter

_hits: Counter[str] = Counter()


def point(name: str) -> None:
    wanted = os.environ.get("SKYREELS_FAULT")
    if not wanted:
        return
    _hits[name] += 1
    target, _, count = wanted.partition(":")
    if target == name and _hits[name] == int(count or 1):
        os._exit(137)
