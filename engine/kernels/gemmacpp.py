"""gemma.cpp's arithmetic in the native kernels (gemma_kernels.c): the ops engine mode bf16 runs.

Every function reproduces one gemma.cpp op for one Highway target (`Target`): the order of its
float sums, its bf16 roundings and Highway's own exp / tanh / sin / cos polynomials, so nothing the
bf16 mode compares is left to numpy's BLAS or libm. gemma_kernels.c names the gemma.cpp source of
each op. Arrays are float32; bf16 values are kept as float32 holding a bf16 number, weights as
their bf16 bit patterns (uint16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels import _ptr, available, lib, load_error

# Highway's x86 targets → (native bf16 dot product, f32 lanes per vector). HWY_NATIVE_DOT_BF16 is 1
# from AVX3_ZEN4 on (AVX-512 BF16); AVX3, AVX3_DL and AVX2 promote bf16 halves to f32 and use FMA,
# and gemma.cc runs FlashAttention on them (the old attention only where the dot is native).
TARGETS = {
    "AVX10_2": (True, 16),
    "AVX3_SPR": (True, 16),
    "AVX3_ZEN4": (True, 16),
    "AVX3_DL": (False, 16),
    "AVX3": (False, 16),
    "AVX2": (False, 8),
}


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """The Highway target whose arithmetic the kernels follow."""

    name: str
    native: bool  # bf16 products through VDPBF16PS (HWY_NATIVE_DOT_BF16)
    lanes: int  # f32 lanes of one vector: 16 (AVX-512) or 8 (AVX2)

    @classmethod
    def named(cls, name: str | None) -> "Target":
        """A target by Highway's name (BUILD_INFO.json's hwy_static_target), or None: the target a
        -march=native gemma.cpp build would get on this CPU, as far as its features tell (a
        compiler that does not know the CPU can pick a lower one: then name it)."""
        if not available():
            raise TargetError(f"--mode bf16 needs the native kernels: {load_error()}")
        if name is None:
            name = ("SSE4", "AVX2", "AVX3", "AVX3_DL", "AVX3_ZEN4", "AVX3_SPR")[lib.cv_gm_cpu_target()]
        if name not in TARGETS:
            raise TargetError(f"gemma.cpp Highway target {name!r} is not reproduced (known: {', '.join(TARGETS)})")
        native, lanes = TARGETS[name]
        if native and not lib.cv_gm_cpu_native_bf16():
            raise TargetError(f"gemma.cpp's {name} arithmetic needs AVX512_BF16, which this CPU lacks")
        return cls(name, native, lanes)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def bf16_bits(x: np.ndarray, t: Target) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), rounded as the target's f32→bf16 conversion does."""
    x = _f32(x)
    out = np.empty(x.shape, dtype=np.uint16)
    lib.cv_gm_to_bf16(_ptr(x, "float *"), _ptr(out, "uint16_t *"), x.size, int(t.native))
    return out


def round_bf16(x: np.ndarray, t: Target) -> np.ndarray:
    """float32 → the nearest bf16, kept as float32 (the target's conversion)."""
    x = _f32(x)
    out = np.empty_like(x)
    lib.cv_gm_round_bf16(_ptr(x, "float *"), _ptr(out, "float *"), x.size, int(t.native))
    return out


def matmul(x: np.ndarray, w_bits: np.ndarray, t: Target, out_bf16: bool = False, threads: int = 1) -> np.ndarray:
    """x (n, K) float32 (rounded to bf16 inside) times W (N, K) bf16 bits, transposed → (n, N):
    gemma.cpp's MatMul with a single K block; out_bf16 rounds the result (a BF16 output matrix)."""
    x = _f32(x.reshape(-1, x.shape[-1]))
    n, k = x.shape
    rows, k2 = w_bits.shape
    if k != k2:
        raise ValueError(f"matmul: {k} activation columns against a weight of {k2}")
    y = np.empty((n, rows), dtype=np.float32)
    rc = lib.cv_gm_matmul(_ptr(x, "float *"), n, k, _ptr(w_bits, "uint16_t *"), rows, _ptr(y, "float *"), rows, int(out_bf16),
                          int(t.native), t.lanes, int(threads))  # fmt: skip
    if rc:
        raise TargetError(f"gemma.cpp MatMul for {t.name} is unavailable here (code {rc})")
    return y


def rms_norm(x: np.ndarray, w_gemma: np.ndarray, t: Target, in_bf16: bool = False, out_bf16: bool = False) -> np.ndarray:
    """x (..., d) → RMSNorm with gemma.cpp's scale w_gemma (the GGUF norm weight − 1): see
    gemma_kernels.c cv_gm_rmsnorm. in_bf16: x holds bf16 values (summed as bf16 pairs)."""
    x = _f32(x)
    d = x.shape[-1]
    out = np.empty_like(x)
    w = _f32(w_gemma)
    lib.cv_gm_rmsnorm(_ptr(x, "float *"), x.size // d, d, _ptr(w, "float *"), _ptr(out, "float *"), int(in_bf16), int(out_bf16),
                      int(t.native), t.lanes)  # fmt: skip
    return out


