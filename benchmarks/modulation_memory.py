"""Activation memory of one DF forward at full size: diffusers' per-token modulation vs our per-frame one.

Everything runs on fake tensors (`FakeTensorMode`: shapes and dtypes, no storage), so a 14B model at
544x960x97 traces on any CPU in a few seconds; `MemTracker` adds up the storages each op would allocate.
Weights are bf16 through `torch.set_default_dtype` (not `.to()`, which would count a second copy).
Three runs per model: diffusers as shipped with per-frame timesteps, ours with per-frame timesteps,
and diffusers with one shared timestep (the floor the per-frame modulation should approach).

    python benchmarks/modulation_memory.py            # DF-14B and DF-1.3B
    python benchmarks/modulation_memory.py --model 1.3b
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import SkyReelsV2Transformer3DModel
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from skyreels_cli.runtime.modulation import install_per_frame_modulation

GB = 1e9
# Released DF architectures (models/architectures.py); DF-1.3B has the fps embedding.
MODELS = {
    "14b": {"num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824, "inject_sample_info": False},
    "1.3b": {"num_attention_heads": 12, "num_layers": 30, "ffn_dim": 8960, "inject_sample_info": True},
}
LATENTS = (1, 16, 25, 68, 120)  # 544x960, 97 frames


def build(name: str) -> SkyReelsV2Transformer3DModel:
    """A full-size DF transformer with random fake weights (bf16 by default dtype)."""
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
        freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", **MODELS[name],
    ).eval()


def measure(model: SkyReelsV2Transformer3DModel, per_frame_timesteps: bool) -> dict[str, float]:
    """Weights, activation peak and total peak (GB) of one no-grad forward."""
    frames = LATENTS[2]
    latents = torch.randn(LATENTS)
    embeds = torch.randn(1, 512, 4096)
    # timesteps decreasing along the window, as in an asynchronous diffusion-forcing row
    timestep = torch.linspace(999, 0, frames).long()[None] if per_frame_timesteps else torch.tensor([500])
    tracker = MemTracker()
    tracker.track_external(model, latents, embeds, timestep)
    with tracker, torch.no_grad():
        model(latents, timestep, embeds, enable_diffusion_forcing=per_frame_timesteps, fps=[1], return_dict=False)
    (snap,) = tracker.get_tracker_snapshot("peak").values()
    by_kind = {str(getattr(k, "value", k)): v for k, v in snap.items()}
    weights = by_kind.get("Parameter", 0) + by_kind.get("Buffer", 0)
    return {"weights": weights / GB, "activations": by_kind.get("Activation", 0) / GB, "total": by_kind["Total"] / GB}


def run(name: str) -> None:
    torch.set_default_dtype(torch.bfloat16)
    try:
        with FakeTensorMode():
            model = build(name)
            rows = {
                "diffusers, per-frame timesteps": measure(model, True),
                "diffusers, one shared timestep": measure(model, False),
            }
            install_per_frame_modulation(model)
            rows["ours, per-frame timesteps"] = measure(model, True)
    finally:
        torch.set_default_dtype(torch.float32)
    print(f"DF-{name.upper()} at 544x960x97 (latents {LATENTS}), bf16, batch 1, GB = 1e9 bytes")
    for label, r in rows.items():
        print(f"  {label:32s} weights {r['weights']:6.2f}  activations {r['activations']:6.2f}  "
              f"total {r['total']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    args = parser.parse_args()
    for name in MODELS if args.model == "all" else [args.model]:
        start = time.perf_counter()
        run(name)
        print(f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
