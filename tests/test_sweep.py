"""`crossval sweep`: thread counts, prefill batch sizes and context length, one sweep receipt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts

pytestmark = [needs_llamacpp]


def _sweep(tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "sweep", "--out", str(tmp_path / "sw"), "--json", *args],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.stdout.strip(), r.stderr
    rec = json.loads(r.stdout)
    receipts.validate(rec)
    return r, rec


def test_sweep_on_a_float_model(tmp_path, tiny_model):
    r, rec = _sweep(tmp_path, "--model", str(tiny_model("gemma3")), "--context", "160", "--prompt-tokens", "40", "--batches", "40,7,1")
    assert r.returncode == (0 if rec["verdict"]["passed"] else 1)
    assert [x["threads"] for x in rec["threads"]] == [1, 2] and [x["batch"] for x in rec["batch"]] == [40, 7, 1]
    assert rec["threads"][0]["engine_self_max_abs"] == 0 and rec["batch"][0]["reference_self_max_abs"] == 0
    for row in rec["threads"] + rec["batch"]:
        assert row["passed"] and row["cosine_similarity"] >= rec["thresholds"]["min_cosine"], row
    ctx = rec["context"]
    b = ctx["buckets"]
    assert b[0]["start"] == 0 and b[-1]["end"] == ctx["length"] == 160
    assert all(x["end"] == y["start"] for x, y in zip(b, b[1:]))  # contiguous, no gaps
    assert ctx["window_source"] == "sliding_window"
    assert any(x["beyond_window"] for x in b) == (ctx["window"] < 160)
    assert all(x["beyond_window"] == (x["start"] >= ctx["window"]) for x in b)


def test_sweep_bad_kinds_is_input_error(tmp_path, tiny_model):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "sweep", "--model", str(tiny_model("llama")), "--kinds", "colour"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1


@pytest.mark.real_model
def test_gemma3_context_sweep_past_the_sliding_window(tmp_path):
    real_model_path("gemma3-270m")
    r, rec = _sweep(tmp_path, "--model", "gemma3-270m", "--kinds", "context", "--context", "768")
    ctx = rec["context"]
    assert ctx["window"] == 512 and ctx["window_source"] == "sliding_window"
    beyond = [b for b in ctx["buckets"] if b["beyond_window"]]
    assert beyond and beyond[-1]["end"] == 768
    for b in ctx["buckets"]:
        print(f"  {b['start']:4d}-{b['end']:4d} beyond={b['beyond_window']} min_cos={b['cosine_similarity']:.5f} "
              f"mean={b['cosine_mean']:.6f} top1={b['top1_agreement']:.3f}")
    # beyond the window the local layers attend to the last 512 positions only; parity holds there too
    assert all(b["passed"] for b in beyond), rec["verdict"]["failures"]
