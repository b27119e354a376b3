"""The model registry: `weights.toml` as typed data, and `--model` resolution."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..errors import ModelError
from .kinds import KINDS, kind_of_pipeline, kinds_for


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
    window: int | None = None  # diffusion forcing window in frames, when not `frames`
    local_path: Path | None = None  # set for a folder given with --model

    @property
    def base_frames(self) -> int:
        return self.window or self.frames

    @property
    def is_tiny(self) -> bool:
        return self.size == "tiny"

    @property
    def forcing(self) -> bool:
        """Generated window by window by the diffusion forcing engine."""
        return KINDS[self.kind].forcing


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    defaults: dict[str, str]
    families: dict[str, dict[str, str]]

    def names(self) -> list[str]:
        return list(self.models) + list(self.families)


def _registry_file() -> Path:
    # Installed wheels carry the file inside the package; a source checkout has it at the top.
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "weights.toml", package.parent / "weights.toml"):
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


def unregistered(name: str, kind: str, local_path: Path | None = None) -> ModelSpec:
    """A checkpoint outside the registry: the official recommendations for its kind, 540P size."""
    if local_path is not None and (local_path / "tiny.json").is_file():
        base = load_registry().models[f"tiny-{'df' if kind == 'flf2v' else kind}"]
        return replace(base, alias=name, repo=name, kind=kind, local_path=local_path)
    k = KINDS[kind]
    return ModelSpec(
        alias=name, repo=name, revision="main", kind=kind, size="?", height=544, width=960, frames=97,
        steps=30, fps=24, guidance=k.guidance, shift=k.shift, local_path=local_path,
    )


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
    if spec is None and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from .hub import peek_kind

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
