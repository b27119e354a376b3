"""LoRAs on a loaded transformer: all or nothing, through diffusers' SkyReels-V2 LoRA loader.

A `--lora PATH_OR_REPO[:SCALE]` is parsed (`parse_lora`), found on disk or in the Hugging Face cache and
hashed (`resolve_lora`), read in whichever published layout it has (`read_lora_file`: ComfyUI/Kijai, musubi,
diffusers or PEFT, told from the keys by `detect_format`) and converted to diffusers' names through diffusers'
converters, with what they drop or get wrong handled here (alpha folded, `.diff`/`.diff_b` keys kept as
whole-tensor deltas), checked against the transformer (`check_fits`: every tensor names a layer or parameter
that exists, with matching shapes; one that fits nothing refuses the whole LoRA) and only then applied
(`apply_loras`: low-rank layers as PEFT adapters, deltas added to the weights). A failure while loading
unloads whatever was loaded, so a LoRA is never half-applied. `remove_loras` restores the transformer's own
layers and weights exactly. docs/loras.md says what each format's keys mean.

LoRAs go on before the memory plan is applied (`core/model.py`): PEFT then wraps plain Linear layers, fp8
layerwise casting stores only the base weights in fp8 (diffusers skips PEFT's layers by default) and group
offload hooks see the adapter weights and the changed weights from the start. Per-frame modulation binds
`forward` on the transformer and its blocks, which PEFT never touches, so their order does not matter.
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
            path = Path(hf_hub_download(repo, filename))
            _peft_config_beside(repo, filename)
            return path
        # PEFT's own layout keeps the alpha in adapter_config.json beside the weights
        folder = snapshot_download(repo, allow_patterns=["*.safetensors", "adapter_config.json", "*/adapter_config.json"])
        return _pick_file(Path(folder), source)


def _peft_config_beside(repo: str, filename: str) -> None:
    """adapter_config.json from the folder of `filename`, where the repo has one (a PEFT LoRA's alpha)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        hf_hub_download(repo, str(Path(filename).parent / "adapter_config.json").removeprefix("./"))
    except EntryNotFoundError:
        pass


# ------------------------------------------------------------------ the published formats
# A file's format, told from its keys, and how it is named in messages.
FORMATS = {
    "comfyui": "ComfyUI/Kijai (diffusion_model.blocks.0.self_attn.q.lora_down.weight)",
    "musubi": "musubi-tuner (lora_unet_blocks_0_self_attn_q.lora_down.weight)",
    "diffusers": "diffusers/PEFT (transformer.blocks.0.attn1.to_q.lora_A.weight)",
}
WAN = "diffusion_model."  # ComfyUI's prefix: the original Wan module names follow
MUSUBI = "lora_unet_"
PEFT_PREFIX = "base_model.model."  # what PEFT's own save_pretrained writes
# Original Wan module names that hold an underscore, which musubi's flattened names (`blocks_0_self_attn_q`) lose.
WAN_WORDS = ("self_attn", "cross_attn", "norm_k_img", "k_img", "v_img", "norm_q", "norm_k", "time_embedding",
             "text_embedding", "time_projection", "patch_embedding", "img_emb")
# The Wan layers whose lora_down/lora_up diffusers' converter (`_convert_non_diffusers_wan_lora_to_diffusers`)
# renames; a LoRA layer outside them would make it raise, so it is reported as fitting nothing instead.
CONVERTED = re.compile(r"(blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])"
                       r"|time_projection\.1|head\.head|(text|time)_embedding\.[02]|img_emb\.proj\.[13])"
                       r"\.lora_(down|up)\.weight")
# The layers only an image-to-video transformer has (diffusers' names, and Wan's in a file's own keys).
IMAGE_LAYERS = re.compile(r"add_[kv]_proj|norm_added_k|image_embedder|[kv]_img|img_emb")


@dataclass
class LoraFile:
    """One LoRA file read for loading: `state` holds its low-rank layers under diffusers' names
    (`transformer.blocks.0.attn1.to_q.lora_A.weight`, alpha/rank folded in), loaded as a PEFT adapter;
    `deltas` its whole-tensor changes (ComfyUI's `.diff` and `.diff_b` keys: file key -> (the diffusers
    parameters it may name, the change)), added to the weights at the LoRA's strength; `stray` the keys of no
    layer any converter knows."""

    format: str
    state: dict[str, torch.Tensor]
    deltas: dict[str, tuple[tuple[str, ...], torch.Tensor]]
    stray: list[str]
    metadata: dict | None = None  # diffusers' adapter config (lora_alpha, ...) stored with a diffusers file


def detect_format(keys) -> str | None:
    """The published layout `keys` follow: "comfyui", "musubi", "diffusers", or None for none of them."""
    keys = list(keys)
    if any(k.startswith(WAN) for k in keys):
        return "comfyui"
    if any(k.startswith(MUSUBI) for k in keys):
        return "musubi"
    bare = [k.removeprefix(PEFT_PREFIX).removeprefix(PREFIX) for k in keys]
    if any(re.search(r"(^|\.)(self_attn|cross_attn|ffn\.[02])\.", k) for k in bare) \
            and any(re.search(r"\.(lora_(down|up|A|B)\.weight|diff|diff_b)$", k) for k in bare):
        return "comfyui"  # Wan's own names without ComfyUI's prefix
    if any(re.search(r"\.lora_[AB]\.weight$", k) for k in bare):
        return "diffusers"
    return None


def read_lora(lora: ResolvedLora) -> dict[str, torch.Tensor]:
    """The LoRA's low-rank tensors under diffusers' names (`transformer.blocks.0.attn1.to_q.lora_A.weight`,
    ...), converted from the ComfyUI/Kijai or musubi formats when needed (see `read_lora_file` for the rest)."""
    return read_lora_file(lora).state


# The low-rank halves of an adapted layer in every published layout (PEFT's lora_A/lora_B, Kohya's and ComfyUI's
# lora_down/lora_up): what PEFT keeps beside the weights. `.diff` deltas are added to the weights and cost nothing.
LOW_RANK = re.compile(r"\.lora_(A|B|down|up)\.weight$")


def adapter_bytes(loras: list[ResolvedLora], element_size: int) -> int:
    """GPU bytes of the low-rank layers `loras` add beside the transformer's weights, at the model's element size
    (PEFT keeps them unquantized in its dtype): counted from the files' headers, nothing read. An upper bound
    where a file carries layers the transformer has not (a text encoder's)."""
    from math import prod

    from safetensors import SafetensorError, safe_open

    total = 0
    for lora in loras:
        try:
            with safe_open(lora.path, "pt") as handle:
                total += sum(prod(handle.get_slice(key).get_shape()) for key in handle.keys() if LOW_RANK.search(key))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{setting('loras', lora.spec.source)}: {lora.path} is not a readable .safetensors "
                             f"file ({exc})") from None
    return total * element_size


