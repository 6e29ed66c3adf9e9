"""Native kernels (engine/kernels) against libggml-cpu itself: activation quantization byte for byte,
block dot products against ggml's vec_dot functions, and whole matmuls on the real models' tensors."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from crossval import libggml
from engine import kernels as K
from engine.quants import quantize

pytestmark = pytest.mark.skipif(not K.available(), reason=K.load_error() or "")

# weight type → (activation kind, ggml vec_dot name)
DOTS = {Q.Q8_0: ("q8_0", "q8_0_q8_0"), Q.Q4_0: ("q8_0", "q4_0_q8_0"), Q.Q4_1: ("q8_1", "q4_1_q8_1"),
        Q.Q5_0: ("q8_0", "q5_0_q8_0"), Q.Q5_1: ("q8_1", "q5_1_q8_1"), Q.Q4_K: ("q8_K", "q4_K_q8_K"),
        Q.Q5_K: ("q8_K", "q5_K_q8_K"), Q.Q6_K: ("q8_K", "q6_K_q8_K"), Q.Q2_K: ("q8_K", "q2_K_q8_K"),
        Q.Q3_K: ("q8_K", "q3_K_q8_K")}  # fmt: skip
# bit-equal to ggml's AVX2 dot (llama.cpp uses it for Q4_0 / Q4_K matrices whose rows are not a
# multiple of 8, which it does not repack)
EXACT_SIMD = set(DOTS)


def _vec_dot(name: str, n: int, w: np.ndarray, a: np.ndarray) -> float:
    libggml._cpu_lib().ggml_cpu_init()  # fills the fp16 → fp32 table the vec_dot functions read
    fn = getattr(libggml._cpu_lib(), f"ggml_vec_dot_{name}")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_int]  # fmt: skip
    fn.restype = None
    out = np.zeros(1, dtype=np.float32)
    fn(n, out.ctypes.data, 0, w.ctypes.data, 0, a.ctypes.data, 0, 1)
    return float(out[0])


def _weights(qtype, rows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    w[0, :7] = 0.0  # an edge: zeros inside a block
    try:
        return quantize(w, qtype)
    except NotImplementedError:
        return libggml.from_float_ref(w, qtype).reshape(rows, -1)


@pytest.mark.parametrize("kind", ["q8_0", "q8_1", "q8_K"])
def test_activation_quantization_is_libggml_cpus_byte_for_byte(kind):
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1.0, 300.0):
        x = (rng.standard_normal(1024) * scale).astype(np.float32)
        x[:32] = 0.0  # an all-zero block
        ours = np.empty_like(libggml.cpu_quantize_row(x, kind))
        getattr(K.lib, f"cv_quantize_{kind}")(K._ptr(x, "float *"), K._ptr(ours, "void *"), x.size)
        np.testing.assert_array_equal(ours, libggml.cpu_quantize_row(x, kind))
        if kind == "q8_0":  # a matmul's quantize_acts (AVX-512 where the CPU has it), rows over two threads
            rows = np.stack([x, x[::-1] * np.float32(0.5)])
            acts = K.quantize_acts(int(Q.Q4_0), rows, threads=2).reshape(2, -1)
            for r in range(2):
                np.testing.assert_array_equal(acts[r], libggml.cpu_quantize_row(rows[r], kind))


@pytest.fixture(params=["simd", "portable"])
def simd(request):
    """Each dot runs twice: the SIMD kernels this CPU selects, and the portable C ones."""
    level = K.lib.cv_set_simd(-1 if request.param == "simd" else 0)
    if request.param == "simd" and level == 0:
        pytest.skip("no AVX2 on this CPU: the portable run covers it")
    yield level
    K.lib.cv_set_simd(-1)


@pytest.mark.parametrize("qtype", list(DOTS), ids=lambda t: t.name)
def test_block_dots_equal_ggml_vec_dot(qtype, simd):
    kind, name = DOTS[qtype]
    n = 1024
    w = _weights(qtype, 9, n, seed=int(qtype))  # 9 rows: llama.cpp repacks Q4_0 / Q4_K of 8k rows (test below)
    x = np.random.default_rng(2).standard_normal((1, n)).astype(np.float32)
    a = libggml.cpu_quantize_row(x[0], kind)
    y = K.matmul(w, qtype, x, threads=1)[0]
    for r in range(w.shape[0]):
        # what llama.cpp runs on this CPU: the same integer sums and scale products; only the
        # order in which per-block float terms are added differs
        ref = _vec_dot(name, n, np.ascontiguousarray(w[r]), a)
        if simd and qtype in EXACT_SIMD:  # the same 8-lane float accumulation as ggml's AVX2 dot
            assert y[r] == ref, (r, y[r], ref)
        assert y[r] == pytest.approx(ref, rel=1e-5, abs=1e-5 * np.sqrt(n)), (r, y[r], ref)


@pytest.mark.parametrize("qtype", list(DOTS), ids=lambda t: t.name)
def test_matmul_threads_and_tokens_agree(qtype, simd):
    w = _weights(qtype, 63, 512, seed=5)  # an odd row count: the two-row kernels' last row runs alone
    x = np.random.default_rng(3).standard_normal((9, 512)).astype(np.float32)
    one = K.matmul(w, qtype, x, threads=1)
    two = K.matmul(w, qtype, x, threads=2)
    np.testing.assert_array_equal(one, two)  # rows are split across threads, never a sum
    # prefill (tokens four at a time) and decode (one token) give identical rows — except where
    # llama.cpp itself sums differently for a batch: on AVX2 its repacked Q4_K gemm (groups of 4
    # rows) and its tiled K-quant matmul (8 rows or more) change the float order, and so do we
    batch_order_differs = simd and qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
    five = K.matmul(w, qtype, x[:5])  # under 8 rows every type keeps vec_dot's order (four tokens at a time + one)
    for t in range(9):
        row = K.matmul(w, qtype, x[t : t + 1])[0]
        if t < 5:
            np.testing.assert_array_equal(row, five[t])
        if batch_order_differs:
            np.testing.assert_allclose(row, one[t], rtol=1e-5, atol=1e-5 * np.abs(one[t]).max())
        else:
            np.testing.assert_array_equal(row, one[t])
    with pytest.raises(ValueError):
        K.matmul(w, qtype, x[:, :500])


@pytest.mark.parametrize("rows", [48, 40, 8])
def test_repacked_q4_0_batch_rows_are_its_gemv(rows, simd):
    """llama.cpp's repacked Q4_0 (rows % 8 == 0) adds each block's integer sum × d_w·d_a to one chain per
    output in its gemm and gemv alike, so every token of a batch — tiles of eight and four tokens, a
    short tail, sixteen- and eight-row groups, one or two threads — equals that token alone."""
    w = _weights(Q.Q4_0, rows, 640, seed=rows)
    x = np.random.default_rng(rows).standard_normal((21, 640)).astype(np.float32)
    one, two = K.matmul(w, Q.Q4_0, x, threads=1), K.matmul(w, Q.Q4_0, x, threads=2)
    np.testing.assert_array_equal(one, two)
    for t in range(21):
        np.testing.assert_array_equal(K.matmul(w, Q.Q4_0, x[t : t + 1])[0], one[t])


def _random_k_blocks(qtype, rows: int, nb: int, seed: int) -> np.ndarray:
    """Blocks of random bytes (every bit pattern of scales, mins and values is a valid Q2_K / Q3_K
    block) with finite fp16 scales, and extreme blocks: all bits set (largest scales, mins and
    values) and all clear."""
    from engine.quants import block_layout

    size = block_layout(qtype).type_size
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    raw[0, 0, :] = 0xFF
    raw[1, 0, :] = 0x00
    d_at = [size - 4, size - 2] if qtype == Q.Q2_K else [size - 2]  # d (and dmin) at the block's end
    for off in d_at:
        raw[:, :, off : off + 2] = rng.uniform(1e-4, 2.0, (rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K], ids=lambda t: t.name)
def test_q2_K_q3_K_dots_on_random_and_edge_blocks(qtype, simd):
    """Arbitrary block bytes against activations with ±127 extremes and an all-zero block: equal to
    ggml's vec_dot (exported by libggml-cpu) for every row, SIMD and portable."""
    kind, name = DOTS[qtype]
    n = 4 * 256
    w = _random_k_blocks(qtype, 6, n // 256, seed=int(qtype))
    x = np.random.default_rng(9).standard_normal((1, n)).astype(np.float32) * 3
    x[0, 256:512] = 0.0  # an all-zero activation block
    x[0, 600] = 40.0  # a block whose largest value quantizes to exactly 127 ...
    x[0, 900] = -40.0  # ... and one to -127
    a = libggml.cpu_quantize_row(x[0], kind)
    y = K.matmul(w, qtype, x, threads=1)[0]
    for r in range(w.shape[0]):
        assert y[r] == _vec_dot(name, n, np.ascontiguousarray(w[r]), a), r


def _ggml_float_dot(name: str, n: int, x: np.ndarray, y: np.ndarray) -> float:
    return _vec_dot(name, n, np.ascontiguousarray(x), np.ascontiguousarray(y))


def _bf16(a: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16 (round to nearest even; inputs here are finite)."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("n", [64, 576, 640, 1536, 13, 37, 100, 200])
def test_f32_and_bf16_dots_equal_ggml_vec_dot(n):
    """ggml_vec_dot_f32 / ggml_vec_dot_bf16 as the CPU's build runs them (vector steps, the reduction,
    the tail: in float for F32 as GCC vectorised it, in double for BF16): every result equal, also for
    magnitudes from 1e-30 to 1e30 and BF16 subnormals."""
    from crossval.backends.engine import _match_ggml_build

    _match_ggml_build()  # the F32 tail's vector width, as the loaded ggml-cpu was compiled
    rng = np.random.default_rng(n)
    lanes, bf16_dot = K.ggml_lanes(), int(K.ggml_bf16_dot())
    cases = [(rng.standard_normal(n) * rng.uniform(0.01, 30)).astype(np.float32) for _ in range(20)]
    edge = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    edge[: n // 4] = np.float32(1e-39)  # subnormal
    cases.append(edge)
    for x in cases:
        y = rng.standard_normal(n).astype(np.float32)
        ours = K.lib.cv_dot_float(0, K._ptr(x, "void *"), K._ptr(y, "void *"), n, lanes, 0, 0)
        assert np.float32(ours) == _ggml_float_dot("f32", n, x, y)
        xb, yb = _bf16(x), _bf16(y)
        ours = K.lib.cv_dot_float(30, K._ptr(xb, "void *"), K._ptr(yb, "void *"), n, lanes, bf16_dot, 0)
        assert np.float32(ours) == _ggml_float_dot("bf16", n, xb, yb)


@pytest.mark.parametrize("bf16_dot", [0, 1])
@pytest.mark.parametrize("lanes", [16, 8, 0])
def test_float_weight_matmuls_are_exact_on_integers(lanes, bf16_dot):
    """Every path (vec_dot and tinyBLAS, each SIMD width, with and without AVX512-BF16) on small
    integers, whose products and sums are exact in float: the exact integer result. The activations
    are rounded to BF16 for BF16 weights (x.5 values round to even: still integers here)."""
    if bf16_dot and (lanes != 16 or not K.ggml_bf16_dot()):
        pytest.skip("AVX512-BF16 dot: needs the instruction and 16 lanes")
    rng = np.random.default_rng(lanes + bf16_dot)
    w = rng.integers(-8, 9, (12, 320)).astype(np.float32)
    x = rng.integers(-8, 9, (5, 320)).astype(np.float32)
    want = x @ w.T
    for wtype, wraw in ((0, w), (30, _bf16(w).view(np.uint8).reshape(12, -1))):
        for xs in (x, x[:1]):  # tinyBLAS (rows % 4 == 0, ≥ 2 activation rows) and vec_dot
            got = K.matmul_float(wraw, wtype, xs, lanes=lanes, bf16_dot=bool(bf16_dot) if wtype else False)
            np.testing.assert_array_equal(got, want[: len(xs)])


@pytest.mark.parametrize("wtype", [0, 30], ids=["F32", "BF16"])
def test_float_weight_matmul_rows_are_their_dots(wtype):
    """A matmul's outputs are the single dots of the path llama.cpp takes — vec_dot for one activation
    row (however many weight rows the kernel walks at once), tinyBLAS for batches of rows % 4 == 0."""
    rng = np.random.default_rng(wtype)
    lanes, bf16_dot = K.ggml_lanes(), K.ggml_bf16_dot()
    for rows, n in ((13, 640), (8, 576), (6, 100)):
        w = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
        x = rng.standard_normal((3, n)).astype(np.float32)
        wraw = w if wtype == 0 else _bf16(w).view(np.uint8).reshape(rows, -1)
        xs = x if wtype == 0 else _bf16(x)
        wd = w if wtype == 0 else _bf16(w)
        kn = 32 if wtype and bf16_dot else lanes
        for ntok in (1, 3):
            got = K.matmul_float(wraw, wtype, x[:ntok])
            tiny = int(lanes > 0 and ntok >= 2 and rows % 4 == 0 and n % kn == 0)
            for t in range(ntok):
                for r in range(rows):
                    want = K.lib.cv_dot_float(wtype, K._ptr(np.ascontiguousarray(wd[r]), "void *"), K._ptr(np.ascontiguousarray(xs[t]), "void *"),
                                              n, lanes, int(bf16_dot), tiny)  # fmt: skip
                    assert got[t, r] == np.float32(want), (rows, n, ntok, t, r)


def test_f16_weight_matmul_rows_are_their_dots():
    """F16 weights likewise: one activation row takes ggml_vec_dot_f16 (cv_dot_f16, tiny 0), batches of
    rows % 4 == 0 tinyBLAS (tiny 1: four weight rows × up to four activation rows per pass), each
    output that single dot of the F16-rounded activations."""
    rng = np.random.default_rng(16)
    lanes = K.ggml_lanes()
    for rows, n in ((12, 640), (13, 576), (8, 100)):
        w = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float16)
        x = rng.standard_normal((7, n)).astype(np.float32)
        x16 = x.astype(np.float16)  # ggml_fp32_to_fp16: round to nearest even, as f2h
        for ntok in (1, 2, 7):
            got = K.matmul_f16(w, x[:ntok])
            tiny = int(lanes > 0 and ntok >= 2 and rows % 4 == 0 and n % lanes == 0)
            for t in range(ntok):
                for r in range(rows):
                    want = K.lib.cv_dot_f16(K._ptr(w[r], "uint16_t *"), K._ptr(np.ascontiguousarray(x16[t]), "uint16_t *"), n, lanes, tiny)
                    assert got[t, r] == np.float32(want), (rows, n, ntok, t, r)


def test_bf16_dot_setting_is_validated(monkeypatch):
    monkeypatch.setenv("ENGINE_GGML_BF16", "2")
    with pytest.raises(ValueError, match="ENGINE_GGML_BF16"):
        K.ggml_bf16_dot()
    monkeypatch.setenv("ENGINE_GGML_BF16", "0")
    assert K.ggml_bf16_dot() is False


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_vnni_and_plain_avx2_kernels_agree_bit_for_bit(qtype):
    """The VNNI copies (one dpbusd per 32 products; Q4_K's repacked gemv and Q6_K's gemv with AVX-512
    in zmm, 64 rows here) and the maddubs+madd ones form the same integers."""
    w = _weights(qtype, 64, 512, seed=7)
    x = np.random.default_rng(4).standard_normal((9, 512)).astype(np.float32)
    try:
        if K.lib.cv_set_simd(3) != 3:
            pytest.skip("no AVX-VNNI / AVX-512 VNNI on this CPU")
        vnni = [K.matmul(w, qtype, x), K.matmul(w, qtype, x[:1])]
        assert K.lib.cv_set_simd(2) == 2
        plain = [K.matmul(w, qtype, x), K.matmul(w, qtype, x[:1])]
    finally:
        K.lib.cv_set_simd(-1)
    for a, b in zip(vnni, plain):
        np.testing.assert_array_equal(a, b)


def test_faithful_without_the_extension_is_a_clear_error(monkeypatch, tiny_model):
    """No compiler at install time → no extension: faithful mode says so in one sentence; the
    numpy modes are untouched."""
    from engine.generate import Engine

    monkeypatch.setattr(K, "lib", None)
    monkeypatch.setattr(K, "_ERROR", "native kernels not built (test)")
    with pytest.raises(ValueError, match="faithful: native kernels not built"):
        Engine(tiny_model("llama"), mode="faithful")
    assert Engine(tiny_model("llama"), mode="float").logits([1, 5, 9]).shape == (3, 320)


def test_faithful_fallbacks_name_the_matrix_types_without_a_native_kernel():
    from types import SimpleNamespace as NS

    from engine.weights import faithful_fallbacks

    def model(**types):
        return NS(tensors={n.replace("__", "."): NS(ne=(64, 64) if n != "norm" else (64,), type=t) for n, t in types.items()})

    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.Q4_0, blk__0__ffn_up__weight=Q.F16, norm=Q.F32)) == []
    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.Q3_K, blk__0__ffn_up__weight=Q.Q2_K, norm=Q.F32)) == []
    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.BF16, blk__0__ffn_up__weight=Q.F32, norm=Q.F32)) == []
    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.MXFP4, blk__0__ffn_up__weight=Q.IQ4_NL, norm=Q.F32)) == []
    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.NVFP4, blk__0__ffn_up__weight=Q.Q1_0, norm=Q.F32)) == []
    # Q8_1 (ggml 9): an activation type, no kernel multiplies weights stored in it
    assert faithful_fallbacks(model(blk__0__attn_q__weight=Q.Q8_1, blk__0__ffn_up__weight=Q.Q2_K, norm=Q.F32)) == ["Q8_1"]
    # a table that is only looked up (the model has its own output matrix) is exact whatever its type;
    # a tied one is also the output matmul
    assert faithful_fallbacks(model(token_embd__weight=Q.Q8_1, output__weight=Q.Q8_0)) == []
    assert faithful_fallbacks(model(token_embd__weight=Q.Q8_1)) == ["Q8_1"]


