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
