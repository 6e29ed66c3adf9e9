"""The i-quants' (and MXFP4's) lookup tables for the native kernels, derived from the gguf package (gguf.quants),
never copied into the C sources: the kernels receive them once, at import (cv_set_table).

Each table is laid out as ggml-common.h lays out its namesake:
  iq2xxs_grid (256), iq2xs_grid (512), iq2s_grid (1024) — 8 magnitudes per entry, one byte each
      (0x08, 0x19, 0x2b), an entry read as one little-endian uint64;
  iq1s_grid (2048) — 8 signed bytes per entry (−1, 0, +1);
  iq3xxs_grid (256), iq3s_grid (512) — 4 magnitudes per entry (one uint32);
  ksigns_iq2xs (128) — 7 sign bits and their parity as the 8th (bit j set: value j negative);
  kvalues_iq4nl (16) — IQ4_NL's non-linear int8 values;
  kvalues_mxfp4 (16) — MXFP4's E2M1 values, doubled (int8).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _grid(cls, signed: bool) -> np.ndarray:
    cls.init_grid()
    g = np.asarray(cls.grid, dtype=np.float32).reshape(cls.grid_shape)
    return np.ascontiguousarray(g.astype(np.int8) if signed else g.astype(np.uint8)).view(np.uint8)


@lru_cache(maxsize=1)
def tables() -> dict[str, np.ndarray]:
    """name → the table's bytes (uint8, C order), as the kernels' cv_set_table expects them."""
    from gguf import quants as q

    return {
        "iq2xxs_grid": _grid(q.IQ2_XXS, False),
        "iq2xs_grid": _grid(q.IQ2_XS, False),
        "iq2s_grid": _grid(q.IQ2_S, False),
        "iq1s_grid": _grid(q.IQ1_S, True),
        "iq3xxs_grid": _grid(q.IQ3_XXS, False),
        "iq3s_grid": _grid(q.IQ3_S, False),
        "ksigns_iq2xs": np.frombuffer(q.IQ2_XXS.ksigns, dtype=np.uint8).copy(),
        "kvalues_iq4nl": np.array(q.IQ4_NL.kvalues, dtype=np.int8).view(np.uint8),
        "kvalues_mxfp4": np.array(q.MXFP4.kvalues, dtype=np.int8).view(np.uint8),
    }


def install(lib, ffi) -> None:
    """Hand every table to the kernels (idempotent). A size the C side does not expect is a bug in
    this module or a changed gguf package: raise rather than run kernels on a wrong table."""
    for name, arr in tables().items():
        if lib.cv_set_table(name.encode(), ffi.from_buffer(arr), arr.nbytes):
            raise RuntimeError(f"native kernels refused i-quant table {name} ({arr.nbytes} bytes)")
