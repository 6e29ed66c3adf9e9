"""The CI workflows parse, have the structure GitHub Actions needs, and call scripts that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "ci").glob("*.yml"))


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"parity-proof.yml", "nightly-parity-matrix.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_structure(path):
    wf = yaml.safe_load(path.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on:` key as boolean True
    assert wf["name"] and on and wf["jobs"]
    for name, job in wf["jobs"].items():
        assert "runs-on" in job and job["steps"], name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: a step needs exactly one of uses/run"
            for script in re.findall(r"(?:bash\s+)([\w./-]+\.sh|\.ci/run)", step.get("run", "")):
                assert (ROOT / script).exists(), f"{path.name}: {script} does not exist"
        for dep in [job.get("needs")] if isinstance(job.get("needs"), str) else job.get("needs", []) or []:
            assert dep in wf["jobs"], f"{name} needs unknown job {dep}"


def test_pr_gate_runs_ci_entry_point():
    assert "bash .ci/run" in (ROOT / "ci" / "parity-proof.yml").read_text()
