"""Tokenizer throughput: ours vs llama.cpp's on the test corpus (a benchmark, not a test).

    python benchmarks/bench_tokenizer.py [--models smollm2,gemma3-270m] [--lines 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--lines", type=int, default=10_000)
    args = ap.parse_args()
    from corpus import corpus

    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model
    from engine.gguf_model import open_gguf
    from engine.tokenizer import Tokenizer

    lines = corpus(args.lines)
    n_bytes = sum(len(x.encode()) for x in lines)
    for name in args.models.split(","):
        path = resolve_model(name)
        t = time.perf_counter()
        tok = Tokenizer.from_gguf(open_gguf(path))
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        for x in lines:
            tok.encode(x, True, False)
        t_ours = time.perf_counter() - t
        with LlamaCppBackend(path, vocab_only=True) as ref:
            t = time.perf_counter()
            for x in lines:
                ref.tokenize(x, True, False)
            t_ref = time.perf_counter() - t
        print(f"{name:12s} load {t_load:.2f} s | ours {n_bytes / t_ours / 1e6:.2f} MB/s, llama.cpp {n_bytes / t_ref / 1e6:.2f} MB/s "
              f"(×{t_ref / t_ours:.2f}) over {len(lines)} lines, first pass (cold word cache)")  # fmt: skip


if __name__ == "__main__":
    main()
