"""The `skyreels` command line: a thin client of the library (commands parse, then call it)."""

from __future__ import annotations

from . import batch, generate, info, manage, plan, remote, serve  # noqa: F401  (registers the commands, in the order --help lists them)
from .app import app, fence_all_examples
from .parse_errors import bad_number_message, plain_number_errors

plain_number_errors()
fence_all_examples(app)


def main() -> None:
    """Run the command line; usage errors from the parser get the same one-line form as ours."""
    import sys
    from contextlib import nullcontext

    from ..errors import SkyreelsError
    from ..runtime.launch import launch, launched_by_torchrun, strip_gpus  # torch-free: see runtime/launch.py
    from .app import interrupted
    from .interrupt import responsive_ctrl_c

    # `serve --gpus` chooses its workers' GPUs itself; with --server, --gpus is the service's job's to use
    keep = _command(sys.argv[1:]) == "serve" or any(a == "--server" or a.startswith("--server=") for a in sys.argv)
    try:
        gpus, argv = strip_gpus(sys.argv[1:]) if not keep else (None, sys.argv[1:])
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
    command = _command(argv)
    # serve stops on Ctrl-C and SIGTERM by its own server's handlers; a run stops at its next step
    watch = responsive_ctrl_c(interrupted(command)) if command != "serve" else nullcontext()
    try:
        with watch:
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


def _command(argv: list[str]) -> str:
    return next((arg for arg in argv if not arg.startswith("-")), "")
