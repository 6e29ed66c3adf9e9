"""NVFP4 native kernels (engine/kernels/nvfp4_kernels.c) against libggml-cpu: gguf-py's NVFP4 decode (the
engine's float path) equals libggml's to_float for every UE4M3 scale byte; every native output equals
ggml's exported ggml_vec_dot_nvfp4_q8_0 bit for bit on random and edge blocks and activation bytes of −128
(SIMD and portable, one activation row and batches — llama.cpp takes vec_dot for every NVFP4 matmul on x86); and a tiny llama that
llama.cpp's quantizer makes all-NVFP4 runs bit for bit in faithful mode (the real models' requantizations:
tests/test_faithful.py and the nightly matrix)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from tiny_models import QUANTIZE_NVFP4
from crossval import libggml
from engine import kernels as K
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs
from test_mxfp4_kernels import _assert_bit_exact, _faithful_run, mxfp4_activations

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

BLOCK, QK = 36, 64  # block_nvfp4: four UE4M3 scale bytes, 32 bytes of nibbles; 64 values


def nvfp4_blocks(rows: int, n: int, seed: int) -> np.ndarray:
    """Random blocks (every nibble; scale bytes 40..70, around 2^-2…2^2), then edge rows: all bytes 0
    (scale 0), every scale byte 0x7F (ggml reads it as 0, not NaN), every scale 0xFF (240: bit 7 ignored),
    row 4 cycling through all 256 scale bytes, row 5 ±12 (nibbles 7 and 15) everywhere, and from row 6
    on positive values 1…12 only with large scales: against positive activations the lanes' sums need
    up to 13 bits and the scales ue4m3·d_a up to 15, so every product rounds and a different order of
    the FMAs would show."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, n // QK, BLOCK), dtype=np.uint8)
    raw[..., :4] = rng.integers(40, 71, size=raw[..., :4].shape)
    raw[1], raw[2, :, :4], raw[3, :, :4] = 0, 0x7F, 0xFF
    raw[4, :, :4] = (np.arange(raw[4, :, :4].size) % 256).reshape(raw[4, :, :4].shape)
    raw[5, :, 4:] = 0x7F
    raw[6:, :, 4:] = (rng.integers(1, 8, size=raw[6:, :, 4:].shape) | rng.integers(1, 8, size=raw[6:, :, 4:].shape) << 4).astype(np.uint8)
    raw[6:, :, :4] = rng.integers(60, 120, size=raw[6:, :, :4].shape)
    return raw.reshape(rows, -1)


def test_every_ue4m3_scale_byte_dequantizes_as_libggml():
    """ggml_ue4m3_to_fp32 (0 and 0x7F → 0, bit 7 ignored, subnormals m·2^-9, the 0.5 of the doubled E2M1
    values folded in) as gguf-py decodes it for the engine's float path: all 256 scale bytes, each
    against all 16 nibbles, equal to libggml's dequantize_row_nvfp4."""
    from engine.quants import dequantize

    raw = np.zeros((256, BLOCK), dtype=np.uint8)
    raw[:, :4] = np.arange(256, dtype=np.uint8)[:, None]
    raw[:, 4:20] = np.arange(16, dtype=np.uint8) * 0x11  # every nibble, low and high
    raw[:, 20:] = np.arange(16, dtype=np.uint8)[::-1] * 0x11
    ours = dequantize(raw, Q.NVFP4).reshape(-1)
    ref = libggml.to_float(raw.reshape(-1), Q.NVFP4, 256 * QK)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert ref[0x7F * QK : 0x80 * QK].max() == 0 and ref[0xFF * QK + 7] == 12 * 240  # 0x7F reads as 0; 0xFF as 240 (value 12: E2M1 6, doubled)


