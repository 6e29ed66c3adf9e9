"""Metric functions on hand-made arrays with closed-form answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossval import compare as C


def test_identical_logits():
    x = np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32)
    tf = C.teacher_forced(x, x.copy())
    s = tf.summary()
    assert s["cosine_similarity"] == pytest.approx(1.0, abs=1e-12)
    assert s["kld_mean"] == pytest.approx(0.0, abs=1e-12) and s["kld_max"] == pytest.approx(0.0, abs=1e-12)
    assert s["top1_agreement"] == 1.0 and s["top5_overlap"] == 1.0 and s["top10_overlap"] == 1.0
    assert s["max_abs_diff"] == 0.0 and s["ref_top1_rank_max"] == 0


def test_cosine_closed_form():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(C.cosine_rows(a, b), [0.0, 1 / math.sqrt(2), 1.0, 0.0])


def test_swapped_top1_known_values():
    """Two tokens with logits (1, 0) vs (0, 1): KL = (p - q)·(log p - log q) with p = σ(1)."""
    ref = np.array([[1.0, 0.0, -50.0]])
    eng = np.array([[0.0, 1.0, -50.0]])
    p = 1 / (1 + math.exp(-1))
    want_kl = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
    assert C.kld_rows(ref, eng)[0] == pytest.approx(want_kl, rel=1e-9)
    assert C.top1_agreement(ref, eng) == 0.0
    assert C.ref_top1_rank_rows(ref, eng)[0] == 1
    assert C.max_abs_diff_rows(ref, eng)[0] == 1.0


def test_topk_overlap():
    ref = np.array([[10, 9, 8, 7, 6, 5, 0, 0, 0, 0, 0, 0.0]])
    eng = np.array([[10, 9, 8, 0, 0, 0, 7, 6, 5, 0, 0, 0.0]])
    assert C.topk_overlap_rows(ref, eng, 5)[0] == pytest.approx(3 / 5)


def test_rank_and_ties():
    row = np.array([1.0, 3.0, 3.0, 2.0])
    assert C.rank_of(row, 1) == 0 and C.rank_of(row, 2) == 1 and C.rank_of(row, 3) == 2 and C.rank_of(row, 0) == 3


def test_generation_metrics():
    assert C.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert C.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert C.first_divergence([1, 2], [1, 2, 3]) == 2
    assert C.exact_match_rate([1, 2, 3, 4], [1, 9, 3, 9], 4) == 0.5
    assert C.exact_match_rate([1, 2], [1, 2], 4) == 0.5


def test_divergence_detail_near_tie():
    ref = np.array([2.0, 2.0 - 1e-4, -1.0])
    eng = np.array([2.0 - 1e-4, 2.0, -1.0])
    d = C.divergence_detail(0, 1, ref, eng)
    assert d["near_tie"] is True
    assert d["reference_token_rank_in_engine"] == 1 and d["engine_token_rank_in_reference"] == 1
    far = C.divergence_detail(0, 2, np.array([5.0, 0.0, 0.0]), np.array([0.0, 0.0, 5.0]))
    assert far["near_tie"] is False and far["logprob_gap_reference"] == pytest.approx(5.0, rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        C.teacher_forced(np.zeros((2, 3)), np.zeros((3, 3)))


def test_teacher_forced_parts_equal_whole():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((70, 40)), rng.standard_normal((70, 40))
    whole = C.teacher_forced(a, b, chunk=8)
    parts = C.teacher_forced_parts([(a[:33], b[:33]), (a[33:], b[33:])])
    for f in ("cosine", "kld", "max_abs", "top1", "top5", "top10", "ref_top1_rank"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(parts, f))
    # and the chunked code agrees with the one-row-at-a-time definitions
    np.testing.assert_allclose(whole.cosine, C.cosine_rows(a, b), atol=1e-6)  # float32 operands
    np.testing.assert_allclose(whole.top5, C.topk_overlap_rows(a, b, 5))
    np.testing.assert_array_equal(whole.ref_top1_rank, C.ref_top1_rank_rows(a, b))


def test_chunked_float32_metrics_agree_with_float64_definitions():
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((20, 5000)) * 4).astype(np.float32)
    b = (a + 0.05 * rng.standard_normal(a.shape)).astype(np.float32)
    tf = C.teacher_forced(a, b)
    np.testing.assert_allclose(tf.cosine, C.cosine_rows(a, b), rtol=0, atol=1e-9)
    np.testing.assert_allclose(tf.kld, C.kld_rows(a, b), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(C.teacher_forced(a, a.copy()).kld, 0.0, atol=1e-9)


def test_localise_first_layer_over_threshold():
    rng = np.random.default_rng(3)
    ref = {f"{st}-{il}": rng.standard_normal(16) for il in range(3) for st in C.STAGE_ORDER}
    eng = {k: v.copy() for k, v in ref.items()}
    eng["ffn_inp-1"] = eng["ffn_inp-1"] * 1.5  # NMSE exactly 0.25
    eng["l_out-2"] = eng["l_out-2"] + 1e-4
    out = C.localise(eng, ref, threshold=1e-2)
    assert out["first"] == {"layer": 1, "stage": "ffn_inp", "nmse": pytest.approx(0.25)}
    assert [(x["layer"], x["stage"]) for x in out["layers"]][:4] == [(0, "kqv_out"), (0, "ffn_inp"), (0, "l_out"), (1, "kqv_out")]
    assert C.localise(ref, ref, 1e-12)["first"] is None


def test_three_way_names_the_odd_one_out():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 50)).astype(np.float32)
    a, b, c = base.copy(), base.copy(), base.copy()
    # position 2: c's top-1 moves to token 7 → c is the odd one out there
    c[2, 7] = base[2].max() + 1.0
    # position 4: all three pick different tokens
    b[4, 11] = base[4].max() + 1.0
    c[4, 12] = base[4].max() + 2.0
    out = C.three_way(["a", "b", "c"], [a, b, c], [[1, 2, 3], [1, 2, 4], [1, 2, 3]], first_position=10)
    assert [d["position"] for d in out["disagreements"]] == [12, 14]
    assert out["disagreements"][0]["odd_one_out"] == "c" and out["disagreements"][1]["odd_one_out"] is None
    assert out["odd_one_out_counts"] == {"a": 0, "b": 0, "c": 1, "all_differ": 1}
    assert out["first_divergence"] == {"step": 2, "tokens": {"a": 3, "b": 4, "c": 3}, "odd_one_out": "b"}
    assert out["pairs"]["a~b"]["first_divergence_step"] == 2 and out["pairs"]["a~c"]["first_divergence_step"] is None
    assert out["pairs"]["a~c"]["top1_agreement"] == 0.6
    assert out["farthest"] == "c"  # c differs from both a and b at two positions; a and b share more


def test_top_logprobs_is_the_log_softmax_of_the_k_largest():
    # logits ln(1..6): softmax = i / 21, so the top five are ids 5..1 with log(i/21)
    logits = np.log(np.arange(1, 7, dtype=np.float64)).astype(np.float32)
    top = C.top_logprobs(logits, k=5)
    assert [t["id"] for t in top] == [5, 4, 3, 2, 1]
    for t in top:
        assert abs(t["logprob"] - np.log((t["id"] + 1) / 21)) < 1e-6
    # ties keep the lower id first
    assert [t["id"] for t in C.top_logprobs(np.zeros(4, np.float32), k=3)] == [0, 1, 2]
    d = C.divergence_detail(1, 2, logits, logits[::-1].copy())
    assert d["reference_topk"][0]["id"] == 5 and d["engine_topk"][0]["id"] == 0

def test_top1_margin_is_the_smaller_own_preference():
    r = np.array([[3.0, 2.5, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    e = np.array([[2.0, 2.8, 0.0], [1.0, 0.5, 0.0]], dtype=np.float32)
    tf = C.teacher_forced(r, e)
    # row 0: the reference prefers 0 over 1 by 0.5, the engine 1 over 0 by 0.8 → 0.5; row 1 agrees
    assert tf.top1_margin[0] == pytest.approx(0.5) and np.isnan(tf.top1_margin[1])
    rows = tf.rows()
    assert rows[0]["top1_margin"] == pytest.approx(0.5) and rows[1]["top1_margin"] is None


def _general(r, e):
    """The general per-position formulas on every row (no closed form for identical rows)."""
    n = len(r)
    out = {k: np.empty(n) for k in ("cosine", "kld", "max_abs", "top5", "top10")}
    top1, rank, margin = np.empty(n, dtype=bool), np.empty(n, dtype=np.int64), np.full(n, np.nan)
    with np.errstate(over="ignore"):  # exp of (a value − the row max) for values near float32's limits
        C._teacher_forced_rows(r, e, np.arange(n), out, top1, rank, margin)
    return out, top1, rank, margin


def test_identical_rows_closed_form_is_the_general_formula_bit_for_bit():
    rng = np.random.default_rng(11)
    r = (rng.standard_normal((19, 3000)) * 5).astype(np.float32)
    r[3] = 0.0  # an all-zero row: cosine 1.0 by the zero-row rule
    r[4, :10] = 7.0  # tied maxima
    r[6] = np.float32(3e38) * np.sign(r[6])  # the largest float32 values: a·a near the top of float64's range?
    r[7] = 0.0
    r[7, ::97] = np.float32(1e-45)  # subnormal float32: a·a near the bottom
    r[8] *= np.float32(1e-30)
    e = r.copy()
    e[5, 100] += 1.0  # one row differs: the general path inside the same chunk
    tf = C.teacher_forced(r, e)
    out, top1, rank, margin = _general(r, e)
    for f in ("cosine", "kld", "max_abs", "top5", "top10"):
        np.testing.assert_array_equal(getattr(tf, f), out[f])
    np.testing.assert_array_equal(tf.top1, top1)
    np.testing.assert_array_equal(tf.ref_top1_rank, rank)
    np.testing.assert_array_equal(tf.top1_margin, margin)
    assert tf.kld[5] > 0 and tf.max_abs[5] == pytest.approx(1.0, abs=1e-5) and tf.kld[4] == 0.0


def test_non_finite_identical_rows_take_the_general_formulas():
    r = np.random.default_rng(12).standard_normal((3, 200)).astype(np.float32)
    r[0, 5], r[1, 6] = np.nan, np.inf
    with np.errstate(all="ignore"):
        tf = C.teacher_forced(r, r.copy())
        out, *_ = _general(r, r.copy())
    np.testing.assert_array_equal(tf.kld, out["kld"])  # NaN where the formula gives NaN, not a closed-form 0
    assert np.isnan(tf.kld[0]) and tf.kld[2] == 0.0


@pytest.mark.parametrize("V", [7, 64, 650, 4096 + 37, 20000])
def test_top_k_ids_is_the_sorted_order(V):
    """top_k_ids gives what sorting whole rows by (value descending, id ascending, NaN last)
    gives, with ties at the k-th value, NaN and ids past the last full column."""
    rng = np.random.default_rng(V)
    x = np.round(rng.standard_normal((12, V)) * 4).astype(np.float32)  # many ties
    x[1] = rng.standard_normal(V).astype(np.float32)  # no ties
    x[2, V // 2] = np.nan
    x[3, -1] = 100.0  # the maximum in the last ids
    x[4] = 0.0
    want = np.lexsort((np.broadcast_to(np.arange(V), x.shape), -x), axis=1)[:, : min(10, V)]
    np.testing.assert_array_equal(C.top_k_ids(x, min(10, V)), want)


def test_topk_overlap_ties_at_the_kth_value_go_to_the_lower_id():
    ref = np.array([[5.0, 4, 4, 4, 0, 0]], dtype=np.float32)  # top-2: ids 0, 1 (1, 2, 3 tie)
    eng = np.array([[5.0, 3, 4, 4, 0, 0]], dtype=np.float32)  # top-2: ids 0, 2
    assert list(C.top_k_ids(ref, 2)[0]) == [0, 1] and list(C.top_k_ids(eng, 2)[0]) == [0, 2]
