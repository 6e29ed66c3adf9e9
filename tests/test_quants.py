"""gguf-py's dequantization (the engine's float path) is bit-exact with libggml's to_float."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from conftest import needs_llamacpp
from engine.quants import QUANT_SIZES, SUPPORTED_TYPES, block_layout, dequantize

Q = GGMLQuantizationType
QUANT_TYPES = [t for t in SUPPORTED_TYPES if t not in (Q.F32, Q.F16)]


def _rows(raw: np.ndarray, t: Q, n_rows: int) -> np.ndarray:
    if t == Q.F16:
        return raw.view(np.float16)
    return raw.reshape(n_rows, -1)


def _edge_values(n: int, rng) -> np.ndarray:
    """Blocks of zeros, constants, single spikes, huge/tiny magnitudes, alternating signs."""
    x = rng.standard_normal(n).astype(np.float32)
    quarter = n // 8
    x[:quarter] = 0.0
    x[quarter : 2 * quarter] = 1.0
    x[2 * quarter : 3 * quarter] = -1e-6
    x[3 * quarter] = 6.0e4  # near the fp16 maximum: scales saturate
    x[4 * quarter : 5 * quarter] = np.where(np.arange(quarter) % 2, 3.5, -3.5)
    x[5 * quarter : 6 * quarter] = rng.uniform(-1e-3, 1e-3, quarter)
    x[6 * quarter : 7 * quarter] = rng.choice([-1.0, 0.0, 1.0], quarter)  # ternary (TQ1_0/TQ2_0)
    return x


@needs_llamacpp
# the i-quants: libggml's quantizer needs its lattice init (up to 25 s a type) and an importance
# matrix; their arbitrary-bytes test below covers every block they can hold
@pytest.mark.parametrize("qtype", [Q.F16, *(t for t in QUANT_TYPES if not t.name.startswith("IQ"))], ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["random", "edge"])
def test_dequantize_bit_exact_vs_libggml(qtype, kind):
    from crossval import libggml

    rng = np.random.default_rng(1234 + int(qtype))
    n_rows, row = 8, 512
    x = (rng.standard_normal(n_rows * row) * 3).astype(np.float32) if kind == "random" else _edge_values(n_rows * row, rng)
    raw = libggml.from_float_ref(x, qtype)  # libggml's own quantizer makes realistic blocks
    ours = dequantize(_rows(raw, qtype, n_rows), qtype).reshape(-1)
    ref = libggml.to_float(raw, qtype, x.size)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@needs_llamacpp
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_bytes_vs_libggml(qtype):
    """Arbitrary block bytes (scales included), not only what a quantizer would produce."""
    from crossval import libggml

    rng = np.random.default_rng(99 + int(qtype))
    bs, ts = QUANT_SIZES[qtype]  # the gguf package's sizes and Q2_0's
    raw = rng.integers(0, 256, size=(4, 16 * ts), dtype=np.uint8)
    if qtype == Q.BF16:
        raw[:, 1::2] &= 0x7E  # keep the bf16 exponent below all-ones: no NaN payload questions
    else:
        # every fp16 scale field in these layouts has exponent bits that could make inf/NaN;
        # clearing bit 6 of every odd byte keeps each possible fp16 finite
        raw[:, 1::2] &= 0xBF
    ours = dequantize(raw, qtype).reshape(-1)
    ref = libggml.to_float(raw.reshape(-1), qtype, 4 * 16 * bs)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@needs_llamacpp
@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_block_layout_matches_libggml(qtype):
    from crossval import libggml

    tr = libggml.traits(qtype)
    lay = block_layout(qtype)
    assert (lay.block_size, lay.type_size) == (tr.blck_size, tr.type_size)


def test_unsupported_type_is_a_clear_error():
    from engine.quants import UnsupportedTypeError

    with pytest.raises(UnsupportedTypeError, match="Q8_1"):  # an activation type, never a model's weights
        dequantize(np.zeros((1, 36), np.uint8), Q.Q8_1)


def test_i2_s_decodes_a_hand_packed_fixture():
    """bitnet.cpp's I2_S layout (x86 build, groups of 128): element j of a group lives in byte
    j mod 32 at shift 6 − 2·(j div 32); codes 0/1/2 → −1/0/+1; one float32 scale after the codes.
    Packed here by hand, byte by byte, from that description (not by the code under test)."""
    import struct

    from engine.quants import dequantize_i2_s, i2_s_nbytes

    want = np.array([(-1, 0, 1)[(7 * i + i // 5) % 3] for i in range(256)], dtype=np.float32)  # two groups
    code = {-1.0: 0, 0.0: 1, 1.0: 2}
    packed = bytearray()
    for g in range(2):
        for b in range(32):
            byte = 0
            for sub in range(4):
                byte |= code[float(want[g * 128 + sub * 32 + b])] << (6 - 2 * sub)
            packed.append(byte)
    packed += struct.pack("<f", 0.375) + bytes(28)  # scale, then padding to 32 bytes
    assert len(packed) == i2_s_nbytes(256)
    got = dequantize_i2_s(bytes(packed), 256)
    np.testing.assert_array_equal(got, want * np.float32(0.375))
    # a byte holding codes (2, 1, 0, 2) → +1 at element 0, 0 at 32, −1 at 64, +1 at 96
    one = bytearray(32 * 1)
    one[0] = (2 << 6) | (1 << 4) | (0 << 2) | 2
    one += struct.pack("<f", 2.0) + bytes(28)
    got = dequantize_i2_s(bytes(one), 128)
    assert (got[0], got[32], got[64], got[96]) == (2.0, 0.0, -2.0, 2.0)
    assert set(np.unique(got[1:32])) == {-2.0}  # zero bytes are code 0 → −1 · scale
    with pytest.raises(Exception, match="I2_S"):
        dequantize_i2_s(bytes(10), 128)
