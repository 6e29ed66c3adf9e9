"""Dequantization (float path) and the block layouts the native kernels need.

The float path is gguf-py's: `gguf.quants` has one vectorised class per ggml type, and
tests/test_quants.py proves each type we use bit-exact against libggml's own `to_float`
(ggml_get_type_traits(t)->to_float in the libggml-base.so that llama-cpp-python ships).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as _gq

Q = GGMLQuantizationType

# Types our models and tests use; each has a bit-exactness test against libggml.
SUPPORTED_TYPES = (
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
    Q.TQ1_0, Q.TQ2_0,
)  # fmt: skip


class UnsupportedTypeError(ValueError):
    pass


def dequantize(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 array from stored data: float types as their numpy dtype, quantized types as uint8
    rows (…, bytes_per_row) → (…, elements_per_row)."""
    qtype = GGMLQuantizationType(qtype)
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedTypeError(f"ggml type {qtype.name} is not supported by the engine")
    if qtype == Q.F32:
        return np.ascontiguousarray(raw, dtype=np.float32)
    if qtype == Q.F16:
        return raw.astype(np.float32)
    return np.asarray(_gq.dequantize(raw, qtype), dtype=np.float32)


def quantize(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's reference quantizer (used to build test fixtures)."""
    return _gq.quantize(np.asarray(values, dtype=np.float32), GGMLQuantizationType(qtype))


@dataclass(frozen=True)
class BlockLayout:
    """Byte layout of one ggml block (ggml/src/ggml-common.h)."""

    type: GGMLQuantizationType
    block_size: int  # elements per block
    type_size: int  # bytes per block
    vec_dot_type: GGMLQuantizationType  # what ggml's CPU backend quantizes activations to


# ggml/src/ggml-cpu/ggml-cpu.c type_traits_cpu[].vec_dot_type
_VEC_DOT = {
    Q.F32: Q.F32, Q.F16: Q.F16, Q.BF16: Q.BF16,
    Q.Q4_0: Q.Q8_0, Q.Q5_0: Q.Q8_0, Q.Q8_0: Q.Q8_0,
    Q.Q4_1: Q.Q8_1, Q.Q5_1: Q.Q8_1,
    Q.Q2_K: Q.Q8_K, Q.Q3_K: Q.Q8_K, Q.Q4_K: Q.Q8_K, Q.Q5_K: Q.Q8_K, Q.Q6_K: Q.Q8_K,
    Q.TQ1_0: Q.Q8_K, Q.TQ2_0: Q.Q8_K,
}  # fmt: skip


def block_layout(qtype: GGMLQuantizationType) -> BlockLayout:
    qtype = GGMLQuantizationType(qtype)
    if qtype not in _VEC_DOT:
        raise UnsupportedTypeError(f"ggml type {qtype.name} is not supported by the engine")
    bs, ts = GGML_QUANT_SIZES[qtype]
    return BlockLayout(qtype, bs, ts, _VEC_DOT[qtype])
