"""A request resolved against a model: its defaults filled in, then every setting checked.

All defaulting and validation happens here, before any model is loaded, the same
for the CLI and for Python callers.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError, on_command_line, setting
from ..forcing.frames import TEMPORAL, check_frames, check_positive, check_size, latent_frames, pixel_frames
from ..forcing.schedule import GRIDS, SAMPLERS
from ..forcing.windows import WindowPlan, distinct_windows, live_plan, plan_for_length
from ..media.colour import check_mode
from ..media.images import load_image, oriented_size
from ..models.accelerators import accelerate, check_steps, lora_bytes
from ..models.architectures import ROPE_POSITIONS
from ..models.registry import ModelSpec
from ..runtime.plan import Shape, native_shape
from .request import Request
from .shot_plan import resolve_shots, shot_plan
from .sizes import pick_size

# The official negative prompt (SkyReels-V2 / Wan2.1): artefacts to steer away from.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
FORCING_FIELDS = ("end_image", "video", "base_frames", "overlap", "ar_step", "causal_block", "addnoise",
                  "causal_attention", "cache", "shots", "color_match", "live")
# Official recommendations for diffusion forcing (the SkyReels-V2 README).
OVERLAP_LATENTS = 5  # 17 frames
ADDNOISE = 20.0
# The transformer's rotary position table (ROPE_POSITIONS per axis): latent frames in one window, and
# height and width in 16-pixel patches.
MAX_WINDOW_FRAMES = pixel_frames(ROPE_POSITIONS - 1)  # one position is kept for an end image
MAX_SIDE = 16 * ROPE_POSITIONS
MAX_STEPS = 1000  # the scheduler's training timesteps
MAX_FRAMES = 24 * 60 * 60 * 24  # a day of video at 24 fps
MAX_FPS = 240
MIN_FPS = 1  # below, a second of video is not one frame (fps 1e-9 made `seconds` read 1.7e10)


def draw_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def resolve(request: Request, spec: ModelSpec) -> Request:
    """`request` with the model's defaults for every unset field, validated; UsageError if it cannot run."""
    _check_fields_for_kind(request, spec)
    r = request
    height, width, fps = r.height, r.width, r.fps
    if r.video:
        height, width, fps = _video_defaults(r, spec)
    else:
        # The start image's aspect is the default; the model's size fills in what is still unset.
        image = load_image(r.image, _image_option(spec)).size if r.image and (height is None or width is None) else None
        height, width = pick_size(height, width, aspect=r.aspect, resolution=r.resolution,
                                  native=(spec.height, spec.width), source=image)
    filled = replace(
        r,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if r.negative_prompt is None else r.negative_prompt,
        height=spec.height if height is None else height,
        width=spec.width if width is None else width,
        frames=_frames(r, spec, _default(fps, spec.fps)),
        steps=check_steps(spec, _steps(r, spec)),
        sampler=_default(r.sampler, spec.sampler),
        sigmas=_default(r.sigmas, None if r.steps is not None and r.steps != len(spec.sigmas or ()) else spec.sigmas),
        guidance=_default(r.guidance, spec.guidance),
        shift=_default(r.shift, spec.shift),
        fps=_default(fps, spec.fps),
        seed=draw_seed() if r.seed is None else r.seed,
        sigma_grid=_default(r.sigma_grid, "official"),
        aspect=None, resolution=None,  # turned into height and width above: those are what replay and resume use
    )
    if spec.forcing:
        filled = _forcing_defaults(filled, spec)
    if filled.live:  # the most frames, in whole windows; none given: a day of video (MAX_FRAMES)
        filled = _live_length(filled, r.frames is not None or r.seconds is not None)
    if filled.shots is not None:  # the length is the shots' total (core/shot_plan.py)
        filled = resolve_shots(filled, filled.frames if r.frames is not None or r.seconds is not None else None)
    validate(filled, spec)
    return filled


