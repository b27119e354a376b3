"""Ctrl-C that works at any size.

Python runs a signal handler only between bytecodes, so Ctrl-C during one long native operation
(the attention of a huge frame) waits until it returns. Here a helper thread receives SIGINT
itself: the first Ctrl-C interrupts the run at the next step (the usual, tidy way), a second one
ends the process at once. Both leave the saved state consistent: every file the run keeps is
written whole or not at all (tests/test_reliability.py kills runs at many points).
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# While set (`ctrl_c_stops`), the first Ctrl-C calls it instead of interrupting: a live run ends cleanly
_stop: Callable[[], None] | None = None


@contextmanager
def ctrl_c_stops(stop: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C calls `stop` (a live run's cancel: it ends with everything made kept)."""
    global _stop
    _stop = stop
    try:
        yield
    finally:
        _stop = None


@contextmanager
def responsive_ctrl_c(message_now: str) -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    done = threading.Event()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # threads started now inherit it

    def watch() -> None:
        presses = 0
        while True:
            signal.sigwait({signal.SIGINT})
            if done.is_set():
                return
            presses += 1
            if presses == 1 and _stop is not None:
                print("stopping after the window being made... (Ctrl-C again to stop at once)", file=sys.stderr,
                      flush=True)
                _stop()
            elif presses == 1:
                print("stopping at the next step... (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
                _thread.interrupt_main()
            else:
                print(message_now, file=sys.stderr, flush=True)
                os._exit(130)

    watcher = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.pthread_kill(watcher.ident, signal.SIGINT)  # wakes the watcher, which sees `done` and returns
        watcher.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
