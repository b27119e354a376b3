"""Is a checkpoint folder whole? Missing, truncated or corrupt files are named before anything loads.

A safetensors file starts with the length of its JSON header and the header gives every tensor's
byte range, so a truncated or damaged file is found from its first few kilobytes, without reading
the weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# Files each component must hold besides its weights (tokenizers: either form).
CONFIGS = {"scheduler": ("scheduler_config.json",), "image_processor": ("preprocessor_config.json",),
           "tokenizer": ("tokenizer.json", "spiece.model", "tokenizer_config.json")}
WEIGHTS = {"transformer", "vae", "text_encoder", "image_encoder"}
MAX_HEADER = 100_000_000


def problems(folder: Path) -> list[str]:
    """What is wrong with the checkpoint in `folder` (nothing: an empty list)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return [f"{folder / 'model_index.json'} is missing or unreadable"]
    found: list[str] = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        part = folder / name
        if not part.is_dir():
            found.append(f"{part} is missing")
            continue
        wanted = CONFIGS.get(name, ("config.json",))
        if not any((part / f).is_file() for f in wanted):
            found.append(f"{part / wanted[0]} is missing")
        if name in WEIGHTS:
            found += _weights_problems(part)
    return found


def _weights_problems(part: Path) -> list[str]:
    files = sorted(part.glob("*.safetensors"))
    found = []
    for index in part.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            found.append(f"{index} is unreadable")
            continue
        found += [f"{part / shard} is missing" for shard in sorted(shards) if not (part / shard).is_file()]
    if not files and not found:
        found.append(f"{part} has no .safetensors weights")
    for file in files:
        problem = safetensors_problem(file)
        if problem:
            found.append(f"{file} {problem}")
    return found


def safetensors_problem(path: Path) -> str | None:
    """None for a whole file; otherwise what is wrong with it ("is truncated (N of M bytes)", ...)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if not 0 < length < MAX_HEADER or 8 + length > size:
                return f"is truncated or corrupt (header of {length} bytes in a file of {size})"
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return "is unreadable (not a safetensors file)"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None
