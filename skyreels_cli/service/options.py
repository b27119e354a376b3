"""Every field of a submission described from the library's tables: the page builds its form from this
(`GET /v1/options`), and the OpenAPI schema its request body. Nothing here lists a field by hand: the request
fields come from `core/job.py` (`COMMAND_FIELDS`) and `core/request.py` (`FIELD_TYPES`), the run options from
`run_options.RUN_OPTIONS`, the service's own from `fields.py`.
"""

from __future__ import annotations

from ..core.job import COMMAND_FIELDS, COMMANDS
from ..core.request import FIELD_TYPES, PATH_FIELDS
from ..core.sizes import ASPECTS, NATIVE
from ..errors import HTTP_FIELDS
from ..run_options import BY_NAME
from .fields import CLIENT_LOAD_OPTIONS, PRIORITY_RANGE, Offer

TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", tuple: "array"}
# Values a text field takes, where the library has them as a table.
CHOICES = {"aspect": tuple(ASPECTS), "resolution": tuple(NATIVE), "sigma_grid": ("official", "diffusers"),
           "sampler": ("unipc", "euler"),
           "color_match": ("off", "latent", "pixel")}
SERVICE = {
    "command": {"type": "string", "choices": list(COMMANDS), "help": "t2v, i2v or extend (default: i2v with an "
                "input_reference, else t2v)."},
    "model": {"type": "string", "help": "A model this service offers (GET /v1/models)."},
    "size": {"type": "string", "help": "WIDTHxHEIGHT, e.g. 960x544 (or width and height)."},
    "priority": {"type": "integer", "help": f"Higher runs first ({PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]}; "
                 "default 0); equal priorities run first in, first out."},
    "gpus": {"type": "integer", "help": "GPUs for this job (default 1): more split each step over that many "
             "workers of one machine (context parallelism, as skyreels --gpus N); it waits until they are free. "
             "With it, ulysses and ring choose the layout."},
    "script": {"type": "string", "help": "A shot list's TOML text ([[shot]] tables with a prompt and frames or "
               "seconds): one continuous extend video."},
    "enhance": {"type": "boolean", "help": "Rewrite the prompt with the registry's local LLM first."},
    "keep_last": {"type": "number", "help": "A live job's HLS segments kept on disk: the last this many seconds "
                  "(default: the service's --keep-last, else all). The video and its timeline keep everything."},
}


def field_info(name: str) -> dict:
    """What one request field or run option takes: its JSON type, its choices, its help (run options)."""
    if name in SERVICE:
        return dict(SERVICE[name])
    if name in BY_NAME:
        option = BY_NAME[name]
        info = {"type": TYPES[tuple if option.repeatable else option.type], "help": option.help, "group": "run"}
        if option.choices:
            info["choices"] = list(option.choices)
        if option.default not in (None, ()):
            info["default"] = option.default
        return info
    info = {"type": TYPES[FIELD_TYPES[name]] if name != "shots" else "array", "group": "request"}
    if name in CHOICES:
        info["choices"] = list(CHOICES[name])
    return info


def form_schema(offer: Offer) -> dict:
    """For the page: the fields of each command, what each takes, the models, LoRAs and uploads offered."""
    commands = {c: [n for n in COMMAND_FIELDS[c] if n not in PATH_FIELDS] for c in COMMANDS}
    names = dict.fromkeys(["command", "model", "size", "priority", "script", *[n for c in commands.values()
                                                                                 for n in c], *CLIENT_LOAD_OPTIONS])
    uploads = {c: [HTTP_FIELDS[n] for n in COMMAND_FIELDS[c] if n in PATH_FIELDS] for c in COMMANDS}
    return {"commands": commands, "uploads": uploads, "fields": {n: field_info(n) for n in names},
            "run_options": list(CLIENT_LOAD_OPTIONS), "models": offer.model_names(),
            "defaults": {c: offer.default_model(c) for c in COMMANDS}, "loras": list(offer.loras),
            "max_prompt_chars": offer.max_prompt_chars, "max_frames": offer.max_frames,
            "max_seconds": offer.max_seconds}


def submit_properties() -> dict:
    """The JSON schema properties of `POST /v1/videos`."""
    from .fields import known_fields

    out = {}
    for name in known_fields():
        info = field_info(name)
        prop = {"type": info["type"]}
        if "choices" in info:
            prop["enum"] = info["choices"]
        if info.get("help"):
            prop["description"] = info["help"]
        if prop["type"] == "array":
            prop["items"] = {"type": "object"} if name == "shots" else {"type": "string"}
        out[name] = prop
    out["prompt"]["description"] = "What the video shows."
    out["seconds"] = {"type": "string", "description": "Length in seconds (OpenAI sends it as text: \"4\")."}
    return out
