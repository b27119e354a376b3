"""The `skyreels` command line: a thin client of the library (commands parse, then call it)."""

from __future__ import annotations

from . import generate, manage  # noqa: F401  (registers the commands, in the order --help lists them)
from .app import app


def main() -> None:
    app(prog_name="skyreels")
