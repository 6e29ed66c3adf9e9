"""`crossval report RUN_DIR --html OUT`: one self-contained HTML page for a run's receipts.

Plots (PNG, matplotlib, embedded as data URIs and also written to OUT/plots/): per-position
1 − cosine and KLD for every prompt, top-k agreement per prompt, a histogram of the per-position
max |Δlogit|, and — for receipts with a localisation — a heatmap of per-layer NMSE by stage. Tables
repeat the receipts' numbers verbatim (each cell carries data-field / data-value attributes, so a
test can check them against the receipts). A small script in the page records whether every image
decoded (<pre id="render-check">), which a headless browser's --dump-dom shows.

Nothing is computed here that the receipts do not hold: the report only draws them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from pathlib import Path

from crossval import receipts
from crossval.errors import InputError

TABLE_FIELDS = [
    ("cosine_similarity", "min cosine", ".6f"),
    ("cosine_mean", "mean cosine", ".7f"),
    ("kld_mean", "KLD mean", ".3e"),
    ("top1_agreement", "top-1", ".4f"),
    ("top5_overlap", "top-5", ".4f"),
    ("exact_match_rate", "exact match", ".4f"),
    ("first_divergence_step", "first div", "d"),
]


class ReportError(InputError):
    pass


def load_run(run_dir: str | Path) -> tuple[dict | None, list[dict]]:
    """The run's summary (None if absent) and its parity receipts, validated, in file order."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ReportError(f"run directory not found: {d}")
    summary = receipts.read_valid(d / "summary.json") if (d / "summary.json").exists() else None
    if summary is not None and summary["kind"] != "run-summary":
        raise ReportError(f"{d / 'summary.json'}: a {summary['kind']} receipt, not a run summary")
    recs = []
    for p in sorted(d.glob("*.json")):
        if p.name == "summary.json":
            continue
        r = receipts.read_valid(p)
        if r.get("kind") == "parity":
            r["_file"] = p.name
            recs.append(r)
    if not recs:
        raise ReportError(f"no parity receipts in {d}")
    return summary, recs


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plain(label: str) -> str:
    """A label matplotlib draws as written: '$' would start mathtext (and a malformed formula in a
    prompt id or model name would abort the report)."""
    return label.replace("$", r"\$")


def _label(r: dict) -> str:
    name = r["model"]["name"] or r["model"]["path"]
    return f"{Path(name).stem if name.endswith('.gguf') else name}/{r['prompt']['id']}"


