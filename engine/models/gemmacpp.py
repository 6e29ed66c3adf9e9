"""Gemma (1/2/3) in gemma.cpp's arithmetic: engine mode bf16, every op in the native kernels
(engine/kernels/gemmacpp.py, gemma_kernels.c) for one Highway target.

Follows gemma.cpp's gemma/gemma.cc TransformerLayer, gemma/attention.cc, gemma/flash_attention.cc
and gemma/gemma-inl.h, with the activation types of gemma/activations.h (f32 unless marked bf16):
  x = token_embd[ids] · bf16(sqrt(n_embd))                           (EmbedMMToken)
  per layer:
    h = rmsnorm(x) · (1 + w)                                          pre_att_rms_out f32
    q, k, v = MatMul(bf16(h), bf16(Wq|Wk|Wv))                         f32; the KV cache is f32
    k = rope(rmsnorm(k)·(1 + k_norm), mul 1)                          (ComputeQKV, gemma3)
    q = rope(rmsnorm(q)·(1 + q_norm), mul query_scale)                (SingleDotSoftmaxWeightedSum /
                                                                       RMSNormAndPositionalEncoding)
    a = Σ softmax(q·k) v                                              att_out f32, by target:
        native bf16 dot (AVX3_ZEN4/SPR): DotSoftmaxWeightedSum (attention.cc) — q·k in f64, Highway
          Exp, f64 sum, over the whole score row of activations.att (stale below a window: _buffer)
        otherwise (AVX3_DL, AVX3, AVX2): FlashAttention (flash_attention.cc) — an online softmax
          over tiles of (head, token) tasks: m' = max(m, x), p = exp(x − m'), d' = d·exp(m − m') + Σp,
          out = out·(d·exp(m − m')/d') + Σ (p/d')·v; the tile (16 or 8 rows × 8 positions, 4 rows ×
          16 or 8 positions, or one query) depends on the batch and on gemma.cpp's worker count
    a = MatMul(bf16(a), bf16(Wo))                                     att_sums bf16
    a = rmsnorm(a) · (1 + post_att)                                   bf16, in place (gemma2/3)
    x = x + a
    h = rmsnorm(x) · (1 + pre_ffw)                                    pre_ffw_rms_out bf16
    g, u = MatMul(h, Wgate), MatMul(h, Wup)                           C1, C2 bf16
    f = MatMul(bf16(u · gelu_tanh(g)), Wdown)                         ffw_out f32
    f = rmsnorm(f) · (1 + post_ffw)                                   f32 (gemma2/3)
    x = x + f
  logits = MatMul(bf16(rmsnorm(x)·(1 + final_norm)), bf16(token_embd)) (+ final softcap, gemma2)
Norm scales are gemma.cpp's: the GGUF's norm weight − 1 in float32, as the kit's converter writes
them. gemma.cc picks the attention at compile time (HWY_NATIVE_DOT_BF16 ? kAttentionUseOld : flash),
so the engine picks it from the target (Target.native). Because FlashAttention's tiling depends on
how tokens are batched, tokens go through in gemma.cpp's batches (forward below).
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache

F32 = np.float32
PREFILL_TBATCH = 256  # gemma.cpp's default prefill_tbatch_size (gemma/gemma_args.h)


class GemmaCppWeights:
    """Weights as gemma.cpp holds them: matrices as bf16 bits (its MatMul rounds f32 weights to bf16
    as it reads them), norm scales as (GGUF weight − 1), embedding rows dequantized f32."""

    def __init__(self, g: GGUFFile, target, threads: int = 1):
        self.g, self.t, self.threads = g, target, threads
        self._mats: dict[str, np.ndarray] = {}
        self._norms: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.g.tensors

    def mat(self, name: str) -> np.ndarray:
        w = self._mats.get(name)
        if w is None:
            from engine.kernels import gemmacpp as gm

            w = self._mats[name] = gm.bf16_bits(self.g.dequantize(name), self.t)
        return w

    def norm(self, name: str) -> np.ndarray:
        w = self._norms.get(name)
        if w is None:
            w = self._norms[name] = (self.g.dequantize(name).astype(F32) - F32(1.0)).astype(F32)
        return w

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        from engine.quants import dequantize

        t = self.g.tensor(name)
        return dequantize(self.g.raw(name)[ids], t.type).reshape(len(ids), t.ne[0]).astype(F32)

    def matmul(self, x: np.ndarray, name: str, out_bf16: bool = False) -> np.ndarray:
        from engine.kernels import gemmacpp as gm

        return gm.matmul(x, self.mat(name), self.t, out_bf16=out_bf16, threads=self.threads)


class GemmaCppModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, simd_target: str | None = None, threads: int = 1, workers: int = 2):
        """workers: the size of gemma.cpp's thread pools (its driver's "workers", --num_threads capped
        at the cores), which picks FlashAttention's tiles on targets that run it."""
        from engine.kernels import gemmacpp as gm

        self.g, self.cfg = g, cfg
        self.target = gm.Target.named(simd_target)
        self.flash = not self.target.native  # gemma.cc: the old attention only with HWY_NATIVE_DOT_BF16
        self.workers = int(workers)
        self.w = GemmaCppWeights(g, self.target, threads)
        self.v2 = cfg.arch in ("gemma2", "gemma3")
        self.v3 = cfg.arch == "gemma3"
        self.inv_ts_global = gm.inv_timescale(cfg.rope_dim, cfg.rope_base)
        self.inv_ts_local = gm.inv_timescale(cfg.rope_dim, cfg.rope_base_swa)
        # EmbeddingScaling: sqrt(model_dim) in f32, rounded to bf16 (Gemma's Embedder casts first)
        self.emb_scale = gm.round_bf16(np.float32([np.sqrt(np.float32(cfg.n_embd))]), self.target)[0]
        self.query_scale = F32(cfg.attn_scale)
        self._att: np.ndarray | None = None
        self._seq_cap = 0  # set by the engine: the cache's n_ctx

    def _output(self) -> str:
        return "token_embd.weight" if self.cfg.tied_output else "output.weight"

    def load_all(self) -> None:
        """Convert every weight now instead of on first use."""
        for il in range(self.cfg.n_layer):
            p = f"blk.{il}."
            for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                self.w.mat(p + m + ".weight")
            for nm in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"):
                if p + nm + ".weight" in self.w:
                    self.w.norm(p + nm + ".weight")
        self.w.mat(self._output())
        self.w.norm("output_norm.weight")

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        """ids (n,) at positions [cache.n_past, +n) → logits (n, n_vocab) float32 (only the last row
        when all_logits is False).

        Batches (FlashAttention's tiles) and rows of gemma.cpp's score buffer (the old attention, see
        _att) follow how gemma.cpp would have run these tokens: a decode step is a batch of one at
        row 0; a prompt whose last logits only are wanted is Generate's prefill — all but the last
        token in batches of prefill_tbatch_size (row = index in the batch), the last one decoded at
        row 0; teacher-forced logits of every position are the kit driver's --force run, one decode
        at row 0 per token; with prefix_end the prompt is one batch. With a tap (per-layer
        diagnostics) every position runs in one batch, each in a row of its own."""
        n = len(ids)
        cache.check_room(n)
        if self._seq_cap != cache.n_ctx:
            self._seq_cap, self._att = cache.n_ctx, None
        if n == 1 or prefix_end:
            return self._run(ids, cache, np.arange(n), tap, True if n == 1 else all_logits, prefix_end)
        if tap is not None:  # per-layer taps want the whole batch's tensors: one batch, own rows
            return self._run(ids, cache, np.arange(1, n + 1), tap, all_logits)
        if not all_logits:
            head = ids[:-1]
            for s in range(0, len(head), PREFILL_TBATCH):
                chunk = head[s : s + PREFILL_TBATCH]
                self._run(chunk, cache, np.arange(len(chunk)), tap, None)
            return self._run(ids[-1:], cache, np.zeros(1, np.int64), tap, False)
        if self.flash:  # FlashAttention's tiles depend on the batch: one decode per token, as the driver runs
            return np.concatenate([self._run(ids[i : i + 1], cache, np.zeros(1, np.int64), tap, True) for i in range(n)])
        # old attention: one decode per token at row 0. A token reads row 0's earlier contents only past a sliding
        # window, so the tokens before that run as one batch (each in a row of its own, the last
        # one's row then becoming row 0's contents), the rest one at a time.
        c = self.cfg
        p0 = cache.n_past
        stale_from = c.sliding_window if any(c.swa_layers) and c.sliding_window else 1 << 62
        nb = int(min(n, max(0, stale_from - p0)))
        out = []
        if nb:
            out.append(self._run(ids[:nb], cache, np.arange(1, nb + 1), tap, True))
            self._buffer(nb + 1)[0] = self._att[nb]
        for i in range(nb, n):
            out.append(self._run(ids[i : i + 1], cache, np.zeros(1, np.int64), tap, True))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _buffer(self, rows: int) -> np.ndarray:
        """gemma.cpp's activations.att: per row and head, a score/probability row over positions,
        kept from call to call (its contents below a window's start reach the softmax)."""
        need = (max(rows, PREFILL_TBATCH + 1), self.cfg.n_head, self._seq_cap)
        if self._att is None or self._att.shape[0] < need[0]:
            old, self._att = self._att, np.zeros(need, dtype=np.float32)
            if old is not None:
                self._att[: old.shape[0]] = old
        return self._att

    def _run(self, ids: np.ndarray, cache: KVCache, rows: np.ndarray, tap, all_logits: bool | None, prefix_end: int = 0):
        """One batch through every layer, token i working in score-buffer row rows[i]; logits of every
        row (all_logits), the last row (False) or none (None: a prefill batch before the last token)."""
        from engine.kernels import gemmacpp as gm

        c, W, t = self.cfg, self.w, self.target
        n = len(ids)
        att = None if self.flash else self._buffer(int(rows.max()) + 1)
        pos = np.arange(cache.n_past, cache.n_past + n, dtype=np.int64)
        x = W.embedding_rows("token_embd.weight", ids) * self.emb_scale
        nq = c.n_head * c.head_dim
        for il in range(c.n_layer):
            p = f"blk.{il}."
            local = c.swa_layers[il]
            inv_ts = self.inv_ts_local if local else self.inv_ts_global
            h = gm.rms_norm(x, W.norm(p + "attn_norm.weight"), t)
            if tap:
                tap(il, "attn_norm", h)
            q = W.matmul(h, p + "attn_q.weight").reshape(n, c.n_head, c.head_dim)
            k = W.matmul(h, p + "attn_k.weight").reshape(n, c.n_head_kv, c.head_dim)
            v = W.matmul(h, p + "attn_v.weight").reshape(n, c.n_head_kv, c.head_dim_v)
            if self.v3:
                k = gm.rms_norm(k, W.norm(p + "attn_k_norm.weight"), t)
                q = gm.rms_norm(q, W.norm(p + "attn_q_norm.weight"), t)
            k = gm.rope(k, pos, inv_ts, 1.0)
            q = gm.rope(q, pos, inv_ts, self.query_scale)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
            ks, vs = cache.store(il, k, v)
            window = c.sliding_window if local else 0
            start = pos - np.minimum(window - 1, pos) if window else np.zeros_like(pos)
            last = np.maximum(pos, prefix_end - 1) if prefix_end else pos
            if self.flash:
                a = gm.flash_attention(q, ks, vs, start, last, t, c.attn_softcap, self.workers, W.threads).reshape(n, nq)
            else:
                a = gm.attention(q, ks, vs, start, last, att, rows, t, c.attn_softcap, W.threads).reshape(n, nq)
            if tap:
                tap(il, "kqv_out", a)
            a = W.matmul(a, p + "attn_output.weight", out_bf16=True)
            if self.v2:
                a = gm.rms_norm(a, W.norm(p + "post_attention_norm.weight"), t, in_bf16=True, out_bf16=True)
            x = x + a
            if tap:
                tap(il, "ffn_inp", x)
            h = gm.rms_norm(x, W.norm(p + "ffn_norm.weight"), t, out_bf16=True)
            gate = W.matmul(h, p + "ffn_gate.weight", out_bf16=True)
            up = W.matmul(h, p + "ffn_up.weight", out_bf16=True)
            f = W.matmul(gm.geglu(gate, up, t), p + "ffn_down.weight")
            if self.v2:
                f = gm.rms_norm(f, W.norm(p + "post_ffw_norm.weight"), t)
            if tap:
                tap(il, "ffn_out", f)
            x = x + f
            if tap:
                tap(il, "l_out", x)
        cache.advance(n)
        if all_logits is None:
            return None
        if not all_logits:
            x = x[-1:]
        x = gm.rms_norm(x, W.norm("output_norm.weight"), t, out_bf16=True)
        if tap:
            tap(-1, "result_norm", x)
        logits = W.matmul(x, self._output())
        if c.final_softcap:
            logits = gm.softcap(logits, c.final_softcap)
        return logits
