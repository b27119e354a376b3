"""The resume state of `extend` with the released Wan VAE architecture (random weights).

1. How many latent frames rebuild the decoder's cache exactly (`replay_length`), checked
   against a long decode: the replay is bit-exact, one latent short of the receptive field is not.
2. The size of the state file written after each window at 544x960 and 1280x720, against the
   decoder cache it replaces (traced on fake tensors: nothing is allocated).

    python benchmarks/resume_state.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from skyreels_cli.forcing.decoding import StreamingDecoder, replay_length
from skyreels_cli.forcing.engine import EngineState
from skyreels_cli.forcing.resume import save_state

SIZES = {"544x960": (544, 960), "720x1280": (720, 1280)}


def check_replay(vae) -> None:
    keep = replay_length(vae)
    minimum = keep - 2  # the receptive field rounded up (replay_length adds two frames of margin)
    z = torch.randn(1, 16, 56, 4, 4, generator=torch.Generator().manual_seed(0))
    straight = StreamingDecoder(vae)
    straight.decode(z[:, :, :48])
    expected = straight.decode(z[:, :, 48:])
    for n in (keep, minimum, minimum - 1):
        decoder = StreamingDecoder(vae)
        decoder.load_state_dict({"history": z[:, :, 48 - n:48], "latents_seen": 48})
        out = decoder.decode(z[:, :, 48:])
        print(f"replay of {n:2d} latents, then 8 more: max difference {(out - expected).abs().max().item():.3g} "
              f"({'exact' if torch.equal(out, expected) else 'not exact'})")


def cache_bytes(height: int, width: int) -> int:
    """Bytes of the decoder's causal cache after two latent frames, traced on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        vae = AutoencoderKLWan().eval()
        decoder = StreamingDecoder(vae)
        with torch.no_grad():
            decoder._decode(torch.zeros(1, 16, 2, height // 8, width // 8), progress=False)
        return sum(c.numel() * c.element_size() for c in decoder.cache if isinstance(c, torch.Tensor))


def state_bytes(vae, height: int, width: int) -> int:
    """Size of the state file after a window deep into a long video (history at its full length)."""
    latent = (1, 16, 0, height // 8, width // 8)
    history = torch.randn(*latent[:2], replay_length(vae), *latent[3:])
    prefix = torch.randn(*latent[:2], 5, *latent[3:])  # overlap 17 frames
    state = EngineState(7, prefix, None, {"history": history, "latents_seen": 200},
                        torch.Generator().manual_seed(0).get_state())
    with tempfile.TemporaryDirectory() as tmp:
        request = {"prompt": "a red fox", "frames": 1457}
        return save_state(Path(tmp), request, {"repo": "x"}, state, 800).stat().st_size


def main() -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.platform()}, torch {torch.__version__}")
    vae = AutoencoderKLWan().eval()  # the released Wan2.1 VAE architecture, random weights
    print(f"replay length: {replay_length(vae)} latent frames")
    check_replay(vae)
    print("\n| size | decoder cache (old state) | state file now |")
    print("|---|---:|---:|")
    for name, (h, w) in SIZES.items():
        print(f"| {name} | {cache_bytes(h, w) / 1e9:.2f} GB | {state_bytes(vae, h, w) / 1e6:.1f} MB |")


if __name__ == "__main__":
    main()
