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
  wq, wk, wv, wo (and an NVFP4 output.weight) are (W·h) · s when the GGUF has their `.scale`; the FFN's
  scales llama.cpp loads and leaves unused.
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.attention import attention_mask, cached_attention
from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import rms_norm, rope_cache, softcap
from engine.weights import FloatWeights, make_weights


class GemmaModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1):
        self.g, self.cfg = g, cfg
        self.w: FloatWeights = make_weights(g, mode, threads)
        self.v2 = cfg.arch in ("gemma2", "gemma3")  # post-attention / post-FFN norms
        self.v3 = cfg.arch == "gemma3"  # q/k norms
        # gemma*.cpp pass a `.scale` for q, k, v (build_qkv), o (build_attn) and an NVFP4 output head;
        # build_ffn gets NULL for the FFN's (FloatWeights.use_scales)
        parts = [self._layer(il) for il in range(cfg.n_layer)]
        self.w.use_scales([*(n for L in parts for n in (*L["wqkv"], *L["wo"])), *self._output()[1]])

    def load_all(self) -> None:
        """Dequantize every weight now instead of on first use."""
        for il in range(self.cfg.n_layer):
            for names in self._layer(il).values():
                self.w.prepare(names) if isinstance(names, tuple) else self.w[names]
        self.w[self._output()[0]], self.w.prepare(self._output()[1])

    def _layer(self, il: int) -> dict[str, str | tuple[str, ...]]:
        """GGUF tensor names of layer il: a str for a norm weight, a tuple for one matmul."""
        p = f"blk.{il}."
        L: dict[str, str | tuple[str, ...]] = {
            "attn_norm": p + "attn_norm.weight",
            "wqkv": (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"),
            "wo": (p + "attn_output.weight",),
            "ffn_norm": p + "ffn_norm.weight",
            "wgu": (p + "ffn_gate.weight", p + "ffn_up.weight"),
            "wdown": (p + "ffn_down.weight",),
        }
        if self.v2:
            L["attn_post_norm"] = p + "post_attention_norm.weight"
            L["ffn_post_norm"] = p + "post_ffw_norm.weight"
        if self.v3:
            L["q_norm"] = p + "attn_q_norm.weight"
            L["k_norm"] = p + "attn_k_norm.weight"
        return L

    def _decoder_spec(self):
        """(dims, layers, per_layer) of the C decode path (kernels.LayerDecoder; faithful mode)."""
        c = self.cfg
        dims = dict(n_embd=c.n_embd, n_head=c.n_head, n_head_kv=c.n_head_kv, head_dim=c.head_dim, head_dim_v=c.head_dim_v,
                    n_ff=c.n_ff, rope_dim=c.rope_dim, neox=1, gelu=1, post_norms=int(self.v2), qk_norm=int(self.v3),
                    rms_eps=c.rms_eps, attn_scale=c.attn_scale, kq_scale=1.0, softcap=c.attn_softcap)  # fmt: skip
        layers, per_layer = [], []
        for il in range(c.n_layer):
            L = self._layer(il)
            (q, k, v), (o,), (gate, up), (down,) = L["wqkv"], L["wo"], L["wgu"], L["wdown"]
            norms = {n: L.get(n) for n in ("attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm", "q_norm", "k_norm")}
            layers.append(dict(norms, q=q, k=k, v=v, o=o, gate=gate, up=up, down=down))
            local = c.swa_layers[il]
            per_layer.append((c.rope_base_swa if local else c.rope_base, c.sliding_window if local else 0))
        return dims, layers, per_layer

    def _output(self):
        return "output_norm.weight", ("token_embd.weight" if self.cfg.tied_output else "output.weight",)

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        """ids (n,) at positions [cache.n_past, +n) → logits (n, n_vocab) float32
        (only the last row when all_logits is False)."""
        c = self.cfg
        n = len(ids)
        cache.check_room(n)
        x = self.w.embedding_rows("token_embd.weight", ids) * np.float32(c.embd_scale)  # (n, n_embd)
        dec = self.w.decoder(cache, n, tap, prefix_end, self._decoder_spec)
        if dec is not None:  # one decode step, every layer in C (the loop below, op for op)
            x = dec(x[0], cache)[None]
        else:
            pos = np.arange(cache.n_past, cache.n_past + n)
            n_kv = cache.n_past + n
            rope_global = rope_cache(pos, c.rope_dim, c.rope_base)
            rope_local = rope_cache(pos, c.rope_dim, c.rope_base_swa) if any(c.swa_layers) else rope_global
            mask_global = attention_mask(pos, n_kv, prefix_end=prefix_end)
            mask_local = attention_mask(pos, n_kv, c.sliding_window, prefix_end) if any(c.swa_layers) else mask_global
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        for il in range(c.n_layer if dec is None else 0):
            L = self._layer(il)
            W, mm = self.w, self.w.matmul
            local = c.swa_layers[il]
            cos, sin = rope_local if local else rope_global
            h = W.rms_norm(x, W[L["attn_norm"]], c.rms_eps)
            if tap:
                tap(il, "attn_norm", h)
            qkv = mm(h, L["wqkv"])
            q = qkv[:, :nq].reshape(n, c.n_head, c.head_dim)
            k = qkv[:, nq : nq + nkv].reshape(n, c.n_head_kv, c.head_dim)
            v = qkv[:, nq + nkv :].reshape(n, c.n_head_kv, c.head_dim_v)
            if self.v3:
                q = W.rms_norm(q, W[L["q_norm"]], c.rms_eps)
                k = W.rms_norm(k, W[L["k_norm"]], c.rms_eps)
            # gemma scales q before attention and passes kq_scale 1 (gemma*.cpp: ggml_scale(Qcur, …)):
            # in the rope call, as its own multiply after it, unless a tap wants Qcur unscaled
            q = W.rope(q, cos, sin, neox=True, scale=1.0 if tap else c.attn_scale)
            k = W.rope(k, cos, sin, neox=True)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
                q = q * np.float32(c.attn_scale)
            mask = mask_local if local else mask_global
            a = cached_attention(cache, il, q, k, v, mask, softcap=c.attn_softcap, threads=W.threads).reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            a = mm(a, L["wo"])
            if il == c.n_layer - 1 and not all_logits:  # only the rows whose logits are wanted go on (inp_out_ids, src/models/gemma*.cpp)
                a, x = a[-1:], x[-1:]
            if self.v2:
                a = W.rms_norm(a, W[L["attn_post_norm"]], c.rms_eps)
            x = x + a
            if tap:
                tap(il, "ffn_inp", x)
            h = W.rms_norm(x, W[L["ffn_norm"]], c.rms_eps)
            gu = mm(h, L["wgu"])
            f = mm(W.geglu(gu, c.n_ff), L["wdown"])
            if self.v2:
                f = W.rms_norm(f, W[L["ffn_post_norm"]], c.rms_eps)
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
        logits = self.w.matmul(x, w_out)
        if c.final_softcap:
            logits = softcap(logits, c.final_softcap)
        return logits
