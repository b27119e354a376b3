"""Replay: `skyreels info` reads what a run recorded, and `--from` makes the same frames again.

Needs the shared-file edits of issue 9 part a (Request.aspect/resolution, the --from/--aspect/--resolution options,
`info` registered in cli/__init__.py).
"""

import json

import numpy as np
import pytest

from skyreels_cli.core.replay import Recorded, read_recorded, replay_request
from skyreels_cli.core.request import Request
from skyreels_cli.errors import InputFileError, UsageError
from skyreels_cli.media.ffmpeg import ffmpeg

from .conftest import ALIASES, SMALL, invoke, read_png_frames, read_video

# Two windows on the tiny DF model: a replay must carry the window settings too.
EXTEND = ["extend", "a lighthouse", "-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64",
          "--frames", "29", "--base-frames", "17", "--steps", "3", "--seed", "11", "-q"]


def sidecar(path):
    return json.loads((path / "settings.json" if path.is_dir() else path.with_name(path.name + ".json")).read_text())


def assert_varied(frames):
    # Equal frames prove nothing if they are flat or all alike.
    assert frames.std() > 1 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 0.5


@pytest.fixture(scope="module")
def made(hub_models, tmp_path_factory):
    """One t2v MP4 and one two-window extend PNG folder, made once for the tests below."""
    folder = tmp_path_factory.mktemp("made")
    mp4 = folder / "fox.mp4"
    assert invoke("t2v", "a red fox", "-m", ALIASES["df"], *SMALL, "--seed", 5, "-o", mp4, "-q").exit_code == 0
    png = folder / "light"
    result = invoke(*EXTEND, "-o", f"{png}/")
    assert result.exit_code == 0, result.output
    return mp4, png


def test_from_mp4_makes_the_same_frames(made, tmp_path):
    mp4, _ = made
    again = tmp_path / "again.mp4"
    result = invoke("t2v", "--from", mp4, "--device", "cpu", "-o", again, "-q")
    assert result.exit_code == 0, result.output
    original, replayed = read_video(mp4)[0], read_video(again)[0]
    assert_varied(original)
    assert np.array_equal(original, replayed)
    assert sidecar(again)["request"] == sidecar(mp4)["request"]
    assert sidecar(again)["model"]["alias"] == ALIASES["df"], "the recorded model, with no -m"


def test_from_png_folder_replays_every_window_exactly(made, tmp_path):
    _, png = made
    assert len(read_png_frames(png)) == 29
    again = tmp_path / "again"
    result = invoke("extend", "--from", png, "--device", "cpu", "-o", f"{again}/", "-q")
    assert result.exit_code == 0, result.output
    original = read_png_frames(png)
    assert_varied(original)
    assert np.array_equal(read_png_frames(again), original)


def test_flags_given_override_the_recording(made, tmp_path):
    _, png = made
    other = tmp_path / "other"
    result = invoke("extend", "--from", png / "settings.json", "--seed", 12, "--device", "cpu", "-o", f"{other}/",
                    "-q")
    assert result.exit_code == 0, result.output
    before, after = sidecar(png)["request"], sidecar(other)["request"]
    assert after["seed"] == 12
    assert {k: v for k, v in after.items() if k != "seed"} == {k: v for k, v in before.items() if k != "seed"}
    assert not np.array_equal(read_png_frames(other), read_png_frames(png)), "another seed, other frames"


def test_model_flag_wins_over_the_recorded_model(made, tmp_path):
    mp4, _ = made
    out = tmp_path / "tiny.mp4"
    result = invoke("t2v", "--from", mp4, "-m", "tiny", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("t2v: tiny-df, 64x64, 17 frames, seed 5"), result.output
    assert not out.exists()


def test_from_a_video_without_settings_is_one_line(hub_models, tmp_path):
    plain = tmp_path / "plain.mp4"
    writer = ffmpeg().write_frames(str(plain), (64, 64), fps=24, quality=None, output_params=["-crf", "20"])
    writer.send(None)
    for i in range(5):
        writer.send(np.full((64, 64, 3), 40 * i, np.uint8).tobytes())
    writer.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["t2v", "--from", plain, "-o", tmp_path / "x.mp4"], ["info", plain]):
        result = invoke(*command)
        message = result.output.strip()
        assert result.exit_code == 2 and message.startswith("error: ") and "\n" not in message, message
        assert "carries no skyreels settings" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"


def test_from_a_missing_file_is_one_line(tmp_path):
    result = invoke("extend", "--from", tmp_path / "gone.mp4")
    assert result.exit_code == 2 and "does not exist" in result.output and "\n" not in result.output.strip()


def test_the_tag_alone_is_enough(made, tmp_path):
    mp4, _ = made
    moved = tmp_path / "moved.mp4"
    moved.write_bytes(mp4.read_bytes())  # without its sidecar
    recorded = read_recorded(moved)
    assert recorded.settings == moved and recorded.run is None
    assert recorded.request == sidecar(mp4)["request"]


