"""Tokenizers from GGUF metadata alone, identical to llama.cpp's (llama-vocab.cpp).

    tok = Tokenizer.from_gguf(open_gguf(path))
    ids = tok.encode("Hello", add_special=True, parse_special=False)
    text = tok.decode(ids)
"""

from __future__ import annotations

from engine.gguf_model import GGUFFile
from engine.tokenizer import spm
from engine.tokenizer.bpe import BPE
from engine.tokenizer.unicode import unicode_to_bytes
from engine.tokenizer.vocab import (
    ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED,
    TokenizerError, Vocab, load_vocab,
)  # fmt: skip

_C_SPACE = b" \t\n\v\f\r"  # C isspace() in the "C" locale


class Tokenizer:
    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._bpe = BPE(vocab) if vocab.model == "gpt2" else None
        self._spm = spm.SPM(vocab) if vocab.model == "llama" else None
        self._by_prefix: dict[bytes, list[int]] | None = None

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "Tokenizer":
        return cls(load_vocab(g))

    def clear_cache(self) -> None:
        """Forget the cached words (benchmarks measure cold passes)."""
        for cache in (self._bpe and self._bpe._word, self._spm and self._spm._piece):
            if cache:
                cache.cache_clear()

    # --- encode ----------------------------------------------------------------------------------
    def _candidates(self, text: bytes) -> list[int]:
        """Special tokens that can occur in text, in cache order: a token occurs only if its
        first two bytes do (most vocabularies have thousands of special tokens)."""
        if self._by_prefix is None:
            by: dict[bytes, list[int]] = {}
            for rank, sid in enumerate(self.vocab.special_ids):
                by.setdefault(self.vocab.texts[sid][:2], []).append(rank)
            self._by_prefix = by
        ranks = []
        for pre, rs in self._by_prefix.items():
            if pre in text:
                ranks.extend(rs)
        ranks.sort()
        return [self.vocab.special_ids[r] for r in ranks]

    def _partition(self, text: bytes, parse_special: bool) -> list[bytes | int]:
        """Split raw text on special-token texts (tokenizer_st_partition): ints are token ids."""
        v = self.vocab
        frags: list[bytes | int] = [text] if text else []
        for sid in self._candidates(text):
            attr = v.attrs[sid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            st = v.texts[sid]
            new: list[bytes | int] = []
            for f in frags:
                if isinstance(f, int) or st not in f:
                    new.append(f)
                    continue
                rest = f
                while True:
                    pos = rest.find(st)
                    if pos == -1:
                        if rest:
                            new.append(rest)
                        break
                    left = rest[:pos]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        new.append(left)
                    new.append(sid)
                    rest = rest[pos + len(st) :]
                    if attr & ATTR_RSTRIP:
                        rest = rest.lstrip(_C_SPACE)
            frags = new
        return frags

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        v = self.vocab
        frags = self._partition(text.encode("utf-8"), parse_special)
        out: list[int] = []
        if v.model == "llama":
            is_prev_special = True
            if add_special and v.add_bos:
                out.append(v.bos)
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    is_prev_special = True
                    continue
                t = (b" " if v.add_space_prefix and is_prev_special else b"") + f
                out.extend(self._spm.tokenize(t.replace(b" ", "▁".encode())))
                is_prev_special = False
            if add_special and v.add_eos:
                out.append(v.eos)
        else:
            if add_special and v.add_bos and v.bos is not None:
                out.append(v.bos)
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    out.extend(self._bpe.tokenize(f.decode("utf-8", errors="replace")))
            if add_special and v.add_eos and v.eos is not None:
                out.append(v.eos)
        return out

    # --- decode ----------------------------------------------------------------------------------
    def token_to_piece(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        """llama_token_to_piece: the bytes a token renders to."""
        v = self.vocab
        attr = v.attrs[token]
        if not special and attr & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        text = v.texts[token]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            piece = text
        elif attr & ATTR_NORMAL:
            if v.model == "llama":
                piece = text.replace("▁".encode(), b" ")
            else:
                table = unicode_to_bytes()
                s = text.decode("utf-8", errors="replace")
                piece = b"".join(bytes([table[c]]) if c in table else _unk_byte(c, text) for c in s)
        elif attr & ATTR_BYTE:
            piece = bytes([int(text[3:5], 16)])
        else:
            piece = b""
        for _ in range(lstrip):
            if piece.startswith(b" "):
                piece = piece[1:]
        return piece

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        """llama_detokenize: pieces joined, the SPM leading space removed, BPE spaces cleaned."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and ids and ids[0] == v.bos:
            remove_space = False
            ids = ids[1:]
        if remove_special and v.add_eos and ids and ids[-1] == v.eos:
            ids = ids[:-1]
        out = bytearray()
        for i, t in enumerate(ids):
            out += self.token_to_piece(t, unparse_special, lstrip=1 if (remove_space and i == 0) else 0)
        if v.clean_spaces:
            out = _clean_spaces(bytes(out))
        return bytes(out).decode("utf-8", errors="replace")

    def decode(self, ids: list[int]) -> str:
        return self.detokenize(ids, remove_special=False, unparse_special=False)


def _unk_byte(c: str, text: bytes) -> bytes:
    return b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text + b"]"


def _clean_spaces(t: bytes) -> bytes:
    """llama-vocab.cpp detokenize clean_spaces: ' ?' ' !' ' .' ' ,' lose the space, a lone
    apostrophe between spaces loses both, and " 's", " 'm", " 're", " 've" lose the space."""
    b = bytearray(t)
    out = bytearray(b[:1])
    for i in range(1, len(b)):
        if b[i - 1] == 32 and b[i] in b"?!.,":
            out.pop()
        out.append(b[i])
    b, out = out, bytearray(out[:1])
    i = 1
    while i < len(b):
        x = b[i]
        if x == 39 and i + 1 < len(b) and b[i - 1] == 32 and b[i + 1] == 32:
            out.pop()
            out.append(x)
            i += 2
            continue
        out.append(x)
        i += 1
    b, out = out, bytearray(out[:1])
    for i in range(1, len(b)):
        x = b[i]
        if b[i - 1] == 32 and x == 39 and i + 1 < len(b):
            x1 = b[i + 1]
            if x1 in b"sm":
                out.pop()
            elif i + 2 < len(b) and ((x1, b[i + 2]) in ((114, 101), (118, 101))):
                out.pop()
        out.append(x)
    return bytes(out)


__all__ = ["Tokenizer", "TokenizerError", "load_vocab"]
