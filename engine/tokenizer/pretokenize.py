"""BPE pre-tokenizers: the regex list per `tokenizer.ggml.pre`, applied as llama.cpp does.

The expressions are llama.cpp's (src/llama-vocab.cpp llm_tokenizer_bpe, which adapted them from
each model's tokenizer.json). Each expression in a list splits every piece the previous one made:
matches and the text between matches all become pieces (unicode.cpp unicode_regex_split_stl).
Expressions with \\p{..} classes run on the collapsed text (engine/tokenizer/unicode.py); the
others on the text with non-ASCII whitespace mapped to \\x0b. llama.cpp's hand-written splitters
for gpt2/llama3/qwen2 implement the same expressions; the tests hold us to llama.cpp's output.
"""

from __future__ import annotations

import re
from functools import lru_cache

from engine.tokenizer.unicode import bytes_to_unicode, collapse, collapse_regex, uses_categories, wide_text

_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
_LLAMA3 = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
           "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")  # fmt: skip
_QWEN2 = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
          "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")  # fmt: skip
_QWEN35 = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
           "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")  # fmt: skip
# written with \u escapes (re understands them) so no editor can normalise the Greek letters
_DEEPSEEK_LLM_LETTERS = (
    r"\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
    r"\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    r"\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    r"\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    r"\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    r"\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    r"\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    r"\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    r"\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_CJK = r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

# pre name → (regex list, ignore_merges, clean_spaces, default add_bos); llama-vocab.cpp load()
PRE_TYPES: dict[str, tuple[list[str], bool, bool, bool]] = {}


def _reg(names, exprs, ignore_merges=False, clean_spaces=True, add_bos=False):
    for n in names:
        PRE_TYPES[n] = (exprs, ignore_merges, clean_spaces, add_bos)


_reg(["default"], ["[\\p{P}\\$\\+<=>\\^~\\|]+", _GPT2, "\\p{N}+", "[0-9][0-9][0-9]"])
_reg(["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"], [_LLAMA3], ignore_merges=True, add_bos=True)
_reg(["dbrx", "smaug-bpe"], [_LLAMA3])
_reg(["deepseek-llm"], ["[\r\n]", _DEEPSEEK_LLM_LETTERS, _DEEPSEEK_PUNCT, "\\s+$", _CJK, "\\p{N}+"], clean_spaces=False)
_reg(["deepseek-coder"], ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK, "\\p{N}"], clean_spaces=False)
_reg(["falcon"], ["[\\p{P}\\$\\+<=>\\^~\\|`]+", _GPT2, "[0-9][0-9][0-9]"])
_reg(["starcoder", "refact", "codeshell", "exaone"], ["\\p{N}", _GPT2])
_reg(["smollm", "command-r"], ["\\p{N}", _GPT2], clean_spaces=False)
_reg(["gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"], [_GPT2])
_reg(["qwen2", "deepseek-r1-qwen"], [_QWEN2], clean_spaces=False)
_reg(["stablelm2"], [_QWEN2])
_reg(["qwen35"], [_QWEN35], clean_spaces=False)

CLAIMED = sorted(PRE_TYPES)


class UnsupportedPreTokenizer(ValueError):
    pass


@lru_cache(maxsize=64)
def _compile(expr: str) -> tuple[re.Pattern, bool]:
    if uses_categories(expr):
        return re.compile(collapse_regex(expr), re.ASCII), True
    return re.compile(expr, re.ASCII), False


def split(text: str, exprs: list[str]) -> list[str]:
    """Pieces of text after applying every expression in turn (codepoint offsets)."""
    offsets = [len(text)]
    collapsed = wide = None
    for expr in exprs:
        pat, use_collapsed = _compile(expr)
        if use_collapsed:
            collapsed = collapsed if collapsed is not None else collapse(text)
            subject = collapsed
        else:
            wide = wide if wide is not None else wide_text(text)
            subject = wide
        new, start = [], 0
        for off in offsets:
            piece_start = 0
            for m in pat.finditer(subject, start, start + off):
                ms, me = m.start() - start, m.end() - start
                if ms > piece_start:
                    new.append(ms - piece_start)
                new.append(me - ms)
                piece_start = me
            if piece_start < off:
                new.append(off - piece_start)
            start += off
        offsets = [o for o in new if o > 0] if new else offsets
    out, start = [], 0
    for off in offsets:
        out.append(text[start : start + off])
        start += off
    return out


def byte_encode(word: str) -> str:
    """GPT-2 byte encoding: each UTF-8 byte of word as its printable codepoint (bytes_to_unicode);
    latin-1 makes one character per byte so str.translate can map them."""
    return word.encode("utf-8").decode("latin-1").translate(bytes_to_unicode())
