"""Native quantized kernels (cffi, built at install time from qkernels.c by setup.py).

`matmul(raw, wtype, x, threads)` multiplies the rows of a quantized GGUF tensor — its raw blocks,
never a dequantized copy — by activations x quantized as ggml's CPU backend quantizes them
(Q8_0 / Q8_1 / Q8_K), with integer block dot products and ggml's per-block scale arithmetic.
Weight types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ2_XXS, IQ2_XS, IQ2_S,
IQ1_S, IQ1_M, IQ3_XXS, IQ3_S, IQ4_XS, IQ4_NL, MXFP4, NVFP4, Q1_0, Q2_0 (`supported(wtype)`; the i-quants' and FP4's lookup tables come from
the gguf package at import, engine/kernels/iq_tables.py), F16 through `matmul_f16`, and F32 and BF16
through `matmul_float`. When the extension was not built (no C compiler at install time),
`available()` is False and `load_error()` says why; the numpy engine modes still work.
"""

from __future__ import annotations

import numpy as np

try:
    from engine.kernels._qkernels import ffi, lib

    _ERROR = None
    from engine.kernels.iq_tables import install as _install_iq_tables

    _install_iq_tables(lib, ffi)  # the i-quant grids, derived from the gguf package
except ImportError as e:  # not built: no compiler at install time, or an import from a bare checkout
    ffi = lib = None
    _ERROR = f"native kernels not built ({e}); reinstall with a C compiler (pip install -e .) or run python engine/kernels/build.py"


def available() -> bool:
    return lib is not None


def load_error() -> str | None:
    return _ERROR


def supported(wtype: int) -> bool:
    return lib is not None and bool(lib.cv_supported(int(wtype)))


def _ptr(a: np.ndarray, ctype: str):
    return ffi.cast(ctype, a.__array_interface__["data"][0])  # (a.ctypes.data builds a ctypes object: slow)


