"""Messages say what is really wrong, and how to fix it: one line each, exit code 2, nothing written.

Each test here failed before the fix it covers (the item numbers are those of the fault list it came with).
"""

import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.errors import InputFileError, SkyreelsWarning, UsageError

runner = CliRunner()
TINY = ["-m", "tiny", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *words, absent=()):
    """The result of a refused command: exit 2, a single `error: ` line holding `words` and none of `absent`."""
    message = result.output.strip()
    assert result.exit_code == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    for word in absent:
        assert word not in message, (word, message)
    return message


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@contextmanager
def no_skyreels_warning():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", SkyreelsWarning)
        yield
    assert not [w for w in seen if issubclass(w.category, SkyreelsWarning)], [str(w.message) for w in seen]


def write_video(path: Path, width: int, height: int, frames: int = 20) -> Path:
    from skyreels_cli.media.ffmpeg import ffmpeg

    writer = ffmpeg().write_frames(str(path), (width, height), fps=24, macro_block_size=1, quality=None,
                                   output_params=["-crf", "20"])
    writer.send(None)
    for i in range(frames):
        writer.send(np.full((height, width, 3), 10 * i, np.uint8).tobytes())
    writer.close()
    return path


HAS_DEV_ZERO = os.path.exists("/dev/zero")


# ------------------------------------------------------------ 1: input paths that are not files

EXTEND = ["extend", "a cat", *TINY, "--frames", "45", "--dry-run"]
NOT_FILES = [
    (["i2v", "{d}", "go", *TINY, "--dry-run"], ["IMAGE", "is a folder"]),
    (["i2v", "/dev/zero", "go", *TINY, "--dry-run"], ["IMAGE /dev/zero", "not a regular file", "PNG or JPEG"]),
    ([*EXTEND, "--image", "{d}"], ["--image", "is a folder", "PNG or JPEG"]),
    ([*EXTEND, "--end-image", "{d}"], ["--end-image", "is a folder"]),
    ([*EXTEND, "--end-image", "/dev/zero"], ["--end-image /dev/zero", "not a regular file"]),
    ([*EXTEND, "--video", "{d}"], ["--video", "is a folder", "video file"]),
    ([*EXTEND, "--video", "/dev/zero"], ["--video /dev/zero", "not a regular file", "video file"]),
]


@pytest.mark.parametrize("args,words", NOT_FILES, ids=[" ".join(a[:2] + a[-2:]) for a, _ in NOT_FILES])
def test_a_folder_or_a_device_given_as_input_is_named_as_such(tmp_path, args, words):
    if "/dev/zero" in args and not HAS_DEV_ZERO:
        pytest.skip("no /dev/zero here")
    folder = tmp_path / "frames"
    folder.mkdir()
    before = files_in(tmp_path)
    result = invoke(*[a.format(d=folder) for a in args], "-o", tmp_path / "out.mp4")
    one_line_error(result, *words, absent=["does not exist"])
    assert files_in(tmp_path) == before, "something was written"


@pytest.mark.parametrize("make,words", [
    (lambda d: d, ["is a folder"]),
    (lambda d: d / "missing.png", ["does not exist"]),
    (lambda d: Path("/dev/zero"), ["not a regular file", "a device"]),
])
def test_load_image_says_what_the_path_is(tmp_path, make, words):
    from skyreels_cli.media.images import load_image

    path = make(tmp_path)
    if str(path) == "/dev/zero" and not HAS_DEV_ZERO:
        pytest.skip("no /dev/zero here")
    with pytest.raises(InputFileError) as refused:
        load_image(path, "--image")
    for word in words:
        assert word in str(refused.value)


# ------------------------------------------------------------ 2: info names itself, and refuses non-videos plainly

def test_info_on_a_missing_file_talks_about_info_not_from(tmp_path):
    message = one_line_error(invoke("info", tmp_path / "missing.mp4"), "info", "missing.mp4", "does not exist",
                             absent=["--from"])
    assert "give a video, a PNG frames folder or a settings JSON" in message


