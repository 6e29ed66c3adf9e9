"""Byte-level BPE as llama.cpp does it (llama-vocab.cpp llm_tokenizer_bpe_session).

Each pre-tokenized word (GPT-2 byte-encoded) starts as characters; the adjacent pair with the
lowest merge rank is merged first (ties: leftmost). With ignore_merges (llama3), a word that is a
token as a whole is emitted directly. A final symbol that is not a token falls back to its single
bytes looked up as-is (dropped when absent, as llama.cpp does).
"""

from __future__ import annotations

from functools import lru_cache

from engine.tokenizer.pretokenize import PRE_TYPES, byte_encode, split
from engine.tokenizer.vocab import Vocab


class BPE:
    def __init__(self, v: Vocab):
        self.v = v
        self.exprs = PRE_TYPES[v.pre][0]
        self._word = lru_cache(maxsize=1 << 16)(self._word_tokens)

    def _merge(self, word: str) -> list[str]:
        ranks = self.v.merges
        syms = list(word)
        while len(syms) > 1:
            best, best_i = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            syms[best_i : best_i + 2] = [syms[best_i] + syms[best_i + 1]]
        return syms

    def _word_tokens(self, word: str) -> tuple[int, ...]:
        t2i = self.v.token_to_id
        wb = word.encode("utf-8")
        if self.v.ignore_merges and wb in t2i:
            return (t2i[wb],)
        out = []
        for s in self._merge(word):
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
            out.extend(self._word(byte_encode(piece)))
        return out