def quantize_acts(wtype: int, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """x (n_tok, n_cols) float32 → the activation blocks a `wtype` matmul uses (raw bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_cols = x.shape
    out = np.empty(lib.cv_act_bytes(int(wtype), n_cols, n_tok), dtype=np.uint8)
    if lib.cv_quantize_acts(int(wtype), _ptr(x, "float *"), n_cols, n_tok, _ptr(out, "void *"), int(threads)):
        raise ValueError(f"cannot quantize {n_cols} columns for ggml type {wtype}")
    return out


def rope_cache(positions: np.ndarray, n_rot: int, base: float, freq_factors: np.ndarray | None = None,
               mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """cos, sin (n_pos, n_rot/2) float32 exactly as ggml_rope_cache_init computes them (libm), with
    optional frequency factors (n_rot/2,) and attn_factor mscale (phi3 long-rope)."""
    pos = np.ascontiguousarray(positions, dtype=np.float32)
    cos = np.empty((len(pos), n_rot // 2), dtype=np.float32)
    sin = np.empty_like(cos)
    ff = ffi.NULL
    if freq_factors is not None:
        freq_factors = np.ascontiguousarray(freq_factors, dtype=np.float32).reshape(-1)
        assert freq_factors.size >= n_rot // 2
        ff = _ptr(freq_factors, "float *")
    lib.cv_rope_cache_ext(_ptr(pos, "float *"), len(pos), int(n_rot), float(base), ff, 0.0 if mscale == 1.0 else float(mscale),
                          _ptr(cos, "float *"), _ptr(sin, "float *"))  # fmt: skip
    return cos, sin


def softmax_rows(x: np.ndarray, lanes: int | None = None) -> np.ndarray:
    """ggml_compute_forward_soft_max_f32 on each row of x (n, m), no mask, scale 1: the max, then
    ggml_vec_soft_max_f32 (its vectorised exp, the sum in double), then every value · (float)(1/sum)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    y = np.empty_like(x)
    lanes = ggml_lanes() if lanes is None else int(lanes)
    for r in range(x.shape[0]):
        s = lib.cv_vec_soft_max(_ptr(y[r], "float *"), _ptr(x[r], "float *"), x.shape[1], float(x[r].max()), lanes)
        y[r] *= np.float32(1.0 / s)
    return y


def ggml_lanes() -> int:
    """The SIMD width whose summation order ggml-cpu uses: 16 (AVX-512F+DQ), 8 (AVX2+FMA) or 0 (scalar)
    for a llama.cpp built for this CPU (llama-cpp-python's default). ENGINE_GGML_LANES overrides it for
    a llama.cpp built for less than the CPU has (e.g. GGML_NATIVE=OFF with AVX2 only)."""
    import os

    forced = os.environ.get("ENGINE_GGML_LANES")
    if forced is not None:
        if forced not in ("0", "8", "16"):
            raise ValueError(f"ENGINE_GGML_LANES must be 0, 8 or 16, not {forced!r}")
        return int(forced)
    return int(lib.cv_ggml_lanes())


def set_rope_vec(norm_pairs: int, neox_pairs: int) -> None:
    """How many rope pairs the compiled ggml-cpu rotates per vector with fused multiply-adds (its
    rotate_pairs as the compiler vectorised it): norm_pairs for interleaved (NORM) pairs, neox_pairs for
    NEOX halves; pairs after the last whole vector are computed unfused. The default, 4 and 8, is
    one build's; crossval measures the loaded llama.cpp's (crossval/libggml.py rope_vector_pairs)."""
    if lib.cv_set_rope_vec(int(norm_pairs), int(neox_pairs)) != 0:
        raise ValueError(f"rope vector sizes must be >= 1, not {norm_pairs}, {neox_pairs}")


def rope_vec(neox: bool) -> int:
    """set_rope_vec's current value for NORM (neox False) or NEOX pairs."""
    return int(lib.cv_rope_vec(int(bool(neox))))


def set_tail_fma(wtype: int, fused: bool) -> None:
    """Whether the llama.cpp being matched adds the odd last block of its IQ4_NL (20) or MXFP4 (39)
    vec_dot with a fused multiply-add (`sumf += d·Σ`, contracted or not as its compiler chose). The
    default, fused, is one build's; crossval measures the loaded llama.cpp's
    (crossval/libggml.py vec_dot_tail_fused)."""
    if lib.cv_set_tail_fma(int(wtype), int(bool(fused))) != 0:
        raise ValueError(f"ggml type {wtype} has no vec_dot tail setting (IQ4_NL 20, MXFP4 39)")


def set_f32_tail(width: int) -> None:
    """The vector width (4, 8 or 16) in which the llama.cpp being matched forms ggml_vec_dot_f32's tail
    (products of `width`, then of width/2, rounded; the rest fused) — its compiler's auto-vectorisation.
    The default, 8, is one build's; crossval measures the loaded llama.cpp's (crossval/libggml.py
    f32_tail_width)."""
    if lib.cv_set_f32_tail(int(width)) != 0:
        raise ValueError(f"F32 tail width must be 4, 8 or 16, not {width}")


def f32_tail() -> int:
    """set_f32_tail's current width."""
    return int(lib.cv_f32_tail())


def tail_fma(wtype: int) -> bool:
    """set_tail_fma's current value for IQ4_NL (20) or MXFP4 (39)."""
    v = int(lib.cv_tail_fma(int(wtype)))
    if v < 0:
        raise ValueError(f"ggml type {wtype} has no vec_dot tail setting (IQ4_NL 20, MXFP4 39)")
    return bool(v)


def ggml_bf16_dot() -> bool:
    """Whether the llama.cpp being matched multiplies BF16 with AVX512-BF16's dot instruction (vdpbf16ps):
    by default when this CPU has it and ggml_lanes() is 16 (a build for this CPU). ENGINE_GGML_BF16=0
    matches a build without it, like ENGINE_GGML_LANES does for the SIMD width."""
    import os

    forced = os.environ.get("ENGINE_GGML_BF16")
    if forced is not None and forced not in ("0", "1"):
        raise ValueError(f"ENGINE_GGML_BF16 must be 0 or 1, not {forced!r}")
    ggml_lanes()  # validates ENGINE_GGML_LANES
    return bool(lib.cv_ggml_bf16_dot())


def attention_buffers(q: np.ndarray, k16: np.ndarray, v16t: np.ndarray, n_kv: int, mask: np.ndarray):
    """The checked arguments of an attention over an F16 cache (layout as attention_f16):
    → (q, mask) as contiguous float32, the (n_q, n_head, dv) float32 output buffer, and
    (n_q, n_head, d, n_ctx, n_head_kv, dv)."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    n_q, n_head, d = q.shape
    n_ctx, n_head_kv, _ = k16.shape
    dv = v16t.shape[1]
    assert k16.dtype == np.float16 and v16t.dtype == np.float16 and k16.flags.c_contiguous and v16t.flags.c_contiguous
    assert mask.shape == (n_q, n_kv) and v16t.shape == (n_head_kv, dv, n_ctx)
    out = np.empty((n_q, n_head, dv), dtype=np.float32)
    return q, mask, out, (n_q, n_head, d, n_ctx, n_head_kv, dv)


def attention_f16(q: np.ndarray, k16: np.ndarray, v16t: np.ndarray, n_kv: int, mask: np.ndarray, scale: float,
                  softcap: float = 0.0, lanes: int | None = None, threads: int = 1) -> np.ndarray:  # fmt: skip
    """llama.cpp's CPU attention over an F16 cache (no flash attention), bit for bit.
    q (n_q, n_head, d) float32; k16 (n_ctx, n_head_kv, d) and v16t (n_head_kv, dv, n_ctx) float16 —
    V transposed as llama.cpp stores it; keys [0, n_kv) are read; mask (n_q, n_kv) additive.
    → (n_q, n_head, dv) float32."""
    q, mask, out, (n_q, n_head, d, n_ctx, n_head_kv, dv) = attention_buffers(q, k16, v16t, n_kv, mask)
    lanes = ggml_lanes() if lanes is None else lanes
    if lib.cv_attention_f16(_ptr(q, "float *"), n_q, n_head, d, _ptr(k16, "uint16_t *"), _ptr(v16t, "uint16_t *"), n_ctx, int(n_kv),
                            n_head_kv, dv, _ptr(mask, "float *"), float(scale), float(softcap), int(lanes), _ptr(out, "float *"),
                            int(threads)):  # fmt: skip
        raise ValueError(f"attention: bad shapes or lanes (n_head {n_head}, n_head_kv {n_head_kv}, n_kv {n_kv}, lanes {lanes})")
    return out


def swiglu(gu: np.ndarray, n_ff: int, lanes: int | None = None, threads: int = 1) -> np.ndarray:
    """gu (n, 2·n_ff) = [gate | up] → silu(gate) · up as ggml_vec_swiglu_f32 computes it."""
    gu = np.ascontiguousarray(gu, dtype=np.float32)
    y = np.empty((gu.shape[0], n_ff), dtype=np.float32)
    lib.cv_swiglu(_ptr(gu, "float *"), _ptr(y, "float *"), gu.shape[0], n_ff, ggml_lanes() if lanes is None else int(lanes),
                  int(threads))  # fmt: skip
    return y


def _token_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """x (n_tok, d) or (n_tok, heads, d) float32 whose rows' values lie contiguously (a column slice of a
    fused matmul's output qualifies) → (x or a contiguous copy, floats from one token row to the next)."""
    if x.dtype != np.float32 or x.strides[-1] != 4 or (x.ndim == 3 and x.strides[1] != 4 * x.shape[2]) or x.strides[0] % 4:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x, x.strides[0] // 4 if x.shape[0] > 1 else int(np.prod(x.shape[1:]))


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float, threads: int = 1) -> np.ndarray:
    """engine.ops.rms_norm over the last axis of x (n_tok, d) or (n_tok, heads, d), in ggml-cpu's loop
    (the squares' double sum in element order), threaded over rows → a new contiguous array."""
    x, ld = _token_rows(x)
    n = x.shape[-1]
    y = np.empty(x.shape, dtype=np.float32)
    wp = ffi.NULL if w is None else _ptr(np.ascontiguousarray(w, dtype=np.float32), "float *")
    if lib.cv_rms_norm_rows(_ptr(x, "float *"), ld, x.shape[0], x.size // max(x.shape[0], 1) // n, n, wp, float(eps), _ptr(y, "float *"),
                            int(threads)):  # fmt: skip
        raise ValueError(f"rms_norm: bad shape {x.shape}")
    return y


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool, scale: float = 1.0, threads: int = 1) -> np.ndarray:
    """engine.ops.rope of x (n_tok, heads, head_dim) with cos/sin (n_tok, n_rot/2), then · scale (a separate
    float multiply, gemma's ggml_scale) unless scale is 1 → a new contiguous array."""
    x, ld = _token_rows(x)
    n_tok, n_heads, head_dim = x.shape
    cos, sin = np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32)
    assert cos.shape == sin.shape and cos.shape[0] == n_tok
    y = np.empty(x.shape, dtype=np.float32)
    if lib.cv_rope_rows(_ptr(x, "float *"), ld, _ptr(y, "float *"), n_heads * head_dim, n_tok, n_heads, head_dim, 2 * cos.shape[1],
                        int(bool(neox)), _ptr(cos, "float *"), _ptr(sin, "float *"), float(scale), int(threads)):  # fmt: skip
        raise ValueError(f"rope: bad shapes {x.shape}, {cos.shape}")
    return y


