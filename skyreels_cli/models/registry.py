"""The model registry: `weights.toml` as typed data (models/naming.py turns a `--model` value into a spec)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from .kinds import KINDS


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
    sampler: str = "unipc"  # the sampler and noise levels an accelerator brings (models/accelerators.py)
    sigmas: tuple[float, ...] | None = None
    accelerator: str | None = None  # the accelerator whose settings these are (None: the checkpoint's own)
    accelerator_strength: float | None = None  # its LoRA's strength, as picked for `steps` (models/accelerators.py)

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
class AcceleratorLora:
    repo: str
    file: str
    revision: str = "main"  # "local": built here (the tiny accelerator), like the tiny models
    strength: float | None = None  # None: the accelerator's
    sigmas: tuple[float, ...] | None = None
    shift: float | None = None
    rank: int = 0  # of its layers, as the file name says: what the memory planner counts for it

    @property
    def source(self) -> str:
        """What `--lora` would take for it: `org/name/file.safetensors`."""
        return f"{self.repo}/{self.file}"


@dataclass(frozen=True)
class Accelerator:
    name: str
    source: str  # where the recipe comes from
    sampler: str
    sigmas: tuple[float, ...]
    guidance: float
    shift: float
    strength: float
    loras: dict[str, AcceleratorLora]  # by `kind-size` of the models it fits
    strength_by_steps: dict[int, float] = field(default_factory=dict)  # the authors' table, where they give one
    other_steps: str = "grid"  # noise levels for another step count: "grid" (shifted) or "first" (of `sigmas`)

    @property
    def fits(self) -> list[str]:
        return list(self.loras)


def parse_accelerators(data: dict) -> dict[str, Accelerator]:
    out = {}
    for name, entry in data.items():
        entry = dict(entry)
        loras = {fit: AcceleratorLora(**{**lora, **({"sigmas": tuple(lora["sigmas"])} if "sigmas" in lora else {})})
                 for fit, lora in entry.pop("loras").items()}
        table = {int(k): float(v) for k, v in entry.pop("strength_by_steps", {}).items()}
        out[name] = Accelerator(name=name, sigmas=tuple(entry.pop("sigmas")), loras=loras,
                                strength_by_steps=table, **entry)
    return out


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    defaults: dict[str, str]
    families: dict[str, dict[str, str]]
    accelerators: dict[str, Accelerator] = field(default_factory=dict)  # models/accelerators.py applies them

    def names(self) -> list[str]:
        return list(self.models) + list(self.families)


def _registry_file() -> Path:
    # Installed wheels carry the file inside the package; a source checkout has it at the top.
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "weights.toml", package.parent / "weights.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("weights.toml is missing from the installation; reinstall skyreels")


@cache
def load_registry(path: Path | None = None) -> Registry:
    data = tomllib.loads((path or _registry_file()).read_text())
    models = {alias: ModelSpec(alias=alias, **fields) for alias, fields in data["models"].items()}
    for alias, spec in models.items():
        if spec.kind not in KINDS:
            raise ValueError(f"weights.toml: model {alias} has unknown kind {spec.kind!r}")
    return Registry(models=models, defaults=dict(data["defaults"]), families=dict(data.get("families", {})),
                    accelerators=parse_accelerators(data.get("accelerators", {})))


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
