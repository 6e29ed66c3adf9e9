"""Engine mode bf16's kernels (engine/kernels/gemma_kernels.c) against gemma.cpp's order written out
in numpy. A bf16 × bf16 product is exact in f32 and an f32 × f32 product exact in f64, so each
fused multiply-add below is one rounded addition: numpy restates the kernels' arithmetic exactly.
The real model against the real gemma.cpp is tests/test_gemmacpp.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels not built")

F32, F64 = np.float32, np.float64


def _gm():
    from engine.kernels import gemmacpp

    return gemmacpp


def _bf16(x: np.ndarray) -> np.ndarray:
    from engine.ops import round_bf16

    return round_bf16(np.asarray(x, F32))


def test_emulated_matmul_is_gemmacpps_even_then_odd_fma_order():
    """AVX3/AVX3_DL/AVX2 targets: per output, `lanes` f32 accumulators; each step of 2·lanes bf16
    values adds the even elements' products, then the odd ones'; the lanes are summed in order."""
    gm = _gm()
    rng = np.random.default_rng(1)
    for lanes, K in ((16, 96), (8, 80), (16, 70)):  # 70: a zero-padded tail vector
        t = gm.Target("test", False, lanes)
        x = rng.standard_normal((3, K)).astype(F32)
        w = _bf16(rng.standard_normal((5, K)).astype(F32))
        got = gm.matmul(x, gm.bf16_bits(w, t), t)
        xb = _bf16(x)
        pad = -K % (2 * lanes)
        xp, wp = np.pad(xb, ((0, 0), (0, pad))), np.pad(w, ((0, 0), (0, pad)))
        want = np.empty((3, 5), F32)
        for r in range(3):
            for c in range(5):
                acc = np.zeros(lanes, F32)
                for k in range(0, K + pad, 2 * lanes):
                    a, b = xp[r, k : k + 2 * lanes], wp[c, k : k + 2 * lanes]
                    acc = acc + a[0::2] * b[0::2]
                    acc = acc + a[1::2] * b[1::2]
                s = acc[0]
                for v in acc[1:]:
                    s = F32(s + v)
                want[r, c] = s
        np.testing.assert_array_equal(got, want)
        # a BF16 output matrix is the same sums rounded to bf16; threads split columns, not sums
        np.testing.assert_array_equal(gm.matmul(x, gm.bf16_bits(w, t), t, out_bf16=True, threads=2), _bf16(want))


@pytest.mark.skipif(not (kernels.available() and kernels.lib.cv_gm_cpu_native_bf16()), reason="no AVX512_BF16 on this CPU")
def test_native_matmul_uses_the_bf16_dot_and_agrees_with_the_fma_order_to_rounding():
    gm = _gm()
    rng = np.random.default_rng(2)
    nat, emu = gm.Target.named("AVX3_SPR"), gm.Target("AVX3_DL", False, 16)
    x = rng.standard_normal((4, 640)).astype(F32)
    w = gm.bf16_bits(rng.standard_normal((64, 640)).astype(F32), nat)
    a, b = gm.matmul(x, w, nat), gm.matmul(x, w, emu)
    assert not np.array_equal(a, b)  # VDPBF16PS adds each pair's products in its own order
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())
    np.testing.assert_array_equal(gm.matmul(x, w, nat, threads=2), a)


def _f64_tree(s: np.ndarray) -> float:
    """DotKernelDouble / SumKernelDouble's Reduce for 8 f64 lanes: sum0+sum1, sum2+sum3, then the
    lane tree of hwy's SumOfLanes on AVX-512 ((l0+l2)+(l6+l4)) + ((l1+l3)+(l7+l5))."""
    t = (s[0] + s[1]) + (s[2] + s[3])
    return F32(((t[0] + t[2]) + (t[6] + t[4])) + ((t[1] + t[3]) + (t[7] + t[5])))


def test_rmsnorm_f32_is_four_f64_fma_vectors_then_the_lane_tree():
    gm = _gm()
    t = gm.Target("AVX3_DL", False, 16)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 640)) * 7).astype(F32)
    w = (rng.standard_normal(640) * 0.1).astype(F32)
    got = gm.rms_norm(x, w, t)
    for r in range(2):
        s = np.zeros((4, 8), F64)
        for i in range(0, 640, 32):
            blk = x[r, i : i + 32].astype(F64).reshape(4, 8)
            s = s + blk * blk
        l2 = _f64_tree(s)
        mul = F32(1.0) / np.sqrt(F32(l2) / F32(640) + F32(1e-6))
        m = mul * x[r]
        np.testing.assert_array_equal(got[r], (m.astype(F64) * w + m).astype(F32))  # fma(m, w, m)
    np.testing.assert_array_equal(gm.rms_norm(x, w, t, out_bf16=True), _bf16(got))


