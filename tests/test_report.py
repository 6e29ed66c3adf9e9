"""`crossval report`: pages whose every number is its receipt's, whose figures decode in headless
Chromium, whose links resolve, and which carry nothing but the user's data."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import needs_llamacpp
from crossval import receipts


class Page(HTMLParser):
    """Cells with data-field/data-value grouped by their row key, images, links and visible text."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str | None, str | None, str, object, list[str]]] = []  # (table id, row key, field, value, text)
        self.imgs: dict[str, bytes] = {}
        self.links: list[str] = []
        self.text: list[str] = []
        self._table = self._row = None
        self._cell = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._table = a.get("id")
        elif tag == "tr":
            self._row = a.get("data-file") or a.get("data-row")
        elif tag == "td" and "data-field" in a:
            self._cell = (self._table, self._row, a["data-field"], json.loads(a["data-value"]), [])
        elif tag == "img":
            assert a["src"].startswith("data:image/png;base64,"), "figures are embedded, never fetched"
            self.imgs[a["data-plot"]] = base64.b64decode(a["src"].split(",", 1)[1])
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        for k, v in a.items():
            assert not (k == "src" and v and re.match(r"(https?:)?//", v)), f"a network fetch: {k}={v}"

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == "td" and self._cell:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell:
            self._cell[4].append(data)


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def visible(page: Page) -> str:
    """The page's text as a reader sees it (markup boundaries removed, whitespace collapsed)."""
    return re.sub(r"\s+", " ", "".join(page.text))


def shown_matches(text: str, value) -> bool:
    """The cell's text is the receipt value rounded to the digits shown (half a unit in the last place)."""
    text = text.strip()
    if value is None:
        return text == "–"
    if isinstance(value, bool) or isinstance(value, str):
        return text == str(value)
    m = re.fullmatch(r"(-?\d+)(?:\.(\d+))?(?:e([+-]\d+))?", text)
    assert m, f"not a number: {text!r}"
    ulp = 10.0 ** (-(len(m.group(2) or "")) + int(m.group(3) or 0))
    return abs(float(text) - value) <= 0.51 * ulp or (math.isfinite(value) and float(text) == value)


def dig(obj: dict, dotted: str):
    for k in dotted.split("."):
        obj = obj[k]
    return obj


def check_cells(page: Page, lookup) -> int:
    """lookup(table id, row key, field) → the receipt's value; every cell checked. Returns the count."""
    for table, row, field, value, text in page.cells:
        expect = lookup(table, row, field)
        assert value == expect, (table, row, field, value, expect)
        assert shown_matches("".join(text), value), (table, row, field, "".join(text), value)
    return len(page.cells)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    msg = "headless Chromium not installed (Debian package chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


PROBE = """<script>window.addEventListener('load', () => { const i = [...document.images];
document.body.setAttribute('data-probe', i.filter(x => x.complete && x.naturalWidth > 0).length + '/' + i.length); });</script>"""


def decoded_in_chromium(page: Path, tmp: Path) -> str:
    """Render a copy of the page with a probe script appended (the test's instrumentation lives in
    the copy, never in the user's page) and read back 'decoded/total' images."""
    probe = tmp / f".probe-{page.parent.name}-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    m = re.search(r'data-probe="(\d+)/(\d+)"', dom)
    assert m, "Chromium did not render the page"
    return f"{m.group(1)}/{m.group(2)}"


def check_pages(out: Path, tmp: Path) -> list[Path]:
    """Every page: figures decode (matplotlib and Chromium), links resolve, no instrumentation."""
    import matplotlib.image
    import numpy as np

    pages = sorted(out.rglob("*.html"))
    assert pages
    for f in pages:
        p = parse(f)
        for name, png in p.imgs.items():
            img = matplotlib.image.imread(__import__("io").BytesIO(png), format="png")
            assert img.shape[0] > 50 and img.shape[1] > 50 and float(np.std(img)) > 0.01, name  # drawn, not blank
            assert (out / "plots" / f"{name}.png").read_bytes() == png
        for href in p.links:
            assert not re.match(r"[a-z]+:", href), f"{f.name}: external link {href}"
            assert (f.parent / href.split("#")[0]).resolve().is_file(), f"{f.name}: broken link {href}"
        text = visible(p)
        for word in ("render-check", "decoded:", "data-probe", "not rendered", "images "):
            assert word not in text and word not in f.read_text(), f"{f.name}: instrumentation {word!r} on the page"
        n = len(p.imgs)
        assert decoded_in_chromium(f, tmp) == f"{n}/{n}", f.name
    return pages


