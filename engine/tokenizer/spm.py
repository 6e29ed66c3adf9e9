"""SentencePiece-style tokenization as llama.cpp does it (llama-vocab.cpp llm_tokenizer_spm_session).

Symbols start as UTF-8 characters; the adjacent pair whose concatenation is a token with the
highest score is merged first (ties: the leftmost pair); then each symbol is emitted as its token,
or split back along the merges that built it, or as <0xNN> byte tokens.
"""

from __future__ import annotations

import heapq
import re
from functools import lru_cache

from engine.tokenizer.vocab import TokenizerError, Vocab


def _utf8_len(b: int) -> int:
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[b >> 4]


def byte_token(v: Vocab, b: int) -> int:
    t = v.token_to_id.get(b"<0x%02X>" % b)
    if t is None:
        t = v.token_to_id.get(bytes([b]))
    if t is None:
        raise TokenizerError(f"vocabulary has no byte token for 0x{b:02X}")
    return t


def tokenize(v: Vocab, text: bytes) -> list[int]:
    # symbols: [start, n, prev, next]
    syms = []
    off = 0
    while off < len(text):
        n = min(_utf8_len(text[off]), len(text) - off)
        syms.append([off, n, len(syms) - 1, -1])
        off += n
        syms[-1][3] = -1 if off == len(text) else len(syms)
    heap: list = []
    rev_merge: dict[bytes, tuple[int, int]] = {}
    t2i, scores, n_tok = v.token_to_id, v.scores, v.n_tokens

    def add_bigram(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        s = text[syms[left][0] : syms[left][0] + syms[left][1] + syms[right][1]]
        tok = t2i.get(s)
        if tok is None or tok >= n_tok:
            return
        heapq.heappush(heap, (-float(scores[tok]), left, right, len(s)))
        rev_merge[s] = (left, right)

    for i in range(1, len(syms)):
        add_bigram(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        ls, rs = syms[left], syms[right]
        if ls[1] == 0 or rs[1] == 0 or ls[1] + rs[1] != size:
            continue
        ls[1] += rs[1]
        rs[1] = 0
        ls[3] = rs[3]
        if rs[3] >= 0:
            syms[rs[3]][2] = left
        add_bigram(ls[2], left)
        add_bigram(left, ls[3])

    out: list[int] = []

    def resegment(i: int) -> None:
        s = text[syms[i][0] : syms[i][0] + syms[i][1]]
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

    i = 0 if syms else -1
    while i != -1:
        resegment(i)
        i = syms[i][3]
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
        self._piece = lru_cache(maxsize=1 << 16)(lambda b: tuple(tokenize(v, b)))

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