@pytest.mark.parametrize("n", [QK * 9, 1024], ids=["9-blocks", "16-blocks"])
def test_dots_equal_ggml_vec_dot(n, simd):  # noqa: F811
    """13 rows × 7 activation rows, every output ggml_vec_dot_nvfp4_q8_0's float: one 8-lane FMA chain
    over the blocks (lanes 0..3 one 16-value sub-block, 4..7 the next, two FMAs a block), hsum at the
    end — for the batch at once, row by row, and on two threads."""
    rows = 13
    w = nvfp4_blocks(rows, n, seed=n)
    x = mxfp4_activations(7, n, seed=n + 1)
    ref = np.array([[_vec_dot("nvfp4_q8_0", n, np.ascontiguousarray(w[r]), libggml.cpu_quantize_row(x[t], "q8_0")) for r in range(rows)]
                    for t in range(7)], dtype=np.float32)  # fmt: skip
    assert (ref[5:, 6:] > 1e4).all()  # positive values against positive activations: large sums
    np.testing.assert_array_equal(K.matmul(w, Q.NVFP4, x), ref)
    np.testing.assert_array_equal(K.matmul(w, Q.NVFP4, x, threads=2), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.NVFP4, x[t : t + 1]) for t in range(7)]), ref)
    np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.NVFP4, x[t : t + 1], threads=2) for t in range(7)]), ref)
    if simd == 3:  # a VNNI / AVX-512 CPU: its plain AVX2 kernels too
        try:
            assert K.lib.cv_set_simd(2) == 2
            np.testing.assert_array_equal(K.matmul(w, Q.NVFP4, x), ref)
            np.testing.assert_array_equal(np.concatenate([K.matmul(w, Q.NVFP4, x[t : t + 1]) for t in range(7)]), ref)
        finally:
            K.lib.cv_set_simd(-1)


def test_activation_bytes_of_minus_128(simd):  # noqa: F811
    """Q8_0 blocks ggml's quantizer never writes (bytes −128) but vec_dot accepts: llama.cpp multiplies
    |v| by the activation carrying v's sign (sign_epi8), so −(−128) stays −128 — the kernels do the same."""
    n, rows = QK * 3, 13
    w = nvfp4_blocks(rows, n, seed=5)
    rng = np.random.default_rng(6)
    xq = np.zeros((4, n // 32, 34), dtype=np.uint8)
    xq[..., :2] = rng.uniform(0.01, 1.0, size=xq.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    xq[..., 2:] = rng.choice(np.array([-128, -127, -1, 0, 1, 127], dtype=np.int8), size=xq[..., 2:].shape).view(np.uint8)
    xq = np.ascontiguousarray(xq.reshape(4, -1))
    ref = np.array([[_vec_dot("nvfp4_q8_0", n, np.ascontiguousarray(w[r]), xq[t]) for r in range(rows)] for t in range(4)], dtype=np.float32)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q.NVFP4, xq, 4, n), ref)
    np.testing.assert_array_equal(K.matmul_prequantized(w, Q.NVFP4, np.ascontiguousarray(xq[:1]), 1, n), ref[:1])
    if simd == 3:  # the plain AVX2 kernels too
        try:
            assert K.lib.cv_set_simd(2) == 2
            np.testing.assert_array_equal(K.matmul_prequantized(w, Q.NVFP4, np.ascontiguousarray(xq), 4, n), ref)
            np.testing.assert_array_equal(K.matmul_prequantized(w, Q.NVFP4, np.ascontiguousarray(xq[:1]), 1, n), ref[:1])
        finally:
            K.lib.cv_set_simd(-1)


def test_the_float_order_is_what_decides():
    """The test above can fail: the same integers and scales summed in another order (per 16-value
    sub-block, in double, rounded once) miss ggml's floats on the large-sum rows."""
    from engine.quants import dequantize

    n, rows = 1024, 13
    w = nvfp4_blocks(rows, n, seed=n)
    x = mxfp4_activations(7, n, seed=n + 1)
    a = np.stack([libggml.decode_q8_row(libggml.cpu_quantize_row(x[t], "q8_0"), "q8_0") for t in range(7)]).astype(np.float64)
    other = (a @ dequantize(w[6:], Q.NVFP4).astype(np.float64).T).astype(np.float32)
    assert (other != K.matmul(w[6:], Q.NVFP4, x)).any()


def test_faithful_tiny_nvfp4_llama_is_llamacpp_bit_for_bit(tmp_path):
    """A tiny llama made all-NVFP4 by llama.cpp's quantizer (llama-quantize has no NVFP4 file type: a
    tensor-type override over Q8_0, as crossval matrix makes NVFP4): the prompt's batch and 8 decode steps
    give llama.cpp's logits to the bit under the strict profile, no fallback type."""
    from engine.gguf_model import open_gguf
    from tiny_models import write_tiny_model

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=128, n_head=4, n_head_kv=1, n_ff=256)
    model = tmp_path / "nvfp4.gguf"
    q = subprocess.run([sys.executable, "-c", QUANTIZE_NVFP4, str(f32), str(model)], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    assert {t.type for t in open_gguf(model).tensors.values() if len(t.ne) >= 2} == {Q.NVFP4}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    _assert_bit_exact(_faithful_run(tmp_path, model, "--prompt-file", str(prompts), "--steps", "8", "--n-ctx", "64"), 8)