def test_highway_math_polynomials_are_close_to_libm():
    """Highway's Exp, Tanh and SinCos (ported op for op) are accurate to a few ulp: a wrong constant
    or operation order would be far off."""
    gm = _gm()
    xs = np.linspace(-20, 3, 2001).astype(F32)
    np.testing.assert_allclose(gm.exp(xs), np.exp(xs.astype(F64)), rtol=4e-7)
    ts = np.linspace(-9, 9, 2001).astype(F32)
    np.testing.assert_allclose(gm.tanh(ts), np.tanh(ts.astype(F64)), rtol=2e-6, atol=1e-7)
    ang = np.float32([0.0, 0.3, 1.0, 2.5, 10.0, 100.0, 611.0 * 0.7])
    q = np.zeros((1, 1, 2), F32)
    for a in ang:
        q[0, 0] = [1.0, 0.0]  # rotating (1, 0) by a gives (cos a, sin a)
        r = gm.rope(q, np.int64([1]), np.float32([a]), 1.0)
        np.testing.assert_allclose(r[0, 0], [math.cos(a), math.sin(a)], atol=2e-6 * max(1.0, abs(a) / 100))


def test_attention_softmax_covers_the_score_rows_stale_entries_as_gemmacpp_does():
    """Past a sliding window's start gemma.cpp still normalises over the whole score row (its
    att_len): entries below start hold what the row held before. The kernel keeps that buffer."""
    gm = _gm()
    t = gm.Target("AVX3_DL", False, 16)
    rng = np.random.default_rng(4)
    d, n_kv = 32, 6
    q = rng.standard_normal((1, 1, d)).astype(F32)
    k = rng.standard_normal((n_kv, 1, d)).astype(F32)
    v = rng.standard_normal((n_kv, 1, d)).astype(F32)
    att = np.zeros((1, 1, 8), F32)
    full = gm.attention(q, k, v, np.int64([0]), np.int64([5]), att, np.int64([0]), t)
    probs = att[0, 0, :6].copy()
    # the same query, window starting at 3: the row's old probabilities 0..2 enter the softmax
    win = gm.attention(q, k, v, np.int64([3]), np.int64([5]), att, np.int64([0]), t)
    sc = np.array([F32(np.dot(q[0, 0].astype(F64), k[p, 0].astype(F64))) for p in range(6)], F32)
    row = np.concatenate([probs[:3], sc[3:]])
    e = np.exp((row - row.max()).astype(F64))
    p = e / e.sum()
    want = (p[3:, None] * v[3:, 0].astype(F64)).sum(0)
    np.testing.assert_allclose(win[0, 0], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(win, full, atol=1e-3)


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_bf16_mode_on_tiny_gemmas_tracks_float_mode_and_its_own_runs(tiny_model, arch):
    """Mode bf16 (engine/models/gemmacpp.py) on the tiny Gemmas. Within the sliding window (5 on the
    tiny gemma2/3) it is float mode up to bf16 operands; past it gemma.cpp's softmax also covers the
    score row's older entries, and the engine, following it, departs from float mode there. gemma.cpp's
    own consistency holds: a decode step at row 0 after a teacher-forced run gives the teacher-forced
    row, and thread counts change nothing."""
    from crossval.compare import cosine_rows
    from engine.generate import Engine

    ids = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12]
    e = Engine(tiny_model(arch), n_ctx=64, mode="bf16", simd_target="AVX3_DL")
    assert e.cache.dtype == "f32" and e.model.target.name == "AVX3_DL"
    ours = e.logits(ids)
    flt = Engine(tiny_model(arch), n_ctx=64, mode="float", kv_type="f32").logits(ids)
    cos = cosine_rows(flt, ours)
    window = e.config.sliding_window if any(e.config.swa_layers) else len(ids)
    assert cos[:window].min() > 0.999
    if window < len(ids):
        assert cos[window:].min() < 0.99  # gemma.cpp's stale scores, reproduced
    e2 = Engine(tiny_model(arch), n_ctx=64, mode="bf16", simd_target="AVX3_DL", threads=2)
    np.testing.assert_array_equal(e2.logits(ids), ours)
    e2.logits(ids[:-1])
    np.testing.assert_array_equal(e2.decode_step(ids[-1]), ours[-1])
