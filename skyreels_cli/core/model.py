"""`Model`: a checkpoint loaded once, generating any number of videos.

    import skyreels_cli as sk
    model = sk.load("df-1.3b-540p", device="cuda")
    result = model.generate(sk.Request(prompt="a fox in the snow", frames=257, seed=42), output="fox.mp4")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__, faults
from ..errors import OutOfMemory, ResumeError
from ..forcing.engine import DiffusionForcingEngine, EngineState, Sampling
from ..forcing.resume import log_window, logged_windows, save_state
from ..forcing.schedule import make_scheduler
from ..media import colour
from ..media.images import fit_frames
from ..media.sinks import FrameSink
from ..media.videos import iter_video_frames
from ..models.hub import ensure_model
from ..models.kinds import KINDS
from ..models.loading import check_device, dtype_name, load_components, loaded_bytes, pick_dtype
from ..models.lora import LoraSpec, ResolvedLora, apply_loras, remove_loras, resolve_lora
from ..models.placement import Placement
from ..models.registry import ModelSpec, resolve_model
from ..quiet import third_party_quiet
from ..runtime.attention import apply_backend, pick_backend
from ..runtime.compile import check_compile, compile_blocks
from ..runtime.memory import MemoryPlan
from ..runtime.modulation import install_per_frame_modulation
from ..runtime.parallel import (
    FOLLOWER_READS,
    Parallel,
    check_layout_options,
    choose_layout,
    enable_context_parallel,
    from_rank_0,
    share_image_inputs,
)
from ..runtime.step_cache import StepCache
from .clips import clip_pipeline, generate_clip
from .conditioning import PromptEncoder, image_latent, video_prefix
from .job import Job, prepare
from .progress import Progress, RunFinished, RunStarted, StepDone, WindowDone, window_costs
from .request import Request
from .resolve import generated_frames, resolve, window_plan
from .script import shot_conditioning, shots_record
from .results import Result, WindowFrames
from .timer import Timer


def load(model: str | ModelSpec | None = None, *, device: str = "auto", dtype: str | None = None,
         offload: str = "auto", quantize: str = "auto", cfg: str = "auto", tiled_decode: bool | None = None,
         text_encoder_device: str = "auto", attention: str = "auto", compile: bool = False,
         vram_gb: float | None = None, plan_for: Request | None = None, progress: bool = True,
         command: str | None = None, loras: Sequence[str | LoraSpec | ResolvedLora] = (),
         parallel: Parallel | bool | None = None, ulysses: int | None = None, ring: int | None = None) -> Model:
    """Load a checkpoint (registry alias, Hub repo id or local folder; downloaded if needed) onto `device`
    ("auto": CUDA when visible; the CPU only for tiny models unless asked for by name).

    `dtype` is the transformer's and text encoder's (bf16 on CUDA, fp32 on the CPU by default); the VAE
    runs in fp32. `command` ("t2v", "i2v", "extend") checks that the checkpoint can run it.

    How it runs: `offload`, `quantize`, `cfg`, `tiled_decode` and `text_encoder_device` make its memory
    plan; each left at "auto"/None is chosen by the planner as the fastest that fits the GPU's free memory
    (or `vram_gb`) at the size of `plan_for` (default: the model's native size); `skyreels plan` shows the
    choice. `attention` picks the kernel, `compile` compiles the transformer's blocks.

    `loras`: `PATH_OR_REPO[:SCALE]` values (or `models.lora` specs), checked to fit and applied before
    the memory plan; part of the model's identity (recorded in each sidecar, compared on resume).

    `parallel`: context parallelism over the processes torchrun started (None: when started by torchrun;
    False: never; or a `runtime.parallel.Parallel` already joined). `ulysses`, `ring` choose the layout
    (default: as much Ulysses as the head count allows). Every rank calls `generate` the same way; only
    rank 0 writes and gets a `Result` (the others get None).
    """
    from ..runtime.parallel import init_parallel, launched_by_torchrun
    from ..runtime.plan import resolve_plan

    spec = model if isinstance(model, ModelSpec) else resolve_model(model, command)
    if parallel is None and launched_by_torchrun() or parallel is True:
        parallel = init_parallel(device)
    parallel = parallel or None
    check_layout_options(ulysses, ring, parallel)
    dev = parallel.device if parallel is not None else check_device(device, spec)
    torch_dtype = pick_dtype(dtype, dev)
    size = {} if plan_for is None else {"height": plan_for.height, "width": plan_for.width,
                                         "frames": plan_for.base_frames if spec.forcing else plan_for.frames}
    memory, reason = resolve_plan(spec, dev, offload=offload, quantize=quantize, cfg=cfg, tiled_decode=tiled_decode,
                                  text_encoder_device=text_encoder_device, vram_gb=vram_gb, **size)
    pick_backend(attention, dev, torch_dtype)  # a kernel that cannot run is refused before a long download and load
    if compile:
        check_compile(dev)
    loras = [lora if isinstance(lora, ResolvedLora) else resolve_lora(lora) for lora in loras]  # found before loading
    started = time.perf_counter()
    follower = parallel is not None and not parallel.is_main
    with third_party_quiet(not progress):
        if parallel is None:
            folder = ensure_model(spec, progress=progress)
        else:  # one download (or tiny build) on rank 0; the others then find it in the cache
            folder = parallel.main_first("get the model", lambda: ensure_model(spec, progress=progress))
        # A follower reads only the transformer's weights: rank 0 encodes, decodes and shares (FOLLOWER_READS).
        components = load_components(folder, spec.kind, torch_dtype, read=FOLLOWER_READS if follower else None)
        # Before the plan: fp8 casting then stores only the base weights, offload hooks see the adapters.
        records = apply_loras(components["transformer"], loras, spec.alias)
    loaded = Model(spec, folder, components, dev, torch_dtype, progress, round(time.perf_counter() - started, 3),
                   memory=memory, attention=attention, compile=compile, loras=records, parallel=parallel,
                   ulysses=ulysses, ring=ring)
    loaded.memory_reason = reason
    return loaded


class Model:
    def __init__(self, spec: ModelSpec, folder: Path, components: dict, device: torch.device, dtype: torch.dtype,
                 progress: bool = True, load_seconds: float = 0.0, *, memory: MemoryPlan | None = None,
                 attention: str = "auto", compile: bool = False, loras: list[dict] | None = None,
                 parallel: Parallel | None = None, ulysses: int | None = None, ring: int | None = None) -> None:
        import diffusers

        self.spec = spec
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.load_seconds = load_seconds
        self.components = components
        self.memory = memory or MemoryPlan()
        self.memory_reason = ""
        self.loras = list(loras or [])  # sidecar records of the LoRAs applied at load
        transformer = components["transformer"]
        if spec.forcing:
            # Before the plan's offload hooks, which wrap `forward`: those must wrap ours.
            install_per_frame_modulation(transformer)
        self.placement = Placement(components, device, self.memory)
        self.attention = apply_backend(transformer, attention, device)
        self.parallel = parallel
        if parallel is not None:  # after the kernel is set (ring may change it) and the modulation installed
            parallel.layout = choose_layout(transformer.config.num_attention_heads, parallel.world, ulysses, ring)
            enable_context_parallel(transformer, parallel.layout, device, per_frame=spec.forcing)
        self.compiled = compile
        if compile:
            compile_blocks(transformer, device)
        self._pipeline_cls = getattr(diffusers, KINDS[spec.kind].pipeline)
        self._pipe = self._pipeline_cls(**components)  # its encode_prompt and video_processor
        self._prompts = PromptEncoder(self._pipe, self.placement)
        if parallel is not None:  # rank 0 encodes each prompt once, the others receive the embeddings
            self._prompts._encode = from_rank_0(self._prompts._encode, parallel)
            # What each process read and how long it took to be ready, as the sidecar records it.
            self._ranks = parallel.gather({"startup_s": round(parallel.startup_s(), 3),
                                           "loaded_bytes": loaded_bytes(components)})
        self._replayed = 0  # latent frames the last resumed run decoded again
        self._cache: StepCache | None = None  # the last run's step cache, for its counts
        self._events: Progress | None = None  # the running job's progress listener
        self._colour: list[dict] = []  # run.colour: each window's channel statistics
        self._made = 0  # frames the running job generated

    @property
    def runtime(self) -> dict:
        """How this model runs, as recorded in each sidecar."""
        m = self.memory
        runtime = {"offload": m.offload, "quantize": m.quantize, "cfg": m.cfg, "tiled_decode": m.tiled_decode,
                   "text_encoder_device": m.text_encoder_device, "attention": self.attention, "compile": self.compiled}
        if self.parallel is not None:
            runtime["parallel"] = {"processes": self.parallel.world, "ulysses": self.parallel.layout.ulysses,
                                   "ring": self.parallel.layout.ring,
                                   "startup_s": [r["startup_s"] for r in self._ranks],
                                   "loaded_bytes": [r["loaded_bytes"] for r in self._ranks]}
        return runtime

    @property
    def _decodes(self) -> bool:
        """Only rank 0 of a context-parallel run decodes and writes."""
        return self.parallel is None or self.parallel.is_main

    def remove_loras(self) -> None:
        """Run without the LoRAs from now on: the transformer's own weights come back exactly."""
        remove_loras(self.components["transformer"])
        self.loras = []

    def __repr__(self) -> str:
        return f"<skyreels Model {self.spec.alias} ({self.spec.kind}) on {self.device}, {self.dtype_name}>"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    # ------------------------------------------------------------ requests

    def resolve(self, request: Request) -> Request:
        """`request` with this model's defaults filled in and validated (the seed drawn if unset)."""
        return resolve(request, self.spec)

    def prepare(self, request: Request, output: str | Path | None = None, *, overwrite: bool = False,
                resume: bool = False) -> Job:
        return prepare(self.spec, request, output, overwrite=overwrite, resume=resume, dtype=self.dtype_name,
                       processes=1 if self.parallel is None else self.parallel.world)

    def generate(self, request: Request, output: str | Path | None = None, *, overwrite: bool = False,
                 resume: bool = False, on_window: Callable[[WindowFrames], None] | None = None,
                 progress: Progress | None = None) -> Result:
        """Make the video `request` describes into `output` (NAME.mp4 or DIR/ for PNG frames) with its sidecar.

        Without `output` it goes to outputs/<time>_<seed>_<prompt>.mp4. Frames are written window by
        window as they are made; a diffusion forcing run saves its state after each window, and
        `resume=True` continues an interrupted run exactly. `on_window` is called after each window;
        `progress` with each progress event (core/progress.py), in place of the tqdm bars.
        """
        if self.parallel is not None and not self.parallel.is_main:
            return self.follow()
        try:
            job = self.prepare(request, output, overwrite=overwrite, resume=resume)
        except BaseException:
            if self.parallel is not None:
                self.parallel.share(None)  # the other ranks stop waiting
            raise
        return self.run(job, on_window, progress)

    def follow(self) -> None:
        """On a context-parallel rank but the first: take part in rank 0's next job, writing nothing."""
        job = self.parallel.share(None)
        if job is None:  # rank 0 refused the request (it says why)
            return
        request, saved = job
        state = saved["engine"] if saved else None
        with self.parallel.peers_lost_as_errors(self._kept):
            for _ in self._windows(request, state, saved.get("generated", 0) if saved else 0):
                pass

    @property
    def _kept(self) -> str:
        """What an interrupted run leaves behind."""
        return "the finished windows are kept: add --resume" if self.spec.forcing else "nothing was written"

    def stream(self, request: Request) -> Iterator[WindowFrames]:
        """Each window's new frames as they are made, writing nothing. A continued `video` is not repeated."""
        resolved = self.resolve(request)
        for window, _ in self._windows(resolved, None):
            yield window

    # ------------------------------------------------------------ running

    def run(self, job: Job, on_window: Callable[[WindowFrames], None] | None = None,
            progress: Progress | None = None) -> Result:
        """Carry out a prepared job (see `prepare`); `progress` receives its progress events."""
        if job.spec != self.spec:
            raise ValueError(f"job for {job.spec.alias} given to model {self.spec.alias}")
        if self.parallel is not None:  # the other ranks run what rank 0 resolved: same seed, same state
            self.parallel.share((job.request, job.saved))
        self._events = progress
        try:
            with nullcontext() if self.parallel is None else self.parallel.peers_lost_as_errors(self._kept):
                return self._run(job, on_window)
        finally:
            self._events = None
            job.release()

    @property
    def _bars(self) -> bool:
        """tqdm bars only when nobody listens to the progress events."""
        return self.progress and self._events is None

    def _emit(self, event) -> None:
        if self._events is not None:
            self._events(event)

    def _run(self, job: Job, on_window: Callable[[WindowFrames], None] | None) -> Result:
        request, target, saved = job.request, job.target, job.saved
        timer = Timer()
        self._replayed = 0
        self._colour, self._made = [], 0
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._check_resumable(job)
        self._cache = None
        metadata = {"skyreels": __version__, "request": request.to_dict(),
                    "model": {**job.model_identity, "dtype": self.dtype_name, "quantize": self.memory.quantize,
                              "device": str(self.device), **({"loras": self.loras} if self.loras else {})}}
        if request.shots:
            metadata["shots"] = shots_record(request)  # which frames and windows belong to which shot
        sink = FrameSink(target, request.fps, metadata, resume_frames=saved["frames_written"] if saved else 0)
        with sink, third_party_quiet(not self.progress):
            with timer("generate"), self._out_of_memory(request):
                self._write_windows(job, sink, metadata, on_window)
            timer.marks["load"] = self.load_seconds
            timer.marks["total"] = round(time.perf_counter() - started, 3)
            peak = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2) if self.device.type == "cuda" else None
            run = {"frames_written": sink.frames_written, "timings_s": timer.marks, "output": str(target.path),
                   "resumed": bool(saved), "replayed_latents": self._replayed, "peak_vram_gb": peak,
                   "runtime": self.runtime}
            cache = self._cache.stats() if self._cache is not None else None
            if cache is not None:
                run["step_cache"] = cache
            run["colour"] = self._colour
            path = sink.finish({**metadata, "run": run})
        self._emit(RunFinished(self._made, round(time.perf_counter() - started, 3), path))
        return Result(path, target.sidecar, request, sink.frames_written, timer.marks, peak, bool(saved),
                      self._replayed, cache, self.runtime)

    def _check_resumable(self, job: Job) -> None:
        # fp8 or int8 weights make other frames: a run must continue with the storage it started with.
        saved = job.saved["model"].get("quantize", "none") if job.saved else None
        if saved is not None and saved != self.memory.quantize:
            raise ResumeError(f"cannot resume {job.target.path}: it was started with --quantize {saved}, this model "
                              f"is loaded with --quantize {self.memory.quantize}; repeat the original option")
        if job.saved and _lora_identity(job.saved["model"].get("loras", [])) != _lora_identity(self.loras):
            raise ResumeError(f"cannot resume {job.target.path}: it was started with other LoRAs (--lora) than this "
                              "model has; repeat the original --lora options")

    @contextmanager
    def _out_of_memory(self, request: Request) -> Iterator[None]:
        """A CUDA out-of-memory becomes one line naming a plan predicted to fit (finished windows are kept)."""
        try:
            yield
        except torch.OutOfMemoryError:
            from ..runtime.plan import flags, smaller_plan

            frames = request.base_frames if self.spec.forcing else request.frames
            better = smaller_plan(self.spec, self.device, self.memory, request.height, request.width, frames)
            m = self.memory
            if better is None:
                hint = "no smaller plan is predicted to fit: try a smaller --height/--width or --base-frames"
            else:
                hint = f"try {flags(better)}"

            kept = "; the finished windows are kept: add --resume" if self.spec.forcing else ""
            raise OutOfMemory(f"the GPU ran out of memory with --offload {m.offload} --quantize {m.quantize} "
                              f"--cfg {m.cfg}; {hint}{kept}") from None

    def _write_windows(self, job: Job, sink: FrameSink, metadata: dict,
                       on_window: Callable[[WindowFrames], None] | None) -> None:
        """Each window's frames into the sink, and the resume state after each but the last."""
        request, target, saved = job.request, job.target, job.saved
        state = saved["engine"] if saved else None
        if request.video and state is None:
            self._copy_input_video(request, sink)
        windows = self._windows(request, state, saved.get("generated", 0) if saved else 0)
        bar = self._window_bar(request, state)
        self._emit(self._started(job))
        # A resumed run's earlier windows; a fresh run starts its log afresh (logged_windows(..., 0) empties it).
        self._colour = logged_windows(target.work_dir, state.next_window if state else 0)
        for window, new_state in windows:
            sink.write(window.frames)
            sink.end_window()
            self._made += len(window.frames)
            record = colour.window_record(window.index, window.first_frame, window.frames) if len(window.frames) \
                else None
            if record is not None:
                self._colour.append(record)
            if new_state is not None and window.index + 1 < window.windows:
                if record is not None:
                    log_window(target.work_dir, record)
                save_state(target.work_dir, metadata["request"], metadata["model"], new_state,
                           sink.frames_written, generated=window.first_frame + len(window.frames))
            faults.point("window_saved")
            bar.update()
            self._emit(WindowDone(window.index, window.windows, sink.frames_written))
            if on_window is not None:
                on_window(window)
            del window
        bar.close()

    def _window_bar(self, request: Request, state: EngineState | None):
        total = len(window_plan(request).windows) if self.spec.forcing else 1
        done = state.next_window if state else 0
        return tqdm(total=total, initial=done, desc="windows", unit="window",
                    disable=not self._bars or total == 1)

    def _started(self, job: Job) -> RunStarted:
        r, state = job.request, job.saved["engine"] if job.saved else None
        if not self.spec.forcing:
            return RunStarted(1, r.frames, job.target.preview)
        plan = window_plan(r)
        return RunStarted(len(plan.windows), r.frames, job.target.preview, state.next_window if state else 0,
                          window_costs(plan, r.steps, r.ar_step))

    def _windows(self, request: Request, state: EngineState | None,
                 first: int = 0) -> Iterator[tuple[WindowFrames, EngineState | None]]:
        """Each window's frames and the engine state after it; `first` counts the frames made before
        `state` (on resume)."""
        cond = self._prompts(request.prompt, request.negative_prompt, request.guidance,
                             self.components["transformer"].dtype)
        if not self.spec.forcing:
            pipe = clip_pipeline(self._pipeline_cls, self.components, request)
            if self.parallel is not None:  # rank 0 encodes the image; the others receive its embeddings and latents
                share_image_inputs(pipe, self.parallel)
            on_step = None if self._events is None else lambda step, steps: self._emit(StepDone(0, step, steps))
            yield generate_clip(pipe, request, generated_frames(request, self.spec), cond, self._bars,
                                self.placement, on_step, decode=self._decodes), None
            return
        yield from self._forcing_windows(request, cond, state, first)

    def _forcing_windows(self, request: Request, cond, state: EngineState | None, first: int):
        c = self.components
        scheduler = make_scheduler(c["scheduler"].config, request.shift, request.sigma_grid)
        self._cache = StepCache(request.cache) if request.cache else None
        on_step = None if self._events is None else lambda *at: self._emit(StepDone(*at))
        latent_match = colour.match_latents if request.color_match == "latent" else None
        engine = DiffusionForcingEngine(c["transformer"], c["vae"], scheduler, self.device, self._bars,
                                        cfg=self.memory.cfg, placement=self.placement,
                                        tiled_decode=self.memory.tiled_decode, step_cache=self._cache,
                                        on_step=on_step, adjust_latents=latent_match, decode=self._decodes)
        plan = window_plan(request)
        sampling = Sampling(request.steps, request.ar_step, request.addnoise, request.causal_attention, request.fps)
        start, end = self._image_latents(request) if state is None else (None, None)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        conditioning = (lambda _: cond) if not request.shots else shot_conditioning(
            request, lambda prompt, negative, guidance: self._prompts(prompt, negative, guidance,
                                                                     c["transformer"].dtype))
        outputs = engine.run(plan, conditioning, sampling, generator, (request.height // 8, request.width // 8),
                             start_latents=start, end_latent=end, emit_start=not request.video, state=state)
        reference = state.extra.get("colour_reference") if state else None
        for out in outputs:
            if self.parallel is not None:  # every rank must have drawn the same noise and made the same latents
                self.parallel.check_same(out.latents, f"window {out.window.index + 1}")
            self._replayed = engine.replayed
            frames = out.frames[: max(0, request.frames - first)]  # the last window may make a few extra
            if request.color_match == "pixel" and len(frames):
                frames, reference = _match_pixels(frames, reference, request.overlap)
                out.state.extra["colour_reference"] = reference  # saved with the state: --resume goes on
            yield WindowFrames(out.window.index, len(plan.windows), first, frames, out.latents), out.state
            first += len(frames)

    def _image_latents(self, request: Request) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The clean latents of the start image or continued video, and of the end image (None if not given).
        In a context-parallel run rank 0 encodes them and the others receive them."""
        if self.parallel is not None:
            return from_rank_0(self._encode_images, self.parallel)(request)
        return self._encode_images(request)

    def _encode_images(self, request: Request) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        start = end = None
        if request.image or request.video or request.end_image:
            with self.placement.encoding_images():  # the VAE's encoder (model offload: only while it encodes)
                if request.image:
                    start = image_latent(self._pipe, request.image, "--image", request)
                elif request.video:
                    start = video_prefix(self.components["vae"], request)
                if request.end_image:
                    end = image_latent(self._pipe, request.end_image, "--end-image", request)
        return start, end

    def _copy_input_video(self, request: Request, sink: FrameSink) -> None:
        """The video being continued goes into the output first, streamed in chunks."""
        for chunk in iter_video_frames(Path(request.video), chunk=16):
            sink.write(fit_frames(chunk, request.height, request.width))
        sink.end_window()


def _lora_identity(records: list[dict]) -> list[tuple[str, float]]:
    """What makes LoRAs give the same frames: the files' contents and scales, in order (not their paths)."""
    return [(r["sha256"], float(r["scale"])) for r in records]


def _match_pixels(frames: np.ndarray, reference: list | None, overlap: int) -> tuple[np.ndarray, list]:
    """Frames matched to the reference statistics (none for the first window), and the next reference: the
    statistics of their last `overlap` frames, the ones the next window continues from."""
    if reference is not None:
        frames = colour.match_frames(frames, (np.asarray(reference[0]), np.asarray(reference[1])))
    mean, std = colour.channel_stats(frames[-overlap:])
    return frames, [mean.tolist(), std.tolist()]