def accelerated(spec: ModelSpec, accelerator: str | None, request: Request | None = None):
    """`accelerate` for the step count `request` asks for (as many as its noise levels, else its steps; None: the
    accelerator's own): the strength and noise levels follow the steps."""
    steps = None if request is None else len(request.sigmas) if request.sigmas else request.steps
    return accelerate(spec, accelerator, steps)


def _default(value, fallback):
    return fallback if value is None else value


def _steps(r: Request, spec: ModelSpec) -> int:
    """The step count: as many as the noise levels given; else `--steps`, else the model's (an accelerator's)."""
    if r.sigmas is not None:
        check_sigmas(r.sigmas)
        if r.steps is not None and r.steps != len(r.sigmas):
            raise UsageError(f"{setting('steps', r.steps)} disagrees with the {len(r.sigmas)} noise levels of "
                             f"{setting('sigmas')} (one step each); leave out {setting('steps')}", field="steps")
        return len(r.sigmas)
    return _default(r.steps, spec.steps)


def _frames(r: Request, spec: ModelSpec, fps: float) -> int:
    if r.seconds is None:
        return _default(r.frames, (spec.frames - 1) if r.video else spec.frames)
    if not math.isfinite(r.seconds) or r.seconds <= 0:
        raise UsageError(f"{setting('seconds', r.seconds)} must be a positive number", field="seconds")
    check_positive(fps, "fps")
    if r.seconds * fps > MAX_FRAMES:
        raise UsageError(f"{setting('seconds', r.seconds)} is more than {MAX_FRAMES} frames (a day at 24 fps); "
                         f"the longest is {MAX_FRAMES / fps:.0f} s at {fps} fps", field="seconds")
    frames = max(1, round(r.seconds * fps))
    if r.frames is not None and r.frames != frames:
        raise UsageError(f"{setting('frames', r.frames)} and {setting('seconds', r.seconds)} disagree at {fps} fps; "
                         "give one of them", field="seconds")
    return frames


def _live_length(r: Request, asked: bool) -> Request:
    """A live request's most frames: the whole windows that fit in the frames asked for (at least one window)."""
    if r.end_image:
        raise UsageError(f"a live video has no end, so {setting('end_image')} cannot be used with {setting('live', True)}",
                         field="end_image")
    if r.shots:
        raise UsageError(f"a live video's prompts come while it runs (sk.LivePrompts, or lines on standard input); "
                         f"leave out the shot list or {setting('live', True)}", field="shots")
    most = min(r.frames, MAX_FRAMES) if asked else MAX_FRAMES
    return replace(r, frames=_forcing_length(replace(r, frames=most))[0], seconds=None)


def _image_option(spec: ModelSpec) -> str:
    """How the start image was given: i2v's IMAGE argument on the command line, else the image setting."""
    return "IMAGE" if on_command_line() and not spec.forcing else setting("image")


def _check_fields_for_kind(r: Request, spec: ModelSpec) -> None:
    if spec.kind == "i2v" and not r.image:
        raise UsageError(f"model {spec.alias} animates an image: give one (skyreels i2v IMAGE PROMPT, or image=)",
                         field="image")
    if spec.kind == "t2v" and r.image:
        raise UsageError(f"model {spec.alias} is text to video and takes no image; use an i2v or df model",
                         field="image")
    if not spec.forcing:
        given = [name for name in FORCING_FIELDS if getattr(r, name) is not None]
        if given:
            raise UsageError(
                f"{given[0]} applies to diffusion forcing models only, and {spec.alias} is a {spec.kind} model; "
                "use skyreels extend with a df model", field=given[0]
            )
    if r.image and r.video:
        raise UsageError(f"{setting('image')} and {setting('video')} cannot be used together: a continued video "
                         "already has its start", field="video")


