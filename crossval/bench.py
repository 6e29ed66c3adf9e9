"""`crossval bench`: engine vs llama.cpp speed in one process, same threads, same run → a perf receipt.

End to end, per thread count: decode tok/s (greedy steps after a short prefill) and prefill tok/s
(one batch) for both engines, and their ratios engine ÷ llama.cpp — the numbers that are compared
over time, because absolute times move with the machine and ratios much less. Plus two engine
micro-benchmarks: perf_matmul_decode (one token through the model's largest projection) and
perf_attention_decode (one query over a KV cache). `--record` appends the receipt to
receipts/perf/ (the trend); `--check` compares the ratios with the latest recorded receipt of the
same model and fails (exit 1) when one fell by more than the tolerance. Each thread count also gets
the memory roofline (crossval/roofline.py): the decode bytes per token of the GGUF, this machine's
streaming read bandwidth measured in the same run, and each engine's decode_roofline fraction;
prefill's achieved int8 GOP/s against the measured peak of the engine's Q8_0 dot-product kernel.
--check guards the engine's decode_roofline like the ratios.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from crossval import provenance, receipts
from crossval.errors import InputError

PERF_DIR = Path("receipts/perf")
DEFAULT_TOLERANCE = 0.25  # a ratio may fall by 25 % before --check calls it a regression


class BenchError(InputError):
    pass


def timed(f, min_s: float = 0.2) -> float:
    """Seconds per call of f, averaged over enough calls to fill min_s."""
    f()
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def micro(eng, threads: int) -> dict:
    """perf_matmul_decode and perf_attention_decode on the engine's own weights and kernels."""
    from threadpoolctl import threadpool_limits

    from engine.attention import attention

    g, c = eng.gguf, eng.config
    # the largest per-layer projection: the FFN's gate+up (as the forward pass runs it, fused); a
    # model without a dense FFN (qwen3moe: routed experts) takes its q/k/v projection instead
    names = tuple(n for n in ("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight") if n in g.tensors) or \
        tuple(n for n in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight") if n in g.tensors)
    w = eng.model.w
    w.prepare(names)
    x = np.random.default_rng(0).standard_normal((1, c.n_embd)).astype(np.float32)
    n_out = sum(g.tensor(n).ne[1] for n in names)
    L = 512
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, c.n_head, c.head_dim)).astype(np.float32)
    k = rng.standard_normal((L, c.n_head_kv, c.head_dim)).astype(np.float32)
    v = rng.standard_normal((L, c.n_head_kv, c.head_dim_v)).astype(np.float32)
    mask = np.zeros((1, L), dtype=np.float32)
    if eng.mode == "faithful":  # the native F16 attention kernel over llama.cpp's cache layout
        from engine import kernels

        k16 = np.ascontiguousarray(k.astype(np.float16))
        v16t = np.ascontiguousarray(v.astype(np.float16).transpose(1, 2, 0))
        attend = lambda: kernels.attention_f16(q, k16, v16t, L, mask, c.attn_scale, threads=threads)  # noqa: E731
    else:
        attend = lambda: attention(q, k, v, mask, scale=c.attn_scale)  # noqa: E731
    with threadpool_limits(limits=threads):
        t_mm = timed(lambda: w.matmul(x, names))
        t_at = timed(attend)
    return {
        "perf_matmul_decode": {"weights": list(names), "type": g.tensor(names[0]).type.name, "n_in": int(c.n_embd),
                               "n_out": int(n_out), "us": t_mm * 1e6, "gflops": 2 * c.n_embd * n_out / t_mm / 1e9},
        "perf_attention_decode": {"kv_len": L, "n_head": int(c.n_head), "n_head_kv": int(c.n_head_kv),
                                  "head_dim": int(c.head_dim), "us": t_at * 1e6},
    }  # fmt: skip


