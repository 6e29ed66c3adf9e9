"""Write a float (F32 or F16) copy of any GGUF the engine reads: every tensor dequantized,
metadata copied key by key with its original value type (gguf.GGUFWriter).

The copies are how exactness is proven: our float32 forward pass and llama.cpp's run the same
float weights, so any remaining difference is arithmetic, not quantization. Copies are cached by
the source's sha256 (engine never imports crossval; callers pass the cache dir).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from engine.gguf_model import GGUFFile, StringArray, open_gguf

# general.file_type values (llama.h enum llama_ftype)
FTYPE = {"f32": 0, "f16": 1}
_SKIP_KEYS = {"general.architecture", "general.alignment", "general.file_type"}


def _copy_metadata(src: GGUFFile, w: GGUFWriter) -> None:
    for key, val in src.metadata.items():
        if key in _SKIP_KEYS:
            continue
        vt = src.value_types[key]
        if vt == GGUFValueType.ARRAY:
            if isinstance(val, StringArray):
                w.add_key_value(key, val.raw(), vt, sub_type=GGUFValueType.STRING)
            else:
                sub = GGUFValueType.get_type_from_dtype(val.dtype) if hasattr(GGUFValueType, "get_type_from_dtype") else None
                sub = sub or _dtype_vtype(val.dtype)
                w.add_key_value(key, val.tolist(), vt, sub_type=sub)
        else:
            w.add_key_value(key, val, vt)


def _dtype_vtype(dt: np.dtype) -> GGUFValueType:
    return {
        np.dtype(np.uint8): GGUFValueType.UINT8, np.dtype(np.int8): GGUFValueType.INT8,
        np.dtype(np.uint16): GGUFValueType.UINT16, np.dtype(np.int16): GGUFValueType.INT16,
        np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(np.int32): GGUFValueType.INT32,
        np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.bool_): GGUFValueType.BOOL,
        np.dtype(np.uint64): GGUFValueType.UINT64, np.dtype(np.int64): GGUFValueType.INT64,
        np.dtype(np.float64): GGUFValueType.FLOAT64,
    }[np.dtype(dt).newbyteorder("=")]  # fmt: skip


def write_float_copy(src_path: str | os.PathLike, dst_path: str | os.PathLike, dtype: str = "f32") -> Path:
    """Dequantize every tensor of src into dst (F32, or F16 for matrices with 1-D tensors kept F32).
    Written to a temporary file beside dst and renamed, so a crash or an interrupt never leaves a
    half-written copy under dst's name."""
    if dtype not in FTYPE:
        raise ValueError(f"dtype must be f32 or f16, not {dtype!r}")
    src = open_gguf(src_path)
    dst = Path(dst_path)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share it
    w = GGUFWriter(tmp, src.arch)
    try:
        _copy_metadata(src, w)
        w.add_file_type(FTYPE[dtype])
        out_types = {}
        for name, t in src.tensors.items():
            np_dt = np.float16 if (dtype == "f16" and len(t.ne) >= 2) else np.float32
            out_types[name] = np_dt
            w.add_tensor_info(name, t.shape, np.dtype(np_dt), t.n_elements * np.dtype(np_dt).itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name in src.tensors:
            w.write_tensor_data(src.dequantize(name).astype(out_types[name]))
        w.close()
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_float_copy(src_path: str | os.PathLike, cache_dir: str | os.PathLike, dtype: str = "f32") -> Path:
    """The float copy of src in cache_dir, named by the source's sha256; written if missing, by
    one process at a time (a lock file beside it)."""
    digest = sha256_file(src_path)
    dst = Path(cache_dir) / f"{Path(src_path).stem}.{digest[:16]}.{dtype.upper()}.gguf"
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst.with_name(f".{dst.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several processes may want it at once: one writes it
            if not dst.exists():
                write_float_copy(src_path, dst, dtype)
    return dst
