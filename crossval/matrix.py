"""`crossval matrix`: the prompt × quant matrix, shardable, merged into one matrix receipt.

Quant variants are made here: the engine writes an F32 copy of the model (engine/convert.py), then
bitnet.cpp's llama-quantize makes I2_S (and bitnet.cpp is those cells' reference), and
llama.cpp's own quantizer (`llama_model_quantize`, in a child process — it aborts on shapes it
cannot handle) writes each type. Variants are cached by (source sha256, type) under
<cache>/quants/. The IQ types are made as llama.cpp's users make them, with an importance matrix
(crossval/imatrix.py: the imatrix tool's sums over the engine's activations on a calibration text,
cached too, its text's hash in the variant's name); llama.cpp requires one for IQ1_*, IQ2_XXS/XS/S
and IQ3_XXS. llama.cpp picks a fallback type for tensors whose rows do not fit the requested
type's blocks (e.g. 576-wide rows for 256-wide K-quant blocks); the receipts record the tensor types
each variant really holds.

Cells are the cross product models × quants × prompts in the order given; shard i/n takes cells
k with k mod n = i − 1, so shards partition the matrix exactly. Each shard runs its cells with
`crossval run`'s machinery (one parity receipt per cell) and writes a shard file; `merge` joins
shard files into the matrix receipt (schemas/matrix.schema.json) plus a Markdown table.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from crossval import receipts
from crossval.errors import InputError

QUANTS = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q3_K_S",
          "Q2_K", "Q2_K-PURE", "F16", "BF16", "F32", "TQ2_0", "TQ1_0", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_M", "IQ2_S",
          "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "MXFP4_MOE", "NVFP4", "Q1_0", "Q2_0", "I2_S")  # fmt: skip
# made and run by bitnet.cpp (crossval/bitnetcpp_kit.py), not llama.cpp: its cells' reference is bitnetcpp
BITNETCPP_QUANTS = ("I2_S",)
IMATRIX_QUANTS = frozenset(q for q in QUANTS if q.startswith("IQ"))  # made with an importance matrix
# llama-quantize names no NVFP4 file type (llama_ftype_get_default_type has none): its users make one with a
# tensor-type override over a base type, `llama-quantize --tensor-type .=nvfp4 SRC DST Q8_0`, every matrix
# NVFP4 (TENSOR_OVERRIDES: quant → (base file type, ggml type name for every tensor))
TENSOR_OVERRIDES = {"NVFP4": ("Q8_0", "NVFP4")}
# "-PURE": llama-quantize --pure. Its Q2_K mix holds no Q2_K tensor in either real model (the
# 256-wide matrices are ffn_down and attn_output, which the mix raises to Q3_K), the pure one does.
PURE = "-PURE"
DEFAULT_QUANTS = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K", "F16")
CELL_FIELDS = ("status", "passed", "tokens_match", "cosine_similarity", "exact_match_rate", "first_divergence_step", "kld_mean")


class MatrixError(InputError):
    pass


# llama-quant.cpp tensor_type_fallback: a matrix whose rows are not a whole number of the type's blocks gets
# a smaller-block type — except for the types it names none for (Q1_0's 128 values, NVFP4's 64): then
# llama.cpp refuses the whole model, and no user can make that variant (SmolLM2's 576-wide rows in Q1_0)
_NO_FALLBACK = "no tensor type fallback is defined for type"


class Unquantizable(MatrixError):
    """llama.cpp's quantizer refuses this model for this type (its rows do not fit the type's blocks and
    llama.cpp has no fallback type): the matrix records the cells as `unquantizable`, nothing to compare."""


@dataclass
class MatrixConfig:
    models: list[str]
    quants: list[str]
    prompts: list  # crossval.prompts.Prompt
    prompt_set: str | None
    shard: tuple[int, int] = (1, 1)
    steps: int = 32
    mode: str = "auto"  # crossval/modes.py: faithful where the native kernels are built
    threads: int = 1
    timeout: float = 300.0
    n_ctx: int = 4096  # byte-fallback vocabularies (the synthetic models) make long prompts long
    out_dir: Path = Path("receipts/matrix")
    run_kwargs: dict = field(default_factory=dict)


def parse_shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise MatrixError(f"--shard {s!r}: expected i/n, e.g. 2/3") from None
    if not 1 <= i <= n:
        raise MatrixError(f"--shard {s!r}: need 1 ≤ i ≤ n")
    return i, n


def parse_quants(s: str) -> list[str]:
    qs = [q.strip().upper() for q in s.split(",") if q.strip()]
    bad = [q for q in qs if q not in QUANTS]
    if bad or not qs:
        raise MatrixError(f"--quants: unknown type(s) {', '.join(bad) or '(none)'} (known: {', '.join(QUANTS)})")
    return qs


def cells(models: list[str], quants: list[str], prompt_ids: list[str]) -> list[tuple[str, str, str]]:
    return [(m, q, p) for m in models for q in quants for p in prompt_ids]


def shard_cells(all_cells: list, shard: tuple[int, int]) -> list:
    i, n = shard
    return [c for k, c in enumerate(all_cells) if k % n == i - 1]


def variant(model: str, quant: str, progress=None) -> Path:
    """The model quantized to `quant` by llama.cpp (from the engine's F32 copy), cached."""
    from crossval.models import cache_dir, resolve_model
    from engine.convert import cached_float_copy, sha256_file

    src = resolve_model(model)
    f32 = cached_float_copy(src, cache_dir() / "float")
    if quant in BITNETCPP_QUANTS:  # bitnet.cpp's llama-quantize, one thread (cached by the F32 copy's hash)
        from crossval.bitnetcpp_kit import KitError, quantize_i2s

        if progress:
            progress("quantize", {"model": model, "quant": quant})
        try:
            return quantize_i2s(f32)
        except KitError as e:
            raise MatrixError(f"bitnet.cpp could not quantize {model} to {quant}: {e}") from None
    digest = sha256_file(src)[:16]
    imat = None
    if quant in IMATRIX_QUANTS:
        from crossval import imatrix

        imat = imatrix.cached(model, progress)
        dst = cache_dir() / "quants" / digest / f"{src.stem}.{quant}.imatrix-{imat.name.split('.')[-3]}.gguf"
    else:
        dst = cache_dir() / "quants" / digest / f"{src.stem}.{quant}.gguf"
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.with_name(f".{dst.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs: one quantizes, the others wait and reuse it
        if not dst.exists():
            _quantize_into(dst, f32, model, quant, imat, progress)
    return dst


def _quantize_into(dst: Path, f32: Path, model: str, quant: str, imat: Path | None, progress) -> None:
    if progress:
        progress("quantize", {"model": model, "quant": quant})
    tmp = dst.with_name(f".{dst.name}.tmp{time.time_ns()}")
    try:
        _run_quantize(tmp, f32, model, quant, imat)
    except BaseException:  # an interrupt too: no half-written variant stays behind
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)


def _run_quantize(tmp: Path, f32: Path, model: str, quant: str, imat: Path | None) -> None:
    r = subprocess.run([sys.executable, "-m", "crossval.matrix", "quantize", str(f32), str(tmp), quant, *([str(imat)] if imat else [])],
                       capture_output=True, text=True, errors="replace", timeout=1800)  # fmt: skip
    if r.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:] or [f"exit status {r.returncode}"]
        raise (Unquantizable if _NO_FALLBACK in tail[0] else MatrixError)(f"llama.cpp could not quantize {model} to {quant}: {tail[0][:200]}")


