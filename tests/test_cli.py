"""The CLI as a user calls it: outputs decoded back, sidecars read, bad input refused cleanly."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.media.videos import probe_video

from .conftest import ALIASES, SMALL, invoke, read_png_frames, read_video

runner = CliRunner()


def test_t2v_writes_mp4_with_sidecar_and_metadata(hub_models, tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke("t2v", "a red fox", "-m", ALIASES["df"], *SMALL, "--seed", 5, "-o", out, "--fps", 16)
    assert result.exit_code == 0, result.output
    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 64, 3) and fps == 16
    sidecar = json.loads((tmp_path / "fox.mp4.json").read_text())
    assert sidecar["request"]["seed"] == 5 and sidecar["model"]["repo"] == "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers"
    assert sidecar["run"]["frames_written"] == 17 and sidecar["run"]["timings_s"]["generate"] > 0
    assert sidecar["model"]["dtype"] == "fp32" and sidecar["request"]["sigma_grid"] == "official"
    assert json.loads(probe_video(out)["comment"])["request"]["prompt"] == "a red fox"
    assert not list(tmp_path.glob(".*")), "work files left behind"


def test_random_seed_is_drawn_and_reported(hub_models, tmp_path):
    result = invoke("t2v", "a cat", "-m", ALIASES["df"], *SMALL, "-o", tmp_path / "a.mp4")
    assert result.exit_code == 0, result.output
    seed = json.loads((tmp_path / "a.mp4.json").read_text())["request"]["seed"]
    assert f"seed {seed}" in result.output


def test_default_output_goes_to_outputs_folder(hub_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("t2v", "a small red fox", "-m", ALIASES["df"], *SMALL, "--seed", 9, "-q")
    assert result.exit_code == 0, result.output
    [video] = (tmp_path / "outputs").glob("*.mp4")
    assert "_9_a-small-red-fox" in video.name and video.with_name(video.name + ".json").is_file()


def test_existing_output_needs_overwrite(hub_models, tmp_path):
    out = tmp_path / "x.mp4"
    args = ["t2v", "a cat", "-m", ALIASES["df"], *SMALL, "-o", out, "-q"]
    assert invoke(*args, "--seed", 1).exit_code == 0
    before = out.read_bytes()
    refused = invoke(*args, "--seed", 2)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert out.read_bytes() == before
    assert invoke(*args, "--seed", 2, "--overwrite").exit_code == 0
    assert out.read_bytes() != before


def test_i2v_portrait_image_gives_portrait_video(hub_models, tmp_path):
    img = tmp_path / "tall.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 48, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "tall"
    result = invoke("i2v", img, "a tower", "-m", "tiny", "--device", "cpu", "--steps", 2,
                    "--frames", 5, "-o", f"{out}/", "-q")
    assert result.exit_code == 0, result.output
    first = Image.open(out / "000000.png")
    assert first.height > first.width
    assert json.loads((out / "settings.json").read_text())["request"]["image"] == str(img)


@pytest.mark.slow
def test_installed_command_runs_tiny_model_as_a_subprocess(tmp_path):
    env = {**os.environ}
    out = tmp_path / "cat.mp4"
    exe = os.path.join(os.path.dirname(sys.executable), "skyreels")
    done = subprocess.run([exe, "t2v", "a cat", "--model", "tiny", "--device", "cpu", "-o", str(out), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert probe_video(out)["frames"] == 17


@pytest.mark.parametrize("command", ["t2v", "i2v", "extend"])
@pytest.mark.slow
def test_quiet_prints_only_the_output_path(tmp_path, image_file, command):
    """No third-party bars, log lines or warnings: stdout is the path, stderr is empty (a fresh
    HF_HOME, so the tiny model is built in the run too)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "q.mp4"
    args = {"t2v": ["t2v", "a cat"], "i2v": ["i2v", str(image_file), "a cat"],
            "extend": ["extend", "a cat", "--frames", "29"]}[command]
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args, "-m", "tiny", "--device", "cpu",
                           "--steps", "2", "-o", str(out), "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n" and done.stderr == ""


