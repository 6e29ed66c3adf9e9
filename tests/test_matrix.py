"""`crossval matrix`: llama.cpp-quantized variants, shards that partition the matrix exactly, merge,
and the synthetic BitNet models (TQ1_0 / TQ2_0) against llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts
from crossval.matrix import MatrixError, cells, parse_quants, parse_shard, shard_cells


def test_shards_partition_the_cells():
    all_cells = cells(["a", "b"], ["Q8_0", "Q4_0", "F16"], ["p1", "p2", "p3"])
    assert len(all_cells) == 18 and len(set(all_cells)) == 18
    for n in range(1, 7):
        parts = [shard_cells(all_cells, (i, n)) for i in range(1, n + 1)]
        assert sorted(c for p in parts for c in p) == sorted(all_cells)  # every cell exactly once
        assert sum(len(p) for p in parts) == len(all_cells)


def test_bad_shard_and_quant_arguments():
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(MatrixError):
            parse_shard(bad)
    with pytest.raises(MatrixError, match="IQ9"):
        parse_quants("Q8_0,IQ9")
    assert parse_quants("q8_0, tq1_0") == ["Q8_0", "TQ1_0"]


def _matrix(tmp_path, *args, out="m"):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "matrix", "--json", "--out", str(tmp_path / out), *args],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


def _strip(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "receipt"}


@needs_llamacpp
def test_bitnet_matrix_shards_merge_to_the_single_run(tmp_path):
    """bitnet-tiny (synthetic, ternary) × TQ1_0, TQ2_0, F16 × 2 prompts: three shards merged equal
    one unsharded run cell for cell; TQ cells hold parity with llama.cpp at cosine ≥ 0.999."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat sat on the mat\nthe dog ran and the cat sat\n")
    args = ["--model", "bitnet-tiny", "--quants", "TQ1_0,TQ2_0,F16", "--prompt-file", str(prompts), "--steps", "12"]
    r, one = _matrix(tmp_path, *args, out="one")
    assert one is not None, r.stderr
    receipts.validate(one)
    shard_files = []
    for i in (1, 2, 3):
        rs, shard = _matrix(tmp_path, *args, "--shard", f"{i}/3", out="sharded")
        assert shard is not None and shard["kind"] == "matrix-shard", rs.stderr
        shard_files.append(str(tmp_path / "sharded" / f"shard-{i}-of-3.json"))
    rm = subprocess.run([sys.executable, "-m", "crossval.cli", "matrix", "merge", *shard_files, "--out", str(tmp_path / "merged"), "--json"],
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    merged = json.loads(rm.stdout)
    receipts.validate(merged)
    assert [_strip(c) for c in merged["cells"]] == [_strip(c) for c in one["cells"]]
    assert (tmp_path / "merged" / "matrix.md").read_text().count("| bitnet-tiny |") == 6
    for c in one["cells"]:
        rec = receipts.read_valid(tmp_path / "one" / c["receipt"])  # every cell's receipt validates
        assert rec["model"]["arch"] == "bitnet"
        print(f"  {c['quant']:6s} {c['prompt']}: min_cos={c['cosine_similarity']:.6f} exact={c['exact_match_rate']:.3f} "
              f"types={rec['model']['tensor_types']}")
        assert c["cosine_similarity"] >= 0.999, c
        if c["quant"].startswith("TQ"):
            assert c["quant"] in rec["model"]["tensor_types"]  # llama.cpp really wrote ternary blocks
    # merging an incomplete or mixed set is an input error, one line
    bad = subprocess.run([sys.executable, "-m", "crossval.cli", "matrix", "merge", *shard_files[:2], "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "have shards [1, 2] of 3" in bad.stderr and bad.stderr.count("\n") == 1


@pytest.mark.real_model
@needs_llamacpp
def test_real_model_matrix_cells_say_why_they_fail(tmp_path):
    real_model_path("smollm2")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "france", "text": "The capital of France is"}) + "\n")
    r, m = _matrix(tmp_path, "--model", "smollm2", "--quants", "Q8_0,Q2_K", "--prompt-file", str(prompts), "--steps", "16")
    assert m is not None, r.stderr
    assert r.returncode == (0 if m["passed"] else 1)
    for c in m["cells"]:
        rec = receipts.read_valid(tmp_path / "m" / c["receipt"])
        print(f"  {c['quant']}: {c['status']} min_cos={c['cosine_similarity']:.5f} {c['failures']}")
        assert c["status"] in ("ok", "divergence") and c["passed"] == rec["verdict"]["passed"]
        assert c["passed"] or c["failures"]  # a failing cell says why


@pytest.mark.real_model
@needs_llamacpp
def test_a_variant_llamacpp_refuses_is_unquantizable_not_a_failure(tmp_path):
    """SmolLM2's 576-wide rows are no whole number of Q1_0's 128-value blocks and llama.cpp names no
    fallback type for Q1_0: llama-quantize refuses the model. Its cells say so (status unquantizable,
    llama.cpp's refusal in `note`), pass, and the matrix validates and exits 0; another quantizer
    failure stays an input error."""
    from crossval.matrix import Unquantizable, variant

    real_model_path("smollm2")
    with pytest.raises(Unquantizable, match="576 not divisible by 128"):
        variant("smollm2", "Q1_0")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "france", "text": "The capital of France is"}) + "\n")
    r, m = _matrix(tmp_path, "--model", "smollm2", "--quants", "Q1_0", "--prompt-file", str(prompts), "--steps", "4")
    assert m is not None and r.returncode == 0, r.stderr
    receipts.validate(m)
    (c,) = m["cells"]
    assert c["status"] == "unquantizable" and c["passed"] and c["receipt"] is None and "no tensor type fallback" in c["note"]
    assert m["counts"] == {"unquantizable": 1}
