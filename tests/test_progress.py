"""One progress display for a whole run: the time-left arithmetic, the run's clock, the display's text for
scripted events, the events a real run sends, and what `skyreels extend` prints on stderr (nothing with -q)."""

import io
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.cli.progress import ProgressDisplay, summary
from skyreels_cli.core.events import (
    RunClock,
    RunFinished,
    RunStarted,
    StepDone,
    WindowDone,
    eta,
    format_duration,
    remaining_seconds,
    window_costs,
    work_done,
)
from skyreels_cli.forcing.windows import plan_for_length

TINY = ["-m", "tiny", "--device", "cpu", "--height", "64", "--width", "64", "--steps", "2", "--base-frames", "17",
        "--seed", "3"]


# ------------------------------------------------------------ arithmetic

def test_remaining_time_follows_the_rate_seen_so_far():
    assert remaining_seconds(10.0, 1.0, 4.0) == pytest.approx(30.0)
    assert remaining_seconds(10.0, 4.0, 4.0) == 0.0
    assert remaining_seconds(0.0, 0.0, 4.0) is None and remaining_seconds(5.0, 0.0, 4.0) is None


def test_work_counts_whole_windows_and_the_fraction_of_the_current_one():
    costs = (2.0, 2.0, 2.0, 1.0)
    assert work_done(costs, 0, 0, 0.0) == 0.0
    assert work_done(costs, 0, 1, 0.5) == 3.0
    assert work_done(costs, 0, 4, 0.0) == 7.0
    # resumed at window 2: only this run's work counts against this run's time
    assert work_done(costs, 2, 3, 0.5) == 2.5
    assert eta(5.0, costs, 2, 3, 0.0) == pytest.approx(2.5)  # 2 units in 5 s, 1 unit left
    assert eta(8.0, (1.0,) * 4, 0, 1, 0.0) == pytest.approx(24.0)  # equal windows: 1 of 4 done in 8 s


def test_window_costs_weigh_short_and_asynchronous_windows():
    plan = plan_for_length(49, base_frames=17, overlap_frames=5, causal_block=1, image=False, video=False,
                           end_image=False)[1]
    sync = window_costs(plan, steps=4, ar_step=0)
    assert len(sync) == len(plan.windows) == 4
    assert sync[0] == 4 * plan.windows[0].length  # rows x latent frames
    assert sync[-1] < sync[0]  # the last window is shorter
    lagged = window_costs(plan, steps=4, ar_step=2)
    assert all(a > s for a, s in zip(lagged, sync))  # asynchronous windows take more rows


def test_durations_are_short():
    assert [format_duration(s) for s in (0.4, 42, 185, 3725, 93600)] == ["0s", "42s", "3m05s", "1h02m", "1d02h"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_run_clock_estimates_what_is_left_from_this_runs_pace():
    clock = Clock()
    run = RunClock((2.0, 2.0, 1.0), start=1, clock=clock)  # resumed at window 1 of 3
    assert run.elapsed() == 0 and run.eta(1, 0.0) is None  # no work done yet: no guess
    clock.now += 4
    assert run.elapsed() == 4 and run.eta(1, 0.5) == pytest.approx(8.0)  # 1 unit in 4 s, 2 left
    assert run.eta(3, 0.0) == 0.0


# ------------------------------------------------------------ the display, on scripted events

def script(display: ProgressDisplay) -> None:
    """A three-window run of 30 s, as a RunClock times it: 5 s a step, 2 steps a window."""
    costs, clock = (1.0, 1.0, 1.0), Clock()
    run = RunClock(costs, clock=clock)
    display(RunStarted(3, 41, Path("out.partial.mp4"), 0, "", "", run.elapsed(), None))
    for window in range(3):
        for step in (1, 2):
            clock.now += 5
            display(StepDone(window, step, 2, run.elapsed(), run.eta(window, step / 2)))
        display(WindowDone(window, 3, 17 + 12 * window, Path("out.partial.mp4"), run.elapsed(),
                           run.eta(window + 1, 0.0)))
    display(RunFinished(41, 30.0, Path("out.mp4")))


def test_plain_lines_one_per_window_with_elapsed_time_left_and_preview():
    out = io.StringIO()
    script(ProgressDisplay(out, tty=False))
    lines = out.getvalue().splitlines()
    assert lines == [
        "window 1/3 done, 17 frames, 10s elapsed, about 20s left; preview: out.partial.mp4",
        "window 2/3 done, 29 frames, 20s elapsed, about 10s left; preview: out.partial.mp4",
        "window 3/3 done, 41 frames, 30s elapsed, about 0s left; preview: out.partial.mp4",
        "done: 41 frames in 30s, 0.73 s per frame",
    ]
    assert "\r" not in out.getvalue()


def test_terminal_redraws_one_line_and_ends_with_the_summary():
    out, clock = io.StringIO(), Clock()

    def paced() -> float:  # redraws are paced by the display's clock: let every step through
        clock.now += 1
        return clock.now

    script(ProgressDisplay(out, tty=True, clock=paced, width=200))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("done: 41 frames in 30s, 0.73 s per frame\n")
    redraws = text.split("\r\x1b[K")
    assert "window 2/3, step 1/2 | 15s elapsed, about 15s left; preview: out.partial.mp4" in redraws
    assert redraws[1].startswith("window 1/3 | 0s elapsed, estimating time left")  # before any work: no guess
    narrow = io.StringIO()
    display = ProgressDisplay(narrow, tty=True, clock=paced, width=30)
    display(RunStarted(3, 41, None))
    assert all(len(part) <= 29 for part in narrow.getvalue().split("\r\x1b[K"))


def test_a_resumed_run_counts_from_its_first_window():
    out, clock = io.StringIO(), Clock()
    run = RunClock((1.0, 1.0, 1.0, 1.0), start=2, clock=clock)
    display = ProgressDisplay(out, tty=False)
    display(RunStarted(4, 53, None, done=2))
    clock.now += 6
    display(WindowDone(2, 4, 41, None, run.elapsed(), run.eta(3, 0.0)))
    assert out.getvalue() == "window 3/4 done, 41 frames, 6s elapsed, about 6s left\n"


# ------------------------------------------------------------ a real run

@pytest.fixture(scope="module")
def tiny_df():
    return sk.load("tiny-df", device="cpu", command="extend", progress=True)


def test_a_run_sends_each_step_and_window_and_shows_no_bars(tiny_df, tmp_path, capsys):
    events = []
    request = sk.Request(prompt="a fox", frames=41, height=64, width=64, steps=2, base_frames=17, seed=1)
    result = tiny_df.generate(request, tmp_path / "fox.mp4", on_event=events.append)
    started, *middle, finished = events
    assert (started.windows, started.frames, started.preview, started.done) == (3, 41, tmp_path / "fox.partial.mp4", 0)
    assert started.description.endswith(f"seed 1 -> {tmp_path / 'fox.mp4'}") and "on the CPU" in started.memory_plan
    assert [e.window for e in middle if isinstance(e, WindowDone)] == [0, 1, 2]
    assert [(e.window, e.step) for e in middle if isinstance(e, StepDone)] == [(w, s) for w in range(3) for s in (1, 2)]
    done = middle[2]  # steps of a window come before it is done
    assert (done.window, done.windows, done.frames, done.preview) == (0, 3, 17, tmp_path / "fox.partial.mp4")
    times = [e.elapsed_s for e in events]
    assert times == sorted(times) and finished.elapsed_s == finished.seconds > 0
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in middle), "each step and window says what is left"
    assert middle[-1].eta_s == 0.0
    assert isinstance(finished, RunFinished) and finished.frames == result.frames == 41
    assert finished.path == result.path and finished.seconds > 0
    assert capsys.readouterr().err == "", "a listener replaces the tqdm bars"


