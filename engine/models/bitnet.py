"""BitNet b1.58: the three architectures of bitnet.cpp's llama.cpp fork — `bitnet` (1bitLLM; also in
llama.cpp), `bitnet-25` and `bitnet-b1.58` — in one reading-order forward pass.

Follows llama.cpp src/models/bitnet.cpp and the fork's src/llama.cpp build_bitnet / build_bitnet_158:
  x = token_embd[ids]
  per layer: a = attn(rope_neox(s_q·wq·rmsnorm(x)), rope_neox(s_k·wk·…), s_v·wv·…)
             h = x + s_o · wo · rmsnorm_sub(a)                 (attn_sub_norm, n_embd wide)
             f = act(s_g · ffn_gate · rmsnorm(h)) * (s_u · ffn_up · rmsnorm(h))
             x = h + s_d · ffn_down · rmsnorm_sub(f)           (ffn_sub_norm, n_ff wide)
  logits = token_embd · rmsnorm(x)                             (tied; output.weight is not used)
act: SiLU for `bitnet` (LLM_FFN_SILU, LLM_FFN_PAR), ReLU² for `bitnet-25` and `bitnet-b1.58`
(build_bitnet_158: LLM_FFN_RELU_SQR — ggml_relu then ggml_sqr). The s_* are the optional
one-element "blk.N.<t>.scale" tensors (`bitnet` only: the matmul result times them); the other
two architectures keep the scale inside the weights. All three use NEOX RoPE and RMS norms.

A model holding I2_S tensors is a bitnet.cpp model, and faithful mode then computes as the fork
does (engine/kernels/bitnet_kernels.c): the I2_S matmul with its per-row int8 activations, the
lm_head's F16 × F32 tinyBLAS (F16-rounded activations for one row), and its attention routes
(unrounded probabilities for several query rows, KV length padded to 32). Other files (F32, the
TQ1_0/TQ2_0 quantizations llama.cpp makes) follow llama.cpp's arithmetic as the other models do.
Shapes: x (n, n_embd); q (n, n_head, head_dim); k, v (n, n_head_kv, head_dim).
"""

from __future__ import annotations

import numpy as np

from engine.attention import attention_mask, cached_attention
from engine.gguf_model import GGUFFile, ModelConfig
from engine.kv_cache import KVCache
from engine.ops import rms_norm, rope, rope_cache, silu
from engine.quants import I2_S
from engine.weights import FloatWeights, NativeWeights, make_weights


