"""q8 mode: activations rounded as ggml's CPU backend quantizes them, proven bit-exact against
libggml-cpu's own quantize_row_{q8_0,q8_1,q8_K}, and matmuls equal to llama.cpp's captured ones."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from engine.act_quant import q8_0_roundtrip, q8_1_sum_error, q8_k_roundtrip


def _rows(rng, n, k):
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 50, size=(n, 1))).astype(np.float32)
    x[0, :256] = 0.0  # all-zero blocks
    x[1, 7] = -1e3  # negative spike sets the Q8_K scale sign
    x[2] = np.round(x[2] * 4) / 4  # values on a grid: exact .5 ties after scaling
    x[3, :32] = np.float32(127.0) * np.arange(32, dtype=np.float32) / 64  # ties at q + 0.5
    return x


@needs_llamacpp
@pytest.mark.parametrize("kind", ["q8_0", "q8_1", "q8_K"])
def test_roundtrip_bit_exact_vs_libggml_cpu(kind):
    from crossval import libggml

    rng = np.random.default_rng({"q8_0": 1, "q8_1": 2, "q8_K": 3}[kind])
    x = _rows(rng, 16, 1024)
    ours = (q8_k_roundtrip if kind == "q8_K" else q8_0_roundtrip)(x)
    for r in range(len(x)):
        ref = libggml.decode_q8_row(libggml.cpu_quantize_row(x[r], kind), kind)
        np.testing.assert_array_equal(ours[r], ref, err_msg=f"row {r}")


@needs_llamacpp
def test_q8_1_block_sums_match_libggml_cpu():
    from crossval import libggml

    x = _rows(np.random.default_rng(4), 8, 512)
    err = q8_1_sum_error(x)
    xq = q8_0_roundtrip(x)
    for r in range(len(x)):
        raw = libggml.cpu_quantize_row(x[r], "q8_1").reshape(-1, 36)
        s_stored = raw[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
        s_ours = xq[r].reshape(-1, 32).sum(-1, dtype=np.float32) + err[r]
        np.testing.assert_array_equal(s_ours, s_stored)


@needs_llamacpp
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_q8_matmul_equals_llamacpp_matmul(tmp_path, qtype):
    """Given llama.cpp's own ffn_norm-0 output, the engine's q8-mode gate/up projections equal
    llama.cpp's ffn_gate-0 / ffn_up-0 to summation order; float mode is visibly further away."""
    from crossval.backends.llamacpp import LlamaCppBackend
    from engine.generate import Engine
    from tiny_models import write_tiny_model

    path = write_tiny_model(tmp_path / "m.gguf", "llama", n_embd=256, n_head=4, n_head_kv=2, n_ff=512, weight_type=qtype)
    with LlamaCppBackend(path, n_ctx=64, kv_type="f32", capture=True) as ref:
        ids = ref.tokenize("the cat sat on the mat and the dog ran", add_bos=True)
        _, cap = ref.capture_logits(ids, lambda n: n in ("ffn_norm-0", "ffn_gate-0", "ffn_up-0"))
    n = len(ids)
    h = cap["ffn_norm-0"].reshape(n, -1)
    want = np.concatenate([cap["ffn_gate-0"].reshape(n, -1), cap["ffn_up-0"].reshape(n, -1)], axis=1)

    def nmse(mode):
        eng = Engine(path, n_ctx=64, mode=mode)
        got = eng.model.w.matmul(h, ("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"))
        return float(np.mean((got - want) ** 2) / np.mean(want**2))

    q8, fl = nmse("q8"), nmse("float")
    assert q8 < 1e-11, q8
    assert fl > 100 * q8, (fl, q8)
