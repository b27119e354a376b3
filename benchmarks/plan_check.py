"""The VRAM planner's predicted peaks against the same runs measured for real on the CPU (issue 8, benchmark 2).

The planner (skyreels_cli/runtime/plan.py) adds up per-phase traces made on fake tensors
(runtime/trace.py: `FakeTensorMode` plus the live-storage byte counter `LiveBytes`). Here each traced
run is repeated on real tensors with real random weights, under the same `LiveBytes` counter, so the
two figures differ only by what fake tensors get wrong; the process's resident-set growth (psutil,
and the kernel's high-water mark reset through /proc/self/clear_refs) is printed beside it for
orientation: it also sees what no tensor storage holds (oneDNN scratch, allocator slack).

Covered: one transformer forward (per-frame modulation on/off, batch 1/2, bf16, fp32, fp8 storage),
one steady-state latent frame of VAE decode (untiled, and every tile of a tiled decode), one prompt
through a small UMT5 encoder. fp32 transformers are not a plan the planner makes (it plans bf16
weights): their "prediction" is the planner's own tracing method at fp32 (`fake_transformer`).

    python benchmarks/plan_check.py            # every case, a few minutes on 2 cores
    python benchmarks/plan_check.py --quick    # the tiny architecture only, seconds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Self

import psutil
import torch

from skyreels_cli.forcing.tiling import tile_grid
from skyreels_cli.models.architectures import TextEncoderArch, TransformerArch, VaeArch
from skyreels_cli.runtime import trace
from skyreels_cli.runtime.modulation import (
    install_per_frame_modulation,
    remove_per_frame_modulation,
)
from skyreels_cli.runtime.trace import default_dtype

MB = 1e6
TARGET = 0.15  # |predicted / measured - 1| the planner aims to stay within
TINY = TransformerArch(heads=2, head_dim=12, layers=2, ffn=32, text_dim=32, freq_dim=32)  # models/tiny.py
# The released 1.3B's width (12 heads x 128, ffn 8960) and text_dim, two blocks instead of thirty.
MID = TransformerArch(heads=12, layers=2, ffn=8960)
SIZES = ((64, 96, 5), (128, 192, 9))  # pixels high, wide, latent frames
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp8": torch.bfloat16}  # fp8: bf16 compute
# UMT5 with the real vocabulary and token count, narrow and shallow; and one as small as the tiny model's.
TEXT = {"umt5-small": TextEncoderArch(d_model=512, layers=4, heads=8, d_kv=64, d_ff=1024),
        "umt5-tiny": TextEncoderArch(d_model=32, layers=2, heads=4, d_kv=8, d_ff=64, vocab=1000)}
VAES = {"vae-narrow": VaeArch(base_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1),
        "vae-base32": VaeArch(base_dim=32), "vae-released": VaeArch()}


@dataclass(frozen=True)
class Row:
    """One comparison: activation peaks (above weights and inputs) and whole peaks, in bytes."""

    phase: str
    model: str
    case: str
    predicted: int
    measured: int
    predicted_total: int
    measured_total: int
    rss: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.predicted / self.measured

    def line(self) -> str:
        total_ratio = self.predicted_total / self.measured_total
        ok = "yes" if abs(self.ratio - 1) <= TARGET else "NO"
        return (f"| {self.phase} | {self.model} | {self.case} | {self.predicted / MB:.2f} | {self.measured / MB:.2f} "
                f"| {self.ratio:.3f} | {ok} | {self.predicted_total / MB:.1f} | {self.measured_total / MB:.1f} | "
                f"{total_ratio:.3f} | {self.rss / MB:.1f} | {self.seconds:.1f} |")


HEADER = ("| phase | model | case | predicted act. MB | measured act. MB | ratio | within 15% | predicted total MB "
          "| measured total MB | ratio | RSS growth MB | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


# ---------------------------------------------------------------------------------------------- measuring

def _trim() -> None:
    """Give freed heap back to the kernel so the next RSS growth starts from what is live (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Growth of the resident set over a block: the kernel's high-water mark (VmHWM) reset at entry through
    /proc/self/clear_refs, else a psutil sampling thread (which can miss a short peak)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.growth = 0
        self._peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        self.before = self.process.memory_info().rss
        self._exact = _reset_hwm()
        if not self._exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._exact:
            peak = _hwm()
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.growth = max(peak, self.process.memory_info().rss) - self.before

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self.process.memory_info().rss)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _hwm() > 0


def _hwm() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Measured:
    weights: int
    inputs: int
    activations: int
    rss: int
    seconds: float