def kv_store_f16(k: np.ndarray, v: np.ndarray, kc: np.ndarray, vct: np.ndarray, p0: int) -> None:
    """k (n, n_head_kv, d) and v (n, n_head_kv, dv) float32 rounded to F16 (nearest even) into a ggml-layout
    cache: kc (n_ctx, n_head_kv, d) rows p0.., vct (n_head_kv, dv, n_ctx) columns p0.. (engine/kv_cache.py)."""
    k, ldk = _token_rows(k)
    v, ldv = _token_rows(v)
    n, n_head_kv, d = k.shape
    assert kc.dtype == vct.dtype == np.float16 and kc.flags.c_contiguous and vct.flags.c_contiguous and v.shape[:2] == (n, n_head_kv)
    if lib.cv_kv_store_f16(_ptr(k, "float *"), ldk, _ptr(v, "float *"), ldv, n, n_head_kv, d, v.shape[2], _ptr(kc, "uint16_t *"),
                           _ptr(vct, "uint16_t *"), kc.shape[0], int(p0)):  # fmt: skip
        raise ValueError(f"kv store: {n} rows at {p0} do not fit a cache of {kc.shape[0]}")


def geglu(gu: np.ndarray, n_ff: int, threads: int = 1) -> np.ndarray:
    """gu (n, 2·n_ff) = [gate | up] → gelu(gate) · up as ggml_vec_geglu_f32 computes it (fp16 table)."""
    gu = np.ascontiguousarray(gu, dtype=np.float32)
    y = np.empty((gu.shape[0], n_ff), dtype=np.float32)
    lib.cv_geglu(_ptr(gu, "float *"), _ptr(y, "float *"), gu.shape[0], n_ff, int(threads))
    return y


