"""Engine vs llama.cpp speed on the real models, same threads, same run (a benchmark, not a test).

    python benchmarks/bench_engine.py [--threads 2] [--models smollm2,gemma3-270m] [--json]

Prints, per model: open (mmap + config) time, float-mode load (full dequantization) time, and
decode / prefill tokens per second for both engines with their ratio (engine ÷ llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # numpy's BLAS reads its thread count at import: set it before importing anything numeric
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model
    from engine.generate import Engine
    from engine.gguf_model import open_gguf, read_config

    out = []
    for name in args.models.split(","):
        path = resolve_model(name)
        t = time.perf_counter()
        read_config(open_gguf(path))
        t_open = time.perf_counter() - t
        t = time.perf_counter()
        eng = Engine(path, n_ctx=512, kv_type="f16").load()
        t_load = time.perf_counter() - t
        ref = LlamaCppBackend(path, n_ctx=512, threads=args.threads, kv_type="f16")
        vocab = eng.config.n_vocab
        prompt = [int(x) for x in np.random.default_rng(0).integers(100, min(vocab, 20000), args.prefill_tokens)]
        row = {"model": name, "threads": args.threads, "open_s": t_open, "load_s": t_load}
        for label, backend in (("engine", eng), ("llamacpp", ref)):
            backend.reset()
            backend.prefill(prompt[:8])  # warm-up
            backend.reset()
            t = time.perf_counter()
            backend.prefill(prompt)
            row[f"{label}_prefill_tok_s"] = len(prompt) / (time.perf_counter() - t)
            backend.reset()
            backend.prefill(prompt[:16])
            t = time.perf_counter()
            tok = prompt[16]
            for _ in range(args.decode_steps):
                tok = int(np.argmax(backend.decode_step(tok)))
            row[f"{label}_decode_tok_s"] = args.decode_steps / (time.perf_counter() - t)
        ref.close()
        row["decode_ratio"] = row["engine_decode_tok_s"] / row["llamacpp_decode_tok_s"]
        row["prefill_ratio"] = row["engine_prefill_tok_s"] / row["llamacpp_prefill_tok_s"]
        out.append(row)
        if not args.json:
            print(
                f"{name:12s} threads={args.threads} open {t_open * 1e3:.0f} ms, load {t_load:.2f} s | "
                f"decode engine {row['engine_decode_tok_s']:.1f} vs llama.cpp {row['llamacpp_decode_tok_s']:.1f} tok/s "
                f"(×{row['decode_ratio']:.2f}) | prefill {row['engine_prefill_tok_s']:.0f} vs "
                f"{row['llamacpp_prefill_tok_s']:.0f} tok/s (×{row['prefill_ratio']:.2f})"
            )
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
