"""The GPU check's scripts on the CPU: what comes back from a lent machine is small (issue 21, item 14)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# What a lent machine hands back from $OUT: at most 8 files of 16 MiB each, 64 MiB in all, 2 folders deep.
MAX_FILES, MAX_FILE, MAX_TOTAL = 8, 16 << 20, 64 << 20


def gpu_summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(work: Path, name: str, frames: int = 30) -> None:
    folder = work / name
    folder.mkdir(parents=True)
    for i in range(frames):  # as a real run leaves them: full-size PNG frames
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (544, 960, 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png")
    (folder / "settings.json").write_text(json.dumps({"run": {
        "frames_written": frames, "timings_s": {"denoise": 1.5, "decode": 0.5}, "peak_vram_gb": 12.3,
        "runtime": {"offload": "none", "quantize": "none"}}}))


def test_the_commands_part_returns_a_summary_and_small_first_frames_not_the_frames(tmp_path):
    work, out, log = tmp_path / "work", tmp_path / "out", tmp_path / "commands.log"
    for name in ("tiny-t2v", "real-t2v", "real-extend", "real-i2v"):
        fake_run(work, name, frames=3)
    log.write_text("exit 0 :: t2v\nexit 1 :: i2v broken\n")
    gpu_summary().main("commands", str(work), str(out), str(log))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["commands-real-extend.png", "commands-real-t2v.png",
                                             "commands-tiny-t2v.png", "summary-commands.json",
                                             "summary-commands.txt"]
    assert len(files) <= MAX_FILES and all(p.stat().st_size < 1 << 20 for p in files)
    assert all(p.parent == out for p in files)
    report = json.loads((out / "summary-commands.json").read_text())
    assert report["runs"]["real-i2v"]["peak_vram_gb"] == 12.3
    assert report["failed"] == ["exit 1 :: i2v broken"]
    assert "real-t2v" in (out / "summary-commands.txt").read_text()
    assert max(Image.open(out / "commands-real-t2v.png").size) == 320


@pytest.mark.slow  # the script's own interpreter start-up and imports
def test_the_check_says_what_is_missing_on_a_machine_without_cuda(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "HF_HOME_CHECK": str(tmp_path / "hf")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "commands"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "no CUDA" in done.stdout and "carry the wheels" in done.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
