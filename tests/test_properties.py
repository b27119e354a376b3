"""Property-based: every combination of numbers and paths either plans a run or is one clear line.

The CLI is called with --dry-run, which checks everything a run would and prints the plan
without loading a model; the frame arithmetic of each accepted setting is then checked
against its invariants.
"""

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import skyreels_cli as sk
from skyreels_cli.cli import app
from skyreels_cli.core.resolve import generated_frames, resolve, window_plan
from skyreels_cli.forcing.schedule import step_matrix

from .conftest import ALIASES, files_in

SETTINGS = settings(max_examples=int(os.environ.get("SKYREELS_PROPERTY_EXAMPLES", "120")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ints = st.one_of(st.none(), st.integers(-3, 200), st.integers(-10**9, 10**12))
small = st.one_of(st.none(), st.integers(-2, 12))
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-1, 60))
sides = st.one_of(st.none(), st.integers(-16, 1200), st.sampled_from([16, 48, 64, 100000]))
names = st.text(alphabet="ab./_- ", min_size=0, max_size=12)
outputs = st.one_of(st.none(), names, names.map(lambda n: n + ".mp4"), names.map(lambda n: n + "/"))


def option(name: str, value) -> list[str]:
    return [] if value is None else [name, str(value)]


def check_plan(request: sk.Request, spec) -> None:
    """Exactly the frames asked for, no frame left undenoised, noise never decreasing along time."""
    made = generated_frames(request, spec)
    assert made >= request.frames
    if not spec.forcing:
        assert (made - 1) % 4 == 0 and made - request.frames < 4
        return
    plan = window_plan(request)
    assert sum(w.new for w in plan.windows) == plan.total - plan.start_prefix
    for w in plan.windows[:3] + plan.windows[-3:]:
        assert sum(w.blocks) == w.length and w.new % plan.causal_block == 0
        index, update = step_matrix(w.blocks, 4, request.ar_step, w.ready_blocks)
        assert (index[:, :-1] >= index[:, 1:]).all()
        assert (update[:, w.prefix:].sum(0) == 4).all() and not update[:, : w.prefix].any()


def run_or_refuse(folder: Path, args: list[str]) -> None:
    before = files_in(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, [*args, "--dry-run"])
    finally:
        os.chdir(cwd)
    message = result.output.strip()
    if result.exit_code == 0:  # what would be made, then the memory plan it would use
        made, plan = message.split("\n")
        assert made.split(":")[0] in ("t2v", "extend") and plan.startswith("memory plan: "), message
    else:
        assert result.exit_code == 2, (args, message, result.exception)
        assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    assert files_in(folder) == before, "a dry run wrote a file"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@SETTINGS
@given(frames=ints, seconds=floats, base=small.map(lambda v: None if v is None else 4 * v + 1), overlap=small,
       block=small, ar=small, addnoise=floats, steps=ints, guidance=floats, shift=floats, fps=floats,
       height=sides, width=sides, output=outputs)
@pytest.mark.slow
def test_extend_options_plan_or_fail_cleanly(hub_models, folder, frames, seconds, base, overlap, block, ar,
                                             addnoise, steps, guidance, shift, fps, height, width, output):
    args = ["extend", "a red fox", "-m", ALIASES["df"], "--device", "cpu", *option("--frames", frames),
            *option("--seconds", seconds), *option("--base-frames", base), *option("--overlap", overlap),
            *option("--causal-block", block), *option("--ar-step", ar), *option("--addnoise", addnoise),
            *option("--steps", steps), *option("--guidance", guidance), *option("--shift", shift),
            *option("--fps", fps), *option("--height", height), *option("--width", width),
            *option("-o", output)]
    run_or_refuse(folder, args)
    request = sk.Request(prompt="a red fox", frames=frames, seconds=seconds, base_frames=base, overlap=overlap,
                         causal_block=block, ar_step=ar, addnoise=addnoise, steps=steps, guidance=guidance,
                         shift=shift, fps=fps, height=height, width=width, seed=1)
    spec = sk.resolve_model(ALIASES["df"])
    if frames is None and seconds is None:
        return
    try:
        resolved = resolve(request, spec)
    except sk.SkyreelsError:
        return
    check_plan(resolved, spec)


@SETTINGS
@given(frames=ints, steps=ints, fps=floats, height=sides, width=sides, output=outputs,
       model=st.sampled_from([ALIASES["t2v"], ALIASES["df"]]))
@pytest.mark.slow
def test_t2v_options_plan_or_fail_cleanly(hub_models, folder, frames, steps, fps, height, width, output, model):
    args = ["t2v", "a red fox", "-m", model, "--device", "cpu", *option("--frames", frames),
            *option("--steps", steps), *option("--fps", fps), *option("--height", height),
            *option("--width", width), *option("-o", output)]
    run_or_refuse(folder, args)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 6, 17, 18, 96, 97, 98, 1440, 1457])
@pytest.mark.parametrize("block", [1, 2, 5])
def test_any_length_makes_at_least_that_many_frames_with_nothing_left_noisy(frames, block):
    from skyreels_cli.core.resolve import resolve

    spec = sk.resolve_model(ALIASES["df"])
    resolved = resolve(sk.Request(prompt="x", frames=frames, causal_block=block, seed=1), spec)
    check_plan(resolved, spec)
    assert math.isclose(resolved.frames, frames)
