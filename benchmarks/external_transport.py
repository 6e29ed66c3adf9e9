"""How long the external protocol takes to move a reply of logits, per transport.

    python benchmarks/external_transport.py [--rows 650] [--vocab 49152 262144] [--transport frames base64]
    python benchmarks/external_transport.py --model smollm2 [--mode float faithful]

Transport only: crossval.bench.transport — a stand-in server (`python -m crossval.serve --stand-in`,
crossval.serve's reply writer, no computing) answers `logits` with a prepared array and
ExternalBackend reads it; the fastest of --repeat requests, with both processes' CPU time (the wall
time on a busy shared machine is mostly waiting for a core) and the load average.

With --model, the real thing: the engine in process and through `python -m crossval.serve` (frames)
over the long default prompt, the same logits request timed on both sides; prints whether the
logits are bit-identical, the time the frames took to arrive after their reply line (the transport's
part of the request: wall time, its share of the served request's, and the client's CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def real(model: str, modes: list[str]) -> int:
    from pathlib import Path

    import crossval
    from crossval.backends.engine import EngineBackend
    from crossval.backends.external import ExternalBackend
    from crossval.models import resolve_model
    from crossval.process import limit_blas

    limit_blas(1)  # one thread on both sides, as crossval run sets it (the served engine's load does the same)
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
            t_frames, c_frames, n = (x.reader_stats[k] for k in ("last_frames_s", "last_frames_cpu_s", "last_frames_bytes"))
        same = got.shape == want.shape and got.tobytes() == want.tobytes()
        print(f"{Path(path).name} {mode:8} {len(ids)} × {want.shape[1]}: in process {t_in:6.2f} s, through crossval.serve {t_ext:6.2f} s "
              f"(frames {n / 1e6:.0f} MB in {t_frames:.3f} s = {t_frames / t_ext:.1%}, client CPU {c_frames:.3f} s), bit-identical {same}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=650)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 262144])
    ap.add_argument("--transport", nargs="+", default=["frames", "base64"], choices=["frames", "base64"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", help="a model name or GGUF path: engine in process vs crossval.serve on the long prompt")
    ap.add_argument("--mode", nargs="+", default=["float", "faithful"])
    a = ap.parse_args()
    if a.model:
        return real(a.model, a.mode)
    from crossval.bench import transport

    for vocab in a.vocab:
        for kind in a.transport:
            x = transport(vocab, a.rows, a.repeat, kind)
            cpu = "" if x["server_cpu_s"] is None else f"  CPU client {x['client_cpu_s']:5.2f} s, server {x['server_cpu_s']:5.2f} s"
            print(f"{a.rows} x {vocab:>6} float32 ({x['bytes'] / 1e6:4.0f} MB)  {kind:6}  {x['seconds']:7.3f} s  {x['mb_s']:6.0f} MB/s{cpu}"
                  f"  (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
