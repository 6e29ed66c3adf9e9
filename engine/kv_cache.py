"""KV cache: per layer, keys (after rope) and values for positions [0, n_past).

The cache type is f32 or f16 (llama.cpp's default KV type is F16; the harness selects F32 for
exactness checks). An f16 cache holds values rounded to f16 but kept in float32 arrays, so
attention reads them without converting the whole prefix at every step; the numbers are exactly
the f16 values. Shapes: k[layer] (n_ctx, n_head_kv, head_dim), v[layer] (n_ctx, n_head_kv, head_dim_v).
"""

from __future__ import annotations

import numpy as np

KV_TYPES = ("f32", "f16")


class KVCacheFull(RuntimeError):
    pass


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int, dtype: str = "f32"):
        if dtype not in KV_TYPES:
            raise ValueError(f"kv cache type must be one of {list(KV_TYPES)}, not {dtype!r}")
        self.dtype = dtype
        self.n_ctx = n_ctx
        self.k = [np.zeros((n_ctx, n_head_kv, head_dim), dtype=np.float32) for _ in range(n_layer)]
        self.v = [np.zeros((n_ctx, n_head_kv, head_dim_v), dtype=np.float32) for _ in range(n_layer)]
        self.n_past = 0

    def reset(self) -> None:
        self.n_past = 0

    def check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise KVCacheFull(f"context full: {self.n_past} + {n} tokens > n_ctx {self.n_ctx}")

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write the new rows at [n_past, n_past + n); return all keys/values so far as float32."""
        p0, n = self.n_past, k.shape[0]
        if self.dtype == "f16":
            k, v = k.astype(np.float16), v.astype(np.float16)
        self.k[layer][p0 : p0 + n] = k
        self.v[layer][p0 : p0 + n] = v
        return self.k[layer][: p0 + n], self.v[layer][: p0 + n]

    def advance(self, n: int) -> None:
        self.n_past += n