def test_from_still_names_from(tmp_path):
    one_line_error(invoke("t2v", "--from", tmp_path / "missing.mp4"), "--from", "does not exist")


def _text_as_mp4(d: Path) -> Path:
    (d / "notes.mp4").write_text("these are notes, not a video\n")
    return d / "notes.mp4"


def _png(d: Path) -> Path:
    Image.new("RGB", (16, 16)).save(d / "still.png")
    return d / "still.png"


@pytest.mark.parametrize("make,words", [
    (_text_as_mp4, ["notes.mp4 is not a video skyreels can read"]),
    (_png, ["still.png is an image, not a video"]),
])
def test_info_on_a_file_that_is_not_a_video_is_one_plain_line(tmp_path, make, words):
    path = make(tmp_path)
    for command in (["info", path], ["t2v", "--from", path, "-o", tmp_path / "x.mp4"]):
        message = one_line_error(invoke(*command), *words)
        for ffmpeg_talk in ("moov", "[in#", "Invalid data", "ffmpeg"):
            assert ffmpeg_talk not in message, message
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------ 3: one definition of brightness drift

def _settings_json(tmp_path: Path, colour: list[dict]) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({
        "skyreels": "0", "request": {"prompt": "a fox", "seed": 1},
        "model": {"alias": "tiny-df", "kind": "df", "repo": "skyreels-tiny/df", "dtype": "fp32", "device": "cpu"},
        "run": {"frames_written": 17, "timings_s": {}, "output": "x.mp4", "colour": colour},
    }))
    return path


def _window(index: int, level: float) -> dict:
    return {"window": index, "first_frame": 10 * index, "mean": [level, level, level], "std": [20.0, 20.0, 20.0]}


@pytest.mark.parametrize("levels,words", [
    # the first window is the outlier drift() leaves out: the old first-to-last difference said -14.0
    ((120, 100, 102, 104, 106), ["6.0 levels (brighter)"]),
    ((100, 110, 105, 100), ["10.0 levels (darker)"]),
    ((90, 100, 100, 100), ["0.0 levels (steady)"]),
])
def test_info_prints_the_drift_media_colour_defines(tmp_path, levels, words):
    from skyreels_cli.media.colour import drift

    records = [_window(i, v) for i, v in enumerate(levels)]
    result = invoke("info", _settings_json(tmp_path, records))
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "brightness drift" in line]
    assert f"{drift(records):.1f} levels" in line, line
    for word in words:
        assert word in line, line


def test_info_does_not_measure_drift_from_two_windows(tmp_path):
    result = invoke("info", _settings_json(tmp_path, [_window(0, 100), _window(1, 140)]))
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "brightness drift" in line]
    assert "not measured" in line and "40" not in line


# ------------------------------------------------------------ 4: a LoRA scale that is not a number

@pytest.mark.parametrize("scale,words", [
    ("abc", ["'abc'", "not a number"]),
    ("1,5", ["'1,5'", "not a number"]),
    ("", ["no scale"]),
])
def test_lora_scale_that_is_not_a_number_says_so(tmp_path, scale, words):
    from skyreels_cli.models.lora import parse_lora

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"0" * 16)
    with pytest.raises(UsageError) as refused:
        parse_lora(f"{lora}:{scale}")
    message = str(refused.value)
    assert "no such file" not in message and f"loras='{lora}:0.8'" in message
    for word in words:
        assert word in message
    one_line_error(invoke("t2v", "a cat", *TINY, "--dry-run", "--lora", f"{lora}:{scale}"), *words,
                   absent=["no such file"])


def test_lora_scales_and_paths_still_parse(tmp_path):
    from skyreels_cli.models.lora import LoraSpec, parse_lora

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"0" * 16)
    assert parse_lora(f"{lora}:0.5") == LoraSpec(str(lora), 0.5)
    assert parse_lora(str(lora)) == LoraSpec(str(lora))
    assert parse_lora("C:\\loras\\x.safetensors") == LoraSpec("C:\\loras\\x.safetensors")
    assert parse_lora("org/name:-1.5e-1").scale == -0.15


# ------------------------------------------------------------ 5: plan --vram must be a positive finite number

