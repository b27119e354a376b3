"""The model registry: `weights.toml` as typed data, and `--model` resolution."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .errors import ModelError

KINDS = ("t2v", "i2v", "df", "flf2v")
# Which checkpoint kinds each command can run.
COMMAND_KINDS = {"t2v": ("t2v", "df", "flf2v"), "i2v": ("i2v",), "extend": ("df", "flf2v")}
# Diffusers pipeline class name -> kind, for repos and folders that are not in the registry.
PIPELINE_KINDS = {
    "SkyReelsV2Pipeline": "t2v",
    "SkyReelsV2ImageToVideoPipeline": "i2v",
    "SkyReelsV2DiffusionForcingPipeline": "df",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": "flf2v",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": "df",
}


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint and the settings its authors recommend for it."""

    alias: str
    repo: str
    revision: str
    kind: str
    size: str
    height: int
    width: int
    frames: int
    guidance: float
    shift: float
    steps: int
    fps: int
    vram_gb: float = 0.0
    local_path: Path | None = None  # set for a folder given with --model

    @property
    def is_tiny(self) -> bool:
        return self.size == "tiny"


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    defaults: dict[str, str]
    families: dict[str, dict[str, str]]

    def names(self) -> list[str]:
        return list(self.models) + list(self.families)


def _registry_file() -> Path:
    # Installed wheels carry the file inside the package; a source checkout has it at the top.
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights.toml", here.parent / "weights.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("weights.toml is missing from the installation; reinstall skyreels")


@lru_cache(maxsize=None)
def load_registry(path: Path | None = None) -> Registry:
    data = tomllib.loads((path or _registry_file()).read_text())
    models = {alias: ModelSpec(alias=alias, **fields) for alias, fields in data["models"].items()}
    for alias, spec in models.items():
        if spec.kind not in KINDS:
            raise ValueError(f"weights.toml: model {alias} has unknown kind {spec.kind!r}")
    return Registry(models=models, defaults=dict(data["defaults"]), families=dict(data.get("families", {})))


# Defaults for checkpoints outside the registry, by kind (official recommendations).
_KIND_DEFAULTS = {
    "t2v": dict(guidance=6.0, shift=8.0),
    "df": dict(guidance=6.0, shift=8.0),
    "i2v": dict(guidance=5.0, shift=5.0),
    "flf2v": dict(guidance=5.0, shift=5.0),
}


def kind_of_folder(folder: Path) -> str:
    """The checkpoint kind of a Diffusers-layout folder, read from its model_index.json."""
    index = folder / "model_index.json"
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{folder} is not a Diffusers checkpoint folder (no readable model_index.json)") from None
    if class_name not in PIPELINE_KINDS:
        raise ModelError(f"{folder} holds a {class_name}, not a SkyReels-V2 checkpoint")
    return PIPELINE_KINDS[class_name]


def _unregistered(name: str, kind: str, local_path: Path | None) -> ModelSpec:
    tiny = local_path is not None and (local_path / "tiny.json").is_file()
    if tiny:
        base = load_registry().models[f"tiny-{'df' if kind == 'flf2v' else kind}"]
        return replace(base, alias=name, repo=name, local_path=local_path)
    return ModelSpec(
        alias=name, repo=name, revision="main", kind=kind, size="?", height=544, width=960, frames=97,
        steps=30, fps=24, local_path=local_path, **_KIND_DEFAULTS[kind],
    )


def resolve_model(name: str | None, command: str | None) -> ModelSpec:
    """Turn a `--model` value (alias, Hub repo id or local folder; None for the default) into a spec.

    `command` is the command that will run it (its kind is checked), or None to accept any kind.
    Hub repo ids outside the registry get their kind once downloaded (see `with_kind`).
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
        spec = _unregistered(str(folder), kind_of_folder(folder), folder)
    if spec is None and name.count("/") == 1 and not name.startswith((".", "/")):
        # A Hub repo outside the registry: its kind is known once it is local (with_kind).
        spec = ModelSpec(
            alias=name, repo=name, revision="main", kind="?", size="?", height=544, width=960, frames=97,
            guidance=6.0, shift=8.0, steps=30, fps=24,
        )
    if spec is None:
        known = ", ".join(registry.names())
        raise ModelError(f"unknown model {name!r}; use one of: {known} (or a Hub repo id, or a local folder)")
    if spec.kind != "?" and command:
        check_kind(spec, command)
    return spec


def check_kind(spec: ModelSpec, command: str) -> None:
    allowed = COMMAND_KINDS[command]
    if spec.kind not in allowed:
        registry = load_registry()
        fits = ", ".join(a for a, s in registry.models.items() if s.kind in allowed and not s.is_tiny)
        raise ModelError(
            f"model {spec.alias} is a {spec.kind} checkpoint and cannot run `skyreels {command}`; "
            f"use one of: {fits}"
        )


def with_kind(spec: ModelSpec, folder: Path, command: str | None) -> ModelSpec:
    """Fill in the kind (and kind defaults) of a Hub repo outside the registry once it is local."""
    if spec.kind != "?":
        return spec
    kind = kind_of_folder(folder)
    spec = replace(spec, kind=kind, **_KIND_DEFAULTS[kind])
    if command:
        check_kind(spec, command)
    return spec
