"""A deterministic tokenizer corpus of text nobody here wrote plus generated edge cases.

- lines of Python's own standard library sources (code, comments, docstrings, identifiers),
- seeded random strings from many Unicode scripts (Latin-1, Greek, Cyrillic, Arabic, Hebrew,
  Devanagari, Thai, CJK, Hangul, kana, emoji, combining marks, fullwidth forms),
- whitespace runs, digit runs, contractions, punctuation runs and special-token strings.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

SCRIPTS = [
    (0x20, 0x7E), (0xA0, 0xFF), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x3040, 0x30FF),
    (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x300, 0x36F),
]  # fmt: skip
EDGE = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\t\tx", "x  y", "x   \n  y", "Hello world", " Hello world",
    "it's", "IT'S", "we'll've", "don't", " ' ", "'s", "1", "12", "123", "1234", "12345678901", "3.14159", "1,000,000",
    "!!!", "???!!!...", "a.b,c;d:e", "(x)", "[[y]]", "{z}", "$100", "x+y=z", "a<b>c", "~^|`", "🙂", "🙂🙂", "👨‍👩‍👧",
    "e\u0301", "n\u0303o", "東京", "한국어", "Ελληνικά", "Привет мир", "مرحبا", "שלום", "नमस्ते", "ภาษาไทย",
    "<s>", "</s>", "<|im_start|>user", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<|eot_id|>",
    "<|begin_of_text|>", "<unk>", "<pad>", "<0x0A>", "▁", "▁▁x", "\u00a0x", "\u3000y", "\u2028z", "\x0b\x0c",
]  # fmt: skip


def _stdlib_lines(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out, seen = [], set()
    for p in sorted(root.glob("*.py")):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines():
            if line.strip() and line not in seen:
                seen.add(line)
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def _random_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            lo, hi = rng.choice(SCRIPTS)
            word = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
            parts.append(word)
        sep = rng.choice([" ", "  ", "\t", " \n", "", ", ", ". "])
        out.append(sep.join(parts))
    return out


def corpus(n: int = 10_000, seed: int = 1234) -> list[str]:
    """At least n lines: the edge cases, ~70 % stdlib source lines, the rest random Unicode."""
    lines = list(EDGE)
    lines += _stdlib_lines(int(n * 0.7))
    lines += _random_lines(max(0, n - len(lines)), seed)
    return lines
