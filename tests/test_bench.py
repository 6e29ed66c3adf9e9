"""`crossval bench`: a schema-valid perf receipt with both engines' tok/s and their ratios, recorded
into a trend directory, and --check failing on a ratio regression (not on absolute times)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import needs_llamacpp
from crossval import bench, receipts

pytestmark = [needs_llamacpp]


def _bench(tmp_path, model, *args):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "bench", "--model", str(model), "--threads", "1",
                        "--decode-steps", "8", "--prefill-tokens", "32", "--perf-dir", str(tmp_path / "perf"), "--json", *args],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    return r, (json.loads(r.stdout) if r.stdout.strip() else None)


def test_bench_records_and_checks_ratios(tmp_path, tiny_model):
    model = tiny_model("llama")
    r, out = _bench(tmp_path, model, "--record", "--rounds", "2")  # each engine's best of two alternating rounds
    assert r.returncode == 0, r.stderr
    for k in ("engine_decode_tok_s", "llamacpp_decode_tok_s", "decode_ratio", "engine_prefill_tok_s", "prefill_ratio"):
        assert out[k] > 0
    assert abs(out["decode_ratio"] - out["engine_decode_tok_s"] / out["llamacpp_decode_tok_s"]) < 1e-9
    rec_path = next((tmp_path / "perf").glob("*.json"))
    rec = receipts.read_valid(rec_path)
    assert rec["kind"] == "perf" and rec["micro"]["perf_matmul_decode"]["gflops"] > 0 and rec["config"]["rounds"] == 2
    # the roofline figures are the documented formulas of the receipt's own fields
    roof, row = rec["roofline"], rec["results"][0]
    for label in ("engine", "llamacpp"):
        expect = roof["decode_bytes_per_token"] * row[f"{label}_decode_tok_s"] / (row["stream_gb_s"] * 1e9)
        assert abs(row[f"{label}_decode_roofline"] - expect) <= 1e-12 * expect
        gop = 2 * roof["prefill_weight_elements"] * row[f"{label}_prefill_tok_s"] / 1e9
        assert abs(row[f"{label}_prefill_gop_s"] - gop) <= 1e-12 * gop
    assert row["matmul_peak_gop_s"] > 0 and roof["stream_buffer_bytes"] >= 256 << 20
    # the external transport: 650 rows of the model's logits (the bench checked their bytes), and
    # its figures are the documented formulas of its own fields
    from engine.gguf_model import open_gguf, read_config

    tr, n_vocab = rec["transport"], read_config(open_gguf(model)).n_vocab
    assert (tr["transport"], tr["rows"], tr["n_vocab"]) == ("frames", 650, n_vocab) and tr["bytes"] == 650 * n_vocab * 4
    assert abs(tr["mb_s"] - tr["bytes"] / tr["seconds"] / 1e6) <= 1e-9 * tr["mb_s"]
    share = tr["seconds"] / (tr["seconds"] + 650 / row["engine_prefill_tok_s"])
    assert abs(tr["prefill_share"] - share) <= 1e-12 and out["transport"] == tr
    # a baseline whose ratios were 10× better: --check reports the regression, exit 1
    fast = json.loads(rec_path.read_text())
    for row in fast["results"]:
        row["decode_ratio"] *= 10
        row["prefill_ratio"] *= 10
    fast["run_id"], fast["timestamp"] = "zz-fast", "2999-01-01T00:00:00.000000Z"
    receipts.write(tmp_path / "perf" / "zz-fast.json", fast)
    r, out = _bench(tmp_path, model, "--check")
    assert r.returncode == 1 and out["check"]["baseline"].endswith("zz-fast.json")
    assert any("decode_ratio" in f for f in out["check"]["failures"])


def test_check_logic_is_about_ratios():
    base = {"results": [{"threads": 1, "decode_ratio": 0.5, "prefill_ratio": 1.0}]}
    rec = {"results": [{"threads": 1, "decode_ratio": 0.4, "prefill_ratio": 1.0}]}
    assert bench.check(rec, ("b.json", base), tolerance=0.25)["passed"]  # −20 %: within tolerance
    rec["results"][0]["decode_ratio"] = 0.3
    c = bench.check(rec, ("b.json", base), tolerance=0.25)
    assert not c["passed"] and "0.500 to 0.300" in c["failures"][0]
    assert bench.check(rec, None)["passed"]  # nothing recorded yet: nothing to regress from
    # the engine's decode roofline fraction is guarded like the ratios, where both receipts have it
    base["results"][0]["engine_decode_roofline"] = 0.8
    rec["results"][0].update(decode_ratio=0.5, engine_decode_roofline=0.5)
    c = bench.check(rec, ("b.json", base), tolerance=0.25)
    assert not c["passed"] and c["failures"] == ["engine_decode_roofline at 1 thread(s) fell from 0.800 to 0.500 (more than 25%)"]
    del base["results"][0]["engine_decode_roofline"]  # a baseline recorded before the field existed
    assert bench.check(rec, ("b.json", base), tolerance=0.25)["passed"]
    rec["results"][0]["threads"] = 2  # no baseline at this thread count: not compared
    assert bench.check(rec, ("b.json", base))["passed"]
