"""How long the external protocol takes to move a reply of logits, per transport.

    python benchmarks/external_transport.py [--rows 650] [--vocab 49152 262144]

A stand-in server (this file with --serve) answers `logits` with a prepared random array through
engine.serve's reply writer, so the figure is transport only: the server's write, the pipe, the
client's read and decode (crossval.backends.external.ExternalBackend). Compare it with the wall
time of the run it belongs to (e.g. `crossval bench`'s prefill figures for the model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def serve(rows: int, vocab: int) -> int:
    from engine.serve import Replies

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=650)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 262144])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve(*a.serve)
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
