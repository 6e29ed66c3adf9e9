"""Pure metric functions (definitions: docs/metrics.md): arrays in, numbers out. No I/O, no backends.

Logit arrays are (n_positions, n_vocab); softmaxes and sums run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_TIE_LOGPROB_GAP = 1e-3  # docs/metrics.md: a divergence with |logprob gap| below this is a near-tie
DIVERGENCE_TOPK = 5  # tokens of each side's distribution kept at the first divergence


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, vocab) arrays, accumulated in float64 → (n,).
    Two all-zero rows count as identical (1.0); one zero row against a non-zero one as 0.0."""
    a, b = np.asarray(a), np.asarray(b)
    dot = lambda x, y: np.einsum("ij,ij->i", x, y, dtype=np.float64)  # noqa: E731
    return _cosine(dot(a, b), dot(a, a), dot(b, b), a, b)


def _cosine(ab: np.ndarray, aa: np.ndarray, bb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos = a·b / √(a·a · b·b) from the three dot products; rows with no positive denominator
    are 1.0 when a == b there, else 0.0 (those rows alone are compared)."""
    den = np.sqrt(aa * bb)
    flat = ~(den > 0)
    same = np.zeros(len(den), dtype=bool)
    if flat.any():
        same[flat] = np.all(a[flat] == b[flat], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, ab / np.where(den > 0, den, 1.0), np.where(same, 1.0, 0.0))
    return np.clip(out, -1.0, 1.0)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kld_rows(ref: np.ndarray, eng: np.ndarray) -> np.ndarray:
    """KL(ref ‖ eng) of the softmaxes, per row → (n,), in nats (never negative).
    With c = max + log Σ exp(x − max): log p − log q = (r − e) − c_r + c_e, so
    KL = Σ p·(r − e) − c_r + c_e, which needs one exp pass per side. Exponentials run in the
    inputs' precision (float32 logits stay float32), every sum in float64."""
    r, e = np.asarray(ref), np.asarray(eng)
    mr, me = r.max(axis=-1, keepdims=True), e.max(axis=-1, keepdims=True)
    pr = np.exp(r - mr)
    zr = pr.sum(axis=-1, dtype=np.float64)
    ze = np.exp(e - me).sum(axis=-1, dtype=np.float64)
    cross = np.einsum("ij,ij->i", pr, r - e, dtype=np.float64) / zr
    return np.maximum(0.0, cross - (mr[:, 0] + np.log(zr)) + (me[:, 0] + np.log(ze)))


def max_abs_diff_rows(ref: np.ndarray, eng: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(ref, np.float64) - np.asarray(eng, np.float64)).max(axis=-1)


def top1_agreement(ref: np.ndarray, eng: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(eng, axis=-1)))


def topk_overlap_rows(ref: np.ndarray, eng: np.ndarray, k: int) -> np.ndarray:
    """|topk(ref) ∩ topk(eng)| / k per row → (n,)."""
    k = min(k, ref.shape[-1])
    a = np.argpartition(-np.asarray(ref), k - 1, axis=-1)[:, :k]
    b = np.argpartition(-np.asarray(eng), k - 1, axis=-1)[:, :k]
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)])


def rank_of(logits: np.ndarray, token: int) -> int:
    """0-based rank of token in a logit row (0 = the argmax; ties rank by lower index first)."""
    row = np.asarray(logits)
    v = row[token]
    return int(np.sum(row > v) + np.sum(row[:token] == v))


def ref_top1_rank_rows(ref: np.ndarray, eng: np.ndarray) -> np.ndarray:
    """Rank, in our logits, of the reference's top-1 token, per row → (n,) ints."""
    return np.array([rank_of(e, int(np.argmax(r))) for r, e in zip(ref, eng)], dtype=np.int64)


