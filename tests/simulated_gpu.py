"""A CUDA GPU simulated on the CPU for the code that chooses kernels: its generation, and which of diffusers'
attention backends are installed (diffusers' own requirement check answers for them; Hub kernels count as
fetched). What is decided from these facts then runs through diffusers' real checks."""

from __future__ import annotations

import torch

HUB = ("flash_hub", "_flash_3_hub", "sage_hub")
PACKAGED = {"flash", "_flash_3", "sage", "xformers", *HUB}  # backends that need something installed


def patches(sm: int, installed) -> list[tuple[object, str, object]]:
    """(owner, name, stand-in) for each attribute to replace to be on a GPU of generation `sm` (90: Hopper) with
    the backends in `installed`."""
    from diffusers.models import attention_dispatch as ad

    real, installed = ad._check_attention_backend_requirements, set(installed)

    def requirements(backend):
        if backend.value in PACKAGED and backend.value not in installed:
            raise RuntimeError(f"{backend.value} is not installed (simulated)")
        if backend.value not in PACKAGED:
            real(backend)

    return [(torch.cuda, "get_device_capability", lambda device=None: divmod(sm, 10)),
            (torch.cuda, "get_device_name", lambda device=None: f"GPU sm{sm}"),
            (ad, "_check_attention_backend_requirements", requirements),
            (ad, "_maybe_download_kernel_for_backend", lambda backend: None)]


class Simulated:
    """`patches` applied while inside (undone on exit)."""

    def __init__(self, sm: int, installed) -> None:
        self.sm, self.installed = sm, tuple(installed)

    def __enter__(self) -> Simulated:
        replaced = patches(self.sm, self.installed)
        self.saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
        for owner, name, value in replaced:
            setattr(owner, name, value)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, value in self.saved:
            setattr(owner, name, value)
