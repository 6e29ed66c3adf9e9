"""cffi builder of engine.kernels._qkernels (API mode): run by setup.py at install time
(`cffi_modules`), or by hand: `python engine/kernels/build.py`."""

from __future__ import annotations

from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # setup.py's folder: setuptools wants every path relative to it


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


CDEF = """
typedef struct {
    int n_embd, n_head, n_head_kv, head_dim, head_dim_v, n_ff, rope_dim;
    int neox, gelu, post_norms, qk_norm, lanes, threads;
    float rms_eps, attn_scale, kq_scale, softcap, rope_base;
    int64_t window;
    int no_pre_norms;
    float residual_scale, rope_mscale;
    int n_expert, n_expert_used;
} cv_layer_cfg;
typedef struct {
    const float *attn_norm, *ffn_norm, *attn_post_norm, *ffn_post_norm, *q_norm, *k_norm;
    const void *w[7];
    int t[7];
    const float *bq, *bk, *bv, *rope_ff;
    const void *gate_inp;
    int t_gate_inp;
    int64_t exp_stride[3];
    const float *s[7];
    const float *attn_sub_norm, *ffn_sub_norm;
} cv_layer_w;
int cv_layer_decode(const cv_layer_cfg *c, const cv_layer_w *lw, float *x, int64_t pos, uint16_t *k16, uint16_t *v16t,
                    int64_t n_ctx);
int cv_supported(int wtype);
int cv_simd(void);
int cv_set_simd(int level);
int64_t cv_act_bytes(int wtype, int64_t n_cols, int64_t n_tok);
int cv_quantize_acts(int wtype, const float *X, int64_t n_cols, int64_t n_tok, void *xq, int n_threads);
int cv_matmul_q(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tok, float *Y, int64_t ldy,
                int n_threads);
void cv_quantize_q8_0(const float *x, void *y, int64_t k);
void cv_quantize_q8_1(const float *x, void *y, int64_t k);
void cv_quantize_q8_K(const float *x, void *y, int64_t k);
int cv_attention_f16(const float *q, int64_t n_q, int n_head, int d, const uint16_t *k16, const uint16_t *v16t, int64_t n_ctx,
                     int64_t n_kv, int n_head_kv, int dv, const float *mask, float scale, float softcap, int lanes, float *out,
                     int n_threads);
void cv_swiglu(const float *gu, float *y, int64_t n_rows, int64_t n_ff, int lanes, int n_threads);
void cv_geglu(const float *gu, float *y, int64_t n_rows, int64_t n_ff, int n_threads);
int cv_ggml_lanes(void);
int cv_set_rope_vec(int norm_pairs, int neox_pairs);
int cv_rope_vec(int neox);
int cv_kv_store_f16(const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t n, int n_head_kv, int d, int dv, uint16_t *kc,
                    uint16_t *vct, int64_t n_ctx, int64_t p0);
int cv_rms_norm_rows(const float *x, int64_t ldx, int64_t n_tok, int64_t n_sub, int64_t n, const float *w, float eps, float *y,
                     int n_threads);
int cv_rope_rows(const float *x, int64_t ldx, float *y, int64_t ldy, int64_t n_tok, int n_heads, int head_dim, int n_rot, int neox,
                 const float *cs, const float *sn, float scale, int n_threads);
int cv_set_tail_fma(int wtype, int fused);
int cv_tail_fma(int wtype);
int cv_set_f32_tail(int w);
int cv_f32_tail(void);
int cv_set_table(const char *name, const void *data, int64_t nbytes);
double cv_vec_soft_max(float *y, const float *x, int64_t n, float max, int lanes);
float cv_dot_f16(const uint16_t *x, const uint16_t *y, int64_t n, int lanes, int tiny);
int cv_matmul_f16(const uint16_t *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                  int lanes, int n_threads);
int cv_matmul_float(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                    int lanes, int bf16dot, int n_threads);
float cv_dot_float(int wtype, const void *x, const void *y, int64_t n, int lanes, int bf16dot, int tiny);
int cv_ggml_bf16_dot(void);
void cv_rope_cache(const float *pos, int64_t n_pos, int n_rot, float base, float *cos_out, float *sin_out);
void cv_rope_cache_ext(const float *pos, int64_t n_pos, int n_rot, float base, const float *ff, float mscale, float *cos_out,
                       float *sin_out);
void cv_i2s_quantize_acts(const float *X, int64_t n_tok, int64_t K, int8_t *q, float *scales, int32_t *sums);
int32_t cv_i2s_dot(const uint8_t *w, const int8_t *a, int64_t K);
int cv_i2s_matmul(const uint8_t *W, int64_t N, int64_t K, const int8_t *q, const float *scales, const int32_t *sums, int64_t n_tok,
                  float *Y, int64_t ldy, int n_threads);
int cv_bitnet_matmul_f16(const uint16_t *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                         int lanes, int n_threads);
int64_t cv_bitnet_n_kv(int64_t cells, int64_t n_ctx);
float cv_tq_dot_lanes(int wtype, const void *w, const void *a, int nb);
int cv_attention_f16_bitnet(const float *q, int64_t n_q, int n_head, int d, const uint16_t *k16, const uint16_t *v16t,
                            int64_t n_ctx, int64_t n_kv, int n_head_kv, int dv, const float *mask, float scale, int lanes,
                            float *out, int n_threads);
void *cv_strtab_new(const uint8_t *blob, int64_t blob_len, const int64_t *off, const int32_t *len, const int32_t *split,
                    const int32_t *value, int32_t n, const float *scores, int32_t n_score);
void cv_strtab_free(void *t);
int64_t cv_merge(const void *t, const void *tokens, int spm, const uint8_t *text, int64_t n, int32_t *out_id);
uint64_t cv_stream_read(const uint64_t *buf, int64_t n_words, int threads);
""" + (HERE / "gemma_kernels.h").read_text()


def builder(path=_rel) -> cffi.FFI:
    """The extension's description; path(file) names each source as the build wants it
    (setuptools: relative to ROOT; a build by hand: absolute)."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "engine.kernels._qkernels",
        (HERE / "qkernels.c").read_text() + '\n#include "tokmerge.h"\n#include "gemma_kernels.h"\n#include "stream_bench.h"\n',
        extra_compile_args=["-O3", "-fopenmp", "-std=c11"],
        # the tokenizers' merge loops (engine/tokenizer/native.py); gemma.cpp's arithmetic (engine mode bf16)
        sources=[path(HERE / "tokmerge.c"), path(HERE / "gemma_kernels.c"), path(HERE / "stream_bench.c")],  # + the bench's read-bandwidth kernel
        include_dirs=[path(HERE)],  # qdots_x86.h, iq_tables.h, tokmerge.h, gemma_kernels.h and the .c files qkernels.c includes
        depends=sorted(path(p) for p in [*HERE.glob("*.h"), *HERE.glob("*.c")] if not p.name.startswith("_")),  # rebuild when one changes
        extra_link_args=["-fopenmp"],
        libraries=["m"],
    )
    return ffi


ffibuilder = builder()  # setup.py's cffi_modules

if __name__ == "__main__":
    import shutil
    import tempfile

    # built in an empty folder: setuptools reads the pyproject.toml of the folder it builds in, and
    # one older than the project's build requirement refuses its fields (a pip install gets a new one)
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(builder(str).compile(tmpdir=tmp, verbose=False))
        shutil.copy2(so, HERE / so.name)
    print(HERE / so.name)
