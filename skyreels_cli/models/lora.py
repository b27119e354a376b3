"""LoRAs on a loaded transformer: all or nothing, through diffusers' SkyReels-V2 LoRA loader.

A `--lora PATH_OR_REPO[:SCALE]` is parsed (`parse_lora`), found on disk or in the Hugging Face cache and
hashed (`resolve_lora`), read and converted to diffusers' key names (`read_lora`: diffusers also reads the
original Wan and musubi formats), checked against the transformer's weights (`check_fits`: every key names a
layer that exists, with matching shapes), and only then loaded as PEFT adapters (`apply_loras`). A failure
while loading unloads whatever was loaded, so a LoRA is never half-applied. `remove_loras` restores the
transformer's own layers exactly.

LoRAs go on before the memory plan is applied (`core/model.py`): PEFT then wraps plain Linear layers, fp8
layerwise casting stores only the base weights in fp8 (diffusers skips PEFT's layers by default) and group
offload hooks see the adapter weights from the start. Per-frame modulation binds `forward` on the transformer
and its blocks, which PEFT never touches, so their order does not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError, UsageError, setting
from .hub import hub_errors, looks_like_repo_id, sha256_of

PREFIX = "transformer."
# The tensors of one adapted layer, by the suffix that follows the layer's name.
PARTS = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")
ADAPTER = "skyreels_{}"  # adapter names; PEFT keys its layers by them
SHOWN = 4  # mismatched layers named in an error before "and N more"


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora` value: a .safetensors file, a folder holding one, or a Hub repo id (`org/name`, or
    `org/name/file.safetensors` for one file of several), and the strength it is applied with."""

    source: str
    scale: float = 1.0


@dataclass(frozen=True)
class ResolvedLora:
    spec: LoraSpec
    path: Path
    sha256: str

    @property
    def record(self) -> dict:
        """What the sidecar keeps: enough to find and verify the same file again."""
        return {"source": self.spec.source, "path": str(self.path), "sha256": self.sha256, "scale": self.spec.scale}


def parse_lora(text: str) -> LoraSpec:
    """`PATH_OR_REPO[:SCALE]`; a trailing `:number` is the scale (so `C:\\x.safetensors` stays a path).

    A `:` after a file, folder or repo id that exists (or could be a repo id) followed by something that is not
    a number is a scale given wrong, and refused as such rather than looked for as a file named so."""
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        return LoraSpec(head, float(tail))
    if not text:
        raise UsageError(f"{setting('loras')} needs a file, folder or Hub repo id, e.g. "
                         f"{setting('loras', 'style.safetensors:0.8')}", field="loras")
    if sep and head and not re.search(r"[/\\]", tail) and not Path(text).expanduser().exists() \
            and (Path(head).expanduser().exists() or looks_like_repo_id(head, with_file=True)):
        what = "has no scale after its ':'" if not tail.strip() else f"has the scale {tail!r}, which is not a number"
        raise UsageError(f"{setting('loras', text)} {what}; give a number after the ':', e.g. "
                         f"{setting('loras', head + ':0.8')}", field="loras")
    return LoraSpec(text)


def resolve_lora(spec: LoraSpec | str) -> ResolvedLora:
    """The file `spec` names (local, else the Hub: read from the cache, downloaded when online) and its sha256."""
    spec = parse_lora(spec) if isinstance(spec, str) else spec
    local = Path(spec.source).expanduser()
    if local.exists():
        path = _pick_file(local, spec.source)
    elif looks_like_repo_id(spec.source, with_file=True):
        from huggingface_hub.errors import HFValidationError

        try:
            path = _from_hub(spec.source)
        except HFValidationError:
            raise UsageError(f"{setting('loras', spec.source)}: no such file, and not a Hub repo id (org/name)") from None
    else:
        raise UsageError(f"{setting('loras', spec.source)}: no such file, and not a Hub repo id (org/name)")
    return ResolvedLora(spec, path.resolve(), sha256_of(path))


def _pick_file(folder_or_file: Path, source: str) -> Path:
    """A file as given; in a folder, diffusers' standard name or the only .safetensors."""
    if folder_or_file.is_file():
        return folder_or_file
    files = sorted(folder_or_file.rglob("*.safetensors"))
    standard = [f for f in files if f.name == "pytorch_lora_weights.safetensors"]
    if len(standard) == 1 or len(files) == 1:
        return (standard or files)[0]
    if not files:
        raise UsageError(f"{setting('loras', source)}: no .safetensors file in it")
    names = ", ".join(str(f.relative_to(folder_or_file)) for f in files[:SHOWN])
    raise UsageError(f"{setting('loras', source)} holds several LoRA files ({names}); name one, e.g. "
                     f"{setting('loras', source)}/{files[0].name}")


