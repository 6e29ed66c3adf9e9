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


class UnsupportedTypeError(ValueError):
    pass


class ExtType(int):
    """A ggml type number the gguf package does not define (its enum has no I2_S or Q2_0): an int that
    compares equal to the number and has a .name like GGMLQuantizationType's members."""

    def __new__(cls, value: int, name: str):
        obj = int.__new__(cls, value)
        obj.name = name
        return obj

    def __repr__(self) -> str:
        return f"<ExtType.{self.name}: {int(self)}>"


# upstream ggml types newer than the gguf package (0.19 stops at Q1_0, 41): their numbers, names and
# (elements, bytes) per block from ggml.c's type_traits
Q2_0 = ExtType(42, "Q2_0")
EXT_TYPES = {42: Q2_0}
QUANT_SIZES = {**GGML_QUANT_SIZES, Q2_0: (64, 18)}  # QK2_0, sizeof(block_q2_0)


def ggml_type(number: int) -> GGMLQuantizationType | ExtType:
    """The gguf package's enum member for a ggml type number, or the ExtType for one it lacks (Q2_0);
    ValueError for a number neither knows."""
    return EXT_TYPES[int(number)] if int(number) in EXT_TYPES else GGMLQuantizationType(number)


# Types our models and tests use; each has a bit-exactness test against libggml.
SUPPORTED_TYPES = (
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
    Q.TQ1_0, Q.TQ2_0,
    Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_S, Q.IQ1_M,
    Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS, Q.IQ4_NL,
    Q.MXFP4, Q.NVFP4, Q.Q1_0, Q2_0,
)  # fmt: skip


