"""Unicode facts the tokenizers need, as llama.cpp's src/unicode.cpp uses them.

- White_Space (Unicode PropList): the codepoints llama.cpp treats as whitespace.
- Category class per codepoint (first letter of the general category: L, N, P, S, M, or other).
- The GPT-2 byte ↔ unicode table (bytes_to_unicode) for byte-level BPE.
- The "collapsed" pre-tokenizer trick (unicode.cpp unicode_regex_split, llama.cpp PR 6920): a
  regex using \\p{..} classes runs over a text in which every non-ASCII codepoint is replaced by
  one byte standing for its category, and each \\p{..} in the regex by that byte plus its ASCII
  members. The split offsets carry back to the real text one codepoint per character.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

WHITE_SPACE = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)

# collapsed representation (unicode.cpp k_ucat_cpt / k_ucat_map)
COLLAPSED = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
COLLAPSED_OTHER = "\xd0"
COLLAPSED_SPACE = "\x0b"
ASCII_MEMBERS = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    "M": "",
    "S": "\\$\\+<-\\>\\^`\\|~",
}
UCAT = {"\\p{N}": "N", "\\p{L}": "L", "\\p{P}": "P", "\\p{M}": "M", "\\p{S}": "S",
        "\\p{Lu}": "L", "\\p{Ll}": "L", "\\p{Lt}": "L", "\\p{Lm}": "L", "\\p{Lo}": "L"}  # fmt: skip


@lru_cache(maxsize=1 << 16)
def category(ch: str) -> str:
    """'L', 'N', 'P', 'S', 'M' or '' (separator, control, unassigned)."""
    c = unicodedata.category(ch)[0]
    return c if c in COLLAPSED else ""


class _CollapseTable(dict):
    """str.translate table, filled as codepoints are met: codepoint → its collapsed character."""

    def __missing__(self, o: int) -> str | int:
        if o < 128:
            c = o
        else:
            c = COLLAPSED_SPACE if o in WHITE_SPACE else COLLAPSED.get(category(chr(o)), COLLAPSED_OTHER)
        self[o] = c
        return c


class _WideTable(dict):
    def __missing__(self, o: int) -> str | int:
        c = COLLAPSED_SPACE if o > 0x7F and o in WHITE_SPACE else o
        self[o] = c
        return c


_COLLAPSE, _WIDE = _CollapseTable(), _WideTable()


def collapse(text: str) -> str:
    """Every non-ASCII codepoint replaced by its category's byte (whitespace by \\x0b)."""
    return text if text.isascii() else text.translate(_COLLAPSE)


def uses_categories(regex: str) -> bool:
    return any(k in regex for k in UCAT)


def collapse_regex(regex: str) -> str:
    """Rewrite \\p{..} classes for the collapsed text (unicode.cpp, same bracket tracking)."""
    out, inside, i = [], False, 0
    while i < len(regex):
        c = regex[i]
        if c == "[" and (i == 0 or regex[i - 1] != "\\"):
            out.append("[")
            inside = True
            i += 1
            continue
        if inside and c == "]" and regex[i - 1] != "\\":
            out.append("]")
            inside = False
            i += 1
            continue
        if regex.startswith("\\p{", i):
            close = regex.find("}", i + 3)
            if close != -1 and close <= i + 10 and regex[i : close + 1] in UCAT:
                cat = UCAT[regex[i : close + 1]]
                body = COLLAPSED[cat] + ASCII_MEMBERS[cat]
                out.append(body if inside else "[" + body + "]")
                i = close + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def wide_text(text: str) -> str:
    """For regexes without \\p{..}: non-ASCII whitespace becomes \\x0b (std::wregex's \\s is ASCII)."""
    return text if text.isascii() else text.translate(_WIDE)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable codepoint table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}
