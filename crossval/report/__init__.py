"""`crossval report TARGET --html OUT [--png]`: pages a person reads instead of the JSON.

TARGET is a run directory, a folder of runs (the newest is drawn), a parity / matrix / sweep /
envelope receipt, or a folder of perf receipts (the bench trend) — see `inputs.resolve`. A run gives
an overview (verdict first, the comparison table, small-multiple plots per model) and one page per
model × prompt (tokens coloured by per-position KLD, both continuations, the divergence, the
localisation heatmap, three-way verdicts, provenance). Nothing is computed that the receipts do not
hold: the pages only draw them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from crossval.errors import output_error
from crossval.report.inputs import ReportError, Target, resolve

__all__ = ["ReportError", "Target", "resolve", "write_report"]


def write_report(target: str | Path, out_dir: str | Path, png: bool = False) -> Path:
    """Write OUT/index.html (+ OUT/prompts/*.html for a run, OUT/plots/*.png, and with png=True
    OUT/screenshots/*.png); the directory appears complete or not at all. Returns index.html."""
    from crossval.report import pages

    t = resolve(target)
    html_pages, images = pages.render(t)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--html {out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as e:
        raise output_error(out, e) from None
    try:
        tmp.chmod(0o755)
        (tmp / "plots").mkdir()
        for name, im in images.items():
            (tmp / "plots" / f"{name}.png").write_bytes(im.png)
        for rel, text in html_pages.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        if png:
            from crossval.report.screenshot import screenshots

            first = next((rel for rel in sorted(html_pages) if rel.startswith("prompts/")), None)
            screenshots(tmp, ["index.html"] + ([first] if first else []))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise output_error(out, e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"