class LayerDecoder:
    """A decode step's layers in C, one call per layer (cv_layer_decode): the graph of
    engine/models/llama.py / gemma.py / families.py for one position, in the same ggml arithmetic as
    the per-op kernels. layers: per layer, the norm weights (float32 arrays or None) and the seven matmul
    weights (q, k, v, o, gate, up, down) as (raw blocks, ggml type), and optionally q/k/v biases,
    rope frequency factors (bq, bk, bv, rope_ff), bitnet's sub-norms (attn_sub_norm before o,
    ffn_sub_norm before down) and the matmuls' `.scale` values (q_scale … down_scale:
    one float, or one per expert); per_layer: rope base and window of each layer, and
    optionally a dict of its own cfg fields (e.g. rope_dim 0 on smollm3's no-rope layers). Everything the C side points at is kept alive here."""

    MATS = ("q", "k", "v", "o", "gate", "up", "down")

    def __init__(self, dims: dict, layers: list[dict], per_layer: list[tuple[float, int]], threads: int = 1):
        self._keep: list = []
        self.cfgs, self.ws = [], []
        for L, (rope_base, window, *overrides) in zip(layers, per_layer):  # overrides: {cfg field: value} of this layer
            c = ffi.new("cv_layer_cfg *", dict(dims, lanes=ggml_lanes(), threads=int(threads), rope_base=float(rope_base),
                                               window=int(window), **(overrides[0] if overrides else {})))  # fmt: skip
            w = ffi.new("cv_layer_w *")
            for name in ("attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm", "q_norm", "k_norm", "bq", "bk", "bv", "rope_ff",
                         "attn_sub_norm", "ffn_sub_norm"):
                arr = L.get(name)
                if arr is not None:
                    arr = np.ascontiguousarray(arr, dtype=np.float32)
                    self._keep.append(arr)
                    setattr(w, name, _ptr(arr, "float *"))
            for i, m in enumerate(self.MATS):
                ref = WeightRef(*L[m])
                self._keep.append(ref)
                w.w[i], w.t[i] = ref.ptr, ref.wtype
                if ref.raw.ndim == 3:  # gate / up / down of routed experts (n_expert, rows, row bytes): expert 0 first
                    w.exp_stride[i - 4] = ref.raw[0].nbytes
                s = L.get(m + "_scale")  # its `.scale`: 1 value, or one per expert
                if s is not None:
                    s = np.ascontiguousarray(s, dtype=np.float32)
                    self._keep.append(s)
                    w.s[i] = _ptr(s, "float *")
            if L.get("gate_inp") is not None:  # qwen3moe's router
                ref = WeightRef(*L["gate_inp"])
                self._keep.append(ref)
                w.gate_inp, w.t_gate_inp = ref.ptr, ref.wtype
            self.cfgs.append(c)
            self.ws.append(w)

    def set_threads(self, n: int) -> None:
        for c in self.cfgs:
            c.threads = int(n)

    def __call__(self, x: np.ndarray, cache) -> np.ndarray:
        """x (n_embd,) float32, the token's embedding → the last layer's output; writes the token's
        row (position cache.n_past) of each layer's F16 cache (engine/kv_cache.py, layout "ggml")."""
        x = np.array(x, dtype=np.float32).reshape(-1)
        xp, pos = _ptr(x, "float *"), int(cache.n_past)
        if getattr(self, "_cache", None) is not cache:  # the cache's arrays never move: point once
            self._cache_ptrs = [(_ptr(k, "uint16_t *"), _ptr(v, "uint16_t *"), k.shape[0]) for k, v in zip(cache.k, cache.v)]
            self._cache = cache
        for il, (c, w, (kp, vp, n_ctx)) in enumerate(zip(self.cfgs, self.ws, self._cache_ptrs)):
            if lib.cv_layer_decode(c, w, xp, pos, kp, vp, n_ctx):
                raise ValueError(f"layer {il}: native decode failed at position {pos} (n_ctx {n_ctx})")
        return x