def test_extend_prints_windows_and_a_summary_on_stderr(tmp_path):
    out = tmp_path / "fox.mp4"
    result = CliRunner().invoke(app, ["extend", "a red fox", *TINY, "--frames", "41", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    lines = result.stderr.splitlines()
    windows = [line for line in lines if line.startswith("window ")]
    assert [w.split(" done")[0] for w in windows] == ["window 1/3", "window 2/3", "window 3/3"]
    assert all("elapsed" in w and f"preview: {tmp_path / 'fox.partial.mp4'}" in w for w in windows)
    assert re.fullmatch(r"done: 41 frames in \d+s, \d+\.\d\d s per frame", lines[-1])


def test_quiet_extend_writes_nothing_on_stderr(tmp_path):
    out = tmp_path / "fox.mp4"
    result = CliRunner().invoke(app, ["extend", "a red fox", *TINY, "--frames", "41", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == f"{out}\n"


def test_the_summary_says_new_frames_and_the_file_s_where_they_differ():
    # `extend --video X --frames 60` on a 17-frame X: 60 new frames, 77 in the file (and a resumed run likewise)
    assert (summary(RunFinished(60, 30.0, Path("out.mp4"), 77))
            == "done: 60 new frames (77 in the file) in 30s, 0.50 s per frame")
    assert summary(RunFinished(41, 30.0, Path("out.mp4"), 41)) == "done: 41 frames in 30s, 0.73 s per frame"


@pytest.mark.slow
def test_extend_of_a_video_says_how_many_frames_are_new(tmp_path):
    start = tmp_path / "start.mp4"
    clip = [a for a in TINY if a not in ("--base-frames", "17")]  # t2v has no windows
    made = CliRunner().invoke(app, ["t2v", "a red fox", *clip, "--frames", "17", "-o", str(start), "-q"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "longer.mp4"
    result = CliRunner().invoke(app, ["extend", "the fox keeps running", *TINY, "--video", str(start),
                                      "--frames", "24", "--overlap", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from .conftest import read_video

    frames, _ = read_video(out)
    new = len(frames) - 17
    assert new == 24, "--frames counts the new frames"
    assert re.fullmatch(rf"done: {new} new frames \({len(frames)} in the file\) in \d+s, \d+\.\d\d s per frame",
                        result.stderr.splitlines()[-1]), result.stderr


# What a user sees: the CLI run as a program (its own process, so no test harness has set any logger), with the
# library's display only. Bars and warnings from diffusers, transformers and huggingface_hub would show here.
THIRD_PARTY = ("Loading pipeline components", "Loading weights", "Loading checkpoint shards", "it/s]", "s/it]",
               "[transformers]", "torchvision", "Warning", "warn(", "deprecated", "Some weights")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["t2v", "i2v"])
def test_a_normal_run_shows_only_skyreels_own_display(command, hub_models, tmp_path):
    import os
    import subprocess
    import sys

    from PIL import Image

    picture = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(picture)
    clip = [a for a in TINY if a not in ("--base-frames", "17")]
    args = [command, "a red fox", *clip, "--frames", "17", "-o", str(tmp_path / "out.mp4")]
    if command == "i2v":
        args.insert(1, str(picture))
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # as a user's shell: Python's default warning filters
    env.pop("PYTEST_CURRENT_TEST", None)
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("done: 17 frames"), done.stderr
    shown = [line for line in done.stderr.splitlines() if any(word in line for word in THIRD_PARTY)]
    assert not shown, done.stderr
