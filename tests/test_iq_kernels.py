"""IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M native kernels (engine/kernels/iq2_kernels.c) against
libggml-cpu itself: each block dot equals ggml's exported vec_dot bit for bit on random and edge
blocks — one activation row, four at once, and the portable C — and the tiled route (8 activation
rows or more) equals its float chain computed here from gguf's own dequantization."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

from conftest import needs_llamacpp
from crossval import libggml
from engine import kernels as K
from engine.quants import dequantize
from test_kernels import _vec_dot, simd  # noqa: F401 — the simd fixture: SIMD and portable runs

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

TYPES = [Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_S, Q.IQ1_M]


def _set_d(raw: np.ndarray, qtype, d: np.ndarray) -> None:
    """Write fp16 scales d (rows, blocks) into raw blocks (rows, blocks, bytes): IQ1_M spreads its d
    over the top nibbles of its four scale words (bytes 48..55), the others store it first."""
    h = d.astype(np.float16).view(np.uint16)
    if qtype != Q.IQ1_M:
        raw[..., :2] = h[..., None].view(np.uint8).reshape(*h.shape, 2)
        return
    words = raw[..., 48:56].copy().view(np.uint16).reshape(*h.shape, 4)
    for i in range(4):
        words[..., i] = (words[..., i] & 0x0FFF) | (((h >> (4 * i)) & 0xF) << 12)
    raw[..., 48:56] = words.view(np.uint8).reshape(*h.shape, 8)


def blocks(qtype, rows: int, n: int, seed: int) -> np.ndarray:
    """Random blocks (every grid index, sign pattern and scale reachable) with sane fp16 scales, and
    edge rows: all bits clear, all bits set (largest scales and grid indices, every sign negative),
    d = 0, and a subnormal-scale row."""
    rng = np.random.default_rng(seed)
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = n // bs
    raw = rng.integers(0, 256, size=(rows, nb, ts), dtype=np.uint8)
    d = rng.uniform(1e-3, 3e-2, size=(rows, nb)).astype(np.float32)
    raw[1], raw[2] = 0, 0xFF
    d[3] = 0.0
    d[4] = 3e-6  # fp16 subnormal
    _set_d(raw, qtype, d)
    return raw.reshape(rows, -1)


def activations(n_tok: int, n: int, seed: int) -> np.ndarray:
    """Random rows and edge rows: a constant (every Q8_K value ±127), alternating signs, zeros, tiny."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tok, n)).astype(np.float32) * rng.uniform(0.1, 10, (n_tok, 1)).astype(np.float32)
    x[1] = 3.0
    x[2] = np.where(np.arange(n) % 2, -50.0, 50.0)
    x[3] = 0.0
    x[4] *= 1e-30
    return x


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_iq_dots_equal_ggml_vec_dot(qtype, simd):  # noqa: F811
    """One activation row, four rows at once (prefill under 8 rows) and the tail rows: every output is
    ggml_vec_dot_<type>_q8_K's float — its 8 AVX2 lanes, FMA steps and hsum — on this CPU (the
    portable C follows the same lanes)."""
    n, rows = 1024, 9
    w = blocks(qtype, rows, n, seed=int(qtype))
    x = activations(7, n, seed=int(qtype) + 1)
    out = {nt: K.matmul(w, qtype, x[:nt]) for nt in (1, 5, 7)}
    for t in range(7):
        a = libggml.cpu_quantize_row(x[t], "q8_K")
        for r in range(rows):
            ref = np.float32(_vec_dot(f"{qtype.name.lower()}_q8_K", n, np.ascontiguousarray(w[r]), a))
            for nt, y in out.items():
                if t < nt:
                    assert y[t, r] == ref or (np.isnan(ref) and np.isnan(y[t, r])), (nt, t, r, y[t, r], ref)


_fmaf = ctypes.CDLL("libm.so.6").fmaf
_fmaf.restype, _fmaf.argtypes = ctypes.c_float, [ctypes.c_float] * 3


