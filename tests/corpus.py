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


def long_words(n: int = 100_000, seed: int = 7) -> dict[str, str]:
    """Single "words" of n characters that no pre-tokenizer splits (one \\p{L}+ run, no spaces):
    the inputs a quadratic merge loop stalls on. A letters-only base64-like blob, a DNA string, a
    run of one letter, accented Latin-1 letters (two UTF-8 bytes each) and CJK ideographs (three)."""
    rng = random.Random(seed)
    pick = lambda alphabet: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    return {
        "blob": pick("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
        "dna": pick("ACGT"),
        "a_run": "a" * n,
        "latin1": pick([chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)]),
        "cjk": pick([chr(c) for c in range(0x4E00, 0x4FFF)]),
    }


def mixed_text(n_bytes: int = 1 << 20, seed: int = 11) -> str:
    """About n_bytes of UTF-8 mixing what prompt files hold: corpus lines (code, prose, many
    scripts, special-token strings), base64 blobs with +/=, a minified line, long runs of spaces,
    newlines, digits and punctuation, emoji — in seeded random order."""
    rng = random.Random(seed)
    lines = corpus(10_000, seed)
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    blobs = [
        lambda: "".join(rng.choice(b64) for _ in range(rng.randint(1000, 20000))) + "==",
        lambda: "".join(rng.choice(['{"k":', "[1,2,3]", "x=>x*2;", "if(a&&b){", "}", ";", "return!0", "a.b.c(", ")"])
                        for _ in range(rng.randint(200, 3000))),  # fmt: skip
        lambda: " " * rng.randint(100, 5000),
        lambda: "\n" * rng.randint(10, 500),
        lambda: "".join(rng.choice("0123456789") for _ in range(rng.randint(100, 5000))),
        lambda: rng.choice("!?.-=*#") * rng.randint(50, 2000),
        lambda: "".join(rng.choice("🙂👍🚀🌍🎉") for _ in range(rng.randint(10, 500))),
        lambda: "\t \u00a0\u3000" * rng.randint(10, 300),
    ]
    parts, size = [], 0
    while size < n_bytes:
        x = rng.choice(blobs)() if rng.random() < 0.04 else rng.choice(lines)
        parts.append(x)
        size += len(x.encode("utf-8")) + 1
    return "\n".join(parts)
