"""qwen2, qwen3, qwen3moe, phi3, olmo2, granite, smollm3: llama's decoder with each family's quirks.

One layer description (`Layer`, built by `describe`) per layer says which tensors a layer has and
which quirks apply; the numpy forward below and the C decode step (kernels.LayerDecoder, via
`_decoder_spec`) both read it, so each quirk is written once per path.

Follows llama.cpp src/models/<arch>.cpp (and llama-graph.cpp build_qkv / build_ffn / build_moe_ffn):
  x = token_embd[ids] · embd_scale                    granite: embedding_scale (llama-graph.cpp build_inp_embd)
  per layer:
    h = rmsnorm(x) · attn_norm                        olmo2: h = x (its norms come after the blocks)
    q, k, v = wq·h + bq, wk·h + bk, wv·h + bv         qwen2: the biases (build_qkv adds them after each matmul)
                                                      phi3: one fused attn_qkv matmul, split [q | k | v]
    q, k = rmsnorm(q)·q_norm, rmsnorm(k)·k_norm       qwen3, qwen3moe: per head; olmo2: over all of q / all of k
    q, k = rope(q), rope(k)                           NEOX: qwen*, olmo2, phi3; NORM: granite, smollm3
                                                      smollm3: no rope on every 4th layer ((il + 1) % 4 == 0)
                                                      phi3: theta_i / rope_factors_short[i] (rope_factors_long
                                                      when n_ctx > n_ctx_orig), cos and sin · rope.scaling.attn_factor
    a = wo · softmax(q·kᵀ · kq_scale + causal) · v    kq_scale = 1/√head_dim; granite: attention.scale;
                                                      phi3: q · 1/√head_dim before attention and kq_scale 1
    a = rmsnorm(a) · attn_post_norm                   olmo2
    x = x + a · residual_scale                        granite (residual_scale ≠ 0)
    h = rmsnorm(x) · ffn_norm                         olmo2: h = x
    f = ffn_down · (silu(ffn_gate·h) * ffn_up·h)      phi3: [gate | up] from one fused ffn_up matmul
    qwen3moe: p = softmax(ffn_gate_inp · h)  (n_expert,)
              E = the n_expert_used largest p (descending), w = p[E] / max(Σ p[E], 2⁻¹⁴)
              f = Σ_j w_j · down_Ej(silu(gate_Ej·h) * up_Ej·h)   summed in the order of E
    f = rmsnorm(f) · ffn_post_norm                    olmo2
    x = x + f · residual_scale                        granite
  logits = output · rmsnorm(x) · output_norm          granite: · 1/logit_scale
  Each W· is (W·h) · s where the GGUF has W's `.scale` and the family's graph applies it (q, k, v, qkv, o
  everywhere; gate, up, down in qwen3; experts (s[e]) in qwen3moe; output if NVFP4), before any bias.
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim); expert weights
(n_expert, n_ff_exp, n_embd) / (n_expert, n_embd, n_ff_exp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.attention import attention_mask, cached_attention
from engine.gguf_model import GGUFError, GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import rms_norm, rope, rope_cache
from engine.weights import FloatWeights, make_weights

F32 = np.float32
FAMILIES = ("qwen2", "qwen3", "qwen3moe", "phi3", "olmo2", "granite", "smollm3")


@dataclass(frozen=True)
class Layer:
    """GGUF tensor names of one layer (None where the layer has none) and its quirks."""

    attn_norm: str | None
    ffn_norm: str | None
    attn_post_norm: str | None  # olmo2
    ffn_post_norm: str | None  # olmo2
    q_norm: str | None  # qwen3 / qwen3moe (per head), olmo2 (full width)
    k_norm: str | None
    qkv: tuple[str, ...]  # one matmul: (q, k, v), or phi3's fused (attn_qkv,)
    qkv_bias: tuple[str | None, str | None, str | None]  # qwen2
    o: str
    gate_up: tuple[str, ...]  # (gate, up), or phi3's fused (ffn_up,) = [gate | up]
    down: str | None
    moe: tuple[str, str, str, str] | None  # qwen3moe: (gate_inp, gate_exps, up_exps, down_exps)
    rope: bool  # smollm3: False on its no-rope layers


def describe(g: GGUFFile, cfg: ModelConfig, il: int) -> Layer:
    p = f"blk.{il}."
    has = lambda n: (p + n + ".weight") in g.tensors  # noqa: E731
    name = lambda n: (p + n + ".weight") if has(n) else None  # noqa: E731
    bias = lambda n: (p + n + ".bias") if (p + n + ".bias") in g.tensors else None  # noqa: E731
    olmo2 = cfg.arch == "olmo2"
    # build_qkv (llama-graph.cpp): a fused attn_qkv when the file has one, else q, k, v
    qkv = (p + "attn_qkv.weight",) if has("attn_qkv") else (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
    if cfg.arch == "phi3":  # phi3.cpp: build_ffn(ffn_up, gate NULL, LLM_FFN_SWIGLU): ffn_up holds [gate | up]
        gate_up = (p + "ffn_up.weight",)
    else:
        gate_up = (p + "ffn_gate.weight", p + "ffn_up.weight")
    moe = None
    if cfg.n_expert:
        moe = (p + "ffn_gate_inp.weight", p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight", p + "ffn_down_exps.weight")
        gate_up = ()
    norms = ((None, None, p + "post_attention_norm.weight", p + "post_ffw_norm.weight") if olmo2
             else (p + "attn_norm.weight", p + "ffn_norm.weight", None, None))  # fmt: skip
    for n in (*qkv, p + "attn_output.weight", *gate_up, *(moe or ()), *filter(None, norms)):
        g.tensor(n)  # a missing tensor is a one-line GGUFError now, not mid-forward
    return Layer(
        attn_norm=norms[0],
        ffn_norm=norms[1],
        attn_post_norm=norms[2],
        ffn_post_norm=norms[3],
        q_norm=name("attn_q_norm"),
        k_norm=name("attn_k_norm"),
        qkv=qkv,
        qkv_bias=(bias("attn_q"), bias("attn_k"), bias("attn_v")),
        o=p + "attn_output.weight",
        gate_up=gate_up,
        down=None if moe else p + "ffn_down.weight",
        moe=moe,
        rope=cfg.rope_layers[il] if cfg.rope_layers else True,
    )


class FamilyModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1):
        if cfg.arch not in FAMILIES:
            raise GGUFError(f"{g.path.name}: {cfg.arch!r} is not one of {FAMILIES}")
        self.g, self.cfg = g, cfg
        self.w: FloatWeights = make_weights(g, mode, threads)
        self.layers = [describe(g, cfg, il) for il in range(cfg.n_layer)]
        # qk norm: qwen3/qwen3moe per head (their norm weights are head_dim wide), olmo2 over the full width
        self.qk_norm = 0 if self.layers[0].q_norm is None else (2 if cfg.arch == "olmo2" else 1)
        # phi3.cpp: Qcur = ggml_scale(Qcur, 1/sqrt(n_embd_head)) before build_attn(…, kq_scale 1.0f)
        self.q_prescale = cfg.arch == "phi3"
        # `.scale` tensors (FloatWeights.use_scales): build_qkv and build_attn scale q, k, v (or the fused
        # qkv) and o in every family; qwen3.cpp's build_ffn gate, up, down and qwen3moe.cpp's build_moe_ffn
        # the experts (the others pass NULL: loaded, unused); an NVFP4 output head
        ffn = lambda L: (*L.gate_up, L.down) if cfg.arch == "qwen3" else L.moe[1:] if cfg.arch == "qwen3moe" else ()  # noqa: E731
        self.w.use_scales([*(n for L in self.layers for n in (*L.qkv, L.o, *ffn(L))), *self._output()[1]])

    def _rope_factors(self, n_ctx: int) -> str | None:
        """phi3 long-rope (llama-model.cpp get_rope_factors): the tensor rope_factors_long when the
        context exceeds n_ctx_orig, rope_factors_short otherwise; None when the file has neither."""
        name = "rope_factors_long.weight" if n_ctx > self.cfg.n_ctx_orig else "rope_factors_short.weight"
        return name if name in self.w else None

    def load_all(self) -> None:
        """Dequantize every weight now instead of on first use."""
        for L in self.layers:
            for n in (L.attn_norm, L.ffn_norm, L.attn_post_norm, L.ffn_post_norm, L.q_norm, L.k_norm, *L.qkv_bias):
                if n:
                    self.w[n]
            for names in (L.qkv, (L.o,), L.gate_up, (L.down,) if L.down else ()):
                if names:
                    self.w.prepare(names)
        self.w[self._output()[0]], self.w.prepare(self._output()[1])

    def _output(self):
        return "output_norm.weight", ("token_embd.weight" if self.cfg.tied_output else "output.weight",)

    def _decoder_spec(self, n_ctx: int):
        """(dims, layers, per_layer) of the C decode path (kernels.LayerDecoder; faithful mode), from
        the same layer descriptions (qwen3moe: the router and the 3-D expert tensors, moe_decode.c)."""
        c = self.cfg
        n_ff = self.g.tensor(self.layers[0].moe[1]).ne[1] if c.n_expert else c.n_ff  # an expert's width
        dims = dict(n_embd=c.n_embd, n_head=c.n_head, n_head_kv=c.n_head_kv, head_dim=c.head_dim, head_dim_v=c.head_dim_v,
                    n_ff=n_ff, n_expert=c.n_expert, n_expert_used=c.n_expert_used, rope_dim=c.rope_dim,
                    neox=int(c.rope_neox), gelu=0, post_norms=int(c.arch == "olmo2"), qk_norm=self.qk_norm,
                    no_pre_norms=int(c.arch == "olmo2"), rms_eps=c.rms_eps,
                    attn_scale=c.attn_scale if self.q_prescale else 1.0, kq_scale=1.0 if self.q_prescale else c.attn_scale,
                    softcap=0.0, residual_scale=c.residual_scale,
                    rope_mscale=c.rope_attn_factor if c.rope_attn_factor != 1.0 else 0.0)  # fmt: skip
        nq, nk = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        ff = self._rope_factors(n_ctx)
        layers, per_layer = [], []
        for L in self.layers:
            if len(L.qkv) == 1:  # phi3: row slices of the fused matrix (each output row is its own dot)
                (w,) = L.qkv
                q, k, v = (w, 0, nq), (w, nq, nq + nk), (w, nq + nk, nq + 2 * nk)
            else:
                q, k, v = L.qkv
            gate_inp, down = None, L.down
            if L.moe:  # the whole 3-D expert tensors; LayerDecoder points at expert 0 and steps by expert
                gate_inp, gate, up, down = L.moe
            elif len(L.gate_up) == 1:
                (w,) = L.gate_up
                gate, up = (w, 0, c.n_ff), (w, c.n_ff, 2 * c.n_ff)
            else:
                gate, up = L.gate_up
            bq, bk, bv = L.qkv_bias
            layers.append(dict(attn_norm=L.attn_norm, ffn_norm=L.ffn_norm, attn_post_norm=L.attn_post_norm,
                               ffn_post_norm=L.ffn_post_norm, q_norm=L.q_norm, k_norm=L.k_norm, bq=bq, bk=bk, bv=bv,
                               rope_ff=ff, q=q, k=k, v=v, o=L.o, gate=gate, up=up, down=down, gate_inp=gate_inp))  # fmt: skip
            per_layer.append((c.rope_base, 0, {} if L.rope else {"rope_dim": 0}))
        return dims, layers, per_layer

    def _moe(self, h: np.ndarray, moe: tuple[str, str, str, str]) -> np.ndarray:
        """build_moe_ffn (llama-graph.cpp) with SiLU, norm_w = true, softmax gating: h (n, n_embd) →
        (n, n_embd). As ggml-cpu's mul_mat_id, each expert multiplies the rows routed to it (in token
        order) in one call; NativeWeights.matmul_expert picks the route llama.cpp takes for them."""
        c, W = self.cfg, self.w
        gate_inp, gate_exps, up_exps, down_exps = moe
        probs = W.softmax_rows(W.matmul(h, (gate_inp,)))  # (n, n_expert): ggml_soft_max
        sel = np.argsort(-probs, axis=1, kind="stable")[:, : c.n_expert_used]  # ggml_argsort_top_k: descending
        weights = np.take_along_axis(probs, sel, axis=1)  # get_rows
        wsum = np.sum(weights.astype(np.float64), axis=1).astype(F32)  # ggml_sum_rows (a double accumulator)
        weights = weights / np.maximum(wsum, F32(6.103515625e-5))[:, None]  # clamped to F16's smallest normal, ggml_div
        y = np.empty((h.shape[0], c.n_expert_used, c.n_embd), dtype=F32)  # (token, slot, n_embd)
        for e in np.unique(sel):
            tok, slot = np.nonzero(sel == e)  # row-major: token order, as mul_mat_id groups them
            x = h[tok]
            gu = np.concatenate([W.matmul_expert(x, gate_exps, int(e)), W.matmul_expert(x, up_exps, int(e))], axis=1)
            y[tok, slot] = W.matmul_expert(W.swiglu(gu, gu.shape[1] // 2), down_exps, int(e))
        y = y * weights[:, :, None]  # ggml_mul(experts, weights)
        out = y[:, 0]
        for j in range(1, c.n_expert_used):  # the slot views added in selection order
            out = out + y[:, j]
        return out

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        """ids (n,) at positions [cache.n_past, +n) → logits (n, n_vocab) float32
        (only the last row, shape (1, n_vocab), when all_logits is False)."""
        c, W = self.cfg, self.w
        n = len(ids)
        cache.check_room(n)
        x = W.embedding_rows("token_embd.weight", ids)  # (n, n_embd)
        if c.embd_scale != 1.0:
            x = x * F32(c.embd_scale)
        dec = W.decoder(cache, n, tap, prefix_end, lambda: self._decoder_spec(cache.n_ctx))
        if dec is not None:  # one decode step, every layer in C (the loop below, op for op)
            x = dec(x[0], cache)[None]
        else:
            pos = np.arange(cache.n_past, cache.n_past + n)
            ff = self._rope_factors(cache.n_ctx)
            cos, sin = rope_cache(pos, c.rope_dim, c.rope_base, W[ff] if ff else None, c.rope_attn_factor)
            mask = attention_mask(pos, cache.n_past + n, prefix_end=prefix_end)
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        rs = F32(c.residual_scale)
        for il in range(c.n_layer if dec is None else 0):
            L, mm = self.layers[il], W.matmul
            h = rms_norm(x, W[L.attn_norm], c.rms_eps) if L.attn_norm else x
            if tap:
                tap(il, "attn_norm", h)
            qkv = mm(h, L.qkv)
            q, k, v = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
            bq, bk, bv = L.qkv_bias  # build_qkv: each present bias added after its matmul
            q = q + W[bq] if bq else q
            k = k + W[bk] if bk else k
            v = v + W[bv] if bv else v
            if self.qk_norm == 2:  # olmo2.cpp: build_norm on the unreshaped Qcur / Kcur
                q, k = rms_norm(q, W[L.q_norm], c.rms_eps), rms_norm(k, W[L.k_norm], c.rms_eps)
            q = q.reshape(n, c.n_head, c.head_dim)
            k = k.reshape(n, c.n_head_kv, c.head_dim)
            v = v.reshape(n, c.n_head_kv, c.head_dim_v)
            if self.qk_norm == 1:  # qwen3.cpp: per head, before rope
                q, k = rms_norm(q, W[L.q_norm], c.rms_eps), rms_norm(k, W[L.k_norm], c.rms_eps)
            if L.rope:
                q, k = rope(q, cos, sin, neox=c.rope_neox), rope(k, cos, sin, neox=c.rope_neox)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
            if self.q_prescale:
                q = q * F32(c.attn_scale)
            kq_scale = 1.0 if self.q_prescale else c.attn_scale
            a = cached_attention(cache, il, q, k, v, mask, scale=kq_scale, threads=W.threads).reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            o = mm(a, (L.o,))
            if il == c.n_layer - 1 and not all_logits:  # only the rows whose logits are wanted go on (inp_out_ids)
                o, x = o[-1:], x[-1:]
            if L.attn_post_norm:
                o = rms_norm(o, W[L.attn_post_norm], c.rms_eps)
            if rs:
                o = o * rs
            x = x + o
            if tap:
                tap(il, "ffn_inp", x)
            h = rms_norm(x, W[L.ffn_norm], c.rms_eps) if L.ffn_norm else x
            if L.moe:
                f = self._moe(h, L.moe)
            else:
                f = mm(W.swiglu(mm(h, L.gate_up), c.n_ff), (L.down,))
            if L.ffn_post_norm:
                f = rms_norm(f, W[L.ffn_post_norm], c.rms_eps)
            if rs:
                f = f * rs
            if tap:
                tap(il, "ffn_out", f)
            x = x + f
            if tap:
                tap(il, "l_out", x)
        cache.advance(n)
        out_norm, w_out = self._output()
        if not all_logits:
            x = x[-1:]
        x = rms_norm(x, W[out_norm], c.rms_eps)
        if tap:
            tap(-1, "result_norm", x)
        logits = W.matmul(x, w_out)
        if c.logit_scale != 1.0:  # granite.cpp: ggml_scale(cur, 1.0f / f_logit_scale)
            logits = logits * (F32(1.0) / F32(c.logit_scale))
        return logits
