"""llama (and SmolLM2, which is a llama): one reading-order forward pass.

Follows llama.cpp src/models/llama.cpp:
  x = token_embd[ids]
  per layer: h = x + wo · attn(rope(wq·rmsnorm(x)), rope(wk·…), wv·…)
             x = h + ffn_down · (silu(ffn_gate · rmsnorm(h)) * ffn_up · rmsnorm(h))
  logits = output · rmsnorm(x)      (output = token_embd when the GGUF has no output.weight)
  Every W· above is (W·h) · s when the GGUF has W's `.scale` (NVFP4 checkpoints; output only if NVFP4).
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.attention import attention_mask, cached_attention
from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import rms_norm, rope_cache
from engine.weights import FloatWeights, make_weights


class LlamaModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1):
        self.g, self.cfg = g, cfg
        self.w: FloatWeights = make_weights(g, mode, threads)
        # llama.cpp's llama graph passes a `.scale` for q, k, v (build_qkv), o (build_attn), gate, up, down
        # (build_ffn) and an NVFP4 output head (FloatWeights.use_scales)
        mats = (n for il in range(cfg.n_layer) for part in self._layer(il) if isinstance(part, tuple) for n in part)
        self.w.use_scales([*mats, *self._output()[1]])

    def _layer(self, il: int):
        p = f"blk.{il}."
        return (
            p + "attn_norm.weight",
            (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"),
            (p + "attn_output.weight",),
            p + "ffn_norm.weight",
            (p + "ffn_gate.weight", p + "ffn_up.weight"),
            (p + "ffn_down.weight",),
        )

    def _decoder_spec(self):
        """(dims, layers, per_layer) of the C decode path (kernels.LayerDecoder; faithful mode)."""
        c = self.cfg
        dims = dict(n_embd=c.n_embd, n_head=c.n_head, n_head_kv=c.n_head_kv, head_dim=c.head_dim, head_dim_v=c.head_dim_v,
                    n_ff=c.n_ff, rope_dim=c.rope_dim, neox=0, gelu=0, post_norms=0, qk_norm=0, rms_eps=c.rms_eps,
                    attn_scale=1.0, kq_scale=c.attn_scale, softcap=0.0)  # fmt: skip
        layers = []
        for il in range(c.n_layer):
            attn_norm, (q, k, v), (o,), ffn_norm, (gate, up), (down,) = self._layer(il)
            layers.append(dict(attn_norm=attn_norm, ffn_norm=ffn_norm, q=q, k=k, v=v, o=o, gate=gate, up=up, down=down))
        return dims, layers, [(c.rope_base, 0)] * c.n_layer

    def _output(self):
        return "output_norm.weight", ("token_embd.weight" if self.cfg.tied_output else "output.weight",)

    def load_all(self) -> None:
        """Dequantize every weight now instead of on first use."""
        for il in range(self.cfg.n_layer):
            for names in self._layer(il):
                self.w.prepare(names) if isinstance(names, tuple) else self.w[names]
        self.w[self._output()[0]], self.w.prepare(self._output()[1])

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        """ids (n,) at positions [cache.n_past, +n) → logits (n, n_vocab) float32
        (only the last row, shape (1, n_vocab), when all_logits is False)."""
        c = self.cfg
        n = len(ids)
        cache.check_room(n)
        x = self.w.embedding_rows("token_embd.weight", ids)  # (n, n_embd)
        dec = self.w.decoder(cache, n, tap, prefix_end, self._decoder_spec)
        if dec is not None:  # one decode step, every layer in C (the loop below, op for op)
            x = dec(x[0], cache)[None]
        else:
            pos = np.arange(cache.n_past, cache.n_past + n)
            cos, sin = rope_cache(pos, c.rope_dim, c.rope_base)
            mask = attention_mask(pos, cache.n_past + n, prefix_end=prefix_end)
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        for il in range(c.n_layer if dec is None else 0):
            attn_norm, wqkv, wo, ffn_norm, wgu, wdown = self._layer(il)
            mm = self.w.matmul
            h = self.w.rms_norm(x, self.w[attn_norm], c.rms_eps)
            if tap:
                tap(il, "attn_norm", h)
            qkv = mm(h, wqkv)
            q = qkv[:, :nq].reshape(n, c.n_head, c.head_dim)
            k = qkv[:, nq : nq + nkv].reshape(n, c.n_head_kv, c.head_dim)
            v = qkv[:, nq + nkv :].reshape(n, c.n_head_kv, c.head_dim_v)
            q = self.w.rope(q, cos, sin, neox=False)
            k = self.w.rope(k, cos, sin, neox=False)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
            # kq_scale applied inside the softmax (llama.cpp src/models/llama.cpp passes it to build_attn)
            a = cached_attention(cache, il, q, k, v, mask, scale=c.attn_scale, threads=self.w.threads).reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            o = mm(a, wo)
            if il == c.n_layer - 1 and not all_logits:  # only the rows whose logits are wanted go on (inp_out_ids, src/models/llama.cpp)
                o, x = o[-1:], x[-1:]
            x = x + o
            if tap:
                tap(il, "ffn_inp", x)
            h = self.w.rms_norm(x, self.w[ffn_norm], c.rms_eps)
            gu = mm(h, wgu)
            f = mm(self.w.swiglu(gu, c.n_ff), wdown)
            if tap:
                tap(il, "ffn_out", f)
            x = x + f
            if tap:
                tap(il, "l_out", x)
        cache.advance(n)
        out_norm, w_out = self._output()
        if not all_logits:
            x = x[-1:]
        x = rms_norm(x, self.w[out_norm], c.rms_eps)
        if tap:
            tap(-1, "result_norm", x)
        return self.w.matmul(x, w_out)