@pytest.mark.parametrize("command", ["t2v", "i2v", "extend"])
def test_bf16_runs_on_the_cpu(hub_models, tmp_path, image_file, command):
    """The CUDA runs are bf16: the same code path in bf16 on the CPU stays close to fp32."""
    args = {"t2v": ["t2v", "a red fox", "-m", ALIASES["df"]],
            "i2v": ["i2v", image_file, "a red fox", "-m", ALIASES["i2v"]],
            "extend": ["extend", "a red fox", "-m", ALIASES["df"], "--base-frames", "17", "--overlap", "5",
                       "--frames", "29"]}[command]
    small = SMALL[:4] + SMALL[6:] if command == "extend" else SMALL
    runs = {}
    for dtype in ("bf16", "fp32"):
        out = tmp_path / dtype
        result = invoke(*args, *small, "--seed", 3, "--dtype", dtype, "-o", f"{out}/", "-q")
        assert result.exit_code == 0, result.output
        assert json.loads((out / "settings.json").read_text())["model"]["dtype"] == dtype
        runs[dtype] = read_png_frames(out).astype(int)
    assert runs["bf16"].shape == runs["fp32"].shape and runs["bf16"].std() > 5
    assert np.abs(runs["bf16"] - runs["fp32"]).mean() < 8


def test_models_lists_registry_and_cache(hub_models):
    result = invoke("models")
    assert result.exit_code == 0
    for alias in ("df-1.3b-540p", "df-14b-720p", "t2v-14b-540p", "i2v-14b-720p", "flf2v-1.3b-540p", "tiny-df"):
        assert alias in result.output
    cached = next(line for line in result.output.splitlines() if line.startswith("df-1.3b-540p"))
    uncached = next(line for line in result.output.splitlines() if line.startswith("df-14b-720p"))
    assert " GB " in cached and " - " in uncached


def test_download_cached_model_works_offline(hub_models):
    result = invoke("download", "df-1.3b-540p", "-q")
    assert result.exit_code == 0, result.output
    assert str(hub_models["df"]) in result.output


def test_doctor_reports_the_machine():
    result = invoke("doctor")
    assert "torch" in result.output and "ffmpeg" in result.output and "model cache" in result.output
    assert result.exit_code in (0, 1)


def test_help_shows_examples_and_the_real_defaults():
    from skyreels_cli.models.registry import load_registry

    defaults = load_registry().defaults
    for command in ("t2v", "i2v", "extend"):
        result = runner.invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and "Examples" in result.output and "skyreels " + command in result.output
        assert f"Defaults: model {defaults[command]}" in result.output


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "notimage.png").write_text("hello")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notvideo.mp4").write_text("nope")
    return tmp_path


T2V = ["t2v", "a cat", "-m", ALIASES["df"], "--device", "cpu"]
EXT = ["extend", "a cat", "-m", ALIASES["df"], "--device", "cpu", "--frames", "45"]

