"""libggml's own quantize/dequantize reference functions, reached with ctypes in the
libggml-base.so that llama-cpp-python ships (ggml.h: ggml_get_type_traits(t)->to_float,
->from_float_ref). Used to prove the engine's arithmetic bit-exact against ggml's."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np

_to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_from_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


def library_path() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path()))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def traits(ggml_type: int) -> _TypeTraits:
    return _lib().ggml_get_type_traits(int(ggml_type)).contents


def to_float(raw: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """libggml's dequantization of contiguous blocks → float32 (n_elements,)."""
    tr = traits(ggml_type)
    if not tr.to_float:
        raise ValueError(f"libggml has no to_float for type {ggml_type}")
    src = np.ascontiguousarray(raw).view(np.uint8)
    out = np.empty(n_elements, dtype=np.float32)
    _to_float_t(tr.to_float)(src.ctypes.data, out.ctypes.data, n_elements)
    return out


def from_float_ref(values: np.ndarray, ggml_type: int) -> np.ndarray:
    """libggml's reference quantization of float32 values → raw block bytes (uint8)."""
    tr = traits(ggml_type)
    if not tr.from_float_ref:
        raise ValueError(f"libggml has no reference quantizer for type {ggml_type}")
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if x.size % tr.blck_size:
        raise ValueError(f"{x.size} values is not a multiple of block size {tr.blck_size}")
    out = np.zeros(x.size // tr.blck_size * tr.type_size, dtype=np.uint8)
    _from_float_t(tr.from_float_ref)(x.ctypes.data, out.ctypes.data, x.size)
    return out


# --- the CPU backend's activation quantizers (SIMD paths, what llama.cpp really runs) ------------
_Q8_LAYOUT = {  # name: (block elements, block bytes)
    "q8_0": (32, 34),
    "q8_1": (32, 36),
    "q8_K": (256, 292),
}


@lru_cache(maxsize=1)
def _cpu_lib() -> ctypes.CDLL:
    _lib()  # libggml-cpu depends on libggml-base: load it first
    return ctypes.CDLL(str(library_path().with_name("libggml-cpu.so")))


def cpu_quantize_row(x: np.ndarray, kind: str) -> np.ndarray:
    """libggml-cpu's quantize_row_{q8_0,q8_1,q8_K} of one float32 row → raw block bytes."""
    bs, ts = _Q8_LAYOUT[kind]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.zeros(x.size // bs * ts, dtype=np.uint8)
    fn = getattr(_cpu_lib(), f"quantize_row_{kind}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def decode_q8_row(raw: np.ndarray, kind: str) -> np.ndarray:
    """The values a row of q8_0 / q8_1 / q8_K blocks represents: q · d (float32)."""
    bs, ts = _Q8_LAYOUT[kind]
    b = raw.reshape(-1, ts)
    if kind == "q8_K":
        d = b[:, :4].copy().view(np.float32)
        qs = b[:, 4 : 4 + 256].view(np.int8)
    else:
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        qs = b[:, ts - 32 :].view(np.int8)
    return (qs.astype(np.float32) * d).reshape(-1)


# --- the CPU backend's rope, run as a one-op graph (ggml.h ggml_rope_ext) ------------------------
class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _one_op_graph(x: np.ndarray, op) -> np.ndarray:
    """Run one ggml op on the float32 array x through the CPU backend (ggml_graph_compute_with_ctx,
    one thread) and return its float32 result, shaped like x. op(base, ctx, a) builds the op's node
    from `a`, x's data as a ggml F32 tensor of x's shape (ggml's dimension order is numpy's reversed)."""
    base, cpu = _lib(), _cpu_lib()
    vp, i64, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    sigs = {"ggml_init": (vp, [_InitParams]), "ggml_free": (None, [vp]), "ggml_get_data": (vp, [vp]),
            "ggml_new_tensor_1d": (vp, [vp, ctypes.c_int, i64]), "ggml_new_tensor_2d": (vp, [vp, ctypes.c_int, i64, i64]),
            "ggml_new_tensor_3d": (vp, [vp, ctypes.c_int, i64, i64, i64]),
            "ggml_rope_ext": (vp, [vp, vp, vp, vp] + [ctypes.c_int] * 3 + [f] * 6), "ggml_rms_norm": (vp, [vp, vp, f]),
            "ggml_new_graph": (vp, [vp]), "ggml_build_forward_expand": (None, [vp, vp])}  # fmt: skip
    for name, (res, args) in sigs.items():
        fn = getattr(base, name)
        fn.restype, fn.argtypes = res, args
    cpu.ggml_cpu_init()
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    x = np.ascontiguousarray(x, dtype=np.float32)
    ctx = base.ggml_init(_InitParams(64 * 1024 * 1024 + 4 * x.size * 4, None, False))
    if not ctx:
        raise RuntimeError("ggml_init failed")
    try:
        dims = x.shape[::-1]
        a = (base.ggml_new_tensor_2d if len(dims) == 2 else base.ggml_new_tensor_3d)(ctx, 0, *dims)  # GGML_TYPE_F32
        ctypes.memmove(base.ggml_get_data(a), x.ctypes.data, x.nbytes)
        r = op(base, ctx, a)
        g = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(g, r)
        if cpu.ggml_graph_compute_with_ctx(ctx, g, 1) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")
        out = np.empty_like(x)
        ctypes.memmove(out.ctypes.data, base.ggml_get_data(r), out.nbytes)
        return out
    finally:
        base.ggml_free(ctx)


def cpu_rope(x: np.ndarray, positions: np.ndarray, n_dims: int, neox: bool, freq_base: float = 10000.0) -> np.ndarray:
    """ggml-cpu's rope of x (n_pos, n_heads, head_dim) float32 at the given positions (mode NORM,
    or NEOX), computed by ggml_graph_compute_with_ctx on one thread: what llama.cpp's graph does."""
    pos = np.ascontiguousarray(positions, dtype=np.int32)

    def rope(base, ctx, a):
        p = base.ggml_new_tensor_1d(ctx, 26, len(pos))  # GGML_TYPE_I32
        ctypes.memmove(base.ggml_get_data(p), pos.ctypes.data, pos.nbytes)
        return base.ggml_rope_ext(ctx, a, p, None, n_dims, 2 if neox else 0, 0, freq_base, 1.0, 0.0, 1.0, 32.0, 1.0)

    return _one_op_graph(x, rope)


def cpu_rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """ggml-cpu's rms_norm of each row of x (n_rows, n) float32 (no weight), computed by
    ggml_graph_compute_with_ctx on one thread (ops.cpp ggml_compute_forward_rms_norm_f32)."""
    return _one_op_graph(x, lambda base, ctx, a: base.ggml_rms_norm(ctx, a, eps))


def rope_fused(n_rot: int, neox: bool) -> list[bool]:
    """Per rope pair: whether the loaded ggml-cpu rotates it with fused multiply-adds,
    x0·cos − x1·sin = fma(x0, cos, −fl(x1·sin)) and x0·sin + x1·cos = fma(x0, sin, fl(x1·cos)), rather
    than rounding each product (fl(fl(x0·cos) − fl(x1·sin)), ...). Decided on 64 positions × 4 heads of
    seeded values: a pair is fused when every output matches the fused form and some miss the other."""
    from engine.ops import rope_cache

    rng = np.random.default_rng(n_rot)
    pos = np.arange(64)
    x = rng.standard_normal((64, 4, n_rot)).astype(np.float32)
    got = cpu_rope(x, pos, n_rot, neox)
    cos, sin = (v[:, None, :].astype(np.float64) for v in rope_cache(pos, n_rot, 10000.0))
    half = n_rot // 2
    i0, i1 = (np.arange(half), np.arange(half) + half) if neox else (np.arange(0, n_rot, 2), np.arange(1, n_rot, 2))
    a, b = x[..., i0].astype(np.float64), x[..., i1].astype(np.float64)
    f32 = lambda u: np.asarray(u, dtype=np.float32)  # noqa: E731
    fused = (f32(a * cos - f32(b * sin)), f32(a * sin + f32(b * cos)))
    unfused = (f32(f32(a * cos) - f32(b * sin)), f32(f32(a * sin) + f32(b * cos)))
    out = []
    for p in range(half):
        is_f = all((fused[j][..., p] == got[..., (i0, i1)[j][p]]).all() for j in (0, 1))
        is_u = all((unfused[j][..., p] == got[..., (i0, i1)[j][p]]).all() for j in (0, 1))
        if is_f == is_u:
            raise RuntimeError(f"ggml's rope pair {p} of {half} ({'NEOX' if neox else 'NORM'}) is neither form")
        out.append(is_f)
    return out


@lru_cache(maxsize=2)
def rope_vector_pairs(neox: bool) -> int:
    """How many pairs the loaded ggml-cpu's rotate_pairs rotates per vector (fused; the pairs after its
    last whole vector unfused), the engine's kernels.set_rope_vec: the g in 1, 2, 4, 8, 16 for which
    the first 15 // g · g of 15 pairs are the fused ones (15 tells them apart)."""
    pattern = rope_fused(30, neox)
    for g in (1, 2, 4, 8, 16):
        if pattern == [p < 15 // g * g for p in range(15)]:
            return g
    raise RuntimeError(f"ggml's rope fuses pairs {pattern} ({'NEOX' if neox else 'NORM'}): no whole-vector pattern")


# --- how the loaded ggml-cpu's compiler formed a vec_dot's scalar tail --------------------------
_TAIL_TYPES = {"iq4_nl": (20, 18), "mxfp4": (39, 17)}  # name: (ggml type, block bytes)


@lru_cache(maxsize=2)
def vec_dot_tail_fused(name: str) -> bool:
    """Whether the loaded ggml-cpu's ggml_vec_dot_{name}_q8_0 (iq4_nl, mxfp4: block pairs into two 8-lane
    accumulators, then `sumf += d·Σ` for an odd last block) fuses that last multiply-add — GCC contracts
    it in some -march builds and not in others. Decided on 3-block rows of seeded random blocks (values
    and activations biased positive, so the block sums are large and d·Σ inexact in float): the engine's
    kernel computes each row both ways (kernels.set_tail_fma), and ggml's own function must equal one
    form on every row where the two differ."""
    from engine import kernels

    wtype, bb = _TAIL_TYPES[name]
    rng = np.random.default_rng(wtype)
    rows, n = 255, 96  # rows % 8 ≠ 0: vec_dot, not the repacked kernels
    w = rng.integers(0, 256, size=(rows, n // 32, bb), dtype=np.uint8)
    if name == "mxfp4":  # nibbles 1..7 (values 1..12), scales 2^-8..2^7
        w[..., 1:] = rng.integers(1, 8, size=w[..., 1:].shape) | rng.integers(1, 8, size=w[..., 1:].shape) << 4
        w[..., 0] = rng.integers(120, 136, size=w.shape[:2])
    else:  # nibbles 8..15 (values 1..113), fp16 scales in [1e-3, 3e-2)
        w[..., 2:] = rng.integers(8, 16, size=w[..., 2:].shape) | rng.integers(8, 16, size=w[..., 2:].shape) << 4
        w[..., :2] = rng.uniform(1e-3, 3e-2, size=w.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    w = w.reshape(rows, -1)
    x = rng.uniform(0.55, 1.0, size=(1, n)).astype(np.float32)
    before = kernels.tail_fma(wtype)
    try:
        forms = {}
        for fused in (True, False):
            kernels.set_tail_fma(wtype, fused)
            forms[fused] = kernels.matmul(w, wtype, x)[0]
    finally:
        kernels.set_tail_fma(wtype, before)
    differ = np.flatnonzero(forms[True] != forms[False])
    if not differ.size:
        raise RuntimeError(f"no {name} row tells a fused vec_dot tail from an unfused one")
    a = cpu_quantize_row(x[0], "q8_0")
    _cpu_lib().ggml_cpu_init()
    fn = getattr(_cpu_lib(), f"ggml_vec_dot_{name}_q8_0")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_int]  # fmt: skip
    fn.restype = None
    got = np.zeros(differ.size, dtype=np.float32)
    for i, r in enumerate(differ):
        row = np.ascontiguousarray(w[r])
        fn(n, got[i : i + 1].ctypes.data, 0, row.ctypes.data, 0, a.ctypes.data, 0, 1)
    for fused in (True, False):
        if (got == forms[fused][differ]).all():
            return fused
    raise RuntimeError(f"ggml_vec_dot_{name}_q8_0's last block is neither fused nor unfused on {differ.size} rows")


@lru_cache(maxsize=1)
def f32_tail_width() -> int:
    """The vector width in which the loaded ggml-cpu's ggml_vec_dot_f32 forms its tail (the values after
    its last step of 4·lanes; `sumf += x[i]*y[i]` as the compiler vectorised it — kernels.set_f32_tail):
    the one of 4, 8, 16 whose engine dot equals ggml's for every length 1…63 (all tail at 16 lanes) and
    64…127 on seeded random data, where the three differ."""
    from engine import kernels

    rng = np.random.default_rng(32)
    cases = [(rng.standard_normal(n).astype(np.float32) * np.float32(rng.uniform(0.1, 30)), rng.standard_normal(n).astype(np.float32))
             for n in range(1, 128)]  # fmt: skip
    _cpu_lib().ggml_cpu_init()
    fn = _cpu_lib().ggml_vec_dot_f32
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_int]  # fmt: skip
    fn.restype = None
    ref = np.zeros(len(cases), dtype=np.float32)
    for i, (x, y) in enumerate(cases):
        fn(x.size, ref[i : i + 1].ctypes.data, 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
    lanes, before, fits = kernels.ggml_lanes(), kernels.f32_tail(), []
    try:
        for w in (4, 8, 16):
            kernels.set_f32_tail(w)
            ours = [kernels.lib.cv_dot_float(0, kernels._ptr(x, "void *"), kernels._ptr(y, "void *"), x.size, lanes, 0, 0) for x, y in cases]
            if (np.asarray(ours, dtype=np.float32) == ref).all():
                fits.append(w)
    finally:
        kernels.set_f32_tail(before)
    if len(fits) != 1:
        raise RuntimeError(f"ggml_vec_dot_f32's tail fits vector widths {fits} (expected exactly one of 4, 8, 16)")
    return fits[0]
