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
