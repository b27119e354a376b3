"""The README's examples use commands and options that exist, and its test command is CI's."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyreels_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("skyreels ")]


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


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci


def test_readme_python_example_runs(hub_models, tmp_path, monkeypatch):
    """The README's Python example, on the tiny model and the CPU instead of the default model on CUDA."""
    [block] = re.findall(r"```python\n(.*?)```", README, re.S)
    assert 'sk.load("df-1.3b-540p", device="cuda")' in block
    code = block.replace('sk.load("df-1.3b-540p", device="cuda")', 'sk.load("tiny", device="cpu", progress=False)')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "fox.mp4").is_file() and (tmp_path / "cat.mp4.json").is_file()
    assert scope["result"].frames == 257
