"""Silencing third-party progress bars, log lines and warnings while the user asked for quiet."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import SkyreelsWarning


@contextmanager
def third_party_quiet(enabled: bool = True) -> Iterator[None]:
    """diffusers', transformers' and huggingface-hub's bars and warnings off inside; restored after."""
    if not enabled:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(),
             tlog.is_progress_bar_enabled(), are_progress_bars_disabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Ours are for the user: whoever asked for quiet filters them itself (the CLI's --quiet does).
            warnings.simplefilter("always", SkyreelsWarning)
            yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        if saved[2]:
            dlog.enable_progress_bar()
        if saved[3]:
            tlog.enable_progress_bar()
        if not saved[4]:
            enable_progress_bars()
