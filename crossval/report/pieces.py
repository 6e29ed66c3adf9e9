"""Token text for a receipt's ids, so a prompt page can show *which* tokens differ.

Receipts hold token ids. A piece that is not whole UTF-8 (a byte-fallback token) is shown with its
bytes escaped (\\xNN). The text of each id comes from the model's own vocabulary (engine's
GGUF tokenizer, token_to_piece as llama.cpp renders it) when the model file named in the receipt is
still on disk with the recorded size; otherwise the page shows the ids themselves (⟨id⟩).
"""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=8)
def _tokenizer(path: str, size: int):
    try:
        if os.path.getsize(path) != size:
            return None
        from engine.gguf_model import open_gguf
        from engine.tokenizer import Tokenizer

        return Tokenizer.from_gguf(open_gguf(path))
    except Exception:  # noqa: BLE001 — any unreadable model: the page falls back to ids
        return None


def pieces(rec: dict, ids: list[int]) -> list[str]:
    tok = _tokenizer(rec["model"]["path"], rec["model"]["size"])
    out = []
    for i in ids:
        try:
            out.append(tok.token_to_piece(int(i)).decode("utf-8", errors="backslashreplace") if tok else f"⟨{i}⟩")
        except Exception:  # noqa: BLE001 — an id outside the vocabulary is shown as an id
            out.append(f"⟨{i}⟩")
    return out
