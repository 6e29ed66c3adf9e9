"""`crossval report`: a self-contained HTML page whose plots render in headless Chromium and whose
numbers are the receipts' own."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_llamacpp
from crossval import receipts


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.imgs: dict[str, bytes] = {}
        self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-file" in a:
            self._row = self.rows.setdefault(a["data-file"], {})
        elif tag == "td" and "data-field" in a and self._row is not None:
            self._row[a["data-field"]] = json.loads(a["data-value"])
        elif tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.imgs[a["data-plot"]] = base64.b64decode(a["src"].split(",", 1)[1])


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    msg = "headless Chromium not installed (Debian package chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def check_report(run_dir: Path, out: Path, expect_plots: set[str]) -> None:
    """Write the report, parse it, compare every table cell with its receipt, decode every PNG,
    render the page in headless Chromium and read back which images decoded."""
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "report", str(run_dir), "--html", str(out)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_text()
    p = _Page()
    p.feed(page)
    files = sorted(f.name for f in run_dir.glob("*.json") if f.name != "summary.json")
    assert sorted(p.rows) == files
    for name, cells in p.rows.items():
        parity = receipts.read_valid(run_dir / name)["parity"]
        assert cells and all(cells[k] == parity[k] for k in cells), name
    assert set(p.imgs) == expect_plots
    import matplotlib.image

    for k, png in p.imgs.items():
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img)) > 0.01, k  # drawn, not blank
        assert (out / "plots" / f"{k}.png").read_bytes() == png
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (out / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    line = next(ln for ln in dom.splitlines() if 'id="render-check"' in ln)
    assert f"images {len(expect_plots)}/{len(expect_plots)} decoded" in line, line
    for k in expect_plots:
        assert f"{k}=" in line and f"{k}=0x" not in line


ALL_PLOTS = {"cosine", "kld", "logit_diff_hist", "topk", "layer_nmse"}


@needs_llamacpp
def test_report_of_a_tiny_run(tmp_path, tiny_model):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\nthe quick brown fox\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file", str(prompts),
                        "--steps", "6", "--localise", "always", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    run_dir = out / json.loads(r.stdout)["run_id"]
    for rec in run_dir.glob("*__*.json"):
        assert receipts.read_valid(rec)["parity"]["localisation"]["layers"]  # --localise always
    check_report(run_dir, tmp_path / "report", ALL_PLOTS)


def test_report_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "report", str(tmp_path / "nope"), "--html", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "run directory not found" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x.json").write_text('{"kind": "parity", "schema_version": "1.0"}')
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "report", str(tmp_path / "run"), "--html", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
