"""Pure metric functions (DESIGN §4): arrays in, numbers out. No I/O, no backends."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, vocab) arrays, computed in float64 → (n,)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.all(a == b, axis=1), 1.0, 0.0))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kld_rows(ref: np.ndarray, eng: np.ndarray) -> np.ndarray:
    """KL(ref ‖ eng) of the softmaxes, per row → (n,) (nats)."""
    lp, lq = log_softmax(ref), log_softmax(eng)
    return np.maximum(0.0, (np.exp(lp) * (lp - lq)).sum(axis=-1))


def top1_agreement(ref: np.ndarray, eng: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(eng, axis=-1)))


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token sequences differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
