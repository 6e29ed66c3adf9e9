"""bitnet.cpp's CPU arithmetic from the native kernels (bitnet_kernels.c): the I2_S matmul with its
int8 activation quantization, the F16 × F32 tinyBLAS of its lm_head and its attention routes.
Faithful mode uses these for models holding I2_S tensors (engine/models/bitnet.py)."""

from __future__ import annotations

import numpy as np

from engine.kernels import _ptr, attention_buffers, ffi, ggml_lanes, lib


def i2s_quantize_acts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (n_tok, K) float32 → (int8 (n_tok, K), scales float32 (n_tok,), sums int32 (n_tok,)) as
    quantize_row_i8_s computes them."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, k = x.shape
    q = np.empty((n, k), dtype=np.int8)
    s = np.empty(n, dtype=np.float32)
    sums = np.empty(n, dtype=np.int32)
    lib.cv_i2s_quantize_acts(_ptr(x, "float *"), n, k, _ptr(q, "int8_t *"), _ptr(s, "float *"), _ptr(sums, "int32_t *"))
    return q, s, sums


def i2s_dot(w_row: np.ndarray, a: np.ndarray) -> int:
    """Σ code·a of one I2_S weight row (K/4 code bytes) and int8 activations (K,), as the AVX2
    ggml_vec_dot_i2_i8_s sums it (int16 lanes wrapping)."""
    w_row = np.ascontiguousarray(w_row, dtype=np.uint8)
    a = np.ascontiguousarray(a, dtype=np.int8)
    return int(lib.cv_i2s_dot(_ptr(w_row, "uint8_t *"), _ptr(a, "int8_t *"), a.size))


def i2s_matmul(raw: np.ndarray, n_rows: int, n_cols: int, xq: tuple, threads: int = 1, out: np.ndarray | None = None,
               col: int = 0) -> np.ndarray:  # fmt: skip
    """raw: an I2_S tensor's n/4 + 32 bytes (n_rows rows of n_cols); xq from i2s_quantize_acts →
    (n_tok, n_rows) float32; with `out`, fills out[:, col : col + n_rows]."""
    q, s, sums = xq
    n_tok = q.shape[0]
    y = np.empty((n_tok, n_rows), dtype=np.float32) if out is None else out
    base = y.__array_interface__["data"][0] + 4 * col
    if lib.cv_i2s_matmul(_ptr(raw, "uint8_t *"), n_rows, n_cols, _ptr(q, "int8_t *"), _ptr(s, "float *"), _ptr(sums, "int32_t *"), n_tok,
                         ffi.cast("float *", base), y.shape[1], int(threads)):  # fmt: skip
        raise ValueError(f"I2_S matmul: {n_cols} columns is not a multiple of 128")
    return y


def matmul_f16(w16: np.ndarray, x: np.ndarray, threads: int = 1, lanes: int | None = None) -> np.ndarray:
    """w16 (n_rows, n_cols) float16; x (n_tok, n_cols) float32 → (n_tok, n_rows) as the fork's mul_mat
    multiplies an F16 weight (tinyBLAS with F32 activations for ≥ 2 rows, else ggml_vec_dot_f16)."""
    assert w16.dtype == np.float16 and w16.flags.c_contiguous and w16.ndim == 2
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_cols = x.shape
    y = np.empty((n_tok, w16.shape[0]), dtype=np.float32)
    lanes = ggml_lanes() if lanes is None else lanes
    if lib.cv_bitnet_matmul_f16(_ptr(w16, "uint16_t *"), w16.shape[0], n_cols, _ptr(x, "float *"), n_tok, _ptr(y, "float *"),
                                y.shape[1], int(lanes), int(threads)):  # fmt: skip
        raise ValueError(f"F16 matmul: bad shapes or lanes ({w16.shape} · {x.shape}, lanes {lanes})")
    return y


def n_kv(cells: int, n_ctx: int) -> int:
    """The KV length the fork attends over: min(n_ctx, max(32, cells rounded up to 32))."""
    return int(lib.cv_bitnet_n_kv(int(cells), int(n_ctx)))


def attention_f16(q: np.ndarray, k16: np.ndarray, v16t: np.ndarray, n_kv_cells: int, mask: np.ndarray, scale: float,
                  lanes: int | None = None, threads: int = 1) -> np.ndarray:  # fmt: skip
    """The fork's CPU attention over an F16 cache (layout as engine.kernels.attention_f16)."""
    q, mask, out, (n_q, n_head, d, n_ctx, n_head_kv, dv) = attention_buffers(q, k16, v16t, n_kv_cells, mask)
    lanes = ggml_lanes() if lanes is None else lanes
    if lib.cv_attention_f16_bitnet(_ptr(q, "float *"), n_q, n_head, d, _ptr(k16, "uint16_t *"), _ptr(v16t, "uint16_t *"), n_ctx,
                                   int(n_kv_cells), n_head_kv, dv, _ptr(mask, "float *"), float(scale), int(lanes), _ptr(out, "float *"),
                                   int(threads)):  # fmt: skip
        raise ValueError(f"attention: bad shapes or lanes (n_head {n_head}, n_head_kv {n_head_kv}, n_kv {n_kv_cells}, lanes {lanes})")
    return out
