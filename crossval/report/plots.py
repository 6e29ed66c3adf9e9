"""The report's figures (PNG bytes from matplotlib's Agg backend), drawn only from receipt fields.

Colours are the Okabe–Ito set (distinguishable with every common colour-vision deficiency); lines
also differ by marker so no figure relies on colour alone. Per-position curves are small multiples:
one panel per prompt, one figure per model, shared axes so panels compare at a glance.
"""

from __future__ import annotations

import io
import math

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
FLOOR = 1e-12  # log axes: a zero difference is drawn on this floor (and said so in the caption)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def plain(label: str) -> str:
    """A label matplotlib draws as written: '$' would start mathtext, and a malformed formula in a
    prompt id or model name would abort the report."""
    return str(label).replace("$", r"\$")


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def per_position_panels(recs: list[dict], key: str, ylabel: str) -> bytes | None:
    """One panel per receipt (prompt) of `key` per teacher-forced position ("1-cosine" or "kld"),
    log scale, a shared y axis (and x, unless the prompts' lengths differ more than 4×). None when
    every value is exactly zero (nothing to draw)."""
    rows = [r for r in recs if r["per_position"]]

    def value(q):
        return 1 - q["cosine"] if key == "1-cosine" else q["kld"]

    if not rows or all(value(q) <= 0 for r in rows for q in r["per_position"]):
        return None
    plt = _plt()
    nr, nc = _grid(len(rows))
    size = (6.5, 2.2) if len(rows) == 1 else (2.6 * nc, 1.9 * nr)
    lengths = [len(r["per_position"]) for r in rows]
    sharex = max(lengths) <= 4 * min(lengths)  # one long prompt would squeeze the others into a sliver
    fig, axes = plt.subplots(nr, nc, figsize=size, sharex=sharex, sharey=True, squeeze=False)
    for ax, r in zip(axes.flat, rows):
        pos = [q["position"] for q in r["per_position"]]
        ax.plot(pos, [max(value(q), FLOOR) for q in r["per_position"]], lw=1.0, color=OKABE_ITO[0])
        step = r["parity"].get("first_divergence_step")
        if step is not None:
            n_prompt = r["prompt"]["n_tokens"] or 0
            ax.axvline(n_prompt + step - 1, color=OKABE_ITO[5], lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(plain(r["prompt"]["id"]))
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("position")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _png(fig)


def topk_bars(recs: list[dict]) -> bytes | None:
    """Top-1 / top-5 / top-10 agreement per prompt (teacher-forced), grouped bars."""
    scored = [r for r in recs if r["parity"].get("top1_agreement") is not None]
    if not scored:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(scored) + 1.5), 2.6))
    width = 0.27
    for i, (k, lab) in enumerate((("top1_agreement", "top-1"), ("top5_overlap", "top-5"), ("top10_overlap", "top-10"))):
        xs = [j + (i - 1) * width for j in range(len(scored))]
        ax.bar(xs, [r["parity"][k] for r in scored], width=width, label=lab, color=OKABE_ITO[i], hatch=["", "//", ".."][i])
    ax.set_xticks(range(len(scored)), [plain(r["prompt"]["id"]) for r in scored], rotation=30, ha="right")
    low = min(r["parity"]["top1_agreement"] for r in scored)
    ax.set_ylim(min(0.8, low - 0.02), 1.005)
    ax.set_ylabel("agreement")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=7, ncols=3, frameon=False)
    fig.tight_layout()
    return _png(fig)


def logit_diff_hist(recs: list[dict]) -> bytes | None:
    vals = [q["max_abs_diff"] for r in recs for q in r["per_position"]]
    if not vals or max(vals) == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.4))
    ax.hist(vals, bins=40, color=OKABE_ITO[0])
    ax.set_xlabel("max |Δlogit| at a position")
    ax.set_ylabel("positions")
    fig.tight_layout()
    return _png(fig)


def layer_heatmap(loc: dict) -> bytes | None:
    """log10 NMSE per (stage, layer) of one localisation; the first departing cell outlined."""
    layers = loc.get("layers") or []
    if not layers:
        return None
    import numpy as np

    plt = _plt()
    stages = list(dict.fromkeys(q["stage"] for q in layers))
    n_layer = 1 + max(q["layer"] for q in layers)
    grid = np.full((len(stages), n_layer), np.nan)
    for q in layers:
        grid[stages.index(q["stage"]), q["layer"]] = math.log10(max(q["nmse"], 1e-16))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * n_layer + 2), 0.32 * len(stages) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap="cividis")
    ax.set_yticks(range(len(stages)), [plain(s) for s in stages])
    ax.set_xlabel("layer")
    first = loc.get("first")
    if first:
        ax.add_patch(plt.Rectangle((first["layer"] - 0.5, stages.index(first["stage"]) - 0.5), 1, 1, fill=False, ec="#D55E00", lw=2))
    fig.colorbar(im, ax=ax, label="log10 NMSE")
    fig.tight_layout()
    return _png(fig)


def series(xs_by_label: dict[str, tuple[list, list]], xlabel: str, ylabel: str, log: bool = False,
           hline: float | None = None, xdates: bool = False) -> bytes | None:  # fmt: skip
    """Lines (one per label, colour + marker) on one axis: sweeps, envelope steps, perf trends."""
    if not any(xs for xs, _ in xs_by_label.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 2.6))
    for i, (lab, (xs, ys)) in enumerate(xs_by_label.items()):
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], ms=3.5, lw=1.0, color=OKABE_ITO[i % len(OKABE_ITO)], label=plain(lab))
    if hline is not None:
        ax.axhline(hline, color="#555555", lw=0.8, ls=":")
    if log:
        ax.set_yscale("log")
    if xdates:
        fig.autofmt_xdate()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(xs_by_label) > 1:
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return _png(fig)
