"""gemma, gemma2, gemma3: one reading-order forward pass, the three versions' differences inline.

Follows llama.cpp src/models/gemma.cpp, gemma2.cpp, gemma3.cpp:
  x = token_embd[ids] · sqrt(n_embd)                               (all gemmas)
  per layer:
    h = rmsnorm(x) · attn_norm          (GGUF norm weights already include gemma's +1: use x·w)
    q, k, v = wq·h, wk·h, wv·h
    q, k = rmsnorm(q)·q_norm, rmsnorm(k)·k_norm  per head          (gemma3)
    q, k = rope_neox(q, k, base)   base = rope_base_swa on sliding-window layers (gemma2/3)
    a = wo · softmax(softcap(q·scale · kᵀ) + mask) · v   softcap (gemma2), window mask on SWA layers
    a = rmsnorm(a) · attn_post_norm                                 (gemma2/3)
    x = x + a
    f = ffn_down · (gelu_tanh(ffn_gate·rmsnorm(x)) * ffn_up·rmsnorm(x))
    f = rmsnorm(f) · ffn_post_norm                                  (gemma2/3)
    x = x + f
  logits = token_embd · rmsnorm(x);  softcap(logits, final_softcap)  (gemma2; gemma3 if set)
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.attention import attention, attention_mask
from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import gelu_tanh, rms_norm, rope, rope_cache, softcap
from engine.weights import FloatWeights


class GemmaModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig):
        self.g, self.cfg = g, cfg
        self.w = FloatWeights(g)
        self.v2 = cfg.arch in ("gemma2", "gemma3")  # post-attention / post-FFN norms
        self.v3 = cfg.arch == "gemma3"  # q/k norms

    def load_all(self) -> None:
        for il in range(self.cfg.n_layer):
            self._layer(il)
        self._output()

    def _layer(self, il: int) -> dict[str, np.ndarray]:
        p, w = f"blk.{il}.", self.w
        L = {
            "attn_norm": w[p + "attn_norm.weight"],
            "wqkv": w.concat([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]),
            "wo": w[p + "attn_output.weight"],
            "ffn_norm": w[p + "ffn_norm.weight"],
            "wgu": w.concat([p + "ffn_gate.weight", p + "ffn_up.weight"]),
            "wdown": w[p + "ffn_down.weight"],
        }
        if self.v2:
            L["attn_post_norm"] = w[p + "post_attention_norm.weight"]
            L["ffn_post_norm"] = w[p + "post_ffw_norm.weight"]
        if self.v3:
            L["q_norm"] = w[p + "attn_q_norm.weight"]
            L["k_norm"] = w[p + "attn_k_norm.weight"]
        return L

    def _output(self):
        name = "token_embd.weight" if self.cfg.tied_output else "output.weight"
        return self.w["output_norm.weight"], self.w[name]

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True) -> np.ndarray:
        """ids (n,) at positions [cache.n_past, +n) → logits (n, n_vocab) float32
        (only the last row when all_logits is False)."""
        c = self.cfg
        n = len(ids)
        cache.check_room(n)
        pos = np.arange(cache.n_past, cache.n_past + n)
        n_kv = cache.n_past + n
        rope_global = rope_cache(pos, c.rope_dim, c.rope_base)
        rope_local = rope_cache(pos, c.rope_dim, c.rope_base_swa) if any(c.swa_layers) else rope_global
        mask_global = attention_mask(pos, n_kv)
        mask_local = attention_mask(pos, n_kv, c.sliding_window) if any(c.swa_layers) else mask_global
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        x = self.w.embedding_rows("token_embd.weight", ids) * np.float32(c.embd_scale)  # (n, n_embd)
        for il in range(c.n_layer):
            L = self._layer(il)
            local = c.swa_layers[il]
            cos, sin = rope_local if local else rope_global
            h = rms_norm(x, L["attn_norm"], c.rms_eps)
            qkv = h @ L["wqkv"].T
            q = qkv[:, :nq].reshape(n, c.n_head, c.head_dim)
            k = qkv[:, nq : nq + nkv].reshape(n, c.n_head_kv, c.head_dim)
            v = qkv[:, nq + nkv :].reshape(n, c.n_head_kv, c.head_dim_v)
            if self.v3:
                q = rms_norm(q, L["q_norm"], c.rms_eps)
                k = rms_norm(k, L["k_norm"], c.rms_eps)
            q = rope(q, cos, sin, neox=True)
            k = rope(k, cos, sin, neox=True)
            ks, vs = cache.store(il, k, v)
            # gemma scales q before attention and passes kq_scale 1 (gemma*.cpp: ggml_scale(Qcur, …))
            mask = mask_local if local else mask_global
            a = attention(q * np.float32(c.attn_scale), ks, vs, mask, softcap=c.attn_softcap, f16_operands=cache.dtype == "f16")
            a = a.reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            a = a @ L["wo"].T
            if self.v2:
                a = rms_norm(a, L["attn_post_norm"], c.rms_eps)
            x = x + a
            if tap:
                tap(il, "ffn_inp", x)
            h = rms_norm(x, L["ffn_norm"], c.rms_eps)
            gu = h @ L["wgu"].T
            f = (gelu_tanh(gu[:, : c.n_ff]) * gu[:, c.n_ff :]) @ L["wdown"].T
            if self.v2:
                f = rms_norm(f, L["ffn_post_norm"], c.rms_eps)
            if tap:
                tap(il, "ffn_out", f)
            x = x + f
            if tap:
                tap(il, "l_out", x)
        cache.advance(n)
        out_norm, w_out = self._output()
        if not all_logits:
            x = x[-1:]
        x = rms_norm(x, out_norm, c.rms_eps)
        if tap:
            tap(-1, "result_norm", x)
        logits = x @ w_out.T
        if c.final_softcap:
            logits = softcap(logits, c.final_softcap)
        return logits
