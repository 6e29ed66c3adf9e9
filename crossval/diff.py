"""What moved between two receipts: statuses, metrics (with direction), provenance."""

from __future__ import annotations

# metric → +1 if higher is better, -1 if lower is better
METRICS = {
    "cosine_similarity": +1, "cosine_mean": +1, "exact_match_rate": +1, "top1_agreement": +1,
    "top5_overlap": +1, "top10_overlap": +1, "kld_mean": -1, "kld_max": -1, "max_abs_diff": -1,
    "first_divergence_step": +1,
}  # fmt: skip
PROVENANCE = [
    ("model", "sha256"), ("tokenizer", "tokenizer_blob_sha256"), ("prompt", "formatted_blake3"),
    ("config", "mode"), ("config", "kv_type"), ("config", "threads"), ("config", "steps"),
    ("backends", "engine", "commit"), ("backends", "reference", "version"), ("backends", "reference", "library_sha256"),
    ("environment", "cpu_model"), ("environment", "numpy"), ("environment", "python"),
]  # fmt: skip


def _get(d, path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def diff_receipts(a: dict, b: dict) -> list[dict]:
    out = []
    for path in (("parity", "status"), ("verdict", "passed")):
        x, y = _get(a, path), _get(b, path)
        if x != y:
            out.append({"field": ".".join(path), "old": x, "new": y})
    for m, sign in METRICS.items():
        x, y = _get(a, ("parity", m)), _get(b, ("parity", m))
        if x == y:
            continue
        row = {"field": f"parity.{m}", "old": x, "new": y}
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            row["delta"] = y - x
            row["direction"] = "better" if (y - x) * sign > 0 else "worse"
        elif m == "first_divergence_step":  # None means "never diverged": the best value
            row["direction"] = "better" if y is None else "worse"
        out.append(row)
    for path in PROVENANCE:
        x, y = _get(a, path), _get(b, path)
        if x != y:
            out.append({"field": ".".join(path), "old": x, "new": y, "direction": "provenance"})
    return out


def _run_receipts(d) -> dict[str, dict]:
    """A run directory's parity receipts by file name (model__prompt.json), validated."""
    from pathlib import Path

    from crossval.receipts import ReceiptError, read_valid

    p = Path(d)
    if not p.is_dir():
        raise ReceiptError(f"not a run directory: {p}")
    out = {f.name: read_valid(f) for f in sorted(p.glob("*.json")) if f.name != "summary.json"}
    return {k: v for k, v in out.items() if v.get("kind") == "parity"}


def diff_runs(old_dir, new_dir) -> dict:
    """Receipts paired by file name (model__prompt): each pair's changes, and the unpaired."""
    a, b = _run_receipts(old_dir), _run_receipts(new_dir)
    return {
        "pairs": [{"file": f, "changes": diff_receipts(a[f], b[f])} for f in sorted(set(a) & set(b))],
        "only_old": sorted(set(a) - set(b)),
        "only_new": sorted(set(b) - set(a)),
    }


TREND_METRICS = ("cosine_similarity", "cosine_mean", "kld_mean", "top1_agreement", "exact_match_rate", "first_divergence_step")


def trend(dirs: list, metrics=TREND_METRICS) -> list[dict]:
    """One row per (file, metric) over runs given oldest first: the values, the change from the
    first run that has it to the last, and its direction (better / worse / same)."""
    runs = [_run_receipts(d) for d in dirs]
    files = sorted(set().union(*runs))
    rows = []
    for f in files:
        for m in metrics:
            vals = [_get(r.get(f), ("parity", m)) if f in r else None for r in runs]
            present = [i for i, r in enumerate(runs) if f in r]
            first, last = vals[present[0]], vals[present[-1]]
            sign = METRICS[m]
            if first == last:
                direction = "same"
            elif isinstance(first, (int, float)) and isinstance(last, (int, float)):
                direction = "better" if (last - first) * sign > 0 else "worse"
            elif m == "first_divergence_step":
                direction = "better" if last is None else "worse"
            else:
                direction = "changed"
            delta = last - first if isinstance(first, (int, float)) and isinstance(last, (int, float)) else None
            rows.append({"file": f, "metric": m, "values": vals, "delta": delta, "direction": direction})
    return rows
