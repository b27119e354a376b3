"""Peak memory of each phase of a model, traced at full size on fake tensors: exact, no memory, seconds on a CPU.

Every component is built and run under `FakeTensorMode` (tensors with shapes and dtypes but no data),
while `LiveBytes` counts the bytes of every live tensor storage, the way a caching allocator sees
them (views share a storage; a storage counts from the op that makes it until its last reference
dies). The real diffusers / transformers classes run their real forward, so what is traced is what
runs, including our patches (per-frame modulation) and diffusers' hooks (layerwise fp8 casting).
`torch.distributed._tools.mem_tracker.MemTracker` gives the same figures (tests/test_plan.py checks
it) but walks every live tensor at every op, tens of times slower at full size.

Each trace is remembered in-process and in a small JSON file (`trace_cache_file()`), keyed by its
inputs and the torch / diffusers versions, so `skyreels plan` answers in seconds after the first run.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from ..media.files import replace_atomically
from ..models.architectures import (
    TEXT_TOKENS,
    ImageEncoderArch,
    TextEncoderArch,
    TransformerArch,
    VaeArch,
)

TRACE_VERSION = 3  # bump when what a trace measures changes: old cache entries are then ignored
WEIGHT_DTYPES = ("bf16", "fp8", "int8")
CLIP_TOKENS = 257  # 16x16 patches + the class token of ViT-H/14 at 224 pixels


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storage, now and at the peak, for tensors made inside it or given to `track`."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, *objects: torch.nn.Module | torch.Tensor | None) -> int:
        """Count tensors (and modules' parameters and buffers) made outside; returns the bytes added."""
        before = self.current
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                for t in [*obj.parameters(), *obj.buffers()]:
                    self._add(t)
            elif isinstance(obj, torch.Tensor):
                self._add(obj)
        return self.current - before

    def reset_peak(self) -> None:
        self.peak = self.current

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


@dataclass(frozen=True)
class Trace:
    """One component's phase: resident weights and the activation peak above weights and inputs, in bytes."""

    weights: int
    activations: int
    inputs: int = 0
    block_weights: int = 0  # transformer: the largest block (what block-level group offload holds)
    leaf_weights: int = 0  # transformer: the largest leaf module (what leaf-level group offload holds)
    cache: int = 0  # VAE decode/encode: the causal cache carried between frames (all tiles)
    tile_cache: int = 0  # VAE decode: one tile's cache (the whole picture's when untiled)
    tiles: int = 1
    output_per_frame: int = 0  # VAE decode: fp32 pixels of one output frame


# ---------------------------------------------------------------------------------------------- tracing helpers

@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside get parameters of `dtype` (set as the default: no `.to()` copy is made)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def _storage_bytes(module: torch.nn.Module) -> int:
    seen = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _measure(module: torch.nn.Module, inputs: list, run: Callable[[], object]) -> tuple[int, int, int]:
    """(weights, inputs, activation peak) bytes of `run()` on `module` fed `inputs` (all already built)."""
    with LiveBytes() as live, torch.no_grad():
        weights = live.track(module)
        given = live.track(*inputs)
        inputs.clear()  # inputs `run` replaces (a VAE's cache entries) must be free to die, as in a real run
        live.reset_peak()
        run()
        return weights, given, live.peak - weights - given


def _keep_in_fp32(model: torch.nn.Module) -> None:
    """What `from_pretrained(dtype=bf16)` keeps in fp32: parameters whose dotted name holds one of the
    model's `_keep_in_fp32_modules` (diffusers' model_loading_utils rule)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()


# ---------------------------------------------------------------------------------------------- the phases

def _transformer(arch: TransformerArch, height: int, width: int, latents: int, batch: int,
                 per_frame_modulation: bool, per_frame_timesteps: bool) -> Trace:
    """One forward with bf16 weights (the fp32 ones `from_pretrained` keeps): weights and activation peak."""
    from diffusers import SkyReelsV2Transformer3DModel

    with _fake_mode():
        with default_dtype(torch.bfloat16):
            model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
        _keep_in_fp32(model)
        if per_frame_modulation:
            _install_modulation(model)
        x = torch.empty(batch, arch.in_channels, latents, height // 8, width // 8, dtype=torch.bfloat16)
        t = torch.zeros((batch, latents) if per_frame_timesteps else (batch,), dtype=torch.long)
        text = torch.empty(batch, TEXT_TOKENS, arch.text_dim, dtype=torch.bfloat16)
        image = torch.empty(batch, CLIP_TOKENS, arch.image_dim, dtype=torch.bfloat16) if arch.image_dim else None
        kwargs = {"hidden_states": x, "timestep": t, "encoder_hidden_states": text, "encoder_hidden_states_image": image,
                      "enable_diffusion_forcing": per_frame_timesteps, "return_dict": False}
        if arch.inject_sample_info:
            kwargs["fps"] = [0]
        total, given, peak = _measure(model, [x, t, text, image], lambda: model(**kwargs))
    return Trace(weights=total, activations=peak, inputs=given)


def _transformer_weights(arch: TransformerArch, weights: str) -> Trace:
    """Weight bytes as stored: all of them, the largest block, the largest leaf; `activations` is what a
    quantized layer adds while it computes (its weight dequantized to bf16, one layer at a time).

    fp8 asks diffusers' own layerwise casting which layers it stores in fp8 (on the meta device: fake
    parameters cannot change dtype in place); int8 is torchao's weight-only default, every `nn.Linear`
    weight in int8 plus one bf16 scale per output row.
    """
    from diffusers import SkyReelsV2Transformer3DModel

    with torch.device("meta"), default_dtype(torch.bfloat16):
        model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
    _keep_in_fp32(model)
    upcast = 0
    if weights == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        upcast = max(2 * p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    total = _storage_bytes(model)
    if weights == "int8":
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        total -= sum(m.weight.numel() * m.weight.element_size() - m.weight.numel() - 2 * m.out_features
                     for m in linears)
        upcast = max(2 * m.weight.numel() for m in linears)
    blocks = max(_storage_bytes(b) for b in model.blocks)
    if weights == "int8":
        blocks = blocks * total // _storage_bytes(model)  # blocks are nearly all Linear weights
    leaves = max(_storage_bytes(m) for m in model.modules() if not list(m.children()))
    return Trace(weights=total, activations=upcast, block_weights=blocks, leaf_weights=leaves)


def _install_modulation(model: torch.nn.Module) -> None:
    from .modulation import install_per_frame_modulation

    install_per_frame_modulation(model)


def modulation_available() -> bool:
    """Whether per-frame modulation (runtime/modulation.py) can be traced in this installation."""
    try:
        from .modulation import install_per_frame_modulation  # noqa: F401
    except ImportError:
        return False
    return True


def _text_encoder(arch: TextEncoderArch) -> Trace:
    from transformers import UMT5Config, UMT5EncoderModel

    with _fake_mode():
        with default_dtype(torch.bfloat16):
            model = UMT5EncoderModel(UMT5Config(**arch.config())).eval()
        ids = torch.zeros(1, arch.tokens, dtype=torch.long)
        mask = torch.ones(1, arch.tokens, dtype=torch.long)
        total, given, peak = _measure(model, [ids, mask], lambda: model(input_ids=ids, attention_mask=mask))
    return Trace(weights=total, activations=peak, inputs=given)


def _image_encoder(arch: ImageEncoderArch) -> Trace:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with _fake_mode():
        with default_dtype(torch.bfloat16):
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.config())).eval()
        pixels = torch.empty(1, 3, arch.image, arch.image, dtype=torch.bfloat16)
        total, given, peak = _measure(model, [pixels],
                                      lambda: model(pixel_values=pixels, output_hidden_states=True))
    return Trace(weights=total, activations=peak, inputs=given)


def _tensors(cache: list) -> list[torch.Tensor]:
    return [c for c in cache if isinstance(c, torch.Tensor)]


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan


def _vae_decode(arch: VaeArch, height: int, width: int, tiled: bool) -> Trace:
    """One steady-state latent frame's decode in fp32 (the cache already full), of the largest tile when tiled
    (the tiles the streaming decode cuts with diffusers' default settings: forcing/tiling.py)."""
    from ..forcing.tiling import tile_grid

    # Untiled, or a picture within one tile: one whole-picture "tile" (latent rows x columns).
    tiles = [(t.height, t.width) for t in tile_grid(height, width).tiles()] if tiled else [(height // 8, width // 8)]
    areas = [th * tw for th, tw in tiles]
    h, w = (8 * side for side in max(tiles, key=lambda t: t[0] * t[1]))
    with _fake_mode():
        with default_dtype(torch.float32):
            vae = _vae()(**arch.config()).eval()
        z = torch.empty(1, arch.z_dim, 1, h // 8, w // 8)
        cache: list = [None] * vae._cached_conv_counts["decoder"]
        with torch.no_grad():  # two frames fill the cache (it keeps two frames of each causal input)
            for first in (True, False):
                vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=first)
        weights, given, peak = _measure(  # the cache list only: replaced entries are freed, as in a real decode
            vae, [z, *_tensors(cache)], lambda: vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0])
        )
        tile_cache = sum(c.untyped_storage().nbytes() for c in cache if isinstance(c, torch.Tensor))
    # A tile's cache is proportional to its area: every tile's together, exactly.
    return Trace(weights=weights, activations=peak, inputs=given, cache=tile_cache * sum(areas) // max(areas),
                 tile_cache=tile_cache, tiles=len(areas), output_per_frame=3 * height * width * 4)


def _vae_encode(arch: VaeArch, height: int, width: int) -> Trace:
    """The encoder on one chunk of 4 frames in fp32 (the cache already full), as `AutoencoderKLWan._encode`."""
    with _fake_mode():
        with default_dtype(torch.float32):
            vae = _vae()(**arch.config()).eval()
        first, chunk = torch.empty(1, 3, 1, height, width), torch.empty(1, 3, 4, height, width)
        cache: list = [None] * vae._cached_conv_counts["encoder"]
        with torch.no_grad():
            vae.encoder(first, feat_cache=cache, feat_idx=[0])
            vae.encoder(chunk, feat_cache=cache, feat_idx=[0])
        weights, given, peak = _measure(vae, [chunk, *_tensors(cache)],
                                        lambda: vae.encoder(chunk, feat_cache=cache, feat_idx=[0]))
    return Trace(weights=weights, activations=peak, inputs=given, cache=given - chunk.untyped_storage().nbytes())


# ---------------------------------------------------------------------------------------------- cached entry points

def trace_cache_file() -> Path:
    """Where traces are remembered: $SKYREELS_CACHE, else $XDG_CACHE_HOME/skyreels, else ~/.cache/skyreels."""
    root = os.environ.get("SKYREELS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "skyreels"
    return Path(root) / "vram-traces.json"


def _versions() -> str:
    import diffusers
    import transformers

    return f"v{TRACE_VERSION} torch {torch.__version__} diffusers {diffusers.__version__} " \
           f"transformers {transformers.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, value: dict) -> None:
    """Add one entry; a cache that cannot be written only costs the next run the trace again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = value
        text = json.dumps(data, indent=0, sort_keys=True)
        replace_atomically(path, lambda tmp: tmp.write_text(text))
    except OSError:
        pass


def _cached(name: str, fn: Callable[..., Trace], *args) -> Trace:
    return _cached_in_process(name, fn, args)


@cache
def _cached_in_process(name: str, fn: Callable[..., Trace], args: tuple) -> Trace:
    key = json.dumps([name, _versions(), [asdict(a) if hasattr(a, "__dataclass_fields__") else a for a in args]])
    path = trace_cache_file()
    hit = _read_cache(path).get(key)
    if isinstance(hit, dict):
        try:
            return Trace(**hit)
        except TypeError:  # an entry of another shape: trace again
            pass
    trace = fn(*args)
    _write_cache(path, key, asdict(trace))
    return trace


def trace_transformer(arch: TransformerArch, height: int, width: int, latents: int, batch: int = 1,
                      weights: str = "bf16", per_frame_modulation: bool = True,
                      per_frame_timesteps: bool = True) -> Trace:
    """One transformer forward at `height` x `width` pixels over `latents` latent frames (the window, +1 for an
    end image), `batch` 2 for batched guidance. `weights`: "bf16", "fp8" (diffusers' layerwise casting) or
    "int8" (torchao weight-only): stored bytes, plus one layer's bf16 copy while it computes. Per-frame
    modulation needs per-frame timesteps (diffusion forcing); without them it changes nothing and is not applied.
    """
    if weights not in WEIGHT_DTYPES:
        raise ValueError(f"weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
    per_frame_modulation = per_frame_modulation and per_frame_timesteps and modulation_available()
    run = _cached("transformer", _transformer, arch, height, width, latents, batch, per_frame_modulation,
                  per_frame_timesteps)
    stored = _cached("transformer_weights", _transformer_weights, arch, weights)
    return Trace(weights=stored.weights, activations=run.activations + stored.activations, inputs=run.inputs,
                 block_weights=stored.block_weights, leaf_weights=stored.leaf_weights)


def trace_transformer_weights(arch: TransformerArch, weights: str = "bf16") -> int:
    """Bytes of the transformer's weights as stored (`weights`: as for `trace_transformer`)."""
    return _cached("transformer_weights", _transformer_weights, arch, weights).weights


def trace_text_encoder(arch: TextEncoderArch) -> Trace:
    """The text encoder in bf16 encoding one prompt of `arch.tokens` tokens."""
    return _cached("text_encoder", _text_encoder, arch)


def trace_image_encoder(arch: ImageEncoderArch) -> Trace:
    """The image encoder in bf16 on one image."""
    return _cached("image_encoder", _image_encoder, arch)


def trace_vae_decode(arch: VaeArch, height: int, width: int, tiled: bool = False) -> Trace:
    """The VAE (fp32) decoding one latent frame at steady state, of the largest tile when `tiled`; `cache` is
    the causal cache of the whole picture (every tile's, overlaps included), `tile_cache` the largest tile's."""
    return _cached("vae_decode", _vae_decode, arch, height, width, tiled)


def trace_vae_encode(arch: VaeArch, height: int, width: int) -> Trace:
    """The VAE (fp32) encoding one 4-frame chunk of pixels at steady state (I2V encodes its whole clip so)."""
    return _cached("vae_encode", _vae_encode, arch, height, width)
