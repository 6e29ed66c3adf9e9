"""Float-mode weights: each GGUF tensor dequantized once to float32, kept by its GGUF name."""

from __future__ import annotations

import numpy as np

from gguf import GGMLQuantizationType as Q

from engine.gguf_model import GGUFError, GGUFFile


class FloatWeights:
    """act_quant: round each matmul's activations as ggml's CPU backend quantizes them for the
    weight's type (engine/act_quant.py) — llama.cpp's quantized arithmetic up to summation order."""

    threads = 1  # native kernels' threads (NativeWeights); numpy's BLAS has its own setting

    def __init__(self, g: GGUFFile, act_quant: bool = False, bf16: bool = False):
        self.g = g
        self.act_quant = act_quant
        self.bf16 = bf16  # mode bf16: both operands of every matmul rounded to bfloat16 (gemma.cpp)
        self._cache: dict[str, np.ndarray] = {}
        self._groups: dict[tuple[str, ...], list] = {}
        self.scales: dict[str, np.ndarray] = {}  # weight name → its `.scale` values (use_scales)

    def use_scales(self, weights) -> None:
        """Multiply the matmul outputs of these weights by their GGUF `.scale` tensors where the file has
        them (NVFP4 checkpoints' per-tensor scale_2). llama-model.cpp's generic pass loads `<w>.scale`
        for every weight type — shape {1}, {n_expert} beside a 3-D expert tensor; `output.scale` only
        beside an NVFP4 output.weight — and llama-graph.cpp build_lora_mm / build_lora_mm_id apply it
        right after the matmul, y = (W·x) · s (expert e's rows · s[e]), before any bias (build_ffn after
        its FFN bias, which none of the models here has). Which weights: those the architecture's graph
        passes a scale for (the model's call); the others' scales and every `.input_scale` llama.cpp
        loads unused. A scale of another size is a GGUFError (llama.cpp refuses the file)."""
        for w in weights:
            name = w.removesuffix(".weight") + ".scale"
            if name not in self.g.tensors or (w == "output.weight" and self.g.tensor(w).type != Q.NVFP4):
                continue
            t = self.g.tensor(w)
            s = np.asarray(self.g.dequantize(name), dtype=np.float32).reshape(-1)
            if s.size != (t.ne[2] if len(t.ne) == 3 else 1):
                raise GGUFError(f"{self.g.path.name}: {name} has {s.size} values, llama.cpp loads {t.ne[2] if len(t.ne) == 3 else 1}")
            self.scales[w] = s

    def _scaled(self, y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """y's column block of each scaled weight · its scale, in place (one float32 product each: ggml_mul)."""
        col = 0
        for n in names:
            rows = self.g.tensor(n).ne[1]
            if n in self.scales:
                y[..., col : col + rows] *= self.scales[n][0]
            col += rows
        return y

    def __contains__(self, name: str) -> bool:
        return name in self.g.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        w = self._cache.get(name)
        if w is None:
            w = self._cache[name] = self.g.dequantize(name)
        return w

    def concat(self, names: list[str]) -> np.ndarray:
        """Rows of several weights stacked (one matmul instead of several), cached by the joined name."""
        key = "+".join(names)
        w = self._cache.get(key)
        if w is None:
            w = self._cache[key] = np.concatenate([self[n] for n in names], axis=0)
            for n in names:
                self._cache.pop(n, None)
        return w

    def prepare(self, names: tuple[str, ...]) -> list:
        """Dequantize the weights of one matmul: [(stacked weight, activation rounding or None)],
        one entry per run of weights sharing an activation rounding."""
        groups = self._groups.get(names)
        if groups is None:
            from engine.act_quant import roundtrip_for

            runs: list[tuple[list[str], object]] = []
            for n in names:
                rt = roundtrip_for(self.g.tensor(n).type) if self.act_quant else None
                if runs and runs[-1][1] is rt:
                    runs[-1][0].append(n)
                else:
                    runs.append(([n], rt))
            groups = []
            for ns, rt in runs:
                w = self[ns[0]] if len(ns) == 1 else self.concat(ns)
                if self.bf16:
                    # a rounded copy; the float originals leave the cache, so embedding rows are read
                    # from the GGUF unrounded, as gemma.cpp's embedding lookup reads them
                    from engine.ops import round_bf16

                    w, rt = round_bf16(w), round_bf16
                    for key in (*ns, "+".join(ns)):
                        self._cache.pop(key, None)
                mins = None
                if self.act_quant and all(self.g.tensor(n).type in (Q.Q4_1, Q.Q5_1) for n in ns):
                    from engine.act_quant import q8_1_mins

                    mins = np.concatenate([q8_1_mins(self.g.raw(n), self.g.tensor(n).type) for n in ns])
                groups.append((w, rt, mins))
            self._groups[names] = groups
        return groups

    def matmul(self, x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """x (n, n_in) @ [W_names stacked]ᵀ → (n, Σ n_out), each weight's block · its scale (use_scales)."""
        y = self._matmul(x, names)
        return self._scaled(y, names) if self.scales else y

    def matmul_expert(self, x: np.ndarray, name: str, e: int) -> np.ndarray:
        """x (n, n_in) @ W[e]ᵀ for expert e of a 3-D expert tensor (n_expert, n_out, n_in) → (n, n_out),
        · the tensor's scale for expert e (use_scales; build_lora_mm_id)."""
        y = self._matmul_expert(x, name, e)
        if name in self.scales:
            y *= self.scales[name][e]
        return y

    def _matmul(self, x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        outs = [self._group_matmul(x, *group) for group in self.prepare(names)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)

    @staticmethod
    def _group_matmul(x: np.ndarray, w: np.ndarray, rt, mins) -> np.ndarray:
        """One prepared group: x rounded as its activations would be (rt), times Wᵀ."""
        y = (rt(x) if rt is not None else x) @ w.T
        if mins is not None:  # Q8_1's fp16 block sums (engine/act_quant.py q8_1_sum_error)
            from engine.act_quant import q8_1_sum_error

            y += q8_1_sum_error(x) @ mins.T
        return y

    def decoder(self, cache, n: int, tap, prefix_end: int, spec):
        """The native decode path for this step (NativeWeights); numpy modes have none."""
        return None

    def softmax_rows(self, x: np.ndarray) -> np.ndarray:
        """ggml_soft_max over each row of x (n, m) (MoE gating probabilities)."""
        from engine.ops import softmax

        return softmax(x.astype(np.float32), axis=-1).astype(np.float32)

    def _matmul_expert(self, x: np.ndarray, name: str, e: int) -> np.ndarray:
        """matmul_expert unscaled; x rounded as ggml quantizes it for the weight's type in q8 mode."""
        w = self[name][e]
        if self.act_quant:
            from engine.act_quant import roundtrip_for

            rt = roundtrip_for(self.g.tensor(name).type)
            x = rt(x) if rt is not None else x
        return x @ w.T

    @staticmethod
    def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """engine.ops.rms_norm (a batch's per-row norm; NativeWeights runs ggml-cpu's loop in C)."""
        from engine.ops import rms_norm

        return rms_norm(x, w, eps)

    @staticmethod
    def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool, scale: float = 1.0) -> np.ndarray:
        """engine.ops.rope, then · scale (a separate float multiply) unless scale is 1."""
        from engine.ops import rope

        y = rope(x, cos, sin, neox)
        return y if scale == 1.0 else y * np.float32(scale)

    @staticmethod
    def swiglu(gu: np.ndarray, n_ff: int) -> np.ndarray:
        """gu (n, 2·n_ff) = [gate | up] from one stacked matmul → silu(gate) · up (n, n_ff)."""
        from engine.ops import silu

        return silu(gu[:, :n_ff]) * gu[:, n_ff:]

    @staticmethod
    def geglu(gu: np.ndarray, n_ff: int) -> np.ndarray:
        """[gate | up] → gelu_tanh(gate) · up (n, n_ff)."""
        from engine.ops import gelu_tanh

        return gelu_tanh(gu[:, :n_ff]) * gu[:, n_ff:]

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of an embedding table without dequantizing the whole table (get_rows)."""
        from engine.quants import dequantize

        if name in self._cache:
            return self._cache[name][ids]
        t = self.g.tensor(name)
        return dequantize(self.g.raw(name)[ids], t.type).reshape(len(ids), t.ne[0])


def _native(wtype) -> bool:
    """Faithful mode multiplies this weight type with llama.cpp's own arithmetic (engine/kernels)."""
    from engine import kernels
    from engine.quants import I2_S

    # I2_S: bitnet.cpp's arithmetic, in engine/models/bitnet.py through engine/kernels/bitnet.py
    return kernels.available() and (wtype in (Q.F16, Q.F32, Q.BF16) or wtype == I2_S or kernels.supported(wtype))


def _repacked(wtype, rows: int, lanes: int) -> bool:
    """Whether llama.cpp's CPU backend repacks a matrix of this type and row count on x86
    (repack.cpp ggml_repack_get_optimal_repack_type): Q4_0, Q4_K, IQ4_NL, MXFP4 with AVX2 and
    Q2_K with AVX-512, each when rows % 8 == 0."""
    if rows % 8 or not lanes:
        return False
    avx2 = {Q.Q4_0, Q.Q4_K, Q.IQ4_NL} | ({Q.MXFP4} if hasattr(Q, "MXFP4") else set())
    return wtype in avx2 or (wtype == Q.Q2_K and lanes == 16)


def faithful_fallbacks(g: GGUFFile) -> list[str]:
    """The ggml types of g's matrices that faithful mode has no native kernel for: those go through
    the q8 float path (llama.cpp's activation rounding, numpy's summation order), so faithful mode
    is bit-exact with llama.cpp only when this is empty. An embedding table that is only looked up
    (the model has its own output.weight) is dequantized row by row, exactly, whatever its type."""
    lookup_only = {"token_embd.weight"} if "output.weight" in g.tensors else set()
    return sorted({t.type.name for n, t in g.tensors.items() if len(t.ne) >= 2 and n not in lookup_only and not _native(t.type)})


class NativeWeights(FloatWeights):
    """Faithful mode: matmuls of quantized, F16, BF16 and F32 weights run in the native kernels straight from
    the GGUF's data (engine/kernels); weights of other types go through the q8 float path."""

    def __init__(self, g: GGUFFile, threads: int = 1):
        super().__init__(g, act_quant=True)
        from engine import kernels

        if not kernels.available():
            raise ValueError(f"--mode faithful: {kernels.load_error()}")
        self.kernels, self.threads = kernels, threads

    def prepare(self, names: tuple[str, ...]) -> list:
        groups = self._groups.get(("native",) + names)
        if groups is None:
            groups = []
            for n in names:
                t = self.g.tensor(n)
                if t.type == Q.F16 and len(t.ne) == 2:
                    groups.append(("f16", np.ascontiguousarray(self.g.raw(n)), t.type))
                elif t.type in (Q.F32, Q.BF16) and len(t.ne) == 2:
                    groups.append(("dense", np.ascontiguousarray(self.g.raw(n)), t.type))
                elif self.kernels.supported(t.type):
                    groups.append(("native", self.kernels.WeightRef(self.g.raw(n), t.type), t.type))
                else:
                    groups += [("float", g) for g in super().prepare((n,))]
            self._groups[("native",) + names] = groups
        return groups

    def decoder(self, cache, n: int, tap, prefix_end: int, spec):
        """kernels.LayerDecoder for a one-token step without taps over an F16 cache in ggml layout, or
        None. Built on first use from spec() → (dims, layers, per_layer) (see layer_decoder)."""
        if n != 1 or tap is not None or prefix_end or getattr(cache, "layout", "") != "ggml":
            return None
        if not hasattr(self, "_decoder"):
            described = spec()  # None: the model has a block the C step does not do (qwen3moe's routed FFN)
            self._decoder = None if described is None else self.layer_decoder(*described)
        if self._decoder is not None:
            self._decoder.set_threads(self.threads)
        return self._decoder

    def layer_decoder(self, dims: dict, layers: list[dict], per_layer: list[tuple[float, int]]):
        """kernels.LayerDecoder over these layers, or None when a matmul weight has no native kernel.
        layers: per layer {vector name (norms, biases, rope factors): GGUF name or None, matmul name:
        GGUF name, or (GGUF name, first row, end row) for a slice of a fused matrix} (LayerDecoder.MATS)."""
        mats = (*self.kernels.LayerDecoder.MATS, "gate_inp")  # gate_inp: qwen3moe's router
        whole = lambda m: m[0] if isinstance(m, tuple) else m  # noqa: E731
        if not all(_native(self.g.tensor(whole(L[m])).type) for L in layers for m in mats if L.get(m)):
            return None

        def matrix(m):
            if isinstance(m, tuple):
                name, lo, hi = m
                return self.g.raw(name)[lo:hi], self.g.tensor(name).type
            return self.g.raw(m), self.g.tensor(m).type

        specs = [{k: (self[v] if v else None) if k not in mats else (matrix(v) if v else None) for k, v in L.items()} for L in layers]
        for L, spec in zip(layers, specs):  # use_scales: q_scale … down_scale ({1}, or {n_expert} for experts)
            scaled = [m for m in self.kernels.LayerDecoder.MATS if L.get(m) and whole(L[m]) in self.scales]
            spec.update({m + "_scale": self.scales[whole(L[m])] for m in scaled})
        return self.kernels.LayerDecoder(dims, specs, per_layer, self.threads)

    def softmax_rows(self, x: np.ndarray) -> np.ndarray:
        """ggml_soft_max_f32's arithmetic (ggml_vec_soft_max_f32, then · (1/sum)), from the native kernels."""
        return self.kernels.softmax_rows(x)

    def _matmul_expert(self, x: np.ndarray, name: str, e: int) -> np.ndarray:
        """Expert e's matrix times the rows routed to it, by llama.cpp's mul_mat_id route: the repacked
        types (_repacked) run repack.cpp forward_mul_mat_id's gemv one activation row at a time — Q4_K and
        Q2_K here row by row too (their gemm chains differ from gemv's), Q4_0, IQ4_NL and MXFP4 all rows
        at once through the repacked kernels (their gemm and gemv keep the same chain) —, F16, BF16
        and F32 their vec_dot row by row (ggml-cpu.c mul_mat_id has no tinyBLAS); the other
        block types take all the rows at once, so 8 or more reach the tiled kernel as in
        ggml_compute_forward_mul_mat_id_tiled (tiled/tiled.cpp), fewer their vec_dot."""
        key = ("expert", name, e)
        group = self._groups.get(key)
        if group is None:
            t = self.g.tensor(name)
            raw = np.ascontiguousarray(self.g.raw(name)[e])  # (n_out, row bytes) of expert e
            if t.type == Q.F16:
                group = ("f16", raw, t.type)
            elif t.type in (Q.F32, Q.BF16):
                group = ("dense", raw, t.type)
            elif self.kernels.supported(t.type):
                group = ("native", self.kernels.WeightRef(raw, t.type), t.type)
            else:
                return super()._matmul_expert(x, name, e)
            self._groups[key] = group
        kind, ref, wtype = group
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        y = np.empty((x2.shape[0], ref.shape[0]), dtype=np.float32)
        per_row = kind in ("f16", "dense") or (wtype in (Q.Q4_K, Q.Q2_K) and _repacked(wtype, ref.shape[0], self.kernels.ggml_lanes()))
        step = 1 if per_row else x2.shape[0]
        for i in range(0, x2.shape[0], step):
            self._native_matmul(kind, ref, wtype, x2[i : i + step], {}, y[i : i + step], 0)
        return y

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """ggml-cpu's rms_norm loop (squares summed in double in element order), threaded over rows."""
        return self.kernels.rms_norm(x, w, eps, threads=self.threads)

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool, scale: float = 1.0) -> np.ndarray:
        """rotate_pairs as the loaded ggml-cpu compiled it (kernels.rope_vec), in C with fmaf; then · scale."""
        return self.kernels.rope(x, cos, sin, neox, scale, threads=self.threads)

    def swiglu(self, gu: np.ndarray, n_ff: int) -> np.ndarray:
        """ggml_vec_swiglu_f32's arithmetic (its vectorised exp), from the native kernels."""
        return self.kernels.swiglu(gu, n_ff, threads=self.threads)

    def geglu(self, gu: np.ndarray, n_ff: int) -> np.ndarray:
        """ggml_vec_geglu_f32's arithmetic (its fp16 GELU table), from the native kernels."""
        return self.kernels.geglu(gu, n_ff, threads=self.threads)

    def _matmul(self, x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        groups = self.prepare(names)
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        xq: dict[int, np.ndarray] = {}  # activations quantized once per activation type (q, k, v share)
        if all(g[0] != "float" for g in groups):  # the common case: one output, filled in place
            y = np.empty((x2.shape[0], sum(g[1].shape[0] for g in groups)), dtype=np.float32)
            col = 0
            for kind, raw, qtype in groups:
                self._native_matmul(kind, raw, qtype, x2, xq, y, col)
                col += raw.shape[0]
            return y.reshape(*x.shape[:-1], -1)
        outs = []
        for kind, *rest in groups:
            if kind == "float":
                outs.append(self._group_matmul(x, *rest[0]))
            else:
                y = np.empty((x2.shape[0], rest[0].shape[0]), dtype=np.float32)
                outs.append(self._native_matmul(kind, *rest, x2, xq, y, 0).reshape(*x.shape[:-1], -1))
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)

    def _native_matmul(self, kind: str, raw, qtype, x2: np.ndarray, xq: dict, y: np.ndarray, col: int) -> np.ndarray:
        """One weight's product into y[:, col : col + rows]: F16 weights, or quantized blocks with the
        activations quantized once per activation type (kept in xq)."""
        if kind == "f16":
            return self.kernels.matmul_f16(raw, x2, self.threads, out=y, col=col)
        if kind == "dense":
            return self.kernels.matmul_float(raw, qtype, x2, self.threads, out=y, col=col)
        if raw.atype not in xq:
            xq[raw.atype] = self.kernels.quantize_acts(qtype, x2, self.threads)
        return self.kernels.matmul_prequantized(raw, qtype, xq[raw.atype], x2.shape[0], x2.shape[1], self.threads, out=y, col=col)


def make_weights(g: GGUFFile, mode: str, threads: int = 1) -> FloatWeights:
    """float: dequantized f32; q8: + ggml's activation rounding; faithful: the native kernels;
    bf16: gemma.cpp's bfloat16 operand rounding."""
    if mode == "faithful":
        return NativeWeights(g, threads)
    return FloatWeights(g, act_quant=mode == "q8", bf16=mode == "bf16")
