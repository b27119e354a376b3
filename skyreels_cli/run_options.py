"""How a model is loaded and runs: one table of the run options, and `LoadOptions`, a frozen set of them.

Everything that names a run option is derived from `RUN_OPTIONS`: the fields of `LoadOptions` and the
keywords of `load()`, the command line's flags (cli/flags.py), the planner's choices (`PLAN_FIELDS`,
runtime/plan.py), what each sidecar records as `run.runtime` (`RECORDED`) and the keys batch files and
shot lists accept. The value vocabularies (offloads, weight storages, kernels...) are here too, so that
this module needs no torch: `skyreels --help` builds its flags from it without waiting for torch.

    options = LoadOptions(offload="group", quantize="fp8")
    LoadOptions.from_dict(options.to_dict()) == options
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import UsageError, setting

AUTO = "auto"
OFFLOADS = ("none", "model", "group", "sequential")  # fastest first (runtime/plan.py `speed_rank`)
QUANTIZES = ("none", "fp8", "int8")
CFGS = ("separate", "batched")
# "auto": the run's device, only while it encodes (kept on the host between prompts); "disk": the same, but read
# from the checkpoint folder for each prompt not yet encoded and freed after (for a host short of memory); "cpu"
TEXT_ENCODER_DEVICES = ("auto", "disk", "cpu")
KERNELS = ("sdpa", "flash", "flash3", "sage", "xformers")  # runtime/attention.py describes each
DTYPES = ("bf16", "fp16", "fp32")
OPTIONS_VERSION = 1


@dataclass(frozen=True)
class RunOption:
    """One run option: its name (a `LoadOptions` field, a `load()` keyword, a file key) and what it takes."""

    name: str
    default: Any
    type: type                      # of one value: str, bool, int or float (loras: a tuple of str)
    help: str                       # the command line's help, one sentence or two
    choices: tuple[str, ...] = ()   # the values a text option takes, "auto" first where it is the planner's
    plan: bool = False              # a memory-plan field: "auto" (or None) is the planner's to choose
    recorded: bool = False          # in each sidecar's `run.runtime`, as the model ran it
    short: str | None = None        # the command line's short flag
    repeatable: bool = False        # given several times (--lora A --lora B), a tuple of values


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("device", AUTO, str, "auto (CUDA when visible; the CPU for tiny models), cuda, cuda:N or cpu.",
              short="-d"),
    RunOption("dtype", None, str, "bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU).", choices=DTYPES),
    RunOption("offload", AUTO, str, "Memory plan: auto (the fastest that fits the GPU), none, model, group or "
              "sequential; see `skyreels plan`.", choices=(AUTO, *OFFLOADS), plan=True, recorded=True),
    RunOption("quantize", AUTO, str, "Transformer weights: auto (bf16 unless only fp8 keeps them on the GPU), "
              "none (bf16), fp8 (stored in fp8, computed in bf16) or int8 (torchao).", choices=(AUTO, *QUANTIZES),
              plan=True, recorded=True),
    RunOption("cfg", AUTO, str, "Guidance passes: auto, batched (one forward of two, faster, more memory) or "
              "separate.", choices=(AUTO, *CFGS), plan=True, recorded=True),
    RunOption("tiled_decode", None, bool, "Decode in spatial tiles (default: only when the whole frame would not "
              "fit).", plan=True, recorded=True),
    RunOption("text_encoder_device", AUTO, str, "Where the text encoder runs: auto (the run's device, only while "
              "it encodes), disk (the same, read from the checkpoint for each new prompt and freed after: less host "
              "memory) or cpu.", choices=TEXT_ENCODER_DEVICES, plan=True, recorded=True),
    RunOption("vram_gb", None, float, "GPU memory in GB to plan for (default: the GPU's free memory)."),
    RunOption("attention", AUTO, str, "Attention kernel: auto (fastest installed), sdpa, flash, flash3, sage or "
              "xformers.", choices=(AUTO, *KERNELS), recorded=True),
    RunOption("compile", False, bool, "Compile the transformer's blocks with torch.compile (slow first window, "
              "faster after).", recorded=True),
    RunOption("loras", (), str, "A LoRA for the transformer: FILE.safetensors, a folder or a Hub repo id, with "
              ":SCALE to weight it (e.g. style.safetensors:0.8); repeatable. Refused whole if any layer does not "
              "fit the model.", repeatable=True),
    RunOption("accelerator", None, str, "A few-step accelerator from the registry (lightx2v, causvid; tiny for "
              "the tiny models): its LoRA for this model and its steps, noise levels, sampler, guidance and shift "
              "as defaults (each flag given still wins; the strength follows --steps where its authors publish a "
              "table, NAME:STRENGTH fixes it); `skyreels models` lists them."),
    RunOption("ulysses", None, int, "Processes sharing attention heads (Ulysses); default: as many as the head "
              "count allows."),
    RunOption("ring", None, int, "Processes passing keys and values round (ring attention); --ulysses x --ring = "
              "processes."),
)
BY_NAME = {option.name: option for option in RUN_OPTIONS}
PLAN_FIELDS = tuple(o.name for o in RUN_OPTIONS if o.plan)  # what a MemoryPlan holds
RECORDED = tuple(o.name for o in RUN_OPTIONS if o.recorded)  # the sidecar's run.runtime


def check_value(option: RunOption, value: Any) -> Any:
    """`value` as the option stores it (a list of LoRAs as a tuple, 5 as 5.0), or a one-line UsageError."""
    name = option.name

    def wrong(what: str) -> UsageError:
        return UsageError(f"{setting(name, value)}: {what}", field=name)

    if option.repeatable:
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
            raise wrong("give text, or a list of text")
        return tuple(items)
    if value is None and option.default is None:
        return None
    if option.type is bool:
        if not isinstance(value, bool):
            raise wrong("give true or false")
        return value
    if option.type in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (option.type is int and not isinstance(value, int)):
            raise wrong("give a whole number" if option.type is int else "give a number")
        if not math.isfinite(value) or value <= 0:
            raise wrong("give a positive number")
        return option.type(value)
    if not isinstance(value, str):
        raise wrong("give text")
    if option.choices and value not in option.choices:
        raise UsageError(f"{setting(name, value, quoted=True)} is not known; use one of {', '.join(option.choices)}",
                         field=name)
    return value


def _check(self) -> None:
    for option in RUN_OPTIONS:
        object.__setattr__(self, option.name, check_value(option, getattr(self, option.name)))


def _to_dict(self) -> dict:
    """Plain data (JSON and TOML can hold it), versioned."""
    data = {o.name: list(v) if isinstance(v := getattr(self, o.name), tuple) else v for o in RUN_OPTIONS}
    return {"version": OPTIONS_VERSION, **data}


def _from_dict(cls, data: dict):
    """The options `to_dict` gave (missing names: their defaults); an unknown name is refused by name."""
    data = dict(data)
    version = data.pop("version", OPTIONS_VERSION)
    if version != OPTIONS_VERSION:
        raise UsageError(f"load options version {version} is not supported (this skyreels reads {OPTIONS_VERSION})")
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise UsageError(f"unknown load option {unknown[0]!r}; known: {', '.join(BY_NAME)}", field=unknown[0])
    return cls(**data)


def _given(self) -> dict:
    """The options set to something other than their default, by name."""
    return {o.name: getattr(self, o.name) for o in RUN_OPTIONS if getattr(self, o.name) != o.default}


def _plan_fields(self) -> dict:
    """The memory-plan choices the caller fixed (not "auto"/None): the planner's constraints."""
    return {name: getattr(self, name) for name in PLAN_FIELDS if getattr(self, name) not in (AUTO, None)}


LoadOptions = dataclasses.make_dataclass(
    "LoadOptions",
    [(o.name, o.type if not o.repeatable else tuple, dataclasses.field(default=o.default)) for o in RUN_OPTIONS],
    frozen=True,
    namespace={"__post_init__": _check, "to_dict": _to_dict, "from_dict": classmethod(_from_dict),
               "given": _given, "plan_fields": _plan_fields},
)
LoadOptions.__module__ = __name__
LoadOptions.__doc__ = (
    "How a checkpoint is loaded and run, frozen: " + ", ".join(o.name for o in RUN_OPTIONS)
    + " (RUN_OPTIONS says what each takes). Every field left at its default is decided at load time: "
    "\"auto\" memory-plan fields by the planner, the device by what is visible.")
