"""The streaming diffusion forcing engine.

Generates a video of any length window by window (forcing/windows.py): each window
takes the last latents of the one before as a clean prefix (in latent space, no
decode/re-encode round trip), runs the step matrix with per-frame solver state,
and decodes only its new latents, continuing one causal VAE decode. Memory is
that of one window whatever the length; after each window the engine hands out
a small state from which the run can resume exactly. The solver advances all
frames of a row at once (solver.py); guidance runs as two model calls or as one
of batch 2 (`cfg`), or as one call without guidance (guidance 1).

Noise is drawn in the same order and shapes as the diffusers DF pipelines, so
for the same seed the frames equal theirs where they are correct. Where the
reference code is faulty we differ on purpose: block layouts always cover every
frame (windows.py), a start image stays clean in asynchronous mode (it is its
own block of one frame), the end image is dropped in long mode too, the
add-noise draw uses the run's seeded generator, and causal attention is applied
per call, with no (tokens)² mask and without rewriting the transformer's config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import faults
from ..run_options import CFGS
from .causal_attention import causal_attention
from .decoding import StreamingDecoder, to_uint8
from .euler import make_sampler
from .schedule import step_matrix, timestep_rows
from .solver import SOLVERS
from .windows import Window, WindowPlan


@dataclass
class Conditioning:
    """What steers one window: text embeddings and guidance. May change from window to window."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    guidance: float

    @property
    def uses_cfg(self) -> bool:
        return self.negative_embeds is not None and self.guidance > 1.0


@dataclass(frozen=True)
class Sampling:
    steps: int
    ar_step: int = 0
    addnoise: float = 0.0
    causal_attention: bool = False
    fps: float = 24


@dataclass
class EngineState:
    """Everything needed to continue after a finished window (all tensors on the CPU, a few tens of MB)."""

    next_window: int
    prefix: torch.Tensor | None
    end_latent: torch.Tensor | None
    decoder: dict  # StreamingDecoder.state_dict(): the last latents decoded, not the decoder's cache
    generator: torch.Tensor
    extra: dict = field(default_factory=dict)  # the caller's own state (colour statistics), saved with it

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> EngineState:
        return cls(**data)


@dataclass
class WindowOutput:
    window: Window
    frames: np.ndarray  # uint8 [T, H, W, 3]
    latents: torch.Tensor  # the model-space latents these frames were decoded from, on the CPU
    state: EngineState