def plots(recs: list[dict]) -> dict[str, bytes]:
    """name → PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, bytes] = {}
    with_rows = [r for r in recs if r["per_position"]]
    if with_rows:
        for key, name, title in (("cosine", "cosine", "1 − cosine per teacher-forced position"),
                                 ("kld", "kld", "KL(reference ‖ engine) per position, nats")):  # fmt: skip
            fig, ax = plt.subplots(figsize=(9, 4))
            for r in with_rows:
                pos = [q["position"] for q in r["per_position"]]
                val = [max(1 - q["cosine"], 1e-12) if key == "cosine" else max(q["kld"], 1e-12) for q in r["per_position"]]
                ax.plot(pos, val, lw=0.9, label=_plain(_label(r)))
            ax.set_yscale("log")
            ax.set_xlabel("position")
            ax.set_title(title)
            ax.legend(fontsize=6, ncol=2)
            out[name] = _png(fig)
        fig, ax = plt.subplots(figsize=(9, 4))
        vals = np.concatenate([[q["max_abs_diff"] for q in r["per_position"]] for r in with_rows])
        ax.hist(vals, bins=40, color="#4477aa")
        ax.set_xlabel("max |Δlogit| at a position")
        ax.set_ylabel("positions")
        ax.set_title(f"logit differences over {len(vals)} positions")
        out["logit_diff_hist"] = _png(fig)
    scored = [r for r in recs if r["parity"]["top1_agreement"] is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(scored))
        for i, (k, lab) in enumerate((("top1_agreement", "top-1"), ("top5_overlap", "top-5"), ("top10_overlap", "top-10"))):
            ax.bar(x + (i - 1) * 0.27, [r["parity"][k] for r in scored], width=0.27, label=lab)
        ax.set_xticks(x, [_plain(_label(r)) for r in scored], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(min(0.8, min(r["parity"]["top1_agreement"] for r in scored) - 0.02), 1.005)
        ax.set_title("top-k agreement (teacher-forced)")
        ax.legend(fontsize=7)
        out["topk"] = _png(fig)
    loc = [r for r in recs if (r["parity"].get("localisation") or {}).get("layers")]
    if loc:
        stages = sorted({q["stage"] for r in loc for q in r["parity"]["localisation"]["layers"]})
        n_layer = 1 + max(q["layer"] for r in loc for q in r["parity"]["localisation"]["layers"])
        grid = np.full((len(loc) * len(stages), n_layer), np.nan)
        for i, r in enumerate(loc):
            for q in r["parity"]["localisation"]["layers"]:
                grid[i * len(stages) + stages.index(q["stage"]), q["layer"]] = max(q["nmse"], 1e-16)
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(grid) + 1.5))
        im = ax.imshow(np.log10(grid), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(grid)), [_plain(f"{_label(r)} {s}") for r in loc for s in stages], fontsize=6)
        ax.set_xlabel("layer")
        ax.set_title("per-layer NMSE vs the reference (log10)")
        fig.colorbar(im, ax=ax)
        out["layer_nmse"] = _png(fig)
    return out


def _cell(field: str, value, spec: str) -> str:
    shown = "–" if value is None else (format(value, spec) if not isinstance(value, bool) else str(value))
    raw = "null" if value is None else json.dumps(value)
    return f'<td data-field="{field}" data-value="{html.escape(raw)}">{html.escape(shown)}</td>'


def render_html(summary: dict | None, recs: list[dict], pngs: dict[str, bytes]) -> str:
    rows = []
    for r in recs:
        p = r["parity"]
        cells = "".join(_cell(f, p.get(f), spec) for f, _, spec in TABLE_FIELDS)
        status = html.escape(p["status"] + ("" if r["verdict"]["passed"] else " (failed)"))
        rows.append(f'<tr data-file="{html.escape(r["_file"])}"><td>{html.escape(_label(r))}</td><td>{status}</td>{cells}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in TABLE_FIELDS)
    fails = "".join(f"<li>{html.escape(_label(r))}: {html.escape(f)}</li>" for r in recs for f in r["verdict"]["failures"])
    imgs = "".join(f'<figure><img alt="{k}" data-plot="{k}" src="data:image/png;base64,{base64.b64encode(v).decode()}">'
                   f"<figcaption>{k}</figcaption></figure>" for k, v in pngs.items())  # fmt: skip
    if "layer_nmse" not in pngs:
        imgs += "<p>No per-layer data: receipts carry a localisation only for failed comparisons, or with <code>crossval run --localise always</code>.</p>"
    r0 = recs[0]
    run = html.escape(summary["run_id"] if summary else r0["run_id"])
    ref = r0["backends"]["reference"] or {}
    meta = (f"engine {html.escape(str(r0['backends']['engine'].get('version')))} · reference "
            f"{html.escape(str(ref.get('name')))} {html.escape(str(ref.get('version')))} · mode {html.escape(r0['config']['mode'])} · "
            f"{len(recs)} receipts")  # fmt: skip
    check = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img[data-plot]')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  document.getElementById('render-check').textContent =
    'images ' + ok.length + '/' + imgs.length + ' decoded: ' + ok.map(i => i.dataset.plot + '=' + i.naturalWidth + 'x' + i.naturalHeight).join(' ');
});
</script>"""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>crossval report {run}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head>
<body><h1>crossval run {run}</h1><p>{meta}</p>
<table id="receipts"><tr><th>model/prompt</th><th>status</th>{head}</tr>{"".join(rows)}</table>
<h2>Failures</h2><ul>{fails or "<li>none</li>"}</ul>
<h2>Plots</h2>{imgs}
<pre id="render-check">not rendered</pre>
{check}
</body></html>
"""


def write_report(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write OUT/index.html and OUT/plots/*.png; the directory appears complete or not at all."""
    summary, recs = load_run(run_dir)
    pngs = plots(recs)
    page = render_html(summary, recs, pngs)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    (tmp / "plots").mkdir()
    for k, v in pngs.items():
        (tmp / "plots" / f"{k}.png").write_bytes(v)
    (tmp / "index.html").write_text(page, encoding="utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out / "index.html"