def inv_timescale(rope_dim: int, base: float) -> np.ndarray:
    """1 / base^(2i/rope_dim) in double, rounded to float32 (gemma.cpp ops/ops.h)."""
    out = np.empty(rope_dim // 2, dtype=np.float32)
    lib.cv_gm_inv_timescale(int(rope_dim), float(base), _ptr(out, "float *"))
    return out


def rope(x: np.ndarray, positions: np.ndarray, inv_ts: np.ndarray, mul: float = 1.0) -> np.ndarray:
    """x (n, heads, dim) → rotated NEOX halves at positions (n,), each value scaled by mul first."""
    out = _f32(x).copy()
    n, heads, dim = out.shape
    pos = np.ascontiguousarray(positions, dtype=np.int64)
    lib.cv_gm_rope(_ptr(out, "float *"), n, heads, dim, _ptr(pos, "int64_t *"), _ptr(inv_ts, "float *"), float(np.float32(mul)))
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: np.ndarray, last: np.ndarray, att: np.ndarray, rows: np.ndarray,
              t: Target, softcap: float = 0.0, threads: int = 1) -> np.ndarray:  # fmt: skip
    """q (n, heads, d); k, v (n_kv, heads_kv, d) f32; query i attends [start[i], last[i]], its scores
    soft-capped first when softcap (gemma2) → (n, heads, d). att (n_rows, heads, seq_cap) float32 is
    gemma.cpp's score buffer, updated in place: query i works in row rows[i], and its softmax also
    covers what that row holds below start[i] (see gemma_kernels.c cv_gm_attention)."""
    q, k, v = _f32(q), _f32(k), _f32(v)
    n, heads, d = q.shape
    s, e = np.ascontiguousarray(start, dtype=np.int64), np.ascontiguousarray(last, dtype=np.int64)
    r = np.ascontiguousarray(rows, dtype=np.int64)
    if att.dtype != np.float32 or not att.flags.c_contiguous or att.shape[1] != heads or r.max(initial=0) >= att.shape[0]:
        raise ValueError("attention: the score buffer does not fit these queries")
    if e.max(initial=-1) >= k.shape[0]:
        raise ValueError("attention: a position outside the cache")
    out = np.empty_like(q)
    if lib.cv_gm_attention(_ptr(q, "float *"), n, heads, d, _ptr(k, "float *"), _ptr(v, "float *"), k.shape[1], _ptr(s, "int64_t *"),
                           _ptr(e, "int64_t *"), float(softcap), _ptr(att, "float *"), _ptr(r, "int64_t *"), att.shape[2],
                           _ptr(out, "float *"), t.lanes, int(threads)):  # fmt: skip
        raise ValueError("attention: a query's positions lie outside its score row")
    return out


def flash_vtile(t: Target, heads: int, heads_kv: int, n_tokens: int, workers: int) -> int:
    """The tile height gemma.cpp's FlashAttention picks for a batch of n_tokens tokens of one query
    sequence: t.lanes (TileFlashAttention), 4 (TileFlashAttention4) or 1 (SingleFlashAttention)."""
    return int(lib.cv_gm_flash_vtile(t.lanes, heads // heads_kv, n_tokens, n_tokens * heads, workers))


def flash_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: np.ndarray, last: np.ndarray, t: Target,
                    softcap: float = 0.0, workers: int = 2, threads: int = 1) -> np.ndarray:  # fmt: skip
    """gemma.cpp's FlashAttention over one batch of tokens: q (n, heads, d); k, v (n_kv, heads_kv, d) f32;
    token i attends [start[i], last[i]] → (n, heads, d). The batch is the unit gemma.cpp tiles (its
    tasks are the batch's (head, token) pairs), so the result depends on how tokens are batched and on
    workers, gemma.cpp's thread-pool size (see gemma_kernels.c cv_gm_flash_attention)."""
    q, k, v = _f32(q), _f32(k), _f32(v)
    n, heads, d = q.shape
    s, e = np.ascontiguousarray(start, dtype=np.int64), np.ascontiguousarray(last, dtype=np.int64)
    if e.max(initial=-1) >= k.shape[0]:
        raise ValueError("flash attention: a position outside the cache")
    out = np.empty_like(q)
    rc = lib.cv_gm_flash_attention(_ptr(q, "float *"), n, heads, d, _ptr(k, "float *"), _ptr(v, "float *"), k.shape[1],
                                   _ptr(s, "int64_t *"), _ptr(e, "int64_t *"), float(softcap), _ptr(out, "float *"), t.lanes,
                                   int(workers), int(threads))  # fmt: skip
    if rc:
        raise ValueError(f"flash attention: bad positions or lanes (code {rc})")
    return out


def geglu(gate: np.ndarray, up: np.ndarray, t: Target) -> np.ndarray:
    """bf16(up · gelu_tanh(gate)) with gemma.cpp's Gelu and Highway's Tanh."""
    g, u = _f32(gate), _f32(up)
    out = np.empty_like(g)
    lib.cv_gm_geglu(_ptr(g, "float *"), _ptr(u, "float *"), _ptr(out, "float *"), g.size, int(t.native))
    return out


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap · tanh(x / cap) as gemma.cpp's LogitsSoftCap computes it."""
    out = _f32(x).copy()
    lib.cv_gm_softcap(_ptr(out, "float *"), out.size, float(cap))
    return out


def exp(x: np.ndarray) -> np.ndarray:
    """Highway's Exp (float), elementwise — for tests."""
    return np.array([lib.cv_gm_exp(float(v)) for v in _f32(x).ravel()], dtype=np.float32).reshape(np.shape(x))


def tanh(x: np.ndarray) -> np.ndarray:
    """Highway's Tanh (float), elementwise — for tests."""
    return np.array([lib.cv_gm_tanh(float(v)) for v in _f32(x).ravel()], dtype=np.float32).reshape(np.shape(x))
