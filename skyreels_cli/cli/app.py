"""The Typer application, and the one place where library errors become one-line messages."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from ..errors import SkyreelsError, SkyreelsWarning, command_line_spelling, kept_after_stop

app = typer.Typer(
    name="skyreels",
    help="Turn the released SkyReels-V2 checkpoints into video files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs reflow, and [[job]] in an example stays as written
    context_settings={"help_option_names": ["-h", "--help"]},
)

def fence_examples(help_text: str | None) -> str | None:
    """A command's help with each indented block (its examples, an example file) fenced as code.

    Typer reflows what follows the first paragraph through `inspect.cleandoc`, which strips the indent common
    to all but its first line: when every later line is an example, the examples lose their indent and run
    together into one line. A fenced block keeps its lines whatever the indent."""
    if not help_text:
        return help_text
    out: list[str] = []
    in_block = False
    for line in inspect.cleandoc(help_text).splitlines():
        indented = line.startswith("    ")
        if indented and not in_block and (not out or not out[-1].strip()):
            out.append("```")
            in_block = True
        elif in_block and line.strip() and not indented:
            out[-1:] = ["```", ""] if not out[-1].strip() else [*out[-1:], "```"]
            in_block = False
        out.append(line[4:] if in_block else line)
    if in_block:
        while out and not out[-1].strip():
            out.pop()
        out.append("```")
    return "\n".join(out)


def fence_all_examples(typer_app: typer.Typer) -> None:
    """`fence_examples` on the help of every command registered so far."""
    for info in typer_app.registered_commands:
        info.help = fence_examples(info.help or (info.callback and info.callback.__doc__))


def interrupted(command: str) -> str:
    """The line after Ctrl-C: what the command leaves behind (only extend saves state to continue from)."""
    with command_line_spelling():
        return f"interrupted; {kept_after_stop(command == 'extend')}"


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"skyreels {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Turn the released SkyReels-V2 checkpoints into video files."""


@contextmanager
def user_errors(command: str = "", quiet: bool = False) -> Iterator[None]:
    """Library errors become one line on stderr and an exit code; SKYREELS_DEBUG=1 shows the traceback.
    The library's warnings become `warning: ...` lines on stderr (none when `quiet`); messages name
    settings as flags (`--frames 17`)."""
    try:
        with _warnings_as_lines(quiet), command_line_spelling():
            yield
    except SkyreelsError as exc:
        if os.environ.get("SKYREELS_DEBUG"):
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(interrupted(command), err=True)
        raise typer.Exit(130) from None


@contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """SkyreelsWarnings as one line each on stderr, each message once (none when `quiet`); others as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet else "always", SkyreelsWarning)
        shown, said = warnings.showwarning, set()

        def show(message, category, *args, **kwargs) -> None:
            if not issubclass(category, SkyreelsWarning):
                shown(message, category, *args, **kwargs)
            elif str(message) not in said:  # checked, then checked again when it runs: said once
                said.add(str(message))
                typer.echo(f"warning: {message}", err=True)

        warnings.showwarning = show
        yield
