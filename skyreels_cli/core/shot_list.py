"""Shot lists: one continuous video whose prompt changes from shot to shot, read from a file.

A script (`extend --script film.toml`) gives settings, then the shots; a prompt file (`--prompt-file
story.txt`) gives one prompt per line, one window each. Either becomes the `shots` of one Request
(core/shot_plan.py then cuts the windows at the shots' boundaries).

    seed = 7                                  # any setting of extend, under its name
    negative_prompt = "..."
    [[shot]]
    prompt = "a fox wakes up in its den"
    frames = 97                               # or: seconds = 4.0
    image = "den.png"                         # the first shot only: a start image
    [[shot]]
    prompt = "the fox runs out into the snow"
    frames = 80
    guidance = 5.0                            # optional, per shot; so is negative_prompt

Paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, UsageError
from .job import Job, settings_names
from .request import Shot
from .settings_file import absolute_paths, check_keys, errors_at_lines, file_error, read_toml

SHOT_KEYS = ("prompt", "frames", "seconds", "guidance", "negative_prompt", "image")
# Settings a shot list gives for its whole video; the prompts and lengths are the shots'.
SCRIPT_SETTINGS = tuple(name for name in settings_names("extend") if name not in ("prompt", "shots", "resume",
                                                                                    "enhance"))


@dataclass(frozen=True)
class Script:
    path: Path
    settings: dict  # the settings for the whole video, by name (paths absolute; the first shot's image included)
    shots: tuple[Shot, ...]

    def job(self, **given) -> Job:
        """The `extend` job the shot list describes, with `given` settings (by name) over the file's."""
        return Job.from_settings("extend", {**self.settings, **given, "shots": self.shots})


def read_script(path: str | Path) -> Script:
    """Parse a shot list; any problem is one UsageError naming the key and its line."""
    path = Path(path)
    data, text = read_toml(path)
    shots = data.pop("shot", None)
    check_keys(path, text, data, SCRIPT_SETTINGS, "in the settings")
    if not isinstance(shots, list) or not shots:
        raise UsageError(f"{path.name}: no shots; add [[shot]] tables, each with a prompt and frames or seconds")
    parsed = tuple(_shot(path, text, i, shot) for i, shot in enumerate(shots))
    folder = path.resolve().parent
    settings = absolute_paths(data, folder)
    image = shots[0].get("image")
    if image is not None:
        if not isinstance(image, str):
            raise file_error(path, text, f"shot 1: image must be a path, got {image!r}", "image", "shot", 0)
        if "image" in settings:
            raise file_error(path, text, "the start image is given twice: in the settings and in shot 1",
                             "image", "shot", 0)
        settings["image"] = absolute_paths({"image": image}, folder)["image"]
    with errors_at_lines(path, text, "in the settings"):  # values checked as the job will hold them
        Job.from_settings("extend", {**settings, "shots": parsed})
    return Script(path, settings, parsed)


def _shot(path: Path, text: str, i: int, shot) -> Shot:
    def fail(message: str, key: str | None) -> UsageError:
        return file_error(path, text, f"shot {i + 1}: {message}", key, "shot", i)

    if not isinstance(shot, dict):
        raise fail("must be a table ([[shot]])", None)
    check_keys(path, text, shot, SHOT_KEYS, f"in shot {i + 1}", "shot", i)
    if "image" in shot and i > 0:
        raise fail("image is the start image and belongs to the first shot only", "image")
    prompt = shot.get("prompt")
    if "prompt" not in shot:
        raise fail('has no prompt; give one, e.g. prompt = "a fox runs through the snow"', None)
    if not isinstance(prompt, str):
        raise fail(f"prompt must be text, got {prompt!r}", "prompt")
    if not prompt.strip():
        raise fail("the prompt is empty; describe the shot", "prompt")
    if "frames" in shot and "seconds" in shot:
        raise fail("give frames or seconds, not both", "seconds")
    if "frames" not in shot and "seconds" not in shot:
        raise fail("has no length; give frames (e.g. 97) or seconds (e.g. 4.0)", None)
    frames, seconds = shot.get("frames"), shot.get("seconds")
    if frames is not None and (not _is_int(frames) or frames <= 0):
        raise fail(f"frames must be a positive whole number, got {frames!r}", "frames")
    if seconds is not None and (not _is_number(seconds) or not seconds > 0 or math.isinf(seconds)):
        raise fail(f"seconds must be a positive number, got {seconds!r}", "seconds")
    guidance = shot.get("guidance")
    if guidance is not None and (not _is_number(guidance) or not 0 <= guidance < math.inf):
        raise fail(f"guidance must be a number, 0 or more, got {guidance!r}", "guidance")
    negative = shot.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise fail(f"negative_prompt must be text, got {negative!r}", "negative_prompt")
    return Shot(prompt.strip(), frames, None if guidance is None else float(guidance), negative,
                None if seconds is None else float(seconds))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_prompt_file(path: str | Path) -> tuple[Shot, ...]:
    """One prompt per line, one line per window; blank lines and `#` comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read the prompt file {path}: {getattr(err, 'strerror', None) or err}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"the prompt file {path} has no prompts: write one prompt per line, one line per window")
    return tuple(Shot(prompt) for prompt in prompts)