@pytest.mark.skipif(K.ggml_lanes() != 16, reason="the batched attention kernel is AVX-512's")
@pytest.mark.parametrize("n_head, n_head_kv, d, dv, n_past, n_q, window, softcap, scale",
                         [(4, 1, 256, 256, 0, 37, 0, 0.0, 1.0), (9, 3, 64, 64, 11, 30, 0, 0.0, 0.125), (8, 4, 32, 48, 5, 6, 0, 50.0, 0.2),
                          (4, 2, 64, 20, 40, 13, 7, 0.0, 0.3), (2, 2, 16, 4, 0, 2, 0, 0.0, 1.0)])  # fmt: skip
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_attention_is_the_per_dot_loop(n_head, n_head_kv, d, dv, n_past, n_q, window, softcap, scale, threads):
    """attn_prefill.c (sixteen dots side by side, reduced together) gives cv_attention_f16's per-dot
    results bit for bit: the same cache rows in a cache with room past the V·p steps (the batched
    kernel) and in one without (n_kv not a multiple of 64: the per-dot loop)."""
    from engine.attention import attention_mask

    rng = np.random.default_rng(n_head * 100 + d)
    n_kv = n_past + n_q
    assert n_kv % 64
    k16 = (rng.standard_normal((n_kv, n_head_kv, d)) * 0.5).astype(np.float16)
    v16t = rng.standard_normal((n_head_kv, dv, n_kv)).astype(np.float16)
    q = (rng.standard_normal((n_q, n_head, d)) * 0.3).astype(np.float32)
    mask = attention_mask(np.arange(n_past, n_kv), n_kv, window)
    roomy = 256
    k_big = np.zeros((roomy, n_head_kv, d), dtype=np.float16)
    v_big = np.zeros((n_head_kv, dv, roomy), dtype=np.float16)
    k_big[:n_kv], v_big[:, :, :n_kv] = k16, v16t
    tight = K.attention_f16(q, k16, v16t, n_kv, mask, scale, softcap, threads=threads)
    batched = K.attention_f16(q, k_big, v_big, n_kv, mask, scale, softcap, threads=threads)
    assert np.isfinite(tight).all()
    np.testing.assert_array_equal(batched.view(np.uint32), tight.view(np.uint32))