@dataclass(frozen=True)
class TeacherForced:
    """Per-position and summary metrics of teacher-forced logits (reference vs engine)."""

    cosine: np.ndarray
    kld: np.ndarray
    max_abs: np.ndarray
    top1: np.ndarray  # bool per position
    top5: np.ndarray
    top10: np.ndarray
    ref_top1_rank: np.ndarray
    # where the top-1 tokens differ: min over the two backends of how far each prefers its own
    # top-1 over the other's, in logits (= in logprob: one row shares one normaliser); NaN where they agree
    top1_margin: np.ndarray

    def summary(self) -> dict:
        return {
            "positions": int(len(self.cosine)),
            "cosine_similarity": float(self.cosine.min()),
            "cosine_mean": float(self.cosine.mean()),
            "cosine_min_position": int(self.cosine.argmin()),
            "max_abs_diff": float(self.max_abs.max()),
            "kld_mean": float(self.kld.mean()),
            "kld_max": float(self.kld.max()),
            "top1_agreement": float(self.top1.mean()),
            "top5_overlap": float(self.top5.mean()),
            "top10_overlap": float(self.top10.mean()),
            "ref_top1_rank_max": int(self.ref_top1_rank.max()),
        }

    def rows(self) -> list[dict]:
        return [
            {
                "position": i,
                "cosine": float(self.cosine[i]),
                "kld": float(self.kld[i]),
                "max_abs_diff": float(self.max_abs[i]),
                "top1_match": bool(self.top1[i]),
                "top5_overlap": float(self.top5[i]),
                "top10_overlap": float(self.top10[i]),
                "ref_top1_rank": int(self.ref_top1_rank[i]),
                "top1_margin": None if np.isnan(self.top1_margin[i]) else float(self.top1_margin[i]),
            }
            for i in range(len(self.cosine))
        ]


def teacher_forced_parts(parts: list[tuple[np.ndarray, np.ndarray]]) -> TeacherForced:
    """teacher_forced over consecutive blocks of positions, without concatenating the logits."""
    done = [teacher_forced(r, e) for r, e in parts if len(r)]
    return TeacherForced(*(np.concatenate([getattr(t, f) for t in done]) for f in TeacherForced.__dataclass_fields__))


def teacher_forced(ref: np.ndarray, eng: np.ndarray, chunk: int = 8) -> TeacherForced:
    """Every per-position metric, computed in row chunks (float64 inside a chunk) so that a
    (1000, 262144) pair costs a few passes over memory, not a dozen float64 copies. Chunks stay
    small (8 rows): their temporaries are reused by the allocator instead of being mapped afresh.

    Rows that are bit-identical on both sides and finite (every row of a faithful run) take their
    values in closed form, which is what the general formulas give on identical inputs (checked
    bit for bit by tests/test_compare.py): cosine 1 — a·a / √((a·a)²) = 1 exactly, as √(x·x) = x
    in binary floating point without over- or underflow and a sum of at most 2^24 squares of
    float32 values has neither (an all-zero row is 1 by the zero-row rule) —, KL 0, max |Δ| 0,
    top-k overlap 1, top-1 match, rank 0."""
    if ref.shape != eng.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape} vs engine {eng.shape}")
    n = ref.shape[0]
    out = {k: np.empty(n) for k in ("cosine", "kld", "max_abs", "top5", "top10")}
    top1 = np.empty(n, dtype=bool)
    rank = np.empty(n, dtype=np.int64)
    margin = np.full(n, np.nan)
    for s in range(0, n, chunk):
        # float32 operands, float64 accumulation: exact enough for every metric (the tests compare
        # with the float64 row functions) at half the memory traffic
        r = np.ascontiguousarray(ref[s : s + chunk], dtype=np.float32)
        e = np.ascontiguousarray(eng[s : s + chunk], dtype=np.float32)
        idx = np.arange(s, s + len(r))
        # NaN/inf rows take the general formulas, whatever they give (max/min propagate both)
        same = (r.shape[1] <= 1 << 24) & np.all(r.view(np.uint32) == e.view(np.uint32), axis=1) & np.isfinite(r.max(axis=1)) & np.isfinite(r.min(axis=1))
        if same.any():
            i = idx[same]
            out["cosine"][i] = 1.0
            for k in ("kld", "max_abs"):
                out[k][i] = 0.0
            out["top5"][i] = out["top10"][i] = 1.0
            top1[i], rank[i] = True, 0
        if not same.all():
            diff = ~same
            _teacher_forced_rows(r[diff], e[diff], idx[diff], out, top1, rank, margin)
    return TeacherForced(out["cosine"], out["kld"], out["max_abs"], top1, out["top5"], out["top10"], rank, margin)


