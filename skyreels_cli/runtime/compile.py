"""`--compile`: regional compilation of the transformer's repeated blocks.

Compiling the 30-40 identical blocks one by one (diffusers' `compile_repeated_blocks`)
costs one block's compile, not the whole model's, and every window of a diffusion
forcing run has the same shapes (the planner keeps windows equal: see windows.py), so a
long run compiles once. `dynamic=False` keeps the kernels specialised to those shapes; a
differently sized last window recompiles once more rather than making every window slower.
"""

from __future__ import annotations

import torch

from ..errors import DeviceError, setting


def check_compile(device: torch.device) -> None:
    """Refuse --compile where it cannot work, before anything loads."""
    if device.type == "cpu" and not _has_compiler():
        raise DeviceError(f"{setting('compile', True)} on the CPU needs a C++ compiler (gcc or clang) on the PATH; install one or "
                          f"leave out {setting('compile', True)}")


def compile_blocks(transformer: torch.nn.Module, device: torch.device) -> None:
    """Compile each transformer block in place (after any forward patches, so they are compiled too)."""
    check_compile(device)
    # A long run sees a new shape only at its last window; allow a few recompiles before eager fallback.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=False)


def _has_compiler() -> bool:
    import shutil

    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))
