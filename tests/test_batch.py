"""`skyreels batch` and `sk.read_batch`/`sk.run_batch`: every job run through the library, each model loaded
once, the file checked as a whole first, a failing job reported while the others go on."""

import json
from dataclasses import replace

import pytest

import skyreels_cli as sk
import skyreels_cli.core.model as core_model
from skyreels_cli.core.batch import in_model_order

from .conftest import ALIASES, invoke, read_video

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
    """Every real load of a checkpoint's weights, by folder name (the tiny kind or Hub snapshot)."""
    calls = []
    real = core_model.load_components

    def counted(folder, kind, *args, **kwargs):
        calls.append(kind)
        return real(folder, kind, *args, **kwargs)

    monkeypatch.setattr(core_model, "load_components", counted)
    return calls


def test_a_failing_job_is_reported_and_the_others_run(hub_models, tmp_path, loads):
    (tmp_path / "jobs.toml").write_text(JOBS)
    result = invoke("batch", tmp_path / "jobs.toml", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert loads == ["df"], "one model, loaded once for every job"
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


def test_a_bad_value_in_a_later_job_refuses_the_file_before_anything_runs(hub_models, tmp_path, loads):
    bad = JOBS.replace("frames = 5\n", "frames = -4\n")
    (tmp_path / "jobs.toml").write_text(bad)
    line = bad.splitlines().index("frames = -4") + 1
    result = invoke("batch", tmp_path / "jobs.toml", "--device", "cpu")
    assert result.exit_code == 2 and loads == [], result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: jobs.toml line {line}: frames = -4"), result.output
    assert "job 3" in lines[0] and not (tmp_path / "fox.mp4").exists()


def test_a_job_without_an_output_writes_beside_the_jobs_file_and_quiet_prints_only_paths(hub_models, tmp_path,
                                                                                          monkeypatch):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "jobs.toml").write_text(f'model = "{ALIASES["df"]}"\nheight = 64\nwidth = 64\nsteps = 2\n'
                                      '[[job]]\ncommand = "t2v"\nprompt = "a red fox"\nframes = 5\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("batch", folder / "jobs.toml", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    (made,) = (folder / "outputs").glob("*.mp4")
    assert result.output == f"{made}\n", "with -q: the path of each video, no table"
    assert list(elsewhere.iterdir()) == []


def test_two_models_each_loaded_exactly_once_through_the_library(hub_models, tmp_path, loads):
    """The Python caller's batch: the same Jobs the file gives, through one pool."""
    models = [ALIASES["df"], ALIASES["t2v"], ALIASES["df"], ALIASES["t2v"]]
    text = "height = 64\nwidth = 64\nsteps = 2\nframes = 5\nseed = 3\ndevice = \"cpu\"\n" + "".join(
        f'[[job]]\ncommand = "t2v"\nprompt = "p{i}"\nmodel = "{m}"\noutput = "{i}/"\n' for i, m in enumerate(models))
    (tmp_path / "jobs.toml").write_text(text)
    jobs = sk.read_batch(tmp_path / "jobs.toml")
    assert all(isinstance(job, sk.Job) for job in jobs) and jobs[1].model == ALIASES["t2v"]
    pool = sk.ModelPool(progress=False)
    outcomes = sk.run_batch(jobs, pool=pool, progress=False)
    assert [o.status for o in outcomes] == ["done"] * 4 and [o.number for o in outcomes] == [1, 2, 3, 4]
    assert sorted(loads) == ["df", "t2v"] and pool.loads == 2, "each model once, for both of its jobs"
    assert len(pool.models) == 2, "on the CPU both fit: neither was freed"
    again = sk.run(replace(jobs[0], output=str(tmp_path / "again") + "/"), pool=pool, progress=False)
    assert pool.loads == 2 and again.frames == 5
    first = json.loads((tmp_path / "0" / "settings.json").read_text())["request"]
    assert first == json.loads((tmp_path / "again" / "settings.json").read_text())["request"]


BAD = {
    "no jobs": ("seed = 1\n", "no jobs"),
    "unknown default": ("seed = 1\nsteep = 3\n[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\n", "line 2: unknown key 'steep'"),
    "no command": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\n[[job]]\nprompt = \"b\"\n", "line 4: job 2 needs command"),
    "bad command": ("[[job]]\ncommand = \"v2v\"\n", "line 2: job 1 needs command"),
    "option of another command": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\nend_image = \"e.png\"\n",
                                  "line 4: unknown key 'end_image' in job 1 (t2v)"),
    "same output twice": (("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\noutput = \"x.mp4\"\n[[job]]\ncommand = \"t2v\"\n"
                           "prompt = \"b\"\noutput = \"x.mp4\"\n"), "line 8: job 2 writes /", "x.mp4, as job 1 does"),
    "wrong type": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\nsteps = \"many\"\n",
                   "line 4: steps must be a whole number, got 'many' (job 1)"),
    "bad value": ("[[job]]\ncommand = \"t2v\"\nprompt = \"a\"\n[[job]]\ncommand = \"t2v\"\nprompt = \"b\"\nguidance = -1\n",
                  "line 7: guidance = -1 must be a finite number, 0 or more", "(job 2)"),
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
                                        '[[job]]\ncommand = "extend"\nprompt = "b"\ndevice = "cuda:1"\nimage = "i.png"\n'
                                        'frames = 41\n')
    t2v, extend = sk.read_batch(tmp_path / "jobs.toml", {"device": "cpu", "overwrite": True})
    assert t2v.load.device == extend.load.device == "cpu"
    assert t2v.overwrite and t2v.request.base_frames is None and extend.request.base_frames == 17
    assert extend.request.image == str(tmp_path / "i.png"), "paths are relative to the file"
    assert t2v.request.steps is None and t2v.output_dir == str(tmp_path / "outputs")


def test_jobs_run_grouped_by_model(hub_models, tmp_path):
    models = [ALIASES["df"], ALIASES["t2v"], ALIASES["df"], ALIASES["t2v"]]
    text = "".join(f'[[job]]\ncommand = "t2v"\nprompt = "p{i}"\nmodel = "{m}"\n' for i, m in enumerate(models))
    (tmp_path / "jobs.toml").write_text(text)
    jobs = sk.read_batch(tmp_path / "jobs.toml")
    assert [number for number, _ in in_model_order(jobs)] == [1, 3, 2, 4]
    jobs[2] = replace(jobs[2], load=replace(jobs[2].load, device="cuda"))  # another device: another load
    assert [number for number, _ in in_model_order(jobs)] == [1, 2, 4, 3]
