"""BitNet b1.58 (arch "bitnet"): one reading-order forward pass.

Follows llama.cpp src/models/bitnet.cpp (this is llama.cpp's graph, which is what we must match):
  x = token_embd[ids]
  per layer: a = attn(rope_neox(s_q·wq·rmsnorm(x)), rope_neox(s_k·wk·…), s_v·wv·…)
             h = x + s_o · wo · rmsnorm_sub(a)                 (attn_sub_norm, n_embd wide)
             f = silu(s_g · ffn_gate · rmsnorm(h)) * (s_u · ffn_up · rmsnorm(h))
             x = h + s_d · ffn_down · rmsnorm_sub(f)           (ffn_sub_norm, n_ff wide)
  logits = token_embd · rmsnorm(x)                             (no output.weight: tied)
The s_* are the optional one-element "blk.N.<t>.scale" tensors (build_lora_mm multiplies the
matmul result by them). Note: llama.cpp's bitnet graph uses SiLU-gated FFN (LLM_FFN_SILU,
LLM_FFN_PAR), not the squared ReLU of the BitNet b1.58 paper; we follow llama.cpp.
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.attention import attention_mask, cached_attention
from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import rms_norm, rope, rope_cache, silu
from engine.weights import FloatWeights, make_weights


class BitnetModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1):
        self.g, self.cfg = g, cfg
        self.w: FloatWeights = make_weights(g, mode, threads)

    def _scale(self, weight_name: str) -> np.float32:
        name = weight_name.replace(".weight", ".scale")
        return np.float32(self.w[name].reshape(-1)[0]) if name in self.w else np.float32(1.0)

    def _names(self, il: int):
        p = f"blk.{il}."
        return {k: p + k + ".weight" for k in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_sub_norm", "attn_output",
                                               "ffn_norm", "ffn_gate", "ffn_up", "ffn_sub_norm", "ffn_down")}  # fmt: skip

    def load_all(self) -> None:
        for il in range(self.cfg.n_layer):
            for n in self._names(il).values():
                self.w[n]
        self.w["output_norm.weight"], self.w["token_embd.weight"]

    def _mm(self, x: np.ndarray, name: str) -> np.ndarray:
        y = self.w.matmul(x, (name,))
        s = self._scale(name)
        return y if s == 1 else y * s

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        c = self.cfg
        n = len(ids)
        cache.check_room(n)
        pos = np.arange(cache.n_past, cache.n_past + n)
        cos, sin = rope_cache(pos, c.rope_dim, c.rope_base)
        mask = attention_mask(pos, cache.n_past + n, prefix_end=prefix_end)
        x = self.w.embedding_rows("token_embd.weight", ids)  # (n, n_embd)
        for il in range(c.n_layer):
            w = self._names(il)
            h = rms_norm(x, self.w[w["attn_norm"]], c.rms_eps)
            if tap:
                tap(il, "attn_norm", h)
            q = self._mm(h, w["attn_q"]).reshape(n, c.n_head, c.head_dim)
            k = self._mm(h, w["attn_k"]).reshape(n, c.n_head_kv, c.head_dim)
            v = self._mm(h, w["attn_v"]).reshape(n, c.n_head_kv, c.head_dim_v)
            q = rope(q, cos, sin, neox=c.rope_neox)
            k = rope(k, cos, sin, neox=c.rope_neox)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
            a = cached_attention(cache, il, q, k, v, mask, scale=c.attn_scale, threads=self.w.threads).reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            a = rms_norm(a, self.w[w["attn_sub_norm"]], c.rms_eps)
            o = self._mm(a, w["attn_output"])
            if il == c.n_layer - 1 and not all_logits:  # only the rows whose logits are wanted go on (inp_out_ids, src/models/bitnet.cpp)
                o, x = o[-1:], x[-1:]
            x = x + o
            if tap:
                tap(il, "ffn_inp", x)
            h = rms_norm(x, self.w[w["ffn_norm"]], c.rms_eps)
            f = silu(self._mm(h, w["ffn_gate"])) * self._mm(h, w["ffn_up"])
            f = rms_norm(f, self.w[w["ffn_sub_norm"]], c.rms_eps)
            f = self._mm(f, w["ffn_down"])
            if tap:
                tap(il, "ffn_out", f)
            x = x + f
            if tap:
                tap(il, "l_out", x)
        cache.advance(n)
        if not all_logits:
            x = x[-1:]
        x = rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        if tap:
            tap(-1, "result_norm", x)
        return self.w.matmul(x, ("token_embd.weight",))
