"""Property-based: any shot list or batch file either plans runs whose frame arithmetic holds, or is one clear line.

Random TOML documents (known and unknown keys, values of every TOML type, shots and jobs of any
length: 0, negative, huge, fractional, nan, text) go through the library (`read_script`,
`read_batch`) and through the CLI's dry runs (`skyreels extend --script F --dry-run`, `skyreels
batch F --dry-run`). Accepted: the shots' frames add up to the planned total and every shot's
frame range lies inside the video, in order, without gaps. Refused: exactly one line starting
`error: `, exit code 2, no traceback. Either way no file is written.
"""

import json
import math
import os
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.cli.jobs import JobFlags, build_job
from skyreels_cli.core.job import COMMANDS, settings_names
from skyreels_cli.core.resolve import resolve
from skyreels_cli.core.shot_list import SCRIPT_SETTINGS, read_script
from skyreels_cli.core.shot_plan import shot_layout
from skyreels_cli.errors import SkyreelsError

from .conftest import ALIASES, files_in

SETTINGS = settings(max_examples=int(os.environ.get("SKYREELS_PROPERTY_EXAMPLES", "120")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MODEL = ALIASES["df"]
# A small run every document starts from (random settings may override any of it): 64x64, windows of 17 frames
# overlapping by 5, so accepted documents plan in milliseconds.
BASE = {"model": MODEL, "height": 64, "width": 64, "base_frames": 17, "overlap": 5, "steps": 2}
OPTIONS = list(SCRIPT_SETTINGS)
# A Python exception's name at the start of a batch job's failure: the job crashed, it was not refused.
CRASH = re.compile(r"^[A-Z]\w*(Error|Exception|Warning): ")

# ------------------------------------------------------------------ TOML values and documents

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 5),
                   st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]))
texts = st.text(max_size=8)
scalars = st.one_of(st.booleans(), st.integers(-3, 100), st.integers(-2**63, 2**63 - 1), floats, texts)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from("ab"), scalars, max_size=2))
bare = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10)
prompts = st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=20).filter(str.strip)
counts = st.one_of(st.integers(-3, 60), st.integers(-10**13, 10**13), floats, texts, st.booleans())
paths = st.one_of(st.sampled_from(["start.png", "missing.png", "film.toml", "out.mp4", "out/", ""]), texts)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's (a raw DEL is not: invalid TOML)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def toml_document(top: dict, table: str, tables) -> str:
    """Top-level settings, then `[[table]]` entries (or `table = value` when `tables` is not a list of tables)."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in top.items() if k != table]
    if isinstance(tables, list) and all(isinstance(t, dict) for t in tables):
        for entry in tables:
            lines += ["", f"[[{table}]]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in entry.items())]
    elif tables is not None:
        lines.insert(0, f"{table} = {toml_value(tables)}")
    return "\n".join(lines) + "\n"


def weighted(*choices):
    """One of the strategies, drawn in proportion to their weights (`st.one_of` draws by branch, and flattens)."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


def settings_strategy(names: list[str]):
    """BASE with up to two settings changed or added: options (good or any value), not-in-file names, unknown."""
    good = {"seed": st.integers(0, 2**40), "fps": st.sampled_from([16, 24.0, 30]), "guidance": st.floats(0, 9),
            "causal_block": st.sampled_from([1, 2, 3]), "ar_step": st.integers(0, 3), "addnoise": st.floats(0, 50),
            "steps": st.integers(1, 4), "height": st.sampled_from([64, 48, 80]), "overlap": st.sampled_from([1, 5, 9]),
            "base_frames": st.sampled_from([9, 17, 21])}
    tricky = ["loras", "frames", "seconds", "fps", "output", "image", "video", "enhance", "cache", "attention", "dtype"]
    key = st.one_of(st.sampled_from(names), st.sampled_from(tricky),
                    st.sampled_from(["prompt", "resume", "dry_run", "from_", "shots"]), bare)
    pair = st.one_of(key.flatmap(lambda k: st.tuples(st.just(k), good.get(k, values))), st.tuples(key, values))
    changed = st.lists(pair, min_size=1, max_size=2).map(lambda pairs: {**BASE, **dict(pairs)})
    return weighted((1, st.just(BASE)), (1, good_only(good)), (1, changed))


def good_only(good: dict):
    """BASE with one setting changed to a value that should plan (so accepted documents are common)."""
    return st.sampled_from(sorted(good)).flatmap(lambda k: good[k].map(lambda v: {**BASE, k: v}))


# A well-formed shot, its length now and then at an edge (0, negative, past a day of video, past a float's range).
edge_frames = st.sampled_from([0, -1, 10**7, 2**63, 10**30])
edge_seconds = st.sampled_from([0.0, -0.5, 1e-300, 1e9, 1e300, 7.5e306, 1e308])
good_shot = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={"guidance": st.floats(0, 12), "negative_prompt": prompts},
).flatmap(lambda shot: st.one_of(
    st.integers(1, 60).map(lambda n: {**shot, "frames": n}),
    st.floats(0.05, 2.5).map(lambda s: {**shot, "seconds": s}),
))
edge_shot = st.one_of(edge_frames.map(lambda n: {"prompt": "a", "frames": n}),
                      edge_seconds.map(lambda s: {"prompt": "a", "seconds": s}))
