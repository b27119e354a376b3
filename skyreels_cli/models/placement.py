"""Where a loaded model's components live: what works on the device, the text encoder only while it encodes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Components that work in every request stay on the device; the text encoder (UMT5-XXL, about
# 11 GB in bf16) is needed once per prompt, so it waits on the host in between.
RESIDENT = ("transformer", "vae", "image_encoder")


class Placement:
    def __init__(self, components: dict, device: torch.device) -> None:
        self.components = components
        self.device = device
        for name in RESIDENT:
            if components.get(name) is not None:
                components[name].to(device)

    @property
    def parks_text_encoder(self) -> bool:
        return self.device.type != "cpu"

    @contextmanager
    def text_encoder(self) -> Iterator[torch.nn.Module]:
        """The text encoder on the device for the calls inside, back on the host after."""
        encoder = self.components["text_encoder"]
        encoder.to(self.device)
        try:
            yield encoder
        finally:
            if self.parks_text_encoder:
                encoder.to("cpu")
                torch.cuda.empty_cache()
