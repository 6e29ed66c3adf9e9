"""The merge loops in C (engine/kernels/tokmerge.c) when the native kernels are built.

Same algorithm, same order of merges as spm.tokenize() and bpe.merge() (which remain the
reference and the fallback when the kernels are absent): a binary-heap work queue over a linked
list of symbols; the final symbols come back as token ids, with llama.cpp's byte fallback for a
symbol whose text is not a token. Words shorter than MIN_CHARS stay in Python
(a call costs more than it saves there).

    Merger.spm(vocab).ids(text)   SPM: text is the ▁-escaped UTF-8 of one piece
    Merger.bpe(vocab).ids(word)   BPE: word is the UTF-8 of one byte-encoded word
"""

from __future__ import annotations

import numpy as np

from engine import kernels

MIN_CHARS = 64


def available() -> bool:
    return kernels.available() and hasattr(kernels.lib, "cv_merge")


def _table(keys: list[bytes], values, splits=None, scores=None):
    """An owned cv_strtab: byte-string keys (with a split point for BPE pairs) → int values."""
    ffi, lib = kernels.ffi, kernels.lib
    lens = np.fromiter(map(len, keys), dtype=np.int32, count=len(keys))
    off = np.zeros(len(keys), dtype=np.int64)
    np.cumsum(lens[:-1], out=off[1:])
    blob = b"".join(keys)
    vals = np.asarray(values, dtype=np.int32)
    buf = lambda a, t: ffi.from_buffer(t, a) if a is not None else ffi.NULL  # noqa: E731
    split = np.asarray(splits, dtype=np.int32) if splits is not None else None
    sc = np.ascontiguousarray(scores, dtype=np.float32) if scores is not None else None
    p = lib.cv_strtab_new(ffi.from_buffer("uint8_t[]", blob), len(blob), buf(off, "int64_t[]"), buf(lens, "int32_t[]"),
                          buf(split, "int32_t[]"), buf(vals, "int32_t[]"), len(keys), buf(sc, "float[]"),
                          0 if sc is None else len(sc))  # fmt: skip
    if p == ffi.NULL:
        raise MemoryError("cannot build the tokenizer's native table")
    return ffi.gc(p, lib.cv_strtab_free)


class Merger:
    def __init__(self, spm: bool, table, tokens):
        self.spm, self.table, self.tokens = spm, table, tokens

    @classmethod
    def spm(cls, v) -> "Merger":
        """One table: token text → id (inserted in id order, so a duplicated text keeps its last
        id, as token_to_id does) and the scores by id."""
        t = _table(v.texts, np.arange(v.n_tokens), scores=v.scores)
        return cls(True, t, t)

    @classmethod
    def bpe(cls, v) -> "Merger":
        """The deduplicated merges (left, right) → rank, and the token table."""
        keys, splits, ranks = [], [], []
        for (a, b), r in v.merges.items():
            ab = a.encode("utf-8")
            keys.append(ab + b.encode("utf-8"))
            splits.append(len(ab))
            ranks.append(r)
        return cls(False, _table(keys, ranks, splits), _table(v.texts, np.arange(v.n_tokens)))

    def ids(self, text: bytes) -> list[int] | None:
        """The token ids of text; None when an SPM vocabulary lacks a byte token (the Python path
        then raises the error that names the byte)."""
        ffi, lib = kernels.ffi, kernels.lib
        out = np.empty(len(text), np.int32)
        k = lib.cv_merge(self.table, self.tokens, int(self.spm), ffi.from_buffer("uint8_t[]", text), len(text),
                         ffi.from_buffer("int32_t[]", out))  # fmt: skip
        if k == -1:
            raise MemoryError("out of memory while tokenizing")
        return None if k < 0 else out[:k].tolist()
