"""What `crossval report TARGET` draws: TARGET resolved to one kind of page set.

    run directory (receipts/runs/<run_id>/, parity receipts + summary.json)  → "run"
    a folder of run directories (receipts/runs/)                            → "run", the newest
    a parity receipt                                                        → "run" of its folder
    a matrix / sweep / envelope receipt                                     → that kind
    a folder of perf receipts (receipts/perf/) or one perf receipt          → "perf" (the bench trend)

Every receipt is read through `receipts.read_valid` (size-bounded, schema-checked, sealed), so a
page never shows a number its receipt does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crossval import receipts
from crossval.errors import InputError

PAGE_KINDS = ("run", "matrix", "sweep", "envelope", "perf")


class ReportError(InputError):
    """Bad report input: one line, exit 2."""


@dataclass
class Target:
    kind: str  # one of PAGE_KINDS
    path: Path  # the run directory, the receipt file, or the perf folder
    summary: dict | None = None  # run-summary of a run
    receipts: list[dict] = field(default_factory=list)  # parity receipts (run), perf receipts (perf), or the one receipt


def _read(p: Path) -> dict:
    try:
        return receipts.read_valid(p)
    except receipts.ReceiptError as e:
        raise ReportError(str(e)) from None


def _kind_of(p: Path) -> str | None:
    """The `kind` of a JSON receipt without validating it (None when unreadable)."""
    try:
        return receipts.read(p).get("kind")
    except (receipts.ReceiptError, AttributeError):
        return None


def _is_run_dir(d: Path) -> bool:
    return (d / "summary.json").is_file() or any(_kind_of(p) == "parity" for p in d.glob("*__*.json"))


def _run(d: Path) -> Target:
    summary = _read(d / "summary.json") if (d / "summary.json").exists() else None
    if summary is not None and summary.get("kind") != "run-summary":
        raise ReportError(f"{d / 'summary.json'}: a {summary.get('kind')!r} receipt, not a run summary")
    recs = []
    for p in sorted(d.glob("*.json")):
        if p.name == "summary.json":
            continue
        r = _read(p)
        if r.get("kind") == "parity":
            r["_file"] = p.name
            recs.append(r)
    if not recs:
        raise ReportError(f"no parity receipts in {d}")
    return Target("run", d, summary, recs)


def _newest_run(d: Path) -> Path | None:
    """Run directories are named <UTC timestamp>-<random>: the greatest name is the newest; the
    modification time breaks ties between runs started in the same second."""
    runs = [c for c in d.iterdir() if c.is_dir() and _is_run_dir(c)]
    return max(runs, key=lambda c: (c.name[:16], c.stat().st_mtime), default=None)


def _perf(d: Path) -> Target:
    recs = []
    for p in sorted(d.glob("*.json")):
        if _kind_of(p) == "perf":
            r = _read(p)
            r["_file"] = p.name
            recs.append(r)
    if not recs:
        raise ReportError(f"no perf receipts in {d}")
    return Target("perf", d, None, recs)


def resolve(target: str | Path) -> Target:
    p = Path(target)
    if p.is_file():
        kind = _kind_of(p)
        if kind == "parity":
            return _run(p.parent)
        if kind == "perf":
            return _perf(p.parent)
        if kind in ("matrix", "sweep", "envelope"):
            rec = _read(p)
            rec["_file"] = p.name
            return Target(kind, p, None, [rec])
        _read(p)  # a schema error names the field; a valid receipt of another kind falls through
        raise ReportError(f"{p}: a {kind!r} receipt has no report page (parity run, matrix, sweep, envelope or perf)")
    if not p.is_dir():
        raise ReportError(f"run directory not found: {p}")
    if _is_run_dir(p):
        return _run(p)
    if any(_kind_of(q) == "perf" for q in p.glob("*.json")):
        return _perf(p)
    newest = _newest_run(p)
    if newest is None:
        raise ReportError(f"no parity receipts in {p} (nor a run directory under it)")
    return _run(newest)
