"""Flags made from tables, so that no command lists them: the run options' (`run_options.RUN_OPTIONS`) and
the request fields' a command's job takes (`options.REQUEST_FLAGS` for core/job.py `COMMAND_FIELDS`).

    @app.command()
    @with_run_flags()
    @with_request_flags("t2v")
    def t2v(prompt: ..., *, fields: dict, load: dict) -> None:   # each by name

Each decorator adds its flags to the command's signature (what Typer reads) and hands the command their
values in one dict.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Annotated, Optional

import typer

from ..errors import FLAGS
from ..run_options import RUN_OPTIONS, RunOption


def flag(option: RunOption, given_only: bool = False) -> inspect.Parameter:
    """The Typer parameter of one run option (`given_only`: default None, so only a flag given counts)."""
    long = FLAGS.get(option.name, "--" + option.name.replace("_", "-"))
    names = [long] + ([option.short] if option.short else [])
    if option.type is bool and option.default is None:
        names = [f"{long}/--no-{long[2:]}"]
    if option.repeatable:
        kind, default = list[str] | None, None
    elif option.type is bool and option.default is False and not given_only:
        kind, default = bool, False
    else:
        kind = Optional[option.type]
        default = None if given_only or option.default is None else option.default
    annotation = Annotated[kind, typer.Option(*names, help=option.help, show_default=default not in (None, False))]
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def with_run_flags(names: Collection[str] | None = None, *, given_only: bool = False) -> Callable:
    """Add the run options (those in `names`, default all) to a command as flags; the command gets them as
    `load`, a dict by option name (with `given_only`, only those given on the command line)."""
    options = [o for o in RUN_OPTIONS if names is None or o.name in names]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "load"]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            load = {o.name: kwargs.pop(o.name) for o in options}
            if given_only:
                load = {name: value for name, value in load.items() if value is not None}
            for o in options:  # a repeated flag never given is the option's empty tuple
                if o.repeatable and o.name in load and load[o.name] is None:
                    load[o.name] = o.default
            return command(*args, **kwargs, load=load)

        parameters = own + [flag(o, given_only) for o in options]
        wrapper.__signature__ = signature.replace(parameters=_ordered(parameters))
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def with_request_flags(command_name: str) -> Callable:
    """Add a flag for each request field of `command_name`'s jobs that the command does not take itself
    (its arguments); the command gets the fields given (not None) as `fields`, by name."""
    from ..core.job import COMMAND_FIELDS
    from .options import FLAG_DEFAULTS, REQUEST_FLAGS

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "fields"]
        names = [name for name in COMMAND_FIELDS[command_name] if name in REQUEST_FLAGS
                 and name not in signature.parameters]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            given = {name: kwargs.pop(name) for name in names}
            fields = {name: _field_value(name, value) for name, value in given.items()
                      if value is not None and value != FLAG_DEFAULTS.get(name)}
            return command(*args, **kwargs, fields=fields)

        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=FLAG_DEFAULTS.get(name),
                                   annotation=REQUEST_FLAGS[name]) for name in names]
        arguments = [p for p in own if _is_argument(p)]  # --help lists: arguments, request flags, the rest
        parameters = arguments + added + [p for p in own if not _is_argument(p)]
        wrapper.__signature__ = signature.replace(parameters=_ordered(parameters))
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def _is_argument(parameter: inspect.Parameter) -> bool:
    return any(isinstance(meta, typer.models.ArgumentInfo) for meta in getattr(parameter.annotation, "__metadata__", ()))


def _field_value(name: str, value):
    if name == "color_match":  # the flag switches on the default mode
        from ..media.colour import DEFAULT_MODE

        return DEFAULT_MODE
    return value


def _ordered(parameters: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """As given, every parameter keyword-only (Typer passes them by name; a signature needs no order then)."""
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
