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
    # whole quantization step, and that compounds over the layers: close, not equal (a near-tie
    # may flip a top-1)
    assert c.min() >= 0.995 and (faithful.argmax(1) == q8.argmax(1)).mean() >= 0.75
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
    # faithful mode with llama.cpp's F16 cache is judged by the strict profile, and passes it
    assert rec["thresholds"]["profile"] == "faithful" and rec["config"]["kv_type"] == "f16"
    assert rec["verdict"]["passed"], rec["verdict"]["failures"]
    assert r.returncode == 0 and rec["parity"]["status"] == "ok"
    assert rec["parity"]["cosine_similarity"] >= 0.9999 and rec["parity"]["exact_match_rate"] == 1.0


# n_embd 96 with 8 heads and one KV head: K and V have 12 rows, so llama.cpp does not repack them
# (rows % 8) — its Q4_0 vec_dot / tinyBLAS path runs there, the repacked one everywhere else. Head
# dims 12 and 24 leave rope pairs after rotate_pairs' last whole vector (computed unfused there).
NARROW_KV = dict(n_embd=96, n_head=8, n_head_kv=1, n_ff=128)
K_QUANT_WIDTH = dict(n_embd=256, n_head=4, n_head_kv=2, n_ff=256)  # rows of 256 values for K-quant blocks
# 64 heads of 4 dims and one KV head: K and V have 4 rows, so llama.cpp runs Q4_K's vec_dot there
# (its repacked kernels everywhere else) and rope has only an unfused tail
Q4_K_NARROW_KV = dict(n_embd=256, n_head=64, n_head_kv=1, head_dim=4, n_ff=256)
GEMMA3_HEAD_24 = dict(arch="gemma3", n_layer=7, sliding_window=5, n_embd=96, n_head=4, n_head_kv=1, head_dim=24, n_ff=128)


@needs_llamacpp
@pytest.mark.parametrize("wtype, shape, fallbacks, profile",
                         [("Q8_0", {}, [], "faithful"), ("Q4_0", {}, [], "faithful"), ("Q4_0", NARROW_KV, [], "faithful"),
                          ("Q8_0", GEMMA3_HEAD_24, [], "faithful"), ("F16", {}, [], "exact"),
                          ("Q5_1", {}, [], "faithful"), ("Q5_K", K_QUANT_WIDTH, [], "faithful"),
                          ("Q4_K", Q4_K_NARROW_KV, [], "faithful"), ("Q2_K", K_QUANT_WIDTH, [], "faithful"),
                          ("Q2_K", Q4_K_NARROW_KV, [], "faithful"), ("Q3_K", K_QUANT_WIDTH, [], "faithful"),
                          ("Q3_K", Q4_K_NARROW_KV, [], "faithful"), ("F32", {}, [], "exact"),
                          ("BF16", {}, [], "exact"), ("TQ2_0", K_QUANT_WIDTH, [], "faithful"), ("TQ1_0", K_QUANT_WIDTH, [], "faithful")])  # fmt: skip
def test_faithful_profile_only_where_every_matrix_has_a_native_kernel(tmp_path, wtype, shape, fallbacks, profile):
    """A tiny llama whose matrices are all Q8_0, Q4_0, Q5_1, Q5_K, Q2_K or Q3_K (native kernels) is
    gated like llama.cpp itself, and its logits are llama.cpp's; so are an F16, F32 or BF16 one's
    (float weights: the exact profile). Q2_K's 128-row K and V take llama.cpp's repacked kernels,
    its 4-row ones vec_dot and the tiled matmul; so do Q3_K's 4-row ones (heads of 4 dims: both rope
    pairs fused or not as the loaded ggml-cpu was compiled, kernels.set_rope_vec — with the engine's
    fixed default instead, this model was the one left 0.125 off). TQ2_0 and TQ1_0 (random weights, ternarised by
    llama.cpp's quantizer) are native too: no type llama.cpp quantizes for the CPU falls back any
    more (the fallback list itself: tests/test_kernels.py)."""
    from gguf import GGMLQuantizationType

    from tiny_models import write_tiny_model

    model = write_tiny_model(tmp_path / f"{wtype}.gguf", **{"arch": "llama", **shape}, weight_type=GGMLQuantizationType[wtype])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--mode", "faithful", "--prompt-file",
                        str(prompts), "--steps", "8", "--n-ctx", "64", "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    summary = json.loads(r.stdout)
    rec = receipts.read_valid(out / summary["run_id"] / summary["receipts"][0]["file"])
    assert rec["backends"]["engine"]["fallback_types"] == fallbacks
    assert rec["thresholds"]["profile"] == profile
    assert rec["verdict"]["passed"], rec["verdict"]["failures"]
    if not fallbacks:  # the strict gate passes because the logits are llama.cpp's own
        assert rec["parity"]["max_abs_diff"] == 0.0 and rec["parity"]["exact_match_rate"] == 1.0