def report(target: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossval.cli", "report", str(target), "--html", str(out), *extra],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def check_run_report(run_dir: Path, out: Path, tmp: Path) -> dict[str, Page]:
    """A run's overview and prompt pages against its receipts."""
    r = report(run_dir, out)
    assert r.returncode == 0, r.stderr
    recs = {p.name: receipts.read_valid(p) for p in run_dir.glob("*.json") if p.name != "summary.json"}
    overview = parse(out / "index.html")
    rows = {row for _, row, *_ in overview.cells}
    assert rows == set(recs)
    n = check_cells(overview, lambda t, row, f: recs[row]["parity"][f])
    assert n == len(recs) * 7
    text = visible(overview)
    n_exact = sum(r["parity"]["max_abs_diff"] == 0 and r["parity"]["exact_match_rate"] == 1 and r["parity"]["status"] == "ok" for r in recs.values())
    assert f"{sum(r['verdict']['passed'] for r in recs.values())} of {len(recs)} comparisons pass" in text
    assert ("Bit for bit" in text) == (n_exact > 0)
    # failures first
    order = [row for _, row, f, *_ in overview.cells if f == "cosine_similarity"]
    passed = [recs[row]["verdict"]["passed"] for row in order]
    assert passed == sorted(passed)
    pages = {}
    for name, rec in recs.items():
        f = out / "prompts" / f"{Path(name).stem}.html"
        page = pages[name] = parse(f)
        div = rec["parity"]["divergence"]

        def lookup(table, row, field, rec=rec, div=div):
            return rec["parity"][field] if table == "metrics" else dig(div, field)

        check_cells(page, lookup)
        ptext = visible(page)
        if div:
            assert f"First divergence at step {div['step']}" in ptext
        assert rec["prompt"]["id"] in ptext
        if (rec["parity"].get("localisation") or {}).get("first"):
            first = rec["parity"]["localisation"]["first"]
            assert f"layer {first['layer']}, stage {first['stage']}" in ptext
    check_pages(out, tmp)
    return pages


@needs_llamacpp
def test_report_of_a_failing_run_names_the_divergence_and_the_layer(tmp_path, tiny_model):
    """A perturbed tiny model (layer 1's weights scaled) against llama.cpp: the comparison fails,
    localisation runs, and the pages show the divergence step and the departing layer."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\nthe quick brown fox <script>alert(1)</script>\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file", str(prompts),
                        "--steps", "6", "--mode", "float", "--perturb-layer", "1", "--perturb-scale", "3.0", "--localise", "always",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1, r.stderr
    run_dir = out / json.loads(r.stdout)["run_id"]
    pages = check_run_report(run_dir, tmp_path / "report", tmp_path)
    assert any(p.imgs for p in pages.values())  # per-layer heatmaps
    for f in (tmp_path / "report").rglob("*.html"):
        assert "<script>alert(1)</script>" not in f.read_text()  # prompt markup is shown, never run
    # the parent folder resolves to its newest run
    r2 = report(out, tmp_path / "report2")
    assert r2.returncode == 0, r2.stderr
    assert (tmp_path / "report2" / "index.html").read_text() == (tmp_path / "report" / "index.html").read_text()


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, tiny_model) -> Path:
    """A run of the tiny llama model against our own engine (no llama.cpp needed): bit-exact."""
    out = tmp_path_factory.mktemp("engine_run")
    prompts = out / "prompts.txt"
    prompts.write_text("The capital of France is\nOnce upon a time\ndef fib(n):\n")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--reference", "engine",
                        "--prompt-file", str(prompts), "--steps", "4", "--out", str(out / "runs"), "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out / "runs" / json.loads(r.stdout)["run_id"]


def test_report_of_a_bit_exact_run_says_so(engine_run, tmp_path):
    check_run_report(engine_run, tmp_path / "report", tmp_path)
    text = visible(parse(tmp_path / "report" / "index.html"))
    assert "Bit for bit: every logit at every position" in text


@needs_llamacpp
def test_report_of_a_matrix_receipt(tmp_path, tiny_model):
    out = tmp_path / "mx"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "matrix", "--model", str(tiny_model("llama")), "--quants", "Q8_0,Q4_0",
                        "--prompts", "default", "--steps", "4", "--mode", "faithful", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    mfile = next(p for p in out.rglob("*.json") if receipts.read(p).get("kind") == "matrix")
    rec = receipts.read_valid(mfile)
    res = report(mfile, tmp_path / "report")
    assert res.returncode == 0, res.stderr
    page = parse(tmp_path / "report" / "index.html")
    cells = {f"{c['model']}/{c['quant']}/{c['prompt']}": c for c in rec["cells"]}

    def lookup(table, row, field):
        if field == "bit_exact":
            cell = cells[row]
            cr = receipts.read_valid(next(b / cell["receipt"] for b in (mfile.parent, Path.cwd()) if (b / cell["receipt"]).is_file()))
            return cr["parity"]["max_abs_diff"] == 0 and cr["parity"]["exact_match_rate"] == 1 and cr["parity"]["status"] == "ok"
        return cells[row][field]

    assert check_cells(page, lookup) == len(cells) * 10
    html = (tmp_path / "report" / "index.html").read_text()
    for q in rec["matrix"]["quants"]:
        for m in rec["matrix"]["models"]:
            mine = [c for c in rec["cells"] if c["quant"] == q and c["model"] == m]
            assert f'data-cell="{m}/{q}"' in html
            assert f"{sum(c['passed'] for c in mine)}/{len(mine)} pass" in html
    check_pages(tmp_path / "report", tmp_path)


def test_report_png_writes_screenshots(engine_run, tmp_path):
    """--png: overview and one prompt page as PNG screenshots (what CI attaches)."""
    chromium()
    r = report(engine_run, tmp_path / "o", "--png")
    assert r.returncode == 0, r.stderr
    import matplotlib.image

    shots = sorted((tmp_path / "o" / "screenshots").glob("*.png"))
    assert [s.name for s in shots][0] == "index.png" and len(shots) == 2
    for s in shots:
        img = matplotlib.image.imread(s)
        assert img.shape[1] == 1280 and img.shape[0] > 500


@pytest.mark.parametrize("case", ["missing", "schema", "not-a-dir-out", "wrong-kind", "empty-folder"])
def test_report_bad_input_is_one_line(tmp_path, case, engine_run):
    run = tmp_path / "run"
    run.mkdir()
    target, out = run, tmp_path / "o"
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "schema":
        (run / "x__y.json").write_text('{"kind": "parity", "schema_version": "1.0"}')
    elif case == "not-a-dir-out":
        shutil.copytree(engine_run, run, dirs_exist_ok=True)
        out.write_text("a file")
    elif case == "wrong-kind":
        target = engine_run / "summary.json"
    r = report(target, out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    if case != "not-a-dir-out":
        assert not out.exists()


def _check_receipt_page(target: Path, tmp_path: Path, lookup) -> Page:
    r = report(target, tmp_path / "report")
    assert r.returncode == 0, r.stderr
    page = parse(tmp_path / "report" / "index.html")
    assert check_cells(page, lookup) > 0
    check_pages(tmp_path / "report", tmp_path)
    return page


@needs_llamacpp
def test_report_of_a_sweep_receipt(tmp_path, tiny_model):
    out = tmp_path / "sw"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "sweep", "--model", str(tiny_model("llama")), "--kinds", "threads,batch",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    f = next(out.glob("*.json"))
    rec = receipts.read_valid(f)

    def lookup(table, row, field):
        kind, i = row.split("/")
        return rec[kind][int(i)][field]

    page = _check_receipt_page(f, tmp_path, lookup)
    assert {row.split("/")[0] for _, row, *_ in page.cells} == {"threads", "batch"}


@needs_llamacpp
def test_report_of_an_envelope_receipt(tmp_path, tiny_model):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\nthe quick brown fox\n")
    out = tmp_path / "env"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "envelope", "--model", str(tiny_model("llama")), "--prompts", str(prompts),
                        "--seeds", "4", "--steps", "4", "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    f = next(out.glob("*.json"))
    rec = receipts.read_valid(f)
    configs = {c["name"]: c for c in rec["configs"]}
    page = _check_receipt_page(f, tmp_path, lambda table, row, field: configs[row][field])
    assert {row for _, row, *_ in page.cells} == set(configs)


def test_report_of_the_recorded_bench_trend(tmp_path):
    """receipts/perf (the recorded `crossval bench` receipts): the latest figures per model, and the
    ratio trend over all of them."""
    perf = Path(__file__).resolve().parent.parent / "receipts" / "perf"
    recs = {p.name: receipts.read_valid(p) for p in perf.glob("*.json")}

    def lookup(table, row, field):
        name, i = row.rsplit("/", 1)
        if field == "mode":
            return recs[name]["engine"]["mode"]
        if field == "decode_bytes_per_token":
            return (recs[name].get("roofline") or {}).get(field)
        return recs[name]["results"][int(i)].get(field)

    page = _check_receipt_page(perf, tmp_path, lookup)
    models = {r["model"]["name"] for r in recs.values()}
    latest = {m: max((r for r in recs.values() if r["model"]["name"] == m), key=lambda r: r["timestamp"]) for m in models}
    shown = {row.rsplit("/", 1)[0] for _, row, *_ in page.cells}
    assert shown == {next(n for n, r in recs.items() if r is latest[m]) for m in models}
    # decode and prefill ratio trends per model, and the decode roofline trend where receipts record it
    with_roofline = {r["model"]["name"] for r in recs.values() if any(res.get("engine_decode_roofline") is not None for res in r["results"])}
    assert len(page.imgs) == 2 * len(models) + len(with_roofline)


def test_report_of_perf_receipts_shows_the_roofline(tmp_path):
    """The roofline bench writes into perf receipts (bytes per token, read bandwidth, each engine's
    decode roofline fraction, prefill GOP/s against the int8 peak) is in the table, numbers the
    receipt's own; a receipt from before the roofline shows dashes in those columns."""
    perf = Path(__file__).resolve().parent.parent / "receipts" / "perf"
    recs = {p.name: receipts.read_valid(p) for p in perf.glob("*.json")}
    before = {r["model"]["name"] for r in recs.values() if not r.get("roofline")}  # models recorded before the roofline too
    new = max((n for n, r in recs.items() if r.get("roofline") and r["model"]["name"] in before), key=lambda n: recs[n]["timestamp"])
    old = min((n for n, r in recs.items() if not r.get("roofline") and r["model"]["name"] == recs[new]["model"]["name"]),
              key=lambda n: recs[n]["timestamp"])  # fmt: skip
    folder = tmp_path / "perf"
    folder.mkdir()
    for n in (old, new):
        shutil.copy(perf / n, folder / n)
    page = _check_receipt_page(folder, tmp_path, lambda table, row, field: {
        "mode": recs[new]["engine"]["mode"], "decode_bytes_per_token": recs[new]["roofline"]["decode_bytes_per_token"],
    }.get(field, recs[new]["results"][int(row.rsplit("/", 1)[1])].get(field)))  # fmt: skip
    fields = {f for _, row, f, *_ in page.cells}
    roofline = {"decode_bytes_per_token", "stream_gb_s", "engine_decode_roofline", "llamacpp_decode_roofline", "matmul_peak_gop_s",
                "engine_prefill_gop_s", "llamacpp_prefill_gop_s"}  # fmt: skip
    assert roofline <= fields
    values = {f: v for _, row, f, v, _ in page.cells if row == f"{new}/0"}
    assert all(values[f] is not None for f in roofline), values
    assert len(page.imgs) == 3  # decode and prefill ratio trends, decode roofline trend
    per_token = recs[new]["roofline"]["decode_bytes_per_token"]
    assert f"{per_token / 1e6:.1f} MB per token" in visible(page)
    # the receipt from before the roofline: same columns, no numbers of its own in them
    (folder / new).unlink()
    page = _check_receipt_page(folder, tmp_path / "old", lambda table, row, field: {
        "mode": recs[old]["engine"]["mode"]}.get(field, recs[old]["results"][int(row.rsplit("/", 1)[1])].get(field)))  # fmt: skip
    assert all(v is None for _, row, f, v, _ in page.cells if f in roofline)
    assert len(page.imgs) == 2
