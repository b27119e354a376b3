"""`skyreels batch`: every job run, each model loaded once, a failing job reported while the others go on."""

import json

import pytest
from typer.testing import CliRunner

import skyreels_cli.core.model as core_model
from skyreels_cli.cli import app
from skyreels_cli.cli.batch import _command_options
from skyreels_cli.core.batch import in_model_order, load_batch
from skyreels_cli.media.videos import read_video

from .conftest import ALIASES

runner = CliRunner()
JOBS = f"""
model = "{ALIASES['df']}"   # defaults for every job
height = 64
width = 64
steps = 2
seed = 4
base_frames = 17            # extend only: the t2v job skips it

[[job]]
command = "extend"
prompt = "a red fox"
frames = 21
output = "fox.mp4"

[[job]]
command = "extend"
image = "missing.png"       # fails: the others still run
prompt = "the cat running"
frames = 17
output = "cat.mp4"

[[job]]
command = "t2v"
prompt = "a dog through snow"
frames = 5
seed = 8
output = "dog/"
"""


@pytest.fixture
def loads(monkeypatch):
    """Every real model load, by model."""
    calls = []
    real = core_model.load

    def counted(model=None, **kwargs):
        calls.append(getattr(model, "alias", model))
        return real(model, **kwargs)

    monkeypatch.setattr(core_model, "load", counted)
    return calls


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_failing_job_is_reported_and_the_others_run(hub_models, tmp_path, loads):
    (tmp_path / "jobs.toml").write_text(JOBS)
    result = invoke("batch", tmp_path / "jobs.toml", "--device", "cpu", "-q")
    assert result.exit_code == 1, result.output
    assert loads == [ALIASES["df"]], "one model, loaded once for every job"
    frames, _ = read_video(tmp_path / "fox.mp4")
    assert frames.shape == (21, 64, 64, 3) and frames.std() > 1
    assert len(list((tmp_path / "dog").glob("*.png"))) == 5
    assert not (tmp_path / "cat.mp4").exists()
    fox = json.loads((tmp_path / "fox.mp4.json").read_text())["request"]
    dog = json.loads((tmp_path / "dog" / "settings.json").read_text())["request"]
    assert (fox["seed"], fox["base_frames"], dog["seed"], dog["height"]) == (4, 17, 8, 64)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    missing = tmp_path / "missing.png"
    assert errors == [f"error: job 2 (extend): --image {missing} does not exist; give the path of a PNG or JPEG file"]
    table = result.output[result.output.index("job  command"):].splitlines()
    assert [row.split()[:3] for row in table[1:4]] == [["1", "extend", "done"], ["2", "extend", "failed"],
                                                        ["3", "t2v", "done"]]
    assert table[-1] == "2 of 3 jobs done, 1 failed"


def test_dry_run_checks_every_job_and_writes_nothing(hub_models, tmp_path, loads):
    (tmp_path / "jobs.toml").write_text(JOBS.replace('"missing.png"', '"start.png"'))
    (tmp_path / "start.png").write_bytes(b"not a png")  # checked too: the second job fails
    before = sorted(tmp_path.rglob("*"))
    result = invoke("batch", tmp_path / "jobs.toml", "--device", "cpu", "--dry-run")
    assert result.exit_code == 1 and loads == []
    assert sorted(tmp_path.rglob("*")) == before, "a dry run writes nothing"
    assert f"extend: {ALIASES['df']}, 64x64, 21 frames" in result.output
    assert f"t2v: {ALIASES['df']}, 64x64, 5 frames, seed 8 -> {tmp_path / 'dog'}" in result.output
    assert "2    extend   failed" in result.output and "2 of 3 jobs checked, 1 failed" in result.output


BAD = {
    "no jobs": ("seed = 1\n", "no jobs"),
    "unknown default": ("seed = 1\nsteep = 3\n[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\n", "line 2: unknown key 'steep'"),
    "no command": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\n[[job]]\nprompt = \"b\"\n", "line 4: job 2 needs command"),
    "bad command": ("[[job]]\ncommand = \"v2v\"\n", "line 2: job 1 needs command"),
    "option of another command": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\nend_image = \"e.png\"\n",
                                  "line 4: unknown key 'end_image' in job 1 (t2v)"),
    "same output twice": (("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\noutput = \"x.mp4\"\n[[job]]\ncommand = \"t2v\"\n"
                           "prompt = \"b\"\noutput = \"x.mp4\"\n"), "line 8: job 2 writes /", "x.mp4, as job 1 does"),
    "wrong type": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\nsteps = \"many\"\n", "line 4: steps in job 1 must be int"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_batch_files_are_one_line_errors_naming_the_line(case, tmp_path, loads):
    text, *messages = BAD[case]
    (tmp_path / "jobs.toml").write_text(text)
    result = invoke("batch", tmp_path / "jobs.toml")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: jobs.toml"), result.output
    assert all(message in lines[0] for message in messages), result.output
    assert loads == [] and [p.name for p in tmp_path.iterdir()] == ["jobs.toml"]


def test_flags_apply_to_every_job_and_defaults_only_where_they_fit(tmp_path):
    (tmp_path / "jobs.toml").write_text('device = "cuda"\nbase_frames = 17\n[[job]]\ncommand = "t2v"\nprompt = "a"\n'
                                        '[[job]]\ncommand = "extend"\nprompt = "b"\ndevice = "cuda:1"\nimage = "i.png"\n')
    t2v, extend = load_batch(tmp_path / "jobs.toml", _command_options(), {"device": "cpu", "overwrite": True})
    assert t2v.options["device"] == extend.options["device"] == "cpu"
    assert t2v.options["overwrite"] and "base_frames" not in t2v.options and extend.options["base_frames"] == 17
    assert extend.options["image"] == str(tmp_path / "i.png"), "paths are relative to the file"
    assert t2v.options["steps"] is None and t2v.options["dry_run"] is False


def test_jobs_run_grouped_by_model(hub_models, tmp_path):
    models = [ALIASES["df"], ALIASES["t2v"], ALIASES["df"], ALIASES["t2v"]]
    text = "".join(f'[[job]]\ncommand = "t2v"\nprompt = "p{i}"\nmodel = "{m}"\n' for i, m in enumerate(models))
    (tmp_path / "jobs.toml").write_text(text)
    jobs = load_batch(tmp_path / "jobs.toml", _command_options())
    assert [job.number for job in in_model_order(jobs)] == [1, 3, 2, 4]
    jobs[2].options["device"] = "cuda"  # another device: another load
    assert [job.number for job in in_model_order(jobs)] == [1, 2, 4, 3]
