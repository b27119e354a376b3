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

import json
import re
import shutil
import subprocess
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
    """A message as a client may read it: an upload's server path is its field, the service's folder unnamed."""
    text = UPLOAD_PATH.sub(r"\1", text)
    return text.replace(str(files_dir), "(the service's folder)")


def public_video(path: Path) -> None:
    """The finished MP4's settings tag without the server's paths: each input file is named by its upload field,
    each LoRA's file left out (a copy of the streams, the frames untouched; the sidecar keeps the paths)."""
    from ..errors import HTTP_FIELDS
    from ..media.ffmpeg import ffmpeg
    from ..media.videos import read_comment

    comment = read_comment(path)
    try:
        data = json.loads(comment) if comment else None
    except ValueError:
        return
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        return
    for name, http in HTTP_FIELDS.items():
        if data["request"].get(name):
            data["request"][name] = http
    for lora in data.get("model", {}).get("loras", []) if isinstance(data.get("model"), dict) else []:
        if isinstance(lora, dict) and "path" in lora:
            lora["path"] = Path(str(lora["path"])).name
    text = json.dumps(data)
    if text == comment:
        return
    partial = path.with_name(path.name + ".public.mp4")
    subprocess.run([ffmpeg().get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(path), "-map", "0", "-c", "copy",
                    "-map_metadata", "0", "-metadata", f"comment={text}", "-movflags", "+faststart", "-f", "mp4",
                    str(partial)],
                   check=True, capture_output=True)
    partial.replace(path)
