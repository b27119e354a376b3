"""Host memory policy of the `skyreels` process (the library leaves the allocator alone).

glibc raises its mmap threshold after a large free and then keeps blocks of
that size for reuse, so the resident size of a long run creeps up by a few
hundred MB although live memory is flat (benchmarks/RESULTS.md). For a long
`extend`, the command fixes the threshold at 1 MiB and trims the heap after
each window.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return None


def keep_host_memory_flat() -> None:
    """Large host buffers (a window's decoded frames) go straight back to the system when freed."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def release_freed_memory(*_window) -> None:
    """Return the heap's free tail to the system (called after each window)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
