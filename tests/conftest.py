"""Shared fixtures: tiny random checkpoints in a private, offline Hugging Face cache.

The environment is set before anything imports huggingface_hub, so the real Hub
resolution code reads our cache (and never the network) in-process and in
subprocesses alike.
"""

import os
import shutil
import tempfile
from pathlib import Path

_HF_HOME = Path(tempfile.mkdtemp(prefix="skyreels-test-hf-"))
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["SKYREELS_CACHE"] = str(_HF_HOME / "skyreels-cache")  # planner traces never land in the home folder

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from skyreels_cli.media.videos import iter_video_frames, probe_video  # noqa: E402
from skyreels_cli.models.tiny import save_checkpoint  # noqa: E402

# Released repo ids the tests find in the cache, by tiny kind.
HUB_REPOS = {
    "t2v": "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers",
    "i2v": "Skywork/SkyReels-V2-I2V-1.3B-540P-Diffusers",
    "df": "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
}
ALIASES = {"t2v": "t2v-14b-540p", "i2v": "i2v-1.3b-540p", "df": "df-1.3b-540p"}
# Hub repo ids outside the registry: their kind comes from model_index.json.
CUSTOM_REPOS = {"t2v": "tester/custom-t2v", "i2v": "tester/custom-i2v", "df": "tester/custom-df"}
# Small enough for a CPU: 64x64, 17 frames (5 latent frames), 4 steps.
SMALL = ["--height", "64", "--width", "64", "--frames", "17", "--steps", "4", "--device", "cpu"]


@pytest.fixture(scope="session")
def hub_models() -> dict[str, Path]:
    """Tiny checkpoints placed in the test cache under the released repo ids; returns their snapshot folders."""
    build = _HF_HOME / "build"
    snapshots = {}
    for i, (kind, repo) in enumerate(HUB_REPOS.items(), start=1):
        src = build / kind
        if not src.exists():
            save_checkpoint(kind, src)
        snapshots[kind] = place_in_hub_cache(src, repo, _HF_HOME / "hub", commit=f"{i:040x}")
        place_in_hub_cache(src, CUSTOM_REPOS[kind], _HF_HOME / "hub", commit=f"{i + 10:040x}")
    return snapshots


@pytest.fixture(scope="session")
def hf_home() -> Path:
    return _HF_HOME


@pytest.fixture
def image_file(tmp_path) -> Path:
    """A smooth landscape test image (80x48)."""
    y, x = np.mgrid[0:48, 0:80]
    rgb = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = tmp_path / "start.png"
    Image.fromarray(rgb).save(path)
    return path


def place_in_hub_cache(src: Path, repo_id: str, hub_cache: Path, commit: str = "0" * 40) -> Path:
    """Lay out `src` as the Hub cache does for `repo_id` (refs/main + snapshots/<commit>): what a download makes."""
    repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(src, snapshot, ignore=shutil.ignore_patterns("tiny.json"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """A video written by skyreels, decoded back: all its frames (T, H, W, 3) and its frame rate."""
    return np.concatenate(list(iter_video_frames(Path(path)))), probe_video(Path(path))["fps"]


def invoke(*args):
    """The CLI in-process, as a user types it (every argument turned to text)."""
    from typer.testing import CliRunner

    from skyreels_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    """The one `error: ...` line a refused command prints (exit `code`, no traceback); returns it."""
    message = result.output.strip()
    assert result.exit_code == code, message
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    return message


def frames_of(model, request) -> np.ndarray:
    """Every frame `model.stream(request)` makes, joined."""
    return np.concatenate([w.frames for w in model.stream(request)])


def mean_levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 videos, in levels of 255."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_png_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("[0-9]*.png"))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """diffusers' float output in [0, 1] to the levels we write."""
    return (np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8)


def assert_frames_match(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} levels (mean {diff.mean():.3f})"
    assert ours.std() > 1, "frames are flat: the comparison would prove nothing"
