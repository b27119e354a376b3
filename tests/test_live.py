"""Live extend (issue 24, below the service): windows until stopped, steered while it runs, watched as HLS, and
remade exactly afterwards from the timeline its sidecar records.

The oracle of a steered live run is the shot list of its timeline run as a plain `extend`: the same windows
(a live run's end where the shot list's cuts fall), the same prompt per window, so the same frames, exactly.
A run with the first prompt throughout shows the comparison can fail: it matches the first window only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skyreels_cli as sk
from skyreels_cli.core.live import LivePrompts
from skyreels_cli.core.request import Shot
from skyreels_cli.media.hls import PLAYLIST, RECORD, HlsWriter

from .conftest import ALIASES, frames_of, invoke, mean_levels, one_line_error, read_video

FIRST, SECOND = "a red fox", "the cat running"
# 64x64, windows of 17 frames with an overlap of 5: 17 frames, then 12 a window
SETTINGS = dict(height=64, width=64, steps=2, base_frames=17, overlap=5, seed=3)
CLI_SETTINGS = ["-m", ALIASES["df"], "--device", "cpu", "--seed", "3", "--height", "64", "--width", "64",
                "--steps", "2", "--base-frames", "17", "--overlap", "5"]


@pytest.fixture(scope="module")
def tiny_df(hub_models):
    return sk.load(ALIASES["df"], device="cpu", progress=False)


@pytest.fixture(scope="module")
def steered(tiny_df, tmp_path_factory):
    """A live run steered after its first window and stopped after its third; what it made and showed."""
    folder = tmp_path_factory.mktemp("live")
    prompts, cancel = LivePrompts(), sk.Cancel()
    made, playlists, promised = [], [], []

    def on_event(event):
        if isinstance(event, sk.WindowDone):
            playlists.append((folder / "live.hls" / PLAYLIST).read_text())
            if event.window == 0:
                promised.append(prompts.set(SECOND))
            if event.window == 2:
                cancel.cancel()

    job = sk.Job("extend", sk.Request(prompt=FIRST, live=True, **SETTINGS), output=str(folder / "live.mp4"))
    result = tiny_df.generate(job, prompts=prompts, cancel=cancel, on_event=on_event,
                              on_window=lambda w: made.append(w.frames.copy()))
    return {"folder": folder, "result": result, "frames": np.concatenate(made), "windows": made,
            "playlists": playlists, "promised": promised,
            "sidecar": json.loads((folder / "live.mp4.json").read_text())}


@pytest.mark.slow
def test_stop_keeps_a_complete_video_and_records_the_timeline_as_a_shot_list(steered):
    result, sidecar = steered["result"], steered["sidecar"]
    assert steered["promised"] == [1]
    assert result.frames == 17 + 12 + 12 and len(read_video(result.path)[0]) == result.frames
    assert sidecar["live"]["stopped"] == "stopped" and sidecar["live"]["windows"] == 3
    assert [(e["window"], e["prompt"]) for e in sidecar["live"]["timeline"]] == [(0, FIRST), (1, SECOND)]
    assert sidecar["request"]["shots"] == [Shot(FIRST, 17)._asdict(), Shot(SECOND, 24)._asdict()]
    assert sidecar["request"]["live"] is None and sidecar["live"]["request"]["live"] is True
    assert [s["windows"] for s in sidecar["shots"]] == [[0], [1, 2]]


@pytest.mark.slow
def test_the_prompt_lands_at_the_promised_window_as_the_shot_list_would(steered, tiny_df):
    request = sk.Request.from_dict(steered["sidecar"]["request"])
    assert np.array_equal(frames_of(tiny_df, request), steered["frames"])
    one_prompt = frames_of(tiny_df, sk.Request(prompt=FIRST, frames=41, **SETTINGS))
    assert np.array_equal(one_prompt[:17], steered["frames"][:17])  # before the change: the same
    assert mean_levels(one_prompt[17:], steered["frames"][17:]) > 1  # after it: another prompt's frames


@pytest.mark.slow
def test_from_the_sidecar_remakes_the_same_video(steered, tmp_path):
    again = tmp_path / "again.mp4"
    done = invoke("extend", "--from", steered["folder"] / "live.mp4.json", "--device", "cpu", "-o", again, "-q")
    assert done.exit_code == 0, done.output
    assert np.array_equal(read_video(again)[0], read_video(steered["result"].path)[0])


@pytest.mark.slow
def test_the_playlist_grows_window_by_window_and_its_segments_decode_to_the_frames(steered):
    playlists = steered["playlists"]
    for k, text in enumerate(playlists):
        assert text.count(".ts") == k + 1 and "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    final = (steered["folder"] / "live.hls" / PLAYLIST).read_text()
    assert final.startswith(playlists[-1]) and final.endswith("#EXT-X-ENDLIST\n")
    hls, made = steered["folder"] / "live.hls", steered["frames"]
    for window, frames in enumerate(steered["windows"]):
        assert read_video(hls / f"w{window:06d}.ts")[0].shape == frames.shape
    # H.264 in yuv420p is lossy (the tiny model's frames are noise-like): played through, the segments are as
    # near the frames made as the MP4 is, and far from the same frames in another order
    whole, mp4 = _decode(hls / PLAYLIST), read_video(steered["result"].path)[0]
    assert whole.shape == made.shape
    assert mean_levels(whole, made) <= mean_levels(mp4, made) + 1
    assert mean_levels(whole[::-1], made) > 2 * mean_levels(whole, made)


def _decode(playlist: Path, side: int = 64) -> np.ndarray:
    """An HLS playlist played through by ffmpeg, as a player reads it."""
    from skyreels_cli.media.ffmpeg import ffmpeg

    done = subprocess.run([ffmpeg().get_ffmpeg_exe(), "-v", "error", "-i", str(playlist), "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(done.stdout, np.uint8).reshape(-1, side, side, 3)


def _frames(n: int, level: int) -> np.ndarray:
    return np.full((n, 32, 32, 3), level, np.uint8)


def test_keep_last_keeps_the_last_seconds_of_segments_and_the_playlist_counts_on(tmp_path):
    hls = HlsWriter(tmp_path, 24.0, keep_last_s=1.0)
    for window in range(5):
        hls.add(window, _frames(12, 40 * window))  # half a second each
    text = (tmp_path / PLAYLIST).read_text()
    assert sorted(p.name for p in tmp_path.glob("*.ts")) == ["w000003.ts", "w000004.ts"]
    assert "#EXT-X-MEDIA-SEQUENCE:3" in text and text.count(".ts") == 2
    assert len(json.loads((tmp_path / RECORD).read_text())["segments"]) == 5  # the record keeps every one
    assert float(read_video(tmp_path / "w000004.ts")[0].mean()) == pytest.approx(160, abs=3)


def test_a_resumed_writer_continues_the_numbering_without_a_lost_or_repeated_segment(tmp_path):
    hls = HlsWriter(tmp_path, 24.0)
    for window in range(3):
        hls.add(window, _frames(12, 50 * window))
    # killed after segment 2 was written but before window 2's state was saved: the run goes on from window 2
    again = HlsWriter(tmp_path, 24.0, next_window=2)
    assert sorted(p.name for p in tmp_path.glob("*.ts")) == ["w000000.ts", "w000001.ts"]
    again.add(2, _frames(12, 200))
    again.end()
    text = (tmp_path / PLAYLIST).read_text()
    assert [line for line in text.splitlines() if line.endswith(".ts")] == [f"w00000{i}.ts" for i in range(3)]
    assert text.endswith("#EXT-X-ENDLIST\n")
    levels = [round(float(f.mean())) for f in _decode(tmp_path / PLAYLIST, 32)[::12]]
    assert levels == pytest.approx([0, 50, 200], abs=3)


def test_prompts_take_effect_from_the_next_window_not_started():
    prompts = LivePrompts()
    request = sk.Request(prompt=FIRST)
    assert prompts.set("ignored: replaced before any window started") == 0
    assert prompts.set(SECOND) == 0
    assert prompts.for_window(0, request) == (SECOND, None)
    assert prompts.set("a third", "blurry") == 1
    assert prompts.for_window(1, request) == ("a third", "blurry")
    assert prompts.for_window(2, request) == ("a third", "blurry")
    assert [(e["window"], e["prompt"]) for e in prompts.timeline()] == [(0, SECOND), (1, "a third")]
    for empty in ("", "   "):
        with pytest.raises(sk.UsageError, match="new prompt is empty"):
            prompts.set(empty)


def test_a_live_plan_is_made_lazily_and_its_most_is_in_whole_windows(hub_models):
    from skyreels_cli.core.resolve import resolve, window_plan
    from skyreels_cli.models.naming import resolve_model

    spec = resolve_model(ALIASES["df"], "extend")
    endless = resolve(sk.Request(prompt=FIRST, live=True, **SETTINGS), spec)
    plan = window_plan(endless)
    assert len(plan.windows) > 100_000 and plan.windows[5].index == 5 and plan.windows[5].new == 3
    most = resolve(sk.Request(prompt=FIRST, live=True, frames=50, **SETTINGS), spec)
    assert most.frames == 41 and len(window_plan(most).windows) == 3  # 17 + 12 + 12; a fourth would pass 50


@pytest.mark.parametrize("settings, words", [
    ({"live": True, "end_image": "IMAGE"}, "cannot be used with live=True"),
    ({"live": True, "shots": [Shot(FIRST, 17)]}, "leave out the shot list"),
])
def test_live_refuses_what_cannot_go_with_it(hub_models, image_file, settings, words):
    settings = {k: (str(image_file) if v == "IMAGE" else v) for k, v in settings.items()}
    job = sk.Job("extend", sk.Request(prompt=FIRST, **SETTINGS, **settings), load=sk.LoadOptions(device="cpu"))
    with pytest.raises(sk.UsageError, match=words):
        sk.check(job)


def test_live_is_for_extend_and_keep_last_for_live(hub_models):
    with pytest.raises(sk.UsageError, match="unknown setting 'live' for t2v"):
        sk.Job.from_settings("t2v", {"prompt": FIRST, "live": True})
    with pytest.raises(sk.UsageError, match="it is for extend, not t2v"):
        sk.Job("t2v", sk.Request(prompt=FIRST, live=True))
    with pytest.raises(sk.UsageError, match="give live=True too"):
        sk.Job("extend", sk.Request(prompt=FIRST), keep_last=10)
    with pytest.raises(sk.UsageError, match="keep_last=0 must be a positive"):
        sk.Job("extend", sk.Request(prompt=FIRST, live=True), keep_last=0)


def test_cli_bad_live_input_is_one_line(hub_models, image_file, tmp_path):
    message = one_line_error(invoke("extend", FIRST, "--live", "--end-image", image_file, *CLI_SETTINGS,
                                    "-o", tmp_path / "x.mp4"))
    assert "--end-image cannot be used with --live" in message
    message = one_line_error(invoke("extend", FIRST, "--keep-last", "5", "--frames", "17", *CLI_SETTINGS))
    assert "--keep-last bounds a live job's segments" in message
    assert [p.name for p in tmp_path.iterdir()] == [image_file.name]  # nothing made


@pytest.mark.slow
def test_cli_live_steered_from_stdin_killed_and_resumed_remakes_from_its_sidecar(hub_models, tmp_path):
    """As a user: prompts piped in at chosen points (when a window's line appears), the process killed after its
    third window's state is saved, then resumed with no more input (it goes on to --frames, 4 windows)."""
    output = tmp_path / "live.mp4"
    args = [sys.executable, "-m", "skyreels_cli", "extend", FIRST, "--live", "--frames", "53", *CLI_SETTINGS,
            "-o", str(output)]
    env = {**os.environ, "SKYREELS_FAULT": "window_saved:3"}
    proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    promised = None
    for line in proc.stderr:
        if line.startswith("window 1 done"):
            proc.stdin.write(SECOND + "\n")
            proc.stdin.flush()
        if line.startswith("prompt from window"):
            promised = int(line.split()[3].rstrip(":")) - 1
    assert proc.wait() == 137 and promised in (1, 2)
    assert not output.exists() and not (tmp_path / "live.hls" / PLAYLIST).read_text().endswith("#EXT-X-ENDLIST\n")
    done = subprocess.run([*args, "--resume", "-q"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((tmp_path / "live.mp4.json").read_text())
    assert [(e["window"], e["prompt"]) for e in sidecar["live"]["timeline"]] == [(0, FIRST), (promised, SECOND)]
    assert sidecar["live"]["stopped"] == "most reached" and sidecar["run"]["resumed"] is True
    playlist = (tmp_path / "live.hls" / PLAYLIST).read_text()
    assert [line for line in playlist.splitlines() if line.endswith(".ts")] == [f"w00000{i}.ts" for i in range(4)]
    again = tmp_path / "again.mp4"
    assert invoke("extend", "--from", tmp_path / "live.mp4.json", "--device", "cpu", "-o", again, "-q").exit_code == 0
    assert np.array_equal(read_video(again)[0], read_video(output)[0])


@pytest.mark.slow
def test_a_full_disk_ends_the_stream_cleanly_with_what_was_made(tiny_df, tmp_path, monkeypatch):
    """The second window's segment cannot be written (ENOSPC): the video keeps both windows, the stream ends."""
    import errno

    from skyreels_cli.media import hls

    encode, calls = hls._encode, []

    def full_disk(path, frames, fps, offset_s):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        encode(path, frames, fps, offset_s)

    monkeypatch.setattr(hls, "_encode", full_disk)
    job = sk.Job("extend", sk.Request(prompt=FIRST, live=True, **SETTINGS), output=str(tmp_path / "live.mp4"))
    result = tiny_df.generate(job)
    sidecar = json.loads((tmp_path / "live.mp4.json").read_text())
    assert sidecar["live"]["stopped"] == "disk full" and sidecar["live"]["windows"] == 2
    assert result.frames == 29 == len(read_video(result.path)[0]) == sidecar["request"]["frames"]
    playlist = (tmp_path / "live.hls" / PLAYLIST).read_text()
    assert playlist.count(".ts") == 1 and playlist.endswith("#EXT-X-ENDLIST\n")


def test_fmp4_chunks_start_with_the_init_and_play_on_as_one_video(tmp_path):
    """vLLM-Omni's chunk shape: the first ftyp+moov, the rest fragments whose times follow on."""
    from skyreels_cli.media.hls import fmp4_chunk

    windows, first, chunks = [_frames(5, 40), _frames(4, 120), _frames(4, 200)], 0, []
    for i, frames in enumerate(windows):
        chunks.append(fmp4_chunk(frames, 24.0, first, init=i == 0))
        first += len(frames)
    assert chunks[0][4:8] == b"ftyp" and all(c[4:8] == b"moof" for c in chunks[1:])
    (tmp_path / "joined.mp4").write_bytes(b"".join(chunks))
    levels = [round(float(f.mean())) for f in read_video(tmp_path / "joined.mp4")[0]]
    assert levels == pytest.approx([40] * 5 + [120] * 4 + [200] * 4, abs=3)
    unshifted = chunks[0] + fmp4_chunk(windows[1], 24.0, 0, init=False)  # decode times not continued
    (tmp_path / "overlapping.mp4").write_bytes(unshifted)
    assert len(read_video(tmp_path / "overlapping.mp4")[0]) < 9


def test_a_live_window_line_shows_the_pace_and_the_prompt_delay():
    import io

    from skyreels_cli.cli.progress import ProgressDisplay

    out = io.StringIO()
    display = ProgressDisplay(out, tty=False)
    display(sk.WindowDone(3, 10**5, 53, None, 30.0, None, rtf=0.25, prompt_latency_s=7.5))
    display(sk.WindowDone(4, 10**5, 65, None, 35.0, None, rtf=0.5))
    first, second = out.getvalue().splitlines()
    assert first == "window 4 done, 53 frames, 0.25x real time, the new prompt out 7.5 s after it was given"
    assert second == "window 5 done, 65 frames, 0.50x real time" and "/100000" not in out.getvalue()


@pytest.mark.slow
def test_a_streamed_live_run_ends_cleanly_when_cancelled(tiny_df):
    cancel, made = sk.Cancel(), []
    for window in tiny_df.stream(sk.Request(prompt=FIRST, live=True, **SETTINGS), cancel=cancel):
        made.append(len(window.frames))
        cancel.cancel()
    assert made == [17]
