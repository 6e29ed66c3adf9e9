"""gemma.cpp's C API (gemma/bindings/c_api.h) through cffi — the gemmacpp backend's text path (docs/backends.md).

The library aborts the process on fatal errors (HWY_ABORT) and printf-logs to stdout, so it is
only ever loaded in a child: `python -m crossval.backends.gemmacpp_capi ARGS` writes one JSON
object to the stdout it started with, after pointing file descriptor 1 at stderr so gemma.cpp's
messages cannot corrupt it. `capi_generate()` is the parent's side.

The child runs `repeat` create → generate → destroy cycles and reports, per cycle, the RSS after
destroy (the lifecycle check: a leak shows as RSS growing with the cycle count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CDEF = """
typedef struct GemmaContext GemmaContext;
typedef bool (*GemmaTokenCallback)(const char* text, void* user_data);
typedef void (*GemmaLogCallback)(const char* message, void* user_data);
GemmaContext* GemmaCreate(const char* tokenizer_path, const char* weights_path, int max_generated_tokens);
void GemmaDestroy(GemmaContext* ctx);
int GemmaGenerate(GemmaContext* ctx, const char* prompt, char* output, int max_output_chars,
                  GemmaTokenCallback callback, void* user_data);
int GemmaCountTokens(GemmaContext* ctx, const char* text);
void GemmaSetLogCallback(GemmaContext* ctx, GemmaLogCallback callback, void* user_data);
void GemmaSetTopK(GemmaContext* ctx, int value);
void GemmaSetTemperature(GemmaContext* ctx, float value);
void GemmaSetMultiturn(GemmaContext* ctx, int value);
"""


class CapiError(RuntimeError):
    pass


def capi_generate(lib: str, weights: str, prompt: str, max_tokens: int, repeat: int = 1, timeout: float = 600.0) -> dict:
    """Text from gemma.cpp's C API (greedy, all cores — the C API has no thread setting).
    Returns {text, pieces, count_tokens, cycles: [{seconds, rss_mb}], nproc}. A GemmaCreate
    failure or an abort inside gemma.cpp raises CapiError with one line saying so."""
    if not os.path.isfile(weights):
        raise CapiError(f"gemma.cpp C API: weights file not found: {weights}")
    cmd = [sys.executable, "-m", "crossval.backends.gemmacpp_capi", "--lib", lib, "--weights", weights,
           "--prompt", prompt, "--max-tokens", str(max_tokens), "--repeat", str(repeat)]  # fmt: skip
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CapiError(f"gemma.cpp C API: no answer within {timeout:g} s") from None
    out = r.stdout.strip().splitlines()
    msg = json.loads(out[-1]) if out and out[-1].startswith("{") else None
    if r.returncode != 0 or msg is None or "error" in msg:
        if msg and "error" in msg:
            raise CapiError(f"gemma.cpp C API: {msg['error']}")
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:] or ["no message"]
        how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
        raise CapiError(f"gemma.cpp C API process failed ({how}): {tail[0].strip()[:200]}")
    return msg


def _child(args) -> int:
    import cffi
    import psutil

    result = os.fdopen(os.dup(1), "w")  # our JSON goes here; gemma.cpp's printf goes to stderr
    os.dup2(2, 1)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    try:
        lib = ffi.dlopen(args.lib)
    except OSError as e:
        print(json.dumps({"error": f"cannot load {args.lib}: {e}"}), file=result)
        return 1

    @ffi.callback("void(const char*, void*)")
    def on_log(msg, _):
        pass

    proc = psutil.Process()
    cycles, text, pieces, count = [], "", [], None
    buf = ffi.new("char[]", 1 << 16)
    for _ in range(args.repeat):
        t = time.perf_counter()
        got: list[str] = []

        @ffi.callback("bool(const char*, void*)")
        def on_token(piece, _):
            got.append(ffi.string(piece).decode("utf-8", "replace"))
            return True

        ctx = lib.GemmaCreate(b"", args.weights.encode(), args.max_tokens)
        if ctx == ffi.NULL:
            print(json.dumps({"error": f"GemmaCreate returned NULL for {args.weights}"}), file=result)
            return 1
        lib.GemmaSetLogCallback(ctx, on_log, ffi.NULL)
        lib.GemmaSetTopK(ctx, 1)
        lib.GemmaSetMultiturn(ctx, 0)
        count = lib.GemmaCountTokens(ctx, args.prompt.encode())
        n = lib.GemmaGenerate(ctx, args.prompt.encode(), buf, len(buf), on_token, ffi.NULL)
        lib.GemmaDestroy(ctx)
        if n < 0:
            print(json.dumps({"error": "GemmaGenerate returned -1"}), file=result)
            return 1
        text, pieces = ffi.string(buf).decode("utf-8", "replace"), got
        cycles.append({"seconds": round(time.perf_counter() - t, 4), "rss_mb": round(proc.memory_info().rss / 2**20, 2)})
    print(json.dumps({"text": text, "pieces": pieces, "count_tokens": count, "cycles": cycles, "nproc": os.cpu_count()}), file=result)
    result.flush()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    return _child(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