def dequantize(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 array from stored data: float types as their numpy dtype, quantized types as uint8
    rows (…, bytes_per_row) → (…, elements_per_row)."""
    if qtype == Q2_0:
        return Q2_0Blocks.dequantize(raw)
    qtype = GGMLQuantizationType(qtype)
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedTypeError(f"ggml type {qtype.name} is not supported by the engine")
    if qtype == Q.F32:
        return np.ascontiguousarray(raw, dtype=np.float32)
    if qtype == Q.F16:
        return raw.astype(np.float32)
    if qtype == Q.Q1_0:
        return Q1_0.dequantize(raw)
    return np.asarray(_gq.dequantize(raw, qtype), dtype=np.float32)


class Q1_0:
    """ggml's Q1_0 (type 41), which the gguf package reads but cannot decode, written as gguf-py's
    quants.py writes a type: 128-value blocks of d (fp16) and qs[16]; value j is +d where bit j mod 8
    of qs[j div 8] is set and −d where it is clear (ggml-quants.c dequantize_row_q1_0, `bit ? d : −d`)."""

    block_size, type_size = GGML_QUANT_SIZES[Q.Q1_0]

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 18) uint8 → (n_blocks, 128) float32."""
        d, qs = np.hsplit(blocks, [2])
        d = d.view(np.float16).astype(np.float32)
        bits = np.unpackbits(qs, axis=-1, bitorder="little")  # bit j mod 8 of byte j div 8 → column j
        return np.where(bits == 1, d, -d)

    @classmethod
    def dequantize(cls, raw: np.ndarray) -> np.ndarray:
        """uint8 rows (…, bytes_per_row) → (…, elements_per_row), as gguf.quants.dequantize shapes them."""
        raw = np.asarray(raw, dtype=np.uint8)
        shape = _gq.quant_shape_from_byte_shape(raw.shape, Q.Q1_0)
        return cls.dequantize_blocks(raw.reshape(-1, cls.type_size)).reshape(shape)


class Q2_0Blocks:
    """ggml's Q2_0 (type 42, 2.25 bits a value), which the gguf package does not know: 64-value blocks
    of d (fp16) and qs[16]; value j is (q − 1)·d with q = (qs[j div 4] >> 2·(j mod 4)) & 3 — 00 → −1,
    01 → 0, 10 → +1, 11 → +2 (ggml-quants.c dequantize_row_q2_0, `((int)q − 1) * d`)."""

    block_size, type_size = QUANT_SIZES[Q2_0]

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 18) uint8 → (n_blocks, 64) float32."""
        d, qs = np.hsplit(blocks, [2])
        d = d.view(np.float16).astype(np.float32)
        q = (qs[..., None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # value 4·byte + field
        return (q.reshape(len(blocks), 64).astype(np.float32) - 1) * d

    @classmethod
    def dequantize(cls, raw: np.ndarray) -> np.ndarray:
        """uint8 rows (…, bytes_per_row) → (…, elements_per_row)."""
        raw = np.asarray(raw, dtype=np.uint8)
        if raw.shape[-1] % cls.type_size:
            raise UnsupportedTypeError(f"Q2_0: rows of {raw.shape[-1]} bytes are no whole number of {cls.type_size}-byte blocks")
        shape = (*raw.shape[:-1], raw.shape[-1] // cls.type_size * cls.block_size)
        return cls.dequantize_blocks(raw.reshape(-1, cls.type_size)).reshape(shape)


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
    Q.IQ2_XXS: Q.Q8_K, Q.IQ2_XS: Q.Q8_K, Q.IQ2_S: Q.Q8_K, Q.IQ1_S: Q.Q8_K, Q.IQ1_M: Q.Q8_K,
    Q.IQ3_XXS: Q.Q8_K, Q.IQ3_S: Q.Q8_K, Q.IQ4_XS: Q.Q8_K, Q.IQ4_NL: Q.Q8_0,
    Q.MXFP4: Q.Q8_0, Q.NVFP4: Q.Q8_0, Q.Q1_0: Q.Q8_0, Q2_0: Q.Q8_0,
}  # fmt: skip


def block_layout(qtype: GGMLQuantizationType) -> BlockLayout:
    qtype = ggml_type(qtype)
    if qtype not in _VEC_DOT:
        raise UnsupportedTypeError(f"ggml type {qtype.name} is not supported by the engine")
    bs, ts = QUANT_SIZES[qtype]
    return BlockLayout(qtype, bs, ts, _VEC_DOT[qtype])


# --- I2_S: bitnet.cpp's ternary layout (gguf-py and upstream ggml lack it) -----------------------
# Not a ggml block type: a whole tensor is 2-bit codes followed by one float32 scale (then padding
# to 32 bytes). Within each group of I2_S_GROUP elements (128 in bitnet.cpp's x86 build), element j
# sits in byte j mod 32 of the group's 32-byte slice, at bit shift 6 − 2·(j div 32); code 0 → −1,
# 1 → 0, 2 → +1, times the tensor's scale (quantize_i2_s in the fork's ggml-bitnet-mad.cpp).
# tests/test_bitnetcpp.py checks this decoder against the kit's reference decoder and against the
# values bitnet.cpp itself computes from every I2_S tensor of the synthetic models.


I2_S = ExtType(36, "I2_S")
I2_S_GROUP = 128
_I2_S_CODES = np.array([-1.0, 0.0, 1.0, 0.0], dtype=np.float32)  # code 3 never written; read as 0


def i2_s_nbytes(n_elements: int) -> int:
    """Bytes of an I2_S tensor: n/4 code bytes + the float32 scale, padded as bitnet.cpp pads (32)."""
    return n_elements // 4 + 32


def dequantize_i2_s(raw: np.ndarray | bytes, n_elements: int, group: int = I2_S_GROUP) -> np.ndarray:
    """I2_S bytes → float32 (n_elements,)."""
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray)) else np.asarray(raw, dtype=np.uint8).reshape(-1)
    if n_elements % group or buf.size < n_elements // 4 + 4:
        raise UnsupportedTypeError(f"I2_S: {buf.size} bytes cannot hold {n_elements} elements in groups of {group}")
    codes = buf[: n_elements // 4].reshape(-1, group // 4)  # (groups, bytes per group)
    scale = np.frombuffer(buf[n_elements // 4 : n_elements // 4 + 4].tobytes(), dtype="<f4")[0]
    shifts = np.array([6 - 2 * g for g in range(4)], dtype=np.uint8)  # sub-group g → bit shift
    vals = (codes[:, None, :] >> shifts[None, :, None]) & 3  # (groups, 4 sub-groups, bytes)
    return _I2_S_CODES[vals.reshape(-1)] * np.float32(scale)
