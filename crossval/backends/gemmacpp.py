"""The real gemma.cpp as a reference, built from the gemma.cpp kit (../shared/gemmacpp) on first use.

Two paths into it:
- ids and logits through the kit's JSON driver `gemma_greedy` (one process per request; it loads
  the f32 `.sbs` in about a second): greedy generation with every step's full logits, and
  teacher-forced logits of every position via `--ids BOS --force rest` (its README);
- text through gemma.cpp's C API (crossval/backends/gemmacpp_capi.py, cffi, in a child).

gemma.cpp's results depend on its thread count, so the driver's `--num_threads` is pinned (2 by
default) and recorded; its tokenizer is the SentencePiece model the kit rebuilt from the GGUF.

Two gemma.cpp behaviours are reported, not copied (docs/backends.md): with prefix_end == prompt length it
runs the last prompt token again at position P (the driver's `pos` says so), and its temperature
has no effect on top-k sampling.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from crossval.backends.base import (Backend, BackendCrashed, BackendError, BackendSettings, BackendTimeout,
                                    BackendUnavailable, Capabilities, ComparePass, GenerateResult, Unsupported)  # fmt: skip

EOS_IDS = (1, 106)  # <eos>, <end_of_turn>: the driver stops after emitting either


class GemmaCpp(Backend):
    name = "gemmacpp"
    capabilities = Capabilities()  # tokenize, logits, generate; its sampler is its own (crossval envelope)

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings) -> "GemmaCpp":
        return cls(model_path, threads=s.gemmacpp_threads, timeout=s.timeout, patched=s.gemmacpp_patched, progress=s.progress,
                   prefix_end=s.prefix_end)  # fmt: skip

    def __init__(self, model_path, threads: int = 2, timeout: float = 600.0, patched: bool = True, progress=None,
                 prefix_end: int = 0):  # fmt: skip
        from crossval.gemmacpp_kit import KitError, ensure_built
        from engine.gguf_model import GGUFError, open_gguf, read_config

        t = time.perf_counter()
        try:
            g = open_gguf(model_path)
            cfg = read_config(g)
        except GGUFError as e:
            raise BackendUnavailable(f"gemma.cpp: {e}") from None
        if g.arch != "gemma3" or cfg.n_layer != 18 or cfg.n_embd != 640:
            raise BackendUnavailable(f"gemma.cpp's kit converts only Gemma-3-270M GGUFs (this model: {g.arch}, "
                                     f"{cfg.n_layer} layers, width {cfg.n_embd})")  # fmt: skip
        try:
            self.kit = ensure_built(Path(model_path), patched=patched, progress=progress)
        except KitError as e:
            raise BackendUnavailable(str(e)) from None
        try:
            import sentencepiece
        except ImportError:
            raise BackendUnavailable("the gemmacpp backend needs sentencepiece: pip install -e '.[gemmacpp]'") from None
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.kit.tokenizer))
        self.bos = int(g.get("tokenizer.ggml.bos_token_id", 2))
        self.threads, self.timeout, self.prefix_end = threads, timeout, prefix_end
        self.n_vocab = int(cfg.n_vocab)
        self.stale_scores_from = _stale_scores_from(self.kit.provenance().get("simd_target"), cfg)
        self._stderr: list[str] = []
        self.load_s = time.perf_counter() - t

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # --- the driver ----------------------------------------------------------------------------
    def run_driver(self, ids: list[int], steps: int = 0, force: list[int] | None = None, prefix_end: int = 0,
                   top_k: int = 1, temperature: float = 1.0, seed: int = 0, stage: str = "driver") -> tuple[dict, np.ndarray]:  # fmt: skip
        """One gemma_greedy run → (its JSON, every step's full logits (steps, n_vocab))."""
        with tempfile.TemporaryDirectory(prefix="crossval-gemmacpp-") as tmp:
            lf = Path(tmp) / "logits.f32"
            cmd = [str(self.kit.driver), "--weights", str(self.kit.sbs), "--ids", ",".join(map(str, ids)),
                   "--num_threads", str(self.threads), "--logits_file", str(lf), "--topn", "1",
                   "--prefix_end", str(prefix_end)]  # fmt: skip
            cmd += ["--force", ",".join(map(str, force))] if force else ["--max_generated_tokens", str(steps)]
            if top_k > 1:
                cmd += ["--top_k", str(top_k), "--temperature", repr(float(temperature)), "--seed", str(seed)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=self.timeout)
            except subprocess.TimeoutExpired as e:
                self._stderr = _tail(e.stderr)
                raise BackendTimeout(stage, self.timeout, self._stderr) from None
            self._stderr = _tail(r.stderr)
            if r.returncode != 0:
                how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
                raise BackendCrashed(stage, f"gemma_greedy {how}: {(self._stderr or ['no message'])[-1][:200]}", r.returncode, self._stderr)
            try:
                out = json.loads(r.stdout)
                n = len(out["tokens"])
                rows = np.fromfile(lf, dtype="<f4")
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise BackendCrashed(stage, f"gemma_greedy gave unreadable output ({e})", r.returncode, self._stderr) from None
            if rows.size != n * self.n_vocab:
                raise BackendCrashed(stage, f"gemma_greedy wrote {rows.size} logits for {n} steps", r.returncode, self._stderr)
            return out, rows.reshape(n, self.n_vocab)

    # --- Backend -------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        """gemma.cpp's tokenizer: [BOS] + SentencePiece.Encode(text) (gemma_greedy --prompt)."""
        return ([self.bos] if add_bos else []) + list(self.sp.encode(text))

    def detokenize(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) not in EOS_IDS])

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position: `--ids ids[0] --force ids[1:],X` (row k is the
        prediction after ids[:k+1]; the last forced id X is never looked at)."""
        _, rows = self.run_driver([ids[0]], force=list(ids[1:]) + [0], stage="logits")
        return rows

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        t = time.perf_counter()
        out, rows = self.run_driver(ids, steps, prefix_end=self.prefix_end, stage="generate")
        return GenerateResult([int(x) for x in out["tokens"]], rows, time.perf_counter() - t,
                              {"pos": out.get("pos"), "workers": out.get("workers")})  # fmt: skip

    def compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> ComparePass:
        """Free-running greedy with its step logits, then every prompt position teacher-forced.
        With prefix_end > 0 gemma.cpp reports logits only from the last prompt position on
        (prompt positions inside the prefix see later tokens), so prompt_logits has one row."""
        if sampling is not None:
            raise Unsupported(self.name, "llama.cpp's sampler chain (it samples from its own AES-CTR stream: compare sampled "
                                         "runs with `crossval envelope`)")
        t = time.perf_counter()
        out, step_logits = self.run_driver(ids, steps, prefix_end=self.prefix_end, stage="generate")
        t_gen = time.perf_counter() - t
        tokens = [int(x) for x in out["tokens"]]
        extra = {"pos": out.get("pos"), "stopped_at_eos": len(tokens) < steps, "workers": out.get("workers")}
        pos0 = (out.get("pos") or [len(ids)])[0]
        if pos0 != len(ids):
            extra["position_shift"] = pos0 - len(ids)
        if self.stale_scores_from is not None and len(ids) + steps > self.stale_scores_from:
            extra["stale_scores_from"] = self.stale_scores_from
            extra["simd_target"] = self.kit.provenance().get("simd_target")
        t = time.perf_counter()
        if self.prefix_end > 0:
            prompt = step_logits[:1]
            forced_logits = None
            if forced:
                _, rows = self.run_driver(ids, force=list(forced) + [0], prefix_end=self.prefix_end, stage="forced")
                forced_logits = rows[1:]
        else:
            _, rows = self.run_driver([ids[0]], force=list(ids[1:]) + list(forced or []) + [0], stage="logits")
            prompt, forced_logits = rows[: len(ids)], (rows[len(ids) :] if forced else None)
        t_tf = time.perf_counter() - t
        return ComparePass(prompt, tokens, step_logits if len(tokens) else None, forced_logits,
                           {"prefill_s": t_tf, "generate_s": t_gen}, extra)  # fmt: skip

    def forced_suffix(self, ids: list[int], continuation: list[int], free: ComparePass | None = None) -> np.ndarray | None:
        """Logits after each continuation token but the last — one driver run forcing the
        continuation after the prompt, which honours prefix_end (its first row, the last prompt
        position's, is dropped)."""
        if len(continuation) <= 1:
            return None
        _, rows = self.run_driver(ids, force=list(continuation), prefix_end=self.prefix_end, stage="forced")
        return rows[1:]

    def capi_text(self, prompt: str, max_tokens: int, repeat: int = 1) -> dict:
        """Greedy text through gemma.cpp's C API (all cores; see gemmacpp_capi)."""
        from crossval.backends.gemmacpp_capi import CapiError, capi_generate

        try:
            return capi_generate(str(self.kit.capi), str(self.kit.sbs), prompt, max_tokens, repeat, timeout=self.timeout)
        except CapiError as e:
            raise BackendError(str(e)) from None

    def provenance(self) -> dict:
        p = self.kit.provenance()
        return self.describe(**{
            "name": "gemmacpp",
            "version": f"gemma.cpp {(p['gemma_cpp_commit'] or '')[:12]} ({p['variant']})",
            "library_sha256": None,
            "commit": p["gemma_cpp_commit"],
            "system_info": f"{p['simd_target']} march={p['march_native']} {p['compiler']}",
            "mode": "f32 weights, bf16 matmul operands",
            "kv_type": None,
            "threads": self.threads,
            "nproc": os.cpu_count(),
            "build": p,
        })  # fmt: skip


def _stale_scores_from(simd_target: str | None, cfg) -> int | None:
    """The first position whose logits gemma.cpp computes from stale attention scores, or None.

    On Highway targets with a native bf16 dot (AVX3_ZEN4, AVX3_SPR, ...) gemma.cpp takes its
    non-flash attention path, whose softmax runs over the whole score row of the activations buffer;
    for a sliding-window layer the entries below the window's start still hold scores left there by
    earlier layers and tokens, so every position from the window size on is normalised against them.
    The engine's --mode bf16 reproduces this (engine/models/gemmacpp.py); float mode cannot. Other
    targets (AVX3_DL, AVX3, AVX2) run FlashAttention, which keeps no score row: None."""
    from engine.kernels.gemmacpp import TARGETS

    native_dot = TARGETS.get(simd_target or "", (False, 0))[0]
    if not native_dot or not cfg.sliding_window or not any(cfg.swa_layers):
        return None
    return int(cfg.sliding_window)


def _tail(text, n: int = 20) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [ln for ln in (text or "").splitlines() if ln.strip()][-n:]
