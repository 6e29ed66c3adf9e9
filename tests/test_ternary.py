"""TQ1_0 and TQ2_0 (llama.cpp's ternary types) in faithful mode: the native dots against the ones
libggml-cpu exports, and the synthetic BitNet model quantized by llama.cpp to each type, bit for bit
against llama.cpp on every default prompt."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_llamacpp
from gguf import GGMLQuantizationType as Q

from crossval import libggml
from engine import kernels as K

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp, pytest.mark.llamacpp]

NAMES = {Q.TQ1_0: "tq1_0_q8_K", Q.TQ2_0: "tq2_0_q8_K"}


def _ggml_dot(name: str, n: int, w: np.ndarray, a: np.ndarray) -> float:
    import ctypes

    lib = libggml._cpu_lib()
    lib.ggml_cpu_init()
    fn = getattr(lib, f"ggml_vec_dot_{name}")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_int]  # fmt: skip
    out = np.zeros(1, dtype=np.float32)
    fn(n, out.ctypes.data, 0, w.ctypes.data, 0, a.ctypes.data, 0, 1)
    return float(out[0])


def _ternary_rows(qtype, n: int, seed: int) -> np.ndarray:
    """Rows llama.cpp's quantizer makes: random ternary × scale, random floats (ternarised), and the
    edge blocks — all −1, all 0, all +1, and the largest scales."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(8, n)).astype(np.float32) * rng.uniform(0.01, 3.0, (8, 1)).astype(np.float32)
    w[1] = rng.standard_normal(n).astype(np.float32)
    w[2], w[3], w[4] = -1.0, 0.0, 1.0
    w[5] = np.sign(w[5]) * np.float32(65504.0)  # the largest fp16 scale
    return libggml.from_float_ref(w, qtype).reshape(8, -1)


@pytest.mark.parametrize("qtype", list(NAMES), ids=lambda t: t.name)
def test_ternary_dots_equal_ggml_vec_dot(qtype):
    """Our AVX2 dot equals ggml_vec_dot_tq*_q8_K bit for bit (its eight int32 lanes, each block
    fused-multiply-added into its float lane, hsum_float_8), on random and edge blocks and
    activations, and so does the portable emulation of those lanes (cv_tq_dot_lanes)."""
    if K.lib.cv_set_simd(-1) == 0:
        pytest.skip("no AVX2: llama.cpp's generic dot is not the exported one here")
    rng = np.random.default_rng(int(qtype))
    for n in (256, 1024, 4096):
        w = _ternary_rows(qtype, n, seed=n)
        for scale in (1e-3, 1.0, 300.0):
            x = (rng.standard_normal((1, n)) * scale).astype(np.float32)
            x[0, :256] = 0.0 if scale == 1.0 else x[0, :256]  # an all-zero activation block
            a = libggml.cpu_quantize_row(x[0], "q8_K")
            y = K.matmul(w, qtype, x, threads=1)[0]
            for r in range(w.shape[0]):
                row = np.ascontiguousarray(w[r])
                ref = _ggml_dot(NAMES[qtype], n, row, a)
                assert y[r] == ref, (n, scale, r, y[r], ref)
                assert K.lib.cv_tq_dot_lanes(int(qtype), K._ptr(row, "void *"), K._ptr(a, "void *"), n // 256) == ref


@pytest.mark.parametrize("qtype", list(NAMES), ids=lambda t: t.name)
def test_ternary_matmul_rows_threads_and_portable_path(qtype):
    """Batches, single tokens and two threads give identical rows (llama.cpp uses vec_dot for
    every batch size with these types); the portable (generic) path stays within float rounding."""
    w = _ternary_rows(qtype, 512, seed=3)
    x = np.random.default_rng(4).standard_normal((9, 512)).astype(np.float32)
    one = K.matmul(w, qtype, x, threads=1)
    np.testing.assert_array_equal(one, K.matmul(w, qtype, x, threads=2))
    for t in range(9):
        np.testing.assert_array_equal(K.matmul(w, qtype, x[t : t + 1])[0], one[t])
    try:
        K.lib.cv_set_simd(0)
        portable = K.matmul(w, qtype, x)
    finally:
        K.lib.cv_set_simd(-1)
    np.testing.assert_allclose(portable, one, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("quant", ["TQ1_0", "TQ2_0"])
def test_bitnet_tiny_ternary_quants_are_bit_exact_against_llamacpp(quant):
    """bitnet-tiny quantized by llama.cpp to TQ1_0 / TQ2_0: no fallback types, and on every default
    prompt the faithful engine's logits equal llama.cpp's at every prompt position and every step of
    a 32-step greedy run, with identical tokens."""
    from crossval.backends.engine import EngineBackend
    from crossval.backends.isolated import IsolatedLlamaCpp
    from crossval.matrix import variant
    from crossval.prompts import load_set, render
    from engine.gguf_model import open_gguf
    from engine.weights import faithful_fallbacks

    path = variant("bitnet-tiny", quant)
    g = open_gguf(path)
    assert {t.type.name for t in g.tensors.values() if len(t.ne) == 2} >= {quant}
    assert faithful_fallbacks(g) == []
    ref = IsolatedLlamaCpp(path, n_ctx=4096, timeout=600)
    eng = EngineBackend(path, n_ctx=4096, kv_type="f16", mode="faithful")
    try:
        for pr in load_set("default"):
            ids = ref.tokenize(render(pr, None), True, False)
            r, e = ref.compare_pass(ids, 32), eng.compare_pass(ids, 32)
            assert np.abs(e.prompt_logits - r.prompt_logits).max() == 0.0, pr.id
            assert e.tokens == r.tokens, pr.id
            assert np.abs(e.step_logits - r.step_logits).max() == 0.0, pr.id
        assert eng.engine.model.w._decoder is not None  # the steps ran every layer in C (cv_layer_decode, bitnet's sub-norms)
    finally:
        ref.close()