MATMULS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class BitnetModel:
    def __init__(self, g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1):
        self.g, self.cfg = g, cfg
        self.w: FloatWeights = make_weights(g, mode, threads)
        self.relu_sqr = cfg.arch != "bitnet"
        # bitnet.cpp's arithmetic in faithful mode: decided by the file (it holds I2_S tensors)
        self.fork = mode == "faithful" and any(t.type == I2_S for t in g.tensors.values())
        self._i2s: dict[str, np.ndarray] = {}
        if not self.fork:  # llama.cpp's bitnet graph multiplies every matmul by its `.scale` (FloatWeights.use_scales)
            self.w.use_scales([n for il in range(cfg.n_layer) for k, n in self._names(il).items() if k in MATMULS])

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
                if not (self.fork and self.g.tensor(n).type == I2_S):
                    self.w[n]
        self.w["output_norm.weight"]
        if not self.fork:
            self.w["token_embd.weight"]

    def _mm(self, x: np.ndarray, name: str, xq=None) -> np.ndarray:
        """x · Wᵀ (times the weight's .scale when it has one). In the fork's faithful mode an I2_S
        weight multiplies the int8 activations xq (quantized once per input, shared by q/k/v and
        gate/up)."""
        if self.fork and self.g.tensor(name).type == I2_S and name not in self.w._cache:  # (a weight replaced in the
            # float cache — the harness's perturbation hook — goes through the float path below)
            from engine.kernels import bitnet as kb

            t = self.g.tensor(name)
            y = kb.i2s_matmul(self.g.raw(name), t.ne[1], t.ne[0], xq if xq is not None else kb.i2s_quantize_acts(x), self.w.threads)
        else:
            return self.w.matmul(x, (name,))  # · its `.scale` (use_scales)
        s = self._scale(name)
        return y if s == 1 else y * s

    def _decoder_spec(self):
        """(dims, layers, per_layer) of the C decode path (kernels.LayerDecoder; faithful mode, llama.cpp's
        `bitnet` graph): the llama layer with the attention output's and the FFN activation's sub-norms."""
        c = self.cfg
        dims = dict(n_embd=c.n_embd, n_head=c.n_head, n_head_kv=c.n_head_kv, head_dim=c.head_dim, head_dim_v=c.head_dim_v,
                    n_ff=c.n_ff, rope_dim=c.rope_dim, neox=int(c.rope_neox), gelu=0, post_norms=0, qk_norm=0, rms_eps=c.rms_eps,
                    attn_scale=1.0, kq_scale=c.attn_scale, softcap=0.0)  # fmt: skip
        names = [self._names(il) for il in range(c.n_layer)]
        layers = [dict(attn_norm=w["attn_norm"], ffn_norm=w["ffn_norm"], attn_sub_norm=w["attn_sub_norm"], ffn_sub_norm=w["ffn_sub_norm"],
                       q=w["attn_q"], k=w["attn_k"], v=w["attn_v"], o=w["attn_output"], gate=w["ffn_gate"], up=w["ffn_up"],
                       down=w["ffn_down"]) for w in names]  # fmt: skip
        return dims, layers, [(c.rope_base, 0)] * c.n_layer

    def _acts(self, x: np.ndarray):
        """x quantized once as the fork's I2_S matmuls quantize it (None outside the fork's mode)."""
        if not self.fork:
            return None
        from engine.kernels import bitnet as kb

        return kb.i2s_quantize_acts(x)

    def _attention(self, cache: KVCache, il: int, q, k, v, mask) -> np.ndarray:
        c = self.cfg
        if self.fork and cache.layout == "ggml":
            from engine.kernels import bitnet as kb

            ks, vs = cache.store(il, k, v)
            n_cells = cache.n_past + q.shape[0]
            return kb.attention_f16(q, ks, vs, n_cells, mask, c.attn_scale, threads=self.w.threads)
        return cached_attention(cache, il, q, k, v, mask, scale=c.attn_scale, threads=self.w.threads)

    def _ffn_act(self, g: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self.relu_sqr:  # ggml_relu, ggml_sqr, then ggml_mul by up: each rounded to float
            r = np.maximum(g, np.float32(0.0))
            return (r * r) * u
        if isinstance(self.w, NativeWeights):  # ggml's vectorised SiLU (its exp), as the native kernels compute it
            return self.w.swiglu(np.concatenate([g, u], axis=1), self.cfg.n_ff)
        return silu(g) * u

    def forward(self, ids: np.ndarray, cache: KVCache, tap=None, all_logits: bool = True, prefix_end: int = 0) -> np.ndarray:
        c = self.cfg
        n = len(ids)
        cache.check_room(n)
        x = self.w.embedding_rows("token_embd.weight", ids)  # (n, n_embd)
        # one decode step of llama.cpp's `bitnet` graph: every layer in C (the loop below, op for op)
        dec = None if self.fork or self.relu_sqr else self.w.decoder(cache, n, tap, prefix_end, self._decoder_spec)
        if dec is not None:
            x = dec(x[0], cache)[None]
        else:
            pos = np.arange(cache.n_past, cache.n_past + n)
            cos, sin = rope_cache(pos, c.rope_dim, c.rope_base)
            mask = attention_mask(pos, cache.n_past + n, prefix_end=prefix_end)
        for il in range(c.n_layer if dec is None else 0):
            w = self._names(il)
            h = rms_norm(x, self.w[w["attn_norm"]], c.rms_eps)
            if tap:
                tap(il, "attn_norm", h)
            hq = self._acts(h)
            q = self._mm(h, w["attn_q"], hq).reshape(n, c.n_head, c.head_dim)
            k = self._mm(h, w["attn_k"], hq).reshape(n, c.n_head_kv, c.head_dim)
            v = self._mm(h, w["attn_v"], hq).reshape(n, c.n_head_kv, c.head_dim_v)
            q = rope(q, cos, sin, neox=c.rope_neox)
            k = rope(k, cos, sin, neox=c.rope_neox)
            if tap:
                tap(il, "Qcur", q), tap(il, "Kcur", k), tap(il, "Vcur", v)
            a = self._attention(cache, il, q, k, v, mask).reshape(n, -1)
            if tap:
                tap(il, "kqv_out", a)
            a = rms_norm(a, self.w[w["attn_sub_norm"]], c.rms_eps)
            o = self._mm(a, w["attn_output"])
            if il == c.n_layer - 1 and not all_logits:  # only the rows whose logits are wanted go on (inp_out_ids)
                o, x = o[-1:], x[-1:]
            x = x + o
            if tap:
                tap(il, "ffn_inp", x)
            h = rms_norm(x, self.w[w["ffn_norm"]], c.rms_eps)
            hq = self._acts(h)
            u = self._mm(h, w["ffn_up"], hq)
            f = self._ffn_act(self._mm(h, w["ffn_gate"], hq), u)
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
        if self.fork and self.g.tensor("token_embd.weight").type.name == "F16":
            from engine.kernels import bitnet as kb

            return kb.matmul_f16(np.ascontiguousarray(self.g.raw("token_embd.weight")), x, self.w.threads)
        return self.w.matmul(x, ("token_embd.weight",))
