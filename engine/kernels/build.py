"""cffi builder of engine.kernels._qkernels (API mode): run by setup.py at install time
(`cffi_modules`), or by hand: `python engine/kernels/build.py`."""

from __future__ import annotations

from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent

CDEF = """
int cv_supported(int wtype);
int cv_simd(void);
int cv_set_simd(int level);
int64_t cv_act_bytes(int wtype, int64_t n_cols, int64_t n_tok);
int cv_quantize_acts(int wtype, const float *X, int64_t n_cols, int64_t n_tok, void *xq);
int cv_matmul_q(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tok, float *Y, int64_t ldy,
                int n_threads);
void cv_quantize_q8_0(const float *x, void *y, int64_t k);
void cv_quantize_q8_1(const float *x, void *y, int64_t k);
void cv_quantize_q8_K(const float *x, void *y, int64_t k);
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "engine.kernels._qkernels",
    (HERE / "qkernels.c").read_text(),
    extra_compile_args=["-O3", "-fopenmp", "-std=c11"],
    extra_link_args=["-fopenmp"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent.parent)  # the module lands in engine/kernels/ next to this file
    ffibuilder.compile(verbose=False)
