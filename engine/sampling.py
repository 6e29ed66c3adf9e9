"""Token selection. Greedy is the default: argmax, first index on ties (llama.cpp's greedy sampler
keeps the first maximum, src/llama-sampler.cpp)."""

from __future__ import annotations

import numpy as np


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))
