"""Running a `Job` from start to end: check everything, load (or reuse) its model, generate. The one runner
the CLI's commands, batch files and Python callers share.

    checked = sk.check(job)        # everything that can be known before a model loads; writes nothing
    result = sk.run(job)           # check, load, make the video; `pool=` reuses loaded models

Under torchrun every process calls `run` the same way: the first checks the job and tells the others what
to load and run; only it writes and gets a Result (the others get None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..errors import warn
from ..models.loading import check_device, dtype_name, pick_dtype
from ..models.lora import resolve_lora
from ..models.naming import resolve_model
from ..models.registry import ModelSpec
from ..runtime.attention import pick_backend, planned_layout
from ..runtime.compile import check_compile
from ..runtime.launch import launched_by_torchrun
from ..runtime.parallel import Parallel, check_layout_options, init_parallel
from ..runtime.plan import resolve_plan
from .enhance import enhancer_note
from .estimate import estimate, format_flops
from .events import OnEvent, PromptEnhanced, format_duration
from .job import Job
from .prepare import Prepared, prepare
from .resolve import accelerated, resolve, run_shape
from .results import Result, WindowFrames
from .run import Cancel

LONG_RUN_S = 3600  # a run estimated longer than this is announced with a warning


@dataclass(frozen=True)
class Checked:
    """A job checked as a whole: what would be made, where, on which device, with which memory plan."""

    job: Job                 # its request resolved (the seed drawn), its quantization kept when resuming
    spec: ModelSpec
    prepared: Prepared       # nothing created or locked
    device: torch.device
    dtype: str
    memory_plan: str         # the plan `load` would choose, and why (one line)
    estimate: tuple[float, float] | None  # (transformer FLOPs, rough seconds here), when the config is cached
    enhance: str | None = None  # where the prompt enhancer would come from (one line), when the job has one

    def describe(self) -> str:
        return self.prepared.describe()


def check(job: Job, *, parallel: Parallel | None = None) -> Checked:
    """Everything about `job` that can be known before a model loads, checked; the first problem raised as a
    SkyreelsError. Loads nothing and writes nothing (an enhancer and LoRAs are only looked for)."""
    options = job.load
    spec, accelerator_lora = accelerated(resolve_model(job.model, job.command), options.accelerator, job.request)
    resolve(job.request, spec)  # the request's own values first: wrong ones are wrong on any machine
    check_layout_options(options.ulysses, options.ring, parallel)
    device = parallel.device if parallel is not None else check_device(options.device, spec)
    dtype = pick_dtype(options.dtype, device)
    # a kernel that cannot run here (or split over these processes) is refused now
    pick_backend(options.attention, device, dtype, layout=planned_layout(parallel.world if parallel else 1, options.ring))
    if options.compile:
        check_compile(device)
    for text in (*options.loras, *filter(None, [accelerator_lora])):  # a missing LoRA is refused before loading
        resolve_lora(text)
    note = enhancer_note(job.enhance) if job.enhance is not None else None
    prepared = prepare(spec, job.request, job.output, overwrite=job.overwrite, resume=job.resume,
                       dtype=dtype_name(dtype), processes=1 if parallel is None else parallel.world,
                       output_dir=job.output_dir, dry_run=True)
    if prepared.saved and options.quantize == "auto":  # continue with the weights it started with
        options = replace(options, quantize=prepared.saved["model"].get("quantize", "none"))
    _, reason = resolve_plan(spec, device, run_shape(spec, prepared.request), vram_gb=options.vram_gb,
                             **options.plan_fields())
    return Checked(replace(job, request=prepared.request, load=options), spec, prepared, device, dtype_name(dtype),
                   reason, estimate(spec, prepared.request, device.type), note)


def run(job: Job, *, pool=None, cancel: Cancel | None = None, on_event: OnEvent | None = None,
        on_window: Callable[[WindowFrames], None] | None = None, progress: bool = True,
        parallel: Parallel | None = None, prompts=None) -> Result | None:
    """Check `job`, load its model (or take it from `pool`, a `ModelPool`), make the video.

    `cancel`, `on_event`, `on_window`, `progress`, `prompts` (a live job's `sk.LivePrompts`): as for `Model.generate`. A run estimated to take more than
    an hour warns first (`sk.SkyreelsWarning`). `parallel`: a process group already joined (the service's
    workers join one per job); without it, the group torchrun describes when started by torchrun."""
    if parallel is None and launched_by_torchrun():
        parallel = init_parallel(job.load.device)
    if parallel is not None and not parallel.is_main:
        return _follow(parallel, pool, progress)
    told = False
    try:
        checked = check(job, parallel=parallel)
        job = checked.job
        if job.enhance is not None:
            job = _enhance(job, checked.device, on_event)
        _warn_if_long(checked)
        if parallel is not None:  # the others load the same way, then follow this job
            parallel.share(job.to_dict())
            told = True
        model = _model(pool, checked.spec, job, progress, parallel)
        return model.generate(job, cancel=cancel, on_event=on_event, on_window=on_window, progress=progress,
                              prompts=prompts)
    finally:
        if parallel is not None and not told:
            parallel.share(None)  # stopped before loading (an error): the others wait for nothing


def _model(pool, spec: ModelSpec, job: Job, progress: bool, parallel: Parallel | None):
    from .model import load

    if pool is not None and parallel is None:
        return pool.get(spec, job.load, plan_for=job.request)
    return load(spec, options=job.load, command=job.command, plan_for=job.request, progress=progress,
                parallel=parallel or False)


def _follow(parallel: Parallel, pool, progress: bool) -> None:
    """A process but the first: load as the first did, then take part in its job; prints nothing."""
    shared = parallel.share(None)
    if shared is None:  # the first stopped before loading (it says why)
        return None
    job = Job.from_dict(shared)
    spec = resolve_model(job.model, job.command)
    from .model import load

    model = load(spec, options=job.load, command=job.command, plan_for=job.request, progress=False, parallel=parallel)
    model.follow()
    return None


def _enhance(job: Job, device: torch.device, on_event: OnEvent | None) -> Job:
    """The job with its prompt rewritten (the LLM loaded and freed before the video model loads)."""
    from .enhance import enhance_request

    request, enhanced = enhance_request(job.request, job.enhance, device)
    if on_event is not None:
        on_event(PromptEnhanced(enhanced.original, enhanced.prompt, enhanced.enhancer, enhanced.seconds))
    return replace(job, request=request, enhance=None)


def _warn_if_long(checked: Checked) -> None:
    if checked.job.request.live:  # it runs until stopped: its most is no estimate of how long it will run
        return
    if checked.estimate and checked.estimate[1] > LONG_RUN_S:
        flops, seconds = checked.estimate
        warn(f"this run is about {format_flops(flops)} of transformer work, roughly {format_duration(seconds)} "
             f"on {checked.device.type} (Ctrl-C stops it; a dry run checks a plan first)")

