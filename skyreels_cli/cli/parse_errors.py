"""The parser's own usage errors in our one-line form: a value that is no number says so plainly."""

from __future__ import annotations

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


def plain_number_errors() -> None:
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