def _tiled_reference(w: np.ndarray, qtype, xq: np.ndarray) -> np.ndarray:
    """llama.cpp's tiled matmul (ggml-cpu/tiled) for one output, from gguf's dequantization: per block
    the exact integer s = Σ v·q over its 256 values, v the value in units of d/8 (IQ2: scale·grid·sign;
    IQ1: scale·(8·grid + δ)), then out = fma(float(s)·(d·0.125), d_a, out) block after block."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    rows, nb = w.shape[0], w.shape[1] // ts
    wb = w.reshape(rows, nb, ts)
    a = xq.reshape(-1, nb, 292)
    ad = a[..., :4].copy().view(np.float32)[..., 0]
    aq = a[..., 4:260].view(np.int8).astype(np.int64)
    y = np.zeros((a.shape[0], rows), dtype=np.float32)
    for r in range(rows):
        for b in range(nb):
            blk = wb[r, b]
            if qtype == Q.IQ1_M:
                words = blk[48:56].copy().view(np.uint16)
                dh = sum(((int(words[i]) >> 12) & 0xF) << (4 * i) for i in range(4))
                d = float(np.uint16(dh).view(np.float16))
            else:
                d = float(blk[:2].copy().view(np.float16)[0])
            if d == 0.0:
                v = np.zeros(256, dtype=np.int64)
                unit = np.float32(0.0)
            else:
                unit = np.float32(d) * np.float32(0.125)
                vals = dequantize(blk[None, :], qtype).reshape(-1).astype(np.float64)
                v = np.rint(vals / float(unit)).astype(np.int64)
                np.testing.assert_array_equal(v * float(unit), vals)  # exact multiples of d/8
            for t in range(a.shape[0]):
                s = np.float32(int(v @ aq[t, b]))
                y[t, r] = _fmaf(np.float32(s * unit), ad[t, b], y[t, r])
    return y


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_iq_tiled_route_is_llamacpps_chain(qtype):
    """8 activation rows or more take llama.cpp's tiled matmul (a different float order from
    vec_dot): every output equals that chain, for 11 rows (four at a time, then three), threaded too;
    edge blocks included (all bits clear or set, d = 0, a subnormal d)."""
    if K.lib.cv_simd() < 2:
        pytest.skip("the tiled route is llama.cpp's x86 AVX2 path")
    n, rows = 512, 6
    w = blocks(qtype, rows, n, seed=int(qtype) + 7)
    x = activations(11, n, seed=3)
    xq = K.quantize_acts(qtype, x)
    y = K.matmul_prequantized(w, qtype, xq, 11, n)
    np.testing.assert_array_equal(y, _tiled_reference(w, qtype, xq))
    np.testing.assert_array_equal(y, K.matmul_prequantized(w, qtype, xq, 11, n, threads=2))


def test_iq_kernels_refuse_to_run_without_their_tables():
    """The grids are handed over when engine.kernels is imported (engine/kernels/iq_tables.py); the
    bare extension, loaded on its own, reports the i-quants unsupported instead of multiplying by
    zeros, and refuses a table of the wrong size."""
    from pathlib import Path

    so = next(Path(K.__file__).parent.glob("_qkernels*.so"), None)
    if so is None:
        pytest.skip("the extension is not a file next to the package")
    code = ("import importlib.machinery as M, importlib.util as U, sys; p = sys.argv[1]; "
            "s = U.spec_from_file_location('_qkernels', p, loader=M.ExtensionFileLoader('_qkernels', p)); "
            "m = U.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.lib.cv_supported(16), m.lib.cv_supported(29), m.lib.cv_supported(8), m.lib.cv_set_table(b'iq2xxs_grid', b'x', 1))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, str(so)], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0", "0", "1", "-1"], r.stderr
    assert all(K.supported(t) for t in TYPES)


# llama.cpp's ftype whose default tensor type is each of these (LLAMA_FTYPE_MOSTLY_IQ2_M → IQ2_S)
FTYPE = {Q.IQ2_XXS: "IQ2_XXS", Q.IQ2_XS: "IQ2_XS", Q.IQ2_S: "IQ2_M", Q.IQ1_S: "IQ1_S", Q.IQ1_M: "IQ1_M"}

_QUANTIZE_PURE = """
import ctypes, sys
import gguf, llama_cpp, numpy as np
src, dst, ftype = sys.argv[1:]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.pure, p.nthread = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype), True, 1
mats = [(t.name, int(t.shape[0])) for t in gguf.GGUFReader(src).tensors if len(t.shape) == 2]
ones = [np.ones(n, np.float32) for _, n in mats]
im = (llama_cpp.llama_model_imatrix_data * (len(mats) + 1))()
for e, (name, n), a in zip(im, mats, ones):
    e.name, e.data, e.size = name.encode(), a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n
p.imatrix = im
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p))
"""


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_faithful_tiny_model_all_iq_is_llamacpp_bit_for_bit(tmp_path, qtype):
    """A tiny llama (rows of 256) quantized by llama.cpp to nothing but this type (pure, an all-ones
    importance matrix): faithful mode's logits are llama.cpp's to the bit — the prompt's batch through
    the tiled route, the decode steps through vec_dot — under the strict profile, no fallback."""
    import json

    from crossval import receipts
    from tiny_models import write_tiny_model

    from crossval.models import cache_dir
    from engine.convert import sha256_file
    from engine.gguf_model import open_gguf

    f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=256, n_head=4, n_head_kv=2, n_ff=256)
    # llama.cpp's i-quant lattice setup costs up to half a minute a type: the variant is cached
    model = cache_dir() / "quants" / "tiny-iq" / f"{sha256_file(f32)[:16]}.{qtype.name}.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        tmp = model.with_suffix(f".tmp{tmp_path.name}")
        q = subprocess.run([sys.executable, "-c", _QUANTIZE_PURE, str(f32), str(tmp), FTYPE[qtype]], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert q.returncode == 0 and tmp.exists(), q.stderr[-2000:]
        tmp.replace(model)

    types = {t.type for n, t in open_gguf(model).tensors.items() if len(t.ne) >= 2}
    assert types == {qtype}, types
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--mode", "faithful", "--prompt-file",
                        str(prompts), "--steps", "8", "--n-ctx", "64", "--out", str(out), "--json"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    summary = json.loads(r.stdout)
    rec = receipts.read_valid(out / summary["run_id"] / summary["receipts"][0]["file"])
    assert rec["backends"]["engine"]["fallback_types"] == [] and rec["thresholds"]["profile"] == "faithful"
    assert rec["prompt"]["n_tokens"] >= 8  # the prompt's batch takes the tiled route
    assert rec["parity"]["max_abs_diff"] == 0.0 and rec["parity"]["exact_match_rate"] == 1.0, rec["parity"]
    assert rec["verdict"]["passed"], rec["verdict"]["failures"]