# --- llama.cpp's own arithmetic, bit for bit -----------------------------------------------------
# The faithful attention, softmax and SwiGLU follow ggml-cpu's SIMD code for the width it was built
# with on this CPU (kernels.ggml_lanes()); these compare them with the exported ggml functions.


def _ggml_fn(name: str, restype, *argtypes):
    import ctypes

    from crossval import libggml

    lib = libggml._cpu_lib()
    lib.ggml_cpu_init()
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


@needs_llamacpp
@pytest.mark.parametrize("neox", [False, True])
def test_rope_is_ggml_rope(neox):
    """The engine's rope (fused vectors of kernels.rope_vec pairs, as crossval measures the loaded
    ggml-cpu) equals ggml's own rope op bit for bit, head dims with and without leftover pairs."""
    from crossval import libggml
    from crossval.backends.engine import _match_ggml_build
    from engine.ops import rope, rope_cache

    _match_ggml_build()
    assert kernels.rope_vec(neox) == libggml.rope_vector_pairs(neox)
    rng = np.random.default_rng(7)
    for head_dim in (4, 6, 12, 14, 24, 30, 64, 128):
        x = (rng.standard_normal((40, 3, head_dim)) * 4).astype(np.float32)
        pos = np.arange(100, 140)
        cos, sin = rope_cache(pos, head_dim, 10000.0)
        ref = libggml.cpu_rope(x, pos, head_dim, neox)
        assert np.array_equal(rope(x, cos, sin, neox), ref), head_dim
        for threads in (1, 2):  # the native batch rope (faithful mode's prefill), and its q scaling
            assert np.array_equal(kernels.rope(x, cos, sin, neox, threads=threads), ref), head_dim
            assert np.array_equal(kernels.rope(x, cos, sin, neox, 0.125, threads=threads), ref * np.float32(0.125)), head_dim


