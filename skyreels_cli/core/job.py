"""A job: a resolved request, the model it is for, where it goes, and (for --resume) the saved state.

Everything a run needs is checked here before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ResumeError, UsageError
from ..forcing.resume import discard_state, load_state, state_path
from ..media.lock import OutputLock
from ..media.targets import OutputTarget, resolve_output
from ..models.registry import ModelSpec
from .request import Request
from .resolve import check_split, resolve


@dataclass(frozen=True)
class Job:
    spec: ModelSpec
    request: Request  # resolved: every field that applies is set
    target: OutputTarget
    saved: dict | None = None  # the resume state, for --resume
    lock: OutputLock | None = None  # held from prepare() until the run ends: one run per output

    def describe(self) -> str:
        """One line: what will be made, and where."""
        from .resolve import generated_frames, window_plan

        r = self.request
        made = generated_frames(r, self.spec)
        windows = len(window_plan(r).windows) if self.spec.forcing else 1
        how = f" ({made} made in {windows} window{'s' if windows > 1 else ''})" if made != r.frames or windows > 1 else ""
        return f"{self.spec.alias}, {r.width}x{r.height}, {r.frames} frames{how}, seed {r.seed} -> {self.target.path}"

    def estimate(self, device_type: str) -> tuple[float, float] | None:
        """(transformer FLOPs, rough seconds on `device_type`) of the run, when the checkpoint's config is
        already on this machine; None otherwise."""
        from ..models.hub import cached_snapshot
        from .estimate import Architecture, estimated_seconds, run_flops

        folder = cached_snapshot(self.spec)
        if folder is None or not (folder / "transformer" / "config.json").is_file():
            return None
        flops = run_flops(Architecture.of(folder), self.request, self.spec)
        return flops, estimated_seconds(flops, device_type)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    @property
    def model_identity(self) -> dict:
        return {"alias": self.spec.alias, "repo": self.spec.repo, "revision": self.spec.revision,
                "kind": self.spec.kind}


def prepare(spec: ModelSpec, request: Request, output: str | Path | None = None, *, overwrite: bool = False,
            resume: bool = False, dtype: str | None = None, processes: int = 1) -> Job:
    """Resolve and check a request for `spec` and its output; with `resume`, read and match the saved state.
    `processes`: how many share each transformer call (context parallelism), which the size must suit."""
    output = None if output is None else str(output)
    inputs = (request.image, request.end_image, request.video)
    saved = None
    if resume:
        if output is None:
            raise UsageError("--resume needs the -o path of the interrupted run")
        probe = resolve_output(output, prompt=request.prompt, seed=0, overwrite=overwrite, resume=True, inputs=inputs)
        if not state_path(probe.work_dir).is_file() and (probe.path.is_file() or probe.sidecar.is_file()):
            raise ResumeError(f"{probe.path} is finished: there is nothing to resume")
        saved = load_state(probe.work_dir, probe.path)
        if request.seed is None:  # continue with the interrupted run's seed
            request = replace(request, seed=int(saved["request"]["seed"]))
    resolved = resolve(request, spec)
    if processes > 1:
        check_split(resolved, spec, processes)
    target = resolve_output(output, prompt=resolved.prompt, seed=resolved.seed, overwrite=overwrite, resume=resume,
                            inputs=inputs)
    lock = OutputLock(target.lock, target.path).acquire()
    try:
        job = Job(spec, resolved, target, saved, lock)
        if saved is not None:
            _check_matches(job, saved, dtype)
        elif state_path(target.work_dir).is_file():
            if not overwrite:
                raise ResumeError(f"an interrupted run of {target.path} is saved; run the same command with --resume "
                                  "to continue it, or with --overwrite to start over")
            discard_state(target.work_dir)  # a fresh run must never be mistaken later for the one it replaces
    except BaseException:
        lock.release()
        raise
    return job


def _check_matches(job: Job, saved: dict, dtype: str | None) -> None:
    differ = job.request.differences(Request.from_dict(saved["request"]))
    model = saved["model"]
    differ += [f"model {name}" for name in ("repo", "kind") if model.get(name) != job.model_identity[name]]
    if dtype is not None and model.get("dtype") != dtype:
        differ.append("dtype")
    if differ:
        raise ResumeError(f"cannot resume {job.target.path}: these settings differ from the saved run: "
                          f"{', '.join(differ)}; repeat the original options, or start over with --overwrite")
