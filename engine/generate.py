"""The public engine API: Engine(path) → prefill(ids) / decode_step(id) / logits(ids) / generate().

    eng = Engine("model.gguf")              # mmap + metadata; weights dequantized on first use
    last = eng.prefill([1, 2, 3])           # (n_vocab,) logits of the last prompt token
    nxt = eng.decode_step(int(last.argmax()))
    all_pos = eng.logits([1, 2, 3])          # (3, n_vocab), teacher-forced, fresh cache
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine.gguf_model import GGUFError, GGUFFile, ModelConfig, open_gguf, read_config
from engine.kv_cache import KVCache
from engine.models import build_model
from engine.sampling import greedy

Tap = Callable[[int, str, np.ndarray], None]
# float: dequantized f32 weights × f32 activations (the clean reference).
# q8: as float, but each matmul's activations rounded the way ggml's CPU backend quantizes them for
#     the weight's type (Q8_0 / Q8_1 / Q8_K, engine/act_quant.py) — llama.cpp's quantized arithmetic
#     up to summation order.
# faithful: the native kernels (engine/kernels): quantized weights multiplied straight from the
#     GGUF blocks by activations quantized as ggml does, integer dot products, ggml's per-block
#     scale arithmetic; threads split the rows. Types the kernels lack fall back to q8. With an F16
#     cache, attention and every other op follow llama.cpp's CPU code (docs/architecture.md).
# bf16: gemma.cpp's arithmetic (Gemma models): every op in the native kernels in the order and
#     precision gemma.cpp computes it for one Highway target (engine/models/gemmacpp.py), f32 KV
#     cache as gemma.cpp keeps; other architectures: float with both matmul operands rounded to bf16.
MODES = ("float", "q8", "faithful", "bf16")


@dataclass
class Generation:
    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)  # per step, (n_vocab,) each


class Engine:
    def __init__(self, path: str | os.PathLike, n_ctx: int = 2048, kv_type: str = "f32", mode: str = "float", tap: Tap | None = None,
                 threads: int = 1, simd_target: str | None = None, gguf: GGUFFile | None = None,
                 gemmacpp_workers: int = 2, resident: bool = True):  # fmt: skip
        """simd_target: mode bf16 follows gemma.cpp built for this Highway target (e.g. AVX3_SPR;
        None: the one this CPU's features give); gemmacpp_workers: the thread-pool size of that
        gemma.cpp (its FlashAttention tiles by it on targets without a native bf16 dot). gguf:
        `path` already opened (open_gguf), reused. resident: in faithful mode, stream the weights
        from a huge-page copy of the tensor data where affordable (GGUFFile.make_resident) — it pays
        back over many decode steps (≈ 10 % a token on gemma-3-270m); a caller decoding a few
        hundred tokens on a host where huge pages are slow to come by passes False."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.path = str(path)
        self.gguf = gguf if gguf is not None else open_gguf(path)
        if mode == "faithful" and resident:
            self.gguf.make_resident()  # before the model takes views of its tensors
        self.config: ModelConfig = read_config(self.gguf)
        self.model = build_model(self.gguf, self.config, mode=mode, threads=threads, simd_target=simd_target,
                                 gemmacpp_workers=gemmacpp_workers)  # fmt: skip
        self.mode = mode
        self.tap = tap
        c = self.config
        self.n_ctx = n_ctx
        # faithful mode with an F16 cache keeps llama.cpp's cache layout for the native attention kernel
        layout = "ggml" if mode == "faithful" and kv_type == "f16" else "rows"
        if mode == "bf16":  # gemma.cpp keeps K and V in f32 (its KV_t), whatever the llama.cpp side uses
            kv_type = "f32" if hasattr(self.model, "target") else "bf16"
        self.cache = KVCache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim, c.head_dim_v, kv_type, layout)

    def set_threads(self, n: int) -> None:
        """Threads of the native kernels (faithful mode); numpy's BLAS has its own setting."""
        if hasattr(self.model.w, "threads"):
            self.model.w.threads = max(1, int(n))

    def load(self) -> "Engine":
        """Dequantize every weight now (otherwise done lazily on first forward)."""
        self.model.load_all()
        return self

    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def reset(self) -> None:
        self.cache.reset()

    def truncate(self, n_past: int) -> None:
        """Forget every position ≥ n_past (the cache rows stay but are never read again)."""
        if not 0 <= n_past <= self.cache.n_past:
            raise ValueError(f"cannot truncate to {n_past} with {self.cache.n_past} positions cached")
        self.cache.n_past = n_past

    def _ids(self, ids) -> np.ndarray:
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size == 0:
            raise ValueError("empty token list")
        if a.min() < 0 or a.max() >= self.config.n_vocab:
            raise ValueError(f"token id out of range [0, {self.config.n_vocab})")
        return a

    def prefill(self, ids, all_logits: bool = False, prefix_end: int = 0) -> np.ndarray:
        """Append ids to the cache in one batch; the last position's logits (n_vocab,), or every
        position's (n, n_vocab) with all_logits. prefix_end > 0: positions before it attend the
        whole prefix bidirectionally (prefix-LM, gemma.cpp semantics; the prefix must lie in
        this batch)."""
        a = self._ids(ids)
        if prefix_end > self.cache.n_past + len(a):
            raise ValueError(f"prefix_end {prefix_end} lies beyond this batch (positions up to {self.cache.n_past + len(a)})")
        out = self.model.forward(a, self.cache, self.tap, all_logits=all_logits, prefix_end=prefix_end)
        return out if all_logits else out[-1]

    def decode_step(self, token: int) -> np.ndarray:
        """One token at position n_past → its logits (n_vocab,)."""
        return self.model.forward(self._ids([token]), self.cache, self.tap, all_logits=True)[0]

    def logits(self, ids, prefix_end: int = 0) -> np.ndarray:
        """Teacher-forced logits for every position of ids, from an empty cache: (n, n_vocab)."""
        self.reset()
        return self.prefill(ids, all_logits=True, prefix_end=prefix_end)

    def generate(self, ids, steps: int, keep_logits: bool = False, stop: set[int] | None = None, sampling=None,
                 prefix_end: int = 0) -> Generation:  # fmt: skip
        """Continuation of `steps` tokens after a fresh prefill of ids: greedy, or seeded sampling
        with llama.cpp's chain when `sampling` (engine.sampling.SamplingParams) is given.

        With prefix_end (gemma.cpp gemma/gemma.cc): the prompt minus its last token is prefilled
        and the last token goes through decode, except when prefix_end == len(ids): then the
        whole prompt is prefilled in one batch (the prefix must see itself whole)."""
        from engine.sampling import Sampler

        choose = Sampler(sampling) if sampling is not None else greedy
        self.reset()
        ids = list(ids)
        if 0 < prefix_end < len(ids):
            self.prefill(ids[:-1], prefix_end=prefix_end)
            last = self.decode_step(ids[-1])
        else:
            last = self.prefill(ids, prefix_end=prefix_end)
        gen = Generation(tokens=[])
        for i in range(steps):
            if keep_logits:
                gen.logits.append(last)
            t = choose(last)
            gen.tokens.append(t)
            if stop and t in stop:
                break
            if i + 1 < steps:
                last = self.decode_step(t)
        return gen


__all__ = ["Engine", "Generation", "GGUFError"]
