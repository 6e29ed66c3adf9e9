"""Q2_0 native kernels (engine/kernels/q2_0_kernels.c) against libggml-cpu: the engine reads type 42,
which the gguf package does not define (engine/quants.py QUANT_SIZES / ggml_type), its numpy Q2_0 decode
equals libggml's to_float; every native output equals ggml's exported ggml_vec_dot_q2_0_q8_0 bit for bit
on random and edge blocks (SIMD and portable, one activation row and batches — on x86 llama.cpp takes
that generic C vec_dot for every Q2_0 matmul: no SIMD version, no repacked, tinyBLAS or tiled route),
even on activation bytes of −128; and a tiny llama that llama.cpp's quantizer makes pure Q2_0 runs bit
for bit in faithful mode (Gemma-3-270M's Q2_0 requantization: tests/test_faithful.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_llamacpp
from crossval import libggml
from engine import kernels as K
from engine.quants import Q2_0, QUANT_SIZES, block_layout, dequantize
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs
from test_mxfp4_kernels import _assert_bit_exact, _faithful_run, mxfp4_activations

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

QK, BLOCK = QUANT_SIZES[Q2_0]  # block_q2_0: 64 values, fp16 d + 16 bytes of 2-bit codes


def q2_0_blocks(rows: int, n: int, seed: int) -> np.ndarray:
    """Random codes with fp16 scales in [0.01, 2), then edge rows: all bytes 0 (d = 0: every value −0),
    every code 00 (all −d), 01 (all 0), 11 (all +2d), negative scales, the largest finite fp16 (65504),
    and from row 7 on codes with scales of full 11-bit significands, so the block sums round."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, n // QK, BLOCK), dtype=np.uint8)
    raw[..., :2] = rng.uniform(0.01, 2.0, size=raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    raw[1] = 0
    raw[2, :, 2:], raw[3, :, 2:], raw[4, :, 2:] = 0x00, 0x55, 0xFF
    raw[5, :, :2] = (-rng.uniform(0.01, 2.0, size=raw.shape[1])).astype(np.float16)[:, None].view(np.uint8)
    raw[6, :, :2] = np.full(raw.shape[1], 65504, dtype=np.float16)[:, None].view(np.uint8)
    raw[7:, :, :2] = rng.uniform(1.0, 2.0, size=raw[7:].shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def test_type_42_is_libggml_q2_0():
    """The engine's block size and bytes for type 42 are libggml's (the gguf package has no entry)."""
    tr = libggml.traits(42)
    assert (tr.blck_size, tr.type_size) == (QK, BLOCK) == (block_layout(42).block_size, block_layout(42).type_size)
    assert block_layout(42).vec_dot_type.name == "Q8_0" and Q2_0.name == "Q2_0"


def test_q2_0_dequantizes_as_libggml():
    """The engine's Q2_0 decode: (q − 1)·d per 2-bit code — every edge row above and random blocks,
    equal to libggml's dequantize_row_q2_0 bit for bit (−0 where d = 0 or a 01 code under a negative d)."""
    w = q2_0_blocks(12, QK * 4, seed=3)
    ours = dequantize(w, Q2_0)
    ref = libggml.to_float(w.reshape(-1), 42, w.shape[0] * QK * 4).reshape(ours.shape)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert (ours[1].view(np.uint32) == 0x80000000).all()  # d = 0: every value −0


def _chain(w: np.ndarray, xq: np.ndarray, fused: bool) -> np.ndarray:
    """ggml_vec_dot_q2_0_q8_0's float steps from the exact integer block sums, one row × one activation
    row per output: sumi = 0 + d_a0·s0 + d_a1·s1, sumf += d_w·sumi — products rounded (fused = False) or
    each add fused with its product (an FMA, float64 then float32: the alternative a contracting build
    would compute)."""
    f32 = np.float32
    nb = w.shape[-1] // BLOCK
    wb = w.reshape(-1, nb, BLOCK)
    codes = ((wb[..., 2:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(len(wb), nb, 2, 32).astype(np.int64) - 1
    xb = xq.reshape(len(xq), nb, 2, 34)
    ya = xb[..., 2:].view(np.int8).astype(np.int64)
    dya = xb[..., :2].copy().view(np.float16)[..., 0].astype(f32)  # (t, nb, 2)
    dw = wb[..., :2].copy().view(np.float16)[..., 0].astype(f32)  # (r, nb)
    s = np.einsum("rbkj,tbkj->trbk", codes, ya).astype(f32)  # exact: |s| ≤ 2·128·32
    add = (lambda a, b, c: f32(np.float64(a) * np.float64(b) + np.float64(c))) if fused else (lambda a, b, c: f32(f32(a * b) + c))
    out = np.zeros(s.shape[:2], f32)
    for b in range(nb):
        sumi = add(dya[:, None, b, 0], s[..., b, 0], f32(0))
        sumi = add(dya[:, None, b, 1], s[..., b, 1], sumi)
        out = add(dw[None, :, b], sumi, out)
    return out


@pytest.mark.parametrize("n", [QK * 5, 1024], ids=["5-blocks", "16-blocks"])
def test_dots_equal_ggml_vec_dot(n, simd):  # noqa: F811
    """13 rows × 7 activation rows, every output ggml_vec_dot_q2_0_q8_0's float — the batch at once, row
    by row, and on two threads. Its float steps are not contracted in this build (products rounded, then
    added): the same chain written out in numpy gives every output, the fused chain misses some."""
    rows = 13
    w = q2_0_blocks(rows, n, seed=n)
    x = mxfp4_activations(7, n, seed=n + 1)
    xq = np.stack([libggml.cpu_quantize_row(x[t], "q8_0") for t in range(7)])
    ref = np.array([[_vec_dot("q2_0_q8_0", n, np.ascontiguousarray(w[r]), xq[t]) for r in range(rows)] for t in range(7)], dtype=np.float32)
    assert (np.abs(ref[5:, 7:]) > 1.0).all()  # inexact products: d_w, d_a and the sums all carry full significands
    np.testing.assert_array_equal(_chain(w, xq, fused=False), ref)
    assert (_chain(w, xq, fused=True) != ref).any()
    np.testing.assert_array_equal(K.matmul(w, Q2_0, x), ref)
    np.testing.assert_array_equal(K.matmul(w, Q2_0, x, threads=2), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q2_0, x[t : t + 1]) for t in range(7)]), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q2_0, x[t : t + 1], threads=2) for t in range(7)]), ref)


