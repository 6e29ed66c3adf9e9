"""`crossval run` with no flags — both real models × the default prompts × 32 steps, faithful mode
(the default where the native kernels are built) — is bit-exact: the CI gate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts

pytestmark = [pytest.mark.real_model, needs_llamacpp]


def test_crossval_run_both_real_models(tmp_path):
    for m in ("smollm2", "gemma3-270m"):
        real_model_path(m)
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    summary = json.loads(r.stdout)
    print(f"crossval run: {summary['total_s']:.1f} s, exit {summary['exit_code']}, counts {summary['counts']}")
    for row in summary["receipts"]:
        print(f"  {row['model']:12s} {row['prompt']:13s} min_cos={row['cosine_similarity']:.6f} "
              f"exact={row['exact_match_rate']:.3f} first_div={row['first_divergence_step']} kld={row['kld_mean']:.2e}")
    assert r.returncode == 0, r.stderr
    files = [p for p in out.rglob("*.json")]
    assert len(files) == 17  # 2 models × 8 prompts + summary
    for p in files:
        rec = receipts.read_valid(p)
        if rec["kind"] == "parity":  # no flags: faithful mode, llama.cpp's logits bit for bit
            assert rec["config"]["mode"] == "faithful" and rec["config"]["steps"] == 32
            assert rec["thresholds"]["profile"] == "faithful" and rec["backends"]["engine"]["fallback_types"] == []
            assert rec["parity"]["max_abs_diff"] == 0.0 and rec["parity"]["exact_match_rate"] == 1.0, p.name
    statuses = {row["status"] for row in summary["receipts"]}
    assert statuses == {"ok"}
    # the HTML report of this run renders, and its numbers are the receipts' (issue: diagnostics)
    from test_report import check_run_report

    check_run_report(out / summary["run_id"], tmp_path / "report", tmp_path)
