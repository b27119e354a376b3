"""Jobs through the library: one `Job` type that round-trips, a `Model` that many callers share (threads, a
stream read beside a generate), cancel from another thread then resume to the same bytes, and the Python API's
wrong inputs as `sk.SkyreelsError`s that say how to fix them."""

import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import skyreels_cli as sk

from .conftest import ALIASES, frames_of, mean_levels, read_png_frames

SMALL = dict(height=64, width=64, steps=2)
LONG = sk.Request(prompt="a red fox", frames=41, base_frames=17, seed=6, **SMALL)  # three windows


@pytest.fixture(scope="module")
def df_model(hub_models):
    return sk.load(ALIASES["df"], device="cpu", progress=False)


# ------------------------------------------------------------------ the Job type

def full_job() -> sk.Job:
    request = sk.Request(prompt="a fox", negative_prompt="blur", frames=57, seed=9, base_frames=17, ar_step=2,
                         causal_block=2, causal_attention=True, shots=(sk.Shot("a fox", 17), sk.Shot("a cat", 40)),
                         image="start.png", color_match="latent", **SMALL)
    load = sk.LoadOptions(device="cpu", dtype="bf16", offload="group", quantize="fp8", cfg="batched", tiled_decode=True,
                          text_encoder_device="cpu", vram_gb=23.5, attention="sdpa", compile=True,
                          loras=("style.safetensors:0.5", "org/name"), ulysses=2, ring=1)
    return sk.Job("extend", request, model="df-1.3b-540p", load=load, output="fox.mp4", output_dir="films",
                  overwrite=True, resume=False, enhance="qwen2.5-3b", tag_names={"/srv/start.png": "input_reference"})


@pytest.mark.parametrize("job", [sk.Job("t2v", sk.Request(prompt="a cat")), full_job()], ids=["plain", "every field"])
def test_a_job_round_trips_exactly_through_json(job):
    data = json.loads(json.dumps(job.to_dict()))
    assert data["version"] == 1 and data["load"]["version"] == 1 and data["request"]["version"] == 1
    back = sk.Job.from_dict(data)
    assert back == job and back.to_dict() == job.to_dict()
    assert sk.LoadOptions.from_dict(data["load"]) == job.load


def test_the_tag_names_what_a_job_says_in_place_of_server_paths():
    """`Job.tag_names` (a service's): the video's tag says each name where the path was, the longest path first
    (an upload inside the state folder is its field, not "folder/uploads/..."); the sidecar's metadata is not
    touched. A job whose names are not text is refused by name."""
    from skyreels_cli.core.prepare import public_metadata

    metadata = {"request": {"image": "/srv/s\\x/uploads/a.png", "prompt": "a fox"}, "live": {"hls": "/srv/s\\x/v"}}
    names = {"/srv/s\\x": "(the service's folder)", "/srv/s\\x/uploads/a.png": "input_reference"}
    tag = public_metadata(metadata, names)
    assert tag == {"request": {"image": "input_reference", "prompt": "a fox"}, "live": {"hls": "(the service's folder)/v"}}
    assert metadata["request"]["image"] == "/srv/s\\x/uploads/a.png" and public_metadata(metadata, {}) == metadata
    with pytest.raises(sk.UsageError, match="tag_names") as err:
        sk.Job("t2v", sk.Request(prompt="a"), tag_names={"/srv": 3})
    assert err.value.field == "tag_names"


@pytest.mark.parametrize("where, data, name", [
    ("job", {"command": "t2v", "request": {"prompt": "a"}, "outptu": "x.mp4"}, "outptu"),
    ("load", {"command": "t2v", "request": {"prompt": "a"}, "load": {"ofload": "group"}}, "ofload"),
    ("request", {"command": "t2v", "request": {"prompt": "a", "framez": 9}}, "framez"),
])
def test_unknown_keys_are_refused_by_name(where, data, name):
    with pytest.raises(sk.UsageError, match=repr(name)) as err:
        sk.Job.from_dict(data)
    assert "\n" not in str(err.value)