@pytest.mark.parametrize("vram", ["inf", "nan", "0", "-8", "-inf"])
def test_plan_refuses_a_vram_that_plans_nothing(vram):
    one_line_error(invoke("plan", "df-1.3b-540p", "--vram", vram), "--vram", "positive", "e.g. --vram 24")


# ------------------------------------------------------------ 6: the parser's bad numbers, in plain words

BAD_NUMBERS = [
    (["t2v", "a cat", "--frames", "1e9"], "--frames '1e9' is not a whole number; e.g. --frames 97"),
    (["t2v", "a cat", "-f", "2.5"], "--frames '2.5' is not a whole number; e.g. --frames 97"),
    (["t2v", "a cat", "--steps", "many"], "--steps 'many' is not a whole number; e.g. --steps 30"),
    (["t2v", "a cat", "--seed", "x"], "--seed 'x' is not a whole number; e.g. --seed 42"),
    (["t2v", "a cat", "--guidance", "abc"], "--guidance 'abc' is not a number; e.g. --guidance 6.0"),
    (["extend", "a cat", "--base-frames", "ten"], "--base-frames 'ten' is not a whole number; e.g. --base-frames 97"),
    (["plan", "tiny-df", "--vram", "lots"], "--vram 'lots' is not a number; e.g. --vram 24"),
]


