"""The README's two set-up commands stay true: .ci/run runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must start with a ```bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert all(c.split(" pip install", 1)[0].startswith("CMAKE_ARGS=") for c in cmds)  # llama.cpp built without AMX
    assert ' pip install -e ".[dev]" && ' in cmds[0] and cmds[0].endswith("crossval run")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def test_engine_never_imports_crossval():
    for p in (ROOT / "engine").rglob("*.py"):
        src = p.read_text()
        assert not re.search(r"^\s*(from|import)\s+crossval", src, re.M), p