def test_the_cli_and_a_python_caller_build_the_same_job(tmp_path):
    from skyreels_cli.cli.jobs import JobFlags, build_job

    flags = JobFlags("extend", {"prompt": "a fox", "frames": 41, "base_frames": 17, "seed": 3}, {"device": "cpu",
                     "offload": "auto", "loras": ()}, "tiny", str(tmp_path / "a.mp4"), False, True, None, None, True,
                     False)
    python = sk.Job("extend", sk.Request(prompt="a fox", frames=41, base_frames=17, seed=3), model="tiny",
                    load=sk.LoadOptions(device="cpu"), output=str(tmp_path / "a.mp4"), resume=True)
    assert build_job(flags) == python


# ------------------------------------------------------------------ one model, many callers

def fresh_process_frames(requests: list[sk.Request], tmp_path: Path) -> list[np.ndarray]:
    """Each request's frames made by a new process that loads the model for it alone."""
    script = (
        "import sys, json, numpy as np, skyreels_cli as sk\n"
        f"m = sk.load({ALIASES['df']!r}, device='cpu', progress=False)\n"
        "for i, r in enumerate(json.loads(sys.argv[1])):\n"
        "    np.save(f'{sys.argv[2]}/{i}.npy', np.concatenate([w.frames for w in m.stream(sk.Request.from_dict(r))]))\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps([r.to_dict() for r in requests]), str(tmp_path)],
                   check=True, timeout=600)
    return [np.load(tmp_path / f"{i}.npy") for i in range(len(requests))]


def test_two_threads_share_one_model_and_each_gets_a_fresh_process_frames(df_model, tmp_path):
    requests = [replace(LONG, prompt="a red fox", seed=1), replace(LONG, prompt="the dog running through snow", seed=2)]
    expected = fresh_process_frames(requests, tmp_path)
    assert mean_levels(*expected) > 2, "the two requests differ: a mix-up between the threads would show"
    results, errors = {}, []
    both_inside = threading.Barrier(2)

    def make(i: int) -> None:
        try:
            both_inside.wait(timeout=60)  # both start together: the model serialises them
            out = tmp_path / f"thread{i}"
            results[i] = df_model.generate(requests[i], output=f"{out}/")
        except Exception as err:  # noqa: BLE001  reported below, on the test's thread
            errors.append(err)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for i in range(2):
        assert np.array_equal(read_png_frames(results[i].path), expected[i]), f"thread {i}'s frames"


def test_a_stream_read_beside_generate_calls_is_independent_of_them(df_model, tmp_path):
    alone = frames_of(df_model, LONG)
    other = replace(LONG, prompt="the cat", seed=11, frames=17)
    stream = df_model.stream(LONG)
    first = next(stream)  # window 1 of 3, then another run on the same model, same thread
    made = df_model.generate(other, output=f"{tmp_path / 'other'}/")
    rest = list(stream)
    assert np.array_equal(np.concatenate([first.frames, *[w.frames for w in rest]]), alone)
    assert np.array_equal(read_png_frames(made.path), frames_of(df_model, other))


# ------------------------------------------------------------------ cancel, then resume

def test_cancel_mid_window_keeps_the_finished_windows_and_resume_gives_the_same_bytes(df_model, tmp_path):
    whole = df_model.generate(LONG, output=tmp_path / "whole.mp4")
    cancel = sk.Cancel()
    seen = []

    def on_event(event) -> None:
        seen.append(event)
        if isinstance(event, sk.StepDone) and (event.window, event.step) == (1, 1):
            cancel.cancel()  # what another thread would do: the run stops at its next step check

    out = tmp_path / "cut.mp4"
    with pytest.raises(sk.Cancelled, match="resume=True"):
        df_model.generate(LONG, output=out, cancel=cancel, on_event=on_event)
    windows_done = [e.window for e in seen if isinstance(e, sk.WindowDone)]
    assert windows_done == [0] and not out.exists(), "stopped in window 2; nothing under the final name"
    assert (tmp_path / ".cut.mp4.skyreels").is_dir(), "the finished window is kept"
    resumed = df_model.generate(LONG, output=out, resume=True)
    assert resumed.resumed and out.read_bytes() == whole.path.read_bytes()


