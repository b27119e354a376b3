"""Shot lists: one continuous video whose prompt changes from shot to shot, cut at window boundaries.

A script (`extend --script film.toml`) or a prompt file (`--prompt-file story.txt`) becomes the
`shots` of one Request. The window plan is then built shot by shot: every window's new frames lie
inside one shot, so each window has exactly one prompt (its shot's), a shot of any length gets its
own windows however short, and each cut falls where the script puts it (rounded up to whole latent
frames, 4 pixel frames, and to whole causal blocks). The overlap a window carries over from the one
before is what continues the picture across a cut. A prompt file's shots have no length: each lasts
one window.

    seed = 7                                  # any option of the command, under its name
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

import inspect
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputFileError, UsageError
from ..forcing.frames import TEMPORAL, latent_frames, pixel_frames
from ..forcing.windows import TailError, Window, WindowPlan, _blocks, plan_for_length, plan_windows
from .request import Request, Shot

if TYPE_CHECKING:
    from ..forcing.engine import Conditioning

SHOT_KEYS = ("prompt", "frames", "seconds", "guidance", "negative_prompt", "image")
PATH_KEYS = ("image", "end_image", "video", "output", "script", "prompt_file")
NOT_IN_FILES = ("prompt", "shots", "script", "prompt_file", "resume", "dry_run", "from_")  # the shots', or per run


# ------------------------------------------------------------------ reading TOML with line numbers

def read_toml(path: str | Path) -> tuple[dict, str]:
    """A TOML file's data and text; a missing file or a syntax error is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path.name}: not valid TOML: {err}") from None


_HEADER = re.compile(r"^\s*\[(\[)?\s*([^\]]+?)\s*\]")


def key_line(text: str, key: str, table: str | None = None, index: int = 0) -> int | None:
    """The line (from 1) where `key` is set: at the top level, or in the `index`-th `[[table]]`.

    tomllib keeps no positions, so the text is scanned: headers open sections, keys start a line.
    Without `key`, the line of the table's header.
    """
    assign = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*[=.]""") if key else None
    section, seen = None, -1
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = header.group(2).strip("\"'")
            if section == table and header.group(1):
                seen += 1
                if key is None and seen == index:
                    return number
            continue
        here = section is None if table is None else (section == table and seen == index)
        if here and assign is not None and assign.match(line):
            return number
    return None


def file_error(path: Path, text: str, message: str, key: str | None, table: str | None = None,
               index: int = 0) -> UsageError:
    """A one-line error naming the file and, where found, the line of `key`."""
    line = key_line(text, key, table, index) if key or table else None
    if line is None and table is not None:
        line = key_line(text, None, table, index)  # the table's header, for a key that is missing
    return UsageError(f"{path.name}{f' line {line}' if line else ''}: {message}")


def check_keys(path: Path, text: str, data: dict, allowed: Collection[str], where: str,
               table: str | None = None, index: int = 0) -> None:
    """Refuse the first key not in `allowed`, naming it, its line and the keys that are."""
    for key in data:
        if key not in allowed:
            raise file_error(path, text, f"unknown key {key!r} {where}; known keys: {', '.join(sorted(allowed))}",
                             key, table, index)


def absolute_paths(settings: dict, folder: Path) -> dict:
    """Input and output paths in a file are relative to the file's folder."""
    out = dict(settings)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            keep_slash = "/" if value.endswith("/") else ""  # DIR/ means PNG frames
            out[key] = str(folder / value) + keep_slash
    return out


def merge_settings(cli: dict, defaults: dict, settings: dict) -> dict:
    """The command line's options, with the file's settings wherever an option was not given.

    "Not given" is "still at its default": every option that shapes a request defaults to None.
    """
    return {**cli, **{k: v for k, v in settings.items() if cli.get(k) == defaults.get(k)}}


@dataclass(frozen=True)
class Option:
    default: object
    types: tuple[type, ...]  # what a file may give for it; empty: not checked


def command_options(command: Callable) -> dict[str, Option]:
    """A command function's options by name: default and accepted types, read from its signature."""
    hints = typing.get_type_hints(command, include_extras=True)
    return {name: Option(p.default, _plain_types(hints.get(name)))
            for name, p in inspect.signature(command).parameters.items()}


def _plain_types(hint) -> tuple[type, ...]:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(hint) if a is not type(None))
    else:
        args = (hint,)
    if not all(a in (int, float, str, bool) for a in args):
        return ()
    return tuple(dict.fromkeys(args + ((int,) if float in args else ())))  # 5 is a fine float


