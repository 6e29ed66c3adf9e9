"""Our engine as a Backend (in-process)."""

from __future__ import annotations

import functools
import time

import numpy as np

from crossval.backends.base import (LAYER_STAGES, Backend, BackendError, BackendSettings, Capabilities, ComparePass,
                                    GenerateResult, Unsupported, greedy_compare_pass)  # fmt: skip


def _match_ggml_build() -> None:
    """Faithful mode's float steps where the loaded llama.cpp's ggml-cpu depends on how it was compiled
    (crossval/libggml.py): rope's pairs per fused vector (rope_vector_pairs), whether the IQ4_NL and
    MXFP4 vec_dots fuse their last block (vec_dot_tail_fused) and the vector width of
    ggml_vec_dot_f32's tail (f32_tail_width); without llama-cpp-python the engine's defaults."""
    from engine import kernels

    if not kernels.available():
        return
    try:
        from crossval import libggml

        kernels.set_rope_vec(libggml.rope_vector_pairs(False), libggml.rope_vector_pairs(True))
        for name, (wtype, _) in libggml._TAIL_TYPES.items():
            kernels.set_tail_fma(wtype, libggml.vec_dot_tail_fused(name))
        kernels.set_f32_tail(libggml.f32_tail_width())
    except (ImportError, OSError):
        pass


