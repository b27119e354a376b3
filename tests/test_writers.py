import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyreels_cli.errors import InputFileError, OutputError, UsageError
from skyreels_cli.media.files import write_json_atomic
from skyreels_cli.media.sinks import FrameSink
from skyreels_cli.media.targets import default_output_name, resolve_output
from skyreels_cli.media.videos import probe_video, read_last_frames

from .conftest import read_video

H, W, FPS = 32, 48, 8
WINDOW = 6
NOW = datetime(2025, 1, 2, 3, 4, 5)
META = {"prompt": "a fox = b; #c \\ d", "seed": 7}


def gradient(start: int, count: int) -> np.ndarray:
    """Smooth moving gradients, which H.264 at CRF 17 reproduces within a few levels."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = [np.stack([40 + x * 2 + t, 40 + y * 3 + t, 150 + x + y - t], axis=-1) for t in range(start, start + count)]
    return np.stack(frames).astype(np.uint8)


def windows(n: int) -> list[np.ndarray]:
    return [gradient(i * WINDOW, WINDOW) for i in range(n)]


def target(tmp_path: Path, name: str = "out.mp4", **kw):
    kw.setdefault("overwrite", False)
    trailing = "/" if name.endswith("/") else ""  # Path() would drop it
    return resolve_output(str(tmp_path / name) + trailing, prompt="p", seed=1, **kw)


def run_mp4(tmp_path: Path, name: str, wins: list[np.ndarray]) -> Path:
    with FrameSink(target(tmp_path, name), FPS, META) as sink:
        for frames in wins:
            sink.write(frames)
            sink.end_window()
        return sink.finish({"done": True})


# ---------------------------------------------------------------- resolve_output


def test_default_output_name_is_time_seed_and_slug():
    assert default_output_name("A Red Fox, running!", 42, NOW) == "20250102-030405_42_a-red-fox-running.mp4"
    assert default_output_name("Café über", 1, NOW).endswith("_1_cafe-uber.mp4")
    assert default_output_name("!!!", 1, NOW).endswith("_1_video.mp4")


def test_default_output_name_slug_is_at_most_40_chars_on_word_boundary():
    slug = default_output_name("the quick brown fox jumps over the lazy dog again", 3, NOW).split("_", 2)[2]
    assert slug == "the-quick-brown-fox-jumps-over-the-lazy.mp4"
    long_word = default_output_name("x" * 60, 3, NOW).split("_", 2)[2]
    assert long_word == "x" * 40 + ".mp4"


def test_no_output_goes_to_outputs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = resolve_output(None, prompt="red fox", seed=5, overwrite=False, now=NOW)
    assert t.kind == "mp4"
    assert t.path == Path("outputs") / "20250102-030405_5_red-fox.mp4"
    assert t.sidecar == Path("outputs") / "20250102-030405_5_red-fox.mp4.json"
    assert t.work_dir == Path("outputs") / ".20250102-030405_5_red-fox.mp4.skyreels"
    assert t.preview == Path("outputs") / "20250102-030405_5_red-fox.partial.mp4"
    assert (tmp_path / "outputs").is_dir()


def test_trailing_slash_or_existing_folder_means_png_frames(tmp_path):
    t = resolve_output(str(tmp_path / "frames") + "/", prompt="p", seed=1, overwrite=False)
    assert (t.kind, t.path, t.preview) == ("png", tmp_path / "frames", tmp_path / "frames.partial")
    assert t.sidecar == tmp_path / "frames" / "settings.json"
    assert t.work_dir == tmp_path / ".frames.skyreels"
    (tmp_path / "existing").mkdir()
    assert target(tmp_path, "existing").kind == "png"


def test_mp4_suffix_is_case_insensitive(tmp_path):
    assert target(tmp_path, "OUT.MP4").kind == "mp4"


@pytest.mark.parametrize("name", ["out.avi", "out.gif", "out"])
def test_other_suffixes_are_usage_errors(tmp_path, name):
    with pytest.raises(UsageError, match=r"NAME\.mp4.*DIR/") as err:
        target(tmp_path, name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_existing_mp4_needs_overwrite_or_resume(tmp_path):
    (tmp_path / "out.mp4").write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists.*overwrite=True"):
        target(tmp_path)
    assert target(tmp_path, overwrite=True).path == tmp_path / "out.mp4"
    assert target(tmp_path, resume=True).path == tmp_path / "out.mp4"


def test_finished_png_folder_needs_overwrite(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "000000.png").write_bytes(b"")
    (tmp_path / "frames" / "settings.json").write_text(json.dumps({"skyreels": "0.2.0"}))
    with pytest.raises(OutputError, match="already exists"):
        target(tmp_path, "frames/")
    assert target(tmp_path, "frames/", overwrite=True).kind == "png"


@pytest.mark.parametrize("files", [["000000.png"], ["notes.txt"], ["settings.json", "000000.png", "notes.txt"]])
def test_folder_of_other_files_is_never_written_into(tmp_path, files):
    (tmp_path / "frames").mkdir()
    for name in files:
        (tmp_path / "frames" / name).write_text(json.dumps({"skyreels": "0.2.0"}))
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holds files skyreels did not write"):
            target(tmp_path, "frames/", overwrite=overwrite)


def test_empty_existing_png_folder_is_fine(tmp_path):
    (tmp_path / "frames").mkdir()
    assert target(tmp_path, "frames/").kind == "png"


def test_parent_that_is_a_file_is_an_output_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        target(tmp_path, "afile/sub/out.mp4")


def test_missing_parents_are_created_and_nothing_else_written(tmp_path):
    t = target(tmp_path, "a/b/out.mp4")
    assert t.path.parent.is_dir()
    assert list(t.path.parent.iterdir()) == []


# ---------------------------------------------------------------- MP4


def test_mp4_round_trip(tmp_path):
    wins = windows(2)
    path = run_mp4(tmp_path, "out.mp4", wins)
    frames, fps = read_video(path)
    expected = np.concatenate(wins)
    assert frames.shape == expected.shape
    assert fps == FPS
    assert np.abs(frames.astype(int) - expected).mean() < 3
    assert json.loads((tmp_path / "out.mp4.json").read_text()) == {"done": True}
    assert not (tmp_path / ".out.mp4.skyreels").exists()
    assert not (tmp_path / "out.partial.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.mp4.json"]


def test_metadata_round_trips_in_comment_tag(tmp_path):
    info = probe_video(run_mp4(tmp_path, "out.mp4", windows(2)))
    assert info == {"frames": 2 * WINDOW, "width": W, "height": H, "fps": FPS, "comment": json.dumps(META)}


def test_preview_plays_finished_windows_before_finish(tmp_path):
    t = target(tmp_path)
    wins = windows(2)
    with FrameSink(t, FPS, META) as sink:
        sink.write(wins[0])
        sink.end_window()
        assert probe_video(t.preview)["frames"] == WINDOW
        sink.write(wins[1])
        assert probe_video(t.preview)["frames"] == WINDOW  # an open window is not in it yet
        sink.end_window()
        assert sink.frames_written == 2 * WINDOW
        assert probe_video(t.preview)["frames"] == 2 * WINDOW
        assert probe_video(t.preview)["comment"] == json.dumps(META)
        assert not t.path.exists()
        sink.finish({})
    assert t.path.exists() and not t.preview.exists()


def test_finish_closes_a_window_that_was_not_ended(tmp_path):
    t = target(tmp_path)
    with FrameSink(t, FPS, META) as sink:
        sink.write(gradient(0, WINDOW))
        sink.end_window()
        sink.write(gradient(WINDOW, 3))
        sink.finish({})
    assert probe_video(t.path)["frames"] == WINDOW + 3


def test_abort_leaves_no_final_file_but_keeps_work_dir(tmp_path):
    t = target(tmp_path)
    with pytest.raises(RuntimeError):
        with FrameSink(t, FPS, META) as sink:
            sink.write(gradient(0, WINDOW))
            sink.end_window()
            sink.write(gradient(WINDOW, 3))
            raise RuntimeError("interrupted")
    assert not t.path.exists() and not t.sidecar.exists()
    assert sorted(p.name for p in t.work_dir.glob("seg_*")) == ["seg_00000.mp4"]
    assert json.loads((t.work_dir / "segments.json").read_text()) == {
        "segments": [{"file": "seg_00000.mp4", "frames": WINDOW}]
    }


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    wins = windows(3)
    straight = run_mp4(tmp_path, "straight.mp4", wins)

    t = target(tmp_path, "resumed.mp4")
    sink = FrameSink(t, FPS, META)
    for frames in wins[:2]:
        sink.write(frames)
        sink.end_window()
    sink.write(wins[2][:2])  # the interrupted third window must not leak into the result
    sink.abort()
    with FrameSink(t, FPS, META, resume_frames=2 * WINDOW) as sink:
        assert sink.frames_written == 2 * WINDOW
        sink.write(wins[2])
        sink.end_window()
        resumed = sink.finish({})

    assert resumed.read_bytes() == straight.read_bytes()
    assert np.array_equal(read_video(resumed)[0], read_video(straight)[0])


def aborted_after_two_windows(tmp_path):
    """An MP4 run interrupted after its second window: what a resume starts from."""
    t = target(tmp_path)
    sink = FrameSink(t, FPS, META)
    for frames in windows(2):
        sink.write(frames)
        sink.end_window()
    sink.abort()
    return t


def test_resume_drops_windows_after_the_resume_point(tmp_path):
    t = aborted_after_two_windows(tmp_path)
    with FrameSink(t, FPS, META, resume_frames=WINDOW) as sink:
        assert probe_video(t.preview)["frames"] == WINDOW
        sink.write(gradient(0, 2))
        sink.finish({})
    assert probe_video(t.path)["frames"] == WINDOW + 2


@pytest.mark.parametrize("resume_frames", [WINDOW - 1, WINDOW + 1, 3 * WINDOW])
def test_resume_that_does_not_match_saved_segments_fails(tmp_path, resume_frames):
    t = aborted_after_two_windows(tmp_path)
    with pytest.raises(OutputError, match="does not match.*without resume=True"):
        FrameSink(t, FPS, META, resume_frames=resume_frames)


def test_fresh_run_discards_old_segments(tmp_path):
    t = aborted_after_two_windows(tmp_path)
    with FrameSink(t, FPS, META) as sink:
        sink.write(gradient(0, 3))
        sink.finish({})
    assert probe_video(t.path)["frames"] == 3


def test_frames_must_be_uint8_rgb(tmp_path):
    with FrameSink(target(tmp_path), FPS, META) as sink:
        with pytest.raises(ValueError, match="uint8"):
            sink.write(np.zeros((2, H, W, 3), np.float32))
        with pytest.raises(ValueError, match="uint8"):
            sink.write(np.zeros((H, W, 3), np.uint8))


# ---------------------------------------------------------------- PNG


def test_png_round_trip_is_lossless_and_resume_continues_numbering(tmp_path):
    t = target(tmp_path, "frames/")
    wins = windows(3)
    sink = FrameSink(t, FPS, META)
    sink.write(wins[0])
    sink.end_window()
    sink.abort()
    assert t.work_dir.is_dir()
    with FrameSink(t, FPS, META, resume_frames=WINDOW) as sink:
        for frames in wins[1:]:
            sink.write(frames)
            sink.end_window()
        assert sink.finish({"seed": 1}) == t.path

    names = sorted(p.name for p in t.path.iterdir())
    assert names == [f"{i:06d}.png" for i in range(3 * WINDOW)] + ["settings.json"]
    read = np.stack([np.asarray(Image.open(t.path / f"{i:06d}.png")) for i in range(3 * WINDOW)])
    assert np.array_equal(read, np.concatenate(wins))
    assert json.loads(t.sidecar.read_text()) == {"seed": 1}


def test_png_overwrite_removes_frames_of_a_longer_old_run(tmp_path):
    with FrameSink(target(tmp_path, "frames/"), FPS, META) as sink:
        sink.write(gradient(0, 5))
        sink.finish({"skyreels": "0.2.0"})
    with FrameSink(target(tmp_path, "frames/", overwrite=True), FPS, META) as sink:
        sink.write(gradient(0, 2))
        assert len(list((tmp_path / "frames").glob("*.png"))) == 5, "the old output stays until the new one is done"
        sink.finish({"skyreels": "0.2.0"})
    assert sorted(p.name for p in (tmp_path / "frames").glob("*.png")) == ["000000.png", "000001.png"]


def test_png_resume_without_the_saved_frames_fails(tmp_path):
    with pytest.raises(OutputError, match="does not match"):
        FrameSink(target(tmp_path, "frames/"), FPS, META, resume_frames=3)


# ---------------------------------------------------------------- reading and small helpers


def test_read_last_frames(tmp_path):
    path = run_mp4(tmp_path, "out.mp4", windows(2))
    everything, _ = read_video(path)
    last, fps = read_last_frames(path, 4)
    assert fps == FPS
    assert np.array_equal(last, everything[-4:])
    with pytest.raises(InputFileError, match="has 12 frames but 13"):
        read_last_frames(path, 2 * WINDOW + 1)


def test_unreadable_videos_are_input_file_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_last_frames(tmp_path / "missing.mp4", 1)
    (tmp_path / "junk.mp4").write_text("not a video")
    with pytest.raises(InputFileError, match="cannot read video") as err:
        read_last_frames(tmp_path / "junk.mp4", 1)
    assert "\n" not in str(err.value)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    write_json_atomic(path, {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
