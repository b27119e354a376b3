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

import re
import shutil
from dataclasses import replace
from pathlib import Path

from .live import STEERING

UPLOAD_PATH = re.compile(r"\S*/uploads/video_[0-9a-f]{24}/(\w+)\S*")


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


def public_text(text: str, files_dir: Path) -> str:
    """A message as a client may read it: an upload's server path is its field, a job's output its URL, the
    service's folder unnamed."""
    text = UPLOAD_PATH.sub(r"\1", text)
    text = re.sub(re.escape(str(files_dir)) + r"/videos/(video_[0-9a-f]{24})/[^\s:;,'\"]*", r"/v1/videos/\1/content", text)
    return text.replace(str(files_dir), "(the service's folder)")


def tag_names(job, files_dir: Path, loras: dict[str, str]) -> dict[str, str]:
    """What a job's video tag says in place of the server's text (`Job.tag_names`): each upload its field, each
    LoRA of the service its name (`loras`: name -> FILE[:SCALE]), the service's folder unnamed. The library writes
    the tag so, the preview's as the finished video's: nothing is rewritten after it is made."""
    from ..errors import HTTP_FIELDS

    uploads = Path(files_dir) / "uploads"
    names = {str(Path(files_dir)): "(the service's folder)"}
    for name, http in HTTP_FIELDS.items():
        value = getattr(job.request, name)
        if value and Path(value).is_relative_to(uploads):
            names[str(value)] = http
    for name, spec in loras.items():
        file = spec.rsplit(":", 1)[0] if ":" in Path(spec).name else spec
        names[str(Path(file).expanduser().resolve())] = name
    return names