def _teacher_forced_rows(r: np.ndarray, e: np.ndarray, idx: np.ndarray, out: dict, top1, rank, margin) -> None:
    """The general per-position metrics of rows r, e (float32), stored at positions idx."""
    dot = lambda x, y: np.einsum("ij,ij->i", x, y, dtype=np.float64)  # noqa: E731
    out["cosine"][idx] = _cosine(dot(r, e), dot(r, r), dot(e, e), r, e)
    out["kld"][idx] = kld_rows(r, e)
    out["max_abs"][idx] = np.abs(r - e).max(axis=1)
    k = min(10, r.shape[1])
    rt, et = top_k_ids(r, k), top_k_ids(e, k)  # by value, ties lower id first: top-5 is a prefix of top-10
    k5 = min(5, k)
    out["top5"][idx] = (rt[:, :k5, None] == et[:, None, :k5]).any(axis=2).sum(axis=1) / k5
    out["top10"][idx] = (rt[:, :, None] == et[:, None, :]).any(axis=2).sum(axis=1) / k
    ref_top, eng_top = np.argmax(r, axis=1), np.argmax(e, axis=1)
    top1[idx] = ref_top == eng_top
    rows = np.arange(len(r))
    m = np.minimum(r[rows, ref_top].astype(np.float64) - r[rows, eng_top], e[rows, eng_top].astype(np.float64) - e[rows, ref_top])
    margin[idx] = np.where(ref_top == eng_top, np.nan, m)
    # rank of the reference's top-1 in ours = #(e > v) + #(e == v at a lower id): its place in our
    # top-k when it is there (and v is a number), else counted over the row
    v = e[rows, ref_top]
    hit = (et == ref_top[:, None]) & ~np.isnan(v)[:, None]
    found = hit.any(axis=1)
    rk = np.argmax(hit, axis=1)
    for j in np.flatnonzero(~found):
        rk[j] = np.count_nonzero(e[j] > v[j]) + np.count_nonzero(e[j, : ref_top[j]] == v[j])
    rank[idx] = rk


def top_k_ids(x: np.ndarray, k: int, groups: int = 64) -> np.ndarray:
    """Per row of x (n, V), the ids of its k largest values, largest first, equal values by lower
    id, NaN last — the order np.lexsort((ids, -x)) gives — without sorting whole rows.

    The first groups·W ids (W = V // groups) are split into W columns of `groups` ids each (id
    c + W·g, g < groups); the rest (fewer than `groups`) are always candidates. If the k columns
    with the largest maxima have every maximum ≥ t (the smallest of those k) and no other column
    reaches t, then ≥ k values are ≥ t, so the k-th largest value is ≥ t and every top-k value lies
    in those k columns or the rest: only their k·groups (+ rest) values are sorted. Rows with a tie
    at t or a NaN sort the whole row."""
    x = np.asarray(x)
    n, V = x.shape
    W = V // groups
    if W <= k:
        return np.lexsort((np.broadcast_to(np.arange(V), x.shape), -x), axis=1)[:, :k]
    cmax = x[:, : groups * W].reshape(n, groups, W).max(axis=1)  # (n, W)
    cols = np.argpartition(-cmax, k - 1, axis=1)[:, :k]
    t = np.take_along_axis(cmax, cols, 1).min(axis=1)
    clean = (np.count_nonzero(cmax >= t[:, None], axis=1) == k) & ~np.isnan(cmax).any(axis=1)
    ids = (cols[:, :, None] + W * np.arange(groups)).reshape(n, -1)
    if V > groups * W:
        ids = np.concatenate([ids, np.broadcast_to(np.arange(groups * W, V), (n, V - groups * W))], axis=1)
    vals = np.take_along_axis(x, ids, 1)
    top = np.take_along_axis(ids, np.lexsort((ids, -vals), axis=1)[:, :k], 1)
    for j in np.flatnonzero(~clean):
        top[j] = np.lexsort((np.arange(V), -x[j]))[:k]
    return top


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token sequences differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def exact_match_rate(ref: list[int], eng: list[int], steps: int) -> float:
    """Matched steps ÷ steps, comparing step by step (a missing step counts as a mismatch)."""
    if steps <= 0:
        return 1.0
    return sum(1 for i in range(steps) if i < len(ref) and i < len(eng) and ref[i] == eng[i]) / steps


