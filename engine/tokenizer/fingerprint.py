"""A tokenizer's fingerprint for receipts, from GGUF metadata.

tokenizer_blob_sha256 hashes, in this order: each token piece (u32 little-endian length + its
bytes), the scores as little-endian f32, the token types as little-endian i32, then each merge
(u32 length + bytes); absent arrays contribute nothing. The same vocabulary gives the same hash
however the GGUF was written.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np


def fingerprint(g, vocab=None) -> dict:
    """vocab: an already loaded engine.tokenizer.vocab.Vocab of g (saves loading it again for
    the EOT id when the metadata does not name one)."""
    md = g.metadata
    h = hashlib.sha256()
    toks = md.get("tokenizer.ggml.tokens")
    for b in toks.raw() if toks is not None else []:
        h.update(struct.pack("<I", len(b)) + b)
    for key, dt in (("tokenizer.ggml.scores", "<f4"), ("tokenizer.ggml.token_type", "<i4")):
        arr = md.get(key)
        if arr is not None:
            h.update(np.asarray(arr).astype(dt).tobytes())
    merges = md.get("tokenizer.ggml.merges")
    for b in merges.raw() if merges is not None else []:
        h.update(struct.pack("<I", len(b)) + b)

    def opt_int(key):
        v = md.get(key)
        return int(v) if v is not None else None

    eot = opt_int("tokenizer.ggml.eot_token_id")
    if eot is None and vocab is not None:
        eot = vocab.eot
    elif eot is None and toks is not None and md.get("tokenizer.ggml.model") in ("llama", "gpt2"):
        try:
            from engine.tokenizer.vocab import load_vocab

            eot = load_vocab(g).eot
        except ValueError:
            pass
    add_bos = md.get("tokenizer.ggml.add_bos_token")
    return {
        "model": md.get("tokenizer.ggml.model"),
        "pre": md.get("tokenizer.ggml.pre"),
        "vocab_size": len(toks) if toks is not None else None,
        "bos_id": opt_int("tokenizer.ggml.bos_token_id"),
        "eos_id": opt_int("tokenizer.ggml.eos_token_id"),
        "eot_id": eot,
        "add_bos": bool(add_bos) if add_bos is not None else None,
        "merges_count": len(merges) if merges is not None else 0,
        "tokenizer_blob_sha256": h.hexdigest(),
    }