def measure(module: torch.nn.Module, inputs: list, run: Callable[[], torch.Tensor]) -> Measured:
    """`trace._measure` on real tensors: the same counter, weights and inputs tracked the same way, plus RSS."""
    _trim()
    start = time.perf_counter()
    with trace.LiveBytes() as live, torch.no_grad():
        weights = live.track(module)
        given = live.track(*inputs)
        inputs.clear()  # as in the trace: what `run` replaces (a VAE's cache entries) may die
        live.reset_peak()
        with PeakRss() as rss:
            out = run()
        out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
        # a real computation, not an empty one (a flat output would hide a skipped branch)
        assert out.float().std() > 0, "the measured run produced a constant output"
        return Measured(weights, given, live.peak - weights - given, rss.growth, time.perf_counter() - start)


def row(phase: str, model: str, case: str, predicted: trace.Trace, real: Measured) -> Row:
    return Row(phase, model, case, predicted.activations, real.activations,
               predicted.weights + predicted.inputs + predicted.activations,
               real.weights + real.inputs + real.activations, real.rss, real.seconds)


# ---------------------------------------------------------------------------------------------- transformer

def real_transformer(arch: TransformerArch, storage: str, modulation: bool) -> torch.nn.Module:
    """Random weights as `from_pretrained(dtype=...)` leaves them; fp8: diffusers' layerwise casting on top."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    with default_dtype(DTYPES[storage]):
        model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
    trace._keep_in_fp32(model)
    if modulation:  # before any hooks (install_per_frame_modulation's rule)
        install_per_frame_modulation(model)
    if storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return model


def fake_transformer(arch: TransformerArch, height: int, width: int, latents: int, batch: int,
                     modulation: bool, dtype: torch.dtype) -> trace.Trace:
    """The planner's tracing method (`trace._transformer`) at another dtype: the planner only plans bf16."""
    from diffusers import SkyReelsV2Transformer3DModel

    with trace._fake_mode():
        with default_dtype(dtype):
            model = SkyReelsV2Transformer3DModel(**arch.config()).eval()
        trace._keep_in_fp32(model)
        if modulation:
            install_per_frame_modulation(model)
        x, t, text = transformer_inputs(arch, height, width, latents, batch, dtype)
        weights, given, peak = trace._measure(model, [x, t, text], partial(forward, model, x, t, text))
    return trace.Trace(weights=weights, activations=peak, inputs=given)


def forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> tuple:
    """One diffusion-forcing forward (per-frame timesteps), as the engine calls it."""
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, enable_diffusion_forcing=True,
                 return_dict=False)


def transformer_inputs(arch: TransformerArch, height: int, width: int, latents: int, batch: int,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, arch.in_channels, latents, height // 8, width // 8, dtype=dtype)
    # a different noise level on every frame (the diffusion-forcing case per-frame modulation is for)
    t = torch.linspace(999, 0, latents).long()[None].repeat(batch, 1)
    text = torch.randn(batch, 512, arch.text_dim, dtype=dtype)
    return x, t, text


def predicted_transformer(arch: TransformerArch, size: tuple[int, int, int], batch: int, storage: str,
                          modulation: bool) -> trace.Trace:
    if storage == "fp32":
        return fake_transformer(arch, *size, batch, modulation, torch.float32)
    return trace.trace_transformer(arch, *size, batch=batch, weights=storage, per_frame_modulation=modulation)


def transformer_rows(name: str, arch: TransformerArch, cases: list[tuple[str, bool, int]],
                     sizes: tuple[tuple[int, int, int], ...] = SIZES) -> Iterator[Row]:
    """`cases`: (storage, per-frame modulation, batch), each at every size of `sizes`."""
    for storage, modulation, batch in cases:
        model = real_transformer(arch, storage, modulation)
        for size in sizes:
            x, t, text = transformer_inputs(arch, *size, batch, DTYPES[storage])
            real = measure(model, [x, t, text], partial(forward, model, x, t, text))
            del x, text
            predicted = predicted_transformer(arch, size, batch, storage, modulation)
            case = f"{size[0]}x{size[1]}x{size[2]}, {storage}, batch {batch}, modulation {'on' if modulation else 'off'}"
            yield row("denoise", name, case, predicted, real)
        if modulation and storage != "fp8":
            remove_per_frame_modulation(model)
        del model


# ---------------------------------------------------------------------------------------------- VAE decode

def real_vae(arch: VaeArch) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(**arch.config()).eval()


def decode_frame(vae: torch.nn.Module, z: torch.Tensor) -> Measured:
    """One steady-state latent frame through the decoder: its cache filled by two frames first, as traced."""
    cache: list = [None] * vae._cached_conv_counts["decoder"]
    with torch.no_grad():
        for first in (True, False):
            vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=first)
    return measure(vae, [z, *trace._tensors(cache)],
                   lambda: vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0]))