def test_cancel_from_another_thread_stops_a_clip_and_writes_nothing(df_model, tmp_path):
    cancel = threading.Event()
    started = threading.Event()

    def on_event(event) -> None:
        if isinstance(event, sk.StepDone):
            started.set()
            cancel.wait(timeout=60)  # hold the first step until the other thread has cancelled

    def cancel_soon() -> None:
        started.wait(timeout=60)
        cancel.set()

    other = threading.Thread(target=cancel_soon)
    other.start()
    out = tmp_path / "clip.mp4"
    with pytest.raises(sk.Cancelled):
        df_model.generate(replace(LONG, frames=17), output=out, cancel=cancel, on_event=on_event)
    other.join(timeout=60)
    assert not out.exists() and not (tmp_path / "clip.partial.mp4").exists()


# ------------------------------------------------------------------ the Python API's wrong inputs

@pytest.mark.parametrize("fields, words", [
    ({"prompt": 5}, ["prompt must be text, got 5"]),
    ({"prompt": "a", "frames": "ten"}, ["frames must be a whole number, got 'ten'"]),
    ({"prompt": "a", "frames": 17.5}, ["frames must be a whole number, got 17.5"]),
    ({"prompt": "a", "frames": 17.0}, ["give 17"]),
    ({"prompt": "a", "causal_attention": "yes"}, ["causal_attention must be True or False"]),
    ({"prompt": "a", "shots": [{"prompt": 5}]}, ["shot 1: prompt must be text"]),
])
def test_wrong_types_are_skyreels_errors_naming_the_field(fields, words):
    with pytest.raises(sk.SkyreelsError) as err:
        sk.Request(**fields)
    assert all(word in str(err.value) for word in words), str(err.value)
    assert err.value.field == next(iter(k for k in fields if k != "prompt"), "prompt")


def test_generate_refuses_a_dict_and_messages_speak_python(df_model, tmp_path):
    with pytest.raises(sk.UsageError, match=r"sk.Request\(prompt=...\)"):
        df_model.generate({"prompt": "a cat"})
    with pytest.raises(sk.UsageError, match=r"frames=-4") as err:
        df_model.resolve(sk.Request(prompt="a cat", frames=-4))
    assert "--" not in str(err.value), "no command-line flags in a Python caller's message"
    (tmp_path / "x.mp4").write_bytes(b"taken")
    with pytest.raises(sk.OutputError, match="overwrite=True"):
        df_model.generate(sk.Request(prompt="a cat", frames=5, **SMALL), output=tmp_path / "x.mp4")
    with pytest.raises(sk.UsageError, match="'ofload'"):
        sk.load(ALIASES["df"], device="cpu", ofload="group")


def test_a_job_for_another_model_or_other_options_is_refused(df_model):
    with pytest.raises(sk.ModelError, match="the job is for model"):
        df_model.generate(sk.Job("t2v", sk.Request(prompt="a"), model=ALIASES["t2v"]))
    with pytest.raises(sk.UsageError, match="quantize='fp8'"):
        df_model.generate(sk.Job("t2v", sk.Request(prompt="a"), load=sk.LoadOptions(quantize="fp8")))


def test_the_cli_runs_under_python_oo():
    """Docstrings are gone under -OO: the help must still build (it appended to them)."""
    done = subprocess.run([sys.executable, "-OO", "-m", "skyreels_cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "t2v" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-OO", "-m", "skyreels_cli", "extend", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--base-frames" in done.stdout, done.stderr


def test_a_shot_list_reads_into_the_job_the_cli_would_run(tmp_path):
    from skyreels_cli.cli.jobs import JobFlags, build_job

    (tmp_path / "film.toml").write_text('seed = 7\nheight = 64\nwidth = 64\n[[shot]]\nprompt = "a fox"\nframes = 17\n'
                                        '[[shot]]\nprompt = "a cat"\nseconds = 0.5\n')
    job = sk.read_script(tmp_path / "film.toml").job(output=str(tmp_path / "film.mp4"), device="cpu")
    assert job.command == "extend" and [s.prompt for s in job.request.shots] == ["a fox", "a cat"]
    assert (job.request.seed, job.load.device, job.output) == (7, "cpu", str(tmp_path / "film.mp4"))
    flags = JobFlags("extend", {}, {"device": "cpu"}, None, str(tmp_path / "film.mp4"), False, False, None, None,
                     True, False, str(tmp_path / "film.toml"))
    assert build_job(flags) == job