def check_types(path: Path, text: str, settings: dict, options: Mapping[str, Option], where: str,
                table: str | None = None, index: int = 0) -> None:
    """Refuse a setting whose value the option cannot take (a string for --height, a number for --model...)."""
    if settings.get("lora") is not None:  # a repeatable option: text, or a list of text
        value = settings["lora"]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
            raise file_error(path, text, f"lora {where} must be text or a list of text, got {value!r}", "lora", table,
                             index)
        settings["lora"] = items
    for key, value in settings.items():
        accepted = options[key].types if key in options else ()
        if accepted and not (isinstance(value, accepted) and (bool in accepted or not isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in accepted if not (t is int and float in accepted))
            raise file_error(path, text, f"{key} {where} must be {names.replace('str', 'text')}, got {value!r}",
                             key, table, index)


# ------------------------------------------------------------------ scripts and prompt files

@dataclass(frozen=True)
class Script:
    path: Path
    settings: dict  # the global settings, by option name (paths absolute)
    shots: tuple[Shot, ...]
    image: str | None = None  # the first shot's start image


def load_script(path: str | Path, options: Mapping[str, Option] | None = None) -> Script:
    """Parse a shot list; any problem is one UsageError naming the key and its line.

    `options`: the global settings allowed (a command's, see `command_options`); default: the request's
    fields and `model`, unchecked.
    """
    path = Path(path)
    data, text = read_toml(path)
    shots = data.pop("shot", None)
    if options is None:
        options = {name: Option(None, ()) for name in [f.name for f in fields(Request)] + ["model"]}
    check_keys(path, text, data, set(options) - set(NOT_IN_FILES), "in the global settings")
    check_types(path, text, data, options, "in the global settings")
    if not isinstance(shots, list) or not shots:
        raise UsageError(f"{path.name}: no shots; add [[shot]] tables, each with a prompt and frames or seconds")
    parsed = tuple(_shot(path, text, i, shot) for i, shot in enumerate(shots))
    image = shots[0].get("image")
    if image is not None and not isinstance(image, str):
        raise file_error(path, text, "image must be a path", "image", "shot", 0)
    folder = path.resolve().parent
    settings = absolute_paths(data, folder)
    image = absolute_paths({"image": image}, folder)["image"]
    return Script(path, settings, parsed, image)


def _shot(path: Path, text: str, i: int, shot) -> Shot:
    def fail(message: str, key: str | None) -> UsageError:
        return file_error(path, text, f"shot {i + 1}: {message}", key, "shot", i)

    if not isinstance(shot, dict):
        raise fail("must be a table ([[shot]])", None)
    check_keys(path, text, shot, SHOT_KEYS, f"in shot {i + 1}", "shot", i)
    if "image" in shot and i > 0:
        raise fail("image is the start image and belongs to the first shot only", "image")
    prompt = shot.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("has no prompt", "prompt" if "prompt" in shot else None)
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
        raise fail("negative_prompt must be text", "negative_prompt")
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
        raise InputFileError(f"cannot read --prompt-file {path}: {getattr(err, 'strerror', None) or err}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"--prompt-file {path} has no prompts: write one prompt per line, one line per window")
    return tuple(Shot(prompt) for prompt in prompts)


def script_options(cli: dict, command: Callable, script: str | None, prompt_file: str | None) -> dict:
    """The options `cli` of `command` (extend) with a --script or --prompt-file folded in: flags given win
    over the file's settings, the shots give the prompts and the length."""
    if script and prompt_file:
        raise UsageError("give --script or --prompt-file, not both")
    if (cli.get("prompt") or "").strip():
        which = "--script" if script else "--prompt-file"
        raise UsageError(f"the prompts of a {which} come from the file; leave out the PROMPT argument")
    if prompt_file:
        _refuse_enhance(cli)
        return {**cli, "shots": read_prompt_file(prompt_file)}
    options = command_options(command)
    defaults = {name: option.default for name, option in options.items()}
    loaded = load_script(script, options)
    merged = merge_settings(cli, defaults, loaded.settings)
    if loaded.image and cli.get("image") == defaults.get("image"):
        merged["image"] = loaded.image
    _refuse_enhance(merged)
    return {**merged, "shots": loaded.shots}


def _refuse_enhance(options: dict) -> None:
    # --enhance rewrites the one prompt of a request; a shot list's prompts are the shots'.
    if options.get("enhance") or options.get("enhancer"):
        raise UsageError("--enhance rewrites a single prompt; with a shot list, write each shot's prompt in full")


# ------------------------------------------------------------------ shots against a resolved request

def resolve_shots(r: Request, asked: int | None) -> Request:
    """Fill in each shot's length in frames and the request's total; `asked`: the frames the user gave, if any.

    `r` has its diffusion forcing defaults filled in (window and overlap lengths, fps).
    """
    if not r.shots:
        raise UsageError("the shot list is empty; give at least one shot with a prompt")
    shots = tuple(_checked_shot(shot, i, r.fps) for i, shot in enumerate(r.shots))
    lengths = [shot.frames is None for shot in shots]
    if all(lengths):
        shots = _one_window_each(r, shots, asked)
    elif any(lengths):
        raise UsageError(f"shot {lengths.index(True) + 1} has no length; give every shot frames or seconds")
    total = sum(shot.frames for shot in shots)
    if asked is not None and asked != total:
        raise UsageError(f"--frames {asked} differs from the shots' total of {total} frames; leave --frames out")
    return replace(r, shots=shots, frames=total, seconds=None, prompt=r.prompt or shots[0].prompt)


def _checked_shot(shot: Shot, i: int, fps: float) -> Shot:
    where = f"shot {i + 1}"
    if not shot.prompt.strip():
        raise UsageError(f"{where} has no prompt")
    if shot.guidance is not None and not (math.isfinite(shot.guidance) and shot.guidance >= 0):
        raise UsageError(f"{where}: guidance must be a finite number, 0 or more, got {shot.guidance}")
    frames = shot.frames
    if frames is None and shot.seconds is not None:
        if not (math.isfinite(shot.seconds) and shot.seconds > 0):
            raise UsageError(f"{where}: seconds must be a positive number, got {shot.seconds}")
        if not math.isfinite(shot.seconds * fps):
            raise UsageError(f"{where}: seconds {shot.seconds} is too long at {fps} fps")
        frames = max(1, round(shot.seconds * fps))
    if frames is not None and frames <= 0:
        raise UsageError(f"{where}: frames must be positive, got {frames}")
    return shot._replace(frames=frames)


def _one_window_each(r: Request, shots: tuple[Shot, ...], asked: int | None) -> tuple[Shot, ...]:
    """Prompt-file shots: each lasts one window of the usual plan."""
    base, overlap, c = latent_frames(r.base_frames), latent_frames(r.overlap), r.causal_block
    start = _start_prefix(r)
    first = (base - start) - (base - start) % c
    later = (base - overlap) - (base - overlap) % c
    lengths = [_frame_at(start + first, start, bool(r.video))] + [TEMPORAL * later] * (len(shots) - 1)
    if asked is not None:
        plan = plan_for_length(asked, base_frames=r.base_frames, overlap_frames=r.overlap, causal_block=c,
                               image=bool(r.image), video=bool(r.video), end_image=bool(r.end_image))[1]
        if len(plan.windows) != len(shots):
            raise UsageError(f"--prompt-file has {len(shots)} prompts, one per window, but --frames {asked} makes "
                             f"{len(plan.windows)} windows; use --frames {sum(lengths)} or leave --frames out")
        ends = [_frame_at(w.length + _timeline_start(plan, w), start, bool(r.video)) for w in plan.windows]
        ends[-1] = asked
        lengths = [b - a for a, b in zip([0, *ends[:-1]], ends)]
    return tuple(shot._replace(frames=n) for shot, n in zip(shots, lengths))


def _timeline_start(plan: WindowPlan, window: Window) -> int:
    """The timeline latent index where `window` begins."""
    done = plan.start_prefix
    for w in plan.windows[: window.index]:
        done += w.new
    return done - window.prefix


def _start_prefix(r: Request) -> int:
    """Clean latent frames before the first new one: an input video's overlap, or a start image."""
    return latent_frames(r.overlap) if r.video else (1 if r.image else 0)


def _frame_at(latent: int, start: int, video: bool) -> int:
    """Pixel frames (of those this run makes) before timeline latent index `latent`."""
    if video:
        return TEMPORAL * (latent - start)
    return pixel_frames(latent) if latent > 0 else 0


def _latent_end(frames: int, start: int, video: bool) -> int:
    """The timeline latent index just past the first `frames` pixel frames made."""
    if video:
        return start + -(-frames // TEMPORAL)
    return (frames + 2 * TEMPORAL - 2) // TEMPORAL  # the fewest latents whose 4L-3 frames cover `frames`


# ------------------------------------------------------------------ shots to windows

@dataclass(frozen=True)
class ShotLayout:
    plan: WindowPlan
    generated: int                       # pixel frames the plan makes (the output is cut to the request's)
    ranges: tuple[tuple[int, int], ...]  # each shot's (first frame, frames) in the frames made
    window_shot: tuple[int, ...]         # the shot (from 0) each window belongs to


def shot_layout(r: Request) -> ShotLayout:
    """Windows for a resolved shot list: each window's new frames inside one shot (see the module docstring)."""
    base, overlap, c = latent_frames(r.base_frames), latent_frames(r.overlap), r.causal_block
    video, start = bool(r.video), _start_prefix(r)
    ends = _shot_ends(r, start, c)
    _check_overlap(r, ends[-1], base, overlap, c, start)
    windows: list[Window] = []
    window_shot: list[int] = []
    done = prefix = start
    for shot, end in enumerate(ends):
        while done < end:
            room = min(base - prefix, end - done)
            new = room - room % c
            if new <= 0:
                raise UsageError(f"--overlap {r.overlap} leaves no room for new frames in --base-frames "
                                 f"{r.base_frames} windows; lower --overlap")
            blocks, ready = _blocks(prefix, new, c)
            windows.append(Window(len(windows), prefix, prefix + new, blocks, ready, False))
            window_shot.append(shot)
            done += new
            prefix = overlap
    if len(windows) > 1 and windows[0].length < overlap:
        need = _frame_at(overlap, start, video)
        raise UsageError(f"shot 1 is {r.shots[0].frames} frames, shorter than the {need} frames (--overlap) the next "
                         f"window continues from; make it at least {need} frames or lower --overlap")
    windows[-1] = replace(windows[-1], end_image=bool(r.end_image))
    plan = WindowPlan(ends[-1], start, base, overlap, c, tuple(windows))
    return ShotLayout(plan, _frame_at(ends[-1], start, video), _ranges(r, ends, start, video), tuple(window_shot))


def _shot_ends(r: Request, start: int, c: int) -> list[int]:
    """Where each shot ends on the latent timeline: whole latent frames, whole causal blocks, at least one."""
    ends, asked, previous = [], 0, start
    for shot in r.shots:
        asked += shot.frames
        new = _latent_end(asked, start, bool(r.video)) - start
        end = max(start + -(-new // c) * c, previous + c)
        ends.append(end)
        previous = end
    return ends


def _check_overlap(r: Request, total: int, base: int, overlap: int, c: int, start: int) -> None:
    """The same checks of --overlap, --base-frames and --causal-block as a plan without shots."""
    try:
        plan_windows(total, base=base, overlap=overlap, causal_block=c, start_prefix=start)
    except TailError:
        pass  # the last window's length: shot windows round each shot to whole blocks instead


def _ranges(r: Request, ends: list[int], start: int, video: bool) -> tuple[tuple[int, int], ...]:
    ranges = []
    first = 0
    for i, end in enumerate(ends):
        last = min(_frame_at(end, start, video), r.frames)
        if last <= first:
            raise UsageError(f"shot {i + 1} starts after the video's end: the shots before it were rounded up to "
                             f"whole causal blocks of {r.causal_block}; lengthen it or use --causal-block 1")
        ranges.append((first, last - first))
        first = last
    return tuple(ranges)


def shot_plan(r: Request) -> tuple[int, WindowPlan]:
    """(frames made, window plan) of a resolved shot list: what `resolve.window_plan` gives for it."""
    layout = shot_layout(r)
    return layout.generated, layout.plan


# ------------------------------------------------------------------ conditioning and the record

def shot_conditioning(r: Request, encode: Callable[[str, str, float], Conditioning]) -> Callable[[int], Conditioning]:
    """Window index -> its shot's conditioning; every shot's embeddings are computed here, once, up front."""
    window_shot = shot_layout(r).window_shot
    known: dict[tuple, Conditioning] = {}
    per_shot = []
    for shot in r.shots:
        key = (shot.prompt, _or(shot.negative_prompt, r.negative_prompt), _or(shot.guidance, r.guidance))
        if key not in known:
            known[key] = encode(*key)
        per_shot.append(known[key])
    return lambda window: per_shot[window_shot[window]]


def _or(value, fallback):
    return fallback if value is None else value


def shots_record(r: Request) -> list[dict]:
    """For the sidecar: each shot's prompt, the frames made under it (counted from the first frame this run
    makes, after a continued video), the frames asked for, and the windows that used its prompt."""
    layout = shot_layout(r)
    return [{"prompt": shot.prompt, "first_frame": first, "frames": frames, "frames_asked": shot.frames,
             "guidance": _or(shot.guidance, r.guidance),
             "windows": [w for w, s in enumerate(layout.window_shot) if s == i]}
            for i, (shot, (first, frames)) in enumerate(zip(r.shots, layout.ranges))]
