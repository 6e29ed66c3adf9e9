"""`crossval sweep`: invariance sweeps, recorded in one sweep receipt (schemas/sweep.schema.json).

Only one setting changes at a time; everything else is the `crossval run` default.
- threads 1 / 2: llama.cpp's n_threads and the engine's BLAS threads (threadpoolctl). Each setting's
  teacher-forced metrics vs the reference, and each backend against itself at the first setting
  (max |Δlogit|: 0 means the backend is invariant to the setting).
- prefill batch: llama.cpp's n_batch = n_ubatch, and the engine prefilling in chunks of that size.
- context length: one teacher-forced pass over a long sequence (the long default prompt repeated),
  its per-position metrics bucketed by position — causal attention makes position p's logits
  those of a prompt of length p + 1 — up to and beyond the model's attention window (gemma3's
  sliding window, else the training context).
A setting fails when its teacher-forced metrics fail the thresholds `crossval run` would use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossval import compare, provenance, receipts, thresholds


@dataclass
class SweepConfig:
    model: str
    threads: list[int] = field(default_factory=lambda: [1, 2])
    batches: list[int] = field(default_factory=lambda: [512, 64, 7, 1])
    context: int = 1024  # longest sequence of the context sweep
    prompt_tokens: int = 96  # prompt length of the thread and batch sweeps
    mode: str = "auto"  # crossval/modes.py: faithful where the native kernels are built
    kv_type: str = "f16"
    timeout: float = 300.0
    out_dir: Path = Path("receipts/sweeps")
    kinds: tuple[str, ...] = ("threads", "batch", "context")


def _metrics(ref: np.ndarray, eng: np.ndarray) -> tuple[dict, list[dict]]:
    """(the summary metrics a sweep row records, the per-position rows the counted gates read)."""
    tf = compare.teacher_forced(ref, eng)
    s = tf.summary()
    return {k: s[k] for k in ("cosine_similarity", "cosine_mean", "kld_mean", "top1_agreement", "max_abs_diff")}, tf.rows()


def _engine_logits(eng, ids: list[int], chunk: int | None = None) -> np.ndarray:
    e = eng.engine
    e.reset()
    if not chunk or chunk >= len(ids):
        return e.prefill(ids, all_logits=True)
    return np.concatenate([e.prefill(ids[i : i + chunk], all_logits=True) for i in range(0, len(ids), chunk)])


def _window(cfg_model) -> tuple[int, str]:
    if getattr(cfg_model, "sliding_window", 0):
        return int(cfg_model.sliding_window), "sliding_window"
    return int(cfg_model.n_ctx_train), "n_ctx_train"


def run_sweep(cfg: SweepConfig, progress=None) -> tuple[Path, dict]:
    from threadpoolctl import threadpool_limits

    from crossval.backends.engine import EngineBackend
    from crossval.backends.isolated import IsolatedLlamaCpp
    from crossval.models import resolve_model
    from crossval.modes import resolve_mode
    from crossval.prompts import load_set
    from engine.gguf_model import open_gguf, read_config
    from engine.weights import faithful_fallbacks

    progress = progress or (lambda event, info: None)
    t0 = time.perf_counter()
    cfg.mode, _ = resolve_mode(cfg.mode, "engine", "llamacpp")
    path = resolve_model(cfg.model)
    receipts.ensure_dir(cfg.out_dir)
    g = open_gguf(path)
    mcfg = read_config(g)
    native = cfg.mode != "faithful" or not faithful_fallbacks(g)
    thr = thresholds.select(provenance.float_weights(g), cfg.mode, ("engine", "llamacpp"), cfg.kv_type, native)
    n_ctx = max(cfg.context, cfg.prompt_tokens) + 8
    with EngineBackend(path, n_ctx=n_ctx, kv_type=cfg.kv_type, mode=cfg.mode) as eng:
        long_text = next(p.text for p in load_set("default") if p.id == "long")

        def reference(**kw):
            r = IsolatedLlamaCpp(path, n_ctx=n_ctx, kv_type=cfg.kv_type, timeout=cfg.timeout, **kw)
            r.wait_loaded()
            return r

        def tokens(ref, n: int) -> list[int]:
            ids = ref.tokenize(long_text, add_bos=True)
            body = ref.tokenize(" " + long_text, add_bos=False)
            while len(ids) < n:
                ids += body
            return ids[:n]

        failures: list[str] = []
        rec_sections: dict = {}
        ref_prov = None

        def judge(section: str, label: str, m: dict, rows: list[dict]) -> bool:
            fails = thresholds.evaluate(thr, m, {}, rows)
            failures.extend(f"{section} {label}: {f}" for f in fails)
            return not fails

        def setting(kind: str, value: int, base: list, ref_kw: dict, chunk: int | None, blas_threads: int) -> dict:
            """One setting: both backends' teacher-forced logits, metrics, and each against itself at
            the sweep's first setting (base, filled on the first call)."""
            nonlocal ref_prov
            progress("setting", {"kind": kind, "value": value})
            with reference(**ref_kw) as ref:
                ref_prov = ref_prov or ref.provenance()
                ids = tokens(ref, cfg.prompt_tokens)
                r_log = ref.logits(ids)
            eng.engine.set_threads(blas_threads)  # faithful mode: the native kernels' threads
            with threadpool_limits(limits=1 if cfg.mode == "faithful" else blas_threads, user_api="blas"):
                e_log = _engine_logits(eng, ids, chunk=chunk)
            eng.engine.set_threads(1)
            if not base:
                base += [r_log, e_log]
            m, rows = _metrics(r_log, e_log)
            return {kind: value, **m, "passed": judge(kind, str(value), m, rows),
                    "reference_self_max_abs": float(np.abs(r_log - base[0]).max()),
                    "engine_self_max_abs": float(np.abs(e_log - base[1]).max())}  # fmt: skip

        if "threads" in cfg.kinds:
            base: list = []
            rec_sections["threads"] = [setting("threads", t, base, {"threads": t}, None, t) for t in cfg.threads]
        if "batch" in cfg.kinds:
            base = []
            rec_sections["batch"] = [setting("batch", b, base, {"threads": 1, "n_batch": b}, b, 1) for b in cfg.batches]
        if "context" in cfg.kinds:
            progress("setting", {"kind": "context", "value": cfg.context})
            window, source = _window(mcfg)
            with reference(threads=1) as ref:
                ref_prov = ref_prov or ref.provenance()
                ids = tokens(ref, cfg.context)
                r_log = ref.logits(ids)
            with threadpool_limits(limits=1, user_api="blas"):
                e_log = _engine_logits(eng, ids)
            tf = compare.teacher_forced(r_log, e_log)
            tf_rows = tf.rows()
            edges = sorted({0, *[e for e in (64, 128, 256, 512, 768, 1024, 1536, 2048, 4096) if e < len(ids)], window, len(ids)})
            edges = [e for e in edges if e <= len(ids)]
            buckets = []
            for lo, hi in zip(edges, edges[1:]):
                sl = slice(lo, hi)
                m = {"cosine_similarity": float(tf.cosine[sl].min()), "cosine_mean": float(tf.cosine[sl].mean()),
                     "kld_mean": float(tf.kld[sl].mean()), "top1_agreement": float(tf.top1[sl].mean()),
                     "max_abs_diff": float(tf.max_abs[sl].max())}  # fmt: skip
                buckets.append({"start": lo, "end": hi, "beyond_window": lo >= window, **m, "passed": judge("context", f"{lo}-{hi}", m, tf_rows[sl])})
            rec_sections["context"] = {"length": len(ids), "window": window, "window_source": source, "buckets": buckets}
        rec = {
            **receipts.header("sweep"),
            "model": {**provenance.model_facts(g, path, cfg.model), "float_weights": provenance.float_weights(g)},
            "backends": {"engine": eng.provenance(), "reference": ref_prov},
            "config": {"mode": cfg.mode, "kv_type": cfg.kv_type, "prompt_tokens": cfg.prompt_tokens, "kinds": list(cfg.kinds)},
            "threads": rec_sections.get("threads"),
            "batch": rec_sections.get("batch"),
            "context": rec_sections.get("context"),
            "thresholds": thr.to_dict(),
            "verdict": {"passed": not failures, "failures": failures},
            "environment": provenance.environment_section(1),
            "timing": {"total_s": time.perf_counter() - t0},
        }
        out = Path(cfg.out_dir) / f"{rec['run_id']}__sweep.json"
        receipts.write(out, rec)
        return out, rec
