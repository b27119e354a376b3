"""Shot lists (`extend --script`) and prompt files: one video, each window steered by its own shot's prompt.

The reference is the same run with one prompt: its first window equals the script's first shot (same
prompt, seed and layout), and every later window differs (another prompt). Which prompt each window got
is read where the engine takes it (`denoise_window`), against each prompt's own embeddings.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from skyreels_cli import Request
from skyreels_cli.core.conditioning import PromptEncoder
from skyreels_cli.core.request import Shot
from skyreels_cli.core.resolve import resolve
from skyreels_cli.core.shot_list import read_prompt_file
from skyreels_cli.core.shot_plan import shot_layout
from skyreels_cli.forcing.engine import DiffusionForcingEngine
from skyreels_cli.models.naming import resolve_model

from .conftest import ALIASES, invoke, read_png_frames

PROMPTS = ("a red fox", "the cat running", "a dog through snow")
# 64x64, windows of 17 frames (5 latents) with an overlap of 5 (2 latents): shots of 17, 12 and 20 frames
# make windows of 5, 3, 3 and 2 new latents, the same layout as one 49-frame run.
SCRIPT = f"""
model = "{ALIASES['df']}"
device = "cpu"
seed = 3
height = 64
width = 64
steps = 2
base_frames = 17
overlap = 5

[[shot]]
prompt = "{PROMPTS[0]}"
frames = 17

[[shot]]
prompt = "{PROMPTS[1]}"
seconds = 0.5   # 12 frames at 24 fps

