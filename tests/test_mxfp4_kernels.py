"""MXFP4 native kernels (engine/kernels/mxfp4_kernels.c) against libggml-cpu: every vec_dot output equals
ggml's exported ggml_vec_dot_mxfp4_q8_0 bit for bit on random and edge blocks (SIMD and portable); the
repacked route (rows % 8 == 0) equals ggml's exported ggml_gemv / ggml_gemm_mxfp4_8x8_q8_0 run on the
weights repacked as repack.cpp repacks them; and models llama.cpp quantizes to MXFP4 — a pure-MXFP4 tiny
llama and the MXFP4_MOE requantization of the synthetic qwen3moe — run bit for bit in faithful mode."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from crossval import libggml, receipts
from engine import kernels as K
from test_iq_kernels import activations
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

BLOCK = 17  # block_mxfp4: one E8M0 byte, 16 bytes of nibbles


def mxfp4_blocks(rows: int, n: int, seed: int) -> np.ndarray:
    """Random blocks (every nibble, scales around 2^0) and edge rows: all bytes 0 (E8M0 0: the subnormal
    scale 2^-128), all bytes 0xFF (E8M0 255: 2^127 — infinities in the sums), scale bytes 1 (2^-127) and
    254 (2^126), a row of the largest magnitudes (+12, −12), and from row 6 on rows of positive values
    1…12 only: against the positive activations their block sums need 14–15 bits, so d·sum (d with an
    fp16 activation scale's 11) is often inexact in float and a fused multiply-add differs from an
    unfused one."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, n // 32, BLOCK), dtype=np.uint8)
    raw[..., 0] = rng.integers(110, 140, size=raw.shape[:2])
    raw[1], raw[2] = 0, 0xFF
    raw[3, :, 0], raw[4, :, 0] = 1, 254
    raw[5, :, 1:] = 0x7F  # +12 and −12 in every byte
    raw[6:, :, 1:] = (rng.integers(1, 8, size=raw[6:, :, 1:].shape) | rng.integers(1, 8, size=raw[6:, :, 1:].shape) << 4).astype(np.uint8)
    return raw.reshape(rows, -1)


def mxfp4_activations(n_tok: int, n: int, seed: int) -> np.ndarray:
    """test_iq_kernels' activation rows (random, constant, alternating, zeros, tiny), from row 5 on
    positive ones near their block maxima (Q8_0 values 64…127: large block sums)."""
    x = activations(max(n_tok, 7), n, seed)[:n_tok]
    x[5:] = np.random.default_rng(seed).uniform(0.55, 1.0, size=x[5:].shape).astype(np.float32) * np.float32(3.0)
    return x


@pytest.mark.parametrize("n", [32 * 33, 1024], ids=["odd-blocks", "even-blocks"])
def test_dots_equal_ggml_vec_dot(n, simd):  # noqa: F811
    """A matrix llama.cpp does not repack (13 rows): every activation row — one at a time and seven at
    once (MXFP4 has no tinyBLAS or tiled route: vec_dot for every batch) — gives ggml_vec_dot_mxfp4_q8_0's
    float: its two 8-lane FMA accumulators over pairs of blocks, hsum, an odd last block in scalar (with
    or without an FMA as this build compiled it; the other form must fail some row)."""
    from crossval.backends.engine import _match_ggml_build

    _match_ggml_build()  # the last block fused or not, as the loaded ggml-cpu was compiled
    rows = 13
    w = mxfp4_blocks(rows, n, seed=n)
    x = mxfp4_activations(7, n, seed=n + 1)
    batch = K.matmul(w, Q.MXFP4, x)
    ref = np.array([[_vec_dot("mxfp4_q8_0", n, np.ascontiguousarray(w[r]), libggml.cpu_quantize_row(x[t], "q8_0")) for r in range(rows)]
                    for t in range(7)], dtype=np.float32)  # fmt: skip
    assert np.isinf(ref[0, 2]) or np.isnan(ref[0, 2])  # the 2^127 row overflows, on both sides alike
    np.testing.assert_array_equal(batch, ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.MXFP4, x[t : t + 1]) for t in range(7)]), ref)
    if n // 32 % 2:  # the data tells the two tail forms apart
        fused = K.tail_fma(Q.MXFP4)
        try:
            K.set_tail_fma(Q.MXFP4, not fused)
            assert (K.matmul(w, Q.MXFP4, x) != ref).any()
        finally:
            K.set_tail_fma(Q.MXFP4, fused)


