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
    """Refuse --compile where it cannot work, before anything loads: inductor builds C++ for the CPU, and
    on CUDA Triton builds a small C launcher at its first kernel (minutes into a run, after the load)."""
    flag = setting("compile", True)
    if device.type == "cpu" and not _has_compiler(CXX):
        raise DeviceError(f"{flag} on the CPU needs a C++ compiler (g++ or clang++) on the PATH; install one "
                          f"(e.g. apt-get install g++) or leave out {flag}")
    if device.type == "cuda" and not _has_c_compiler():
        raise DeviceError(f"{flag} on CUDA needs a C compiler for Triton (cc, gcc or clang on the PATH, or $CC); "
                          f"install one (e.g. apt-get install gcc) or leave out {flag}")


def compile_blocks(transformer: torch.nn.Module, device: torch.device) -> None:
    """Compile each transformer block in place (after any forward patches, so they are compiled too)."""
    check_compile(device)
    # A long run sees a new shape only at its last window; allow a few recompiles before eager fallback.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=False)


# What inductor's C++ backend looks for, and what Triton's launcher build does ($CC first, then these).
CXX = ("g++", "c++", "clang++")
CC = ("cc", "gcc", "clang")


def _has_compiler(names: tuple[str, ...]) -> bool:
    import shutil

    return any(shutil.which(name) for name in names)


def _has_c_compiler() -> bool:
    import os
    import shutil

    given = os.environ.get("CC")
    return bool(shutil.which(given)) if given else _has_compiler(CC)