[[shot]]
prompt = "{PROMPTS[2]}"
frames = 20
"""
ONE_PROMPT = ["extend", PROMPTS[0], "-m", ALIASES["df"], "--device", "cpu", "--seed", "3", "--height", "64",
              "--width", "64", "--steps", "2", "--base-frames", "17", "--overlap", "5", "--frames", "49", "-q"]


@pytest.fixture(scope="module")
def scripted(hub_models, tmp_path_factory):
    """The three-shot script run once, with what the engine was given and what the text encoder encoded."""
    folder = tmp_path_factory.mktemp("scripted")
    (folder / "film.toml").write_text(SCRIPT)
    seen, encoded = [], []
    denoise, encode = DiffusionForcingEngine.denoise_window, PromptEncoder.encode

    def spy_denoise(self, latents, window, cond, *args, **kwargs):
        seen.append((window.index, cond.prompt_embeds.clone()))
        return denoise(self, latents, window, cond, *args, **kwargs)

    def spy_encode(self, prompt, negative, cfg):
        out = encode(self, prompt, negative, cfg)
        encoded.append((prompt, out[0].clone()))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DiffusionForcingEngine, "denoise_window", spy_denoise)
        patch.setattr(PromptEncoder, "encode", spy_encode)
        result = invoke("extend", "--script", folder / "film.toml", "-o", f"{folder / 'film'}/", "-q")
    assert result.exit_code == 0, result.output
    return folder, seen, encoded


def test_each_window_gets_its_shots_prompt(scripted):
    _, seen, encoded = scripted
    prompts = [prompt for prompt, _ in encoded]
    assert sorted(prompts) == sorted(PROMPTS), "every shot's prompt encoded exactly once"
    embeds = dict(encoded)
    for a in PROMPTS:  # the comparison below could fail: the prompts' embeddings are not alike
        for b in PROMPTS:
            assert a == b or not torch.allclose(embeds[a], embeds[b])
    expected = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    assert [index for index, _ in seen] == [0, 1, 2, 3]
    for (index, given), prompt in zip(seen, expected):
        assert torch.equal(given, embeds[prompt]), f"window {index} did not use {prompt!r}"


def test_sidecar_says_which_frames_and_windows_belong_to_which_shot(scripted):
    folder, _, _ = scripted
    sidecar = json.loads((folder / "film" / "settings.json").read_text())
    shots = [(s["prompt"], s["first_frame"], s["frames"], s["windows"]) for s in sidecar["shots"]]
    assert shots == [(PROMPTS[0], 0, 17, [0]), (PROMPTS[1], 17, 12, [1]), (PROMPTS[2], 29, 20, [2, 3])]
    request = Request.from_dict(sidecar["request"])
    assert request.frames == 49 and [s.frames for s in request.shots] == [17, 12, 20]
    assert request.shots[1].seconds == 0.5
    assert len(read_png_frames(folder / "film")) == 49 == sidecar["run"]["frames_written"]


def test_frames_follow_the_shots_not_one_prompt(scripted, tmp_path):
    folder, _, _ = scripted
    assert invoke(*ONE_PROMPT, "-o", f"{tmp_path / 'one'}/").exit_code == 0
    ours, one = read_png_frames(folder / "film"), read_png_frames(tmp_path / "one")
    assert ours.shape == one.shape == (49, 64, 64, 3) and ours.std() > 1
    assert np.array_equal(ours[:17], one[:17]), "the first shot is what its prompt alone makes"
    for first, count in ((17, 12), (29, 20)):  # each later shot differs from the one-prompt run
        diff = np.abs(ours[first:first + count].astype(int) - one[first:first + count].astype(int))
        assert diff.mean() > 1, f"shot at frame {first} looks like the one-prompt run"


@pytest.mark.slow
def test_killed_script_run_resumes_to_identical_frames(scripted, tmp_path):
    folder, _, _ = scripted
    script = tmp_path / "film.toml"
    script.write_text(SCRIPT)
    out = f"{tmp_path / 'film'}/"
    args = [sys.executable, "-m", "skyreels_cli", "extend", "--script", str(script), "-o", out, "-q"]
    env = {**os.environ, "SKYREELS_FAULT": "window_saved:2"}  # two windows done; shot 3 still to come
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 137, done.stderr
    script.write_text(SCRIPT.replace(PROMPTS[2], "the red dog"))  # another script: refused
    refused = invoke("extend", "--script", script, "-o", out, "--resume")
    assert refused.exit_code == 2 and "shots" in refused.output and "differ" in refused.output
    script.write_text(SCRIPT)
    resumed = invoke("extend", "--script", script, "-o", out, "--resume", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert np.array_equal(read_png_frames(tmp_path / "film"), read_png_frames(folder / "film"))
    assert json.loads((tmp_path / "film" / "settings.json").read_text())["run"]["resumed"] is True


def test_flags_given_win_over_the_script(scripted, tmp_path):
    folder, _, _ = scripted
    result = invoke("extend", "--script", folder / "film.toml", "--seed", 9, "-o", tmp_path / "x.mp4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "seed 9" in result.output and "49 frames" in result.output and "4 windows" in result.output
    assert not list(tmp_path.iterdir())


BAD = {
    "no shots": ("seed = 1\n", "no shots"),
    "a shot without prompt": ('[[shot]]\nprompt = "a"\nframes = 17\n[[shot]]\nframes = 8\n', "line 4: shot 2: has no prompt"),
    "zero frames": ('[[shot]]\nprompt = "a"\nframes = 0\n', "line 3: shot 1: frames must be a positive"),
    "negative seconds": ('[[shot]]\nprompt = "a"\nseconds = -2.0\n', "line 3: shot 1: seconds must be a positive"),
    "no length": ('[[shot]]\nprompt = "a"\n', "line 1: shot 1: has no length"),
    "unknown global key": ('seed = 1\nsede = 2\n[[shot]]\nprompt = "a"\nframes = 17\n', "line 2: unknown key 'sede'"),
    "unknown shot key": ('[[shot]]\nprompt = "a"\nframes = 17\n\n[[shot]]\npromt = "b"\nframes = 8\n',
                         "line 6: unknown key 'promt' in shot 2"),
    "image after the first shot": (('[[shot]]\nprompt = "a"\nframes = 17\n[[shot]]\nprompt = "b"\nimage = "x.png"\n'
                                    'frames = 8\n'), "line 6: shot 2: image is the start image"),
    "a value of the wrong type": ('height = "64"\n[[shot]]\nprompt = "a"\nframes = 17\n', "line 1: height"),
    "not TOML": ('[[shot]]\nprompt = "a\n', "not valid TOML"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_scripts_are_one_line_errors_naming_the_line(case, tmp_path):
    text, message = BAD[case]
    script = tmp_path / "film.toml"
    script.write_text(text)
    result = invoke("extend", "--script", script, "-o", tmp_path / "x.mp4")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: film.toml") and message in lines[0], result.output
    assert [p.name for p in tmp_path.iterdir()] == ["film.toml"]


def test_a_script_with_a_prompt_argument_or_enhance_is_refused(tmp_path):
    (tmp_path / "film.toml").write_text('[[shot]]\nprompt = "a"\nframes = 17\n')
    result = invoke("extend", "a cat", "--script", tmp_path / "film.toml")
    assert result.exit_code == 2 and "leave out the PROMPT" in result.output
    result = invoke("extend", "--script", tmp_path / "film.toml", "--enhance")
    assert result.exit_code == 2 and "write each shot's prompt in full" in result.output


def test_prompt_file_gives_one_window_per_line(hub_models, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("# a story\na red fox\n\nthe cat running\n  a dog through snow  \n")
    shots = read_prompt_file(story)
    assert [s.prompt for s in shots] == list(PROMPTS)
    spec = resolve_model(ALIASES["df"], "extend")
    base = {"height": 64, "width": 64, "steps": 2, "seed": 1, "base_frames": 17, "overlap": 5, "shots": shots}
    for frames in (None, 41):  # the length follows from the lines, or must give as many windows
        r = resolve(Request(**base, frames=frames), spec)
        layout = shot_layout(r)
        assert r.frames == 41 and [s.frames for s in r.shots] == [17, 12, 12]
        assert layout.window_shot == (0, 1, 2) and [w.length for w in layout.plan.windows] == [5, 5, 5]
    with pytest.raises(Exception, match="3 prompts, one per window, but frames=97 makes 8 windows; use frames=41"):
        resolve(Request(**base, frames=97), spec)
    result = invoke("extend", "--prompt-file", story, "-m", ALIASES["df"], "--device", "cpu", "--height", 64,
                    "--width", 64, "--base-frames", 17, "--overlap", 5, "--seed", 1, "-o", tmp_path / "s.mp4",
                    "--dry-run")
    assert result.exit_code == 0 and "41 frames" in result.output and "3 windows" in result.output, result.output


def test_shots_round_trip_through_the_sidecar_dict():
    r = Request(prompt="x", shots=(Shot("a", 17), Shot("b", None, 5.0, "blurry", 2.0)))
    again = Request.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r and again.differences(r) == [] and isinstance(again.shots[1], Shot)
    assert r.to_dict()["shots"][1] == {"prompt": "b", "frames": None, "guidance": 5.0, "negative_prompt": "blurry",
                                       "seconds": 2.0}


def test_cuts_round_up_to_whole_blocks_and_short_first_shots_are_refused(hub_models):
    spec = resolve_model(ALIASES["df"], "extend")
    base = {"height": 64, "width": 64, "steps": 2, "seed": 1, "base_frames": 41, "overlap": 9}
    r = resolve(Request(**base, shots=(Shot("a", 21), Shot("b", 10), Shot("c", 30))), spec)
    layout = shot_layout(r)
    # 21 frames = 6 latents; 10 more round up to 3 latents (12 frames); the last shot ends the video at 61.
    assert layout.ranges == ((0, 21), (21, 12), (33, 28)) and r.frames == 61
    assert all(w.new > 0 for w in layout.plan.windows) and layout.window_shot[0] == 0
    blocks = resolve(Request(**base, causal_block=3, shots=(Shot("a", 17), Shot("b", 8))), spec)
    assert all(w.new % 3 == 0 for w in shot_layout(blocks).plan.windows)
    with pytest.raises(Exception, match="shot 1 is 5 frames, shorter than the 9 frames"):
        resolve(Request(**base, shots=(Shot("a", 5), Shot("b", 40))), spec)
