"""Context-parallel scaling: seconds per step of one window, and bytes each rank exchanges per step.

    python benchmarks/parallel_scaling.py predict              # the table for RESULTS.md (no processes)
    python benchmarks/parallel_scaling.py cpu [--causal]       # 1, 2, 3 gloo processes, tiny DF model
    python benchmarks/parallel_scaling.py startup              # weights each rank reads, full-size models
    python benchmarks/parallel_scaling.py gpu --model PATH     # 1, 2, 4, 8 GPUs (as many as visible)

One "step" is one transformer call on a whole window (guidance's second call doubles it). Bytes are counted
by wrapping the functional collectives diffusers' hooks and attention use (all-to-all, all-gather): what
leaves each rank. Prediction, Ulysses: q, k, v and the output each cross once, (N-1)/N of them leaving each
rank: 4 x tokens x dim x bytes x (N-1)/N per layer. Ring (all-gather rotation): k and v, (N-1)/N each.
`--causal` runs block-causal attention (blocks of one latent frame): Ulysses moves the same bytes, ring
all-gathers the other ranks' k and v at once, which is what the rotation passes round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

SIZES = {"1.3B": {"dim": 1536, "heads": 12, "layers": 30}, "14B": {"dim": 5120, "heads": 40, "layers": 40}}
NVLINK_GBS = 450.0  # H100 SXM NVLink 4: 900 GB/s both ways, 450 GB/s each way per GPU (all-to-all achieves less)
H100_TFLOPS = 400.0  # dense bf16 reached by attention + GEMMs in practice (of 989 peak)


def tokens(height: int, width: int, frames: int) -> int:
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def ulysses_bytes_per_layer(n_tokens: int, dim: int, world: int, nbytes: int = 2) -> float:
    """Bytes one rank sends per layer: q, k, v in, the output back, each (N-1)/N of its shard... of the
    whole: every rank holds tokens/N x dim of each and keeps 1/N of it."""
    return 4 * (n_tokens / world) * dim * nbytes * (world - 1) / world


def ring_bytes_per_layer(n_tokens: int, dim: int, world: int, nbytes: int = 2) -> float:
    """Bytes one rank receives per layer with the all-gather rotation: the other ranks' k and v."""
    return 2 * (n_tokens / world) * dim * nbytes * (world - 1)


def step_flops(n_tokens: int, dim: int, layers: int, text: int = 512) -> float:
    """Transformer FLOPs of one call: projections and FFN (about 24 x dim^2 per token and layer with the
    4x-wide... here Wan's ffn 8960/1536 and 13824/5120: ~2.7x), plus self-attention 4 x S^2 x dim."""
    linear = 2 * n_tokens * layers * dim * dim * (4 + 1 + 1 + 2 * 2.7)  # qkvo, cross q/o, ffn
    attention = 4 * n_tokens * n_tokens * dim * layers + 4 * n_tokens * text * dim * layers
    return linear + attention


def predict(height: int = 544, width: int = 960, frames: int = 97) -> list[dict]:
    rows = []
    n = tokens(height, width, frames)
    for name, size in SIZES.items():
        compute = step_flops(n, size["dim"], size["layers"]) / (H100_TFLOPS * 1e12)
        for world in (1, 2, 4, 8):
            per_layer = ulysses_bytes_per_layer(n, size["dim"], world)
            comm = per_layer * size["layers"] / (NVLINK_GBS * 1e9)
            # no overlap assumed (diffusers' Ulysses waits on each all-to-all): time = compute/N + comm
            step = compute / world + comm
            rows.append({"model": name, "gpus": world, "tokens": n, "ulysses_mb_per_layer": per_layer / 1e6,
                         "mb_per_step": per_layer * size["layers"] / 1e6, "compute_s": compute / world,
                         "comm_s": comm, "speedup": compute / step})
    return rows


# ------------------------------------------------------------------ measuring


