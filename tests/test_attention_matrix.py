"""Attention fixture matrix (gemma.cpp's window / prefix_end semantics, engine/attention.py): GQA ratios, windows, prefix_end, ring-buffer wrap,
batch vs token-by-token — against an independent float64 masked-softmax reference written here."""

from __future__ import annotations

import itertools
import zlib
import math

import numpy as np
import pytest

from engine.attention import RingKV, attention, attention_mask, flash_attention


def reference(q, k, v, q_pos, k_pos, window, prefix_end, scale, seq_len=None):
    """Plain loops in float64. gemma.cpp's rules, spelled out: a query at pos sees keys at
    positions start..last, start = pos - min(window - 1, pos) (window 0 = from 0),
    last = prefix_end - 1 if prefix_end > 0 and prefix_end - 1 > pos else pos; with a ring of
    seq_len rows only positions newer than newest - seq_len are still there."""
    n_q, n_head, d = q.shape
    n_head_kv = k.shape[1]
    out = np.zeros((n_q, n_head, v.shape[2]))
    newest = max(k_pos) if len(k_pos) else -1
    for i, pos in enumerate(q_pos):
        last = prefix_end - 1 if prefix_end > 0 and prefix_end - 1 > pos else pos
        start = pos - min(window - 1, pos) if window > 0 else 0
        keys = [j for j, kp in enumerate(k_pos) if start <= kp <= last and (seq_len is None or kp > newest - seq_len)]
        for h in range(n_head):
            g = h // (n_head // n_head_kv)
            s = [scale * sum(float(q[i, h, t]) * float(k[j, g, t]) for t in range(d)) for j in keys]
            m = max(s)
            w = [math.exp(x - m) for x in s]
            z = sum(w)
            for j, wj in zip(keys, w):
                out[i, h] += (wj / z) * v[j, g].astype(np.float64)
    return out


HEADS = [(4, 4), (4, 2), (6, 2), (8, 2), (8, 1), (16, 2)]  # GQA ratios 1, 2, 3, 4, 8 (MQA) and 8
WINDOWS = ["none", "lt", "eq"]
PREFIX = ["0", "lt_pos", "gt_pos", "all"]


@pytest.mark.parametrize("heads, window, prefix", list(itertools.product(HEADS, WINDOWS, PREFIX)),
                         ids=lambda x: str(x))  # fmt: skip
def test_naive_and_flash_match_float64_reference(heads, window, prefix):
    n_head, n_head_kv = heads
    rng = np.random.default_rng(zlib.crc32(repr((n_head, n_head_kv, window, prefix)).encode()))
    n, d = 11, 8
    q = rng.standard_normal((n, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n, n_head_kv, d)).astype(np.float32)
    win = {"none": 0, "lt": 4, "eq": n}[window]
    pe = {"0": 0, "lt_pos": 3, "gt_pos": 8, "all": n}[prefix]
    pos = np.arange(n)
    scale = 1 / math.sqrt(d)
    want = reference(q, k, v, pos, list(pos), win, pe, scale)
    mask = attention_mask(pos, n, win, pe)
    got = attention(q, k, v, mask, scale=scale)
    assert np.abs(got - want).max() <= 1e-5
    for tile in (1, 3, 64):
        assert np.abs(flash_attention(q, k, v, mask, scale=scale, tile=tile) - want).max() <= 1e-5
    # token by token: each query alone with its own mask row equals its row of the batch
    for i in range(n):
        row = attention(q[i : i + 1], k, v, mask[i : i + 1], scale=scale)
        assert np.abs(row - got[i : i + 1]).max() <= 1e-6


@pytest.mark.parametrize("seq_len, n_pos", [(16, 10), (8, 8), (8, 13), (5, 23)], ids=["no-wrap", "full", "wrapped", "wrapped-many"])
@pytest.mark.parametrize("window", [0, 3])
def test_ring_buffer_rolling_clamp(seq_len, n_pos, window):
    """Positions stored one at a time in a ring of seq_len rows: before and after it wraps, the
    last query attends exactly the newest min(pos + 1, seq_len) positions (within its window)."""
    rng = np.random.default_rng(seq_len * 100 + n_pos)
    n_head, n_head_kv, d = 4, 2, 8
    ring = RingKV(seq_len, n_head_kv, d)
    ks = rng.standard_normal((n_pos, n_head_kv, d)).astype(np.float32)
    vs = rng.standard_normal((n_pos, n_head_kv, d)).astype(np.float32)
    for p in range(n_pos):
        ring.store(np.array([p]), ks[p : p + 1], vs[p : p + 1])
    q = rng.standard_normal((1, n_head, d)).astype(np.float32)
    qpos = np.array([n_pos - 1])
    k, v, kpos = ring.view(n_pos)
    assert len(kpos) == min(n_pos, seq_len) and kpos[-1] == n_pos - 1
    mask = attention_mask(qpos, len(kpos), window, 0, k_pos=kpos)
    got = attention(q, k, v, mask, scale=0.5)
    want = reference(q, ks, vs, qpos, list(range(n_pos)), window, 0, 0.5, seq_len=seq_len)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("prefix_end", [0, 3, 7, 9])
def test_engine_prefix_end_batch_vs_split(tiny_model, prefix_end):
    """Engine level: gemma.cpp's generation flow (prefill all but the last prompt token, decode
    the last; the whole prompt at once when prefix_end == prompt size) gives the same first-step
    logits as one teacher-forced batch with the same prefix_end."""
    from engine.generate import Engine

    ids = [1, 300, 301, 302, 303, 304, 305, 306, 307]
    eng = Engine(tiny_model("gemma3"), n_ctx=64)
    full = eng.logits(ids, prefix_end=prefix_end)[-1]
    g = eng.generate(ids, 1, keep_logits=True, prefix_end=prefix_end)
    assert np.abs(g.logits[0] - full).max() <= 1e-4 * np.abs(full).max()
    if prefix_end:  # the prefix changes what the prompt positions see
        causal = eng.logits(ids)
        assert np.abs(causal[0] - eng.logits(ids, prefix_end=prefix_end)[0]).max() > 1e-3


def test_prefix_end_beyond_batch_is_an_error(tiny_model):
    from engine.generate import Engine

    with pytest.raises(ValueError, match="prefix_end"):
        Engine(tiny_model("llama"), n_ctx=32).logits([1, 300, 301], prefix_end=5)
