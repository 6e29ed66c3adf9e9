"""--three-way with a third backend: Hugging Face transformers (optional extra) on SmolLM2, and a
third backend that cannot run, which the receipt reports instead of failing the run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts

pytestmark = [pytest.mark.real_model, needs_llamacpp]


def _run(tmp_path, *args):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "france", "text": "The capital of France is"}) + "\n"
                       + json.dumps({"id": "fox", "text": "The quick brown fox"}) + "\n")  # fmt: skip
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", "smollm2", "--prompt-file", str(prompts),
                        "--steps", "16", "--out", str(out), "--json", "--three-way", *args],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    summary = json.loads(r.stdout)
    return r, [receipts.read_valid(out / summary["run_id"] / row["file"]) for row in summary["receipts"]]


def test_three_way_with_transformers_on_smollm2(tmp_path):
    for mod in ("transformers", "torch", "accelerate"):
        pytest.importorskip(mod, reason="optional extra: pip install -e '.[triangulate]'")
    real_model_path("smollm2")
    r, recs = _run(tmp_path, "--third", "transformers")
    for rec in recs:
        tw = rec["three_way"]
        assert tw["status"] == "ok" and tw["backends"] == ["engine", "llamacpp", "transformers"]
        p = tw["pairs"]
        print(rec["prompt"]["id"], json.dumps(p), tw["odd_one_out_counts"], tw["farthest"])
        # two float implementations of the same dequantized weights agree; llama.cpp's quantized
        # arithmetic is the odd one out wherever the three disagree
        assert p["engine~transformers"]["cosine_min"] >= 0.9999 and p["engine~transformers"]["top1_agreement"] == 1.0
        assert tw["odd_one_out_counts"]["engine"] == 0 and tw["odd_one_out_counts"]["transformers"] == 0
        assert tw["farthest"] == "llamacpp"
        assert rec["backends"]["engine"]["name"] == "engine"


def test_three_way_reports_an_unavailable_third(tmp_path):
    real_model_path("smollm2")
    r, recs = _run(tmp_path, "--third", "gemmacpp")  # gemma.cpp's kit converts only Gemma-3-270M
    assert r.returncode in (0, 1), r.stderr
    for rec in recs:
        tw = rec["three_way"]
        assert tw["status"] == "unavailable" and "Gemma-3-270M" in tw["reason"] and tw["pairs"] == {}
        assert rec["parity"]["status"] in ("ok", "divergence")  # the two-way comparison still ran
