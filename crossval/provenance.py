"""Provenance for receipts: hashes of prompts and files, model and tokenizer facts, environment."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

from blake3 import blake3

# Environment variables that change numerics or threading of either engine.
NUMERIC_ENV_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GGML_NUM_THREADS",
    "LLAMA_CPP_LIB_PATH", "CROSSVAL_DETERMINISTIC", "PYTHONHASHSEED", "OPENBLAS_CORETYPE",
)  # fmt: skip


def blake3_text(text: str) -> str:
    return blake3(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def model_facts(g, path: str | os.PathLike, name: str | None = None) -> dict:
    """`model` receipt section from an opened engine.gguf_model.GGUFFile."""
    types = Counter(t.type.name for t in g.tensors.values())
    ft = g.get("general.file_type")
    return {
        "name": name,
        "path": str(path),
        "sha256": sha256_file(path),
        "size": os.path.getsize(path),
        "arch": g.arch,
        "file_type": int(ft) if ft is not None else None,
        "tensor_types": dict(sorted(types.items())),
    }


def float_weights(g) -> bool:
    """True when every matrix of the model is stored as a float type (F32/F16/BF16)."""
    return all(t.type.name in ("F32", "F16", "BF16") for t in g.tensors.values() if len(t.ne) >= 2)


def tokenizer_fingerprint(g) -> dict:
    """`tokenizer` receipt facts from GGUF metadata. tokenizer_blob_sha256 hashes, in this order:
    each token piece (u32 length + UTF-8 bytes), then the scores as little-endian f32, the token
    types as little-endian i32, and each merge (u32 length + bytes) — absent arrays contribute
    nothing. The same bytes give the same hash regardless of how the GGUF was written."""
    import struct

    import numpy as np

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

    def opt_bool(key):
        v = md.get(key)
        return bool(v) if v is not None else None

    return {
        "model": md.get("tokenizer.ggml.model"),
        "pre": md.get("tokenizer.ggml.pre"),
        "vocab_size": len(toks) if toks is not None else None,
        "bos_id": opt_int("tokenizer.ggml.bos_token_id"),
        "eos_id": opt_int("tokenizer.ggml.eos_token_id"),
        "eot_id": opt_int("tokenizer.ggml.eot_token_id"),
        "add_bos": opt_bool("tokenizer.ggml.add_bos_token"),
        "merges_count": len(merges) if merges is not None else 0,
        "chat_template_blake3": blake3_text(md["tokenizer.chat_template"]) if "tokenizer.chat_template" in md else None,
        "tokenizer_blob_sha256": h.hexdigest(),
    }


def _libc() -> str:
    name, ver = platform.libc_ver()
    return f"{name} {ver}".strip() or "unknown"


@lru_cache(maxsize=1)
def _cpu() -> dict:
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        flags = sorted(f for f in info.get("flags", []) if f.startswith(("avx", "sse4", "fma", "f16c", "amx", "vnni", "bmi")))
        return {"model": info.get("brand_raw") or platform.processor(), "flags": flags}
    except Exception:  # py-cpuinfo can fail in odd sandboxes; provenance must not
        return {"model": platform.processor() or "unknown", "flags": []}


def environment(threads: int) -> dict:
    import numpy

    return {
        "os": platform.system(),
        "kernel": platform.release(),
        "libc": _libc(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "cpu_model": _cpu()["model"],
        "cpu_flags": _cpu()["flags"],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "env": {k: os.environ[k] for k in NUMERIC_ENV_VARS if k in os.environ},
    }
