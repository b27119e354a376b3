"""The examples of the README and of the docs/ pages use commands and options that exist (and run, on the tiny
model), their links lead to files that exist, and the README's test command is CI's."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyreels_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
DOCS = "\n".join(PAGES.values())  # the README and every docs/ page: all their examples are run


def readme_commands() -> list[list[str]]:
    """The `skyreels ...` lines of the README's and the docs/ pages' bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    unique = dict.fromkeys(line for line in lines if line.startswith("skyreels "))  # each example runs once
    return [shlex.split(line) for line in unique]


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_example_uses_real_options(argv):
    help_text = CliRunner().invoke(app, [argv[1], "--help"], terminal_width=200)
    assert help_text.exit_code == 0, f"no command {argv[1]}"
    for word in argv[2:]:
        if word.startswith("-"):
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", help_text.output), f"{word} not in {argv[1]}"


def test_readme_has_the_commands_it_promises():
    assert len(readme_commands()) >= 8
    assert 'skyreels t2v "a cat" --model tiny' in README


def test_the_readme_is_what_a_newcomer_needs_first():
    """Short (the rest is in docs/), a CPU install beside the GPU one, and a link to every docs/ page."""
    assert len(README) < 12_000, "topics go into docs/ pages"
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in README
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in README, f"the README's topics do not name docs/{page.name}"


def links(text: str) -> list[str]:
    """The relative links of a Markdown text (no web addresses, no anchors within the page)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file(page):
    missing = [t for t in links(PAGES[page]) if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to files that are not there: {missing}"


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "here.md").write_text("x")
    page = "[a](here.md) [b](gone.md#part) [c](https://example.com) [d](#anchor)"
    assert links(page) == ["here.md", "gone.md"]
    assert [t for t in links(page) if not (tmp_path / t).exists()] == ["gone.md"]


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci


@pytest.mark.slow
def test_readme_python_example_runs(hub_models, tmp_path, monkeypatch):
    """docs/library.md's Python example, on the tiny model and the CPU instead of the default model on CUDA."""
    [block] = re.findall(r"```python\n(.*?)```", PAGES[ROOT / "docs" / "library.md"], re.S)
    assert 'sk.load("df-1.3b-540p", device="cuda")' in block
    code = block.replace('sk.load("df-1.3b-540p", device="cuda")', 'sk.load("tiny", device="cpu", progress=False)')
    code = code.replace('model="df-1.3b-540p"', 'model="tiny"').replace('device="cuda"', 'device="cpu"')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/library.md", "exec"), scope)
    assert (tmp_path / "fox.mp4").is_file() and (tmp_path / "cat.mp4.json").is_file()
    assert (tmp_path / "dawn.mp4").is_file(), "the Job example ran too"
    assert scope["result"].frames == 257


def help_examples() -> list[list[str]]:
    """The example lines of every command's --help (its docstring)."""
    commands = []
    for command in app.registered_commands:
        for line in (command.callback.__doc__ or "").splitlines():
            if line.strip().startswith("skyreels "):
                commands.append(shlex.split(line.strip()))
    return commands


# The longest an example runs on the tiny model: `--seconds 30` (30 windows of the tiny model, 80 s here) is
# `--seconds 4` (4 windows): every flag still runs, a --resume example still stops after window 2 and continues.
TINY_SECONDS = 4


def on_tiny(argv: list[str]) -> list[str]:
    """The example with the tiny model on the CPU in place of the model it names (if any), at most
    TINY_SECONDS long when it asks for seconds."""
    out, skip = [], False
    for i, word in enumerate(argv[1:], start=1):
        if skip:
            skip = False
        elif word == "--seconds" and float(argv[i + 1]) > TINY_SECONDS:
            out += [word, str(TINY_SECONDS)]
            skip = True
        elif word in ("-m", "--model", "--device"):
            skip = True
        elif word == "--accelerator":  # the tiny models' own accelerator stands in for the one named
            out.append(word)
            out.append("tiny")
            skip = True
        else:
            out.append(word)
    return [*out, "--model", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def example_inputs(hub_models, tmp_path_factory):
    """The files the examples name, made once: images, and a short video to continue."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("examples")
    y, x = np.mgrid[0:48, 0:80]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    for name in ("photo.png", "portrait.jpg"):
        Image.fromarray(picture).save(folder / name)
    for name in ("fox.mp4", "storm.mp4"):  # a video to continue, and recorded settings to run again
        result = CliRunner().invoke(app, ["t2v", "a fox", "--model", "tiny", "--device", "cpu", "-o",
                                          str(folder / name), "-q"])
        assert result.exit_code == 0, result.output
    return folder


def generating_examples() -> list[list[str]]:
    # (--server examples need a running service: tests/test_service_client.py runs them against one)
    examples = [argv for argv in readme_commands() + help_examples()
                if argv[1] in ("t2v", "i2v", "extend") and "--server" not in argv]
    assert len(examples) >= 12
    return examples


@pytest.mark.slow
@pytest.mark.parametrize("argv", generating_examples(), ids=lambda a: " ".join(a[1:4]))
def test_every_example_runs_as_written_on_the_tiny_model(argv, example_inputs, monkeypatch):
    """Each example of the README and of --help, with --model tiny --device cpu: it runs (a --resume
    example after the same command was killed mid-run)."""
    import os
    import subprocess
    import sys

    monkeypatch.chdir(example_inputs)
    args = on_tiny(argv)
    if "--resume" in args:
        fresh = [a for a in args if a != "--resume"]
        env = {**os.environ, "SKYREELS_FAULT": "window_saved:2"}
        killed = subprocess.run([sys.executable, "-m", "skyreels_cli", *fresh, "--overwrite", "-q"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode != 0, "the run stopped after window 2, so the example resumes it"
    elif "-o" in args:
        args.append("--overwrite")  # the same output appears in more than one example
    result = CliRunner().invoke(app, [*args, "-q"])
    assert result.exit_code == 0, (" ".join(argv), result.output)
