"""Float-mode weights: each GGUF tensor dequantized once to float32, kept by its GGUF name."""

from __future__ import annotations

import numpy as np

from engine.gguf_model import GGUFFile


class FloatWeights:
    def __init__(self, g: GGUFFile):
        self.g = g
        self._cache: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.g.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        w = self._cache.get(name)
        if w is None:
            w = self._cache[name] = self.g.dequantize(name)
        return w

    def concat(self, names: list[str]) -> np.ndarray:
        """Rows of several weights stacked (one matmul instead of several), cached by the joined name."""
        key = "+".join(names)
        w = self._cache.get(key)
        if w is None:
            w = self._cache[key] = np.concatenate([self[n] for n in names], axis=0)
            for n in names:
                self._cache.pop(n, None)
        return w

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of an embedding table without dequantizing the whole table (get_rows)."""
        from engine.quants import dequantize

        if name in self._cache:
            return self._cache[name][ids]
        t = self.g.tensor(name)
        return dequantize(self.g.raw(name)[ids], t.type).reshape(len(ids), t.ne[0])
