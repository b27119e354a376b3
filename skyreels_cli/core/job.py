"""`Job`: one video to make, completely: which command, on which model, loaded how, the request, the output.

The one unit of work every caller hands to the library: a command of the CLI builds one from its flags, a
batch file gives one per `[[job]]` (core/batch.py), a Python caller builds one directly, and a service
would keep them in its queue as `to_dict()`:

    job = sk.Job("extend", sk.Request(prompt="a fox in the snow", frames=257), model="df-1.3b-540p",
                 load=sk.LoadOptions(offload="group"), output="fox.mp4")
    result = sk.run(job)                  # or: sk.load(job.model, options=job.load).generate(job)
    sk.Job.from_dict(job.to_dict()) == job
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UsageError, setting
from ..run_options import BY_NAME, LoadOptions
from .request import Request

JOB_VERSION = 1
COMMANDS = ("t2v", "i2v", "extend")
# The request fields each command takes (the CLI's flags of each command are these, tests/test_cli.py checks).
_EVERY = ("prompt", "seed", "steps", "guidance", "shift", "height", "width", "frames", "seconds", "fps",
          "negative_prompt", "sigma_grid", "sampler", "sigmas", "cache", "resolution", "aspect")
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "t2v": _EVERY,
    "i2v": (*_EVERY, "image"),
    "extend": (*_EVERY, "image", "end_image", "video", "base_frames", "overlap", "ar_step", "causal_block",
               "addnoise", "causal_attention", "color_match", "shots", "live"),
}
# The job's own settings in a flat table (besides its command, request fields and load options).
JOB_SETTINGS = ("model", "output", "output_dir", "overwrite", "resume", "enhance", "keep_last")


def settings_names(command: str) -> tuple[str, ...]:
    """Every name `Job.from_settings(command, ...)` takes: the command's request fields, the load options and
    the job's own settings. What batch files and shot lists accept is this."""
    return (*COMMAND_FIELDS[command], *BY_NAME, *JOB_SETTINGS)


@dataclass(frozen=True)
class Job:
    command: str                    # t2v | i2v | extend
    request: Request                # as given: unset fields take the model's defaults when it runs
    model: str | None = None        # registry alias, Hub repo id or local folder; None: the command's default
    load: LoadOptions = LoadOptions()
    output: str | None = None       # NAME.mp4, or DIR/ for PNG frames; None: a default name in `output_dir`
    output_dir: str | None = None   # where a default-named output goes (None: outputs/ in the current folder)
    overwrite: bool = False         # replace an existing output
    resume: bool = False            # continue the interrupted run writing to `output`
    enhance: str | None = None      # rewrite the prompt first with this enhancer ("default": the registry's)
    keep_last: float | None = None  # a live job's HLS segments kept on disk: the last this many seconds (None: all)
    # What the video's tag says in place of text of this machine ({server path: name}): a service's uploads by
    # their fields, its folder unnamed, so the MP4 (and its preview) a client downloads names no server path.
    tag_names: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise UsageError(f"Job.command {self.command!r} is not one of {', '.join(COMMANDS)}", field="command")
        if not isinstance(self.request, Request):
            raise UsageError(f"Job.request must be a skyreels Request, got {type(self.request).__name__}: build one "
                             "with sk.Request(prompt=...) or sk.Request.from_dict(data)", field="request")
        if not isinstance(self.load, LoadOptions):
            raise UsageError(f"Job.load must be LoadOptions, got {type(self.load).__name__}: build them with "
                             "sk.LoadOptions(offload=...) or sk.LoadOptions.from_dict(data)", field="load")
        for name in ("model", "output", "output_dir", "enhance"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
            elif value is not None and not isinstance(value, str):
                raise UsageError(f"Job.{name} must be text, got {value!r}", field=name)
        if self.request.live and self.command != "extend":
            raise UsageError(f"{setting('live', True)} continues a video window by window without end: it is for "
                             f"extend, not {self.command}", field="live")
        if self.keep_last is not None and (isinstance(self.keep_last, bool) or not isinstance(self.keep_last, (int, float))
                                           or not 0 < self.keep_last < float("inf")):
            raise UsageError(f"{setting('keep_last', self.keep_last)} must be a positive number of seconds",
                             field="keep_last")
        if self.keep_last is not None and not self.request.live:
            raise UsageError(f"{setting('keep_last')} bounds a live job's segments on disk; give {setting('live', True)} "
                             f"too, or leave {setting('keep_last')} out",
                             field="keep_last")
        if self.tag_names is not None and not (isinstance(self.tag_names, dict) and all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.tag_names.items())):
            raise UsageError(f"Job.tag_names must map text to text, got {self.tag_names!r}", field="tag_names")
        for name in ("overwrite", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"Job.{name} must be True or False, got {getattr(self, name)!r}", field=name)

    def to_dict(self) -> dict:
        """Plain data (JSON, TOML), versioned; `from_dict` gives the same job back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"version": JOB_VERSION, **data, "load": self.load.to_dict(), "request": self.request.to_dict()}

    @classmethod
    def from_settings(cls, command: str, settings: dict) -> Job:
        """A job from one flat table of named settings, as a batch file's `[[job]]` or a form gives them: the
        command's request fields, load options, and model, output, output_dir, overwrite, resume, enhance
        (true: the registry's enhancer, or its name). An unknown name is refused by name; a value that does not
        fit is refused naming its field (`err.field`)."""
        if command not in COMMANDS:
            raise UsageError(f"command {command!r} is not one of {', '.join(COMMANDS)}", field="command")
        names = settings_names(command)
        unknown = [name for name in settings if name not in names]
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r} for {command}; known: {', '.join(sorted(names))}",
                             field=unknown[0])
        request = Request(**{k: v for k, v in settings.items() if k in COMMAND_FIELDS[command]})
        load = LoadOptions(**{k: v for k, v in settings.items() if k in BY_NAME})
        own = {k: v for k, v in settings.items() if k in JOB_SETTINGS}
        enhance = own.get("enhance")
        if isinstance(enhance, bool):
            own["enhance"] = "default" if enhance else None
        return cls(command, request, load=load, **own)

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        """The job `to_dict` gave; an unknown key is refused by name."""
        data = dict(data)
        version = data.pop("version", JOB_VERSION)
        if version != JOB_VERSION:
            raise UsageError(f"job version {version} is not supported (this skyreels reads {JOB_VERSION})")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"unknown job key {unknown[0]!r}; known keys: {', '.join(known)}", field=unknown[0])
        if "request" not in data or "command" not in data:
            raise UsageError("a job needs a command and a request", field="request" if "command" in data else "command")
        data["request"] = Request.from_dict(data["request"])
        if "load" in data:
            data["load"] = LoadOptions.from_dict(data["load"])
        return cls(**data)
