"""Nothing outside the tool's own output is written, replaced or deleted unasked; one run per output."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ALIASES, invoke, read_png_frames, read_video

RUN = ["-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64", "--steps", "2", "-q"]
T2V = ["t2v", "a red fox", *RUN, "--frames", "9", "--seed", "1"]
EXTEND = ["extend", "a red fox", *RUN, "--frames", "45", "--base-frames", "17", "--seed", "1"]


def refused(result, *words):
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_input_image_inside_the_output_folder_is_refused(hub_models, tmp_path):
    frames = tmp_path / "fr"
    assert invoke(*T2V, "-o", f"{frames}/").exit_code == 0
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        result = invoke("i2v", frames / "000003.png", "a cat", "-m", ALIASES["i2v"], "--device", "cpu",
                        "-o", f"{frames}/", *extra)
        refused(result, "000003.png", "inside the output")
    assert snapshot(tmp_path) == before


def test_a_folder_of_other_files_is_never_written_into(hub_models, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        refused(invoke(*T2V, "-o", tmp_path / "mine", *extra), "did not write")
    assert snapshot(tmp_path) == {Path("mine", "notes.txt"): b"mine"}


def test_a_partial_file_the_tool_did_not_make_is_kept(hub_models, tmp_path):
    (tmp_path / "clip.partial.mp4").write_bytes(b"the user's own file")
    refused(invoke(*T2V, "-o", tmp_path / "clip.mp4"), "clip.partial.mp4", "not made by skyreels")
    assert (tmp_path / "clip.partial.mp4").read_bytes() == b"the user's own file"
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("output,words", [("", ["-o is empty"]), ("{d}/folder.mp4", ["is a folder"]),
                                          ("{d}/" + "x" * 300 + ".mp4", ["304 bytes", "255"])])
def test_odd_output_values_are_clear_errors(hub_models, tmp_path, output, words):
    (tmp_path / "folder.mp4").mkdir()
    refused(invoke(*T2V, "-o", output.format(d=tmp_path)), *words)
    assert list((tmp_path / "folder.mp4").iterdir()) == []


def killed(args, output, fault):
    env = {**os.environ, "SKYREELS_FAULT": fault}
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *map(str, args), "-o", str(output)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr


@pytest.mark.slow
def test_an_interrupted_run_is_neither_discarded_nor_silently_restarted(hub_models, tmp_path):
    out = tmp_path / "long.mp4"
    killed(EXTEND, out, "window_saved:2")
    state = tmp_path / ".long.mp4.skyreels" / "state.pt"
    saved = state.read_bytes()
    refused(invoke(*EXTEND, "-o", out), "interrupted run", "--resume", "--overwrite")
    assert state.read_bytes() == saved
    assert invoke(*EXTEND, "-o", out, "--resume").exit_code == 0
    refused(invoke(*EXTEND, "-o", out, "--resume"), "is finished")


@pytest.mark.parametrize("suffix", [".mp4", "/"])
@pytest.mark.slow
def test_overwrite_killed_midway_keeps_the_old_output(hub_models, tmp_path, suffix):
    out = f"{tmp_path / 'video'}{suffix}"
    assert invoke(*EXTEND, "-o", out).exit_code == 0
    before = snapshot(tmp_path)
    killed([*EXTEND[:-1], "2", "--overwrite"], out, "window_saved:2")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "the finished output changed"
    assert invoke(*EXTEND[:-1], "2", "-o", out, "--overwrite").exit_code == 0
    finished = snapshot(tmp_path)
    assert set(finished) == set(before) and finished != before
    if suffix == "/":
        assert read_png_frames(tmp_path / "video").shape[0] == 45


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of video.mp4 until its stdin closes (or it is killed)."""
    code = ("import sys; from pathlib import Path; from skyreels_cli.media.lock import OutputLock; "
            f"OutputLock(Path({str(tmp_path / '.video.mp4.skyreels.lock')!r}), Path('video.mp4')).acquire(); "
            "print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_run_at_the_same_output_is_refused_naming_the_first(hub_models, tmp_path, holder):
    refused(invoke(*T2V, "-o", tmp_path / "video.mp4"), "another skyreels run", f"pid {holder.pid}")
    assert not (tmp_path / "video.mp4").exists()
    holder.stdin.close()
    holder.wait()
    assert invoke(*T2V, "-o", tmp_path / "video.mp4").exit_code == 0


def test_a_stale_lock_of_a_killed_run_is_taken_over(hub_models, tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".video.mp4.skyreels.lock").exists()
    result = invoke(*T2V, "-o", tmp_path / "video.mp4")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".video.mp4.skyreels.lock").exists()
    assert np.asarray(read_video_frames(tmp_path / "video.mp4")).shape[0] == 9


def read_video_frames(path):

    return read_video(path)[0]
