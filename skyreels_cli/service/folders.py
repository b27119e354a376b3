"""A job's files in the state folder: where they are, and what a job about to run finds there.

    videos/ID/        the video (video.mp4, its sidecar video.mp4.json), and while it is being made the preview
                      (video.partial.mp4) and the library's work folder (.video.mp4.skyreels: segments, resume
                      state)
    uploads/ID/       the files it was submitted with

Before a job goes to a worker the scheduler looks at its folder (`before_run`): a video already whole was made by
a run the service died before hearing the end of (the job is completed); a resume state means an interrupted
`extend`, which continues from it; anything else an interrupted run left is emptied (a clip starts again).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from .live import STEERING


def job_folders(state_dir: Path, job_id: str) -> list[Path]:
    """Where a job's files are: its video folder and its uploads."""
    return [Path(state_dir) / "videos" / job_id, Path(state_dir) / "uploads" / job_id]


def target(job):
    """The library's output target of a `Job` (its paths; nothing created)."""
    from ..media.targets import resolve_output

    return resolve_output(job.output, prompt="", seed=0, overwrite=True, create=False)


def before_run(spec: dict) -> dict | None:
    """The job (`Job.to_dict()`) as it should run now, `resume` set if it continues an interrupted run; None when
    its video is already whole."""
    from ..core.job import Job
    from ..forcing.resume import state_path

    job = Job.from_dict(spec)
    out = target(job)
    if state_path(out.work_dir).is_file():
        return replace(job, resume=True).to_dict()
    if out.path.is_file() and out.sidecar.is_file():
        return None
    folder = out.path.parent
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.startswith(STEERING):  # a live job's prompt changes: they outlive its runs
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return replace(job, resume=False).to_dict()