@needs_llamacpp
def test_rms_norm_is_ggml_rms_norm():
    """The native batch rms_norm (eight rows side by side, each its own double chain in element order)
    equals ggml's own rms_norm op bit for bit, over rows of very different scales and lengths, strided
    rows (a column slice of a fused output), per-head rows, and then · w as ggml_mul does. (A float sum
    of the squares differs from ggml in 31 of the first case's 37 rows.)"""
    from crossval import libggml

    rng = np.random.default_rng(3)
    for n_rows, n in ((37, 640), (8, 576), (5, 64), (19, 24), (3, 7)):
        x = (rng.standard_normal((n_rows, n)) * rng.uniform(1e-3, 1e3, (n_rows, 1))).astype(np.float32)
        ref = libggml.cpu_rms_norm(x, 1e-6)
        w = rng.standard_normal(n).astype(np.float32)
        wide = np.concatenate([x, x[:, :5]], axis=1)
        for threads in (1, 2):
            assert np.array_equal(kernels.rms_norm(x, None, 1e-6, threads), ref), (n_rows, n)
            assert np.array_equal(kernels.rms_norm(wide[:, :n], w, 1e-6, threads), ref * w), (n_rows, n)
        if n % 4 == 0:
            heads = x.reshape(n_rows, 4, n // 4)
            assert np.array_equal(kernels.rms_norm(heads, None, 1e-6).reshape(-1, n // 4),
                                  libggml.cpu_rms_norm(heads.reshape(-1, n // 4), 1e-6))  # fmt: skip


@needs_llamacpp
@pytest.mark.parametrize("n", [64, 256, 320, 13, 100])
def test_f16_dot_is_ggml_vec_dot_f16(n):
    import ctypes

    fn = _ggml_fn("ggml_vec_dot_f16", None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                  ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)  # fmt: skip
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = (rng.standard_normal(n) * rng.uniform(0.01, 30)).astype(np.float16)
        y = rng.standard_normal(n).astype(np.float16)
        out = np.zeros(1, dtype=np.float32)
        fn(n, out.ctypes.data, 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
        ours = kernels.lib.cv_dot_f16(kernels._ptr(x, "uint16_t *"), kernels._ptr(y, "uint16_t *"), n, kernels.ggml_lanes(), 0)
        assert np.float32(ours) == out[0], (n, ours, out[0])


@needs_llamacpp
@pytest.mark.parametrize("n", [256, 48, 37])
def test_softmax_exp_is_ggml_vec_soft_max(n):
    import ctypes

    fn = _ggml_fn("ggml_vec_soft_max_f32", ctypes.c_double, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 8).astype(np.float32)
    x[::7] = -np.inf  # masked cells
    x[3] = 95.0  # exp's range edges: overflow side (after − max it is 0), far underflow below
    x[5] = -200.0
    mx = np.float32(x.max())
    ref, ours = np.zeros(n, np.float32), np.zeros(n, np.float32)
    s_ref = fn(n, ref.ctypes.data, x.ctypes.data, mx)
    s_ours = kernels.lib.cv_vec_soft_max(kernels._ptr(ours, "float *"), kernels._ptr(x, "float *"), n, mx, kernels.ggml_lanes())
    np.testing.assert_array_equal(ours, ref)
    assert s_ours == s_ref


@needs_llamacpp
def test_swiglu_is_ggml_vec_swiglu():
    import ctypes

    fn = _ggml_fn("ggml_vec_swiglu_f32", None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    n = 1536 + 11  # whole SIMD chunks and a scalar tail
    rng = np.random.default_rng(3)
    gu = (rng.standard_normal((1, 2 * n)) * 6).astype(np.float32)
    gate, up = np.ascontiguousarray(gu[0, :n]), np.ascontiguousarray(gu[0, n:])
    ref = np.zeros(n, np.float32)
    fn(n, ref.ctypes.data, gate.ctypes.data, up.ctypes.data)
    np.testing.assert_array_equal(kernels.swiglu(gu, n)[0], ref)


def test_rope_cache_is_libms_powf_cosf_sinf():
    import ctypes

    from engine.ops import rope_cache

    m = ctypes.CDLL("libm.so.6")
    for f in ("powf", "cosf", "sinf"):
        getattr(m, f).restype = ctypes.c_float
    m.powf.argtypes, m.cosf.argtypes, m.sinf.argtypes = [ctypes.c_float, ctypes.c_float], [ctypes.c_float], [ctypes.c_float]
    n_rot, base = 64, 100000.0
    cos, sin = rope_cache(np.arange(300), n_rot, base)
    ts = np.float32(m.powf(base, np.float32(-2.0) / np.float32(n_rot)))
    for p in range(0, 300, 7):
        th = np.float32(p)
        for i in range(n_rot // 2):
            assert cos[p, i] == np.float32(m.cosf(th)) and sin[p, i] == np.float32(m.sinf(th)), (p, i)
            th = np.float32(th * ts)


@needs_llamacpp
@pytest.mark.parametrize("model, weights", [("smollm2", "as shipped"), ("gemma3-270m", "as shipped"), ("gemma3-270m", "F16"),
                                            ("smollm2", "Q4_0"), ("smollm2", "Q5_K_M"), ("gemma3-270m", "Q3_K_M"),
                                            ("smollm2", "IQ3_XXS"), ("gemma3-270m", "IQ3_XXS"), ("gemma3-270m", "IQ4_XS"),
                                            ("smollm2", "IQ2_XXS"), ("gemma3-270m", "IQ1_M"), ("smollm2", "Q2_K-PURE"),
                                            ("smollm2", "Q3_K_S"), ("smollm2", "BF16"), ("smollm2", "NVFP4"),
                                            ("gemma3-270m", "Q1_0"), ("gemma3-270m", "Q2_0")])  # fmt: skip
def test_faithful_is_llamacpp_bit_for_bit(model, weights):
    """F16 cache, llama.cpp's default CPU paths: every logit of a teacher-forced prompt (its batched
    paths: tinyBLAS attention, repacked Q4_K gemm, tiled Q6_K) and of 24 decode steps (its one-row
    paths: vec_dot, repacked gemv) is the same float. 19+ tokens cross the tiled path's 16-row tiles.
    An F16 copy of the model takes llama.cpp's F16 matmuls: tinyBLAS for batches, ggml_vec_dot_f16
    for one row (float mode is 0.995 from llama.cpp at one position of the long prompt there); a
    Q4_0 requantization (llama.cpp's quantizer, crossval matrix's cache) its repacked Q4_0 kernels,
    Q5_K_M and Q3_K_M ones its Q5_K and Q5_1 dots and the tiled Q5_K path; IQ3_XXS ones (made with an
    importance matrix) its IQ3_XXS, IQ3_S and repacked IQ4_NL kernels, an IQ4_XS one its IQ4_XS dot and
    tiled IQ4_XS path; IQ2_XXS and IQ1_M ones (with Q2_K beside them) the IQ2_XXS / IQ1_M vec_dots and
    their tiled paths; a pure Q2_K one (ffn_down in Q2_K) its repacked Q2_K gemv and gemm (AVX-512), a
    Q3_K_S one its Q3_K dot and tiled Q3_K path, a BF16 one tinyBLAS and ggml_vec_dot_bf16 with
    AVX512-BF16's vdpbf16ps where the CPU has it, an all-NVFP4 one (a tensor-type override), a Q1_0 one and
    a Q2_0 one (type 42, which the gguf package lacks) ggml_vec_dot_nvfp4_q8_0 / ggml_vec_dot_q1_0_q8_0 /
    ggml_vec_dot_q2_0_q8_0 for every row count. (F32 and the other
    requantizations: the nightly matrix.)"""
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.matrix import variant
    from engine.generate import Engine

    path = real_model_path(model)
    if weights != "as shipped":
        path = variant(model, weights)
    text = "Write a short story about a lighthouse keeper who finds a message in a bottle. " * 3
    with LlamaCppBackend(path, n_ctx=512, threads=1, kv_type="f16") as lc:
        ids = lc.tokenize(text)
        ref_forced = lc.logits(ids)
        lc.reset()
        last = lc.prefill(ids)
        ref_steps = []
        for _ in range(24):
            t = int(np.argmax(last))
            ref_steps.append((t, last))
            last = lc.decode_step(t)
    assert len(ids) > 19
    eng = Engine(path, n_ctx=512, kv_type="f16", mode="faithful")
    from engine.weights import faithful_fallbacks

    assert faithful_fallbacks(eng.gguf) == []  # every matrix runs in a native kernel
    np.testing.assert_array_equal(eng.logits(ids), ref_forced)
    eng.reset()
    last = eng.prefill(ids)
    for t, ref in ref_steps:
        np.testing.assert_array_equal(last, ref)
        last = eng.decode_step(int(np.argmax(last)))
    assert eng.model.w._decoder is not None  # those steps ran every layer in C (cv_layer_decode) ...
    eng.truncate(len(ids))
    eng.tap = lambda *a: None  # ... and with a tap attached the per-op path runs: the same floats
    last = eng.decode_step(ref_steps[0][0])
    np.testing.assert_array_equal(last, ref_steps[1][1])


def test_faithful_f16_cache_serves_every_architecture():
    """bitnet's ternary weights have no native kernel (the q8 float path runs them) but its attention
    reads the same ggml-layout F16 cache: faithful equals q8 up to summation order, and generates."""
    from crossval.models import resolve_model
    from engine.generate import Engine

    path = resolve_model("bitnet-tiny")
    ids = [1, 5, 9, 14, 20, 33, 40]
    faithful = Engine(path, n_ctx=64, kv_type="f16", mode="faithful")
    assert faithful.cache.layout == "ggml"
    a, b = faithful.logits(ids), Engine(path, n_ctx=64, kv_type="f16", mode="q8").logits(ids)
    assert cosine_rows(a, b).min() >= 0.9999
    assert len(faithful.generate(ids, 4).tokens) == 4


@needs_llamacpp
def test_geglu_uses_ggmls_gelu_table():
    """Every finite fp16 gate value in (-10, 10): our GeGLU (up = 1) equals ggml's own fp16 GELU table
    entry, which ggml_vec_geglu_f32 looks up."""
    import ctypes

    from crossval import libggml

    lib = libggml._cpu_lib()
    lib.ggml_cpu_init()
    table = np.ctypeslib.as_array((ctypes.c_uint16 * 65536).in_dll(lib, "ggml_table_gelu_f16")).copy()
    xs = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    keep = np.isfinite(xs) & (xs > -10) & (xs < 10)
    x = xs[keep]
    gu = np.concatenate([x, np.ones_like(x)])[None, :]
    ours = kernels.geglu(gu, x.size)[0]
    np.testing.assert_array_equal(ours, table[keep].view(np.float16).astype(np.float32))


def test_geglu_vector_paths_equal_the_scalar_loop():
    """The AVX-512 (gathered table entries) and AVX2 GeGLU against the portable loop, bit for bit, on
    gates across both ±10 cut-offs, their neighbours, ±0, ±inf, NaN and values past fp16's range,
    over a row length that leaves a tail for each path."""
    rng = np.random.default_rng(0)
    n = 4096 + 13
    x = rng.uniform(-12, 12, (3, n)).astype(np.float32)
    x[0, :8] = [-10, 10, np.nextafter(np.float32(-10), 0), np.nextafter(np.float32(10), 0), 0, -0.0, np.nan, np.inf]
    x[1, :4] = [-np.inf, 65504, 70000, -70000]
    gu = np.concatenate([x, rng.standard_normal((3, n)).astype(np.float32)], axis=1)
    if kernels.lib.cv_set_simd(-1) == 0:
        pytest.skip("no AVX2 here: only the portable loop runs")
    simd = kernels.geglu(gu, n)
    try:
        kernels.lib.cv_set_simd(0)
        portable = kernels.geglu(gu, n)
    finally:
        kernels.lib.cv_set_simd(-1)
    np.testing.assert_array_equal(simd.view(np.uint32), portable.view(np.uint32))
