"""What steers a generation, computed from a request: text embeddings, and image or video latents."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import setting, warn
from ..forcing.decoding import normalize
from ..forcing.engine import Conditioning
from ..media.images import fit_frames, fit_image, load_image
from ..media.videos import read_last_frames
from ..models.architectures import TEXT_TOKENS
from ..runtime.placement import Placement
from .request import Request


class PromptEncoder:
    """Text embeddings through the pipeline's own `encode_prompt`, remembered for the prompts used last.

    The text encoder comes to the device only while it encodes, so it never holds memory
    the transformer needs; a prompt seen again costs nothing.
    """

    def __init__(self, pipe, placement: Placement, keep: int = 8) -> None:
        self.pipe = pipe
        self.placement = placement
        self.keep = keep
        self._known: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def __call__(self, prompt: str, negative: str, guidance: float, dtype: torch.dtype) -> Conditioning:
        cfg = guidance > 1.0
        key = (prompt, negative if cfg else None)
        if key not in self._known:
            self._known[key] = self.encode(prompt, negative, cfg)
            while len(self._known) > self.keep:
                self._known.popitem(last=False)
        self._known.move_to_end(key)
        positive, negative_embeds = self._known[key]
        return Conditioning(positive.to(dtype), None if negative_embeds is None else negative_embeds.to(dtype), guidance)

    @torch.no_grad()
    def encode(self, prompt: str, negative: str, cfg: bool):
        for name, text in (("prompt", prompt), ("negative prompt", negative if cfg else None)):
            count = self.tokens(text) if text else 0
            if count > TEXT_TOKENS:
                head = text if len(text) <= 40 else text[:37].rstrip() + "..."
                warn(f"the {name} {head!r} is {count} tokens long and the text encoder reads only the first "
                     f"{TEXT_TOKENS}: the last {count - TEXT_TOKENS} are cut off; shorten it")
        with self.placement.encoding() as text_encoder:
            # read for this prompt ("disk"): the pipeline uses it, and keeps no reference once the block frees it
            read = text_encoder is not getattr(self.pipe, "text_encoder", None)
            if read:
                self.pipe.text_encoder = text_encoder
            del text_encoder
            try:
                positive, negative_embeds = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=negative, do_classifier_free_guidance=cfg,
                    max_sequence_length=TEXT_TOKENS, device=self.placement.text_encoder_device,
                )
            finally:
                if read:
                    self.pipe.text_encoder = None
        device = self.placement.device  # the text encoder may have run on the host (--text-encoder-device cpu)
        return positive.to(device), negative_embeds.to(device) if cfg else None

    def tokens(self, text: str) -> int:
        """How many tokens the pipeline's tokenizer makes of `text` (its end token included), cleaned as
        `encode_prompt` cleans it, counted without the text encoder and without cutting at 512."""
        import sys

        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None:
            return 0
        clean = getattr(sys.modules.get(type(self.pipe).__module__), "prompt_clean", None)
        ids = tokenizer(clean(text) if clean else text, add_special_tokens=True, truncation=False,
                        verbose=False)["input_ids"]
        return len(ids)


@torch.no_grad()
def encode_pixels(vae, frames: torch.Tensor) -> torch.Tensor:
    """Pixels [1, 3, T, H, W] in [-1, 1] to clean model latents (the distribution's mode, as diffusers does)."""
    latents = vae.encode(frames.to(vae.device, vae.dtype)).latent_dist.mode()
    return normalize(vae, latents.float())


def image_latent(pipe, path: str, option: str, request: Request) -> torch.Tensor:
    """A start or end image as one clean latent frame."""
    image = fit_image(load_image(path, option), request.height, request.width)
    pixels = pipe.video_processor.preprocess(image, height=request.height, width=request.width)
    return encode_pixels(pipe.vae, pixels.unsqueeze(2).float())


def video_prefix(vae, request: Request) -> torch.Tensor:
    """The last `overlap` frames of the video being continued, as clean latents."""
    tail, _ = read_last_frames(Path(request.video), request.overlap, setting("video"))
    tail = fit_frames(tail, request.height, request.width)
    pixels = torch.from_numpy(tail).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
    return encode_pixels(vae, pixels)
