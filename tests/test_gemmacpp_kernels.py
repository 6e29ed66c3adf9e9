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


# --- FlashAttention (gemma/flash_attention.cc) -------------------------------------------------------
def _libm(name: str):
    import ctypes
    import ctypes.util

    f = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    return lambda x: F32(f(float(x)))


def _fma32(a, b, c):
    """f32 fma: the f64 product of f32 values is exact, so this is one f64 rounding of the exact
    result, then f32's — equal to one f32 rounding except on an f32 tie (none with these seeds)."""
    return (np.asarray(a, F64) * np.asarray(b, F64) + np.asarray(c, F64)).astype(F32)


def _dot64(w, v) -> F32:
    """DotKernelDouble for f32 inputs, d a multiple of 32: four f64 accumulators of 8 lanes, the tree."""
    s = np.zeros((4, 8), F64)
    for i in range(0, len(w), 32):
        s = s + w[i : i + 32].astype(F64).reshape(4, 8) * v[i : i + 32].astype(F64).reshape(4, 8)
    return F32(_f64_tree(s))


def _reduce_sum(x) -> F32:
    """hn::ReduceSum of 16 f32 lanes: across the four blocks, then (l0 + l3) + (l1 + l2)."""
    a = (x[0:4] + x[4:8]) + (x[8:12] + x[12:16])
    return (a[0] + a[3]) + (a[1] + a[2])


