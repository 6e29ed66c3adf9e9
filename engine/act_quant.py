"""Activation quantization as ggml's CPU backend does it before a quantized matmul.

ggml multiplies quantized weights by *quantized activations*: each row of x is quantized to the
weight type's vec_dot type (engine/quants.py block_layout) and the dot products run on integers.
Rounding x the same way and multiplying by the dequantized weights reproduces those values up to
summation order — the numpy reference of the native kernels (ggml/src/ggml-quants.c):
  Q8_0 / Q8_1: per 32 values d = amax/127 (stored fp16), q = round(x·(127/amax)) — the SIMD
               path (ggml-cpu/arch/x86/quants.c quantize_row_q8_0/1) multiplies by 127/amax, not
               by 1/d as the _ref C code does, and the two differ in the last bit now and then
  Q8_K:        per 256 values, iscale = -127/max (max = the value of largest |x|),
               q = min(127, nearest_int(iscale·x)), d = 1/iscale (f32)
Rounding is half-to-even, as the SIMD paths (_mm256_round_ps / nearest_int's float trick) do.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q

F32 = np.float32


def q8_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """x (..., k), k % 32 == 0 → the values a block_q8_0 row represents (float32)."""
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / F32(127.0)
    with np.errstate(divide="ignore"):
        idd = np.where(amax > 0, F32(127.0) / np.where(amax > 0, amax, F32(1.0)), F32(0.0))
    q = np.rint(b * idd)
    dh = d.astype(np.float16).astype(F32)
    return (q * dh).reshape(x.shape).astype(F32)


def q8_k_roundtrip(x: np.ndarray) -> np.ndarray:
    """x (..., k), k % 256 == 0 → the values a block_q8_K row represents (float32)."""
    b = x.reshape(*x.shape[:-1], -1, 256)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(b, idx, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, F32(-127.0) / np.where(mx != 0, mx, F32(1.0)), F32(0.0))
        q = np.minimum(np.rint(iscale * b), F32(127.0))
        d = np.where(mx != 0, F32(1.0) / np.where(iscale != 0, iscale, F32(1.0)), F32(0.0))
    return (q * d).reshape(x.shape).astype(F32)


def q8_1_sum_error(x: np.ndarray) -> np.ndarray:
    """block_q8_1 also stores s = fp16(d·Σq) per 32 values — d the f32 scale *before* its fp16
    rounding — and the Q4_1/Q5_1 dot products use it for the weight-minimum term:
    Σ_b d_w·d_a·Σq_w·q_a + m_w·s_a (ggml-cpu/arch/x86/quants.c). Multiplying rounded activations
    by dequantized weights gives m_w·fp16(d)·Σq instead; this returns the difference
    s_a − fp16(d)·Σq per block for the unrounded activations x (..., k) → (..., k/32)."""
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(axis=-1)
    d = amax / F32(127.0)
    with np.errstate(divide="ignore"):
        idd = np.where(amax > 0, F32(127.0) / np.where(amax > 0, amax, F32(1.0)), F32(0.0))
    qsum = np.rint(b * idd[..., None]).sum(axis=-1, dtype=F32)
    s_a = (d * qsum).astype(np.float16).astype(F32)
    return s_a - d.astype(np.float16).astype(F32) * qsum


def q8_1_mins(raw: np.ndarray, qtype) -> np.ndarray:
    """The per-block minimum m (fp16 at bytes 2..3 of every Q4_1/Q5_1 block) → (rows, blocks)."""
    from gguf import GGML_QUANT_SIZES

    _, ts = GGML_QUANT_SIZES[qtype]
    b = raw.reshape(raw.shape[0], -1, ts)
    return np.ascontiguousarray(b[:, :, 2:4]).view(np.float16)[..., 0].astype(F32)


def i8_s_roundtrip(x: np.ndarray) -> np.ndarray:
    """bitnet.cpp's I2_S activations (quantize_row_i8_s): per row s = (float)(127/max(1e-5, max|x|))
    with the max in double, a = clamp(round_half_even(x·s), −128, 127) with x·s exact (the build
    fuses the product into nearest_int's add; a float32 product is exact in float64) → a/s."""
    m = np.maximum(np.abs(x.astype(np.float64)).max(axis=-1, keepdims=True), 1e-5)
    s = (127.0 / m).astype(F32)
    a = np.clip(np.rint(x.astype(np.float64) * s.astype(np.float64)), -128, 127)
    return (a / s).astype(F32)


VEC_DOT_ROUNDTRIP = {Q.Q8_0: q8_0_roundtrip, Q.Q8_1: q8_0_roundtrip, Q.Q8_K: q8_k_roundtrip}


def roundtrip_for(weight_type) -> callable | None:
    """The activation rounding a weight of this type implies, or None (float weights)."""
    from engine.quants import I2_S, block_layout

    if weight_type == I2_S:
        return i8_s_roundtrip
    return VEC_DOT_ROUNDTRIP.get(block_layout(weight_type).vec_dot_type)
