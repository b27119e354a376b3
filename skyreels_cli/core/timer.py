"""Wall-clock seconds per phase of a run, recorded in the sidecar."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.marks[name] = round(self.marks.get(name, 0.0) + time.perf_counter() - start, 3)