def _repack_8x8(w: np.ndarray) -> np.ndarray:
    """repack.cpp repack_mxfp4_to_mxfp4_8_bl: per group of 8 rows and block, the 8 scale bytes, then the
    rows' nibble bytes in chunks of 8 — chunk i is row i mod 8's bytes 8·(i div 8) … +8 (make_block_mxfp4x8)."""
    rows, nb = w.shape[0], w.shape[1] // BLOCK
    b = w.reshape(rows // 8, 8, nb, BLOCK).transpose(0, 2, 1, 3)  # (groups, blocks, 8 rows, 17)
    out = np.empty((rows // 8, nb, 8 + 128), dtype=np.uint8)
    out[..., :8] = b[..., 0]
    for i in range(16):
        out[..., 8 + 8 * i : 16 + 8 * i] = b[:, :, i % 8, 1 + 8 * (i // 8) : 9 + 8 * (i // 8)]
    return np.ascontiguousarray(out)


def _ggml_repacked(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What llama.cpp's repack forward_mul_mat computes: activation rows in groups of four through
    ggml_gemm_mxfp4_8x8_q8_0 (activations by ggml_quantize_mat_q8_0_4x8), the rest through ggml_gemv."""
    lib = libggml._cpu_lib()
    lib.ggml_cpu_init()  # fills the E8M0 table the kernels read
    vp = ctypes.c_void_p
    for name in ("ggml_gemv_mxfp4_8x8_q8_0", "ggml_gemm_mxfp4_8x8_q8_0"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = None, [ctypes.c_int, vp, ctypes.c_size_t, vp, vp, ctypes.c_int, ctypes.c_int]
    lib.ggml_quantize_mat_q8_0_4x8.restype, lib.ggml_quantize_mat_q8_0_4x8.argtypes = None, [vp, vp, ctypes.c_int64]
    rows, (n_tok, n) = w.shape[0], x.shape
    rp = _repack_8x8(w)
    out = np.zeros((n_tok, rows), dtype=np.float32)
    for t0 in range(0, n_tok - n_tok % 4, 4):
        xa = np.ascontiguousarray(x[t0 : t0 + 4], dtype=np.float32)
        xq = np.zeros(4 * (n // 32) * 34, dtype=np.uint8)
        lib.ggml_quantize_mat_q8_0_4x8(xa.ctypes.data, xq.ctypes.data, n)
        s = np.zeros((4, rows), dtype=np.float32)
        lib.ggml_gemm_mxfp4_8x8_q8_0(n, s.ctypes.data, rows, rp.ctypes.data, xq.ctypes.data, 4, rows)
        out[t0 : t0 + 4] = s
    for t in range(n_tok - n_tok % 4, n_tok):
        a = libggml.cpu_quantize_row(x[t], "q8_0")
        lib.ggml_gemv_mxfp4_8x8_q8_0(n, out[t].ctypes.data, rows, rp.ctypes.data, a.ctypes.data, 1, rows)
    return out


@pytest.mark.parametrize("rows, n, n_tok", [(16, 32 * 9, 19), (24, 256, 1), (8, 64, 6)])
def test_repacked_route_is_ggmls_gemv_and_gemm(rows, n, n_tok):
    """Rows % 8 == 0: llama.cpp repacks the matrix (mxfp4_8x8_q8_0) and its gemv and gemm keep one FMA
    chain per output, float(block sum) × e_half·d_a. The native kernel reads the GGUF's own layout and
    gives the exported kernels' floats — threaded, and with VNNI's dpbusd or plain AVX2's maddubs."""
    if K.lib.cv_simd() < 2:
        pytest.skip("repacking is llama.cpp's x86 AVX2 path")
    w = mxfp4_blocks(rows, n, seed=rows + n)
    w[2] = w[0]  # no overflow row here: the edge scales 2^-128, 2^-127 and 2^126 stay
    x = mxfp4_activations(n_tok, n, seed=n_tok)
    ref = _ggml_repacked(w, x)
    np.testing.assert_array_equal(K.matmul(w, Q.MXFP4, x), ref)
    np.testing.assert_array_equal(K.matmul(w, Q.MXFP4, x, threads=2), ref)
    try:
        assert K.lib.cv_set_simd(2) == 2
        np.testing.assert_array_equal(K.matmul(w, Q.MXFP4, x), ref)
    finally:
        K.lib.cv_set_simd(-1)


def _faithful_run(tmp_path, model, *args: str) -> list[dict]:
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--mode", "faithful", "--kv-type", "f16",
                        "--out", str(out), "--json", *args], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.stdout, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    return [receipts.read_valid(out / summary["run_id"] / x["file"]) for x in summary["receipts"]]


def _assert_bit_exact(recs: list[dict], steps: int) -> None:
    for rec in recs:
        p = rec["parity"]
        assert rec["backends"]["engine"]["fallback_types"] == [] and rec["thresholds"]["profile"] == "faithful"
        assert p["max_abs_diff"] == 0.0 and p["exact_match_rate"] == 1.0 and p["steps_compared"] == steps, (rec["prompt"]["id"], p)
        assert rec["verdict"]["passed"], rec["verdict"]["failures"]


def test_faithful_tiny_pure_mxfp4_llama_is_llamacpp_bit_for_bit(tmp_path):
    """A tiny llama quantized by llama.cpp to nothing but MXFP4 (MXFP4_MOE, --pure) with one KV head of
    12 dims: K and V (12 rows) take vec_dot for the prompt's batch and each decode step, every other
    matrix the repacked kernels (gemm, gemv) — faithful mode's logits are llama.cpp's to the bit."""
    from engine.gguf_model import open_gguf
    from test_iq_kernels import _QUANTIZE_PURE
    from tiny_models import write_tiny_model

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=96, n_head=8, n_head_kv=1, n_ff=128)
    model = tmp_path / "mxfp4.gguf"
    q = subprocess.run([sys.executable, "-c", _QUANTIZE_PURE, str(f32), str(model), "MXFP4_MOE"], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    g = open_gguf(model)
    assert {t.type for t in g.tensors.values() if len(t.ne) >= 2} == {Q.MXFP4} and g.tensor("blk.0.attn_k.weight").ne[1] == 12
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    _assert_bit_exact(_faithful_run(tmp_path, model, "--prompt-file", str(prompts), "--steps", "8", "--n-ctx", "64"), 8)


def test_faithful_mxfp4_moe_is_llamacpp_bit_for_bit(tmp_path):
    """llama.cpp's MXFP4_MOE requantization of the synthetic qwen3moe: its 3-D expert tensors MXFP4
    (mul_mat_id's repacked gemv, one activation row per selected expert), everything else Q8_0 —
    every default prompt's logits and 32 greedy steps equal llama.cpp's, no fallback type."""
    from crossval.matrix import variant
    from engine.gguf_model import open_gguf

    model = variant("qwen3moe-tiny", "MXFP4_MOE")
    g = open_gguf(model)
    types = {(n, t.type) for n, t in g.tensors.items() if len(t.ne) >= 2}
    assert {t for n, t in types if "_exps" in n} == {Q.MXFP4} and {t for n, t in types if "_exps" not in n} <= {Q.Q8_0, Q.F32}
    recs = _faithful_run(tmp_path, model, "--steps", "32", "--n-ctx", "4096")
    assert len(recs) == 8
    _assert_bit_exact(recs, 32)
