"""Byte-level BPE as llama.cpp does it (llama-vocab.cpp llm_tokenizer_bpe_session).

Each pre-tokenized word (GPT-2 byte-encoded) starts as characters; the adjacent pair with the
lowest merge rank is merged first (ties: leftmost). With ignore_merges (llama3), a word that is a
token as a whole is emitted directly. A final symbol that is not a token falls back to its single
bytes looked up as-is (dropped when absent, as llama.cpp does).

The merges run as llama.cpp runs them, in O(n log n) for a word of n characters: the symbols are
a doubly linked list (prev/next indices) and the candidate pairs a priority queue ordered by
(rank, left index). Popping a pair whose symbols have changed since it was pushed (one of them was
merged away, or grew) skips it — symbols only ever grow to the right, so "changed" is exactly
len(left) + len(right) != the length recorded at push time (llama.cpp compares the texts).
"""

from __future__ import annotations

from functools import lru_cache
from heapq import heapify, heappop, heappush

from engine.tokenizer import native
from engine.tokenizer.pretokenize import PRE_TYPES, byte_encode, split
from engine.tokenizer.vocab import Vocab


def merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The symbols a word ends as: lowest-rank adjacent pair first, leftmost among equal ranks.

    queue entries (rank, left, size): size = len(sym[left]) + len(sym[right]) when pushed, where
    right = nxt[left] then; the entry is current iff left is alive and that sum is unchanged."""
    n = len(word)
    if n < 2:
        return [word] if word else []
    sym: list[str | None] = list(word)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = ranks.get
    heap = [(r, i, 2) for i, r in enumerate(map(get, zip(word, word[1:]))) if r is not None]
    heapify(heap)
    while heap:
        _, left, size = heappop(heap)
        a = sym[left]
        if a is None:
            continue
        right = nxt[left]
        if right == -1:
            continue
        b = sym[right]
        if len(a) + len(b) != size:
            continue
        a += b
        sym[left] = a
        sym[right] = None
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prv[after] = left
            r = get((a, sym[after]))
            if r is not None:
                heappush(heap, (r, left, len(a) + len(sym[after])))
        before = prv[left]
        if before != -1:
            p = sym[before]
            r = get((p, a))
            if r is not None:
                heappush(heap, (r, before, len(p) + len(a)))
    out, i = [], 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out


class BPE:
    def __init__(self, v: Vocab):
        self.v = v
        self.exprs = PRE_TYPES[v.pre][0]
        self._word = lru_cache(maxsize=1 << 16)(self._word_tokens)
        self._native = None

    def _word_tokens(self, piece: str) -> tuple[int, ...]:
        """One pre-tokenized piece → ids (cached by piece: text repeats its words)."""
        word = byte_encode(piece)
        t2i = self.v.token_to_id
        wb = word.encode("utf-8")
        if self.v.ignore_merges and wb in t2i:
            return (t2i[wb],)
        if len(word) >= native.MIN_CHARS and native.available():
            if self._native is None:
                self._native = native.Merger.bpe(self.v)
            return tuple(self._native.ids(wb))
        out = []
        for s in merge(word, self.v.merges):
            sb = s.encode("utf-8")
            tok = t2i.get(sb)
            if tok is not None:
                out.append(tok)
            else:
                out.extend(t2i[bytes([b])] for b in sb if bytes([b]) in t2i)
        return tuple(out)

    def tokenize(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in split(text, self.exprs):
            out.extend(self._word(piece))
        return out
