"""One generation on a loaded model: everything that belongs to this run alone.

A `Model` holds what loading made (components, placement, prompt cache) and lends it; a `Run` holds the
rest: the request, where it writes, the saved state it resumes from, its events and time left, its cancel
switch, the colour records, the step cache. So one loaded model serves any number of runs one after
another, from several threads or beside a `stream()` that is still being read, each as a fresh process
would make it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__, faults
from ..errors import Cancelled, OutputError, ResumeError, kept_after_stop, setting
from ..forcing.engine import Conditioning, DiffusionForcingEngine, EngineState, Sampling
from ..forcing.resume import log_window, logged_windows, save_state
from ..forcing.schedule import make_scheduler
from ..media import colour
from ..media.hls import PLAYLIST, HlsWriter, stream_folder
from ..media.images import fit_frames
from ..media.sinks import FrameSink, output_errors
from ..media.videos import iter_video_frames
from ..models.registry import ModelSpec
from ..quiet import third_party_quiet
from ..runtime.memory import MemoryPlan
from ..runtime.parallel import Parallel, share_image_inputs
from ..runtime.placement import Placement
from ..runtime.step_cache import StepCache
from .clips import clip_pipeline, generate_clip
from .conditioning import image_latent, video_prefix
from .events import Event, OnEvent, RunClock, RunFinished, RunStarted, StepDone, WindowDone, window_costs
from .live import LivePrompts, real_time_factor, replay_request
from .prepare import Prepared
from .request import Request
from .resolve import generated_frames, window_plan
from .results import Result, WindowFrames
from .shot_plan import shot_conditioning, shots_record
from .timer import Timer


class Loaded(Protocol):
    """What a run borrows from a loaded model (a `Model`)."""

    spec: ModelSpec
    components: dict
    device: torch.device
    memory: MemoryPlan
    memory_reason: str
    placement: Placement
    parallel: Parallel | None
    pipeline_class: type
    pipe: object
    loras: list[dict]
    load_seconds: float
    dtype_name: str
    decodes: bool                      # this process decodes and writes (not a follower of a parallel run)
    whole_sequence_attention: Callable | None

    @property
    def runtime(self) -> dict:  # how the model runs, as each sidecar records it
        ...

    def conditioning(self, prompt: str, negative: str, guidance: float) -> Conditioning: ...

    def image_latents(self, request: Request, encode: Callable) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def out_of_memory(self, request: Request) -> AbstractContextManager[None]: ...


class Cancel(threading.Event):
    """A switch that cancels a run from any thread: `handle.cancel()` (or `.set()`); the run stops at its next
    step and raises `sk.Cancelled`. Any `threading.Event` works the same."""

    def cancel(self) -> None:
        self.set()


class Run:
    """One generation of `request` (resolved) on `model`; `prepared` when it writes an output, else it streams."""

    def __init__(self, model: Loaded, request: Request, *, prepared: Prepared | None = None,
                 cancel: Cancel | None = None, on_event: OnEvent | None = None, progress: bool = True,
                 saved: dict | None = None, prompts: LivePrompts | None = None, keep_last: float | None = None) -> None:
        self.model = model
        self.request = request
        self.prepared = prepared
        self.cancel = cancel
        self.on_event = on_event
        self.quiet = not progress
        self.bars = progress and on_event is None  # tqdm bars only when nobody listens to the events
        saved = prepared.saved if prepared is not None else saved
        self.state: EngineState | None = saved["engine"] if saved else None
        self.first = saved.get("generated", 0) if saved else 0  # frames made before the saved state
        self.windows = len(window_plan(request).windows) if model.spec.forcing else 1
        self.done = self.state.next_window if self.state else 0  # windows finished before this run
        # A live run: windows until stopped, its prompts from `prompts` (core/live.py), segments for watching
        self.live = bool(request.live) and model.spec.forcing
        self.prompts = (prompts or LivePrompts()) if self.live else None
        if self.live and self.state is not None:
            self.prompts.restore(self.state.extra.get("live_timeline", []))
        self.keep_last = keep_last
        self.stopped: str | None = None  # why a live run ended before its most: "stopped" or "disk full"
        live_or_clip = self.live or not model.spec.forcing  # a live run has no end to estimate the time left to
        costs = (1.0,) if live_or_clip else window_costs(window_plan(request), request.steps, request.ar_step)
        self.clock = RunClock(costs, self.done)
        self.replayed = 0  # latent frames decoded again to rebuild the decoder's state (resuming)
        self.step_cache: StepCache | None = None
        self.colour: list[dict] = []  # run.colour: each window's channel statistics
        self.made = 0  # frames this run generated

    # ------------------------------------------------------------ events and cancel

    def emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def check_cancel(self) -> None:
        """Stop here if the caller cancelled: finished windows stay saved for resume=True."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"cancelled; {kept_after_stop(self.model.spec.forcing and self.prepared is not None)}")

    def _eta(self, window: int, fraction: float) -> float | None:
        return None if self.live else self.clock.eta(window, fraction)

    def _step(self, window: int, step: int, steps: int) -> None:
        if self.model.parallel is not None:  # the others' watchdogs see this rank move on (runtime/parallel.py)
            where = f"window {window + 1}: " if self.model.spec.forcing else ""
            self.model.parallel.progress.step(f"{where}step {step} of {steps} done")
        self.emit(StepDone(window, step, steps, self.clock.elapsed(), self._eta(window, step / steps)))
        faults.point("step_done")
        self.check_cancel()

    def started(self) -> RunStarted:
        p = self.prepared
        preview = p.target.preview if p is not None else None
        if self.live and p is not None:  # watched as HLS; no NAME.partial.mp4
            preview = self.hls_folder / PLAYLIST
        description = p.describe() if p is not None else \
            f"{self.model.spec.alias}, {self.request.width}x{self.request.height}, {self.request.frames} frames, " \
            f"seed {self.request.seed} (streamed)"
        return RunStarted(self.windows, self.request.frames, preview, self.done, description,
                          self.model.memory_reason, self.clock.elapsed(), None, self.model.runtime)

    def _window_done(self, index: int, frames_out: int, pace: tuple[float | None, float | None] = (None, None)
                     ) -> WindowDone:
        preview = self.prepared.target.preview if self.prepared is not None and self.windows > 1 else None
        if self.live:
            preview = None if self.hls_folder is None else self.hls_folder / PLAYLIST
        return WindowDone(index, self.windows, frames_out, preview, self.clock.elapsed(), self._eta(index + 1, 0.0),
                          *pace)

    @property
    def hls_folder(self) -> Path | None:
        """Where a live run's HLS playlist and segments go: NAME.hls/ beside NAME.mp4 (None: streamed)."""
        if self.prepared is None:
            return None
        return stream_folder(self.prepared.target.path)

    # ------------------------------------------------------------ frames

    def frames(self) -> Iterator[tuple[WindowFrames, EngineState | None]]:
        """Each window's new frames and the engine state after it."""
        m, request = self.model, self.request
        self.check_cancel()
        cond = m.conditioning(request.prompt, request.negative_prompt, request.guidance)
        if not m.spec.forcing:
            pipe = clip_pipeline(m.pipeline_class, m.components, request)
            if m.parallel is not None:  # rank 0 encodes the image; the others receive its embeddings and latents
                share_image_inputs(pipe, m.parallel)
            yield generate_clip(pipe, request, generated_frames(request, m.spec), cond, self.bars, m.placement,
                                lambda step, steps: self._step(0, step, steps), decode=m.decodes), None
            return
        yield from self._forcing_frames(cond)

    def _forcing_frames(self, cond) -> Iterator[tuple[WindowFrames, EngineState]]:
        m, request, state, first = self.model, self.request, self.state, self.first
        c = m.components
        scheduler = make_scheduler(c["scheduler"].config, request.shift, request.sigma_grid,
                               request.sampler, request.sigmas)
        self.step_cache = StepCache(request.cache) if request.cache else None
        latent_match = colour.match_latents if request.color_match == "latent" else None
        engine = DiffusionForcingEngine(c["transformer"], c["vae"], scheduler, m.device, self.bars,
                                        cfg=m.memory.cfg, placement=m.placement,
                                        tiled_decode=m.memory.tiled_decode, step_cache=self.step_cache,
                                        on_step=self._step, adjust_latents=latent_match, decode=m.decodes,
                                        whole_sequence=m.whole_sequence_attention)
        plan = window_plan(request)
        sampling = Sampling(request.steps, request.ar_step, request.addnoise, request.causal_attention, request.fps)
        start, end = m.image_latents(request, self._encode_images) if state is None else (None, None)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        conditioning = (lambda _: cond) if not request.shots else shot_conditioning(request, m.conditioning)
        if self.live:
            conditioning = self._live_conditioning
        outputs = engine.run(plan, conditioning, sampling, generator, (request.height // 8, request.width // 8),
                             start_latents=start, end_latent=end, emit_start=not request.video, state=state)
        reference = state.extra.get("colour_reference") if state else None
        for out in outputs:
            if m.parallel is not None:  # every rank must have drawn the same noise and made the same latents
                m.parallel.check_same(out.latents, f"window {out.window.index + 1}")
            self.replayed = engine.replayed
            frames = out.frames[: max(0, request.frames - first)]  # the last window may make a few extra
            if request.color_match == "pixel" and len(frames):
                frames, reference = _match_pixels(frames, reference, request.overlap)
                out.state.extra["colour_reference"] = reference  # saved with the state: resuming goes on
            yield WindowFrames(out.window.index, len(plan.windows), first, frames, out.latents), out.state
            first += len(frames)
            self.check_cancel()

    def _live_conditioning(self, window: int) -> Conditioning:
        """A live window's conditioning: the prompt set last before it started."""
        r = self.request
        prompt, negative = self.prompts.for_window(window, r)
        return self.model.conditioning(prompt, r.negative_prompt if negative is None else negative, r.guidance)

    def _encode_images(self, request: Request) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The clean latents of the start image or continued video, and of the end image (None if not given)."""
        m = self.model
        start = end = None
        if request.image or request.video or request.end_image:
            with m.placement.encoding_images():  # the VAE's encoder (model offload: only while it encodes)
                if request.image:
                    start = image_latent(m.pipe, request.image, setting("image"), request)
                elif request.video:
                    start = video_prefix(m.components["vae"], request)
                if request.end_image:
                    end = image_latent(m.pipe, request.end_image, setting("end_image"), request)
        return start, end

    # ------------------------------------------------------------ writing

    def write(self, on_window: Callable[[WindowFrames], None] | None = None) -> Result:
        """Make the prepared output: frames into the sink window by window, the sidecar at the end."""
        m, p = self.model, self.prepared
        request, target, saved = p.request, p.target, p.saved
        timer = Timer()
        started = time.perf_counter()
        if m.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(m.device)
        _check_resumable(p, m)
        metadata = {"skyreels": __version__, "request": request.to_dict(),
                    "model": {**p.model_identity, "dtype": m.dtype_name, "quantize": m.memory.quantize,
                              "device": str(m.device), **({"loras": m.loras} if m.loras else {}),
                              **({"accelerator": m.spec.accelerator} if m.spec.accelerator else {})}}
        if request.shots:
            metadata["shots"] = shots_record(request)  # which frames and windows belong to which shot
        sink = FrameSink(target, request.fps, p.tag(metadata), resume_frames=saved["frames_written"] if saved else 0,
                         preview=not self.live)
        with sink, third_party_quiet(self.quiet):
            with timer("generate"), m.out_of_memory(request):
                self._write_windows(sink, metadata, on_window)
            if self.live:  # what was made is a shot list: record that, so --from and replay remake it
                request = self._live_record(metadata)
            timer.marks["load"] = m.load_seconds
            timer.marks["total"] = round(time.perf_counter() - started, 3)
            peak = round(torch.cuda.max_memory_allocated(m.device) / 1e9, 2) if m.device.type == "cuda" else None
            run = {"frames_written": sink.frames_written, "timings_s": timer.marks, "output": str(target.path),
                   "resumed": bool(saved), "replayed_latents": self.replayed, "peak_vram_gb": peak,
                   "runtime": m.runtime}
            cache = self.step_cache.stats() if self.step_cache is not None else None
            if cache is not None:
                run["step_cache"] = cache
            run["colour"] = self.colour
            path = sink.finish({**metadata, "run": run}, p.tag(metadata) if self.live else None)
        self.emit(RunFinished(self.made, round(time.perf_counter() - started, 3), path, sink.frames_written))
        return Result(path, target.sidecar, request, sink.frames_written, timer.marks, peak, bool(saved),
                      self.replayed, cache, m.runtime)

    def _live_record(self, metadata: dict) -> Request:
        """A stopped live run's settings: the equivalent shot list as its request, and its timeline and end."""
        timeline = self.prompts.timeline()
        made = replay_request(self.request, timeline, self.live_windows)
        live = {"timeline": timeline, "windows": self.live_windows, "stopped": self.stopped or "most reached",
                "hls": str(self.hls_folder), "request": metadata["request"]}
        metadata.update(request=made.to_dict(), shots=shots_record(made), live=live)
        return made

    def _write_windows(self, sink: FrameSink, metadata: dict, on_window: Callable[[WindowFrames], None] | None) -> None:
        """Each window's frames into the sink, and the resume state after each but the last. A live run also
        writes each window as an HLS segment and ends, keeping what it made, when cancelled or out of disk."""
        hls = None
        if self.live:
            hls = HlsWriter(self.hls_folder, self.request.fps, keep_last_s=self.keep_last, next_window=self.done)
        self.live_windows = self.done
        try:
            self._each_window(sink, metadata, on_window, hls)
        except Cancelled:
            if not self.live or self.live_windows == 0:
                raise
            self.stopped = "stopped"
        except OutputError:
            if hls is None or self.live_windows == 0:
                raise
            self.stopped = "disk full"
        if hls is not None:
            hls.end()

    def _each_window(self, sink: FrameSink, metadata: dict, on_window, hls: HlsWriter | None) -> None:
        request, target = self.request, self.prepared.target
        if request.video and self.state is None:
            self._copy_input_video(sink)
        frames = self.frames()
        bar = tqdm(total=self.windows, initial=self.done, desc="windows", unit="window",
                   disable=not self.bars or self.windows == 1)
        self.emit(self.started())
        # A resumed run's earlier windows; a fresh run starts its log afresh (logged_windows(..., 0) empties it).
        self.colour = logged_windows(target.work_dir, self.done)
        window_started = time.monotonic()
        for window, new_state in frames:
            sink.write(window.frames)
            sink.end_window()
            self.live_windows = window.index + 1  # in the video now, whatever happens to its segment
            if hls is not None:
                with output_errors(hls.folder):
                    hls.add(window.index, window.frames)
            self.made += len(window.frames)
            record = colour.window_record(window.index, window.first_frame, window.frames) \
                if len(window.frames) else None
            if record is not None:
                self.colour.append(record)
            if new_state is not None and window.index + 1 < window.windows:
                if record is not None:
                    log_window(target.work_dir, record)
                if self.live:  # the prompts of the windows made, for the run that continues it
                    new_state.extra["live_timeline"] = self.prompts.timeline()
                save_state(target.work_dir, metadata["request"], metadata["model"], new_state,
                           sink.frames_written, generated=window.first_frame + len(window.frames))
            faults.point("window_saved")
            bar.update()
            now = time.monotonic()
            pace = (real_time_factor(len(window.frames), request.fps, now - window_started),
                    self.prompts.latency(window.index, now)) if self.live else (None, None)
            window_started = now
            self.emit(self._window_done(window.index, sink.frames_written, pace))
            if on_window is not None:
                on_window(window)
            del window
        bar.close()

    def _copy_input_video(self, sink: FrameSink) -> None:
        """The video being continued goes into the output first, streamed in chunks."""
        request = self.request
        for chunk in iter_video_frames(Path(request.video), chunk=16, option=setting("video")):
            sink.write(fit_frames(chunk, request.height, request.width))
        sink.end_window()


def _check_resumable(p: Prepared, m: Loaded) -> None:
    """The weights must be stored as they were when the run started: fp8 or int8 make other frames."""
    if not p.saved:
        return
    saved = p.saved["model"].get("quantize", "none")
    if saved != m.memory.quantize:
        raise ResumeError(f"cannot resume {p.target.path}: it was started with {setting('quantize', saved)}, this "
                          f"model is loaded with {setting('quantize', m.memory.quantize)}; repeat the original option")
    if lora_identity(p.saved["model"].get("loras", [])) != lora_identity(m.loras):
        raise ResumeError(f"cannot resume {p.target.path}: it was started with other LoRAs ({setting('loras')}) "
                          "than this model has; repeat the original ones")


def lora_identity(records: list[dict]) -> list[tuple[str, float]]:
    """What makes LoRAs give the same frames: the files' contents and scales, in order (not their paths)."""
    return [(r["sha256"], float(r["scale"])) for r in records]


def _match_pixels(frames: np.ndarray, reference: list | None, overlap: int) -> tuple[np.ndarray, list]:
    """Frames matched to the reference statistics (none for the first window), and the next reference: the
    statistics of their last `overlap` frames, the ones the next window continues from."""
    if reference is not None:
        frames = colour.match_frames(frames, (np.asarray(reference[0]), np.asarray(reference[1])))
    mean, std = colour.channel_stats(frames[-overlap:])
    return frames, [mean.tolist(), std.tolist()]
