"""IQ3_XXS, IQ3_S, IQ4_XS and IQ4_NL native kernels (engine/kernels/iq34_kernels.c) against libggml-cpu:
every vec_dot output equals ggml's exported ggml_vec_dot_* bit for bit on random and edge blocks (SIMD
and portable), and the other routes llama.cpp takes — the tiled matmul (Q8_K types, 8 activation rows
or more), tinyBLAS and the repacked 8×8 kernels (IQ4_NL) — equal their float chains, computed here
from gguf's dequantization and libm's fmaf."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

from crossval import libggml
from engine import kernels as K
from engine.quants import dequantize
from conftest import needs_llamacpp
from test_iq_kernels import _fmaf, activations, blocks
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

K_TYPES = [Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS]
UNIT = {Q.IQ3_XXS: 0.25, Q.IQ3_S: 1.0, Q.IQ4_XS: 1.0, Q.IQ4_NL: 1.0}  # a value's integer is value / (d · unit)


def _ints(w: np.ndarray, qtype) -> tuple[np.ndarray, np.ndarray]:
    """Raw blocks (rows, bytes) → (integer values (rows, blocks, block), fp16 d (rows, blocks)), from gguf's
    dequantization: every value is an exact multiple of d·unit."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    rows, nb = w.shape[0], w.shape[1] // ts
    wb = w.reshape(rows, nb, ts)
    d = wb[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    vals = dequantize(wb.reshape(rows * nb, ts), qtype).reshape(rows, nb, bs).astype(np.float64)
    unit = (d * np.float32(UNIT[qtype])).astype(np.float64)[..., None]
    v = np.where(unit != 0, np.rint(vals / np.where(unit != 0, unit, 1)), 0).astype(np.int64)
    np.testing.assert_array_equal(np.where(unit != 0, v * unit, 0), vals)
    return v, d


def _acts(xq: np.ndarray, qtype, nb: int) -> tuple[np.ndarray, np.ndarray]:
    if qtype == Q.IQ4_NL:
        a = xq.reshape(-1, nb, 34)
        return a[..., 2:].view(np.int8).astype(np.int64), a[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    a = xq.reshape(-1, nb, 292)
    return a[..., 4:260].view(np.int8).astype(np.int64), a[..., :4].copy().view(np.float32)[..., 0]


def _hsum8(x: np.ndarray) -> np.float32:
    h = (x[4:] + x[:4]).astype(np.float32)
    return np.float32(np.float32(h[0] + h[2]) + np.float32(h[1] + h[3]))


@pytest.mark.parametrize("qtype", K_TYPES + [Q.IQ4_NL], ids=lambda t: t.name)
def test_dots_equal_ggml_vec_dot(qtype, simd):  # noqa: F811
    """Q8_K types: one activation row, four at once and the tail rows (under 8 rows llama.cpp runs
    vec_dot); IQ4_NL: one row of a matrix llama.cpp does not repack (9 rows), an odd block count (its
    dot pairs blocks and adds the last one in scalar)."""
    from crossval.backends.engine import _match_ggml_build

    _match_ggml_build()  # IQ4_NL's last block fused or not, as the loaded ggml-cpu was compiled
    nl = qtype == Q.IQ4_NL
    n, rows = (32 * 33, 9) if nl else (1024, 9)
    w = blocks(qtype, rows, n, seed=int(qtype))
    x = activations(7, n, seed=int(qtype) + 1)
    out = {nt: K.matmul(w, qtype, x[:nt]) for nt in ((1,) if nl else (1, 5, 7))}
    if nl:
        out.update({t: K.matmul(w, qtype, x[t : t + 1]) for t in range(1, 7)})
    kind, name = ("q8_0", "iq4_nl_q8_0") if nl else ("q8_K", f"{qtype.name.lower()}_q8_K")
    for t in range(7):
        a = libggml.cpu_quantize_row(x[t], kind)
        for r in range(rows):
            ref = np.float32(_vec_dot(name, n, np.ascontiguousarray(w[r]), a))
            for nt, y in out.items():
                if nl and nt == t:
                    assert y[0, r] == ref, (t, r, y[0, r], ref)
                elif not nl and t < nt:
                    assert y[t, r] == ref, (nt, t, r, y[t, r], ref)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_tiled_route_is_llamacpps_chain(qtype):
    """8 activation rows or more: llama.cpp's tiled matmul — per block the exact integer s, then
    out = fma(float(s)·(d·unit), d_a, out) — for 11 rows (four at a time, then three), threaded too."""
    if K.lib.cv_simd() < 2:
        pytest.skip("the tiled route is llama.cpp's x86 AVX2 path")
    n, rows = 512, 6
    w = blocks(qtype, rows, n, seed=int(qtype) + 7)
    x = activations(11, n, seed=3)
    xq = K.quantize_acts(qtype, x)
    y = K.matmul_prequantized(w, qtype, xq, 11, n)
    v, d = _ints(w, qtype)
    aq, ad = _acts(xq, qtype, n // 256)
    ref = np.zeros_like(y)
    for t in range(11):
        for r in range(rows):
            for b in range(n // 256):
                s = np.float32(int(v[r, b] @ aq[t, b]))
                ref[t, r] = _fmaf(np.float32(s * np.float32(d[r, b] * np.float32(UNIT[qtype]))), ad[t, b], ref[t, r])
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y, K.matmul_prequantized(w, qtype, xq, 11, n, threads=2))


@pytest.mark.parametrize("rows", [16, 40, 9], ids=["repacked", "repacked-16k+8", "tinyBLAS"])
def test_iq4_nl_batched_routes_are_llamacpps_chains(rows):
    """IQ4_NL matrices of 8k rows are repacked (iq4_nl_8x8_q8_0): per output, float(block sum) times
    d_w·d_a, one FMA chain — for one activation row as for many (40 rows: the AVX-512 kernel's groups
    of 16 rows, then 8 alone). Other matrices with 2+ activation rows go through tinyBLAS: 8 lanes
    (4 values each), each an FMA chain with d_w·d_a, hsum at the end."""
    if K.lib.cv_simd() < 2:
        pytest.skip("repacking and tinyBLAS are llama.cpp's x86 AVX2 paths")
    n, n_tok = 32 * 9, 19  # 16 activation rows per unpacked block, then 3
    w = blocks(Q.IQ4_NL, rows, n, seed=11)
    x = activations(n_tok, n, seed=12)
    xq = K.quantize_acts(Q.IQ4_NL, x)
    y = K.matmul_prequantized(w, Q.IQ4_NL, xq, n_tok, n)
    v, d = _ints(w, Q.IQ4_NL)
    aq, ad = _acts(xq, Q.IQ4_NL, n // 32)
    ref = np.zeros_like(y)
    for t in range(n_tok):
        for r in range(rows):
            acc = np.zeros(8, dtype=np.float32)
            for b in range(n // 32):
                prod = v[r, b] * aq[t, b]
                dd = np.float32(d[r, b] * ad[t, b])
                if rows % 8 == 0:
                    ref[t, r] = _fmaf(np.float32(int(prod.sum())), dd, ref[t, r])
                else:
                    lanes = prod.reshape(8, 4).sum(1)
                    acc = np.array([_fmaf(dd, np.float32(int(lanes[k])), acc[k]) for k in range(8)], dtype=np.float32)
            if rows % 8:
                ref[t, r] = _hsum8(acc)
    np.testing.assert_array_equal(y, ref)
    if rows % 8 == 0:  # decode takes the repacked gemv: the same chain
        np.testing.assert_array_equal(K.matmul_prequantized(w, Q.IQ4_NL, xq[: len(xq) // n_tok], 1, n)[0], ref[0])
    np.testing.assert_array_equal(y, K.matmul_prequantized(w, Q.IQ4_NL, xq, n_tok, n, threads=2))
    try:  # VNNI's dpbusd (this CPU's pick) and plain AVX2's maddubs + madd form the same integers
        assert K.lib.cv_set_simd(2) == 2
        np.testing.assert_array_equal(K.matmul_prequantized(w, Q.IQ4_NL, xq, n_tok, n), ref)
    finally:
        K.lib.cv_set_simd(-1)


def test_faithful_tiny_iq4_nl_with_unrepacked_rows_is_llamacpp_bit_for_bit(tmp_path):
    """A tiny llama with one KV head of 12 dims (K and V have 12 rows: llama.cpp repacks IQ4_NL only
    in groups of 8 rows) quantized by llama.cpp to nothing but IQ4_NL: K and V take vec_dot when
    decoding and tinyBLAS for the prompt's batch, every other matrix the repacked kernels — faithful
    mode's logits are llama.cpp's to the bit, under the strict profile."""
    import json
    import subprocess
    import sys

    from crossval import receipts
    from engine.gguf_model import open_gguf
    from test_iq_kernels import _QUANTIZE_PURE
    from tiny_models import write_tiny_model

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=96, n_head=8, n_head_kv=1, n_ff=128)
    model = tmp_path / "iq4_nl.gguf"
    q = subprocess.run([sys.executable, "-c", _QUANTIZE_PURE, str(f32), str(model), "IQ4_NL"], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    g = open_gguf(model)
    assert {t.type for t in g.tensors.values() if len(t.ne) >= 2} == {Q.IQ4_NL} and g.tensor("blk.0.attn_k.weight").ne[1] == 12
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--mode", "faithful", "--prompt-file",
                        str(prompts), "--steps", "8", "--n-ctx", "64", "--out", str(out), "--json"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    summary = json.loads(r.stdout)
    rec = receipts.read_valid(out / summary["run_id"] / summary["receipts"][0]["file"])
    assert rec["backends"]["engine"]["fallback_types"] == [] and rec["thresholds"]["profile"] == "faithful"
    assert rec["parity"]["max_abs_diff"] == 0.0 and rec["parity"]["exact_match_rate"] == 1.0, rec["parity"]
    assert rec["verdict"]["passed"], rec["verdict"]["failures"]