class WeightRef:
    """A quantized tensor's raw blocks with its C pointer made once (the tensor lives in the
    GGUF's memory map, which outlives every matmul)."""

    __slots__ = ("raw", "wtype", "atype", "ptr", "rows", "shape")

    def __init__(self, raw: np.ndarray, wtype: int):
        self.raw = np.ascontiguousarray(raw)
        self.wtype, self.rows, self.shape = int(wtype), self.raw.shape[0], self.raw.shape
        self.atype = act_type(self.wtype)
        self.ptr = _ptr(self.raw, "void *")


def act_type(wtype: int) -> int:
    """The activation block type a `wtype` matmul quantizes x to (weights sharing it share xq):
    ggml's vec_dot_type, as engine/quants.py's block layouts already record it."""
    from engine.quants import block_layout

    return int(block_layout(wtype).vec_dot_type)


def matmul_prequantized(raw: np.ndarray, wtype: int, xq: np.ndarray, n_tok: int, n_cols: int, threads: int = 1,
                        out: np.ndarray | None = None, col: int = 0) -> np.ndarray:  # fmt: skip
    """As matmul, with x already quantized by quantize_acts (for any weight of the same act_type).
    With `out` (n_tok, ≥ col + rows) float32, the result fills out[:, col : col + rows] in place."""
    y = np.empty((n_tok, raw.shape[0]), dtype=np.float32) if out is None else out
    base = y.__array_interface__["data"][0] + 4 * col
    wptr = raw if isinstance(raw, WeightRef) else WeightRef(raw, wtype)
    if lib.cv_matmul_q(wptr.wtype, wptr.ptr, wptr.rows, n_cols, _ptr(xq, "void *"), n_tok, ffi.cast("float *", base), y.shape[1],
                       int(threads)):  # fmt: skip
        raise ValueError(f"ggml type {wtype} with {n_cols} columns is not supported by the native kernels")
    return y


