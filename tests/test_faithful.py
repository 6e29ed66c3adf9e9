"""--mode faithful on the real models: the native kernels run the GGUF's own blocks and agree with
the numpy q8 reference of the same arithmetic, and `crossval run` gates it like the other modes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts
from crossval.compare import cosine_rows
from engine import kernels

pytestmark = [pytest.mark.real_model, pytest.mark.skipif(not kernels.available(), reason=kernels.load_error() or "")]


@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_faithful_equals_the_q8_reference_up_to_summation_order(model):
    from engine.generate import Engine

    path = real_model_path(model)
    ids = [2, 818, 5279, 529, 7001, 563, 506, 5279] if model == "gemma3-270m" else [504, 3575, 282, 4649, 314, 7042, 28, 198]
    faithful = Engine(path, n_ctx=64, kv_type="f16", mode="faithful").logits(ids)
    q8 = Engine(path, n_ctx=64, kv_type="f16", mode="q8").logits(ids)
    two = Engine(path, n_ctx=64, kv_type="f16", mode="faithful", threads=2).logits(ids)
    np.testing.assert_array_equal(faithful, two)  # threads split rows, never a sum
    c = cosine_rows(faithful, q8)
    print(f"{model}: faithful vs q8 end to end: min cos {c.min():.7f}, max|d| {np.abs(faithful - q8).max():.4f}")
    # end to end, a last-bit difference before an activation quantization can move a value by a
    # whole quantization step, and that compounds over the layers: close, not equal
    assert c.min() >= 0.995 and (faithful.argmax(1) == q8.argmax(1)).all()
    # one matmul at a time the two are the same arithmetic up to summation order
    from engine.gguf_model import open_gguf
    from engine.weights import FloatWeights, NativeWeights

    g = open_gguf(path)
    nat, ref = NativeWeights(g), FloatWeights(g, act_quant=True)
    x = np.random.default_rng(0).standard_normal((3, g.tensor("blk.0.attn_q.weight").ne[0])).astype(np.float32)
    for n in [t for t in g.tensors if t.startswith("blk.0.") and t.endswith(".weight") and len(g.tensor(t).ne) == 2]:
        if g.tensor(n).ne[0] != x.shape[1]:
            continue
        a, b = nat.matmul(x, (n,)), ref.matmul(x, (n,))
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max() + 1e-6, n


@needs_llamacpp
def test_crossval_run_in_faithful_mode(tmp_path):
    real_model_path("smollm2")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "france", "text": "The capital of France is"}) + "\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", "smollm2", "--mode", "faithful", "--prompt-file",
                        str(prompts), "--steps", "16", "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = json.loads(r.stdout)
    rec = receipts.read_valid(out / summary["run_id"] / summary["receipts"][0]["file"])
    assert rec["config"]["mode"] == "faithful" and rec["backends"]["engine"]["mode"] == "faithful"
    print(f"faithful: min cos {rec['parity']['cosine_similarity']:.6f} kld {rec['parity']['kld_mean']:.2e}")
    assert rec["parity"]["status"] in ("ok", "divergence") and r.returncode == (0 if rec["verdict"]["passed"] else 1)
    assert rec["parity"]["cosine_mean"] >= 0.995