def test_activation_bytes_of_minus_128(simd):  # noqa: F811
    """Q8_0 blocks ggml's quantizer never writes (bytes −128) but vec_dot accepts: the integer sums stay
    exact (codes ≤ 3 against −128: no 16-bit saturation in the SIMD sums)."""
    n, rows = QK * 3, 13
    w = q2_0_blocks(rows, n, seed=5)
    rng = np.random.default_rng(6)
    xq = np.zeros((4, n // 32, 34), dtype=np.uint8)
    xq[..., :2] = rng.uniform(0.01, 1.0, size=xq.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    xq[..., 2:] = rng.choice(np.array([-128, -127, -1, 0, 1, 127], dtype=np.int8), size=xq[..., 2:].shape).view(np.uint8)
    xq[0, :, 2:] = np.uint8(0x80)  # a row of nothing but −128
    xq = xq.reshape(4, -1)
    ref = np.array([[_vec_dot("q2_0_q8_0", n, np.ascontiguousarray(w[r]), xq[t]) for r in range(rows)] for t in range(4)], dtype=np.float32)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q2_0, np.ascontiguousarray(xq), 4, n), ref)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q2_0, np.ascontiguousarray(xq[:1]), 1, n), ref[:1])


def test_faithful_tiny_pure_q2_0_llama_is_llamacpp_bit_for_bit(tmp_path):
    """A tiny llama quantized by llama.cpp to nothing but Q2_0 (llama-quantize Q2_0 --pure; rows of 128
    and 256, the block's 64): the engine reads the type-42 file, and the prompt's batch and 8 decode
    steps give llama.cpp's logits to the bit under the strict profile, no fallback type."""
    from engine.gguf_model import open_gguf
    from test_iq_kernels import _QUANTIZE_PURE
    from tiny_models import write_tiny_model

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=128, n_head=4, n_head_kv=1, n_ff=256)
    model = tmp_path / "q2_0.gguf"
    q = subprocess.run([sys.executable, "-c", _QUANTIZE_PURE, str(f32), str(model), "Q2_0"], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    assert {t.type for t in open_gguf(model).tensors.values() if len(t.ne) >= 2} == {Q2_0}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    _assert_bit_exact(_faithful_run(tmp_path, model, "--prompt-file", str(prompts), "--steps", "8", "--n-ctx", "64"), 8)
