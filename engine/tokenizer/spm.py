"""SentencePiece-style tokenization as llama.cpp does it (llama-vocab.cpp llm_tokenizer_spm_session).

Symbols start as UTF-8 characters; the adjacent pair whose concatenation is a token with the
highest score is merged first (ties: the leftmost pair); then each symbol is emitted as its token,
or split back along the merges that built it, or as <0xNN> byte tokens.
"""

from __future__ import annotations

import re
from functools import lru_cache
from heapq import heapify, heappop, heappush

from engine.tokenizer import native
from engine.tokenizer.vocab import TokenizerError, Vocab

_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)  # by the lead byte's high nibble (unicode_len_utf8)


def byte_token(v: Vocab, b: int) -> int:
    t = v.token_to_id.get(b"<0x%02X>" % b)
    if t is None:
        t = v.token_to_id.get(bytes([b]))
    if t is None:
        raise TokenizerError(f"vocabulary has no byte token for 0x{b:02X}")
    return t


def tokenize(v: Vocab, text: bytes) -> list[int]:
    """llm_tokenizer_spm_session::tokenize: symbols are a linked list (prv/nxt) of byte spans
    (start, length n); the queue holds (−score, left, size) so the highest score pops first and
    the leftmost among equal scores; an entry is current iff left is alive, has a right
    neighbour, and n[left] + n[right] still equals the size recorded when it was pushed (symbols
    only grow to the right). O(n log n) for n characters."""
    starts: list[int] = []
    off, end = 0, len(text)
    while off < end:
        starts.append(off)
        off += _UTF8_LEN[text[off] >> 4]
    count = len(starts)
    if count == 0:
        return []
    n = [b - a for a, b in zip(starts, starts[1:])] + [end - starts[-1]]
    nxt = list(range(1, count + 1))
    nxt[-1] = -1
    prv = list(range(-1, count - 1))
    t2i, scores, n_tok = v.token_to_id, v.score_list, v.n_tokens
    rev_merge: dict[bytes, tuple[int, int]] = {}
    heap = []
    for i in range(count - 1):
        s = text[starts[i] : starts[i] + n[i] + n[i + 1]]
        tok = t2i.get(s)
        if tok is not None and tok < n_tok:
            heap.append((-scores[tok], i, len(s)))
            rev_merge[s] = (i, i + 1)
    heapify(heap)
    while heap:
        _, left, size = heappop(heap)
        nl = n[left]
        right = nxt[left]
        if nl == 0 or right == -1 or nl + n[right] != size:
            continue
        n[left] = nl = size
        n[right] = 0
        after = nxt[right]
        nxt[left] = after
        st = starts[left]
        before = prv[left]
        if after != -1:
            prv[after] = left
        if before != -1:  # (before, left) first, as llama.cpp adds them
            s = text[starts[before] : st + nl]
            tok = t2i.get(s)
            if tok is not None and tok < n_tok:
                heappush(heap, (-scores[tok], before, len(s)))
                rev_merge[s] = (before, left)
        if after != -1:
            s = text[st : st + nl + n[after]]
            tok = t2i.get(s)
            if tok is not None and tok < n_tok:
                heappush(heap, (-scores[tok], left, len(s)))
                rev_merge[s] = (left, after)

    out: list[int] = []

    def resegment(i: int) -> None:
        s = text[starts[i] : starts[i] + n[i]]
        tok = t2i.get(s)
        if tok is not None:
            out.append(tok)
            return
        p = rev_merge.get(s)
        if p is None:
            out.extend(byte_token(v, b) for b in s)
            return
        resegment(p[0])
        resegment(p[1])

    i = 0
    while i != -1:
        resegment(i)
        i = nxt[i]
    return out


_SP = "▁".encode()
_BOUNDARY = re.compile(rb"(?<!\xe2\x96\x81)\xe2\x96\x81")


class SPM:
    """tokenize() with a per-word cache. SentencePiece merges run over the whole text, but a merge
    can only produce a vocabulary token, so no symbol ever spans a place where a non-▁ character
    is followed by ▁ — unless some token itself contains such a place ("crossing" tokens, e.g.
    gemma-3's ">▁</"). The text is cut at those places (except inside an occurrence of a crossing
    token), each piece is tokenized alone (merges in different pieces never interact, and each
    piece keeps its left-to-right tie order), and pieces repeat, so they are cached."""

    def __init__(self, v: Vocab):
        self.v = v
        self.crossing = [t for t in v.texts if _BOUNDARY.search(t, 1) and _crosses(t)]
        self._piece = lru_cache(maxsize=1 << 16)(self._tokenize_piece)
        self._native = None

    def _tokenize_piece(self, b: bytes) -> tuple[int, ...]:
        if len(b) < native.MIN_CHARS or not native.available():
            return tuple(tokenize(self.v, b))
        if self._native is None:
            self._native = native.Merger.spm(self.v)
        ids = self._native.ids(b)
        return tuple(ids) if ids is not None else tuple(tokenize(self.v, b))

    def tokenize(self, text: bytes) -> list[int]:
        if len(self.crossing) > 64:  # too many to track: no cutting
            return tokenize(self.v, text)
        cuts = [m.start() for m in _BOUNDARY.finditer(text) if m.start() > 0]
        if self.crossing and cuts:
            blocked = set()
            for t in self.crossing:
                start = text.find(t)
                while start != -1:
                    blocked.update(range(start + 1, start + len(t)))
                    start = text.find(t, start + 1)
            cuts = [c for c in cuts if c not in blocked]
        out: list[int] = []
        prev = 0
        for c in cuts + [len(text)]:
            out.extend(self._piece(text[prev:c]))
            prev = c
        return out


def _crosses(t: bytes) -> bool:
    """True if t holds a ▁ right after a character that is not ▁."""
    return any(m.start() > 0 for m in _BOUNDARY.finditer(t))