class DiffusionForcingEngine:
    """Runs a window plan with a DF transformer and the Wan VAE; yields decoded frames per window."""

    def __init__(
        self, transformer, vae, scheduler, device: torch.device, progress: bool = False, *,
        cfg: str = "separate", solver: str = "vectorised", placement=None, tiled_decode: bool | None = None,
        step_cache=None, on_step: Callable[[int, int, int], None] | None = None,
        adjust_latents: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        decode: bool = True, whole_sequence: Callable | None = None,
    ) -> None:
        if cfg not in CFGS:
            raise ValueError(f"unknown cfg mode {cfg!r}; expected one of {CFGS}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.device = device
        self.progress = progress
        self.cfg = cfg  # "batched": both guidance passes in one call of batch 2 (twice the activations)
        self.solver = solver  # "per-frame": one scheduler copy per frame, the reference
        self.placement = placement  # runtime.placement.Placement: moves components per phase (None: they stay)
        self.tiled_decode = tiled_decode  # None: as the VAE says (`vae.use_tiling`)
        self.step_cache = step_cache  # runtime.step_cache.StepCache, or None: every model call is computed
        self.replayed = 0  # latent frames decoded again to rebuild the decoder's state on resume
        self.on_step = on_step  # called with (window, rows done, rows) after each model row
        # (new latents, clean prefix) -> new latents, before decoding: what it returns is decoded and carried on
        self.adjust_latents = adjust_latents
        # False on the ranks of a context-parallel run but the first: they denoise with it, rank 0 decodes
        self.decode = decode
        # Context parallelism: how causal attention sees every key (forcing/causal_attention.py); None: one process
        self.whole_sequence = whole_sequence

    def _phase(self, name: str):
        return nullcontext() if self.placement is None else getattr(self.placement, name)()

    def velocity(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, fps: float) -> torch.Tensor:
        """One model evaluation with classifier-free guidance (memory plans may wrap the transformer)."""
        if not cond.uses_cfg:
            return self._model(latents, timesteps, cond.prompt_embeds, fps, "cond")
        if self.cfg == "batched" and cond.negative_embeds.shape == cond.prompt_embeds.shape:
            # One call of batch 2: the same latents and timesteps under both embeddings. (Embeddings of
            # different lengths cannot share a batch; they then take the two-call path.)
            both = self._model(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                               torch.cat([cond.prompt_embeds, cond.negative_embeds]), fps, "cfg")
            v, v_uncond = both.chunk(2)
        else:
            v = self._model(latents, timesteps, cond.prompt_embeds, fps, "cond")
            v_uncond = self._model(latents, timesteps, cond.negative_embeds, fps, "uncond")
        return v_uncond + cond.guidance * (v - v_uncond)

    def _model(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor, fps: float,
               name: str) -> torch.Tensor:
        """One transformer call; `name` says which pass it is ("cond", "uncond" or the batched "cfg")."""
        # One fps index for the whole batch: in diffusion forcing mode diffusers tiles the fps projection
        # over frames, which broadcasts over a batch of 2 only when it is a single entry (every entry here
        # has the run's fps anyway; one entry per batch item fails with a shape error).
        def run() -> torch.Tensor:
            return self.transformer(
                hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds,
                enable_diffusion_forcing=True, fps=[0 if fps == 16 else 1], return_dict=False,
            )[0]

        if self.step_cache is None:
            return run()
        return self.step_cache.velocity(run, name=name, model_in=latents)

    @torch.no_grad()
    def denoise_window(
        self, latents: torch.Tensor, window: Window, cond: Conditioning, sampling: Sampling,
        generator: torch.Generator, end_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise one window's latents in place (fp32, prefix already set); returns them."""
        dtype = self.transformer.dtype
        solver = make_sampler(self.scheduler, sampling.steps, window.length, self.device, self.solver)
        index, update = step_matrix(window.blocks, sampling.steps, sampling.ar_step, window.ready_blocks)
        if self.step_cache is not None:
            self.step_cache.start_window(index, update, sampling.steps)
        rows = timestep_rows(index, solver.timesteps)  # on the CPU: the solver reads them without a sync
        extra = 0 if end_latent is None else end_latent.shape[2]
        tokens = (latents.shape[3] // 2) * (latents.shape[4] // 2)
        blocks = window.blocks + ((extra,) if extra else ())
        causal = causal_attention(self.transformer, blocks, tokens, extra, self.whole_sequence) \
            if sampling.causal_attention else None
        with causal or nullcontext():
            for row, t in enumerate(tqdm(rows, desc=f"window {window.index + 1} steps", leave=False,
                                         disable=not self.progress)):
                model_in = latents.to(dtype).clone()
                timestep = t.to(self.device).expand(latents.shape[0], -1).clone()
                if sampling.addnoise > 0 and window.prefix > 0:
                    self._add_noise(model_in, timestep, window.prefix, sampling.addnoise, generator)
                if extra:
                    model_in = torch.cat([model_in, end_latent.to(dtype)], dim=2)
                    timestep = torch.cat([timestep, timestep.new_zeros(timestep.shape[0], extra)], dim=1)
                faults.point("denoise_row")
                if self.step_cache is not None:
                    self.step_cache.start_row(row)
                v = self.velocity(model_in, timestep, cond, sampling.fps)
                solver.step(v, t, latents, update[row])
                if self.on_step is not None:
                    self.on_step(window.index, row + 1, len(rows))
        return latents

    def _add_noise(self, model_in, timestep, prefix: int, amount: float, generator: torch.Generator) -> None:
        # Lightly noising the clean prefix reduces error accumulation over windows; drawn from the
        # run's generator (the reference code uses the global RNG, so its runs are not reproducible).
        shape = model_in[:, :, :prefix].shape
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(model_in.device, model_in.dtype)
        factor = amount / 1000
        model_in[:, :, :prefix] = model_in[:, :, :prefix] * (1.0 - factor) + noise * factor
        timestep[:, :prefix] = int(amount)

    def run(
        self, plan: WindowPlan, conditioning: Callable[[int], Conditioning], sampling: Sampling,
        generator: torch.Generator, latent_hw: tuple[int, int], *,
        start_latents: torch.Tensor | None = None, end_latent: torch.Tensor | None = None,
        emit_start: bool = True, state: EngineState | None = None,
    ) -> Iterator[WindowOutput]:
        """Yield each window's decoded new frames, from `state.next_window` when resuming.

        `start_latents` is the clean prefix of the first window (start image or input video);
        `emit_start` says whether its frames belong to the output (an image: yes; a video
        being continued: no, they are already there).
        """
        decoder = StreamingDecoder(self.vae, progress=self.progress, tiling=self.tiled_decode)
        if state is None:
            prefix = start_latents
        else:
            generator.set_state(state.generator)
            prefix, end_latent = state.prefix, state.end_latent
            if self.decode:
                with self._phase("decoding"):
                    self.replayed = decoder.load_state_dict(state.decoder)
                    decoder.park()
        channels = self.vae.config.z_dim
        first = 0 if state is None else state.next_window
        for window in islice(plan.windows, first, None):  # a live plan's windows are made as they are asked for
            shape = (1, channels, window.length, *latent_hw)
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
            if window.prefix:
                latents[:, :, : window.prefix] = prefix.to(self.device, torch.float32)
            end = end_latent.to(self.device) if window.end_image else None
            with self._phase("denoising"):
                self.denoise_window(latents, window, conditioning(window.index), sampling, generator, end)
            if self.adjust_latents is not None and window.prefix:
                latents[:, :, window.prefix :] = self.adjust_latents(latents[:, :, window.prefix :],
                                                                     latents[:, :, : window.prefix])
            with self._phase("decoding") if self.decode else nullcontext():
                frames, emitted = self._decode_new(decoder, latents, window, emit_start)
                decoder.park()  # before the VAE leaves: park() moves the cache off the VAE's device
            prefix = latents[:, :, window.length - plan.overlap :].cpu()
            new_state = EngineState(window.index + 1, prefix, end_latent, decoder.state_dict(), generator.get_state())
            yield WindowOutput(window, frames, emitted, new_state)

    def _decode_new(self, decoder: StreamingDecoder, latents: torch.Tensor, window: Window, emit_start: bool):
        """This window's new frames, and the latents they come from."""
        new = latents[:, :, window.prefix :]
        if not self.decode:  # no frames: the latents only (what a first window emits, as below)
            kept = latents if window.index == 0 and window.prefix and emit_start else new
            return np.zeros((0, *(8 * s for s in latents.shape[3:]), 3), np.uint8), kept.cpu()
        if window.index == 0 and window.prefix:
            # The first window's prefix starts the timeline: decode it (the decoder is causal and
            # needs it), and keep its frames only if they are not already in the output.
            start = decoder.decode(latents[:, :, : window.prefix])
            pixels = decoder.decode(new)
            if emit_start:
                return to_uint8(torch.cat([start, pixels], dim=2)), latents.cpu()
            return to_uint8(pixels), new.cpu()
        return to_uint8(decoder.decode(new)), new.cpu()