def _quantize_main(src: str, dst: str, quant: str, imatrix_file: str | None = None) -> int:
    """llama_model_quantize, with an importance matrix passed as llama-quantize passes it: the
    per-column means as a NULL-terminated llama_model_imatrix_data array, and the
    quantize.imatrix.* keys it writes into the output (tools/quantize/quantize.cpp)."""
    import ctypes
    import os

    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    base = quant.removesuffix(PURE)
    p.pure = base != quant  # llama-quantize --pure: no per-tensor type mix (shape fallbacks still apply)
    base, every = TENSOR_OVERRIDES.get(base, (base, None))
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if base == "F32" else f"LLAMA_FTYPE_MOSTLY_{base}")
    if every:  # --tensor-type .=TYPE: the pattern "." matches every tensor name
        tt = (llama_cpp.llama_model_tensor_override * 2)()  # zeroed last entry: the terminator
        tt[0].pattern, tt[0].type = b".", getattr(llama_cpp, f"GGML_TYPE_{every}")
        p.tt_overrides = tt
    p.nthread = os.cpu_count() or 1
    if imatrix_file:
        from crossval import imatrix

        im = imatrix.read(imatrix_file)
        means = imatrix.quantize_weights(im)
        entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        for e, (name, v) in zip(entries, means.items()):
            e.name, e.data, e.size = name.encode(), v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size
        p.imatrix = entries  # the last entry stays zeroed: the terminator
        kv = [("quantize.imatrix.file", Path(imatrix_file).name), ("quantize.imatrix.entries_count", len(means))]
        if im.datasets:
            kv.insert(1, ("quantize.imatrix.dataset", im.datasets[0]))
        if im.chunk_count > 0:
            kv.append(("quantize.imatrix.chunks_count", im.chunk_count))
        overrides = (llama_cpp.llama_model_kv_override * (len(kv) + 1))()  # zeroed last key: the terminator
        for o, (key, val) in zip(overrides, kv):
            o.key = key.encode()
            if isinstance(val, str):
                o.tag, o.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, val.encode()[:127]
            else:
                o.tag, o.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, val
        p.kv_overrides = overrides
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p))