lengths = st.one_of(st.integers(1, 40), st.floats(0.05, 2.0), st.sampled_from([1e308, 1e300, 1e9, 0.0, -1.0, math.nan,
                                                                             math.inf]), counts)
any_shot = st.fixed_dictionaries({"prompt": st.one_of(prompts, prompts, st.sampled_from(["", "   "]), scalars)}, optional={
    "frames": lengths, "seconds": lengths, "guidance": st.one_of(floats, scalars),
    "negative_prompt": st.one_of(prompts, scalars), "image": paths, "colour": values,  # colour: unknown
})
# Mostly well-formed lists (so that planned documents are common), then mixed ones, none, empty, or no list at all.
shots = weighted((6, st.lists(good_shot, min_size=1, max_size=3)),
                 (3, st.lists(st.one_of(good_shot, edge_shot, any_shot), min_size=1, max_size=4)),
                 (1, st.just([])), (1, st.none()), (1, scalars))


# ------------------------------------------------------------------ running the CLI


def invoke_in(folder: Path, args: list[str]):
    """The CLI run in `folder` (where a default output would go), with the files it wrote (must be none)."""
    before = files_in(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert files_in(folder) == before, f"a dry run wrote a file: {args}"
    return result


def assert_refused(result, args) -> None:
    message = result.output.strip()
    assert result.exit_code == 2, (args, message, result.exception)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the documents are written: a real start image and a good shot list for the files to name."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("script-properties")
    Image.new("RGB", (64, 64), (200, 90, 30)).save(folder / "start.png")
    (folder / "film.toml").write_text(toml_document(BASE, "shot", [{"prompt": "a fox", "frames": 17},
                                                                   {"prompt": "a cat", "seconds": 0.5}]))
    return folder


# ------------------------------------------------------------------ shot lists

def request_of(path: Path) -> tuple[sk.Request, object]:
    """The request `extend --script path --device cpu` makes, as the command builds it."""
    job = build_job(JobFlags("extend", {}, {"device": "cpu"}, None, None, False, False, None, None, True, True,
                             str(path)))
    return job.request, sk.resolve_model(job.model, "extend")


def check_shot_arithmetic(path: Path, printed: str) -> None:
    """The shots' lengths add up to the planned total; their ranges tile the video in order; the plan printed is it."""
    loaded = read_script(path)
    request, spec = request_of(path)
    r = resolve(request, spec)
    fps = r.fps
    asked = [s.frames if s.frames is not None else max(1, round(s.seconds * fps)) for s in loaded.shots]
    assert [s.frames for s in r.shots] == asked and r.frames == sum(asked)
    layout = shot_layout(r)
    firsts = [first for first, _ in layout.ranges]
    assert firsts == [0, *(first + n for first, n in layout.ranges[:-1])], "shot ranges in order, without gaps"
    assert all(n > 0 for _, n in layout.ranges) and sum(n for _, n in layout.ranges) == r.frames
    assert r.frames <= layout.generated, "every shot's range inside the frames made"
    plan = layout.plan
    assert len(layout.window_shot) == len(plan.windows) and sorted(layout.window_shot) == list(layout.window_shot)
    assert set(layout.window_shot) == set(range(len(r.shots))), "every shot gets a window of its own"
    assert sum(w.new for w in plan.windows) == plan.total - plan.start_prefix
    assert all(w.new > 0 and w.new % plan.causal_block == 0 and w.length <= plan.base for w in plan.windows)
    windows = len(plan.windows)
    made = f" ({layout.generated} made in {windows} window{'s' if windows > 1 else ''})" \
        if layout.generated != r.frames or windows > 1 else ""
    assert f", {r.width}x{r.height}, {r.frames} frames{made}, seed " in printed, (printed, r.frames, made)


@SETTINGS
@given(top=settings_strategy(OPTIONS), shot_list=shots, garbage=st.sampled_from([""] * 9 + ["= oops\n"]))
# Found by this test (kept so that they run every time): a LoRA setting that is no list of text, one that looks
# like a Hub repo id but is no valid one, and a shot whose seconds are finite but whose frames at 24 fps are not.
@example(top={**BASE, "loras": True}, shot_list=[{"prompt": "a", "frames": 1}], garbage="")
@example(top={**BASE, "loras": ["0/"]}, shot_list=[{"prompt": "a", "frames": 1}], garbage="")
@example(top=BASE, shot_list=[{"prompt": "a", "seconds": 7.5e306}], garbage="")
@pytest.mark.slow
def test_shot_lists_plan_or_fail_cleanly(folder, top, shot_list, garbage):
    path = folder / "script.toml"
    path.write_text(toml_document(top, "shot", shot_list) + garbage)
    args = ["extend", "--script", str(path), "--device", "cpu", "--dry-run"]
    result = invoke_in(folder, args)
    event("refused" if result.exit_code else "planned")  # both kinds are common: --hypothesis-show-statistics
    if result.exit_code != 0:
        assert_refused(result, args)
        return
    made, plan = result.output.strip().split("\n")
    assert made.startswith(f"extend: {MODEL}, ") and plan.startswith("memory plan: "), result.output
    check_shot_arithmetic(path, made)


@SETTINGS
@given(top=settings_strategy(OPTIONS), shot_list=shots)
def test_read_script_gives_checked_shots_or_one_line(folder, top, shot_list):
    path = folder / "library.toml"
    path.write_text(toml_document(top, "shot", shot_list))
    try:
        loaded = read_script(path)
    except SkyreelsError as err:
        assert "\n" not in str(err) and str(err).startswith("library.toml"), str(err)
        return
    assert loaded.shots and len(loaded.shots) == len(shot_list)
    for shot, given_shot in zip(loaded.shots, shot_list):
        assert shot.prompt == given_shot["prompt"].strip() and shot.prompt
        assert (shot.frames is None) != (shot.seconds is None), "frames or seconds, exactly one"
        assert shot.frames is None or (type(shot.frames) is int and shot.frames > 0)
        assert shot.seconds is None or (math.isfinite(shot.seconds) and shot.seconds > 0)
        assert shot.guidance is None or (math.isfinite(shot.guidance) and shot.guidance >= 0)
    assert all(Path(loaded.settings[k]).is_absolute() for k in ("output", "image", "video") if loaded.settings.get(k))


# ------------------------------------------------------------------ batch files

good_job = st.fixed_dictionaries(
    {"command": st.sampled_from(["t2v", "extend"]), "prompt": prompts},
    optional={"frames": st.sampled_from([5, 9, 17, 21]), "seed": st.integers(0, 99),
              "output": st.sampled_from(["a.mp4", "b.mp4", "c/", "d/e.mp4"])},
)
script_job = st.fixed_dictionaries({"command": st.just("extend"), "script": st.sampled_from(["film.toml", "no.toml"])},
                                   optional={"output": st.sampled_from(["a.mp4", "f.mp4"])})
any_job = st.dictionaries(
    st.one_of(st.sampled_from(["command", "prompt", "frames", "image", "output", "script", "end_image", "loras",
                               "dry_run", "steps", "seconds"]), bare),
    st.one_of(st.sampled_from(COMMANDS), paths, scalars), max_size=4)
jobs = weighted((3, st.lists(st.one_of(good_job, script_job, any_job), min_size=1, max_size=3)),
               (4, st.lists(st.one_of(good_job, script_job), min_size=1, max_size=2)),
               (1, st.just([])), (1, scalars))
BATCH_OPTIONS = sorted({name for command in COMMANDS for name in settings_names(command)} - {"shots"})


def check_batch_output(result, parsed: list) -> None:
    """Every job checked or failed with one line; its plan printed; the summary counts them."""
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    failed = [line for line in lines if line.startswith("error: ")]
    assert all(not CRASH.match(line.split(": ", 2)[-1]) for line in failed), f"a job crashed: {failed}"
    n = len(parsed)
    assert lines[-1] == f"{n - len(failed)} of {n} jobs checked" + (f", {len(failed)} failed" if failed else "")
    assert result.exit_code == (1 if failed else 0), result.output
    for number, job in enumerate(parsed, start=1):
        assert sum(line.startswith(f"job {number} ({job.command}), {number} of {n}: ") for line in lines) == 1
    made = [line for line in lines if line.startswith(tuple(f"{c}: " for c in COMMANDS))]
    assert len(made) == n - len(failed) == sum(line.startswith("memory plan: ") for line in lines)
    for job in parsed:  # a job's own frames are what it plans (a script's shots are checked above)
        frames = job.request.frames
        ours = [line for line in made if line.startswith(f"{job.command}: ") and job.output and
                line.endswith(f"-> {job.output}")]
        if type(frames) is int and job.request.shots is None and job.request.seconds is None and ours:
            assert all(f", {frames} frames" in line for line in ours), (frames, ours)


@SETTINGS
@given(top=settings_strategy(BATCH_OPTIONS), job_list=jobs)
# Found by this test: a job crashing on a LoRA setting that is no list of text; a dry run's summary when no job passed.
@example(top=BASE, job_list=[{"command": "t2v", "prompt": "a", "loras": 5}])
@example(top=BASE, job_list=[{"command": "extend", "prompt": "a"}])
@pytest.mark.slow
def test_batch_files_plan_or_fail_cleanly(folder, top, job_list):
    path = folder / "jobs.toml"
    path.write_text(toml_document(top, "job", job_list))
    args = ["batch", str(path), "--device", "cpu", "--dry-run"]
    try:
        parsed = sk.read_batch(path, {"device": "cpu"})
    except SkyreelsError as err:  # the file itself is refused: one line, exit 2, nothing run
        event("file refused")
        assert "\n" not in str(err)
        assert_refused(invoke_in(folder, args), args)
        return
    assert len(parsed) == len(job_list)
    assert all(job.command in COMMANDS and job.load.device == "cpu" for job in parsed)
    result = invoke_in(folder, args)
    event("every job checked" if result.exit_code == 0 else "some job failed")
    check_batch_output(result, parsed)
