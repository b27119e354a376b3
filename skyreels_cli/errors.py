"""The exceptions the library raises for problems a user can fix.

The CLI turns each into one line on stderr and an exit code; a Python caller
gets a normal exception with the same message.
"""


class SkyreelsError(Exception):
    """A problem with the user's input or environment: message says what and how to fix it."""

    exit_code = 2


class UsageError(SkyreelsError):
    """A bad option value or combination."""


class ModelError(SkyreelsError):
    """An unknown model, a model of the wrong kind, or one that cannot be found or loaded."""


class InputFileError(SkyreelsError):
    """An image or video given as input that is missing or unreadable."""


class OutputError(SkyreelsError):
    """An output path that exists already or cannot be written."""


class DeviceError(SkyreelsError):
    """A device that was asked for but is not there."""


class ResumeError(SkyreelsError):
    """A --resume that has no saved state or whose settings differ."""


class OutOfMemory(SkyreelsError):
    """The GPU ran out of memory; the message names a plan predicted to fit."""


class PeerLost(SkyreelsError):
    """Another process of a context-parallel run stopped (it, or its machine, says why)."""

    exit_code = 1


class SkyreelsWarning(UserWarning):
    """Something a user may not expect (an input changed on the way in, a prompt cut short); the run goes on.

    The CLI prints each as one `warning: ...` line on stderr (none with --quiet); a Python caller gets
    an ordinary warning it can filter, record or turn into an error with the `warnings` module.
    """


def warn(message: str) -> None:
    """Say `message` once as a SkyreelsWarning (one line: what happened and what to do about it)."""
    import warnings

    warnings.warn(SkyreelsWarning(message), stacklevel=2)
