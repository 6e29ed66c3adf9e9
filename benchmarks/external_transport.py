"""How long the external protocol takes to move a reply of logits, per transport.

    python benchmarks/external_transport.py [--rows 650] [--vocab 49152 262144]
    python benchmarks/external_transport.py --model smollm2 [--mode float faithful]


A stand-in server (this file with --serve) answers `logits` with a prepared random array through
crossval.serve's reply writer, so the figure is transport only: the server's write, the pipe, the
client's read and decode (crossval.backends.external.ExternalBackend). Compare it with the wall
time of the run it belongs to (e.g. `crossval bench`'s prefill figures for the model).

With --model, the real thing: the engine in process and through `python -m crossval.serve` (frames)
over the long default prompt, the same logits request timed on both sides; prints whether the
logits are bit-identical and the overhead (external − in process) as a share of the external time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def serve(rows: int, vocab: int) -> int:
    from crossval.serve import Replies

    r = Replies(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    arr = np.random.default_rng(0).standard_normal((rows, vocab), dtype=np.float32)
    r.send(True, {"type": "hello", "name": "transport-bench", "transports": ["base64", "frames"], "capabilities": {"logits": True}})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "close":
            break
        if req["op"] == "load":
            r.transport = req["args"].get("transport", "base64")
            r.send(True, {"n_vocab": vocab})
        elif req["op"] == "logits":
            r.send(True, arr[: len(req["args"]["ids"])])
    return 0


def real(model: str, modes: list[str]) -> int:
    from pathlib import Path

    import crossval
    from crossval.backends.engine import EngineBackend
    from crossval.backends.external import ExternalBackend
    from crossval.models import resolve_model

    path = resolve_model(model)
    rows = [json.loads(x) for x in (Path(crossval.__file__).parent / "prompts" / "default.jsonl").read_text().splitlines() if x.strip()]
    text = next(r["text"] for r in rows if r["id"] == "long")
    for mode in modes:
        with EngineBackend(path, kv_type="f16", mode=mode) as e:
            ids = e.tokenize(text)
            t = time.perf_counter()
            want = e.logits(ids)
            t_in = time.perf_counter() - t
        with ExternalBackend(f"{sys.executable} -m crossval.serve", path, kv_type="f16", mode=mode, timeout=1200) as x:
            t = time.perf_counter()
            got = x.logits(ids)
            t_ext = time.perf_counter() - t
        same = got.shape == want.shape and got.tobytes() == want.tobytes()
        print(f"{Path(path).name} {mode:8} {len(ids)} × {want.shape[1]}: in process {t_in:6.2f} s, through crossval.serve {t_ext:6.2f} s, "
              f"overhead {(t_ext - t_in) / t_ext:+.1%}, bit-identical {same}", flush=True)  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=650)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 262144])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", help="a model name or GGUF path: engine in process vs crossval.serve on the long prompt")
    ap.add_argument("--mode", nargs="+", default=["float", "faithful"])
    ap.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve(*a.serve)
    if a.model:
        return real(a.model, a.mode)
    from crossval.backends.external import ExternalBackend

    for vocab in a.vocab:
        for transport in ("frames", "base64"):
            cmd = f"{sys.executable} {os.path.abspath(__file__)} --serve {a.rows} {vocab}"
            with ExternalBackend(cmd, "unused", transport=transport, timeout=600) as b:
                best = float("inf")
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    out = b.logits(list(range(a.rows)))
                    best = min(best, time.perf_counter() - t)
                assert out.shape == (a.rows, vocab)
            mb = a.rows * vocab * 4 / 1e6
            print(f"{a.rows} x {vocab:>6} float32 ({mb:6.0f} MB)  {transport:6}  {best:7.3f} s  {mb / best:7.0f} MB/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
