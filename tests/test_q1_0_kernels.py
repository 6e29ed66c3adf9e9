"""Q1_0 native kernels (engine/kernels/q1_0_kernels.c) against libggml-cpu: the engine's numpy Q1_0 decode
(engine/quants.py; the gguf package has none) equals libggml's to_float; every native output equals ggml's
exported ggml_vec_dot_q1_0_q8_0 bit for bit on random and edge blocks (SIMD and portable, one activation row
and batches — on x86 llama.cpp takes vec_dot for every Q1_0 matmul: its repacked Q1_0 kernels are ARM's),
even on activation bytes of −128 that its negation wraps; and a tiny llama that llama.cpp's quantizer makes
pure Q1_0 runs bit for bit in faithful mode (Gemma-3-270M's Q1_0 requantization: tests/test_faithful.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from crossval import libggml
from engine import kernels as K
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs
from test_mxfp4_kernels import _assert_bit_exact, _faithful_run, mxfp4_activations

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

BLOCK, QK = 18, 128  # block_q1_0: fp16 d, 16 bytes of sign bits; 128 values


def q1_0_blocks(rows: int, n: int, seed: int) -> np.ndarray:
    """Random bits with fp16 scales in [0.01, 2), then edge rows: all bytes 0 (d = 0, every value −0),
    every bit clear (all −d), every bit set (all +d), negative scales, the largest finite fp16 (65504) and from row 6 on mostly-set bits with scales of
    full 11-bit significands, so block sums and d_w·block round."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, n // QK, BLOCK), dtype=np.uint8)
    raw[..., :2] = rng.uniform(0.01, 2.0, size=raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    raw[1] = 0
    raw[2, :, 2:], raw[3, :, 2:] = 0, 0xFF
    raw[4, :, :2] = (-rng.uniform(0.01, 2.0, size=raw.shape[1])).astype(np.float16)[:, None].view(np.uint8)
    raw[5, :, :2] = np.full(raw.shape[1], 65504, dtype=np.float16)[:, None].view(np.uint8)
    raw[6:, :, 2:] |= rng.integers(0, 256, size=raw[6:, :, 2:].shape, dtype=np.uint8)
    raw[6:, :, :2] = rng.uniform(1.0, 2.0, size=raw[6:].shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def test_q1_0_dequantizes_as_libggml():
    """The engine's Q1_0 decode: ±d by bit, −d (−0 for d = 0) where the bit is clear — every edge row
    above and random blocks, equal to libggml's dequantize_row_q1_0 bit for bit."""
    from engine.quants import dequantize

    w = q1_0_blocks(12, QK * 4, seed=3)
    ours = dequantize(w, Q.Q1_0)
    ref = libggml.to_float(w.reshape(-1), Q.Q1_0, w.shape[0] * QK * 4).reshape(ours.shape)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert (ours[1].view(np.uint32) == 0x80000000).all()  # d = 0: every value −0


@pytest.mark.parametrize("n", [QK * 5, 1024], ids=["5-blocks", "8-blocks"])
def test_dots_equal_ggml_vec_dot(n, simd):  # noqa: F811
    """13 rows × 7 activation rows, every output ggml_vec_dot_q1_0_q8_0's float: per block the four
    activation sub-blocks' lanes multiplied then fused with d_a, the block fused into one 8-lane chain
    with d_w, hsum at the end — the batch at once, row by row, and on two threads."""
    rows = 13
    w = q1_0_blocks(rows, n, seed=n)
    x = mxfp4_activations(7, n, seed=n + 1)
    ref = np.array([[_vec_dot("q1_0_q8_0", n, np.ascontiguousarray(w[r]), libggml.cpu_quantize_row(x[t], "q8_0")) for r in range(rows)]
                    for t in range(7)], dtype=np.float32)  # fmt: skip
    assert (np.abs(ref[5:, 6:]) > 1.0).all()  # inexact products: d_w, d_a and the sums all carry full significands
    np.testing.assert_array_equal(K.matmul(w, Q.Q1_0, x), ref)
    np.testing.assert_array_equal(K.matmul(w, Q.Q1_0, x, threads=2), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.Q1_0, x[t : t + 1]) for t in range(7)]), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.Q1_0, x[t : t + 1], threads=2) for t in range(7)]), ref)
    if simd == 3:  # a VNNI / AVX-512 CPU: its plain AVX2 kernels too
        try:
            assert K.lib.cv_set_simd(2) == 2
            np.testing.assert_array_equal(K.matmul(w, Q.Q1_0, x), ref)
            np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.Q1_0, x[t : t + 1]) for t in range(7)]), ref)
        finally:
            K.lib.cv_set_simd(-1)


def test_activation_bytes_of_minus_128(simd):  # noqa: F811
    """Q8_0 blocks ggml's quantizer never writes (bytes −128) but vec_dot accepts: llama.cpp negates an
    activation under a clear bit by xor and subtract, so −(−128) stays −128 — the kernels do the same."""
    n, rows = QK * 3, 13
    w = q1_0_blocks(rows, n, seed=5)
    rng = np.random.default_rng(6)
    xq = np.zeros((4, n // 32, 34), dtype=np.uint8)
    xq[..., :2] = rng.uniform(0.01, 1.0, size=xq.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    xq[..., 2:] = rng.choice(np.array([-128, -127, -1, 0, 1, 127], dtype=np.int8), size=xq[..., 2:].shape).view(np.uint8)
    xq = xq.reshape(4, -1)
    ref = np.array([[_vec_dot("q1_0_q8_0", n, np.ascontiguousarray(w[r]), xq[t]) for r in range(rows)] for t in range(4)], dtype=np.float32)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q.Q1_0, np.ascontiguousarray(xq), 4, n), ref)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q.Q1_0, np.ascontiguousarray(xq[:1]), 1, n), ref[:1])
    if simd == 3:  # the plain AVX2 kernels too
        try:
            assert K.lib.cv_set_simd(2) == 2
            np.testing.assert_array_equal(K.matmul_prequantized(w, Q.Q1_0, np.ascontiguousarray(xq), 4, n), ref)
            np.testing.assert_array_equal(K.matmul_prequantized(w, Q.Q1_0, np.ascontiguousarray(xq[:1]), 1, n), ref[:1])
        finally:
            K.lib.cv_set_simd(-1)


def test_faithful_tiny_pure_q1_0_llama_is_llamacpp_bit_for_bit(tmp_path):
    """A tiny llama quantized by llama.cpp to nothing but Q1_0 (llama-quantize Q1_0 --pure; rows of 128
    and 256, the block's 128): the prompt's batch and 8 decode steps give llama.cpp's logits to the bit
    under the strict profile, no fallback type."""
    from engine.gguf_model import open_gguf
    from test_iq_kernels import _QUANTIZE_PURE
    from tiny_models import write_tiny_model

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=128, n_head=4, n_head_kv=1, n_ff=256)
    model = tmp_path / "q1_0.gguf"
    q = subprocess.run([sys.executable, "-c", _QUANTIZE_PURE, str(f32), str(model), "Q1_0"], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    assert {t.type for t in open_gguf(model).tensors.values() if len(t.ne) >= 2} == {Q.Q1_0}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    _assert_bit_exact(_faithful_run(tmp_path, model, "--prompt-file", str(prompts), "--steps", "8", "--n-ctx", "64"), 8)
