"""A prepared run: a resolved request, the model it is for, where it goes, and (resuming) the saved state.

Everything a run needs is checked here before any model is loaded; `prepare(..., dry_run=True)` checks the
same and writes nothing (no folder, no lock).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ResumeError, UsageError, again_with, setting
from ..forcing.resume import discard_state, load_state, state_path
from ..media.hls import PLAYLIST, stream_folder
from ..media.lock import OutputLock
from ..media.targets import OutputTarget, resolve_output
from ..models.registry import ModelSpec
from .request import Request
from .resolve import check_split, generated_frames, resolve, window_plan


@dataclass(frozen=True)
class Prepared:
    spec: ModelSpec
    request: Request  # resolved: every field that applies is set
    target: OutputTarget
    saved: dict | None = None  # the resume state, when resuming
    lock: OutputLock | None = None  # held from prepare() until the run ends: one run per output (None: dry run)
    tag_names: dict[str, str] | None = None  # the job's: what the video's tag says in place of server text

    def describe(self) -> str:
        """One line: what will be made, and where."""
        r = self.request
        if r.live:  # no length: its most, and where it is watched
            return (f"{self.spec.alias}, {r.width}x{r.height}, live until stopped (at most {r.frames} frames), seed "
                    f"{r.seed} -> {self.target.path}, watch {stream_folder(self.target.path) / PLAYLIST}")
        made = generated_frames(r, self.spec)
        windows = len(window_plan(r).windows) if self.spec.forcing else 1
        how = f" ({made} made in {windows} window{'s' if windows > 1 else ''})" if made != r.frames or windows > 1 else ""
        return f"{self.spec.alias}, {r.width}x{r.height}, {r.frames} frames{how}, seed {r.seed} -> {self.target.path}"

    def tag(self, metadata: dict) -> dict:
        """The settings the video's tag carries: `metadata` with each of `tag_names`' texts replaced by its
        name, the longest first (a path inside another is replaced before it); the sidecar keeps the paths."""
        return public_metadata(metadata, self.tag_names or {})

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    @property
    def model_identity(self) -> dict:
        return model_identity(self.spec)


def public_metadata(metadata: dict, names: dict[str, str]) -> dict:
    """`metadata` with each text of `names` (as it is spelled in JSON) replaced by its name."""
    if not names:
        return metadata
    text = json.dumps(metadata)
    for server in sorted(names, key=len, reverse=True):
        text = text.replace(json.dumps(server)[1:-1], json.dumps(names[server])[1:-1])
    return json.loads(text)


def model_identity(spec: ModelSpec) -> dict:
    """What the sidecar and the resume state record of the checkpoint."""
    return {"alias": spec.alias, "repo": spec.repo, "revision": spec.revision, "kind": spec.kind}


def prepare(spec: ModelSpec, request: Request, output: str | Path | None = None, *, overwrite: bool = False,
            resume: bool = False, dtype: str | None = None, processes: int = 1, output_dir: str | Path | None = None,
            dry_run: bool = False) -> Prepared:
    """Resolve and check a request for `spec` and its output; resuming, read and match the saved state.

    `processes`: how many share each transformer call (context parallelism), which the size must suit.
    `output_dir`: where a default-named output goes (None: outputs/ here). `dry_run`: check only; nothing is
    created or locked.
    """
    output = None if output is None else str(output)
    inputs = (request.image, request.end_image, request.video)
    saved = None
    if resume:
        if output is None:
            raise UsageError(f"{setting('resume', True)} needs the {setting('output')} of the interrupted run",
                             field="output")
        probe = resolve_output(output, prompt=request.prompt, seed=0, overwrite=overwrite, resume=True, inputs=inputs,
                               create=False)
        if not state_path(probe.work_dir).is_file() and (probe.path.is_file() or probe.sidecar.is_file()):
            raise ResumeError(f"{probe.path} is finished: there is nothing to resume")
        saved = load_state(probe.work_dir, probe.path)
        if request.seed is None:  # continue with the interrupted run's seed
            request = replace(request, seed=int(saved["request"]["seed"]))
    resolved = resolve(request, spec)
    if processes > 1:
        check_split(resolved, spec, processes)
    target = resolve_output(output, prompt=resolved.prompt, seed=resolved.seed, overwrite=overwrite, resume=resume,
                            inputs=inputs, folder=output_dir, create=not dry_run)
    lock = None if dry_run else OutputLock(target.lock, target.path).acquire()
    try:
        prepared = Prepared(spec, resolved, target, saved, lock)
        if saved is not None:
            _check_matches(prepared, saved, dtype)
        elif state_path(target.work_dir).is_file():
            if not overwrite:
                raise ResumeError(f"an interrupted run of {target.path} is saved; {again_with('resume')} to continue "
                                  f"it, or with {setting('overwrite', True)} to start over")
            if not dry_run:
                discard_state(target.work_dir)  # a fresh run must never be mistaken later for the one it replaces
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return prepared


def _check_matches(prepared: Prepared, saved: dict, dtype: str | None) -> None:
    differ = prepared.request.differences(Request.from_dict(saved["request"]))
    model = saved["model"]
    differ += [f"model {name}" for name in ("repo", "kind") if model.get(name) != prepared.model_identity[name]]
    if dtype is not None and model.get("dtype") != dtype:
        differ.append("dtype")
    if differ:
        raise ResumeError(f"cannot resume {prepared.target.path}: these settings differ from the saved run: "
                          f"{', '.join(differ)}; repeat the original options, or start over with "
                          f"{setting('overwrite', True)}")
