"""The README stays true: every command it shows exists and starts, every flag of train.py it lists is one
train.py takes, and it says how to enter the environment its commands run in."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
COMMANDS = sorted(set(re.findall(r"python (-m [a-z_.]+|[a-z_/]+\.py)", README)))


def test_the_readme_shows_commands():
    assert "train.py" in COMMANDS and "-m perf.verification" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_in_the_readme_starts(command):
    args = command.split() if command.startswith("-m") else [command]
    result = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"python {command} --help: {result.stderr[-500:]}"


def test_train_flags_in_the_readme_exist():
    help_text = subprocess.run([sys.executable, "train.py", "-h"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120).stdout
    section = README.split("### Flags", 1)[1].split("\n## ", 1)[0]
    flags = set(re.findall(r"^\| `(--?[a-z_0-9]+)", section, flags=re.M))
    assert len(flags) > 30
    missing = sorted(flag for flag in flags if not re.search(rf"(^|\s|,){re.escape(flag)}\b", help_text, flags=re.M))
    assert not missing, f"README lists train.py flags that train.py does not take: {missing}"


def test_the_readme_says_how_to_enter_the_environment():
    assert "source .venv/bin/activate" in README
