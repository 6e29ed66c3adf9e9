"""Pure float32 array functions shared by the model files (shapes in comments).

Each follows ggml's CPU arithmetic where that arithmetic is observable at float32 precision;
the comment names the upstream file (llama.cpp vendor tree, ggml/src/ggml-cpu/).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x: (..., d) → x / sqrt(mean(x²) + eps) · w, in ggml's arithmetic (ops.cpp
    ggml_compute_forward_rms_norm_f32): squares in float, summed in double, mean rounded to
    float, scale = 1.0f/sqrtf(mean + eps) in float, then x·scale and ·w in float."""
    ss = np.sum((x * x).astype(np.float64), axis=-1)
    mean = (ss / x.shape[-1]).astype(F32)
    scale = F32(1.0) / np.sqrt(mean + F32(eps))
    y = x * scale[..., None]
    return y * w if w is not None else y


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → the nearest bfloat16 (ties to even), kept as float32: the rounding gemma.cpp applies
    to both operands of every MatMul (../shared/gemmacpp README) and to attention's q, K and V."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(F32)


def rope_cache(positions: np.ndarray, n_rot: int, base: float, freq_factors: np.ndarray | None = None,
               mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """cos, sin of shape (n_pos, n_rot/2). ops.cpp ggml_rope_cache_init: theta_scale =
    powf(base, -2/n_rot) and theta for pair i is pos·theta_scale^i by repeated float multiplication,
    then libm's cosf/sinf. The native kernels call libm itself (bit-identical to llama.cpp); without
    them, float64 cos/sin rounded to float32 differ from glibc's cosf/sinf by 1 ulp at ~2 % of entries.
    freq_factors (n_rot/2,) and mscale: rope_yarn with freq_scale 1, ext_factor 0 (phi3's long-rope):
    cos = cosf(theta_i / ff_i) · mscale, sin likewise."""
    from engine import kernels

    if kernels.available():
        return kernels.rope_cache(positions, n_rot, base, freq_factors, mscale)
    theta_scale = F32(np.float64(base) ** np.float64(F32(-2.0) / F32(n_rot)))  # = glibc powf here
    steps = np.empty((len(positions), n_rot // 2), dtype=F32)
    steps[:, 0] = positions.astype(F32)
    steps[:, 1:] = theta_scale
    theta = np.cumprod(steps, axis=1, dtype=F32)
    if freq_factors is not None:
        theta = theta / freq_factors.astype(F32)
    m = F32(mscale)
    return np.cos(theta.astype(np.float64)).astype(F32) * m, np.sin(theta.astype(np.float64)).astype(F32) * m


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """x: (n_pos, n_heads, head_dim); cos/sin: (n_pos, n_rot/2). Rotates the first n_rot dims.
    NORM (llama, bitnet): adjacent pairs (x[2i], x[2i+1]) — GGUF Q/K rows are permuted by the
    converter so this matches HF's rotate_half. NEOX (gemma): pairs (x[i], x[i + n_rot/2]).

    ops.cpp rotate_pairs as the compiler vectorised it: in its 8-float vector loop x0·cos − x1·sin is
    fmaf(x0, cos, −fl(x1·sin)) and x0·sin + x1·cos is fmaf(x0, sin, fl(x1·cos)); the pairs left
    over after the last whole vector (rope_fused_pairs) are computed unfused, each product rounded.
    A float32 product is exact in float64, so one float64 multiply-add rounded to float32 gives the
    fused result, bar a rare double rounding (logits are bit-checked in tests/test_faithful.py)."""
    n_rot = cos.shape[-1] * 2
    c, s = cos[:, None, :].astype(np.float64), sin[:, None, :].astype(np.float64)
    out = x.copy()
    if neox:
        a, b = x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]
        sl0, sl1 = np.s_[..., : n_rot // 2], np.s_[..., n_rot // 2 : n_rot]
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        sl0, sl1 = np.s_[..., 0:n_rot:2], np.s_[..., 1:n_rot:2]
    a64 = a.astype(np.float64)
    r0 = (a64 * c - (b * s).astype(F32)).astype(F32)
    r1 = (a64 * s + (b * c).astype(F32)).astype(F32)
    k = rope_fused_pairs(n_rot, neox)
    if k < n_rot // 2:  # the unfused tail
        f = lambda u: u.astype(F32)  # noqa: E731
        r0[..., k:] = f(f(a64[..., k:] * c[..., k:]) - f(b[..., k:] * s[..., k:]))
        r1[..., k:] = f(f(a64[..., k:] * s[..., k:]) + f(b[..., k:] * c[..., k:]))
    out[sl0], out[sl1] = r0, r1
    return out


def rope_fused_pairs(n_rot: int, neox: bool) -> int:
    """How many of rotate_pairs' n_rot/2 pairs ggml-cpu computes in whole vectors (with fused
    multiply-adds): per_vec pairs per vector, as the compiler vectorised it — 4 for NORM's interleaved
    pairs and 8 for NEOX's halves in one build, 2 and 1 in another (GCC 12.2 for an AVX-512 Intel
    host). kernels.set_rope_vec holds the build's values
    (measured with ggml's own rope: crossval/libggml.py rope_vector_pairs, tests/test_faithful.py)."""
    from engine import kernels

    per_vec = kernels.rope_vec(neox) if kernels.available() else (8 if neox else 4)
    return (n_rot // 2) // per_vec * per_vec


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1.0) + np.exp(-x))


_SQRT_2_OVER_PI = F32(0.79788456080286535587989211986876)
_GELU_COEF_A = F32(0.044715)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU (tanh approximation) as ggml's CPU backend computes it for f32 (vec.h, GGML_GELU_FP16):
    x is rounded to fp16, looked up in a table of fp16(gelu(x)), and x ≤ -10 → 0, x ≥ 10 → x."""
    xh = x.astype(np.float16).astype(F32)
    g = F32(0.5) * xh * (F32(1.0) + np.tanh(_SQRT_2_OVER_PI * xh * (F32(1.0) + _GELU_COEF_A * xh * xh)))
    g = g.astype(np.float16).astype(F32)
    return np.where(x <= -10.0, F32(0.0), np.where(x >= 10.0, x, g)).astype(F32)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """gemma2 soft-capping: cap · tanh(x / cap)."""
    return (np.tanh(x * F32(1.0 / cap)) * F32(cap)).astype(F32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)