def end_to_end(eng, ref, threads: int, decode_steps: int, prefill_tokens: int, rounds: int = 1) -> dict:
    """Prefill and decode tok/s of both engines: `rounds` rounds, the engines alternating which goes
    first, each engine's best round kept (on a machine shared with other work, the round least
    disturbed by it is the one closest to the engine's own speed, and both get the same chances)."""
    from threadpoolctl import threadpool_limits

    vocab = eng.config.n_vocab
    prompt = [int(x) for x in np.random.default_rng(0).integers(100, min(vocab, 20000), prefill_tokens)]
    row: dict = {"threads": threads}
    eng.set_threads(threads)  # the native kernels' threads (faithful mode), like llama.cpp's n_threads
    # faithful: the OpenMP kernels own the cores; a second, spinning BLAS pool would fight them
    blas = 1 if eng.mode == "faithful" else threads
    order = [("engine", eng), ("llamacpp", ref)]
    for r in range(rounds):
        for label, b in order if r % 2 == 0 else order[::-1]:
            with threadpool_limits(limits=blas, user_api="blas"):
                b.reset()
                b.prefill(prompt[:8])  # warm-up
                b.reset()
                t = time.perf_counter()
                b.prefill(prompt)
                prefill = len(prompt) / (time.perf_counter() - t)
                b.reset()
                b.prefill(prompt[:16])
                tok = prompt[16]
                t = time.perf_counter()
                for _ in range(decode_steps):
                    tok = int(np.argmax(b.decode_step(tok)))
                decode = decode_steps / (time.perf_counter() - t)
            row[f"{label}_prefill_tok_s"] = max(prefill, row.get(f"{label}_prefill_tok_s", 0.0))
            row[f"{label}_decode_tok_s"] = max(decode, row.get(f"{label}_decode_tok_s", 0.0))
    row["decode_ratio"] = row["engine_decode_tok_s"] / row["llamacpp_decode_tok_s"]
    row["prefill_ratio"] = row["engine_prefill_tok_s"] / row["llamacpp_prefill_tok_s"]
    return row


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc/PID/stat, in clock ticks); None elsewhere."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def transport(n_vocab: int, rows: int = 650, repeat: int = 3, kind: str = "frames") -> dict:
    """The external protocol's transport of one (rows, n_vocab) float32 logits reply: crossval.serve's
    reply writer in a server that computes nothing (`python -m crossval.serve --stand-in`) → the pipe
    → ExternalBackend's reader; the fastest of `repeat` requests after a checked warm-up.

        seconds       the request's wall time (request line out → last byte in)
        mb_s          bytes ÷ seconds ÷ 1e6, bytes = rows × n_vocab × 4
        client_cpu_s  this process's CPU time in that request; server_cpu_s the server's (Linux, else
                      null) — a busy shared machine stretches the wall time, the CPU time much less

    The warm-up's array must equal the stand-in's closed form (crossval.serve.stand_in_logits)."""
    import sys

    from crossval.backends.external import ExternalBackend
    from crossval.serve import stand_in_logits

    ids = list(range(rows))
    with ExternalBackend(f"{sys.executable} -m crossval.serve --stand-in {rows} {n_vocab}", "stand-in", transport=kind, timeout=600) as b:
        if not np.array_equal(b.logits(ids), stand_in_logits(rows, n_vocab)):
            raise BenchError(f"transport: the stand-in's logits arrived changed ({kind})")
        runs = []
        for _ in range(repeat):
            c, s, t = time.process_time(), cpu_seconds(b.pid), time.perf_counter()
            b.logits(ids)
            t, c, s1 = time.perf_counter() - t, time.process_time() - c, cpu_seconds(b.pid)
            runs.append((t, c, None if s is None or s1 is None else s1 - s))
    t, c, s = min(runs)
    n = rows * n_vocab * 4
    return {"transport": kind, "rows": rows, "n_vocab": n_vocab, "bytes": n, "seconds": t, "mb_s": n / t / 1e6, "client_cpu_s": c,
            "server_cpu_s": s}  # fmt: skip


def prefill_share(tr: dict, engine_prefill_tok_s: float) -> float:
    """The transport's share of serving its rows of logits at the engine's prefill speed:
    seconds ÷ (seconds + rows ÷ engine_prefill_tok_s)."""
    return tr["seconds"] / (tr["seconds"] + tr["rows"] / engine_prefill_tok_s)


