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