def read_lora_file(lora: ResolvedLora) -> LoraFile:
    """The file of `lora` read and converted to what diffusers loads, nothing dropped: see `LoraFile`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    where = setting("loras", lora.spec.source)
    try:
        raw = load_file(lora.path)
        with safe_open(lora.path, "pt") as handle:
            file_metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{where}: {lora.path} is not a readable .safetensors file ({exc})") from None
    fmt = detect_format(raw)
    if fmt is None:
        example = f" (its keys look like {next(iter(raw))})" if raw else " (it holds no tensors)"
        raise ModelError(f"{where}: not a LoRA format skyreels reads{example}; it reads "
                         f"{'; '.join(FORMATS.values())}")
    try:
        if fmt == "diffusers":
            return _diffusers_file(raw, file_metadata, lora.path)
        return _wan_file(raw, fmt)
    except (ValueError, KeyError, IndexError) as exc:
        raise ModelError(f"{where}: this {FORMATS[fmt].split(' (')[0]} LoRA cannot be read: "
                         f"{exc or type(exc).__name__}") from None


def _fold_alpha(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each `X.alpha` folded into `X`'s down weight as alpha/rank (what ComfyUI, musubi and kohya scale by), so
    PEFT loads the layer at scale 1; a layer without one keeps scale 1, as those loaders do. Folded here, not by
    diffusers' converters: they ignore the alpha of the time, text, head and image-embedding layers and raise on
    it, and the musubi one needs an alpha for every layer."""
    state = dict(state)
    for key in [k for k in state if k.endswith(".alpha")]:
        layer = key.removesuffix(".alpha")
        down = next((f"{layer}.{p}" for p in ("lora_down.weight", "lora_A.weight") if f"{layer}.{p}" in state), None)
        if down is None:
            continue  # an alpha of no layer: left in, reported as fitting nothing
        alpha, weight = state.pop(key), state[down]
        state[down] = (weight.float() * (float(alpha) / weight.shape[0])).to(weight.dtype)
    return state


