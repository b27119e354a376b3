"""Where a loaded model's components live, phase by phase, as its memory plan says.

A run has phases: encoding the prompt (text encoder), encoding images (VAE encoder, I2V image encoder),
denoising (transformer) and decoding (VAE). `Placement` applies a `MemoryPlan` once at load (weight
storage, offload hooks, what stays resident) and then gives one context manager per phase that brings the
components the phase uses onto the device and, unless the plan keeps them resident, sends them back to the
host after:

    placement = Placement(components, device, MemoryPlan(offload="model"))
    with placement.encoding() as text_encoder: ...
    with placement.denoising() as transformer: ...
    with placement.decoding() as vae: ...

Offload "none" keeps transformer, VAE and image encoder on the device; the text encoder (UMT5-XXL, about
11 GB in bf16) is needed once per prompt, so it waits on the host and visits only while it encodes (the
resident ones step out first if the planner said it does not fit beside them); under
`--text-encoder-device disk` it is not kept on the host at all: read from the checkpoint straight onto the
device for each prompt not yet encoded, and freed after. "model" keeps nothing resident. "group"/"sequential" are "model" with the transformer never moved by us: diffusers' hooks
stream its weights in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..models.loading import is_empty
from .memory import MemoryPlan, apply_offload_hooks, apply_quantization

HOST = torch.device("cpu")
TEXT = "text_encoder"


class Placement:
    """Applies `plan` to `components` (on the host, as loaded) for runs on `device`. `read_text_encoder(device)`:
    the text encoder read from the checkpoint onto `device`, for a plan that frees it between prompts ("disk")."""

    def __init__(self, components: dict, device: torch.device, plan: MemoryPlan | None = None,
                 read_text_encoder: Callable[[torch.device], torch.nn.Module] | None = None) -> None:
        # A stand-in with no weights (a follower rank's VAE, models/loading.py) is never placed.
        self.components = {name: c for name, c in components.items() if not is_empty(c)}
        self.device = torch.device(device)
        self.plan = plan or MemoryPlan()
        self.read_text_encoder = read_text_encoder if self.plan.text_encoder_device == "disk" else None
        self._in_use: Counter[str] = Counter()
        # Where each component is now (as loaded: the host): moves to where it already is are skipped.
        self.location = {name: _device_of(c) for name, c in self.components.items()
                         if isinstance(c, torch.nn.Module)}
        transformer = self.components.get("transformer")
        if transformer is not None:
            # Storage first: group offload then pins and moves the weights as they will be stored.
            apply_quantization(transformer, self.plan.quantize)
            apply_offload_hooks(transformer, self.plan.offload, self.device)
        for name in self.plan.resident:
            self._move(name, self.device)

    # ------------------------------------------------------------ where things run

    @property
    def text_encoder_device(self) -> torch.device:
        """Where the prompt is encoded; the embeddings then go to `device`."""
        return HOST if self.plan.text_encoder_device == "cpu" else self.device

    def moves_itself(self, name: str) -> bool:
        """Components whose placement offload hooks own (we must not `.to()` them: diffusers refuses)."""
        return name == "transformer" and self.plan.streams_transformer

    # ------------------------------------------------------------ phases

    @contextmanager
    def using(self, *names: str) -> Iterator[None]:
        """The named components (those present) on the device for the calls inside; after, back to the host
        unless the plan keeps them resident. Nested phases share components without moving them twice."""
        names = tuple(n for n in names if self.components.get(n) is not None or self._reads(n))
        evicted = self._evictions(names)
        for name in evicted:
            self._move(name, HOST)
        for name in names:
            if self._in_use[name] == 0 and self._reads(name):
                self._read(name)
            elif self._in_use[name] == 0:
                self._move(name, self.text_encoder_device if name == TEXT else self.device)
            self._in_use[name] += 1
        try:
            yield
        finally:
            leaving = []
            for name in names:
                self._in_use[name] -= 1
                if self._in_use[name] == 0 and name not in self.plan.resident:
                    leaving.append(name)
            for name in leaving:
                self._free(name) if self._reads(name) else self._move(name, HOST)
            if leaving and self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the freed blocks back before the next phase's large allocations
            for name in evicted:
                self._move(name, self.device)

    @contextmanager
    def encoding(self) -> Iterator[torch.nn.Module]:
        """The text encoder where it encodes (`text_encoder_device`)."""
        with self.using(TEXT):
            yield self.components[TEXT]

    @contextmanager
    def encoding_images(self) -> Iterator[torch.nn.Module]:
        """VAE (its encoder) and, for I2V, the image encoder: start/end images and continued videos."""
        with self.using("vae", "image_encoder"):
            yield self.components["vae"]

    @contextmanager
    def denoising(self) -> Iterator[torch.nn.Module]:
        with self.using("transformer"):
            yield self.components["transformer"]

    @contextmanager
    def decoding(self) -> Iterator[torch.nn.Module]:
        with self.using("vae"):
            yield self.components["vae"]

    @contextmanager
    def clip(self) -> Iterator[None]:
        """A T2V/I2V diffusers pipeline call: it encodes the image and denoises in one call, so its components
        come together (the transformer still streams under group/sequential)."""
        with self.using("transformer", "vae", "image_encoder"):
            yield

    # ------------------------------------------------------------ moves

    def _evictions(self, names: tuple[str, ...]) -> tuple[str, ...]:
        # Only the text encoder visiting the device can crowd out residents, and only when the planner
        # said it does not fit beside them.
        if TEXT not in names or self.plan.text_encoder_beside or self.text_encoder_device.type == "cpu":
            return ()
        return tuple(n for n in self.plan.resident if self.components.get(n) is not None and not self._in_use[n])

    def _reads(self, name: str) -> bool:
        """The text encoder under "disk": read when it is used, freed when it leaves the device."""
        return name == TEXT and self.read_text_encoder is not None

    def _read(self, name: str) -> None:
        if self.components.get(name) is None:
            self.components[name] = self.read_text_encoder(self.device)
            self.location[name] = self.device

    def _free(self, name: str) -> None:
        """Drop our references (the pipeline's is dropped by its caller: core/conditioning.py)."""
        self.components.pop(name, None)
        self.location.pop(name, None)

    def _move(self, name: str, where: torch.device) -> None:
        module = self.components.get(name)
        if module is None or self.moves_itself(name) or self.location.get(name) == where:
            return
        module.to(where)
        self.location[name] = where


def _device_of(module: torch.nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), HOST)
