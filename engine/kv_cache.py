"""KV cache: per layer, keys (after rope) and values for positions [0, n_past).

The cache type is f32 or f16 (llama.cpp's default KV type is F16; the harness selects F32 for
exactness checks). An f16 cache holds values rounded to f16 but kept in float32 arrays, so
numpy attention reads them without converting the whole prefix at every step; the numbers are
exactly the f16 values. A bf16 cache (engine mode bf16, gemma.cpp's arithmetic) holds bf16-rounded
values the same way. Shapes: k[layer] (n_ctx, n_head_kv, head_dim), v[layer] (n_ctx, n_head_kv, head_dim_v).

layout="ggml" (f16 only; the native attention kernel reads it): real float16 arrays laid out as
llama.cpp's CPU cache without flash attention — k[layer] (n_ctx, n_head_kv, head_dim) and V
transposed, v[layer] (n_head_kv, head_dim_v, n_ctx) (llama-kv-cache.cpp, v_trans).
"""

from __future__ import annotations

import numpy as np

KV_TYPES = ("f32", "f16", "bf16")


class KVCacheFull(RuntimeError):
    pass


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int, dtype: str = "f32",
                 layout: str = "rows"):  # fmt: skip
        if dtype not in KV_TYPES:
            raise ValueError(f"kv cache type must be one of {list(KV_TYPES)}, not {dtype!r}")
        if layout not in ("rows", "ggml") or (layout == "ggml" and dtype != "f16"):
            raise ValueError(f"kv cache layout {layout!r} with type {dtype!r}: the ggml layout is f16 only")
        self.dtype, self.layout = dtype, layout
        self.n_ctx = n_ctx
        if layout == "ggml":
            self.k = [np.zeros((n_ctx, n_head_kv, head_dim), dtype=np.float16) for _ in range(n_layer)]
            self.v = [np.zeros((n_head_kv, head_dim_v, n_ctx), dtype=np.float16) for _ in range(n_layer)]
        else:
            self.k = [np.zeros((n_ctx, n_head_kv, head_dim), dtype=np.float32) for _ in range(n_layer)]
            self.v = [np.zeros((n_ctx, n_head_kv, head_dim_v), dtype=np.float32) for _ in range(n_layer)]
        self.n_past = 0

    def reset(self) -> None:
        self.n_past = 0

    def check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise KVCacheFull(f"context full: {self.n_past} + {n} tokens > n_ctx {self.n_ctx}")

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write the new rows at [n_past, n_past + n); return all keys/values so far as float32
        (the ggml layout returns its whole float16 arrays: the kernel is told how many rows to read)."""
        p0, n = self.n_past, k.shape[0]
        if self.layout == "ggml":  # (rounded to f16 as ggml's cpy does: round to nearest even)
            from engine import kernels

            if kernels.available():  # F16C's conversion, V transposed on the way
                kernels.kv_store_f16(k, v, self.k[layer], self.v[layer], p0)
            else:
                self.k[layer][p0 : p0 + n] = k
                self.v[layer][:, :, p0 : p0 + n] = v.transpose(1, 2, 0)
            return self.k[layer], self.v[layer]
        if self.dtype == "f16":
            k, v = k.astype(np.float16), v.astype(np.float16)
        elif self.dtype == "bf16":  # gemma.cpp's rounding (engine mode bf16)
            from engine.ops import round_bf16

            k, v = round_bf16(k), round_bf16(v)
        self.k[layer][p0 : p0 + n] = k
        self.v[layer][p0 : p0 + n] = v
        return self.k[layer][: p0 + n], self.v[layer][: p0 + n]

    def advance(self, n: int) -> None:
        self.n_past += n
