"""The settings of one run: filled from the registry, validated, and recorded beside the output."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import UsageError
from .frames import check_frames, check_positive, check_size
from .registry import ModelSpec
from .windows import WindowPlan, plan_for_frames

# The official negative prompt (SkyReels-V2 / Wan2.1): artefacts to steer away from.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class RunSettings:
    """Everything that determines a run's frames (and so what --resume must match)."""

    command: str
    prompt: str
    model: str
    repo: str
    revision: str
    kind: str
    height: int
    width: int
    frames: int
    steps: int
    guidance: float
    shift: float
    fps: int
    seed: int
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    device: str = "cuda"
    dtype: str | None = None  # resolved from the device before the run
    sigma_grid: str = "official"
    image: str | None = None
    # diffusion forcing
    base_frames: int | None = None
    overlap: int | None = None
    ar_step: int = 0
    causal_block: int = 1
    addnoise: float = 0.0
    causal_attention: bool = False
    end_image: str | None = None
    video: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: dict) -> list[str]:
        """Names of the settings that differ from a recorded run (for --resume)."""
        mine = self.to_dict()
        return [f.name for f in fields(self) if f.name != "extra" and other.get(f.name) != mine[f.name]]


def draw_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def fill(spec: ModelSpec, command: str, prompt: str, options: dict) -> RunSettings:
    """Settings from the command's options, with the model's registry defaults for those left unset."""
    given = {k: v for k, v in options.items() if v is not None}
    seed = given.pop("seed", None)
    settings = RunSettings(
        command=command, prompt=prompt, model=spec.alias, repo=spec.repo, revision=spec.revision, kind=spec.kind,
        height=spec.height, width=spec.width, frames=spec.frames, steps=spec.steps, guidance=spec.guidance,
        shift=spec.shift, fps=spec.fps, seed=draw_seed() if seed is None else seed,
        base_frames=spec.frames if command == "extend" else None,
    )
    return replace(settings, **given)


def plan_run(settings: RunSettings) -> WindowPlan:
    """The window plan of a diffusion forcing run (t2v on a DF model: one window of all its frames)."""
    base = settings.base_frames or settings.frames
    return plan_for_frames(
        settings.frames, base_frames=base, overlap_frames=settings.overlap or 17,
        causal_block=settings.causal_block, image=bool(settings.image), video=bool(settings.video),
        end_image=bool(settings.end_image),
    )


def validate(settings: RunSettings) -> None:
    """Raise UsageError for settings no run can use (checked before any model is loaded)."""
    if not settings.prompt.strip() and settings.command != "i2v":
        raise UsageError('the prompt is empty; describe the video, e.g. skyreels t2v "a red fox running through snow"')
    check_size(settings.height, settings.width)
    if not (settings.command == "extend" and settings.video):
        check_frames(settings.frames)
    check_positive(settings.steps, "--steps")
    check_positive(settings.fps, "--fps")
    if settings.guidance < 0:
        raise UsageError(f"--guidance must be 0 or more, got {settings.guidance}")
    if settings.shift <= 0:
        raise UsageError(f"--shift must be positive, got {settings.shift}")
    if not 0 <= settings.seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63-1, got {settings.seed}")


def video_defaults(settings: RunSettings, options: dict) -> RunSettings:
    """Continuing a video: its size (when a multiple of 16) and frame rate unless given."""
    from pathlib import Path

    from .images import oriented_size
    from .writers import probe_video

    info = probe_video(Path(settings.video))
    height, width = settings.height, settings.width
    if options.get("height") is None and options.get("width") is None:
        if info["height"] % 16 == 0 and info["width"] % 16 == 0:
            height, width = info["height"], info["width"]
        else:
            height, width = oriented_size((info["width"], info["height"]), height, width)
    fps = settings.fps if options.get("fps") is not None else max(1, round(info["fps"]))
    if info["frames"] < (settings.overlap or 0):
        raise UsageError(
            f"--video {settings.video} has {info['frames']} frames, fewer than --overlap {settings.overlap}; "
            "give a longer video or a smaller --overlap"
        )
    return replace(settings, height=height, width=width, fps=fps)


def validate_extend(settings: RunSettings) -> None:
    """Diffusion forcing settings that cannot work, refused before any model is loaded."""
    from .images import load_image

    check_frames(settings.base_frames, "--base-frames")
    check_frames(settings.overlap, "--overlap")
    if settings.overlap >= settings.base_frames:
        raise UsageError(
            f"--overlap {settings.overlap} must be smaller than --base-frames {settings.base_frames}; "
            "17 (or 37) is recommended"
        )
    if settings.ar_step < 0:
        raise UsageError(f"--ar-step must be 0 (synchronous) or more, got {settings.ar_step}; 5 is recommended")
    if settings.causal_block < 1:
        raise UsageError(f"--causal-block must be 1 or more, got {settings.causal_block}")
    if not 0 <= settings.addnoise <= 50:
        raise UsageError(f"--addnoise must be between 0 and 50, got {settings.addnoise}; 20 is recommended")
    for option, path in (("--image", settings.image), ("--end-image", settings.end_image)):
        if path:
            load_image(path, option)
    plan_run(settings)
