"""The `skyreels` command line: a thin client of the library (commands parse, then call it)."""

from __future__ import annotations

from . import batch, generate, info, manage, plan  # noqa: F401  (registers the commands, in the order --help lists them)
from .app import app

# A value that shows what a number option takes, for the parser's "not a number" messages.
EXAMPLES = {
    "--frames": "97", "--seconds": "4", "--steps": "30", "--seed": "42", "--height": "544", "--width": "960",
    "--fps": "24", "--guidance": "6.0", "--shift": "8.0", "--base-frames": "97", "--overlap": "17",
    "--ar-step": "5", "--causal-block": "5", "--addnoise": "20", "--cache": "0.05", "--vram": "24", "--gpus": "2",
    "--ulysses": "2", "--ring": "2",
}


def bad_number_message(exc: BaseException) -> str | None:
    """The parser's failed number conversion as a plain line, e.g. `--frames '1e9' is not a whole number; e.g.
    --frames 97`; None for any other error.

    Typer converts option values with pydantic and reports its wording ("Input should be a valid integer, unable
    to parse string as an integer"); the pydantic error it raises from says which value and which kind of number."""
    errors = getattr(exc.__cause__, "errors", None)
    param = getattr(exc, "param", None)
    if not callable(errors) or param is None or type(exc.__cause__).__name__ != "ValidationError":
        return None
    try:
        first = errors()[0]
    except (IndexError, TypeError, ValueError):
        return None
    kind = str(first.get("type", ""))
    if not kind.startswith(("int_", "float_")):
        return None
    names = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")] or list(getattr(param, "opts", []))
    name = max(names, key=len) if names else (param.human_readable_name or "value")
    what = "a whole number" if kind.startswith("int_") else "a number"
    example = EXAMPLES.get(name)
    return f"{name} {str(first.get('input'))!r} is not {what}" + (f"; e.g. {name} {example}" if example else "")


def _plain_number_errors() -> None:
    """Have the parser's bad-number errors say `bad_number_message`, wherever they are shown: by `main` below
    (the installed command) and by Typer's own error display (`app(...)` in-process, as CliRunner calls it). Both
    print `format_message()`, so that is where the message is replaced (only for those errors)."""
    import typer

    shown = typer.BadParameter.format_message  # Typer's own (vendored) click class, the one its parser raises
    if getattr(shown, "skyreels", False):
        return

    def format_message(self) -> str:
        return bad_number_message(self) or shown(self)

    format_message.skyreels = True
    typer.BadParameter.format_message = format_message


_plain_number_errors()


def main() -> None:
    """Run the command line; usage errors from the parser get the same one-line form as ours."""
    import sys

    from ..errors import SkyreelsError
    from ..runtime.launch import launch, launched_by_torchrun, strip_gpus  # torch-free: see runtime/launch.py
    from .app import INTERRUPTED, INTERRUPTED_DEFAULT
    from .interrupt import responsive_ctrl_c

    try:
        gpus, argv = strip_gpus(sys.argv[1:])
    except SkyreelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if gpus is not None and gpus > 1 and not launched_by_torchrun():
        try:  # torchrun starts one process per GPU, each running this command without --gpus
            sys.exit(launch(gpus, argv))
        except SkyreelsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
    sys.argv[1:] = argv
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    try:
        with responsive_ctrl_c(INTERRUPTED.get(command, INTERRUPTED_DEFAULT)):
            code = app(prog_name="skyreels", standalone_mode=False)
    except Exception as exc:  # the parser's usage errors carry a message and an exit code
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        message = (bad_number_message(exc) or exc.format_message()).rstrip(".")
        if not message:  # no arguments at all: the help was printed
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "skyreels"
        print(f"error: {message}; see {where} --help", file=sys.stderr)
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
