"""Tokenizer throughput: ours ÷ llama.cpp's, measured in the same process on the same inputs (a
benchmark, not a test; the machine's load moves both sides alike).

    python benchmarks/bench_tokenizer.py [--models smollm2,gemma3-270m] [--families llama-spm,gpt-2,...]
                                         [--lines 10000] [--words 100000] [--json]

Rows: the 10,000-line test corpus (first pass, cold word cache), each 100,000-character single word
of tests/corpus.py long_words (no pre-tokenizer split: the merge loop alone), and 1 MB of mixed
text (mixed_text). `ratio` = our bytes/s ÷ llama.cpp's bytes/s; the adversarial rows must stay at
or above FLOOR (0.3×) — exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

FLOOR = 0.3


def _timed(fn, *args) -> float:
    """Seconds for fn(*args), run on a 1 GiB stack (llama.cpp's std::regex pre-tokenizers recurse
    per character)."""
    out: list = []

    def go():
        t = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t)

    old = threading.stack_size(1 << 30)
    try:
        th = threading.Thread(target=go)
        th.start()
    finally:
        threading.stack_size(old)
    th.join()
    return out[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--families", default="", help="llama.cpp vocab families (ggml-vocab-NAME.gguf), comma-separated")
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--words", type=int, default=100_000, help="characters per long word")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from corpus import corpus, long_words, mixed_text

    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import llama_data_dir, resolve_model
    from engine.gguf_model import open_gguf
    from engine.tokenizer import Tokenizer

    lines = corpus(args.lines)
    inputs = [(f"{k} ({args.words:,} chars)", w, True) for k, w in long_words(args.words).items()]
    inputs.append(("mixed (1 MB)", mixed_text(), True))
    targets = [(m, resolve_model(m)) for m in args.models.split(",") if m]
    targets += [(f, llama_data_dir() / "vocab" / f"ggml-vocab-{f}.gguf") for f in args.families.split(",") if f]
    rows, low = [], []
    for name, path in targets:
        t = time.perf_counter()
        tok = Tokenizer.from_gguf(open_gguf(path))
        t_load = time.perf_counter() - t
        with LlamaCppBackend(path, vocab_only=True) as ref:
            n_bytes = sum(len(x.encode()) for x in lines)
            t_ours = _timed(lambda: [tok.encode(x, True, False) for x in lines])
            t_ref = _timed(lambda: [ref.tokenize(x, True, False) for x in lines])
            rows.append({"target": name, "input": f"corpus ({len(lines)} lines)", "bytes": n_bytes, "ours_s": t_ours, "llamacpp_s": t_ref,
                         "ratio": t_ref / t_ours, "adversarial": False, "load_s": t_load})  # fmt: skip
            tok.encode("x" * 100)  # builds the native merge tables once (a load cost, like llama.cpp's vocab load)
            for label, text, adversarial in inputs:
                tok.clear_cache()  # every input starts with a cold word cache
                t_ours = _timed(tok.encode, text, True, False)
                t_ref = _timed(ref.tokenize, text, True, False)
                rows.append({"target": name, "input": label, "bytes": len(text.encode()), "ours_s": t_ours, "llamacpp_s": t_ref,
                             "ratio": t_ref / t_ours, "adversarial": adversarial, "load_s": t_load})  # fmt: skip
                if adversarial and t_ref / t_ours < FLOOR:
                    low.append(rows[-1])
    if args.json:
        print(json.dumps({"floor": FLOOR, "rows": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['target']:14s} {r['input']:24s} ours {r['bytes'] / r['ours_s'] / 1e6:7.2f} MB/s  llama.cpp "
                  f"{r['bytes'] / r['llamacpp_s'] / 1e6:7.2f} MB/s  ours ÷ llama.cpp {r['ratio']:5.2f}×"
                  + ("  BELOW FLOOR" if r in low else ""))  # fmt: skip
        print(f"adversarial rows: min ratio {min(r['ratio'] for r in rows if r['adversarial']):.2f}× (floor {FLOOR}×); shared machine")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