def _from_hub(source: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = source.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    with hub_errors(f"the LoRA {source}", repo, fetch=f"fetch it with `hf download {repo}`",
                    entry=f"has no {filename}"):
        if filename:
            return Path(hf_hub_download(repo, filename))
        return _pick_file(Path(snapshot_download(repo, allow_patterns=["*.safetensors"])), source)


def read_lora(lora: ResolvedLora) -> dict[str, torch.Tensor]:
    """The LoRA's tensors under diffusers' names (`transformer.blocks.0.attn1.to_q.lora_A.weight`, ...),
    converted from the original Wan or musubi formats when needed."""
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"{setting('loras', lora.spec.source)}"
    try:
        raw = load_file(lora.path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{where}: {lora.path} is not a readable .safetensors file ({exc})") from None
    try:
        state = SkyReelsV2LoraLoaderMixin.lora_state_dict(raw)
    except (ValueError, KeyError, IndexError) as exc:
        raise ModelError(f"{where}: diffusers cannot read this LoRA format ({exc or type(exc).__name__})") from None
    if not state:
        raise ModelError(f"{where}: the file holds no LoRA weights")
    return state


def weight_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Layer name -> weight shape of every layer a LoRA could adapt (its own weights, ignoring PEFT's)."""
    shapes = {}
    for name, param in transformer.named_parameters():
        if param.ndim < 2 or not name.endswith(".weight") or ".lora_" in name:
            continue
        shapes[name.removesuffix(".weight").replace(".base_layer", "")] = tuple(param.shape)
    return shapes


def mismatches(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Why each adapted layer does not fit, as `layer (reason)`; empty when the LoRA fits."""
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    found = []
    for key, value in state.items():
        part = next((p for p in PARTS if key.endswith(p)), None)
        if not key.startswith(PREFIX) or part is None:
            found.append(f"{key} (not a LoRA weight of the transformer)")
            continue
        layers.setdefault(key[len(PREFIX): -len(part)], {})[part] = tuple(value.shape)
    for layer, parts in layers.items():
        problem = _layer_problem(parts, shapes.get(layer))
        if problem:
            found.append(f"{layer} ({problem})")
    return found


def _layer_problem(parts: dict[str, tuple[int, ...]], weight: tuple[int, ...] | None) -> str | None:
    if weight is None:
        return "no such layer in this model"
    a, b = parts.get(".lora_A.weight"), parts.get(".lora_B.weight")
    if a is None or b is None:
        return "lora_A or lora_B is missing"
    out_features, in_features = weight[0], weight[1]  # Linear (out, in) and Conv (out, in, *kernel) alike
    if len(a) < 2 or len(b) < 2 or a[0] != b[1]:
        return f"lora_A {_dims(a)} and lora_B {_dims(b)} disagree on the rank"
    if a[1] != in_features or b[0] != out_features:
        return f"LoRA maps {a[1]} -> {b[0]} features, the layer {in_features} -> {out_features}"
    bias = parts.get(".lora_B.bias")
    if bias is not None and bias != (out_features,):
        return f"lora_B.bias {_dims(bias)} for {out_features} outputs"
    return None


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def check_fits(lora: ResolvedLora, state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
               model: str) -> None:
    """A one-line ModelError naming the layers of `lora` that do not fit `model`; nothing when all fit."""
    found = mismatches(state, shapes)
    if not found:
        return
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    raise ModelError(f"{setting('loras', lora.spec.source)} does not fit model {model}: {'; '.join(found[:SHOWN])}{more}; "
                     "nothing was applied (is it a LoRA for another model size or family?)")


def apply_loras(transformer: torch.nn.Module, loras: list[ResolvedLora | LoraSpec | str],
                model: str = "") -> list[dict]:
    """Check every LoRA against `transformer`, then load them all as adapters at their scales; returns the
    sidecar records. Any error leaves `transformer` without LoRAs (as it was, when it had none)."""
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin as Loader

    resolved = [lora if isinstance(lora, ResolvedLora) else resolve_lora(lora) for lora in loras]
    if not resolved:
        return []
    try:
        import peft  # noqa: F401  (diffusers loads LoRAs through it)
    except ImportError:
        raise UsageError(f"{setting('loras')} needs the peft package: pip install peft") from None
    if getattr(transformer, "peft_config", None):
        raise UsageError("this model has LoRAs loaded already: remove them first (remove_loras)")
    shapes = weight_shapes(transformer)
    states = []
    for lora in resolved:  # all of them read and checked before the model is touched
        state = read_lora(lora)
        check_fits(lora, state, shapes, model or type(transformer).__name__)
        states.append(Loader._maybe_expand_t2v_lora_for_i2v(transformer, state))
    names = [ADAPTER.format(i) for i in range(len(resolved))]
    try:
        for name, state in zip(names, states):
            Loader.load_lora_into_transformer(state, transformer, adapter_name=name)
        transformer.set_adapters(names, [lora.spec.scale for lora in resolved])
    except BaseException:
        remove_loras(transformer)
        raise
    return [lora.record for lora in resolved]


def remove_loras(transformer: torch.nn.Module) -> None:
    """Unload every LoRA: the transformer's own layers come back unchanged (what `unload_lora_weights` does
    for a pipeline). Nothing happens when none is loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(transformer, "peft_config", None) or any(isinstance(m, BaseTunerLayer) for m in transformer.modules()):
        transformer.unload_lora()