def vae_rows(name: str, arch: VaeArch, height: int, width: int, tiled: bool) -> Iterator[Row]:
    """Untiled: the whole picture. Tiled: every tile of diffusers' default grid decoded as `TiledStream` does
    (its own cache, `post_quant_conv` on the tile's window), the largest measured peak against the prediction."""
    vae = real_vae(arch)
    torch.manual_seed(1)
    z = torch.randn(1, arch.z_dim, 1, height // 8, width // 8)
    grid = tile_grid(height, width)
    windows = [t.window(z) for t in grid.tiles()] if tiled else [z]
    measured = [decode_frame(vae, w.contiguous()) for w in windows]
    worst = max(measured, key=lambda m: m.activations)
    predicted = trace.trace_vae_decode(arch, height, width, tiled=tiled)
    real = Measured(worst.weights, worst.inputs, worst.activations, max(m.rss for m in measured),
                    sum(m.seconds for m in measured))
    case = f"{height}x{width}, " + (f"tiled ({grid.count} tiles of <= 256 px, largest)" if tiled else "untiled")
    yield row("decode", name, case, predicted, real)


# ---------------------------------------------------------------------------------------------- text encoder

def text_rows(name: str, arch: TextEncoderArch) -> Iterator[Row]:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with default_dtype(torch.bfloat16):
        model = UMT5EncoderModel(UMT5Config(**arch.config())).eval()
    ids = torch.randint(0, arch.vocab, (1, arch.tokens))
    mask = torch.ones(1, arch.tokens, dtype=torch.long)
    real = measure(model, [ids, mask], lambda: model(input_ids=ids, attention_mask=mask))
    yield row("text", name, f"{arch.tokens} tokens, bf16, d_model {arch.d_model}, {arch.layers} layers",
              trace.trace_text_encoder(arch), real)


# ---------------------------------------------------------------------------------------------- the run

def every_row(quick: bool) -> Iterator[Row]:
    grid = [(s, m, b) for s in ("bf16",) for m in (True, False) for b in (1, 2)]
    grid += [("fp32", True, 1), ("fp32", False, 1), ("fp32", True, 2), ("fp8", True, 1), ("fp8", False, 2)]
    yield from transformer_rows("tiny", TINY, grid)
    yield from text_rows("umt5-tiny", TEXT["umt5-tiny"])
    yield from vae_rows("vae-narrow", VAES["vae-narrow"], 64, 96, tiled=False)
    yield from vae_rows("vae-narrow", VAES["vae-narrow"], 320, 448, tiled=True)
    if quick:
        return
    yield from transformer_rows("2x1536", MID, grid)
    # fp8's one-layer upcast against activations 4x larger: the planner's fp8 margin shrinks with the size
    yield from transformer_rows("2x1536", MID, [("fp8", True, 1)], sizes=((256, 384, 9),))
    yield from text_rows("umt5-small", TEXT["umt5-small"])
    yield from vae_rows("vae-narrow", VAES["vae-narrow"], 128, 192, tiled=False)
    yield from vae_rows("vae-base32", VAES["vae-base32"], 128, 192, tiled=False)
    yield from vae_rows("vae-base32", VAES["vae-base32"], 320, 448, tiled=True)
    yield from vae_rows("vae-released", VAES["vae-released"], 128, 192, tiled=False)


def machine() -> str:
    import diffusers
    import transformers

    return (f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
            f"threads {torch.get_num_threads()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny architecture only")
    args = parser.parse_args()
    # fresh traces, never the user's cached ones (which an older trace version could have written)
    os.environ["SKYREELS_CACHE"] = tempfile.mkdtemp(prefix="plan_check-")
    print(machine())
    print(HEADER, flush=True)
    rows = []
    for r in every_row(args.quick):
        rows.append(r)
        print(r.line(), flush=True)
    off = [r for r in rows if abs(r.ratio - 1) > TARGET]
    ratios = [r.ratio for r in rows]
    print(f"\n{len(rows)} comparisons, activation ratio predicted/measured {min(ratios):.3f} .. {max(ratios):.3f}; "
          f"{len(off)} outside {TARGET:.0%}" + "".join(f"\n  outside: {r.model} {r.case}" for r in off))


if __name__ == "__main__":
    main()