def top_logprobs(logits: np.ndarray, k: int = DIVERGENCE_TOPK) -> list[dict]:
    """The k most likely tokens of one logit row: [{id, logprob}], logprob = log_softmax(logits)[id],
    most likely first (ties by lower id, as a stable argsort gives them)."""
    lp = log_softmax(logits[None])[0]
    ids = np.argsort(-lp, kind="stable")[:k]
    return [{"id": int(i), "logprob": float(lp[i])} for i in ids]


def divergence_detail(ref_tok: int, eng_tok: int, ref_logits: np.ndarray, eng_logits: np.ndarray) -> dict:
    """At the first divergent step: each token's rank and logprob in both backends' logits, whether
    it is a near-tie (either backend's logprob gap between the two tokens < 1e-3), and each side's
    top-k tokens there."""
    lr, le = log_softmax(ref_logits[None])[0], log_softmax(eng_logits[None])[0]
    gap_ref = float(lr[ref_tok] - lr[eng_tok])
    gap_eng = float(le[eng_tok] - le[ref_tok])
    return {
        "reference_token": int(ref_tok),
        "engine_token": int(eng_tok),
        "reference_token_rank_in_engine": rank_of(eng_logits, ref_tok),
        "engine_token_rank_in_reference": rank_of(ref_logits, eng_tok),
        "reference_logprobs": {"reference_token": float(lr[ref_tok]), "engine_token": float(lr[eng_tok])},
        "engine_logprobs": {"reference_token": float(le[ref_tok]), "engine_token": float(le[eng_tok])},
        "logprob_gap_reference": gap_ref,
        "logprob_gap_engine": gap_eng,
        "near_tie": bool(abs(gap_ref) < NEAR_TIE_LOGPROB_GAP or abs(gap_eng) < NEAR_TIE_LOGPROB_GAP),
        "reference_topk": top_logprobs(ref_logits),
        "engine_topk": top_logprobs(eng_logits),
    }


STAGE_ORDER = ("kqv_out", "ffn_inp", "l_out")