class EngineBackend(Backend):
    name = "engine"
    sampling_chain = None  # engine.sampling.Sampler runs the chain SamplingParams.chain names

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings) -> "EngineBackend":
        return cls(model_path, n_ctx=s.n_ctx, kv_type=s.kv_type, mode=s.mode, perturb=s.perturb, prefix_end=s.prefix_end,
                   threads=s.threads, gguf=s.gguf, tokenizer=s.tokenizer, gemmacpp_threads=s.gemmacpp_threads)  # fmt: skip

    def __init__(self, model_path, n_ctx: int = 2048, kv_type: str = "f16", mode: str = "float",
                 perturb: tuple[int, float] | None = None, prefix_end: int = 0, threads: int = 1, gguf=None,
                 tokenizer=None, gemmacpp_threads: int = 2):  # fmt: skip
        """gguf, tokenizer: model_path already opened (engine.gguf_model.open_gguf) and its
        engine.tokenizer.Tokenizer, reused instead of built again. gemmacpp_threads: the reference
        gemma.cpp's --num_threads (mode bf16 follows its FlashAttention's tiling)."""
        from engine.generate import Engine

        if mode == "faithful":
            _match_ggml_build()
        t = time.perf_counter()
        simd, workers = None, gemmacpp_threads
        if mode == "bf16":  # gemma.cpp's arithmetic for the Highway target the kit was built for here, at its thread count
            from crossval.gemmacpp_kit import built_simd_target, gemmacpp_workers

            simd, workers = built_simd_target(), gemmacpp_workers(gemmacpp_threads)
        try:
            # resident=False: a comparison decodes tens of tokens per prompt, too few to pay for the
            # huge-page copy of the weights (Engine; `crossval bench` measures with it)
            self.engine = Engine(model_path, n_ctx=n_ctx, kv_type=kv_type, mode=mode, threads=threads, simd_target=simd, gguf=gguf,
                                 gemmacpp_workers=workers, resident=False).load()  # fmt: skip
        except ValueError as e:  # e.g. mode bf16 for a target this CPU cannot run
            raise BackendError(str(e)) from None
        self.load_s = time.perf_counter() - t
        self.mode, self.kv_type = mode, self.engine.cache.dtype  # mode bf16 keeps gemma.cpp's f32 cache
        self.prefix_end = prefix_end  # prefix-LM attention over the prompt (gemma.cpp's prefix_end); 0 = causal
        self.perturb = perturb
        if perturb is not None:
            # test hook: scale one layer's FFN output — through the post-FFN norm weight where the
            # model has one (gemma2/3 normalise the FFN output, so scaling ffn_down would vanish),
            # else through the down projection
            layer, scale = perturb
            tensors = self.engine.gguf.tensors
            name = f"blk.{layer}.post_ffw_norm.weight"
            if name not in tensors:
                name = f"blk.{layer}.ffn_down.weight"
            if name not in tensors:
                raise BackendError(f"perturbation: model has no layer {layer}")
            w = self.engine.model.w
            w._groups.pop((name,), None)
            w._cache[name] = w[name] * np.float32(scale)
            if hasattr(w, "layer_decoder"):  # faithful mode: that matrix through the float path, no fused layer step
                from engine.weights import FloatWeights

                w._groups[("native", name)] = [("float", g) for g in FloatWeights.prepare(w, (name,))]
                w._decoder = None
        from engine.tokenizer import Tokenizer, TokenizerError

        try:
            self.tokenizer = tokenizer if tokenizer is not None else Tokenizer.from_gguf(self.engine.gguf)
        except TokenizerError:
            self.tokenizer = None  # e.g. an unsupported pre-tokenizer: ids then come from the reference
        self.capabilities = Capabilities(tokenize=self.tokenizer is not None, sampling=True, capture=True)

    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        if self.tokenizer is None:
            raise Unsupported(self.name, "tokenize (no tokenizer for this model's vocabulary)")
        return self.tokenizer.encode(text, add_special=add_bos, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise Unsupported(self.name, "detokenize (no tokenizer for this model's vocabulary)")
        return self.tokenizer.detokenize(ids)

    _last_pass = None  # (ids, tokens) of the compare_pass the KV cache still holds

    def logits(self, ids: list[int]) -> np.ndarray:
        self._last_pass = None
        return self.engine.logits(ids)

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        self._last_pass = None
        t = time.perf_counter()
        g = self.engine.generate(ids, steps, keep_logits=True)
        return GenerateResult(g.tokens, np.stack(g.logits) if g.logits else None, time.perf_counter() - t)

    def compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> ComparePass:
        from engine.sampling import Sampler

        choose = Sampler(sampling) if sampling is not None else None
        if self.prefix_end > len(ids):
            raise BackendError(f"prefix_end {self.prefix_end} exceeds the prompt's {len(ids)} tokens")
        if self.mode == "bf16" and hasattr(self.engine.model, "target") and choose is None and not self.prefix_end:
            return self._gemmacpp_pass(ids, steps, forced)
        cp = greedy_compare_pass(_EngineSteps(self.engine, self.prefix_end), ids, steps, forced, choose)
        if choose is not None:
            cp.extra = {"sampling_trace": choose.trace}
        self._last_pass = (tuple(ids), tuple(cp.tokens))  # what the cache holds (forced_suffix reuses it)
        return cp

    def _gemmacpp_pass(self, ids: list[int], steps: int, forced: list[int] | None) -> ComparePass:
        """compare_pass as gemma.cpp's backend makes it (two runs of its driver): teacher-forced logits
        of the prompt and the forced tokens in one run, the greedy continuation in a fresh one. Mode
        bf16 reproduces each run (the score buffer carried between gemma.cpp's decode steps differs
        between them past a sliding window), so it runs them the same way."""
        t = time.perf_counter()
        rows = self.engine.logits(list(ids) + list(forced or []))
        t_tf = time.perf_counter() - t
        t = time.perf_counter()
        g = self.engine.generate(ids, steps, keep_logits=True)
        t_gen = time.perf_counter() - t
        n = len(ids)
        self._last_pass = (tuple(ids), tuple(g.tokens))  # the cache holds the free run
        return ComparePass(rows[:n], g.tokens, np.stack(g.logits) if g.logits else None, rows[n:] if forced else None,
                           {"prefill_s": t_tf, "generate_s": t_gen})  # fmt: skip

    def capture_rows(self, ids: list[int], position: int, stages: tuple[str, ...] = LAYER_STAGES) -> dict[str, np.ndarray]:
        """The engine's per-layer stage outputs at `position` for a teacher-forced pass over ids,
        named as llama.cpp names them ("kqv_out-3", "ffn_inp-3", "l_out-3")."""
        rows: dict[str, np.ndarray] = {}

        def tap(il, stage, x):
            if il >= 0 and stage in stages and x.ndim >= 2 and x.shape[0] == len(ids):
                rows[f"{stage}-{il}"] = np.array(x.reshape(len(ids), -1)[position], dtype=np.float32)

        self._last_pass = None
        old, self.engine.tap = self.engine.tap, tap
        try:
            self.engine.logits(ids)
        finally:
            self.engine.tap = old
        return rows

    def forced_suffix(self, ids: list[int], continuation: list[int], free: ComparePass | None = None) -> np.ndarray | None:
        """Logits after each of continuation[:-1]. Right after this backend's own
        compare_pass over ids (`free`, the cache still holding it), rows before the first
        divergence are the free run's own step logits (same context, same computation) and the
        rest are decoded after rolling the cache back to the divergence; otherwise one
        teacher-forced pass."""
        from crossval.compare import first_divergence

        ref_tokens, n_prompt = continuation, len(ids)
        steps = len(ref_tokens)
        if steps <= 1:
            return None
        if free is None or self._last_pass != (tuple(ids), tuple(free.tokens)):
            return super().forced_suffix(ids, continuation, free)
        div = first_divergence(ref_tokens, free.tokens)
        upto = steps - 1 if div is None else min(div, steps - 1)
        if upto == steps - 1:
            return free.step_logits[1:steps]  # the same continuation: the free run's own rows, not a copy
        rows = list(free.step_logits[1 : upto + 1])
        self.engine.truncate(n_prompt + upto)
        self._last_pass = None
        rows += [self.engine.decode_step(t) for t in ref_tokens[upto : steps - 1]]
        return np.stack(rows)

    def provenance(self) -> dict:
        import crossval
        from engine.weights import faithful_fallbacks

        return self.describe(**{
            "name": "engine",
            "version": f"crossval-engine {crossval.__version__}",
            "library_sha256": None,
            "commit": _git_commit(),
            "system_info": _gemmacpp_info(self.engine.model),
            "mode": self.mode,
            "kv_type": self.kv_type,
            "threads": self.engine.model.w.threads if self.mode == "faithful" else None,
            "fallback_types": faithful_fallbacks(self.engine.gguf) if self.mode == "faithful" else None,
        })  # fmt: skip

    def close(self) -> None:
        self.engine = None


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The checkout's commit (asked once per process: every receipt's provenance names it)."""
    import subprocess
    from pathlib import Path

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


class _EngineSteps:
    """The step interface greedy_compare_pass drives, over an engine.generate.Engine."""

    def __init__(self, e, prefix_end: int = 0):
        self.e, self.prefix_end = e, prefix_end

    def reset(self):
        self.e.reset()

    def prefill_all(self, ids):
        return self.e.prefill(ids, all_logits=True, prefix_end=self.prefix_end)

    def decode_step(self, tok):
        return self.e.decode_step(tok)

    def truncate(self, n):
        self.e.truncate(n)


def _gemmacpp_info(model) -> str | None:
    """Mode bf16's system_info: the Highway target it reproduces (and, for FlashAttention, the
    gemma.cpp worker count its tiles assume)."""
    t = getattr(model, "target", None)
    if t is None:
        return None
    flash = f", FlashAttention for {model.workers} workers" if model.flash else ""
    return f"gemma.cpp arithmetic for Highway target {t.name}{flash}"
