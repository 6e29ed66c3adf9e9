"""HTML pages from receipts: {file name: html} plus the figures they embed.

Every page is one self-contained file (CSS inline, figures as data: URIs, no script but the table
sorter, nothing fetched). Text from receipts — prompts, model names, token pieces — goes through
Jinja's autoescaping, so markup in a prompt is shown, never run. Cells that repeat a receipt number
carry data-field / data-value (the JSON value) so a test can hold the page to its receipt.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2

from crossval.report import plots
from crossval.report.inputs import Target
from crossval.report.pieces import pieces

RUN_FIELDS = [
    ("cosine_similarity", "min cosine", ".6f"),
    ("cosine_mean", "mean cosine", ".7f"),
    ("kld_mean", "KLD mean", ".3e"),
    ("max_abs_diff", "max |Δlogit|", ".3g"),
    ("top1_agreement", "top-1", ".4f"),
    ("exact_match_rate", "exact match", ".4f"),
    ("first_divergence_step", "first div", "d"),
]

# token colour bins over KLD (nats): none for exactly 0, then five decades
KLD_BINS = [(0.0, "k0", "0"), (1e-6, "k1", "≤ 1e-6"), (1e-4, "k2", "≤ 1e-4"), (1e-2, "k3", "≤ 1e-2"), (1e-1, "k4", "≤ 0.1"),
            (math.inf, "k5", "> 0.1")]  # fmt: skip


@dataclass
class Image:
    name: str
    png: bytes

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()

    @property
    def width(self) -> int:
        return struct.unpack(">I", self.png[16:20])[0]

    @property
    def height(self) -> int:
        return struct.unpack(">I", self.png[20:24])[0]


def _fmt(value, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or spec == "s":
        return str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("crossval.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters["fmt"] = _fmt
    env.filters["tojson_raw"] = lambda v: json.dumps(v)
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


def is_bit_exact(r: dict) -> bool:
    """Identical logits at every compared position and identical greedy tokens."""
    p = r["parity"]
    return p["status"] == "ok" and p.get("max_abs_diff") == 0 and p.get("exact_match_rate") == 1.0


def _stem(r: dict) -> str:
    return Path(r["_file"]).stem


def model_label(r: dict) -> str:
    name = r["model"]["name"] or r["model"]["path"]
    return Path(name).stem if name.endswith(".gguf") else name


def _backend_line(b: dict | None) -> str:
    if not b:
        return "none"
    bits = [b.get("name") or "?", b.get("version") or ""]
    if b.get("mode"):
        bits.append(f"mode {b['mode']}")
    if b.get("kv_type"):
        bits.append(f"KV {b['kv_type']}")
    if b.get("fallback_types"):
        bits.append("fallback types " + ", ".join(b["fallback_types"]))
    return " · ".join(x for x in bits if x)


def _build_line(b: dict | None) -> str:
    if not b:
        return ""
    build = b.get("build") or {}
    if build.get("simd_target"):
        return f"Highway target {build['simd_target']} · {build.get('variant') or ''} · {build.get('compiler') or ''}".strip(" ·")
    return b.get("system_info") or ""


def _kld_class(kld: float | None) -> tuple[str, str]:
    if kld is None:
        return "", ""
    for edge, cls, _ in KLD_BINS:
        if kld <= edge:
            return cls, ""
    return "k5", ""


def _tokens(texts: list[str], metrics: list[dict | None], mark: int | None = None, extra: str = "") -> list[dict]:
    out = []
    for i, (t, q) in enumerate(zip(texts, metrics)):
        cls = _kld_class(q["kld"])[0] if q else ""
        title = f"position {q['position']}: cosine {q['cosine']:.7f} · KLD {q['kld']:.3e} · max |Δlogit| {q['max_abs_diff']:.3g}" if q else ""
        if i == mark:
            cls += " div"
        out.append({"text": t, "cls": (cls + " " + extra).strip(), "title": title})
    return out


def _run_pages(t: Target, env: jinja2.Environment) -> tuple[dict[str, str], dict[str, Image]]:
    recs = sorted(t.receipts, key=lambda r: (r["verdict"]["passed"], model_label(r), r["prompt"]["id"]))
    r0 = recs[0]
    ref = r0["backends"].get("reference") or {}
    images: dict[str, Image] = {}
    pages: dict[str, str] = {}

    def img(name: str, png: bytes | None) -> Image | None:
        if png is None:
            return None
        images[name] = Image(name, png)
        return images[name]

    rows, failures = [], []
    for r in recs:
        href = f"prompts/{_stem(r)}.html"
        rows.append({"file": r["_file"], "model": model_label(r), "prompt": r["prompt"]["id"], "href": href, "status": r["parity"]["status"],
                     "passed": r["verdict"]["passed"], "exact": is_bit_exact(r), "parity": r["parity"],
                     "rank": (0 if not r["verdict"]["passed"] else 2 if is_bit_exact(r) else 1)})  # fmt: skip
        failures += [(f"{model_label(r)} / {r['prompt']['id']}", href, f) for f in r["verdict"]["failures"]]
    per_model = []
    for model in dict.fromkeys(model_label(r) for r in recs):
        mr = [r for r in recs if model_label(r) == model]
        mr.sort(key=lambda r: r["_file"])
        key = model.replace("/", "_")
        figs = []
        for kind, ylabel, caption in (
            ("1-cosine", "1 − cosine", f"{model}: 1 − cosine similarity of the two engines' logits at each teacher-forced position, one panel per prompt (log scale; the dashed line marks the first greedy divergence)."),
            ("kld", "KLD (nats)", f"{model}: KL(reference ‖ engine) of the next-token distributions at each position, one panel per prompt (log scale)."),
        ):  # fmt: skip
            im = img(f"{key}-{kind}", plots.per_position_panels(mr, kind, ylabel))
            if im:
                figs.append((im, caption))
        im = img(f"{key}-topk", plots.topk_bars(mr))
        if im:
            figs.append((im, f"{model}: share of teacher-forced positions where the engine's top-1 / top-5 / top-10 tokens agree with the reference's."))
        note = None
        if all(q["cosine"] == 1.0 and q["kld"] == 0 for r in mr for q in r["per_position"]) and any(r["per_position"] for r in mr):
            note = f"Every position of every prompt has identical logits on both sides for {model}: there is no difference to plot."
        per_model.append((model, figs, note))
    run_figs = []
    im = img("logit-diff-hist", plots.logit_diff_hist(recs))
    if im:
        run_figs.append((im, f"Largest |Δlogit| at each of the {sum(len(r['per_position']) for r in recs)} compared positions of this run."))
    n_exact = sum(is_bit_exact(r) for r in recs)
    cfg = r0["config"]
    ctx = {
        "title": f"crossval run {t.summary['run_id'] if t.summary else r0['run_id']}", "sortable": True,
        "run_id": t.summary["run_id"] if t.summary else r0["run_id"],
        "passed": all(r["verdict"]["passed"] for r in recs), "n": len(recs), "n_pass": sum(r["verdict"]["passed"] for r in recs),
        "n_exact": n_exact, "reference_name": ref.get("name") or "the reference",
        "engine": _backend_line(r0["backends"]["engine"]), "reference": _backend_line(ref), "build": _build_line(ref),
        "models": list(dict.fromkeys(model_label(r) for r in recs)),
        "config": f"{cfg['steps']} steps · {cfg['threads']} thread(s) · seed {cfg['seed']} · {cfg['sampling']['method']}",
        "profiles": sorted({r["thresholds"]["profile"] for r in recs}),
        "fields": RUN_FIELDS, "rows": rows, "failures": failures, "per_model": per_model, "run_figs": run_figs,
        "provenance": [("engine", r0["backends"]["engine"]), ("reference", ref), ("environment", r0["environment"]),
                       ("summary", t.summary or {})],
    }  # fmt: skip
    pages["index.html"] = env.get_template("run.html").render(ctx)
    for r in recs:
        page, imgs = _prompt_page(r, ctx["run_id"], env)
        images.update(imgs)
        pages[f"prompts/{_stem(r)}.html"] = page
    return pages, images


def _prompt_page(r: dict, run_id: str, env: jinja2.Environment) -> tuple[str, dict[str, Image]]:
    p = r["parity"]
    ids = r["tokenization"].get("ids") or []
    ref_ids, eng_ids = p.get("reference_tokens") or [], p.get("engine_tokens") or []
    by_pos = {q["position"]: q for q in r["per_position"]}
    # the metric at position i belongs to the token it predicts: sequence[i + 1]
    prompt_metrics = [None] + [by_pos.get(i) for i in range(len(ids) - 1)]
    ref_metrics = [by_pos.get(len(ids) - 1 + k) for k in range(len(ref_ids))]
    div = p.get("divergence")
    step = div["step"] if div else None
    ref_texts, eng_texts = pieces(r, ref_ids), pieces(r, eng_ids)
    divergence = None
    if div:
        divergence = dict(div, reference_piece=pieces(r, [div["reference_token"]])[0], engine_piece=pieces(r, [div["engine_token"]])[0])
    topk = []
    for side in ("reference", "engine"):
        rows = (div or {}).get(f"{side}_topk")
        if rows:
            topk.append((side, [dict(t, piece=pieces(r, [t["id"]])[0]) for t in rows]))
    images: dict[str, Image] = {}
    key = _stem(r)
    figs, loc_figs = [], []
    for kind, ylabel, caption in (("1-cosine", "1 − cosine", "1 − cosine similarity of the logits at each teacher-forced position (log scale)."),
                                  ("kld", "KLD (nats)", "KL(reference ‖ engine) at each position (log scale).")):  # fmt: skip
        png = plots.per_position_panels([r], kind, ylabel)
        if png:
            images[f"{key}-{kind}"] = Image(f"{key}-{kind}", png)
            figs.append((images[f"{key}-{kind}"], caption))
    loc = p.get("localisation")
    if loc:
        png = plots.layer_heatmap(loc)
        if png:
            images[f"{key}-layers"] = Image(f"{key}-layers", png)
            loc_figs.append((images[f"{key}-layers"], f"log10 NMSE of each layer's intermediate tensors against the reference's at position {loc['position']}; the first departing cell is outlined."))
    ctx = {
        "title": f"{model_label(r)} · {r['prompt']['id']}", "sortable": False, "run_id": run_id, "model": model_label(r),
        "prompt_id": r["prompt"]["id"], "status": p["status"], "passed": r["verdict"]["passed"], "exact": is_bit_exact(r),
        "failures": r["verdict"]["failures"], "parity": p, "fields": RUN_FIELDS,
        "messages": r["prompt"].get("messages"),
        "prompt_tokens": _tokens(pieces(r, ids), prompt_metrics) if ids else [{"text": r["prompt"]["text"], "cls": "", "title": ""}],
        "legend": [(cls, label) for _, cls, label in KLD_BINS],
        "reference_tokens": _tokens(ref_texts, ref_metrics, step),
        "engine_tokens": _tokens(eng_texts, [None] * len(eng_texts), step),
        "reference_name": (r["backends"].get("reference") or {}).get("name") or "reference",
        "divergence": divergence, "topk": topk, "figs": figs, "localisation": loc, "loc_figs": loc_figs,
        "three_way": r.get("three_way") or p.get("three_way"),
        "provenance": [("model", r["model"]), ("tokenizer", r["tokenizer"]), ("prompt", r["prompt"]), ("config", r["config"]),
                       ("backends", r["backends"]), ("thresholds", r["thresholds"]), ("environment", r["environment"]),
                       ("timing", r.get("timing"))],
    }  # fmt: skip
    return env.get_template("prompt.html").render(ctx), images


def _cell_receipt(matrix_path: Path, rel: str | None) -> dict | None:
    if not rel:
        return None
    from crossval import receipts

    for base in (matrix_path.parent, Path.cwd()):
        q = base / rel
        if q.is_file():
            try:
                return receipts.read_valid(q)
            except receipts.ReceiptError:
                return None
    return None


def _matrix_page(t: Target, env) -> tuple[dict[str, str], dict[str, Image]]:
    rec = t.receipts[0]
    mx, cells = rec["matrix"], rec["cells"]
    models, quants = mx["models"], mx["quants"]
    exact_of = {}
    for c in cells:
        cr = _cell_receipt(t.path, c.get("receipt"))
        exact_of[id(c)] = bool(cr) and is_bit_exact(cr)
    grid_rows = []
    for q in quants:
        row = []
        for mname in models:
            cs = [c for c in cells if c["quant"] == q and c["model"] == mname]
            n_pass = sum(c["passed"] for c in cs)
            n_exact = sum(exact_of[id(c)] for c in cs)
            cls = "other" if not cs else "pass" if n_pass == len(cs) else "fail"
            text = "not run" if not cs else f"{n_pass}/{len(cs)} pass"
            row.append({"key": f"{mname}/{q}", "cls": cls, "text": text, "exact": bool(cs) and n_exact == len(cs),
                        "title": f"{n_exact}/{len(cs)} bit-exact" if cs else ""})  # fmt: skip
        grid_rows.append((q, row))
    cols = [("model", "model", "s"), ("quant", "type", "s"), ("prompt", "prompt", "s"), ("status", "status", "s"),
            ("passed", "passed", "s"), ("bit_exact", "bit-exact", "s"), ("cosine_similarity", "min cosine", ".6f"),
            ("kld_mean", "KLD mean", ".3e"), ("exact_match_rate", "exact match", ".4f"),
            ("first_divergence_step", "first div", "d")]  # fmt: skip
    rows = [dict(c, bit_exact=exact_of[id(c)], _key=f"{c['model']}/{c['quant']}/{c['prompt']}") for c in
            sorted(cells, key=lambda c: (c["passed"], c["model"], c["quant"], c["prompt"]))]  # fmt: skip
    n_exact = sum(exact_of.values())
    ctx = {"title": f"crossval matrix {rec['run_id']}", "sortable": True, "passed": rec.get("passed", all(c["passed"] for c in cells)),
           "headline": f"{'✓ Pass' if all(c['passed'] for c in cells) else '✗ Fail'} — {sum(c['passed'] for c in cells)} of {len(cells)} cells pass",
           "exact_line": f"Bit for bit on {n_exact} of {len(cells)} cells (identical logits and greedy tokens)." if n_exact else "",
           "facts": [("mode", mx["mode"]), ("steps · threads", f"{mx['steps']} · {mx['threads']}"), ("models", ", ".join(models)),
                     ("weight types", ", ".join(quants)), ("prompts", ", ".join(mx["prompts"]))],
           "failures": [f"{c['model']} / {c['quant']} / {c['prompt']}: {f}" for c in cells for f in c["failures"]],
           "sections": [{"heading": "Weight type × model", "id": "grid", "note": "Each cell: prompts passing; ≡ marks cells where every prompt is bit-exact.",
                         "grid": {"corner": "type \\ model", "cols": models, "rows": grid_rows}, "rows": None, "figs": []},
                        {"heading": "Cells", "id": "cells", "note": "Failures first; click a column to sort.", "grid": None, "cols": cols, "rows": rows, "figs": []}],
           "provenance": [("matrix", {k: v for k, v in rec.items() if k != "cells"})]}  # fmt: skip
    return {"index.html": env.get_template("receipt.html").render(ctx)}, {}


def _sweep_page(t: Target, env) -> tuple[dict[str, str], dict[str, Image]]:
    rec = t.receipts[0]
    images, sections = {}, []
    for kind in ("threads", "batch", "context"):
        pts = rec.get(kind)
        if not pts:
            continue
        xkey = next((k for k in ("threads", "batch", "n_tokens", "tokens", "context", "length") if k in pts[0]), None)
        num = [k for k, v in pts[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        cols = [(k, k.replace("_", " "), "d" if isinstance(pts[0][k], int) else ".6g") for k in num] + [("passed", "passed", "s")]
        figs = []
        if xkey and "cosine_similarity" in pts[0]:
            png = plots.series({"1 − min cosine": ([q[xkey] for q in pts], [max(1 - q["cosine_similarity"], plots.FLOOR) for q in pts])},
                               xkey, "1 − min cosine", log=True)  # fmt: skip
            if png:
                images[f"sweep-{kind}"] = Image(f"sweep-{kind}", png)
                figs.append((images[f"sweep-{kind}"], f"1 − min cosine against the reference as {xkey} varies (log scale; {plots.FLOOR:g} stands for identical)."))
        rows = [dict(q, _key=f"{kind}/{i}") for i, q in enumerate(pts)]
        sections.append({"heading": f"{kind} sweep", "id": kind, "note": None, "grid": None, "cols": cols, "rows": rows, "figs": figs})
    ctx = {"title": f"crossval sweep {rec['run_id']}", "sortable": True, "passed": rec["verdict"]["passed"],
           "headline": f"{'✓ Pass' if rec['verdict']['passed'] else '✗ Fail'} — invariance sweeps of {model_label(rec)}",
           "exact_line": "", "facts": [("engine", _backend_line(rec["backends"]["engine"])), ("reference", _backend_line(rec["backends"].get("reference"))),
                                       ("kinds", ", ".join(rec["config"]["kinds"])), ("thresholds", rec["thresholds"]["profile"])],
           "failures": rec["verdict"]["failures"], "sections": sections,
           "provenance": [("backends", rec["backends"]), ("config", rec["config"]), ("environment", rec["environment"])]}  # fmt: skip
    return {"index.html": env.get_template("receipt.html").render(ctx)}, images


def _envelope_page(t: Target, env) -> tuple[dict[str, str], dict[str, Image]]:
    rec = t.receipts[0]
    cols = [("name", "config", "s"), ("temperature", "temperature", ".3g"), ("top_k", "top-k", "d"), ("top_p", "top-p", ".3g"),
            ("min_p", "min-p", ".3g"), ("samples", "samples", "d"), ("exact_sequence_match_rate", "identical sequences", ".3f"),
            ("min_p_value", "min p-value", ".3g"), ("passed", "passed", "s")]  # fmt: skip
    series = {c["name"]: ([s["step"] for s in c["steps"] if s["p_value"] is not None], [s["p_value"] for s in c["steps"] if s["p_value"] is not None])
              for c in rec["configs"]}  # fmt: skip
    images, figs = {}, []
    png = plots.series(series, "step", "χ² p-value", log=True, hline=rec["thresholds"]["alpha"])
    if png:
        images["envelope-p"] = Image("envelope-p", png)
        figs.append((images["envelope-p"], f"χ² p-value of the engine's and the reference's token distributions at each step, per config (dotted: α = {rec['thresholds']['alpha']})."))
    ctx = {"title": f"crossval envelope {rec['run_id']}", "sortable": True, "passed": rec["verdict"]["passed"],
           "headline": f"{'✓ Pass' if rec['verdict']['passed'] else '✗ Fail'} — {sum(c['passed'] for c in rec['configs'])} of {len(rec['configs'])} sampling configs inside the envelope",
           "exact_line": "", "facts": [("engine", _backend_line(rec["backends"]["engine"])), ("reference", _backend_line(rec["backends"]["reference"])),
                                       ("seeds · steps", f"{rec['config']['seeds']} · {rec['config']['steps']}"), ("test", rec["test"])],
           "failures": rec["verdict"]["failures"],
           "sections": [{"heading": "Sampling configs", "id": "configs", "note": None, "grid": None, "cols": cols,
                         "rows": [dict(c, _key=c["name"]) for c in rec["configs"]], "figs": figs}],
           "provenance": [("backends", rec["backends"]), ("config", rec["config"]), ("thresholds", rec["thresholds"]), ("environment", rec["environment"])]}  # fmt: skip
    return {"index.html": env.get_template("receipt.html").render(ctx)}, images


# the perf table: throughput and ratios, then the memory roofline bench measures in the same run
# (crossval/roofline.py): read bandwidth, each engine's decode fraction of bandwidth ÷ bytes per
# token, each engine's prefill int8 GOP/s against the dot-product kernel's measured peak
PERF_COLS = [("threads", "threads", "d"), ("engine_decode_tok_s", "engine decode tok/s", ".1f"),
             ("llamacpp_decode_tok_s", "llama.cpp decode tok/s", ".1f"), ("decode_ratio", "decode ratio", ".3f"),
             ("engine_prefill_tok_s", "engine prefill tok/s", ".1f"), ("llamacpp_prefill_tok_s", "llama.cpp prefill tok/s", ".1f"),
             ("prefill_ratio", "prefill ratio", ".3f"), ("decode_bytes_per_token", "decode bytes/token", "d"),
             ("stream_gb_s", "read GB/s", ".2f"), ("engine_decode_roofline", "engine decode roofline", ".3f"),
             ("llamacpp_decode_roofline", "llama.cpp decode roofline", ".3f"), ("matmul_peak_gop_s", "int8 peak GOP/s", ".1f"),
             ("engine_prefill_gop_s", "engine prefill GOP/s", ".1f"), ("llamacpp_prefill_gop_s", "llama.cpp prefill GOP/s", ".1f"),
             ("mode", "mode", "s")]  # fmt: skip


def _perf_page(t: Target, env) -> tuple[dict[str, str], dict[str, Image]]:
    recs = sorted(t.receipts, key=lambda r: r["timestamp"])
    images, sections = {}, []
    for model in dict.fromkeys(model_label(r) for r in recs):
        mr = [r for r in recs if model_label(r) == model]
        figs = []
        trends = (("decode_ratio", "decode: engine ÷ llama.cpp", 1.0, "decode tokens/s of the engine divided by llama.cpp's in the same run"),
                  ("prefill_ratio", "prefill: engine ÷ llama.cpp", 1.0, "prefill tokens/s of the engine divided by llama.cpp's in the same run"),
                  ("engine_decode_roofline", "engine decode ÷ roofline", None,
                   "the engine's decode tokens/s × bytes per token ÷ the read bandwidth measured in the same run (receipts that record it)"))  # fmt: skip
        for field, ylabel, hline, what in trends:
            series = {}
            for r in mr:
                when = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
                for res in r["results"]:
                    if res.get(field) is None:
                        continue
                    xs, ys = series.setdefault(f"{res['threads']} thread(s)", ([], []))
                    xs.append(when)
                    ys.append(res[field])
            png = plots.series(series, "recorded", ylabel, hline=hline, xdates=True)
            if png:
                name = f"{model}-{field}".replace("/", "_")
                images[name] = Image(name, png)
                figs.append((images[name], f"{model}: {what}, over the recorded perf receipts{' (dotted: parity)' if hline else ''}."))
        last = mr[-1]
        per_token = (last.get("roofline") or {}).get("decode_bytes_per_token")
        rows = [{**{f: res.get(f) for f, _, _ in PERF_COLS}, "decode_bytes_per_token": per_token, "mode": last["engine"]["mode"],
                 "_key": f"{last['_file']}/{i}"} for i, res in enumerate(last["results"])]  # fmt: skip
        note = f"{len(mr)} recorded receipts; the table is the latest ({last['timestamp']})."
        if per_token:
            note += (f" A decode step streams every weight once: {per_token / 1e6:.1f} MB per token; roofline = tokens/s × that ÷ the"
                     f" read bandwidth measured in the same run.")  # fmt: skip
        sections.append({"heading": model, "id": f"perf-{model}", "note": note, "grid": None, "cols": PERF_COLS, "rows": rows, "figs": figs})
    latest = recs[-1]
    ctx = {"title": "crossval bench trend", "sortable": True, "passed": True,
           "headline": f"Bench trend — {len(recs)} perf receipts, {len(sections)} model(s)", "exact_line": "",
           "facts": [("folder", str(t.path)), ("latest", latest["timestamp"]), ("reference", _backend_line(latest["reference"]))],
           "failures": [], "sections": sections, "provenance": [("latest receipt", {k: v for k, v in latest.items() if k != "_file"})]}  # fmt: skip
    return {"index.html": env.get_template("receipt.html").render(ctx)}, images


def render(t: Target) -> tuple[dict[str, str], dict[str, Image]]:
    """{relative file name: html}, {figure name: Image} for a resolved target."""
    env = _env()
    return {"run": _run_pages, "matrix": _matrix_page, "sweep": _sweep_page, "envelope": _envelope_page, "perf": _perf_page}[t.kind](t, env)