def nmse(ours: np.ndarray, ref: np.ndarray) -> float:
    """Normalised mean squared error: mean((a - r)²) / mean(r²) (0 when identical)."""
    a, r = np.asarray(ours, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    den = float(np.mean(r * r))
    return float(np.mean((a - r) ** 2) / den) if den > 0 else float(np.any(a != r))


def localise(engine_rows: dict[str, np.ndarray], reference_rows: dict[str, np.ndarray], threshold: float) -> dict:
    """Per-layer localisation at one position: rows are keyed "<stage>-<layer>" (stage in
    STAGE_ORDER). Returns every (layer, stage, nmse) in graph order and the first whose NMSE
    exceeds threshold (None when none does)."""
    rows = []
    keys = [k for k in engine_rows if k in reference_rows and k.rsplit("-", 1)[0] in STAGE_ORDER]
    keys.sort(key=lambda k: (int(k.rsplit("-", 1)[1]), STAGE_ORDER.index(k.rsplit("-", 1)[0])))
    first = None
    for k in keys:
        stage, layer = k.rsplit("-", 1)
        e = nmse(engine_rows[k], reference_rows[k])
        rows.append({"layer": int(layer), "stage": stage, "nmse": e})
        if first is None and e > threshold:
            first = rows[-1]
    return {"threshold": threshold, "first": first, "layers": rows}


def _odd_one_out(values: list, names: list[str]) -> str | None:
    """Of three values, the name of the one that differs from the two that agree (None: all three
    agree or all differ)."""
    for i in range(3):
        a, b = (values[j] for j in range(3) if j != i)
        if a == b != values[i]:
            return names[i]
    return None


def three_way(names: list[str], logits: list[np.ndarray], tokens: list[list[int]], first_position: int = 0,
              max_listed: int = 32) -> dict:  # fmt: skip
    """Three backends' teacher-forced logits over one sequence (same shape each) and their own
    greedy continuations. Pairwise metrics; at every position where their top-1 tokens disagree,
    the odd one out (the backend whose top-1 differs from the other two's); the same at the
    first free-running step where the three continuations part; and the backend farthest from
    the other two (lowest mean of its two pairwise mean cosines)."""
    pairs, mean_cos = {}, {n: [] for n in names}
    for i in range(3):
        for j in range(i + 1, 3):
            tf = teacher_forced(logits[i], logits[j])
            pairs[f"{names[i]}~{names[j]}"] = {
                "cosine_min": float(tf.cosine.min()), "cosine_mean": float(tf.cosine.mean()),
                "kld_mean": float(tf.kld.mean()), "top1_agreement": float(tf.top1.mean()),
                "first_divergence_step": first_divergence(tokens[i], tokens[j]),
            }  # fmt: skip
            mean_cos[names[i]].append(float(tf.cosine.mean()))
            mean_cos[names[j]].append(float(tf.cosine.mean()))
    top = [np.argmax(x, axis=1) for x in logits]
    counts = {n: 0 for n in names} | {"all_differ": 0}
    listed = []
    for p in range(len(top[0])):
        t = [int(top[k][p]) for k in range(3)]
        if len(set(t)) == 1:
            continue
        odd = _odd_one_out(t, names)
        counts[odd or "all_differ"] += 1
        if len(listed) < max_listed:
            listed.append({"position": p + first_position, "top1": dict(zip(names, t)), "odd_one_out": odd})
    first = None
    for s in range(min(len(t) for t in tokens)):
        step = [int(tokens[k][s]) for k in range(3)]
        if len(set(step)) > 1:
            first = {"step": s, "tokens": dict(zip(names, step)), "odd_one_out": _odd_one_out(step, names)}
            break
    farthest = min(names, key=lambda n: sum(mean_cos[n]) / 2)
    return {"backends": list(names), "pairs": pairs, "disagreements": listed, "odd_one_out_counts": counts,
            "first_divergence": first, "farthest": farthest}  # fmt: skip


# --- sampling envelope statistics (crossval envelope) -------------------------------------------
def distinct_n(sequences: list[list[int]], n: int) -> float | None:
    """Distinct-n: distinct n-grams ÷ all n-grams over the sequences (None when there are none)."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def token_frequency_test(a: list, b: list, min_expected: float = 5.0) -> dict:
    """Are two samples of categorical outcomes (here (prompt, token) pairs at one step) drawn from
    the same distribution? Pearson's chi-square test of homogeneity on the 2 × m table of counts
    (scipy.stats.chi2_contingency); categories whose pooled count is below min_expected are merged
    into one "other" category per prompt (first element of the pair) so that expected counts stay
    usable. Also the Jensen-Shannon divergence (nats) of the two frequency vectors."""
    from collections import Counter

    from scipy.stats import chi2_contingency

    ca, cb = Counter(a), Counter(b)
    pooled = ca + cb

    def merge(k):
        return k if pooled[k] >= min_expected else (k[0] if isinstance(k, tuple) else None, "other")

    ma, mb = Counter(merge(k) for k in a), Counter(merge(k) for k in b)
    cats = sorted(set(ma) | set(mb), key=repr)
    table = np.array([[ma[c] for c in cats], [mb[c] for c in cats]], dtype=np.float64)
    pa = np.array([ca[k] for k in pooled], dtype=np.float64) / max(len(a), 1)
    pb = np.array([cb[k] for k in pooled], dtype=np.float64) / max(len(b), 1)
    m = (pa + pb) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        js = 0.5 * np.nansum(np.where(pa > 0, pa * np.log(pa / m), 0)) + 0.5 * np.nansum(np.where(pb > 0, pb * np.log(pb / m), 0))
    out = {"categories": len(cats), "chi2": None, "dof": None, "p_value": None, "js_divergence": float(js)}
    if len(cats) >= 2 and table.sum(axis=1).all():
        res = chi2_contingency(table, correction=False)
        out.update(chi2=float(res.statistic), dof=int(res.dof), p_value=float(res.pvalue))
    return out


def welch_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) that a and b share a mean; None
    with fewer than two values on a side or no variance at all."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return None
    return float(ttest_ind(a, b, equal_var=False).pvalue)