class Counter:
    """Wraps the functional collectives to add up the bytes this rank sends (all-to-all) or receives
    (all-gather)."""

    def __init__(self) -> None:
        import torch.distributed._functional_collectives as fc

        self.sent = 0
        self.calls = 0
        # Newer torch's all_gather_tensor calls all_gather_single: count the one that does the work.
        gather = "all_gather_single" if hasattr(fc, "all_gather_single") else "all_gather_tensor"
        for name in ("all_to_all_single", gather):
            setattr(fc, name, self._wrap(getattr(fc, name), name))

    def _wrap(self, original, name: str):
        import inspect

        import torch.distributed as dist

        signature = inspect.signature(original)

        def counted(tensor, *args, **kwargs):
            world = dist.get_world_size(signature.bind(tensor, *args, **kwargs).arguments["group"])
            size = tensor.numel() * tensor.element_size()
            self.sent += size * (world - 1) / world if name == "all_to_all_single" else size * (world - 1)
            self.calls += 1
            return original(tensor, *args, **kwargs)

        return counted


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from skyreels_cli.models.tiny import build_components
    from skyreels_cli.runtime import parallel as P
    from skyreels_cli.runtime.modulation import install_per_frame_modulation

    transformer = build_components("df", 0)["transformer"] if args.model is None else _load(args.model)
    install_per_frame_modulation(transformer)
    device = torch.device("cpu") if args.mode == "cpu" else torch.device("cuda", rank)
    dtype = torch.float32 if args.mode == "cpu" else torch.bfloat16
    transformer.to(device, dtype)
    counter = None
    if world > 1:
        P.init_parallel(device, watchdog=False)
        layout = P.choose_layout(transformer.config.num_attention_heads, world)
        P.enable_context_parallel(transformer, layout, device, per_frame=True)
        counter = Counter()
    latent = (1, 16, args.latent_frames, args.height // 8, args.width // 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(latent, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (1, args.latent_frames), generator=g).to(device)
    text = torch.randn(1, 512, transformer.config.text_dim, generator=g).to(device, dtype)

    def step():
        with torch.no_grad():
            transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, enable_diffusion_forcing=True,
                        fps=[1], return_dict=False)

    if args.causal:  # blocks of one latent frame, as `extend --causal-attention --causal-block 1`
        from skyreels_cli.forcing.causal_attention import causal_attention

        causal = causal_attention(transformer, (1,) * args.latent_frames, (args.height // 16) * (args.width // 16))
        causal.__enter__()
    step()  # warm-up
    if counter:
        counter.sent = counter.calls = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    if rank == 0:
        cfg = transformer.config
        n = args.latent_frames * (args.height // 16) * (args.width // 16)
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        nbytes = 4 if dtype == torch.float32 else 2
        layout = P.choose_layout(cfg.num_attention_heads, world) if world > 1 else None
        per_layer = 0.0 if layout is None else (
            ulysses_bytes_per_layer(n, dim, world, nbytes) if layout.ring == 1
            else ring_bytes_per_layer(n, dim, world, nbytes))
        gather = 0 if world == 1 else n / world * dim * nbytes * (world - 1)  # norm_out all-gather
        queue.put({"processes": world, "layout": layout.describe() if layout else "-", "s_per_step": seconds,
                   "bytes_per_step": (counter.sent / args.steps) if counter else 0,
                   "predicted_bytes": per_layer * cfg.num_layers + gather})


def _load(path: str):
    from diffusers import SkyReelsV2Transformer3DModel

    return SkyReelsV2Transformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch.bfloat16)


def measure(args) -> list[dict]:
    import torch.multiprocessing as mp

    counts = (1, 2, 3) if args.mode == "cpu" else tuple(n for n in (1, 2, 4, 8) if n <= torch.cuda.device_count())
    ctx = mp.get_context("spawn")
    rows = []
    for i, world in enumerate(counts):
        queue = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(r, world, 29600 + i, args, queue)) for r in range(world)]
        for p in procs:
            p.start()
        rows.append(queue.get(timeout=1200))
        for p in procs:
            p.join()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def startup() -> list[dict]:
    """Weights each rank of a context-parallel run holds after loading, for every released architecture
    (from the planner's fake-tensor traces: bf16 transformer and encoders, fp32 VAE). Rank 0 reads every
    component; the others read the transformer only (runtime/parallel.py FOLLOWER_READS)."""
    from skyreels_cli.models.architectures import ARCHITECTURES
    from skyreels_cli.runtime import trace

    rows = []
    for arch in ARCHITECTURES.values():
        parts = {
            "transformer": trace.trace_transformer_weights(arch.transformer),
            "text_encoder": trace.trace_text_encoder(arch.text_encoder).weights,
            "vae": trace.trace_vae_encode(arch.vae, 544, 960).weights,
            "image_encoder": trace.trace_image_encoder(arch.image_encoder).weights if arch.image_encoder else 0,
        }
        everything = sum(parts.values())
        rows.append({"model": arch.name, **{k: v / 1e9 for k, v in parts.items()}, "rank_0_gb": everything / 1e9,
                     "other_rank_gb": parts["transformer"] / 1e9,
                     "host_gb_8_ranks_before": 8 * everything / 1e9,
                     "host_gb_8_ranks_now": (everything + 7 * parts["transformer"]) / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("predict", "cpu", "gpu", "startup"))
    parser.add_argument("--causal", action="store_true", help="block-causal attention (blocks of one frame)")
    parser.add_argument("--model", help="a DF checkpoint folder (gpu mode); the tiny random model otherwise")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--latent-frames", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.mode in ("predict", "startup"):
        for row in predict() if args.mode == "predict" else startup():
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        return
    cpu = args.mode == "cpu"
    args.height = args.height or (64 if cpu else 544)
    args.width = args.width or (64 if cpu else 960)
    args.latent_frames = args.latent_frames or (6 if cpu else 25)  # 6 x 16 tokens split 2 and 3 ways
    measure(args)


if __name__ == "__main__":
    sys.exit(main())