def _video_defaults(r: Request, spec: ModelSpec) -> tuple[int, int, float]:
    """Continuing a video: its size (when a multiple of 16) and frame rate unless given; a warning says when its
    frames will be rescaled to another size."""
    from ..errors import warn
    from ..media.videos import probe_video
    from .sizes import round16

    info = probe_video(Path(r.video), setting("video"))
    height, width = r.height, r.width
    if r.aspect or r.resolution:
        height, width = pick_size(height, width, aspect=r.aspect, resolution=r.resolution,
                                  native=(spec.height, spec.width), source=(info["width"], info["height"]))
    elif height is None and width is None:
        if info["height"] % 16 == 0 and info["width"] % 16 == 0:
            height, width = info["height"], info["width"]
        else:
            height, width = oriented_size((info["width"], info["height"]), spec.height, spec.width)
    fps = r.fps if r.fps is not None else round(info["fps"], 3)  # kept, not retimed
    overlap = r.overlap if r.overlap is not None else pixel_frames(OVERLAP_LATENTS)
    if info["frames"] < overlap:
        raise UsageError(
            f"{setting('video', r.video)} has {info['frames']} frames, fewer than {setting('overlap', overlap)}; "
            f"give a longer video or a smaller {setting('overlap')}"
        )
    height, width = _default(height, spec.height), _default(width, spec.width)
    video_w, video_h = info["width"], info["height"]
    if (video_w, video_h) != (width, height):
        near = (round16(video_w), round16(video_h))
        keep = "keep its size" if near == (video_w, video_h) else "stay as near its size as multiples of 16 allow"
        advice = "" if near == (width, height) else f"; give {setting('width', near[0])} {setting('height', near[1])} to {keep}"
        warn(f"{setting('video', r.video)} is {video_w}x{video_h}, the output {width}x{height}: its frames are rescaled and "
             f"centre-cropped from {video_w}x{video_h} to {width}x{height} (their copy at the start of the output "
             f"too){advice}")
    return height, width, fps