def run_shard(cfg: MatrixConfig, progress=None) -> tuple[Path, dict]:
    """Run this shard's cells; write OUT/shard-i-of-n.json (kind matrix-shard) and the receipts."""
    from crossval.run import RunConfig, run

    from crossval.modes import resolve_mode

    progress = progress or (lambda event, info: None)
    t0 = time.perf_counter()
    cfg.mode, _ = resolve_mode(cfg.mode, "engine", "llamacpp")
    receipts.ensure_dir(cfg.out_dir)
    by_id = {p.id: p for p in cfg.prompts}
    if len(by_id) != len(cfg.prompts):
        raise MatrixError("prompt ids must be unique")
    mine = shard_cells(cells(cfg.models, cfg.quants, list(by_id)), cfg.shard)
    out_cells = []
    groups: dict[tuple[str, str], list[str]] = {}
    for m, q, p in mine:
        groups.setdefault((m, q), []).append(p)
    for (m, q), pids in groups.items():
        try:
            path = variant(m, q, progress)
        except Unquantizable as e:
            for p in pids:
                cell = {"model": m, "quant": q, "prompt": p, **{k: None for k in CELL_FIELDS}}
                cell.update(status="unquantizable", passed=True, failures=[], receipt=None, note=str(e))
                out_cells.append(cell)
                progress("cell", cell)
            continue
        progress("group", {"model": m, "quant": q, "prompts": len(pids)})
        kwargs = dict(cfg.run_kwargs, reference="bitnetcpp") if q in BITNETCPP_QUANTS else cfg.run_kwargs
        rc = RunConfig(models=[str(path)], prompts=[by_id[p] for p in pids], prompt_set=cfg.prompt_set, steps=cfg.steps,
                       mode=cfg.mode, threads=cfg.threads, timeout=cfg.timeout, n_ctx=cfg.n_ctx, out_dir=Path(cfg.out_dir) / "receipts",
                       keep_going=True, **kwargs)  # fmt: skip
        res = run(rc)
        rows = {r["prompt"]: r for r in res.rows}
        for p in pids:
            r = rows.get(p)
            cell = {"model": m, "quant": q, "prompt": p}
            if r is None:
                cell.update({k: None for k in CELL_FIELDS}, status="not_run", passed=False, failures=["the run stopped before this prompt"], receipt=None)
            else:
                cell.update({k: r[k] for k in CELL_FIELDS}, failures=r["failures"],
                            receipt=str((res.out_dir / r["file"]).relative_to(cfg.out_dir)))  # fmt: skip
            out_cells.append(cell)
            progress("cell", cell)
    i, n = cfg.shard
    rec = {
        **receipts.header("matrix-shard"),
        "matrix": _identity(cfg),
        "shard": {"index": i, "count": n},
        "cells": out_cells,
        "timing": {"total_s": time.perf_counter() - t0},
    }
    path = Path(cfg.out_dir) / f"shard-{i}-of-{n}.json"
    receipts.write(path, rec)
    return path, rec