def test_the_sidecar_alone_is_enough(made, tmp_path):
    """A video re-encoded elsewhere loses its tag; the sidecar named after it still tells."""
    mp4, _ = made
    frames, _ = read_video(mp4)
    bare = tmp_path / "bare.mp4"
    writer = ffmpeg().write_frames(str(bare), (64, 64), fps=24, quality=None, output_params=["-crf", "20"])
    writer.send(None)
    writer.send(frames.tobytes())
    writer.close()
    (tmp_path / "bare.mp4.json").write_text(mp4.with_name("fox.mp4.json").read_text())
    recorded = read_recorded(bare)
    assert recorded.run["frames_written"] == 17 and recorded.request["seed"] == 5


def _recorded(request: dict, model: dict | None = None) -> Recorded:
    return Recorded(source=None, settings=None, request=request, model=model or {}, run=None, version="0.2.0")


RECORDED = Request(prompt="a fox", height=544, width=960, frames=97, seconds=None, seed=3, base_frames=97,
                   overlap=17, addnoise=20.0).to_dict()


def test_merge_rules():
    assert replay_request(_recorded(RECORDED), {"seed": None, "steps": 9}, forcing=True) == \
        Request.from_dict({**RECORDED, "steps": 9}), "None is 'not given'; a value given wins"
    resized = replay_request(_recorded(RECORDED), {"aspect": "1:1"}, forcing=True)
    assert (resized.height, resized.width, resized.aspect) == (None, None, "1:1"), "the size is chosen again"
    one_side = replay_request(_recorded(RECORDED), {"height": 720}, forcing=True)
    assert (one_side.height, one_side.width) == (720, 960)
    timed = replay_request(_recorded({**RECORDED, "seconds": 4.0}), {"fps": 16}, forcing=True)
    assert (timed.frames, timed.seconds, timed.fps) == (None, 4.0, 16), "frames follow seconds x the new fps"
    counted = replay_request(_recorded({**RECORDED, "seconds": 4.0}), {"frames": 33}, forcing=True)
    assert (counted.frames, counted.seconds) == (33, None)
    clip = replay_request(_recorded(RECORDED), {}, forcing=False)
    assert clip.base_frames is None and clip.overlap is None and clip.addnoise is None, "window defaults dropped"
    image = replay_request(_recorded({**RECORDED, "video": "in.mp4"}), {"image": "a.png"}, forcing=True)
    assert (image.image, image.video, image.height) == ("a.png", None, None)


def test_merge_refuses_what_this_skyreels_cannot_read():
    with pytest.raises(UsageError, match="unknown request field 'warp'"):
        replay_request(_recorded({**RECORDED, "warp": 9}), {}, forcing=True)
    with pytest.raises(UsageError, match="request version 7"):
        replay_request(_recorded({**RECORDED, "version": 7}), {}, forcing=True)


def test_load_options_follow_the_recording_on_the_same_kind_of_device():
    recorded = _recorded(RECORDED, {"dtype": "bf16", "quantize": "fp8", "device": "cuda:0"})
    assert recorded.load_options("cuda", None, "auto") == ("bf16", "fp8")
    assert recorded.load_options("cuda", "fp16", "none") == ("fp16", "none"), "given options win"
    assert recorded.load_options("cpu", None, "auto") == (None, "auto"), "another device: its own defaults"


def test_read_recorded_refuses_json_not_made_by_skyreels(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"request": {"prompt": "x"}}')
    with pytest.raises(InputFileError, match="carries no skyreels settings"):
        read_recorded(other)


def test_info_prints_request_model_run_and_colour(made, tmp_path):
    mp4, _ = made
    copy = tmp_path / "fox.mp4"
    copy.write_bytes(mp4.read_bytes())
    data = sidecar(mp4)
    data["run"]["colour"] = [{"window": 0, "first_frame": 0, "mean": [100.0, 90.0, 80.0], "std": [20.0, 21.0, 22.0]},
                             {"window": 1, "first_frame": 41, "mean": [110.0, 100.0, 90.0], "std": [19, 20, 21]}]
    copy.with_name("fox.mp4.json").write_text(json.dumps(data))
    result = invoke("info", copy)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "prompt            a red fox" in out and "seed              5" in out
    assert "negative_prompt   (the official list)" in out
    assert f"model: {ALIASES['df']} (df;" in out and "fp32" in out
    assert "run: 17 frames" in out and "generate" in out and "s per frame" in out
    assert "colour per window" in out and " 100.0   90.0   80.0" in out
    assert "brightness drift: not measured" in out  # two windows: none after the first to fit a trend to
    as_json = json.loads(invoke("info", copy, "--json").output)
    assert as_json["request"] == data["request"] and as_json["run"]["colour"] == data["run"]["colour"]


def test_info_on_a_png_folder(made):
    _, png = made
    result = invoke("info", png)
    assert result.exit_code == 0, result.output
    assert "base_frames       17" in result.output and "run: 29 frames" in result.output