@pytest.mark.skipif(K.ggml_lanes() != 16, reason="the four-row V·p loop is AVX-512's")
@pytest.mark.parametrize("n_head, n_head_kv, d, dv, n_kv, window, softcap",
                         [(4, 1, 256, 256, 17, 0, 0.0), (4, 1, 256, 256, 150, 40, 0.0), (8, 4, 32, 6, 70, 0, 50.0),
                          (9, 3, 64, 20, 129, 0, 0.0)])  # fmt: skip
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_attention_is_the_per_dot_loop(n_head, n_head_kv, d, dv, n_kv, window, softcap, threads):
    """One query row (decode): V·p four V rows at a time over whole 64-value steps (a cache with room
    past them) gives the per-dot loop's results (a cache without: n_kv not a multiple of 64) bit for
    bit — windows that skip leading steps, several steps, a dv with a remainder, GQA, softcap."""
    from engine.attention import attention_mask

    rng = np.random.default_rng(n_head * 100 + dv)
    assert n_kv % 64
    k16 = (rng.standard_normal((n_kv, n_head_kv, d)) * 0.5).astype(np.float16)
    v16t = rng.standard_normal((n_head_kv, dv, n_kv)).astype(np.float16)
    q = (rng.standard_normal((1, n_head, d)) * 0.3).astype(np.float32)
    mask = attention_mask(np.arange(n_kv - 1, n_kv), n_kv, window)
    k_big = np.zeros((256, n_head_kv, d), dtype=np.float16)
    v_big = np.zeros((n_head_kv, dv, 256), dtype=np.float16)
    k_big[:n_kv], v_big[:, :, :n_kv] = k16, v16t
    tight = K.attention_f16(q, k16, v16t, n_kv, mask, 0.125, softcap, threads=threads)
    roomy = K.attention_f16(q, k_big, v_big, n_kv, mask, 0.125, softcap, threads=threads)
    assert np.isfinite(tight).all()
    np.testing.assert_array_equal(roomy.view(np.uint32), tight.view(np.uint32))


