"""Scaled dot-product attention over the KV cache: masks (causal, sliding window, prefix-LM),
naive and flash (tiled online-softmax) kernels, and gemma.cpp's ring-buffer view of the cache.

q: (n_q, n_head, d) at positions q_pos; k, v: (n_kv, n_head_kv, d) at positions k_pos.
Query head h reads kv head h // (n_head / n_head_kv) (ggml_mul_mat broadcasting, GQA).
"""

from __future__ import annotations

import numpy as np

from engine.ops import softcap as _softcap
from engine.ops import softmax

NEG_INF = np.float32(-np.inf)


def attention_mask(q_pos: np.ndarray, n_kv: int, window: int = 0, prefix_end: int = 0, k_pos: np.ndarray | None = None) -> np.ndarray:
    """(n_q, n_kv) additive mask: 0 where visible, -inf elsewhere.

    Causal: key k is visible to query q when k ≤ last(q). With a window (llama.cpp's
    LLAMA_SWA_TYPE_STANDARD, llama-hparams.h) keys with q - k ≥ window are hidden: the span starts
    at q - min(window - 1, q), as gemma.cpp writes it. prefix_end (gemma.cpp gemma/attention.cc,
    prefix-LM): last(q) = prefix_end - 1 when prefix_end > 0 and prefix_end - 1 > q, so tokens of
    the prefix see the whole prefix; otherwise last(q) = q."""
    k_pos = np.arange(n_kv) if k_pos is None else k_pos
    q = q_pos[:, None]
    last = q
    if prefix_end > 0:
        last = np.where(prefix_end - 1 > q, prefix_end - 1, q)
    visible = k_pos[None, :] <= last
    if window > 0:
        visible &= k_pos[None, :] >= q - np.minimum(window - 1, q)
    return np.where(visible, np.float32(0.0), NEG_INF).astype(np.float32)


def _group(q: np.ndarray, n_head_kv: int) -> np.ndarray:
    n_q, n_head, d = q.shape
    return q.reshape(n_q, n_head_kv, n_head // n_head_kv, d).transpose(1, 2, 0, 3)  # (hkv, rep, n_q, d)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float = 1.0,
              softcap: float = 0.0, f16_operands: bool = False) -> np.ndarray:  # fmt: skip
    """→ (n_q, n_head, d_v). softmax(softcap(q·kᵀ)·scale + mask)·v, as llama-graph.cpp build_attn_mha
    (llama passes 1/sqrt(d) as kq_scale; gemma pre-scales q and passes 1).

    f16_operands: the KV cache is F16, so ggml's mul_mat converts the other operand to F16 too
    (the F16 vec_dot type): q before q·kᵀ and the softmax probabilities before p·v."""
    if f16_operands:
        q = q.astype(np.float16).astype(np.float32)
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, _ = k.shape
    qg = _group(q, n_head_kv)
    kt = k.transpose(1, 2, 0)[:, None]  # (hkv, 1, d, n_kv)
    scores = np.matmul(qg, kt)  # (hkv, rep, n_q, n_kv)
    if softcap:
        scores = _softcap(scores, softcap)
    if scale != 1.0:
        scores = scores * np.float32(scale)
    scores = scores + mask
    p = softmax(scores, axis=-1)
    if f16_operands:
        p = p.astype(np.float16).astype(np.float32)
    out = np.matmul(p, v.transpose(1, 0, 2)[:, None])  # (hkv, rep, n_q, d_v)
    return out.transpose(2, 0, 1, 3).reshape(n_q, n_head, v.shape[-1])


def cached_attention(cache, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float = 1.0,
                     softcap: float = 0.0, threads: int = 1) -> np.ndarray:  # fmt: skip
    """Store k, v (n, n_head_kv, d) at the cache's next rows, then attend q (n, n_head, d) over every
    cached position → (n, n_head, d_v). A cache in ggml layout (engine/kv_cache.py) runs llama.cpp's
    own arithmetic in the native kernel (engine/kernels attention_f16); otherwise attention() above."""
    ks, vs = cache.store(layer, k, v)
    if getattr(cache, "layout", "rows") == "ggml":
        from engine import kernels

        n_kv = cache.n_past + q.shape[0]
        return kernels.attention_f16(q, ks, vs, n_kv, mask, scale, softcap, threads=threads)
    if cache.dtype == "bf16":  # gemma.cpp rounds q as it rounds K and V
        from engine.ops import round_bf16

        q = round_bf16(q)
    return attention(q, ks, vs, mask, scale=scale, softcap=softcap, f16_operands=cache.dtype == "f16")


def flash_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float = 1.0,
                    softcap: float = 0.0, tile: int = 64) -> np.ndarray:  # fmt: skip
    """The same result as attention(), computed over key tiles with an online softmax: a running
    max m, running normaliser l and running output o per query, rescaled by exp(m_old - m_new)
    as each tile arrives, so no (n_q, n_kv) score matrix is ever held whole."""
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, dv = v.shape
    qg = _group(q, n_head_kv)  # (hkv, rep, n_q, d)
    rep = n_head // n_head_kv
    m = np.full((n_head_kv, rep, n_q, 1), -np.inf, dtype=np.float32)
    l = np.zeros((n_head_kv, rep, n_q, 1), dtype=np.float32)
    o = np.zeros((n_head_kv, rep, n_q, dv), dtype=np.float32)
    for s in range(0, n_kv, tile):
        kt = k[s : s + tile].transpose(1, 2, 0)[:, None]  # (hkv, 1, d, t)
        sc = np.matmul(qg, kt)
        if softcap:
            sc = _softcap(sc, softcap)
        if scale != 1.0:
            sc = sc * np.float32(scale)
        sc = sc + mask[:, s : s + tile]
        m_new = np.maximum(m, sc.max(axis=-1, keepdims=True))
        # rows whose keys so far are all masked keep m = -inf: use 0 there to avoid inf - inf
        m_safe = np.where(np.isfinite(m_new), m_new, np.float32(0.0))
        p = np.exp(sc - m_safe)
        alpha = np.exp(np.where(np.isfinite(m), m - m_safe, -np.inf)).astype(np.float32)
        l = l * alpha + p.sum(axis=-1, keepdims=True)
        o = o * alpha + np.matmul(p, v[s : s + tile].transpose(1, 0, 2)[:, None])
        m = m_new
    out = o / l
    return out.transpose(2, 0, 1, 3).reshape(n_q, n_head, dv)


class RingKV:
    """gemma.cpp's KV cache (gemma/attention.cc): `seq_len` rows, position p stored at row
    p % seq_len. A query at pos attends the positions [start, last] of its mask that are still
    in the ring — the span is clamped to the newest min(last + 1, seq_len) positions ("rolling
    clamp"); older rows have been overwritten."""

    def __init__(self, seq_len: int, n_head_kv: int, d: int, dv: int | None = None):
        self.seq_len = seq_len
        self.k = np.zeros((seq_len, n_head_kv, d), dtype=np.float32)
        self.v = np.zeros((seq_len, n_head_kv, dv or d), dtype=np.float32)
        self.row_pos = np.full(seq_len, -1, dtype=np.int64)  # which position each row holds

    def store(self, pos: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        rows = pos % self.seq_len
        self.k[rows], self.v[rows], self.row_pos[rows] = k, v, pos

    def view(self, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k, v, positions) of every live row holding a position < upto, oldest first."""
        live = (self.row_pos >= 0) & (self.row_pos < upto)
        order = np.argsort(self.row_pos[live], kind="stable")
        return self.k[live][order], self.v[live][order], self.row_pos[live][order]