def matmul_f16(w16: np.ndarray, x: np.ndarray, threads: int = 1, out: np.ndarray | None = None, col: int = 0,
               lanes: int | None = None) -> np.ndarray:  # fmt: skip
    """w16 (n_rows, n_cols) float16 weights; x (n_tok, n_cols) float32 → (n_tok, n_rows) float32 as
    llama.cpp's CPU backend multiplies an F16 tensor (activations rounded to F16; tinyBLAS or
    ggml_vec_dot_f16). With `out`, fills out[:, col : col + n_rows] in place."""
    assert w16.dtype == np.float16 and w16.flags.c_contiguous and w16.ndim == 2
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_cols = x.shape
    y = np.empty((n_tok, w16.shape[0]), dtype=np.float32) if out is None else out
    base = y.__array_interface__["data"][0] + 4 * col
    lanes = ggml_lanes() if lanes is None else lanes
    if lib.cv_matmul_f16(_ptr(w16, "uint16_t *"), w16.shape[0], n_cols, _ptr(x, "float *"), n_tok, ffi.cast("float *", base), y.shape[1],
                         int(lanes), int(threads)):  # fmt: skip
        raise ValueError(f"F16 matmul: bad shapes or lanes ({w16.shape} · {x.shape}, lanes {lanes})")
    return y


FLOAT_TYPES = (0, 30)  # F32, BF16: matmul_float (F16 has matmul_f16)


def matmul_float(w: np.ndarray, wtype: int, x: np.ndarray, threads: int = 1, out: np.ndarray | None = None, col: int = 0,
                 lanes: int | None = None, bf16_dot: bool | None = None) -> np.ndarray:  # fmt: skip
    """w: an F32 (wtype 0) tensor (n_rows, n_cols) float32 or a BF16 (wtype 30) one as raw bytes (n_rows,
    2·n_cols); x (n_tok, n_cols) float32 → (n_tok, n_rows) as llama.cpp's CPU backend multiplies them
    (BF16: activations rounded to BF16; tinyBLAS or ggml_vec_dot_f32 / _bf16). With `out`, fills
    out[:, col : col + n_rows] in place."""
    w = np.ascontiguousarray(w)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_cols = x.shape
    assert w.dtype == (np.float32 if wtype == 0 else np.uint8) and w.ndim == 2 and w.nbytes == w.shape[0] * n_cols * (4 if wtype == 0 else 2)
    y = np.empty((n_tok, w.shape[0]), dtype=np.float32) if out is None else out
    base = y.__array_interface__["data"][0] + 4 * col
    lanes = ggml_lanes() if lanes is None else lanes
    bf16_dot = ggml_bf16_dot() if bf16_dot is None else bf16_dot
    if lib.cv_matmul_float(int(wtype), _ptr(w, "void *"), w.shape[0], n_cols, _ptr(x, "float *"), n_tok, ffi.cast("float *", base),
                           y.shape[1], int(lanes), int(bf16_dot), int(threads)):  # fmt: skip
        raise ValueError(f"matmul of ggml type {wtype}: bad shapes, lanes or BF16 dot ({w.shape} · {x.shape}, lanes {lanes}, bf16 dot {bf16_dot})")
    return y


def matmul(raw: np.ndarray, wtype: int, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """raw (n_rows, row_bytes) uint8 blocks of a `wtype` tensor; x (n_tok, n_cols) float32 →
    (n_tok, n_rows) float32 = x · Wᵀ in ggml's quantized arithmetic."""
    if lib is None:
        raise RuntimeError(_ERROR)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_cols = x.shape
    return matmul_prequantized(np.ascontiguousarray(raw), wtype, quantize_acts(wtype, x), n_tok, n_cols, threads)
