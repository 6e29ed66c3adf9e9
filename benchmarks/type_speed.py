"""Faithful decode and prefill speed of every weight type against llama.cpp: type × model → ratios.

    python benchmarks/type_speed.py run OUT [--cells MODEL:TYPE,TYPE ...] [--threads 1] [--rounds 3] [--redo]
    python benchmarks/type_speed.py cpu OUT [--below 1.03] [--cells MODEL:TYPE,TYPE ...] [--rounds 3]
    python benchmarks/type_speed.py table OUT [--matrix DIR/matrix.json ...] [--receipts DIR ...]

`run` benches each cell in its own process, `crossval bench --model MODEL --quant TYPE --threads N
--rounds R --transport-rows 0 --json` (llama.cpp's requantization of the model, made and cached as
crossval matrix makes it; both engines in one process, alternating rounds, each one's best kept),
and keeps its JSON as OUT/MODEL__TYPE.json with the 1-minute load average read just before the cell
(the ratios are the figures to compare: on a machine shared with other work absolute tok/s are
not). A cell already in OUT is kept unless --redo. Without --cells the plan is default_plan(): every
llama.cpp type of crossval/matrix.py QUANTS on both real models, except the types that do not apply
to them — TQ1_0 and TQ2_0 (ternary rows of a multiple of 256 values: the synthetic BitNet model) and
MXFP4_MOE (its experts' type; a dense model becomes all-Q8_0: the synthetic MoE model) — and I2_S
(bitnet.cpp's, not llama.cpp's). A type llama.cpp refuses for a model (rows that fit no block and no
fallback type) is recorded as such.

`cpu` re-times cells whose bench decode ratio is under --below (or the --cells given) as bench's
end_to_end does — both engines in one process, alternating rounds, each one's best — but in this
process's CPU seconds as well as wall seconds, into OUT/MODEL__TYPE.cpu.json: on a machine whose
other work takes most of the cores, an engine's wall time counts the moments it waited for one and
its CPU time much less (memory contention still counts), so a CPU-time ratio near the wall one says
the gap is the engine's, a CPU-time ratio at or above 1 that it was the machine's.

`table` prints the Markdown table of OUT's cells: model | type | bit-exact | decode × | prefill × |
CPU-time decode × / prefill × (where `cpu` ran) | engine and llama.cpp decode tok/s | load. bit-exact
comes from faithful `crossval matrix` results (--matrix, any number; a later file's cells replace an
earlier one's): "yes" when every prompt of the cell has max |Δ| = 0 over its prompt and step logits
and the same tokens (its receipts' parity), "no (k/n)" with the k of n prompts that are not, "–" when
no matrix covered the cell. --receipts reads the run receipts under matrix --out folders directly (a
matrix stopped before its end leaves its finished groups' receipts but no matrix.json; the real
models' variants are named MODEL_STEM.TYPE[.imatrix-…].gguf) and wins over --matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REAL = ("gemma3-270m", "smollm2")
NOT_DENSE = ("TQ1_0", "TQ2_0", "MXFP4_MOE", "I2_S")  # see the module docstring


def default_plan() -> list[tuple[str, str]]:
    from crossval.matrix import QUANTS

    plan = [(m, q) for m in REAL for q in QUANTS if q not in NOT_DENSE]
    return plan + [("bitnet-tiny", "TQ1_0"), ("bitnet-tiny", "TQ2_0"), ("qwen3moe-tiny", "MXFP4_MOE")]


def parse_cells(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for s in specs:
        model, sep, types = s.rpartition(":")
        if not sep or not model or not types:
            sys.exit(f"--cells: MODEL:TYPE[,TYPE...], not {s!r}")
        out += [(model, q) for q in types.split(",") if q]
    return out


def cell_file(out: Path, model: str, quant: str) -> Path:
    return out / f"{Path(model).name}__{quant}.json"


def bench_cell(model: str, quant: str, threads: int, rounds: int) -> dict:
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "crossval.cli", "bench", "--model", model, "--quant", quant, "--threads", str(threads),
           "--rounds", str(rounds), "--transport-rows", "0", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    cell = {"model": model, "quant": quant, "threads": threads, "rounds": rounds, "load_before": load, "load_after": os.getloadavg()[0]}
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:] or [f"exit status {r.returncode}"]
        return {**cell, "error": tail[0][:300]}
    rec = json.loads(r.stdout)
    keep = ("engine_decode_tok_s", "llamacpp_decode_tok_s", "decode_ratio", "engine_prefill_tok_s", "llamacpp_prefill_tok_s",
            "prefill_ratio")  # fmt: skip
    return {**cell, **{k: rec[k] for k in keep}, "micro": rec["micro"], "run_id": rec["run_id"]}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = parse_cells(args.cells) if args.cells else default_plan()
    for model, quant in plan:
        f = cell_file(out, model, quant)
        if f.exists() and not args.redo:
            continue
        cell = bench_cell(model, quant, args.threads, args.rounds)
        f.write_text(json.dumps(cell, indent=1) + "\n")
        if "error" in cell:
            print(f"{model} {quant}: {cell['error']}", flush=True)
        else:
            print(f"{model} {quant}: decode {cell['decode_ratio']:.2f}× prefill {cell['prefill_ratio']:.2f}× "
                  f"(load {cell['load_before']:.1f})", flush=True)  # fmt: skip
    return 0


def cpu_cell(model: str, quant: str, rounds: int, decode_steps: int = 64, prefill_tokens: int = 128) -> dict:
    """crossval.bench.end_to_end's rounds (one thread), timed in wall and in this process's CPU seconds."""
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits

    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.matrix import variant
    from engine.generate import Engine

    path = str(variant(model, quant))
    eng = Engine(path, n_ctx=512, kv_type="f16", mode="faithful").load()
    eng.set_threads(1)
    ref = LlamaCppBackend(path, n_ctx=512, threads=1, kv_type="f16")
    prompt = [int(x) for x in np.random.default_rng(0).integers(100, min(eng.config.n_vocab, 20000), prefill_tokens)]
    best: dict[str, float] = {}
    load = os.getloadavg()[0]
    for r in range(rounds):
        order = [("engine", eng), ("llamacpp", ref)]
        for label, b in order if r % 2 == 0 else order[::-1]:
            with threadpool_limits(limits=1, user_api="blas"):
                b.reset()
                b.prefill(prompt[:8])
                b.reset()
                t, c = time.perf_counter(), time.process_time()
                b.prefill(prompt)
                for k, v in ((f"{label}_prefill_wall", time.perf_counter() - t), (f"{label}_prefill_cpu", time.process_time() - c)):
                    best[k] = max(best.get(k, 0.0), prefill_tokens / v)
                b.reset()
                b.prefill(prompt[:16])
                tok = prompt[16]
                t, c = time.perf_counter(), time.process_time()
                for _ in range(decode_steps):
                    tok = int(np.argmax(b.decode_step(tok)))
                for k, v in ((f"{label}_decode_wall", time.perf_counter() - t), (f"{label}_decode_cpu", time.process_time() - c)):
                    best[k] = max(best.get(k, 0.0), decode_steps / v)
    ref.close()
    ratios = {f"{ph}_{clock}_ratio": best[f"engine_{ph}_{clock}"] / best[f"llamacpp_{ph}_{clock}"] for ph in ("decode", "prefill")
              for clock in ("wall", "cpu")}  # fmt: skip
    return {"model": model, "quant": quant, "rounds": rounds, "load_before": load, "load_after": os.getloadavg()[0], **best, **ratios}


def cpu(args) -> int:
    out = Path(args.out)
    if args.cells:
        todo = parse_cells(args.cells)
    else:
        todo = []
        for f in sorted(out.glob("*__*.json")):
            c = json.loads(f.read_text())
            if "error" not in c and not f.name.endswith(".cpu.json") and c["decode_ratio"] < args.below:
                todo.append((c["model"], c["quant"]))
    for model, quant in todo:
        c = cpu_cell(model, quant, args.rounds)
        cell_file(out, model, quant).with_suffix(".cpu.json").write_text(json.dumps(c, indent=1) + "\n")
        print(f"{model} {quant}: CPU time decode {c['decode_cpu_ratio']:.2f}× prefill {c['prefill_cpu_ratio']:.2f}× "
              f"(wall {c['decode_wall_ratio']:.2f}× / {c['prefill_wall_ratio']:.2f}×, load {c['load_before']:.1f})", flush=True)  # fmt: skip
    return 0


def exactness(matrix_files: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, quant) → (prompts bit-exact, prompts run) from faithful matrix results (a later file's
    cells replace an earlier one's); the cells' receipts hold the parity (max_abs_diff over every
    compared row, tokens_match)."""
    seen: dict[tuple[str, str], list[bool]] = {}
    for mf in matrix_files:
        rec = json.loads(Path(mf).read_text())
        if rec["matrix"]["mode"] != "faithful":
            sys.exit(f"{mf}: a {rec['matrix']['mode']} matrix, not a faithful one")
        for key in {(Path(c["model"]).name, c["quant"]) for c in rec["cells"]}:
            seen.pop(key, None)
        for c in rec["cells"]:
            key = (Path(c["model"]).name, c["quant"])
            if c["status"] == "unquantizable":
                seen.setdefault(key, [])
                continue
            exact = False
            if c.get("receipt"):
                r = json.loads((Path(mf).parent / c["receipt"]).read_text())
                exact = r["parity"]["max_abs_diff"] == 0.0 and bool(c["tokens_match"])
            seen.setdefault(key, []).append(exact)
    return {k: (sum(v), len(v)) for k, v in seen.items()}