def run_bench(model: str, threads: list[int], decode_steps: int = 64, prefill_tokens: int = 128, mode: str = "auto",
              rounds: int = 1, transport_rows: int = 650) -> dict:  # fmt: skip
    """Both engines at each thread count; mode auto: faithful where the native kernels are built.
    transport_rows > 0: also the external protocol's transport of that many rows of the model's
    logits (transport(), with its prefill_share at the first thread count's engine prefill speed)."""
    import crossval
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model
    from crossval.modes import resolve_mode
    from engine.generate import Engine
    from engine.gguf_model import open_gguf, read_config

    mode, _ = resolve_mode(mode, "engine", "llamacpp")
    path = resolve_model(model)
    t = time.perf_counter()
    g = open_gguf(path)
    read_config(g)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    eng = Engine(path, n_ctx=512, kv_type="f16", mode=mode).load()
    load_s = time.perf_counter() - t
    results = []
    from crossval import roofline

    bpt, n_w = roofline.decode_bytes_per_token(g, eng.config), roofline.prefill_weight_elements(g, eng.config)
    for th in threads:
        ref = LlamaCppBackend(path, n_ctx=512, threads=th, kv_type="f16")
        try:
            results.append(end_to_end(eng, ref, th, decode_steps, prefill_tokens, rounds))
            prov = ref.provenance()
        finally:
            ref.close()
    from engine import kernels

    roof = None
    if kernels.available():  # the stream and Q8_0 kernels are native: without them no roofline figures
        buf = roofline.stream_buffer_bytes()
        bw, peak = roofline.stream_bandwidth(threads, buf), roofline.matmul_peak(threads)
        for row in results:
            th = row["threads"]
            row["stream_gb_s"], row["matmul_peak_gop_s"] = bw[th], peak[th]
            for label in ("engine", "llamacpp"):
                row[f"{label}_decode_roofline"] = roofline.decode_roofline(bpt, row[f"{label}_decode_tok_s"], bw[th])
                row[f"{label}_prefill_gop_s"] = roofline.prefill_gop_s(n_w, row[f"{label}_prefill_tok_s"])
        roof = {"decode_bytes_per_token": bpt, "prefill_weight_elements": n_w, "stream_buffer_bytes": buf,
                "l3_bytes": roofline.l3_bytes(), "matmul_peak_shape": dict(roofline.PEAK_SHAPE)}  # fmt: skip
    tr = None
    if transport_rows:
        tr = transport(eng.config.n_vocab, transport_rows)
        tr["prefill_share"] = prefill_share(tr, results[0]["engine_prefill_tok_s"])
    return {
        **receipts.header("perf"),
        "model": {**provenance.model_facts(g, path, model), "float_weights": provenance.float_weights(g)},
        "engine": {"mode": mode, "kv_type": "f16", "version": crossval.__version__},
        "reference": prov,
        "config": {"decode_steps": decode_steps, "prefill_tokens": prefill_tokens, "rounds": rounds},
        "open_s": open_s,
        "load_s": load_s,
        "results": results,
        "roofline": roof,
        "micro": micro(eng, threads[0]),
        "transport": tr,
        "check": None,
        "environment": provenance.environment_section(max(threads)),
    }


def latest(model_sha: str, perf_dir: Path = PERF_DIR, mode: str | None = None) -> tuple[Path, dict] | None:
    """The most recent recorded perf receipt of the same model file (and engine mode, if given)."""
    found = []
    for p in sorted(Path(perf_dir).glob("*.json")):
        try:
            r = receipts.read_valid(p)
        except receipts.ReceiptError:
            continue
        if r["model"]["sha256"] == model_sha and mode in (None, r["engine"]["mode"]):
            found.append((r["timestamp"], p, r))
    return (found[-1][1], found[-1][2]) if found else None


def check(rec: dict, baseline: tuple[Path, dict] | None, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Ratios (and the engine's decode_roofline, where both receipts have it) against the baseline's
    at the same thread count: a fall beyond tolerance fails."""
    if baseline is None:
        return {"baseline": None, "tolerance": tolerance, "passed": True, "failures": [], "note": "no recorded baseline for this model"}
    path, base = baseline
    failures = []
    for row in rec["results"]:
        old = next((b for b in base["results"] if b["threads"] == row["threads"]), None)
        if old is None:
            continue
        for k in ("decode_ratio", "prefill_ratio", "engine_decode_roofline"):
            if k in row and k in old and row[k] < old[k] * (1 - tolerance):
                failures.append(f"{k} at {row['threads']} thread(s) fell from {old[k]:.3f} to {row[k]:.3f} (more than {tolerance:.0%})")
    return {"baseline": str(path), "tolerance": tolerance, "passed": not failures, "failures": failures, "note": None}


def record(rec: dict, perf_dir: Path = PERF_DIR) -> Path:
    name = rec["model"]["name"] or Path(rec["model"]["path"]).stem
    return receipts.write(Path(perf_dir) / f"{rec['run_id']}__{Path(name).stem}.json", rec)


def summary_json(rec: dict) -> str:
    """`bench --model NAME --json` prints one object with both engines' tok/s and the
    ratios decode_ratio and prefill_ratio (those of the first thread count at top level)."""
    first = rec["results"][0]
    return json.dumps({**{k: first[k] for k in first}, "model": rec["model"]["name"], "load_s": rec["load_s"],
                       "open_s": rec["open_s"], "results": rec["results"], "micro": rec["micro"], "transport": rec["transport"],
                       "check": rec["check"], "run_id": rec["run_id"]}, indent=2)  # fmt: skip