def _flash_ref(q, k, v, start, last, lanes, workers, hexp):
    """gemma.cpp's FlashAttention written out (gemma 3, no soft-cap, one KV head, 16 lanes)."""
    expf = _libm("expf")
    n, heads, d = q.shape
    total, big = n * heads, F32(np.finfo(F32).max / F32(2))
    tile = (16 if (16 <= _pow2(heads * n) and total // 16 >= workers) else min(4 if total // 4 >= workers else 1, _pow2(heads * n)))
    K, V = k[:, 0], v[:, 0]
    out = np.zeros_like(q)

    def step(x, m, dd, o, p):  # SingleFlashAttentionStep, libm expf
        m2 = max(x, m)
        x = expf(x - m2)
        s = F32(dd * expf(m - m2))
        dd = F32(x + s)
        inv = F32(1) / dd
        return m2, dd, _fma32(V[p], x * inv, o * (s * inv))

    for first in range(0, total, tile):
        tasks = [(t % n, t // n) for t in range(first, min(first + tile, total))]
        rows = [out[tok, h] for tok, h in tasks]
        qs = np.stack([q[tok, h] for tok, h in tasks])
        ls = np.array([last[tok] for tok, _ in tasks])
        st = start[tasks[0][0]]
        if tile == 1 or len(tasks) < tile or any(start[tok] != st for tok, _ in tasks):
            for (tok, h), o in zip(tasks, rows):  # SingleFlashAttention
                s0, m, dd = start[tok], _dot64(q[tok, h], K[start[tok]]), F32(1)
                o[:] = V[s0]
                for p in range(s0 + 1, last[tok] + 1):
                    m, dd, o[:] = step(_dot64(q[tok, h], K[p]), m, dd, o, p)
            continue
        R, W = len(tasks), (8 if tile == 16 else 16)  # rows, positions per sweep
        om, od, acc = np.full(R, -big, F32), np.zeros(R, F32), np.zeros((R, d), F32)
        p = st
        while p + W - 1 <= ls.min():
            x = np.zeros((R, W), F32)
            for i in range(d):  # f32 FMA chains over the head dimension
                x = _fma32(qs[:, i : i + 1], K[p : p + W, i][None, :], x)
            if tile == 16:  # TileFlashAttention: Highway Exp, the sum of 8 as a tree
                m = np.maximum(om, x.max(1))
                x = hexp(x - m[:, None])
                s = od * hexp(om - m)
                od = s + (((x[:, 0] + x[:, 1]) + (x[:, 2] + x[:, 3])) + ((x[:, 4] + x[:, 5]) + (x[:, 6] + x[:, 7])))
            else:  # TileFlashAttention4: Highway Exp, libm expf for the scale, ReduceSum
                m = np.maximum(om, x.max(1))
                x = hexp(x - m[:, None])
                s = np.array([od[r] * expf(om[r] - m[r]) for r in range(R)], F32)
                od = np.array([_reduce_sum(x[r]) + s[r] for r in range(R)], F32)
            om, inv = m, F32(1) / od
            acc = acc * (s * inv)[:, None]
            x = x * inv[:, None]
            for j in range(W):
                acc = _fma32(V[p + j][None, :], x[:, j : j + 1], acc)
            p += W
        while p <= ls.max():
            for r in range(R):
                if tile == 4:  # per row, only up to its own last position
                    if p <= ls[r]:
                        om[r], od[r], acc[r] = step(_dot64(qs[r], K[p]), om[r], od[r], acc[r], p)
                    continue
                xr = _dot64(qs[r], K[p]) - (big if p > ls[r] else F32(0))  # masked past its last position
                m = max(om[r], xr)
                e, s = hexp(np.float32([xr - m]))[0], od[r] * hexp(np.float32([om[r] - m]))[0]
                om[r], od[r] = m, s + e
                inv = F32(1) / od[r]
                acc[r] = _fma32(V[p], e * inv, acc[r] * (s * inv))
            p += 1
        for o, a in zip(rows, acc):
            o[:] = a
    return out


def _pow2(n):
    return 1 if n < 4 else 4 if n < 8 else 8 if n < 16 else 16 if n < 32 else 32


def test_flash_tile_height_is_gemmacpps_choice():
    """GetVTileSize for Gemma-3-270M (4 query heads on 1 KV head) on AVX3: decode runs one query per
    task with 2 workers but 4-row tiles with 1; prefill batches of 8 tokens or more run 16-row tiles."""
    gm = _gm()
    t16, t8 = gm.Target("AVX3_DL", False, 16), gm.Target("AVX2", False, 8)
    got = {(w, n): gm.flash_vtile(t16, 4, 1, n, w) for w in (1, 2) for n in (1, 2, 3, 4, 7, 8, 256)}
    assert got == {(1, 1): 4, (1, 2): 4, (1, 3): 4, (1, 4): 16, (1, 7): 16, (1, 8): 16, (1, 256): 16,
                   (2, 1): 1, (2, 2): 4, (2, 3): 4, (2, 4): 4, (2, 7): 4, (2, 8): 16, (2, 256): 16}  # fmt: skip
    assert [gm.flash_vtile(t8, 4, 1, n, 2) for n in (1, 2, 3, 4)] == [1, 4, 4, 8]


@pytest.mark.parametrize("n, p0, window, prefix, workers", [
    (1, 40, 0, 0, 2),     # decode: SingleFlashAttention per head
    (1, 40, 0, 0, 1),     # decode, one worker: one 4-row tile (the 4 heads), 16 positions a sweep, then the tail
    (5, 30, 0, 0, 2),     # 20 tasks: 4-row tiles across the heads' token boundaries
    (24, 0, 0, 0, 2),     # 16-row tiles × 8 positions, ragged last positions, the masked tail
    (24, 0, 0, 20, 2),    # prefix-LM: rows before prefix_end share their last position
    (20, 10, 16, 0, 2),   # a sliding window whose start differs within a tile: SingleFlashAttention
])  # fmt: skip
def test_flash_attention_is_gemmacpps_order(n, p0, window, prefix, workers):
    """The kernel against FlashAttention written out: which tasks share a tile, f32 FMA chains or the
    f64 Dot per mode, Highway's Exp or libm's expf per mode, the running max/sum/scale updates and the
    masked tail — bit for bit; and it is softmax attention to float precision."""
    gm = _gm()
    t = gm.Target("AVX3_DL", False, 16)
    rng = np.random.default_rng(n * 100 + p0 + workers)
    heads, d = 4, 64
    pos = np.arange(p0, p0 + n)
    q = (rng.standard_normal((n, heads, d)) * 0.3).astype(F32)
    k = rng.standard_normal((p0 + n, 1, d)).astype(F32)
    v = rng.standard_normal((p0 + n, 1, d)).astype(F32)
    start = pos - np.minimum(window - 1, pos) if window else np.zeros(n, np.int64)
    last = np.maximum(pos, prefix - 1) if prefix else pos
    got = gm.flash_attention(q, k, v, start, last, t, workers=workers, threads=2)
    np.testing.assert_array_equal(gm.flash_attention(q, k, v, start, last, t, workers=workers), got)
    want = _flash_ref(q, k, v, start, last, 16, workers, gm.exp)
    np.testing.assert_array_equal(got, want)
    for i in range(n):
        sc = q[i].astype(F64) @ k[start[i] : last[i] + 1, 0].astype(F64).T
        p = np.exp(sc - sc.max(1, keepdims=True))
        exact = (p / p.sum(1, keepdims=True)) @ v[start[i] : last[i] + 1, 0].astype(F64)
        np.testing.assert_allclose(got[i], exact, rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", ["AVX3_DL", "AVX3_ZEN4"])
@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_bf16_mode_on_tiny_gemmas_tracks_float_mode_and_its_own_runs(tiny_model, arch, target):
    """Mode bf16 (engine/models/gemmacpp.py) on the tiny Gemmas. Within the sliding window (5 on the
    tiny gemma2/3) it is float mode up to bf16 operands. Past it, on a target with a native bf16 dot
    (AVX3_ZEN4), gemma.cpp's softmax also covers the score row's older entries, and the engine,
    following it, departs from float mode there; on AVX3_DL gemma.cpp runs FlashAttention, which
    keeps no score row, and the engine stays with float mode. gemma.cpp's own consistency holds: a
    decode step after a teacher-forced run gives the teacher-forced row, and the engine's thread
    count changes nothing."""
    from crossval.compare import cosine_rows
    from engine.generate import Engine
    from engine.kernels.gemmacpp import TARGETS

    native = TARGETS[target][0]
    if native and not kernels.lib.cv_gm_cpu_native_bf16():
        pytest.skip("no AVX512_BF16 on this CPU")
    ids = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12]
    e = Engine(tiny_model(arch), n_ctx=64, mode="bf16", simd_target=target)
    assert e.cache.dtype == "f32" and e.model.target.name == target and e.model.flash == (not native)
    ours = e.logits(ids)
    flt = Engine(tiny_model(arch), n_ctx=64, mode="float", kv_type="f32").logits(ids)
    cos = cosine_rows(flt, ours)
    window = e.config.sliding_window if any(e.config.swa_layers) else len(ids)
    assert cos[:window].min() > 0.999
    if window < len(ids):
        if native:
            assert cos[window:].min() < 0.99  # gemma.cpp's stale scores, reproduced
        else:
            assert cos[window:].min() > 0.999  # FlashAttention: no score row, nothing stale
    e2 = Engine(tiny_model(arch), n_ctx=64, mode="bf16", simd_target=target, threads=2)
    np.testing.assert_array_equal(e2.logits(ids), ours)
    e2.logits(ids[:-1])
    np.testing.assert_array_equal(e2.decode_step(ids[-1]), ours[-1])
