"""Load / generate / free the llama.cpp backend N times in one process on a real model and report
RSS growth (a benchmark for the closing note; tests/test_ffi_lifecycle.py gates a tiny model).

    python benchmarks/ffi_lifecycle.py [--model smollm2] [-n 100]
"""

from __future__ import annotations

import argparse
import gc
import time

import psutil


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("-n", type=int, default=100)
    args = ap.parse_args()
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model

    path = resolve_model(args.model)
    proc = psutil.Process()
    t = time.perf_counter()
    first = None
    for i in range(args.n):
        with LlamaCppBackend(path, n_ctx=256, kv_type="f16") as b:
            b.generate(b.tokenize("The capital of France is", add_bos=True), 8)
        if i == 9:
            gc.collect()
            first = proc.memory_info().rss
    gc.collect()
    last = proc.memory_info().rss
    print(f"{args.model}: {args.n} cycles in {time.perf_counter() - t:.1f} s; RSS after 10: {first / 2**20:.1f} MB, "
          f"after {args.n}: {last / 2**20:.1f} MB, growth {(last - first) / 2**20:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
