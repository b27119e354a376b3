"""T2V and I2V checkpoints: one fixed-length clip through the diffusers pipeline, decoded by us."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..forcing.decoding import StreamingDecoder, to_uint8
from ..forcing.engine import Conditioning
from ..forcing.schedule import make_scheduler
from ..media.images import fit_image, load_image
from .request import Request
from .results import WindowFrames


def clip_pipeline(pipeline_cls, components: dict, request: Request):
    """A pipeline over the loaded components for one request: its own scheduler, and no text encoder
    (embeddings are given), so that the execution device is the transformer's."""
    scheduler = make_scheduler(components["scheduler"].config, request.shift, request.sigma_grid,
                               request.sampler, request.sigmas)
    return pipeline_cls(**{**components, "text_encoder": None, "tokenizer": None, "scheduler": scheduler})


@torch.no_grad()
def generate_clip(pipe, request: Request, num_frames: int, cond: Conditioning, progress: bool,
                  placement, on_step: Callable[[int, int], None] | None = None, decode: bool = True) -> WindowFrames:
    """`num_frames` (4k+1) are made and the first `request.frames` kept; `on_step(done, steps)` after each step.

    `decode=False` (context-parallel ranks but the first): the latents only, no frames."""
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    kwargs = dict(
        prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative_embeds, height=request.height,
        width=request.width, num_frames=num_frames, num_inference_steps=request.steps,
        guidance_scale=request.guidance, generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
    )
    if on_step is not None:
        kwargs["callback_on_step_end"] = lambda _pipe, i, _t, _kw: on_step(i + 1, request.steps) or {}
    if request.image:
        kwargs["image"] = fit_image(load_image(request.image), request.height, request.width)
    with placement.clip():  # the pipeline encodes the image and denoises in one call
        latents = pipe(**kwargs).frames
    if not decode:
        return WindowFrames(0, 1, 0, np.zeros((0, request.height, request.width, 3), np.uint8), latents.cpu())
    with placement.decoding():
        decoder = StreamingDecoder(pipe.vae, progress=progress, tiling=placement.plan.tiled_decode)
        frames = to_uint8(decoder.decode(latents))[: request.frames]
    return WindowFrames(0, 1, 0, frames, latents.cpu())
