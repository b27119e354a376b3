"""What a `--model` value names: a registry alias or family, a Hub repo id, or a local folder, as a ModelSpec.

A checkpoint outside the registry runs the engine of its kind, read from its `model_index.json`: a
folder's own, or a Hub repo's (one small file, from the cache or downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError
from .hub import hub_errors, looks_like_repo_id
from .kinds import kind_of_pipeline, kinds_for
from .registry import ModelSpec, load_registry, unregistered


def resolve_model(name: str | None, command: str | None = None) -> ModelSpec:
    """Turn a `--model` value (alias, Hub repo id or local folder; None for the default) into a spec.

    `command` is the command that will run it (its kind is checked), or None to accept any kind.
    The kind of a Hub repo outside the registry is read from its model_index.json (one small file).
    """
    registry = load_registry()
    name = name or registry.defaults[command or "t2v"]
    if name in registry.families:
        family = registry.families[name]
        name = family[command] if command else next(iter(family.values()))
    spec = registry.models.get(name)
    if spec is None:
        spec = next((s for s in registry.models.values() if s.repo.lower() == name.lower()), None)
    if spec is None and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        spec = unregistered(str(folder), kind_of_folder(folder), folder)
    if spec is None and looks_like_repo_id(name):
        spec = unregistered(name, peek_kind(name))
    if spec is None:
        known = ", ".join(registry.names())
        raise ModelError(f"unknown model {name!r}; use one of: {known} (or a Hub repo id, or a local folder)")
    if command:
        check_kind(spec, command)
    return spec


def check_kind(spec: ModelSpec, command: str) -> None:
    allowed = kinds_for(command)
    if spec.kind not in allowed:
        registry = load_registry()
        fits = ", ".join(a for a, s in registry.models.items() if s.kind in allowed and not s.is_tiny)
        raise ModelError(
            f"model {spec.alias} is a {spec.kind} checkpoint and cannot run `skyreels {command}`; "
            f"use one of: {fits}"
        )


def kind_of_folder(folder: Path) -> str:
    """The checkpoint kind of a Diffusers-layout folder, read from its model_index.json."""
    return kind_of_index(folder / "model_index.json", str(folder))


def kind_of_index(index: Path, where: str) -> str:
    try:
        class_name = json.loads(Path(index).read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{where} is not a Diffusers checkpoint (no readable model_index.json)") from None
    kind = kind_of_pipeline(class_name)
    if kind is None:
        raise ModelError(f"{where} holds a {class_name}, not a SkyReels-V2 checkpoint")
    return kind.name


def peek_kind(repo: str, revision: str = "main") -> str:
    """The kind of a Hub repo outside the registry, from its model_index.json (cached, or one small download)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    found = try_to_load_from_cache(repo, "model_index.json", revision=revision)
    if not isinstance(found, str):
        with hub_errors(f"model {repo}", repo, revision, fetch=f"run `skyreels download {repo}`",
                        missing="run `skyreels models` for the known ones",
                        entry="has no model_index.json: it is not a Diffusers checkpoint"):
            found = hf_hub_download(repo, "model_index.json", revision=revision)
    return kind_of_index(Path(found), repo)
