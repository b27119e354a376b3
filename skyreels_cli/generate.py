"""Running a generation: settings in, a video file out. The CLI's commands call these."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .engine import Conditioning, DiffusionForcingEngine, EngineState, Sampling
from .errors import InputFileError, ResumeError
from .hub import ensure_model
from .images import fit_frames, fit_image, load_image
from .loading import check_device, load_pipeline, pick_dtype
from .registry import ModelSpec, with_kind
from .settings import RunSettings, plan_run
from .vae_stream import normalize
from .writers import FrameSink, OutputTarget, iter_video_frames, read_last_frames

STATE_FILE = "state.pt"
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class Timer:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.marks[name] = round(self.marks.get(name, 0.0) + time.perf_counter() - start, 3)


def load_model(spec: ModelSpec, settings: RunSettings, timer: Timer, progress: bool = True):
    """The diffusers pipeline for a run, downloaded if needed, on the run's device and dtype."""
    device = check_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    with timer("download"):
        folder = ensure_model(spec, progress=progress)
    spec = with_kind(spec, folder, settings.command)
    with timer("load"):
        pipe = load_pipeline(folder, spec.kind, device, dtype, settings.shift, settings.sigma_grid)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    return pipe, device


def run(spec: ModelSpec, settings: RunSettings, target: OutputTarget, *, resume: bool = False,
        progress: bool = True, on_start: Callable[[], None] | None = None) -> Path:
    """Generate the video `settings` describe into `target`; returns the output path.

    `on_start` is called once the model is loaded, when nothing can fail for lack of it.
    """
    timer = Timer()
    saved = load_state(target, settings) if resume else None
    if not resume:  # a fresh run must never be mistaken later for the one it replaces
        (target.work_dir / STATE_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    pipe, device = load_model(spec, settings, timer, progress)
    if on_start is not None:
        on_start()
    metadata = {**settings.to_dict(), "skyreels_version": __version__}
    sink = FrameSink(target, settings.fps, metadata, resume_frames=saved["frames_written"] if saved else 0)
    with sink:
        with timer("generate"):
            if settings.kind in ("t2v", "i2v"):
                _run_pipeline(pipe, settings, sink)
            else:
                _run_diffusion_forcing(pipe, settings, sink, target, device, saved, progress)
        timer.marks["total"] = round(time.perf_counter() - started, 3)
        sidecar = {**metadata, "frames_written": sink.frames_written, "timings_s": timer.marks,
                   "output": str(target.path), "resumed": bool(saved)}
        if device.type == "cuda":
            sidecar["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        return sink.finish(sidecar)


def _run_pipeline(pipe, settings: RunSettings, sink: FrameSink) -> None:
    """T2V and I2V checkpoints: one fixed-length clip through the diffusers pipeline."""
    kwargs = dict(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
        width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
        guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(settings.seed),
        output_type="np",
    )
    if settings.kind == "i2v":
        kwargs["image"] = fit_image(load_image(settings.image), settings.height, settings.width)
    video = pipe(**kwargs).frames[0]
    sink.write((np.asarray(video) * 255).round().clip(0, 255).astype(np.uint8))
    sink.end_window()


def encode_conditioning(pipe, settings: RunSettings, device: torch.device) -> Conditioning:
    """Text embeddings, computed once for the run; the text encoder can then leave the GPU."""
    cfg = settings.guidance > 1.0
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(
            prompt=settings.prompt, negative_prompt=settings.negative_prompt, do_classifier_free_guidance=cfg,
            max_sequence_length=512, device=device,
        )
    if device.type == "cuda":
        pipe.text_encoder.to("cpu")
        torch.cuda.empty_cache()
    dtype = pipe.transformer.dtype
    return Conditioning(positive.to(dtype), negative.to(dtype) if cfg else None, settings.guidance)


@torch.no_grad()
def _encode_pixels(pipe, frames: torch.Tensor) -> torch.Tensor:
    """Pixels [1, 3, T, H, W] in [-1, 1] to clean model latents (the distribution's mode, as diffusers does)."""
    vae = pipe.vae
    latents = vae.encode(frames.to(vae.device, vae.dtype)).latent_dist.mode()
    return normalize(vae, latents.float())


def _image_latent(pipe, path: str, settings: RunSettings) -> torch.Tensor:
    image = fit_image(load_image(path, "--image" if path == settings.image else "--end-image"),
                      settings.height, settings.width)
    pixels = pipe.video_processor.preprocess(image, height=settings.height, width=settings.width)
    return _encode_pixels(pipe, pixels.unsqueeze(2).float())


def _video_prefix(pipe, settings: RunSettings, sink: FrameSink, copy_input: bool) -> torch.Tensor:
    """Copy the input video into the output (streaming) and encode its last `overlap` frames as the prefix."""
    if copy_input:
        for chunk in iter_video_frames(Path(settings.video), chunk=16):
            sink.write(fit_frames(chunk, settings.height, settings.width))
        sink.end_window()
    tail, _ = read_last_frames(Path(settings.video), settings.overlap)
    tail = fit_frames(tail, settings.height, settings.width)
    pixels = torch.from_numpy(tail).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
    return _encode_pixels(pipe, pixels)


def _run_diffusion_forcing(pipe, settings, sink, target, device, saved, progress) -> None:
    keep_host_memory_flat()
    plan = plan_run(settings)
    cond = encode_conditioning(pipe, settings, device)
    engine = DiffusionForcingEngine(pipe.transformer, pipe.vae, pipe.scheduler, device, progress)
    sampling = Sampling(settings.steps, settings.ar_step, settings.addnoise, settings.causal_attention, settings.fps)
    state = EngineState.from_dict(saved["engine"]) if saved else None
    start = end = None
    if state is None:
        if settings.image:
            start = _image_latent(pipe, settings.image, settings)
        elif settings.video:
            start = _video_prefix(pipe, settings, sink, copy_input=True)
        if settings.end_image:
            end = _image_latent(pipe, settings.end_image, settings)
    latent_hw = (settings.height // 8, settings.width // 8)
    windows = engine.run(plan, lambda _: cond, sampling, torch.Generator("cpu").manual_seed(settings.seed),
                         latent_hw, start_latents=start, end_latent=end, emit_start=not settings.video, state=state)
    bar = tqdm(total=len(plan.windows), initial=state.next_window if state else 0, desc="windows",
               disable=not progress or len(plan.windows) == 1, unit="window")
    for out in windows:
        sink.write(out.frames)
        sink.end_window()
        if out.window.index + 1 < len(plan.windows):
            save_state(target, settings, out.state, sink.frames_written)
        del out
        release_freed_memory()
        bar.update()
    bar.close()


def _glibc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return None


def keep_host_memory_flat() -> None:
    """Large host buffers (a window's decoded frames) go straight back to the system when freed.

    glibc raises its mmap threshold after a large free and then keeps blocks of
    that size for reuse, so the resident size of a long run creeps up by a few
    hundred MB although live memory is flat (benchmarks/RESULTS.md). A fixed
    threshold of 1 MiB turns that off.
    """
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def release_freed_memory() -> None:
    """Return the heap's free tail to the system after a window (small blocks left by its work)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def save_state(target: OutputTarget, settings: RunSettings, state: EngineState, frames_written: int) -> None:
    """Write the resume state atomically next to the partial output."""
    target.work_dir.mkdir(parents=True, exist_ok=True)
    path = target.work_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save({"settings": settings.to_dict(), "engine": state.to_dict(), "frames_written": frames_written,
                "version": __version__}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(target: OutputTarget, settings: RunSettings) -> dict:
    path = target.work_dir / STATE_FILE
    if not path.is_file():
        raise ResumeError(f"no saved run to resume for {target.path}; run the same command without --resume")
    saved = torch.load(path, weights_only=True)
    differ = settings.differences(saved["settings"])
    if differ:
        names = ", ".join(differ)
        raise ResumeError(f"cannot resume {target.path}: these settings differ from the saved run: {names}; "
                          "repeat the original options, or start over with --overwrite")
    return saved


def saved_seed(target: OutputTarget) -> int | None:
    """The seed of a saved run, so that --resume without --seed continues it."""
    path = target.work_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, weights_only=True)["settings"]["seed"])
    except (OSError, RuntimeError, KeyError, ValueError):
        raise InputFileError(f"the saved state {path} is unreadable; start over with --overwrite") from None
