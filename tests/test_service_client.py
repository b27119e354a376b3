"""The command line as a client: `t2v|i2v|extend ... --server URL` submits the same job to a running service
(uploading its input files), follows it with the same display and downloads the video; `skyreels jobs` lists and
cancels; what cannot work remotely is one line, before anything is sent."""

import json
import os
import subprocess
import sys

import pytest

from .service_helpers import Server

pytestmark = pytest.mark.slow  # each command is a fresh process: about two minutes in all

EXE = [sys.executable, "-m", "skyreels_cli"]
TINY = ["--model", "tiny", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("client") / "state", "--model", "tiny") as server:
        yield server


def cli(*args, cwd=None, env=None):
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {})})


def one_line(done, code=2):
    message = done.stderr.strip()
    assert done.returncode == code and message.startswith("error: ") and "\n" not in message, done.stderr
    return message


def test_t2v_with_server_makes_the_video_a_local_run_makes(server, tmp_path):
    out = tmp_path / "remote.mp4"
    done = cli("t2v", "a red fox", *TINY, "--server", server.url, "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert f"submitted to {server.url}: video_" in done.stderr and "done: 17 frames" in done.stderr, done.stderr
    local = cli("t2v", "a red fox", *TINY, "-o", tmp_path / "local.mp4", "-q")
    assert local.returncode == 0, local.stderr
    assert out.read_bytes() == (tmp_path / "local.mp4").read_bytes()
    settings = json.loads((tmp_path / "remote.mp4.json").read_text())
    assert settings["request"]["seed"] == 3, "the settings come along: skyreels info and --from read them"
    info = cli("info", out)
    assert info.returncode == 0 and "seed" in info.stdout


def test_i2v_uploads_its_image_and_a_default_name_lands_in_outputs(server, tmp_path, image_file):
    done = cli("i2v", image_file, "she turns", *TINY, "--server", server.url, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / done.stdout.strip()
    assert path.parent == tmp_path / "outputs" and path.suffix == ".mp4" and path.is_file()
    assert path.with_name(path.name + ".json").is_file() and done.stderr == ""


def test_extend_follows_each_window_with_the_same_display(server, tmp_path, image_file):
    out = tmp_path / "long.mp4"
    done = cli("extend", "a fox runs", *TINY, "--image", image_file, "--frames", "41", "--base-frames", "17",
               "--overlap", "5", "--height", "48", "--width", "48", "--server", server.url, "-o", out)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    windows = [line for line in lines if line.startswith("window ")]
    assert len(windows) >= 3 and windows[0].startswith("window 1/") and "preview: http://" in windows[0], lines
    assert lines[-1].startswith("done: 41 frames")
    assert out.is_file()


@pytest.mark.parametrize("args, words", [
    (["--device", "cpu"], "--device cpu is the service's to choose"),
    (["-o", "frames/"], "give -o NAME.mp4"),
    (["--dry-run"], "--dry-run checks on this machine"),
])
def test_what_cannot_run_remotely_is_one_line_and_nothing_is_sent(server, tmp_path, args, words):
    before = len(server.call("GET", "/v1/videos?limit=100")[1]["data"])
    done = cli("t2v", "a cat", *TINY, "--server", server.url, *args, cwd=tmp_path)
    assert words in one_line(done)
    assert len(server.call("GET", "/v1/videos?limit=100")[1]["data"]) == before


def test_resume_and_an_existing_output_are_refused_before_sending(server, tmp_path):
    before = len(server.call("GET", "/v1/videos?limit=100")[1]["data"])
    assert "--resume is not needed" in one_line(cli("extend", "a cat", *TINY, "--frames", "17", "--resume",
                                                    "--server", server.url, "-o", tmp_path / "a.mp4"))
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    message = one_line(cli("t2v", "a cat", *TINY, "--server", server.url, "-o", tmp_path / "taken.mp4"))
    assert "--overwrite" in message and (tmp_path / "taken.mp4").read_bytes() == b"mine"
    assert len(server.call("GET", "/v1/videos?limit=100")[1]["data"]) == before


def test_the_services_refusal_is_one_line_naming_the_field(server):
    message = one_line(cli("t2v", "a cat", *TINY, "--frames", "-4", "--server", server.url))
    assert f"the service at {server.url} says:" in message and '"frames": -4' in message


def test_an_unreachable_service_is_one_line(tmp_path):
    message = one_line(cli("t2v", "a cat", *TINY, "--server", "http://127.0.0.1:9"))
    assert "cannot reach the service at http://127.0.0.1:9" in message and "skyreels serve" in message
    assert "cannot reach" in one_line(cli("jobs", "--server", "http://127.0.0.1:9"))


def test_jobs_lists_and_cancels(hub_models, tmp_path):
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--token", "token-for-jobs",
                token="token-for-jobs") as server:
        first = server.submit({"model": "tiny", "prompt": "a fox in the snow", "seed": 1})
        second = server.submit({"model": "tiny", "prompt": "a cat on a wall", "seed": 2})
        env = {"SKYREELS_SERVER": server.url, "SKYREELS_TOKEN": "token-for-jobs"}
        listed = cli("jobs", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = listed.stdout.splitlines()
        assert rows[0].split()[:3] == ["id", "status", "done"]
        assert rows[1].startswith(second["id"]) and "a cat on a wall" in rows[1] and "queued" in rows[1]
        assert rows[2].startswith(first["id"])
        cancelled = cli("jobs", "cancel", first["id"], "--server", server.url, env={"SKYREELS_TOKEN": "token-for-jobs"})
        assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{first['id']}: cancelled", cancelled.stderr
        assert server.job(first["id"])["status"] == "cancelled"
        assert "needs its token" in one_line(cli("jobs", "--server", server.url, env={"SKYREELS_TOKEN": ""}))
        assert "no video" in one_line(cli("jobs", "cancel", "video_nope", env=env))


# ------------------------------------------------------------------ the README's service examples, as written

def test_the_readmes_server_examples_run_against_a_service(server, tmp_path):
    from .test_readme import readme_commands

    examples = [argv for argv in readme_commands() if "--server" in argv]
    assert len(examples) >= 2
    for argv in examples:
        args = [server.url if a == "http://127.0.0.1:7860" else a for a in argv[1:]]
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stderr)
    assert (tmp_path / "dawn.mp4").is_file()


def test_the_readmes_curl_example_runs_against_a_service(server, tmp_path, image_file):
    import re
    import shutil

    from .test_readme import DOCS

    [block] = [b for b in re.findall(r"```bash\n(.*?)```", DOCS, re.S) if "curl" in b]
    shutil.copy(image_file, tmp_path / "photo.png")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("http://127.0.0.1:7860", server.url)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from .conftest import read_video

    frames, fps = read_video(tmp_path / "fox.mp4")
    assert len(frames) == 24 and fps == 24
    answers, text, decoder = [], done.stdout, json.JSONDecoder()
    while text.strip():  # curl -s ends no answer with a newline: they run together
        text = text[text.index("{"):] if "{" in text else ""
        if text:
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:]
    last = answers[-1]
    assert answers[-2]["object"] == "video" and answers[-2]["command"] == "i2v", "the multipart upload"
    assert last["error"]["param"] == "frames" and last["error"]["message"] == '"frames": -4 must be a positive number'
    assert json.dumps(last["error"]["message"]) in DOCS, "the docs show the answer as it is"