def receipt_exactness(roots: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, quant) → (prompts bit-exact, prompts run) from the run receipts under each folder (the
    newest receipt of a model, type and prompt counts)."""
    from crossval.models import REAL_MODELS, model_path

    stems = {model_path(m).stem: m for m in REAL_MODELS}
    latest: dict[tuple[str, str, str], tuple[str, bool]] = {}
    for root in roots:
        for f in Path(root).glob("**/receipts/*/*.json"):
            r = json.loads(f.read_text())
            if r.get("kind") != "run" and "parity" not in r:
                continue
            name = Path(r["model"]["path"]).stem
            hit = [(s, m) for s, m in stems.items() if name.startswith(s + ".")]
            if not hit:
                continue
            stem, model = hit[0]
            quant = name[len(stem) + 1 :].split(".imatrix-")[0]
            par = r["parity"]
            exact = par["max_abs_diff"] == 0.0 and par["reference_tokens"] == par["engine_tokens"]
            key = (model, quant, f.stem.rsplit("__", 1)[-1])
            if key not in latest or latest[key][0] < f.parent.name:
                latest[key] = (f.parent.name, exact)
    out: dict[tuple[str, str], list[bool]] = {}
    for (model, quant, _), (_, exact) in latest.items():
        out.setdefault((model, quant), []).append(exact)
    return {k: (sum(v), len(v)) for k, v in out.items()}


def table(args) -> int:
    out = Path(args.out)
    ex = {**exactness(args.matrix or []), **receipt_exactness(args.receipts or [])}
    lines = ["| model | type | bit-exact | decode × | prefill × | CPU-time decode × / prefill × | engine / llama.cpp decode tok/s | load |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    from crossval.matrix import QUANTS

    def order(f: Path):  # the real models first, each model's types in crossval/matrix.py's order
        m, q = f.stem.split("__")
        return (m not in REAL, m, QUANTS.index(q) if q in QUANTS else len(QUANTS), q)

    for f in sorted((p for p in out.glob("*__*.json") if not p.name.endswith(".cpu.json")), key=order):
        c = json.loads(f.read_text())
        cf = f.with_suffix(".cpu.json")
        cc = json.loads(cf.read_text()) if cf.exists() else None
        cpu_col = "" if cc is None else f"{cc['decode_cpu_ratio']:.2f} / {cc['prefill_cpu_ratio']:.2f}"
        m = Path(c["model"]).name
        k, n = ex.get((m, c["quant"]), (None, None))
        exact = "–" if n is None else "unquantizable" if n == 0 else "yes" if k == n else f"no ({n - k}/{n})"
        if "error" in c:
            refused = "no tensor type fallback" in c["error"]
            note = "llama.cpp refuses the type for this model" if refused else c["error"]
            exact = "n/a" if refused and n is None else exact
            lines.append(f"| {m} | {c['quant']} | {exact} | – | – | | {note} | {c['load_before']:.1f} |")
            continue
        lines.append(f"| {m} | {c['quant']} | {exact} | {c['decode_ratio']:.2f} | {c['prefill_ratio']:.2f} | {cpu_col} | "
                     f"{c['engine_decode_tok_s']:.1f} / {c['llamacpp_decode_tok_s']:.1f} | {c['load_before']:.1f} |")  # fmt: skip
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--cells", nargs="*", help="MODEL:TYPE[,TYPE...] (default: the plan in the module docstring)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--redo", action="store_true", help="bench cells already in OUT again")
    c = sub.add_parser("cpu")
    c.add_argument("out")
    c.add_argument("--below", type=float, default=1.03, help="cells of OUT whose bench decode ratio is under this")
    c.add_argument("--cells", nargs="*", help="MODEL:TYPE[,TYPE...] instead")
    c.add_argument("--rounds", type=int, default=3)
    t = sub.add_parser("table")
    t.add_argument("out")
    t.add_argument("--matrix", nargs="*", help="faithful crossval matrix results (matrix.json) for the bit-exact column")
    t.add_argument("--receipts", nargs="*", help="faithful crossval matrix --out folders, read receipt by receipt")
    args = ap.parse_args()
    return {"run": run, "cpu": cpu, "table": table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