@pytest.mark.parametrize("args,expected", BAD_NUMBERS, ids=[" ".join(a[-2:]) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_plain_in_process(args, expected):
    result = invoke(*args)  # Typer's own error display, as CliRunner runs it
    assert result.exit_code == 2
    assert expected in result.output and "Input should be" not in result.output, result.output


@pytest.mark.parametrize("args,expected", BAD_NUMBERS[::3], ids=[" ".join(a[-2:]) for a, _ in BAD_NUMBERS[::3]])
def test_bad_numbers_are_plain_from_the_installed_command(args, expected):
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", *args], capture_output=True, text=True, timeout=120)
    message = done.stderr.strip()
    assert done.returncode == 2 and done.stdout == ""
    assert message == f"error: {expected}; see skyreels {args[0]} --help", message


# ------------------------------------------------------------ 7: suggested frame counts are accepted ones

@pytest.mark.parametrize("option,value,suggested", [
    ("base_frames", 2, [5]), ("base_frames", 3, [5]), ("base_frames", 4, [5]),
    ("base_frames", 6, [5, 9]), ("base_frames", 30, [29, 33]),
    ("overlap", 3, [1, 5]), ("frames", 3, [1, 5]),
])
def test_check_frames_suggests_the_nearest_valid_counts(option, value, suggested):
    from skyreels_cli.forcing.frames import check_frames

    with pytest.raises(UsageError) as refused:
        check_frames(value, option)
    assert str(refused.value).endswith("use " + " or ".join(map(str, suggested))), str(refused.value)


@pytest.mark.parametrize("base", [2, 3, 4])
def test_every_base_frames_suggestion_runs(tmp_path, base):
    import re

    message = one_line_error(invoke("extend", "a cat", *TINY, "--frames", "45", "--base-frames", base, "--dry-run",
                                    "-o", tmp_path / "x.mp4"), "--base-frames", "4k+1")
    suggestions = [int(n) for n in re.findall(r"\d+", message.rsplit("use ", 1)[1])]
    assert suggestions and 1 not in suggestions
    for count in suggestions:
        result = invoke("extend", "a cat", *TINY, "--frames", "45", "--base-frames", count, "--dry-run",
                        "-o", tmp_path / "x.mp4")
        assert result.exit_code == 0, result.output


# ------------------------------------------------------------ 8: -o with control characters

@pytest.mark.parametrize("name,word", [
    ("a\nb.mp4", "a newline"), ("x\t.mp4", "a tab"), ("\x1b[31mred.mp4", "an escape character"),
    ("c\r.mp4", "a carriage return"), ("d\x7f.mp4", "U+007F"), ("frames\n/", "a newline"),
])
def test_output_names_with_control_characters_are_refused(tmp_path, name, word):
    before = files_in(tmp_path)
    one_line_error(invoke("t2v", "a cat", *TINY, "--dry-run", "-o", f"{tmp_path}/{name}"), "-o", word,
                   "control characters")
    assert files_in(tmp_path) == before, "something was written"


# ------------------------------------------------------------ 9: download tiny builds every tiny kind it covers

def test_download_tiny_builds_and_rebuilds_every_kind_of_the_family(tmp_path, monkeypatch):
    from skyreels_cli.models import hub
    from skyreels_cli.models.registry import load_registry

    monkeypatch.setattr(hub, "tiny_root", lambda: tmp_path / "tiny")
    family = load_registry().families["tiny"]
    kinds = sorted({load_registry().models[alias].kind for alias in family.values()})
    assert len(kinds) > 1  # df (t2v, extend) and i2v
    result = invoke("download", "tiny", "-q")
    assert result.exit_code == 0, result.output
    for kind in kinds:
        assert (tmp_path / "tiny" / kind / "model_index.json").is_file(), kind
        (tmp_path / "tiny" / kind / "marker").write_text("old")
    for alias in dict.fromkeys(family.values()):
        assert f"{alias}: {tmp_path / 'tiny'}" in result.output
    result = invoke("download", "--force", "tiny", "-q")
    assert result.exit_code == 0, result.output
    for kind in kinds:
        assert (tmp_path / "tiny" / kind / "model_index.json").is_file()
        assert not (tmp_path / "tiny" / kind / "marker").exists(), f"{kind} was not rebuilt"


# ------------------------------------------------------------ 10: doctor sums up, and a CPU-only machine is fine

def test_doctor_without_a_gpu_is_ready_for_the_tiny_models(monkeypatch):
    import torch

    from skyreels_cli.models.hub import tiny_root

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("doctor")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0, result.output
    assert lines[-1] == "ready for the tiny models on the CPU; no GPU: the released models need CUDA"
    assert any(line.startswith("tiny models") and str(tiny_root()) in line for line in lines), result.output


def test_doctor_with_a_gpu_says_the_released_models_run(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (20 * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Test GPU")
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "ready for the released models on 2 GPUs and the tiny models on " \
                                                     "the CPU"


def test_doctor_without_ffmpeg_is_not_ready(monkeypatch):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("no ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    result = invoke("doctor")
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("not ready: ") and "ffmpeg is missing" in last, last


# ------------------------------------------------------------ 11: warnings for silent surprises

def _image(tmp_path: Path, width: int, height: int) -> Path:
    path = tmp_path / f"img{width}x{height}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("size,words", [
    ((1, 1), ["is 1x1", "scaled up 80 times", "centre-cropped to 80x48", "blurry", "at least 80x48"]),
    ((10000, 10), ["is 10000x10", "centre-cropped to 80x48", "% of its width"]),
    ((10, 4000), ["is 10x4000", "centre-cropped to 80x48", "% of its height"]),
])
def test_a_tiny_or_extreme_image_is_told_with_its_sizes(tmp_path, size, words):
    from skyreels_cli.media.images import fit_image, load_image

    with pytest.warns(SkyreelsWarning) as told:
        fitted = fit_image(load_image(_image(tmp_path, *size), "--image"), 48, 80)
    assert fitted.size == (80, 48)
    [message] = [str(w.message) for w in told if issubclass(w.category, SkyreelsWarning)]
    assert message.startswith("--image ") and "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_an_ordinary_image_is_fitted_silently(tmp_path):
    from skyreels_cli.media.images import fit_image, load_image

    with no_skyreels_warning():
        fit_image(load_image(_image(tmp_path, 96, 64)), 48, 80)  # a little cut, a little scaled: expected


def test_an_animated_gif_says_only_its_first_frame_is_used(tmp_path):
    from skyreels_cli.media.images import fit_image, load_image

    frames = [Image.new("RGB", (80, 48), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.warns(SkyreelsWarning, match=r"moving.gif is an animated image of 3 frames: only its first frame"):
        fitted = fit_image(load_image(tmp_path / "moving.gif"), 48, 80)
    assert np.asarray(fitted)[..., 0].max() == 0  # the first frame (black)


def test_i2v_with_a_tiny_image_warns_on_stderr(tmp_path):
    out = tmp_path / "x.mp4"
    result = invoke("i2v", _image(tmp_path, 1, 1), "a cat", *TINY, "--steps", 1, "--frames", 5, "--width", 80,
                    "--height", 48, "-o", out)
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert "is 1x1" in line and "80x48" in line and out.is_file()


def test_a_continued_video_of_another_size_is_told_from_what_to_what(tmp_path):
    video = write_video(tmp_path / "small.mp4", 100, 60)
    result = invoke("extend", "a cat", *TINY, "--frames", 20, "--overlap", 5, "--video", video, "--dry-run",
                    "-o", tmp_path / "x.mp4")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert "--video" in line and "from 100x60 to 80x48" in line and "--width 96 --height 64" in line, line


def test_a_continued_video_of_the_output_size_is_not_told(tmp_path):
    video = write_video(tmp_path / "same.mp4", 96, 64)
    result = invoke("extend", "a cat", *TINY, "--frames", 20, "--overlap", 5, "--video", video, "--dry-run",
                    "-o", tmp_path / "x.mp4")
    assert result.exit_code == 0 and "warning:" not in result.output, result.output


class _Placement:
    device = text_encoder_device = "cpu"

    @contextmanager
    def encoding(self):
        yield


class _Pipe:
    """What PromptEncoder uses of a pipeline: the tokenizer, and encode_prompt (no text encoder needed)."""

    def __init__(self):
        from skyreels_cli.models.tiny import _tokenizer

        self.tokenizer = _tokenizer()

    def encode_prompt(self, prompt, negative_prompt, do_classifier_free_guidance, max_sequence_length, device):
        import torch

        return torch.zeros(1, max_sequence_length, 4), torch.zeros(1, max_sequence_length, 4)


@pytest.mark.parametrize("words,cut", [(600, 89), (511, None), (20, None)])
def test_a_prompt_longer_than_the_text_encoder_reads_is_told(words, cut):
    import torch

    from skyreels_cli.core.conditioning import PromptEncoder

    encoder = PromptEncoder(_Pipe(), _Placement())
    prompt = " ".join(["fox"] * words)  # one token a word, plus the end token
    if cut is None:
        with no_skyreels_warning():
            encoder(prompt, "blurry", 5.0, torch.float32)
        return
    with pytest.warns(SkyreelsWarning) as told:
        encoder(prompt, "blurry", 5.0, torch.float32)
    [message] = [str(w.message) for w in told if issubclass(w.category, SkyreelsWarning)]
    assert f"{words + 1} tokens" in message and "512" in message and f"last {cut}" in message, message


# ------------------------------------------------------------ 12: one way to write sizes; plan's header names

def test_plan_table_names_every_column_once(capsys):
    from skyreels_cli.cli.plan import _table
    from skyreels_cli.runtime.memory import MemoryPlan

    phases = {"text": 2e9, "image": 1e9, "denoise": 5e9, "decode": 3e9}
    row = SimpleNamespace(plan=MemoryPlan(), phases=phases, fits=True, chosen=True, note="", peak_gb=6.5, host_gb=12.0)
    _table("df-1.3b-540p", [row])
    head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("offload"))
    names = head.split()
    assert len(names) == len(set(names)), head
    assert {"text", "decode"} <= set(names)


def test_messages_write_sizes_width_x_height(tmp_path):
    """The sizes a run prints (Job.describe, warnings) put the width first: a 100 wide, 60 high video is 100x60."""
    video = write_video(tmp_path / "wide.mp4", 100, 60)
    result = invoke("extend", "a cat", *TINY, "--frames", 20, "--overlap", 5, "--video", video, "--dry-run",
                    "--width", 96, "--height", 48, "-o", tmp_path / "x.mp4")
    assert result.exit_code == 0, result.output
    assert "tiny-df, 96x48," in result.output and "is 100x60" in result.output and "to 96x48" in result.output