# (arguments, words the one-line message must contain); paths use {d} for the test folder.
BAD_INPUT = [
    (["t2v", "a cat", "-m", "nosuchmodel", "--device", "cpu"], ["unknown model", "df-1.3b-540p"]),
    (["t2v", "   ", "-m", ALIASES["df"], "--device", "cpu"], ["prompt is empty"]),
    ([*T2V, "--frames", "0"], ["--frames", "positive"]),
    (["t2v", "a cat", "-m", ALIASES["t2v"], "--device", "cpu", "--frames", "4094"],
     ["position table", "4089", "extend"]),
    ([*T2V, "--height", "100000"], ["--height", "position table", "16384"]),
    ([*T2V, "--steps", "100000000"], ["--steps", "1000"]),
    ([*T2V, "--fps", "1000"], ["--fps", "240"]),
    ([*T2V, "--shift", "nan"], ["--shift", "finite"]),
    ([*T2V, "--guidance", "inf"], ["--guidance", "finite"]),
    ([*T2V, "--guidance", "nan"], ["--guidance", "finite"]),
    ([*T2V, "--frames", "10", "--seconds", "2"], ["disagree"]),
    ([*T2V, "--seconds", "-1"], ["--seconds", "positive"]),
    ([*T2V, "--height", "100"], ["--height", "multiple of 16", "96", "112"]),
    ([*T2V, "--steps", "0"], ["--steps", "positive"]),
    (["t2v", "a cat", "-m", ALIASES["i2v"], "--device", "cpu"], ["i2v checkpoint", "cannot run `skyreels t2v`"]),
    (["t2v", "a cat", "-m", ALIASES["df"]], ["no CUDA GPU", "take days", "--device cpu", "skyreels doctor"]),
    (["t2v", "a cat", "-m", ALIASES["df"], "--device", "cuda"], ["CUDA was asked for", "--device cpu"]),
    (["t2v", "a cat", "-m", "df-14b-540p", "--device", "cpu"], ["not in the cache", "skyreels download df-14b-540p"]),
    ([*T2V, "-o", "{d}/afile/x.mp4"], ["afile is a file, not a folder"]),
    ([*T2V, "-o", "{d}/x.avi"], ["x.avi", ".mp4"]),
    ([*T2V, "--sigma-grid", "weird"], ["--sigma-grid", "official"]),
    (["i2v", "{d}/missing.png", "go", "-m", ALIASES["i2v"], "--device", "cpu"], ["does not exist"]),
    (["i2v", "{d}/notimage.png", "go", "-m", ALIASES["i2v"], "--device", "cpu"], ["not a readable image"]),
    (["i2v", "{d}/notimage.png", "go", "-m", ALIASES["df"], "--device", "cpu"], ["cannot run `skyreels i2v`"]),
    (["extend", "a cat", "-m", ALIASES["df"], "--device", "cpu"], ["needs a length", "--frames", "--seconds"]),
    (["extend", "", "-m", ALIASES["df"], "--device", "cpu", "--frames", "45"], ["needs a prompt"]),
    ([*EXT, "--base-frames", "4097"], ["--base-frames", "position table", "4089"]),
    ([*EXT, "--base-frames", "30"], ["--base-frames", "4k+1", "29", "33"]),
    ([*EXT, "--overlap", "18"], ["--overlap", "4k+1", "17", "21"]),
    ([*EXT, "--base-frames", "17", "--overlap", "17"], ["--overlap 17", "smaller than --base-frames 17"]),
    ([*EXT, "--base-frames", "21", "--overlap", "9", "--causal-block", "2"],
     ["not a multiple of --causal-block 2", "--overlap 5 or 13"]),
    ([*EXT, "--ar-step", "-1"], ["--ar-step"]),
    ([*EXT, "--addnoise", "80"], ["--addnoise", "50"]),
    ([*EXT, "--image", "{d}/a.png", "--video", "{d}/b.mp4"], ["--image and --video"]),
    ([*EXT, "--video", "{d}/notvideo.mp4"], ["cannot read --video"]),
    ([*EXT, "--video", "{d}/missing.mp4"], ["does not exist"]),
    ([*EXT, "--end-image", "{d}/missing.png"], ["--end-image", "does not exist"]),
    (["extend", "a cat", "-m", ALIASES["t2v"], "--device", "cpu", "--frames", "45"], ["cannot run `skyreels extend`"]),
    ([*EXT, "-o", "{d}/new.mp4", "--resume"], ["no saved run to resume"]),
    ([*EXT, "--resume"], ["--resume needs the -o"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUT, ids=[" ".join(a[3:] if len(a) > 3 else a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(hub_models, bad_files, args, words, monkeypatch):
    import torch

    import skyreels_cli.core.model

    # The row that asks for CUDA must find none, even on a machine with a GPU (no full-size run);
    # and a row that got past validation fails at once instead of generating at full size.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_load(*_args, **_kwargs):
        raise AssertionError("bad input reached the model load")

    monkeypatch.setattr(skyreels_cli.core.model, "load_components", no_load)
    before = sorted(p.name for p in bad_files.rglob("*"))
    result = invoke(*[a.format(d=bad_files) for a in args])
    message = result.output.strip()
    assert result.exit_code == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    assert sorted(p.name for p in bad_files.rglob("*")) == before, "something was written"


def test_too_short_video_is_refused(hub_models, tmp_path):
    short = tmp_path / "short.mp4"
    assert invoke(*T2V, "--height", 64, "--width", 64, "--frames", 9, "--steps", 2, "-o", short, "-q").exit_code == 0
    result = invoke(*EXT, "--video", short, "--overlap", 17, "--height", 64, "--width", 64)
    assert result.exit_code == 2 and "fewer than --overlap 17" in result.output


@pytest.mark.parametrize("command,message", [
    (["t2v", "a cat"], "interrupted; nothing was written"),
    (["extend", "a cat", "--frames", "29", "--base-frames", "17"], "run the same command with --resume"),
])
def test_ctrl_c_says_what_fits_the_command(hub_models, tmp_path, monkeypatch, command, message):
    from skyreels_cli.forcing.engine import DiffusionForcingEngine

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffusionForcingEngine, "velocity", interrupted)
    result = invoke(*command, "-m", ALIASES["df"], *SMALL[:4], "--device", "cpu", "--steps", 2,
                    "-o", tmp_path / "x.mp4", "-q")
    assert result.exit_code == 130 and message in result.output
    assert "--resume" not in result.output or command[0] == "extend"
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("args,words", [
    (["t2v"], ["Missing argument", "skyreels t2v --help"]),
    (["t2v", "a cat", "--frames", "abc"], ["--frames", "whole number"]),
    (["t2v", "a cat", "--fraems", "3"], ["No such option: --fraems", "--frames"]),
    (["nope"], ["No such command", "skyreels --help"]),
])
def test_usage_errors_of_the_parser_are_one_line_too(args, words):
    exe = os.path.join(os.path.dirname(sys.executable), "skyreels")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_version():
    exe = os.path.join(os.path.dirname(sys.executable), "skyreels")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    from skyreels_cli import __version__

    assert done.returncode == 0 and done.stdout.strip() == f"skyreels {__version__}"


@pytest.mark.parametrize("command,frames,written", [
    (["t2v", "a cat"], 10, 10),
    (["extend", "a cat", "--base-frames", "17"], 50, 50),
    (["extend", "a cat", "--base-frames", "29", "--overlap", "5", "--causal-block", "2"], 49, 49),
])
def test_any_frame_count_gives_exactly_that_many_frames(hub_models, tmp_path, command, frames, written):
    out = tmp_path / "f"
    result = invoke(*command, "-m", ALIASES["df"], *SMALL[:4], "--device", "cpu", "--steps", 2, "--frames", frames,
                    "--seed", 1, "-o", f"{out}/", "-q")
    assert result.exit_code == 0, result.output
    assert len(read_png_frames(out)) == written
    assert json.loads((out / "settings.json").read_text())["request"]["frames"] == frames


def test_seconds_give_the_length_at_the_frame_rate(hub_models, tmp_path):
    out = tmp_path / "s"
    result = invoke("t2v", "a cat", "-m", ALIASES["df"], *SMALL[:4], "--device", "cpu", "--steps", 2,
                    "--seconds", 0.5, "--fps", 16, "-o", f"{out}/", "-q")
    assert result.exit_code == 0, result.output
    assert len(read_png_frames(out)) == 8


def test_a_huge_run_is_announced_with_its_estimate(hub_models, tmp_path, monkeypatch):
    huge = invoke("t2v", "a cat", "-m", ALIASES["df"], "--device", "cpu", "--height", 8192, "--width", 8192,
                  "--frames", 17, "--dry-run", "-o", tmp_path / "x.mp4")
    assert huge.exit_code == 0, huge.output
    assert re.search(r"about \d+(\.\d+)? PFLOP of transformer work, \d+d\d\dh on cpu$", huge.output.splitlines()[0])
    import skyreels_cli.core.runner as runner

    monkeypatch.setattr(runner, "LONG_RUN_S", 0)  # every run counts as long: the warning comes first
    result = invoke("t2v", "a cat", "-m", ALIASES["df"], *SMALL, "-o", tmp_path / "a.mp4")
    assert result.exit_code == 0 and "warning: this run is about" in result.output


def test_transformer_flops_match_the_reference_floor():
    from skyreels_cli.core.estimate import forward_flops
    from skyreels_cli.models.architectures import T_1_3B, T_14B

    tokens = 34 * 60 * 25  # 544x960, 97 frames: the compute floor's figures
    assert round(forward_flops(T_1_3B, tokens) / 1e15, 2) == 0.61
    assert round(forward_flops(T_14B, tokens) / 1e15, 2) == 3.37


def test_a_dry_run_writes_nothing_not_even_a_folder(hub_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["t2v", "a cat"], ["extend", "a cat", "--frames", "41"]):
        result = invoke(*args, "-m", ALIASES["df"], *SMALL[:4], "--device", "cpu", "--dry-run")
        assert result.exit_code == 0, result.output
        assert list(tmp_path.iterdir()) == [], f"{args[0]} --dry-run made {list(tmp_path.iterdir())}"


def test_the_help_shows_tables_as_written_and_the_example_file_is_valid_toml():
    import tomllib

    text = invoke("batch", "--help").output
    example = text[text.index("Example file:"):text.index("Examples:")]
    lines = [line.strip() for line in example.splitlines()[1:] if line.strip()]
    assert "[[job]]" in lines
    assert tomllib.loads("\n".join(lines))["job"][0]["command"] == "t2v"
    assert "[[shot]]" in invoke("extend", "--help").output


def test_every_commands_examples_print_one_to_a_line():
    # Typer's reflow used to join the examples of a help whose only later paragraph was its examples (info)
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "info" in commands and "t2v" in commands
    for command in commands:
        text = invoke(command, "--help").output
        if "Examples:" not in text:
            continue
        examples = [line.strip() for line in text[text.index("Examples:"):].splitlines() if "skyreels " in line]
        assert examples, f"{command} --help shows no example"
        for line in examples:
            assert line.count("skyreels ") == 1 and not line.startswith("`"), f"{command} --help: {line!r}"
