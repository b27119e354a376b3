"""`Model`: a checkpoint loaded once, generating any number of videos, for any number of callers.

    import skyreels_cli as sk
    model = sk.load("df-1.3b-540p", device="cuda")
    result = model.generate(sk.Request(prompt="a fox in the snow", frames=257, seed=42), output="fox.mp4")

A Model holds what loading made; each generation's own state lives in a `Run` (core/run.py). Calls are
serialised on the device by the model's lock: a second thread's `generate` waits, then runs; `stream()`
holds the lock only while it makes a window, so it can be read beside any other call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from ..errors import Cancelled, ModelError, OutOfMemory, UsageError, kept_after_stop, setting
from ..forcing.engine import Conditioning
from ..models.hub import ensure_model
from ..models.kinds import KINDS
from ..models.loading import check_device, dtype_name, load_components, loaded_bytes, pick_dtype, read_text_encoder
from ..models.lora import adapter_bytes, apply_loras, remove_loras, resolve_lora
from ..models.naming import check_kind, resolve_model
from ..models.registry import ModelSpec
from ..quiet import third_party_quiet
from ..run_options import BY_NAME, PLAN_FIELDS, RECORDED, LoadOptions
from ..runtime.attention import apply_backend, checkpoint_needs_mask, pick_backend, planned_layout
from ..runtime.compile import check_compile, compile_blocks
from ..runtime.launch import launched_by_torchrun
from ..runtime.memory import MemoryPlan, apply_quantization, fp8_as_read
from ..runtime.modulation import install_per_frame_modulation
from ..runtime.parallel import (
    FOLLOWER_READS,
    Parallel,
    check_layout_options,
    choose_layout,
    enable_context_parallel,
    from_rank_0,
    init_parallel,
    whole_sequence_attention,
)
from ..runtime.placement import Placement
from ..runtime.plan import flags, free_vram_gb, resolve_plan, smaller_plan, total_vram_gb
from .conditioning import PromptEncoder
from .events import OnEvent, RunFinished
from .job import Job
from .live import LivePrompts
from .prepare import Prepared, prepare
from .request import Request
from .resolve import accelerated, planned_shape, resolve
from .results import Result, WindowFrames
from .run import Cancel, Run


def load(model: str | ModelSpec | None = None, *, options: LoadOptions | None = None, command: str | None = None,
         plan_for: Request | None = None, progress: bool = True, parallel: Parallel | bool | None = None,
         **run_options) -> Model:
    """Load a checkpoint (registry alias, Hub repo id or local folder; downloaded if needed).

    How it loads and runs: `options` (a `LoadOptions`), or the same fields as keywords: `device` ("auto":
    CUDA when visible; the CPU only for tiny models unless asked for by name), `dtype` (the transformer's
    and text encoder's: bf16 on CUDA, fp32 on the CPU; the VAE runs in fp32), the memory plan (`offload`,
    `quantize`, `cfg`, `tiled_decode`, `text_encoder_device`: each left at "auto"/None is the planner's
    choice, the fastest that fits the GPU's free memory or `vram_gb`, at the size of `plan_for`, default
    the model's native size; `skyreels plan` shows it), `attention` (the kernel), `compile`, `loras`
    (`PATH_OR_REPO[:SCALE]` each, checked to fit and applied before the memory plan; part of the model's
    identity, recorded in each sidecar, compared on resume), `ulysses` and `ring` (the layout of context
    parallelism). `command` ("t2v", "i2v", "extend") checks that the checkpoint can run it. `progress`:
    download and tqdm bars (each generate can say otherwise).

    `parallel`: context parallelism over the processes torchrun started (None: when started by torchrun;
    False: never; or a `runtime.parallel.Parallel` already joined). Every rank calls `generate` the same
    way; only rank 0 writes and gets a `Result` (the others get None).
    """
    options = _options(options, run_options)
    spec = model if isinstance(model, ModelSpec) else resolve_model(model, command)
    # its settings become the model's defaults, its strength and noise levels those for the steps planned for
    spec, accelerator_lora = accelerated(spec, options.accelerator, plan_for)
    if parallel is None and launched_by_torchrun() or parallel is True:
        parallel = init_parallel(options.device)
    parallel = parallel or None
    check_layout_options(options.ulysses, options.ring, parallel)
    dev = parallel.device if parallel is not None else check_device(options.device, spec)
    torch_dtype = pick_dtype(options.dtype, dev)
    # a kernel that cannot run (here, or split over these processes) is refused before a long load
    layout = planned_layout(parallel.world if parallel else 1, options.ring)
    pick_backend(options.attention, dev, torch_dtype, layout=layout)
    if options.compile:
        check_compile(dev)
    # found before planning (their low-rank layers sit on the GPU beside the weights) and before a long load; an
    # accelerator's LoRA goes after those given (the shape counts its layers already)
    loras = [resolve_lora(text) for text in (*options.loras, *filter(None, [accelerator_lora]))]
    given_bytes = adapter_bytes(loras[:len(options.loras)], torch_dtype.itemsize)
    memory, reason, budget = choose_plan(spec, dev, planned_shape(spec, plan_for, given_bytes), options, parallel)
    started = time.perf_counter()
    follower = parallel is not None and not parallel.is_main
    with third_party_quiet(not progress):  # a download shows its bars: the one long wait with no display of ours
        if parallel is None:
            folder = ensure_model(spec, progress=progress)
        else:  # one download (or tiny build) on rank 0; the others then find it in the cache
            folder = parallel.main_first("get the model", lambda: ensure_model(spec, progress=progress))
        # a config that makes diffusers build a dense mask takes a kernel that honours it: known before the weights
        pick_backend(options.attention, dev, torch_dtype, layout=layout, masked=checkpoint_needs_mask(folder))
    # Loading takes seconds and shows nothing: diffusers' and transformers' bars and warnings ("Loading pipeline
    # components", "Loading weights") would crowd out the run's own display, which says what is made.
    with third_party_quiet():
        records: list[dict] = []

        def transformer_first(transformer: torch.nn.Module) -> torch.nn.Module:
            # LoRAs before the storage: fp8 casting then stores only the base weights, offload hooks see the
            # adapters. Both before the other components are read: the host holds the transformer as stored
            # beside the text encoder, never as loaded (runtime/plan.py predicts that peak).
            records.extend(apply_loras(transformer, loras, spec.alias))
            return apply_quantization(transformer, memory.quantize)

        # A follower reads only the transformer's weights: rank 0 encodes, decodes and shares (FOLLOWER_READS).
        # fp8 without LoRAs (merged into the bf16 weights before their storage) is stored as each shard is read
        as_read = fp8_as_read(torch_dtype) if memory.quantize == "fp8" and not loras else None
        # "disk": the text encoder is not read now, but for each prompt to encode (runtime/placement.py)
        components = load_components(folder, spec.kind, torch_dtype, read=FOLLOWER_READS if follower else None,
                                     transformer_first=transformer_first, stored_as_read=as_read,
                                     later=("text_encoder",) if memory.text_encoder_device == "disk" else ())
    return Model(spec, folder, components, dev, _resolved(options, dev, torch_dtype, memory), memory=memory,
                 memory_reason=reason, memory_budget_gb=budget, loras=records, parallel=parallel, progress=progress,
                 load_seconds=round(time.perf_counter() - started, 3), adapter_bytes=given_bytes)


def choose_plan(spec: ModelSpec, device: torch.device, shape, options: LoadOptions,
                parallel: Parallel | None) -> tuple[MemoryPlan, str, float | None]:
    """(the memory plan, why, the GB it was chosen for): `--vram`, else the GPU's free memory before loading.

    In a context-parallel run every rank must run the same plan (batched or separate guidance, offload
    hooks: their collectives must line up), so the free memory planned for is the least of every rank's,
    gathered before any rank chooses: each then makes the same choice (or refuses with the same line).
    """
    budget = options.vram_gb
    if budget is None and device.type == "cuda":
        budget = free_vram_gb(device)
        if parallel is not None:
            every = parallel.gather(budget)
            budget = None if None in every else min(every)
    plan, reason = resolve_plan(spec, device, shape, vram_gb=options.vram_gb,
                                free_gb=None if options.vram_gb is not None else budget, **options.plan_fields())
    return plan, reason, budget


def _options(options: LoadOptions | None, keywords: dict) -> LoadOptions:
    if options is not None and keywords:
        raise UsageError(f"give load options as options= or as keywords, not both ({', '.join(keywords)})")
    if options is not None:
        if not isinstance(options, LoadOptions):
            raise UsageError(f"options must be LoadOptions, got {type(options).__name__}")
        return options
    unknown = sorted(set(keywords) - set(BY_NAME))
    if unknown:
        raise UsageError(f"load() has no option {unknown[0]!r}; the options are {', '.join(BY_NAME)}",
                         field=unknown[0])
    return LoadOptions(**keywords)


def _resolved(options: LoadOptions, device: torch.device, dtype: torch.dtype, memory: MemoryPlan) -> LoadOptions:
    """`options` as the model runs them: device and dtype chosen, the memory plan's choices filled in."""
    fields = {**options.to_dict(), "device": str(device), "dtype": dtype_name(dtype)}
    fields.update({name: getattr(memory, name) for name in PLAN_FIELDS})
    return LoadOptions.from_dict(fields)


class Model:
    def __init__(self, spec: ModelSpec, folder: Path, components: dict, device: torch.device, options: LoadOptions,
                 *, memory: MemoryPlan | None = None, memory_reason: str = "", memory_budget_gb: float | None = None,
                 loras: list[dict] | None = None, adapter_bytes: int = 0,
                 parallel: Parallel | None = None, progress: bool = True, load_seconds: float = 0.0) -> None:
        import diffusers

        self.spec = spec
        self.folder = folder
        self.device = device
        self.options = options  # as resolved: device, dtype and memory plan as the model runs them
        self.dtype = pick_dtype(options.dtype, device)
        self.progress = progress
        self.load_seconds = load_seconds
        self.components = components
        self.memory = memory or MemoryPlan()
        self.memory_reason = memory_reason
        self.memory_budget_gb = memory_budget_gb  # the GB the plan was chosen for (None: nothing was planned)
        self.loras = list(loras or [])  # sidecar records of the LoRAs applied at load
        self.adapter_bytes = adapter_bytes  # GPU bytes of their low-rank layers (the plans count them)
        transformer = components["transformer"]
        if spec.forcing:
            # Before the plan's offload hooks, which wrap `forward`: those must wrap ours.
            install_per_frame_modulation(transformer)
        self.placement = Placement(components, device, self.memory,
                                   read_text_encoder=partial(read_text_encoder, folder, self.dtype))
        self.parallel = parallel
        if parallel is not None:  # the kernel is chosen for the layout: diffusers splits only some of them
            parallel.layout = choose_layout(transformer.config.num_attention_heads, parallel.world, options.ulysses,
                                            options.ring)
        self.attention = apply_backend(transformer, options.attention, device,
                                       layout=parallel.layout.kind if parallel is not None else "one")
        if parallel is not None:  # after the kernel is set and the modulation installed
            enable_context_parallel(transformer, parallel.layout, device, per_frame=spec.forcing)
            # each call counts as progress: a rank that reaches the next call is ahead of one stuck before it
            transformer.register_forward_pre_hook(lambda *_: parallel.progress.transformer_call())
        self.compiled = options.compile
        if options.compile:
            compile_blocks(transformer, device)
        self.pipeline_class = getattr(diffusers, KINDS[spec.kind].pipeline)
        self.pipe = self.pipeline_class(**components)  # its encode_prompt and video_processor
        self._prompts = PromptEncoder(self.pipe, self.placement)
        if parallel is not None:  # rank 0 encodes each prompt once, the others receive the embeddings
            self._prompts.encode = from_rank_0(self._prompts.encode, parallel)
            # What each process read and how long it took to be ready, as the sidecar records it.
            self._ranks = parallel.gather({"startup_s": round(parallel.startup_s(), 3),
                                           "loaded_bytes": loaded_bytes(components)})
        # One run at a time on the device; reentrant, so a generate() inside a stream's loop (same thread) runs.
        self._lock = threading.RLock()

    @property
    def runtime(self) -> dict:
        """How this model runs, as recorded in each sidecar (`run.runtime`)."""
        ran = {**{name: getattr(self.memory, name) for name in PLAN_FIELDS}, "attention": self.attention,
               "compile": self.compiled}
        runtime = {name: ran[name] for name in RECORDED}
        if self.parallel is not None:
            runtime["parallel"] = {"processes": self.parallel.world, "ulysses": self.parallel.layout.ulysses,
                                   "ring": self.parallel.layout.ring,
                                   "startup_s": [r["startup_s"] for r in self._ranks],
                                   "loaded_bytes": [r["loaded_bytes"] for r in self._ranks]}
        return runtime

    @property
    def decodes(self) -> bool:
        """Only rank 0 of a context-parallel run decodes and writes."""
        return self.parallel is None or self.parallel.is_main

    @property
    def whole_sequence_attention(self) -> Callable | None:
        """How causal attention sees every key when the tokens are split over processes (None: they are not)."""
        return whole_sequence_attention if self.parallel is not None else None

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def remove_loras(self) -> None:
        """Run without the LoRAs from now on: the transformer's own weights come back exactly."""
        with self._lock:
            remove_loras(self.components["transformer"])
            self.loras = []

    def __repr__(self) -> str:
        return f"<skyreels Model {self.spec.alias} ({self.spec.kind}) on {self.device}, {self.dtype_name}>"

    # ------------------------------------------------------------ requests

    def resolve(self, request: Request) -> Request:
        """`request` with this model's defaults filled in and validated (the seed drawn if unset)."""
        return resolve(_request(request), self.spec)

    def prepare(self, request: Request, output: str | Path | None = None, *, overwrite: bool = False,
                resume: bool = False, output_dir: str | Path | None = None) -> Prepared:
        """`request` resolved and its output checked and locked, ready to run (see core/prepare.py)."""
        return prepare(self.spec, _request(request), output, overwrite=overwrite, resume=resume,
                       dtype=self.dtype_name, processes=1 if self.parallel is None else self.parallel.world,
                       output_dir=output_dir)

    def generate(self, job: Job | Request, output: str | Path | None = None, *, overwrite: bool = False,
                 resume: bool = False, cancel: Cancel | None = None, on_event: OnEvent | None = None,
                 on_window: Callable[[WindowFrames], None] | None = None, progress: bool | None = None,
                 prompts: LivePrompts | None = None) -> Result:
        """Make the video a `Job` or `Request` describes into `output` (NAME.mp4, or DIR/ for PNG frames) with
        its sidecar. A Job brings its own output, overwrite, resume and enhancement (its model and load options
        must be this model's).

        Without `output` it goes to outputs/<time>_<seed>_<prompt>.mp4. Frames are written window by window
        as they are made; a diffusion forcing run saves its state after each window, and `resume=True`
        continues an interrupted run exactly. `cancel` (a `threading.Event`, e.g. `sk.Cancel()`): when set,
        the run stops at the next step and raises `sk.Cancelled` (finished windows stay for resume=True).
        `on_event` gets each progress event (core/events.py; no tqdm bars then), `on_window` each window's
        frames. `progress`: tqdm bars and third-party messages (default: as loaded).

        A live request (`live=True`) makes windows until `cancel` is set, then ends with everything made (no
        `Cancelled`); `prompts` (`sk.LivePrompts`) steers it while it runs (core/live.py).
        """
        if self.parallel is not None and not self.parallel.is_main:
            return self.follow()
        try:
            keep_last = None
            if isinstance(job, Job):
                keep_last = job.keep_last
                self.check_job(job)
                job = _enhanced(job, self.device)
                request, output, overwrite, resume, output_dir = \
                    job.request, job.output, job.overwrite, job.resume, job.output_dir
            else:
                request, output_dir = job, None
            prepared = self.prepare(request, output, overwrite=overwrite, resume=resume, output_dir=output_dir)
            if isinstance(job, Job) and job.tag_names:
                prepared = replace(prepared, tag_names=job.tag_names)
        except BaseException:
            if self.parallel is not None:
                self.parallel.share(None)  # the other ranks stop waiting
            raise
        return self._execute(prepared, cancel=cancel, on_event=on_event, on_window=on_window, progress=progress,
                             live=(prompts, keep_last))

    def check_job(self, job: Job) -> None:
        """Refuse a job meant for another checkpoint or other load options than this model's."""
        check_kind(self.spec, job.command)
        if job.model is not None:
            spec = resolve_model(job.model, job.command)
            if (spec.repo, spec.revision, spec.local_path) != (self.spec.repo, self.spec.revision, self.spec.local_path):
                raise ModelError(f"the job is for model {spec.alias}, this model is {self.spec.alias}; load the "
                                 "job's model (sk.run(job) does)")
        differ = [name for name, value in job.load.given().items()
                  if name not in ("device", "vram_gb") and value != getattr(self.options, name)]
        if differ:
            name = differ[0]
            raise UsageError(f"the job asks for {setting(name, getattr(job.load, name))}, this model was loaded with "
                             f"{setting(name, getattr(self.options, name))}; load it with the job's options "
                             "(sk.run(job) does)", field=name)

    def _execute(self, prepared: Prepared, *, cancel: Cancel | None, on_event: OnEvent | None,
                 on_window: Callable[[WindowFrames], None] | None, progress: bool | None,
                 live: tuple = (None, None)) -> Result:
        """Carry out a prepared run, one at a time on the device."""
        try:
            with self._lock:
                if self.parallel is not None:  # the other ranks run what rank 0 resolved: same seed, same state
                    self.parallel.progress.start(self._kept)
                    self.parallel.share((prepared.request, prepared.saved))
                run = Run(self, prepared.request, prepared=prepared, cancel=cancel, on_event=on_event,
                          progress=self.progress if progress is None else progress, prompts=live[0], keep_last=live[1])
                with nullcontext() if self.parallel is None else self.parallel.peers_lost_as_errors(self._kept):
                    return run.write(on_window)
        finally:
            if self.parallel is not None:
                self.parallel.progress.end()
            prepared.release()

    def follow(self) -> None:
        """On a context-parallel rank but the first: take part in rank 0's next run, writing nothing."""
        shared = self.parallel.share(None)
        if shared is None:  # rank 0 refused the request (it says why)
            return
        request, saved = shared
        run = Run(self, request, saved=saved, progress=False)
        self.parallel.progress.start(self._kept)
        try:
            with self.parallel.peers_lost_as_errors(self._kept):
                for _ in run.frames():
                    pass
        finally:
            self.parallel.progress.end()

    @property
    def _kept(self) -> str:
        """What an interrupted run leaves behind."""
        return kept_after_stop(self.spec.forcing)

    def stream(self, request: Request, *, cancel: Cancel | None = None, on_event: OnEvent | None = None,
               progress: bool | None = None, prompts: LivePrompts | None = None) -> Iterator[WindowFrames]:
        """Each window's new frames as they are made, writing nothing. A continued `video` is not repeated.

        The model's lock is held only while a window is made, so other calls may run between windows. A live
        request ends when `cancel` is set, after its last finished window (no `Cancelled`); `prompts` steers it."""
        run = Run(self, self.resolve(request), cancel=cancel, on_event=on_event,
                  progress=self.progress if progress is None else progress, prompts=prompts)
        frames = run.frames()
        try:
            run.emit(run.started())
            while True:
                with self._lock:
                    try:
                        made = next(frames, None)
                    except Cancelled:
                        if not run.live:
                            raise
                        made = None
                if made is None:
                    break
                run.made += len(made[0].frames)
                yield made[0]
            run.emit(RunFinished(run.made, run.clock.elapsed(), None))
        finally:
            with self._lock:
                frames.close()

    # ------------------------------------------------------------ what runs borrow

    def conditioning(self, prompt: str, negative: str, guidance: float) -> Conditioning:
        """The text embeddings for a prompt (remembered for the prompts used last), in the transformer's dtype."""
        return self._prompts(prompt, negative, guidance, self.components["transformer"].dtype)

    def image_latents(self, request: Request, encode: Callable) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`encode(request)`: in a context-parallel run rank 0 encodes and the others receive the latents."""
        if self.parallel is not None:
            return from_rank_0(encode, self.parallel)(request)
        return encode(request)

    @contextmanager
    def out_of_memory(self, request: Request) -> Iterator[None]:
        """A CUDA out-of-memory becomes one line naming a plan predicted to fit (finished windows are kept)."""
        try:
            yield
        except torch.OutOfMemoryError:
            # The budget the plan was chosen for, not the free memory now: the failed run's model and tensors
            # are still resident, so that would be near zero.
            better = smaller_plan(self.spec, self.device, self.memory,
                                  planned_shape(self.spec, request, self.adapter_bytes),
                                  vram_gb=self.memory_budget_gb or total_vram_gb(self.device))
            m = self.memory
            if better is None:
                hint = (f"no smaller plan is predicted to fit: try a smaller {setting('height')}/{setting('width')} "
                        f"or {setting('base_frames')}")
            else:
                hint = f"try {flags(better)}"
            kept = f"; {self._kept}" if self.spec.forcing else ""
            raise OutOfMemory(f"the GPU ran out of memory with {flags(m)}; {hint}{kept}") from None


def _request(request) -> Request:
    if not isinstance(request, Request):
        raise UsageError(f"give a skyreels Request (or a Job), got {type(request).__name__}: build one with "
                         "sk.Request(prompt=...), or sk.Request.from_dict(data) from a dict", field="request")
    return request


def _enhanced(job: Job, device: torch.device) -> Job:
    """The job with its prompt rewritten by its enhancer (none: as it is)."""
    if job.enhance is None:
        return job
    from dataclasses import replace

    from .enhance import enhance_request

    return replace(job, request=enhance_request(job.request, job.enhance, device)[0], enhance=None)