def test_kv_store_f16_rounds_as_numpy_and_transposes_v():
    """kernels.kv_store_f16 (F16C's round to nearest even; V transposed as llama.cpp keeps it) writes the
    bits numpy's float16 cast does — subnormals, overflow to inf included — from strided V rows."""
    rng = np.random.default_rng(0)
    for n, h, d, dv, p0 in ((23, 3, 64, 64, 37), (1, 2, 16, 20, 5), (40, 1, 256, 256, 0)):
        k = (rng.standard_normal((n, h, d)) * 10.0 ** rng.uniform(-9, 6, (n, h, d))).astype(np.float32)
        qkv = (rng.standard_normal((n, h * dv + 7)) * 10.0 ** rng.uniform(-9, 6, (n, h * dv + 7))).astype(np.float32)
        v = qkv[:, 7:].reshape(n, h, dv)
        kc, vct = np.zeros((100, h, d), np.float16), np.zeros((h, dv, 100), np.float16)
        K.kv_store_f16(k, v, kc, vct, p0)
        with np.errstate(over="ignore"):
            rk, rv = k.astype(np.float16), v.transpose(1, 2, 0).astype(np.float16)
        assert np.array_equal(kc[p0 : p0 + n].view(np.uint16), rk.view(np.uint16))
        assert np.array_equal(vct[:, :, p0 : p0 + n].view(np.uint16), rv.view(np.uint16))
        assert not kc[:p0].any() and not kc[p0 + n :].any() and not vct[:, :, :p0].any() and not vct[:, :, p0 + n :].any()