def _forcing_defaults(r: Request, spec: ModelSpec) -> Request:
    base = _default(r.base_frames, spec.base_frames)
    block = _default(r.causal_block, 1)
    overlap = r.overlap
    if overlap is None:
        # The recommended 17 frames, or less where the window is short (the tiny models' is 17).
        window = latent_frames(base) if base > 0 else 1
        latents = min(OVERLAP_LATENTS, max(1, (window - 1) // 2))
        if block > 1:
            latents = max(block, latents // block * block)
        overlap = pixel_frames(latents)
    return replace(
        r, base_frames=base, overlap=overlap, causal_block=block, ar_step=_default(r.ar_step, 0),
        addnoise=_default(r.addnoise, ADDNOISE), causal_attention=_default(r.causal_attention, False),
        cache=_default(r.cache, 0.0), color_match=_default(r.color_match, "off"),
    )


def validate(r: Request, spec: ModelSpec) -> None:
    """Raise UsageError for a resolved request no run can use."""
    if not r.prompt.strip() and spec.kind != "i2v":
        raise UsageError('the prompt is empty; describe the video, e.g. "a red fox running through snow"',
                         field="prompt")
    check_size(r.height, r.width)
    for name, value in (("height", r.height), ("width", r.width)):
        if value > MAX_SIDE:
            raise UsageError(f"{setting(name, value)} is beyond the model's position table; the largest is {MAX_SIDE}",
                             field=name)
    check_positive(r.frames, "frames")
    if r.frames > MAX_FRAMES:
        raise UsageError(f"{setting('frames', r.frames)} is more than a day of video at 24 fps; the most is "
                         f"{MAX_FRAMES}", field="frames")
    check_positive(r.steps, "steps")
    check_positive(r.fps, "fps")
    if r.steps > MAX_STEPS:
        raise UsageError(f"{setting('steps', r.steps)} is more than the scheduler's {MAX_STEPS} timesteps; 30 to 50 "
                         "is usual", field="steps")
    if r.fps < MIN_FPS:
        raise UsageError(f"{setting('fps', r.fps)} is less than {MIN_FPS} frame a second; the models were trained at "
                         "24 (or 16)", field="fps")
    if r.fps > MAX_FPS:
        raise UsageError(f"{setting('fps', r.fps)} is more than {MAX_FPS}; the models were trained at 24 (or 16)",
                         field="fps")
    if not spec.forcing and generated_frames(r, spec) > MAX_WINDOW_FRAMES:
        raise UsageError(f"{setting('frames', r.frames)} is beyond the model's position table; the most in one clip is "
                         f"{MAX_WINDOW_FRAMES}: use a df model with skyreels extend for longer videos", field="frames")
    if not math.isfinite(r.guidance) or r.guidance < 0:
        raise UsageError(f"{setting('guidance', r.guidance)} must be a finite number, 0 or more", field="guidance")
    if not math.isfinite(r.shift) or r.shift <= 0:
        raise UsageError(f"{setting('shift', r.shift)} must be a positive finite number", field="shift")
    if not 0 <= r.seed < 2**63:
        raise UsageError(f"{setting('seed', r.seed)} must be between 0 and 2**63-1", field="seed")
    if r.sigma_grid not in GRIDS:
        raise UsageError(f"{setting('sigma_grid', r.sigma_grid, quoted=True)} is not one of {', '.join(GRIDS)}",
                         field="sigma_grid")
    if r.sampler not in SAMPLERS:
        raise UsageError(f"{setting('sampler', r.sampler, quoted=True)} is not one of {', '.join(SAMPLERS)}",
                         field="sampler")
    if r.image:
        load_image(r.image, _image_option(spec))
    if spec.forcing:
        _validate_forcing(r)


def check_sigmas(sigmas: tuple[float, ...]) -> None:
    """Noise levels a sampler can start its steps from: at least one, each in (0, 1], strictly decreasing."""
    example = f"e.g. {setting('sigmas', '1.0,0.9375,0.8333,0.625')}"
    if not sigmas:
        raise UsageError(f"{setting('sigmas')} is empty; give the noise level each step starts from, {example}",
                         field="sigmas")
    wrong = [s for s in sigmas if not (math.isfinite(s) and 0 < s <= 1)]
    if wrong:
        raise UsageError(f"{setting('sigmas')}: {wrong[0]:g} is not in (0, 1]; noise levels run from 1 (pure noise) "
                         f"down towards 0, {example}", field="sigmas")
    for a, b in zip(sigmas, sigmas[1:]):
        if b >= a:
            raise UsageError(f"{setting('sigmas')} must decrease step by step ({a:g} then {b:g}); {example}",
                             field="sigmas")


def _validate_forcing(r: Request) -> None:
    check_frames(r.base_frames, "base_frames")
    check_frames(r.overlap, "overlap")
    if r.base_frames > MAX_WINDOW_FRAMES:
        raise UsageError(f"{setting('base_frames', r.base_frames)} is beyond the model's position table; "
                         f"the largest is {MAX_WINDOW_FRAMES}", field="base_frames")
    if r.ar_step < 0:
        raise UsageError(f"{setting('ar_step', r.ar_step)} must be 0 (synchronous) or more; 5 is recommended",
                         field="ar_step")
    if r.causal_block < 1:
        raise UsageError(f"{setting('causal_block', r.causal_block)} must be 1 or more", field="causal_block")
    if not math.isfinite(r.addnoise) or not 0 <= r.addnoise <= 50:
        raise UsageError(f"{setting('addnoise', r.addnoise)} must be between 0 and 50; 20 is recommended",
                         field="addnoise")
    if not math.isfinite(r.cache) or not 0 <= r.cache <= 1:
        raise UsageError(f"{setting('cache', r.cache)} must be between 0 (off) and 1; 0.02 to 0.05 skips a third to a half "
                         "of the model calls", field="cache")
    check_mode(r.color_match)
    if r.end_image:
        load_image(r.end_image, setting("end_image"))
    window_plan(r)


def window_plan(r: Request) -> WindowPlan:
    """The window plan of a resolved diffusion forcing request."""
    return _forcing_length(r)[1]


def _forcing_length(r: Request) -> tuple[int, WindowPlan]:
    if r.live:  # windows planned as they are reached, up to r.frames
        return live_plan(r.frames, base_frames=r.base_frames, overlap_frames=r.overlap, causal_block=r.causal_block,
                         image=bool(r.image), video=bool(r.video))
    if r.shots:
        return shot_plan(r)  # windows cut at the shots' boundaries
    return plan_for_length(
        r.frames, base_frames=r.base_frames, overlap_frames=r.overlap, causal_block=r.causal_block,
        image=bool(r.image), video=bool(r.video), end_image=bool(r.end_image),
    )


def generated_frames(r: Request, spec: ModelSpec) -> int:
    """How many frames the model makes for `r.frames`: whole latent frames (and causal blocks), at or
    above it; the output is cut to exactly `r.frames`."""
    if spec.forcing:
        return _forcing_length(r)[0]
    return pixel_frames(latent_frames(r.frames + TEMPORAL - 1)) if r.frames > 1 else 1


def check_split(r: Request, spec: ModelSpec, processes: int) -> None:
    """Context parallelism splits each transformer call's tokens evenly over the processes: every window's
    (end image included) or the clip's must divide. Refused before anything loads, with what fits."""
    per_frame = (r.height // 16) * (r.width // 16)
    if spec.forcing:
        lengths = {w.length + w.end_image for w in distinct_windows(window_plan(r))}
    else:
        lengths = {latent_frames(generated_frames(r, spec))}
    if all(per_frame * length % processes == 0 for length in lengths):
        return
    fits = [str(n) for n in range(2, 9) if all(per_frame * length % n == 0 for length in lengths)]
    counts = f"{', '.join(fits[:-1])} or {fits[-1]}" if len(fits) > 1 else (fits[0] if fits else "")
    frames = " and ".join(str(n) for n in sorted(lengths))
    raise UsageError(f"{r.width}x{r.height} gives {per_frame} tokens a latent frame and calls of {frames} latent "
                     f"frames, which do not split evenly over {processes} processes: "
                     + (f"use {counts} processes, or " if counts else "use ")
                     + f"a size whose (width/16) x (height/16) divides by {processes}")


def planned_shape(spec: ModelSpec, request: Request | None, adapter_bytes: int = 0) -> Shape:
    """What a load plans for: `run_shape` of `request` (None: the checkpoint's native shape), with `adapter_bytes`
    of the caller's own LoRAs beside the accelerator's (which the shape counts already)."""
    shape = native_shape(spec) if request is None else run_shape(spec, request)
    return replace(shape, adapter_bytes=shape.adapter_bytes + adapter_bytes)


def run_shape(spec: ModelSpec, request: Request) -> Shape:
    """What one run of `request` puts through the model (the memory planner's input), by the rules above.

    An unresolved request is resolved first (an I2V request without its image as T2V: the size rules
    are the same, and a plan needs no image); the largest window counts, with its end image."""
    if request.image is None and spec.kind == "i2v":
        spec = replace(spec, kind="t2v")
    r = resolve(replace(request, prompt=request.prompt or "plan", seed=0 if request.seed is None else request.seed),
                spec)
    if spec.forcing:
        windows = distinct_windows(window_plan(r))
        length = max(w.length for w in windows)
        end_image = spec.kind == "flf2v" or any(w.end_image for w in windows)
        return Shape(r.height, r.width, length + end_image, pixel_frames(length), 0, True, r.guidance > 1,
                     lora_bytes(spec))
    made = generated_frames(r, spec)
    return Shape(r.height, r.width, latent_frames(made), made, made if spec.kind == "i2v" else 0, False,
                 r.guidance > 1, lora_bytes(spec))
