"""A job admitted to the queue: checked by the library as a whole, its output put in its own folder under its id,
its seed drawn; what the queue records (`NewJob`). The HTTP API admits submissions, `skyreels batch --ray` the
jobs of a file.

Every check is the library's (`sk.check`: model, sizes, lengths, inputs, memory plan), spelled as JSON fields; over
`gpus` workers also the split of the tokens and the layout. Where the service's GPUs are on other machines (a Ray
cluster whose head has none), what needs a GPU here is left to the workers; the rest is checked here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..core.job import Job
from ..errors import DeviceError, SkyreelsError, http_spelling
from .fields import HttpError, Offer, as_http
from .folders import tag_names
from .live import live_bounded
from .store import NewJob


def admit(job: Job, job_id: str, files_dir: Path, offer: Offer, capacity: dict[str, int],
          uploads: dict[str, Path] | None = None, *, gpus: int = 1, priority: int = 0,
          output_name: str = "video.mp4") -> NewJob:
    """`job` (its inputs already among the service's uploads) as the queue records it; a refusal is an
    `HttpError` naming the field. `capacity`: workers per machine (`Fleet.capacity`). `output_name`: what the job
    makes in its folder (a batch's PNG folder output: "frames")."""
    from ..core.resolve import window_plan

    uploads = uploads or {}
    _check_gpus(gpus, capacity)
    job = live_bounded(job, offer)  # a live job's length is its most: bounded by --max-live-seconds, not below
    _check_bounds(job, offer)  # before the library lists a window plan of what may be millions of frames
    folder = "/" if output_name.endswith("/") else ""  # "frames/": a folder of PNG frames
    job = replace(job, output=str(Path(files_dir) / "videos" / job_id / output_name) + folder)
    if offer.for_clients:  # a batch file's own outputs (batch --ray) keep the tag the library writes
        job = replace(job, tag_names=tag_names(job, files_dir, offer.loras))
    # ulysses and ring mean something only over several processes: checked with them below
    alone = replace(job, load=replace(job.load, ulysses=None, ring=None))
    with http_spelling():
        try:
            checked = _check(alone, offer)
            if gpus > 1:
                _check_layout(checked, job.load, gpus)
        except SkyreelsError as err:
            raise as_http(err, uploads) from None
    r = checked.job.request
    stored = replace(job, request=replace(job.request, seed=r.seed))
    windows = len(window_plan(r).windows) if checked.spec.forcing else 1
    return NewJob(stored.to_dict(), job.command, checked.spec.alias, r.frames, r.width, r.height, r.fps, r.seed,
                  windows, priority, gpus)


def _check(job: Job, offer: Offer):
    """`sk.check(job)`, or where the workers' GPUs are elsewhere, everything it checks that needs none."""
    from .. import check
    from ..core.prepare import prepare
    from ..core.runner import Checked
    from ..models.naming import resolve_model

    try:
        return check(job)
    except DeviceError as err:
        if err.field is not None:  # a setting this service's device cannot honour (attention): the setting's fault
            raise
        spec = resolve_model(job.model, job.command)
        if not offer.gpus:
            raise HttpError(400, f"this service runs on the CPU, where {spec.alias} would take days; use a tiny "
                                 "model (e.g. \"model\": \"tiny\"), or a service on a machine with a GPU",
                            "model") from None
        if not offer.gpus_elsewhere:
            raise
        prepared = prepare(spec, job.request, job.output, overwrite=job.overwrite, resume=job.resume, dry_run=True)
        return Checked(replace(job, request=prepared.request), spec, prepared, None, "", "", None)


def _check_bounds(job: Job, offer: Offer) -> None:
    """What one job may ask of this service: its length (`serve --max-frames/--max-seconds`), its frame size (16
    times the model's own area: 4096x4096 is no size for a tiny model), and an enhancer only where one is here."""
    from ..core.enhance import enhancer_folder, enhancer_name
    from ..models.naming import resolve_model

    r = job.request
    with http_spelling():
        try:
            spec = resolve_model(job.model, job.command)
        except SkyreelsError as err:
            raise as_http(err) from None
    fps = r.fps if r.fps is not None and r.fps > 0 else spec.fps
    if r.live:  # it runs until stopped: its length is at most, bounded by live_bounded
        pass
    elif r.seconds is not None and r.seconds > offer.max_seconds:
        raise HttpError(413, f'"seconds": {r.seconds:g} is longer than this service makes in one job '
                             f"({offer.max_seconds:g} s; serve --max-seconds)", "seconds")
    shots = sum((s.frames or (s.seconds or 0) * fps) for s in r.shots or ())
    frames = max(r.frames or 0, (r.seconds or 0) * fps, shots)
    if frames > offer.max_frames and not r.live:
        name = "frames" if r.frames is not None else "seconds" if r.seconds is not None else "shots"
        raise HttpError(413, f"{frames:.0f} frames is more than this service makes in one job ({offer.max_frames}; "
                             "serve --max-frames)", name)
    area = (r.width or spec.width) * (r.height or spec.height)
    if area > 16 * spec.width * spec.height:
        name = "width" if r.width is not None else "height"
        raise HttpError(400, f"{r.width or spec.width}x{r.height or spec.height} is beyond what {spec.alias} makes "
                             f"(at most 16 times its {spec.width}x{spec.height} in area)", name)
    if job.enhance is not None:
        try:
            enhancer_folder(enhancer_name(job.enhance), download=False)
        except SkyreelsError:
            raise HttpError(400, "this service has no prompt enhancer on its disk (it fetches nothing for a job); "
                                 "drop \"enhance\", or ask its operator to run `skyreels download` for one",
                            "enhance") from None


def _check_gpus(gpus: int, capacity: dict[str, int]) -> None:
    """A job's GPUs are workers of one machine: no more than the service has there."""
    most = max(capacity.values(), default=0)
    if gpus > 1 and most == 0:  # no workers at all (--workers 0): "ask for 0 or fewer" would be no answer
        raise HttpError(400, f'"gpus": {gpus}: this service runs no workers now, none on several GPUs; ask for "gpus": 1',
                        "gpus")
    if gpus > max(most, 1):
        raise HttpError(400, f'"gpus": {gpus} is more than this service has on one machine ({most} worker'
                             f'{"s" if most != 1 else ""}, one GPU each); ask for {most} or fewer', "gpus")


def _check_layout(checked, load, gpus: int) -> None:
    """Over `gpus` processes: every call's tokens must split evenly, and the layout asked for (or the default one)
    must suit the model's attention heads (read from its config when it is on this machine)."""
    from ..core.resolve import check_split
    from ..models.hub import cached_snapshot
    from ..models.loading import DTYPES
    from ..runtime.attention import pick_backend, planned_layout
    from ..runtime.parallel import choose_layout

    try:
        check_split(checked.job.request, checked.spec, gpus)
    except SkyreelsError as err:
        raise HttpError(400, f'"gpus": {gpus}: {err}', "gpus") from None
    folder = cached_snapshot(checked.spec)
    config = folder / "transformer" / "config.json" if folder is not None else None
    kind = planned_layout(gpus, load.ring)
    if config is not None and config.is_file():
        try:
            kind = choose_layout(json.loads(config.read_text())["num_attention_heads"], gpus, load.ulysses,
                                 load.ring).kind
        except SkyreelsError as err:
            raise HttpError(400, str(err), "ulysses" if load.ulysses is not None else "ring") from None
    if checked.device is not None:  # diffusers splits only some kernels over processes
        try:
            pick_backend(load.attention, checked.device, DTYPES[checked.dtype], layout=kind)
        except SkyreelsError as err:
            raise HttpError(400, str(err), "attention") from None
