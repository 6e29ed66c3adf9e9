"""Scaled dot-product attention over the KV cache, with causal and sliding-window masks.

q: (n_q, n_head, d) at positions q_pos; k, v: (n_kv, n_head_kv, d) at positions 0..n_kv-1.
Query head h reads kv head h // (n_head / n_head_kv) (ggml_mul_mat broadcasting, GQA).
"""

from __future__ import annotations

import numpy as np

from engine.ops import softcap as _softcap
from engine.ops import softmax

NEG_INF = np.float32(-np.inf)


def attention_mask(q_pos: np.ndarray, n_kv: int, window: int = 0) -> np.ndarray:
    """(n_q, n_kv) additive mask: 0 where visible, -inf elsewhere. Causal (k ≤ q); with a window,
    llama.cpp's LLAMA_SWA_TYPE_STANDARD also hides keys with q - k >= window (llama-hparams.h)."""
    k_pos = np.arange(n_kv)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window > 0:
        visible &= (q_pos[:, None] - k_pos[None, :]) < window
    return np.where(visible, np.float32(0.0), NEG_INF).astype(np.float32)


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
    rep = n_head // n_head_kv
    qg = q.reshape(n_q, n_head_kv, rep, d).transpose(1, 2, 0, 3)  # (hkv, rep, n_q, d)
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
