"""Mutated GGUF files for the loader fuzz test (deterministic for a seed).

Mutations: truncation at every section boundary and at random offsets, flipped bytes anywhere,
absurd tensor counts / dimension values / offsets, overlapping tensors, unknown tensor and value
types, over-long string lengths, wrong alignment values.
"""

from __future__ import annotations

import random
import struct

from gguf import GGUFReader


def _layout(path) -> dict:
    """Byte offsets of the header fields, every KV and every tensor-info field (from GGUFReader)."""
    r = GGUFReader(path)
    kv_starts = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        kv_starts.append(int(f.offset))
    tinfo = []
    for t in r.tensors:
        f = t.field
        tinfo.append({"start": int(f.offset), "parts": [int(p.ctypes.data - r.data.ctypes.data) for p in f.parts]})
    return {"kv": sorted(kv_starts), "tensors": tinfo, "data_start": int(r.data_offset), "size": len(r.data)}


def mutations(src: bytes, layout: dict, n: int, seed: int):
    """Yield (label, mutated bytes), n in total."""
    rng = random.Random(seed)
    size = len(src)
    bounds = sorted({0, 4, 8, 16, 24, *layout["kv"], *(t["start"] for t in layout["tensors"]), layout["data_start"], size - 1})
    kinds = ["truncate-boundary", "truncate-random", "flip", "flip-header", "tensor-count", "kv-count", "dims",
             "offset", "overlap", "type", "value-type", "strlen", "alignment"]  # fmt: skip
    for i in range(n):
        kind = kinds[i % len(kinds)]
        d = bytearray(src)
        if kind == "truncate-boundary":
            cut = bounds[(i // len(kinds)) % len(bounds)] + rng.choice([-1, 0, 1])
            d = d[: max(0, cut)]
        elif kind == "truncate-random":
            d = d[: rng.randrange(size)]
        elif kind in ("flip", "flip-header"):
            hi = layout["data_start"] if kind == "flip-header" else size
            for _ in range(rng.randint(1, 8)):
                d[rng.randrange(hi)] ^= 1 << rng.randrange(8)
        elif kind == "tensor-count":
            d[8:16] = struct.pack("<Q", rng.choice([0, 1, 2**31, 2**63, len(layout["tensors"]) + rng.randint(1, 9)]))
        elif kind == "kv-count":
            d[16:24] = struct.pack("<Q", rng.choice([0, 2**32, 2**62, len(layout["kv"]) + rng.randint(1, 9)]))
        else:
            t = rng.choice(layout["tensors"])
            p = t["parts"]  # name_len, name, n_dims, dims, type, offset
            if kind == "dims":
                d[p[3] : p[3] + 8] = struct.pack("<Q", rng.choice([0, 2**32, 2**63 - 1, 3, 2**20]))
            elif kind == "offset":
                d[p[5] : p[5] + 8] = struct.pack("<Q", rng.choice([1, 7, size * 4, 2**62, 2**64 - 32]))
            elif kind == "overlap":
                other = rng.choice(layout["tensors"])
                d[p[5] : p[5] + 8] = d[other["parts"][5] : other["parts"][5] + 8]
                d[p[5]] ^= rng.choice([0, 32])
            elif kind == "type":
                d[p[4] : p[4] + 4] = struct.pack("<I", rng.choice([4, 5, 31, 99, 2**31, 2**32 - 1]))
            elif kind == "value-type":
                k = rng.choice(layout["kv"])
                (klen,) = struct.unpack_from("<Q", d, k)
                d[k + 8 + klen : k + 12 + klen] = struct.pack("<I", rng.choice([13, 99, 2**31, 9]))
            elif kind == "strlen":
                k = rng.choice(layout["kv"] + [t["start"]])
                d[k : k + 8] = struct.pack("<Q", rng.choice([2**40, size, size + 1, 2**63]))
            elif kind == "alignment":
                d = bytearray(src.replace(b"general.file_type", b"general.alignment", 1))
        yield kind, bytes(d)