def _identity(cfg: MatrixConfig) -> dict:
    """What makes two shards parts of the same matrix."""
    return {"models": list(cfg.models), "quants": list(cfg.quants), "prompts": [p.id for p in cfg.prompts],
            "prompt_set": cfg.prompt_set, "steps": cfg.steps, "mode": cfg.mode, "threads": cfg.threads}  # fmt: skip


def merge(paths: list[str | Path], out_dir: str | Path) -> tuple[Path, dict]:
    """Join shard files into OUT/matrix.json (kind matrix) and OUT/matrix.md."""
    shards = [receipts.read_valid(p) for p in paths]
    if not shards:
        raise MatrixError("matrix merge: no shard files given")
    ident = shards[0]["matrix"]
    n = shards[0]["shard"]["count"]
    for s, p in zip(shards, paths):
        if s.get("kind") != "matrix-shard":
            raise MatrixError(f"{p}: not a matrix shard (kind {s.get('kind')!r})")
        if s["matrix"] != ident or s["shard"]["count"] != n:
            raise MatrixError(f"{p}: belongs to a different matrix or shard count")
    idx = sorted(s["shard"]["index"] for s in shards)
    if idx != list(range(1, n + 1)):
        raise MatrixError(f"matrix merge: have shards {idx} of {n}")
    expected = cells(ident["models"], ident["quants"], ident["prompts"])
    got = {(c["model"], c["quant"], c["prompt"]): c for s in shards for c in s["cells"]}
    if sorted(got) != sorted(expected) or sum(len(s["cells"]) for s in shards) != len(expected):
        raise MatrixError("matrix merge: the shards do not partition the matrix (cells missing or repeated)")
    all_cells = [got[c] for c in expected]
    counts: dict[str, int] = {}
    for c in all_cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    rec = {
        **receipts.header("matrix"),
        "matrix": ident,
        "shards": [{"index": s["shard"]["index"], "run_id": s["run_id"], "total_s": s["timing"]["total_s"]} for s in shards],
        "counts": counts,
        "passed": all(c["passed"] for c in all_cells),
        "cells": all_cells,
    }
    out = Path(out_dir)
    path = receipts.write(out / "matrix.json", rec)
    tmp = out / f".matrix.md.{time.time_ns()}"
    tmp.write_text(markdown(rec))
    tmp.replace(out / "matrix.md")
    return path, rec


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown(rec: dict) -> str:
    lines = [f"# crossval matrix {rec['run_id']}", "",
             f"models {', '.join(rec['matrix']['models'])} · quants {', '.join(rec['matrix']['quants'])} · "
             f"{len(rec['matrix']['prompts'])} prompts · mode {rec['matrix']['mode']} · {rec['counts']}", "",
             "| model | quant | prompt | status | min cosine | exact match | first div | KLD mean |",
             "|---|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for c in rec["cells"]:
        st = c["status"] + ("" if c["passed"] else " ✗")
        lines.append(f"| {c['model']} | {c['quant']} | {c['prompt']} | {st} | {_fmt(c['cosine_similarity'], '.6f')} | "
                     f"{_fmt(c['exact_match_rate'], '.3f')} | {_fmt(c['first_divergence_step'], 'd')} | {_fmt(c['kld_mean'], '.2e')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "quantize":
        sys.exit(_quantize_main(*sys.argv[2:]))
    sys.exit("usage: python -m crossval.matrix quantize SRC DST TYPE [IMATRIX]")