def _wan_names(raw: dict[str, torch.Tensor], fmt: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's tensors under Wan's own module names with ComfyUI's prefix, and the keys that have none (a
    musubi file's text-encoder layers, say)."""
    state, stray = {}, []
    for key, value in raw.items():
        if fmt == "musubi":
            if not key.startswith(MUSUBI):
                stray.append(key)
                continue
            module, _, part = key[len(MUSUBI):].partition(".")
            dotted = module.replace("_", ".")
            for word in WAN_WORDS:
                dotted = dotted.replace(word.replace("_", "."), word)
            key = f"{WAN}{dotted}.{part}"
        elif not key.startswith(WAN):
            if not re.match(r"[a-z_]+\.", key) or key.startswith((PREFIX, PEFT_PREFIX)):
                stray.append(key)
                continue
            key = WAN + key
        state[key] = value
    return state, stray


def _wan_file(raw: dict[str, torch.Tensor], fmt: str) -> LoraFile:
    """A ComfyUI/Kijai or musubi file through diffusers' Wan converter, with what it gets wrong handled here:
    alpha is folded first (`_fold_alpha`); musubi names are renamed to ComfyUI's so the same converter serves
    both (diffusers' musubi converter wants every layer of every block, with alphas); `.diff`/`.diff_b` keys
    become whole-tensor deltas (diffusers drops the norm ones, and silently the rest when only `.diff` keys
    remain); a layer it does not know is kept aside to be named, not dropped."""
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin

    state, stray = _wan_names(raw, fmt)
    state = _fold_alpha(state)
    deltas, lora = {}, {}
    for key, value in state.items():
        name = key[len(WAN):]
        if name.endswith((".diff", ".diff_b")):
            deltas[key] = (_delta_targets(name), value)
        elif CONVERTED.fullmatch(name):
            lora[key] = value
        else:
            stray.append(key)
    converted = SkyReelsV2LoraLoaderMixin.lora_state_dict(lora) if lora else {}
    if len(converted) != len(lora):  # never a silent drop: each lora_down/lora_up becomes one lora_A/lora_B
        raise ValueError(f"{len(lora)} low-rank tensors became {len(converted)}")
    return LoraFile(fmt, converted, deltas, stray)


def _delta_targets(name: str) -> tuple[str, ...]:
    """The diffusers parameters a Wan `.diff` (a weight, or a bare parameter such as `modulation`) or `.diff_b`
    (a bias) key may change, renamed by diffusers' own Wan checkpoint converter.

    Norm `.diff` keys are applied like the rest (diffusers drops them, saying the published ones are zeros):
    where the model has that norm's weight the delta is added, where it has not (a norm without an affine
    weight, or an I2V-only one) the key is named as fitting nothing."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    layer = name.rsplit(".", 1)[0]
    wanted = [f"{layer}.bias"] if name.endswith(".diff_b") else [f"{layer}.weight", layer]
    return tuple(next(iter(convert_wan_transformer_to_diffusers({n: None}))) for n in wanted)


def _diffusers_file(raw: dict[str, torch.Tensor], file_metadata: dict, path: Path) -> LoraFile:
    """A diffusers file (`transformer.` keys, its adapter config in the file's metadata) or PEFT's own
    (`base_model.model.` keys, the config in adapter_config.json beside it); `.alpha` keys some trainers add
    are folded like the other formats'."""
    import json

    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    metadata = json.loads(file_metadata[LORA_ADAPTER_METADATA_KEY]) if LORA_ADAPTER_METADATA_KEY in file_metadata else None
    config = path.parent / "adapter_config.json"
    state, stray = {}, []
    for key, value in raw.items():
        if key.startswith(PEFT_PREFIX):
            key = PREFIX + key[len(PEFT_PREFIX):]
        elif not key.startswith(PREFIX):
            key = PREFIX + key
        if re.search(r"\.(lora_[AB]\.weight|lora_B\.bias|alpha)$", key):
            state[key] = value
        else:
            stray.append(key)
    if metadata is None and any(k.startswith(PEFT_PREFIX) for k in raw):
        if not config.is_file():  # loading it at alpha = rank would be a guess
            raise ValueError(f"a PEFT LoRA needs its adapter_config.json (which holds its lora_alpha) beside it "
                             f"in {path.parent}")
        from dataclasses import fields

        from peft import LoraConfig

        known = {f.name for f in fields(LoraConfig)}  # PEFT writes a few more (its version, the task type)
        metadata = {PREFIX + k: v for k, v in json.loads(config.read_text()).items() if k in known}
    if metadata is not None:
        metadata = {k: v for k, v in metadata.items() if k.startswith(PREFIX)}
    return LoraFile("diffusers", _fold_alpha(state), {}, stray, metadata or None)


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
    return [f"{layer} ({problem})" for layer, problem, _ in _layer_problems(state, shapes)]


def _layer_problems(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str, int]]:
    """(layer or key, why it does not fit, how many of the file's tensors that is) for each misfit."""
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    found = []
    for key, value in state.items():
        part = next((p for p in PARTS if key.endswith(p)), None)
        if not key.startswith(PREFIX) or part is None:
            found.append((key, "not a LoRA weight of the transformer", 1))
            continue
        layers.setdefault(key[len(PREFIX): -len(part)], {})[part] = tuple(value.shape)
    for layer, parts in layers.items():
        problem = _layer_problem(parts, shapes.get(layer))
        if problem:
            found.append((layer, problem, len(parts)))
    return found


def _layer_problem(parts: dict[str, tuple[int, ...]], weight: tuple[int, ...] | None) -> str | None:
    if weight is None:
        return NO_LAYER
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


NO_LAYER = "no such layer in this model"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def param_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of every parameter of the transformer's own (PEFT's adapters left out): what a
    whole-tensor delta may change."""
    return {name.replace(".base_layer", ""): tuple(param.shape) for name, param in transformer.named_parameters()
            if ".lora_" not in name}


def _delta_problems(file: LoraFile, params: dict[str, tuple[int, ...]]) -> list[tuple[str, str, int]]:
    found = []
    for key, (targets, delta) in file.deltas.items():
        target = next((t for t in targets if t in params), None)
        if target is None:
            found.append((targets[0], NO_LAYER, 1))
        elif params[target] != tuple(delta.shape):
            found.append((key, f"a change of {_dims(delta.shape)} for {target} of {_dims(params[target])}", 1))
    return found


def check_fits(lora: ResolvedLora, state: dict[str, torch.Tensor] | LoraFile, shapes: dict[str, tuple[int, ...]],
               model: str, params: dict[str, tuple[int, ...]] | None = None) -> None:
    """A one-line ModelError when any tensor of `lora` (its low-rank `state`, or a whole `LoraFile` checked
    against the transformer's `params` too) fits no layer of `model` or has the wrong shape; nothing when all fit.

    A tensor with no target is never dropped: the whole LoRA is refused, saying how many and one example. When
    those are all image-attention layers the LoRA is an image-to-video one on a model without them (DF and T2V
    share the T2V layout): the fix is a LoRA of the model's own family."""
    file = state if isinstance(state, LoraFile) else LoraFile("diffusers", state, {}, [])
    found = [(key, NO_LAYER, 1) for key in file.stray] + _layer_problems(file.state, shapes)
    found += _delta_problems(file, params if params is not None else {})
    if not found:
        return
    missing = [(name, count) for name, problem, count in found if problem == NO_LAYER]
    misfits = [f"{name} ({problem})" for name, problem, _ in found if problem != NO_LAYER]
    image = bool(missing) and all(IMAGE_LAYERS.search(name) for name, _ in missing)
    total = len(file.state) + len(file.deltas) + len(file.stray)
    said = []
    if missing:
        said.append(f"{sum(c for _, c in missing)} of its {total} tensors name layers it lacks "
                    f"(e.g. {missing[0][0]})")
    if misfits:
        more = f" and {len(misfits) - SHOWN} more" if len(misfits) > SHOWN else ""
        said.append(f"{'; '.join(misfits[:SHOWN])}{more}")
    fix = ("those are the image-attention layers of an image-to-video LoRA: use a LoRA made for this model's "
           "family (the text-to-video LoRAs fit T2V and diffusion forcing models)" if image and not misfits
           else "use a LoRA made for this model's family and size")
    raise ModelError(f"{setting('loras', lora.spec.source)} does not fit model {model}: {'; '.join(said)}; {fix}; "
                     "nothing was applied")


# Attribute of a transformer holding, for each parameter a `.diff` key changed, the parameter and its own value.
ORIGINALS = "_skyreels_lora_originals"


def apply_loras(transformer: torch.nn.Module, loras: list[ResolvedLora | LoraSpec | str],
                model: str = "") -> list[dict]:
    """Check every LoRA against `transformer`, then load them all at their scales (low-rank layers as PEFT
    adapters, whole-tensor deltas added to the weights); returns the sidecar records. Any error leaves
    `transformer` without LoRAs (as it was, when it had none)."""
    from diffusers.loaders.lora_pipeline import SkyReelsV2LoraLoaderMixin as Loader

    resolved = [lora if isinstance(lora, ResolvedLora) else resolve_lora(lora) for lora in loras]
    if not resolved:
        return []
    try:
        import peft  # noqa: F401  (diffusers loads LoRAs through it)
    except ImportError:
        raise UsageError(f"{setting('loras')} needs the peft package: pip install peft") from None
    if getattr(transformer, "peft_config", None) or ORIGINALS in transformer.__dict__:
        raise UsageError("this model has LoRAs loaded already: remove them first (remove_loras)")
    shapes, params = weight_shapes(transformer), dict(transformer.named_parameters())
    files = []
    for lora in resolved:  # all of them read and checked before the model is touched
        file = read_lora_file(lora)
        check_fits(lora, file, shapes, model or type(transformer).__name__,
                   {name: tuple(p.shape) for name, p in params.items()})
        file.state = Loader._maybe_expand_t2v_lora_for_i2v(transformer, file.state) if file.state else {}
        files.append(file)
    adapters = {}
    try:
        for i, (lora, file) in enumerate(zip(resolved, files)):
            _add_deltas(transformer, file, params, lora.spec.scale)
            if file.state:
                adapters[ADAPTER.format(i)] = lora.spec.scale
                Loader.load_lora_into_transformer(file.state, transformer, adapter_name=ADAPTER.format(i),
                                                  metadata=file.metadata)
        if adapters:
            transformer.set_adapters(list(adapters), list(adapters.values()))
    except BaseException:
        remove_loras(transformer)
        raise
    return [lora.record for lora in resolved]


def _add_deltas(transformer: torch.nn.Module, file: LoraFile, params: dict[str, torch.nn.Parameter],
                scale: float) -> None:
    """Each delta added at `scale` (weight + scale * diff, as ComfyUI merges them), in float32; the parameter's
    own value kept first (on the CPU: these are norms and biases, small) so `remove_loras` restores it exactly."""
    originals = transformer.__dict__.setdefault(ORIGINALS, {})
    with torch.no_grad():
        for targets, delta in file.deltas.values():
            name = next(t for t in targets if t in params)  # check_fits found it
            param = params[name]
            originals.setdefault(name, (param, param.detach().to("cpu", copy=True)))
            changed = param.float() + scale * delta.to(param.device, torch.float32)
            param.copy_(changed.to(param.dtype))


def remove_loras(transformer: torch.nn.Module) -> None:
    """Unload every LoRA: the transformer's own layers come back unchanged (what `unload_lora_weights` does
    for a pipeline, and the weights `.diff` keys changed put back). Nothing happens when none is loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(transformer, "peft_config", None) or any(isinstance(m, BaseTunerLayer) for m in transformer.modules()):
        transformer.unload_lora()
    with torch.no_grad():
        for param, original in transformer.__dict__.pop(ORIGINALS, {}).values():
            param.copy_(original.to(param.device))
