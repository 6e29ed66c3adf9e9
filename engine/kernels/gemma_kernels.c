/* gemma.cpp's arithmetic (engine mode bf16), op for op, for the Highway target its build uses.
 *
 * gemma.cpp (the kit's pinned commit) computes Gemma-3 with Highway SIMD code; every float sum
 * here follows the order of that code so the engine reproduces its results bit for bit rather
 * than "to bf16 precision". Two families of Highway targets differ:
 *   native  (AVX3_ZEN4, AVX3_SPR: HWY_NATIVE_DOT_BF16 = 1): bf16 products through the CPU's
 *           VDPBF16PS (ReorderWidenMulAccumulate / WidenMulPairwiseAdd), f32→bf16 through
 *           VCVTNEPS2BF16 (round to nearest even, denormal inputs read as zero);
 *   emulated (AVX3, AVX3_DL, AVX2): bf16 promoted to f32 by halves — the even elements' FMA,
 *           then the odd elements' — and f32→bf16 rounded to nearest even in software; their
 *           attention is FlashAttention instead of the native targets' DotSoftmaxWeightedSum.
 * `lanes` is the target's f32 vector width (16 on AVX3*, 8 on AVX2); f64 vectors hold lanes/2.
 *
 * Ops (gemma.cpp source files named per function):
 *   MatMul (ops/matmul-inl.h MMKernel::LoopKC, kc = K as the kit's deterministic_kc patch makes
 *     it): C[r,c] = one f32 accumulator vector per (r, c) over K in steps of one bf16 vector,
 *     then the lanes added in order 0..lanes-1 (MMStoreHorizontalSumsIntoC), times scale 1 plus 0.
 *   RMSNorm (ops/ops-inl.h RMSNormMul + compression/compress-inl.h DecompressAndCall with
 *     ops/dot-inl.h DotKernelDouble): Σx² in four f64 vector accumulators (f32 inputs) or through
 *     bf16 pair products widened to f64 (bf16 inputs), a fixed reduction tree, then
 *     1/sqrtf(Σ/d + 1e-6) and out = fma(m, w, m) with m = mul·x (w is the .sbs weight, GGUF − 1).
 *   RoPE (ops/ops-inl.h RopeAndMulBy): theta = pos·inv_timescale in f32, Highway's SinCos3
 *     polynomial (hwy/contrib/math/math-inl.h), x scaled by `mul` before the rotation.
 *   Attention (gemma/attention.cc, the DotSoftmaxWeightedSum path gemma.cc takes on native-bf16
 *     targets): q·k as DotKernelDouble, Softmax (ops/ops-inl.h) with Highway's Exp and an f64
 *     Sum (ops/sum-inl.h SumKernelDouble), then Σ p·v as one FMA chain over positions.
 *   FlashAttention (gemma/flash_attention.cc, gemma.cc's path on the emulated targets): tiles of
 *     (head, token) tasks with an online softmax; see cv_gm_flash_attention.
 *   GeGLU (gemma/gemma-inl.h Activation, ops/ops-inl.h Gelu with Highway's Tanh).
 */
#pragma GCC optimize("fp-contract=off")
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Hot loops built twice, dispatched at load time: with the CPU's FMA instruction where it has one,
 * else through libm's fma (the same correctly rounded result, only slower). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GM_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define GM_FMA_CLONES
#endif

/* ---- bf16 ------------------------------------------------------------------------------------ */
static inline float gm_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* f32 → bf16, round to nearest even; daz: denormal inputs become ±0 (VCVTNEPS2BF16). */
static inline uint16_t gm_bf16(float f, int daz) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    if (daz && (u & 0x7f800000u) == 0) u &= 0x80000000u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float gm_round(float f, int daz) { return gm_f32(gm_bf16(f, daz)); }

int cv_gm_cpu_native_bf16(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* The Highway target a -march=native build gets from this CPU's features: 5 AVX3_SPR (+FP16),
 * 4 AVX3_ZEN4 (+BF16), 3 AVX3_DL (+VNNI, VBMI2, BITALG, VPOPCNTDQ), 2 AVX3, 1 AVX2, 0 older. */
int cv_gm_cpu_target(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq")))
        return 1;
    if (!(__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi2") &&
          __builtin_cpu_supports("avx512bitalg") && __builtin_cpu_supports("avx512vpopcntdq")))
        return 2;
    if (!__builtin_cpu_supports("avx512bf16")) return 3;
    return __builtin_cpu_supports("avx512fp16") ? 5 : 4;
#else
    return 0;
#endif
}

void cv_gm_to_bf16(const float *x, uint16_t *y, int64_t n, int daz) {
    for (int64_t i = 0; i < n; i++) y[i] = gm_bf16(x[i], daz);
}

void cv_gm_round_bf16(const float *x, float *y, int64_t n, int daz) {
    for (int64_t i = 0; i < n; i++) y[i] = gm_round(x[i], daz);
}

/* ---- f64 reductions (hwy generic_ops-inl.h SumOfLanes, x86 ReduceAcrossBlocks) ---------------- */
/* 8 f64 lanes (AVX-512): swap adjacent 128-bit blocks and add, then reverse blocks and add, then
 * the two lanes of block 0. 4 lanes (AVX2): the two blocks, then the two lanes. */
static inline double gm_reduce_f64(const double *s, int dl) {
    if (dl == 8) {
        double r0 = (s[0] + s[2]) + (s[6] + s[4]);
        double r1 = (s[1] + s[3]) + (s[7] + s[5]);
        return r0 + r1;
    }
    if (dl == 4) return (s[0] + s[2]) + (s[1] + s[3]);
    double r = s[0];
    for (int l = 1; l < dl; l++) r += s[l];
    return r;
}

/* DotKernelDouble / SumKernelDouble state after the loop → float (Reduce). */
static inline float gm_reduce4(double s[4][8], const double *extra0, int dl) {
    double t[8] = {0};
    for (int l = 0; l < dl; l++) {
        double a = s[0][l] + s[1][l];
        double b = s[2][l] + s[3][l];
        a = a + extra0[l];
        t[l] = a + b;
    }
    return (float)gm_reduce_f64(t, dl);
}

/* Σ w[i]·v[i] for f32 w, v: DotKernelDouble with Raw = double (four f64 vectors per step, FMA). */
GM_FMA_CLONES static float gm_dot_f32(const float *w, const float *v, int64_t n, int dl) {
    double s[4][8] = {{0}}, extra[8] = {0};
    const int64_t step = 4 * dl;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < dl; l++) {
                const int64_t k = i + j * dl + l;
                s[j][l] = fma((double)w[k], (double)v[k], s[j][l]);
            }
    for (; i < n; i += dl) /* Update1 on zero-padded vectors */
        for (int l = 0; l < dl; l++) {
            const int64_t k = i + l;
            const double a = k < n ? (double)w[k] : 0.0, b = k < n ? (double)v[k] : 0.0;
            s[0][l] = fma(a, b, s[0][l]);
        }
    return gm_reduce4(s, extra, dl);
}

/* Σ x[i] for f32 x: SumKernelDouble with Raw = double. */
static float gm_sum_f32(const float *x, int64_t n, int dl) {
    double s[4][8] = {{0}}, extra[8] = {0};
    const int64_t step = 4 * dl;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < dl; l++) s[j][l] = s[j][l] + (double)x[i + j * dl + l];
    for (; i < n; i += dl)
        for (int l = 0; l < dl; l++) s[0][l] = s[0][l] + (i + l < n ? (double)x[i + l] : 0.0);
    return gm_reduce4(s, extra, dl);
}

/* ---- bf16 pair products ------------------------------------------------------------------------ */
/* WidenMulPairwiseAdd / ReorderWidenMulAccumulate on one vector of 2·lanes bf16 values: lane l of
 * the f32 result gets a[2l]·b[2l] + a[2l+1]·b[2l+1] (+ acc). Native: VDPBF16PS itself. Emulated:
 * WidenMulPairwiseAdd = fma(a_even, b_even, a_odd·b_odd). */
#if defined(__x86_64__) && defined(__GNUC__)
#define GM_BF16_FN __attribute__((target("avx512f,avx512bw,avx512bf16,fma")))
GM_BF16_FN static void gm_dpbf16(float *acc, const uint16_t *a, const uint16_t *b) {
    __m512 c = _mm512_loadu_ps(acc);
    __m512i va = _mm512_loadu_si512((const void *)a), vb = _mm512_loadu_si512((const void *)b);
    c = _mm512_dpbf16_ps(c, (__m512bh)va, (__m512bh)vb);
    _mm512_storeu_ps(acc, c);
}
#define GM_HAVE_NATIVE 1
#else
#define GM_HAVE_NATIVE 0
#endif

/* Σx² over bf16 x: DotKernelDouble with Raw = BF16 (its Update4 reduces four bf16 vectors to two
 * f32 vectors, widened to four f64 vectors; Update1 for the tail). */
static float gm_l2_bf16(const uint16_t *x, int64_t n, int native, int lanes) {
    const int dl = lanes / 2, nb = 2 * lanes; /* bf16 per vector */
    double s[4][8] = {{0}}, extra[8] = {0};
    int64_t i = 0;
    uint16_t pad[64];
    float p[4][16], s02[16], s13[16];
    for (; i + 4 * nb <= n; i += 4 * nb) {
        for (int j = 0; j < 4; j++) {
            const uint16_t *w = x + i + j * nb;
            if (native && GM_HAVE_NATIVE) {
#if GM_HAVE_NATIVE
                if (j < 2) {
                    memset(p[j], 0, sizeof p[j]);
                    gm_dpbf16(p[j], w, w);
                }
#endif
            } else {
                for (int l = 0; l < lanes; l++) {
                    const float e = gm_f32(w[2 * l]), o = gm_f32(w[2 * l + 1]);
                    p[j][l] = fmaf(e, e, o * o);
                }
            }
        }
        if (native && GM_HAVE_NATIVE) {
#if GM_HAVE_NATIVE
            memcpy(s02, p[0], sizeof s02);
            gm_dpbf16(s02, x + i + 2 * nb, x + i + 2 * nb);
            memcpy(s13, p[1], sizeof s13);
            gm_dpbf16(s13, x + i + 3 * nb, x + i + 3 * nb);
#endif
        } else {
            for (int l = 0; l < lanes; l++) {
                s02[l] = p[0][l] + p[2][l];
                s13[l] = p[1][l] + p[3][l];
            }
        }
        for (int l = 0; l < dl; l++) {
            s[0][l] = s[0][l] + (double)s02[l];
            s[1][l] = s[1][l] + (double)s02[dl + l];
            s[2][l] = s[2][l] + (double)s13[l];
            s[3][l] = s[3][l] + (double)s13[dl + l];
        }
    }
    for (; i < n; i += nb) { /* Update1: one zero-padded vector */
        for (int k = 0; k < nb; k++) pad[k] = i + k < n ? x[i + k] : 0;
        float pr[16];
        if (native && GM_HAVE_NATIVE) {
#if GM_HAVE_NATIVE
            memset(pr, 0, sizeof pr);
            gm_dpbf16(pr, pad, pad);
#endif
        } else {
            for (int l = 0; l < lanes; l++) {
                const float e = gm_f32(pad[2 * l]), o = gm_f32(pad[2 * l + 1]);
                pr[l] = fmaf(e, e, o * o);
            }
        }
        for (int l = 0; l < dl; l++) {
            s[0][l] = s[0][l] + (double)pr[l];
            extra[l] = extra[l] + (double)pr[dl + l];
        }
    }
    return gm_reduce4(s, extra, dl);
}

/* ---- RMSNorm ----------------------------------------------------------------------------------- */
/* x (n_rows, d) f32 — holding bf16 values when in_bf16 (gemma.cpp's BF16 activations: the
 * attention output's post-norm) — → out = fma(m, w, m), m = mul·x, mul = 1/sqrtf(Σx²/d + 1e-6);
 * rounded to bf16 when out_bf16. w: gemma.cpp's scale (the GGUF norm weight − 1). */
void cv_gm_rmsnorm(const float *x, int64_t n_rows, int64_t d, const float *w, float *out, int in_bf16, int out_bf16,
                   int native, int lanes) {
    uint16_t *xb = in_bf16 ? (uint16_t *)malloc((size_t)d * sizeof(uint16_t)) : NULL;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * d;
        float l2;
        if (in_bf16) {
            for (int64_t i = 0; i < d; i++) xb[i] = gm_bf16(xr[i], 0); /* exact: xr already bf16 */
            l2 = gm_l2_bf16(xb, d, native, lanes);
        } else {
            l2 = gm_dot_f32(xr, xr, d, lanes / 2);
        }
        const float mul = 1.0f / sqrtf(l2 / (float)d + 1e-6f);
        for (int64_t i = 0; i < d; i++) {
            const float m = mul * xr[i];
            const float y = fmaf(m, w[i], m);
            out[r * d + i] = out_bf16 ? gm_round(y, native) : y;
        }
    }
    free(xb);
}

/* ---- Highway's float math (hwy/contrib/math/math-inl.h), one lane at a time ---------------------- */
static inline float gm_bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t gm_f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float gm_pow2i(int32_t e) { return gm_bits_f((uint32_t)(e + 0x7f) << 23); }

/* ExpImpl<float>::ExpPoly: Estrin's scheme, then fma(poly, x², x). */
static inline float gm_exp_poly(float x) {
    const float k0 = 0.5f, k1 = 0.166666671633720397949219f, k2 = 0.0416664853692054748535156f,
                k3 = 0.00833336077630519866943359f, k4 = 0.00139304355252534151077271f,
                k5 = 0.000198527617612853646278381f;
    const float x2 = x * x, x4 = x2 * x2;
    const float est = fmaf(x4, fmaf(k5, x, k4), fmaf(x2, fmaf(k3, x, k2), fmaf(k1, x, k0)));
    return fmaf(est, x * x, x);
}

static inline float gm_exp_reduce(float x, int32_t q) {
    const float qf = (float)q;
    x = fmaf(qf, -0.693145751953125f, x);
    return fmaf(qf, -1.428606765330187045e-6f, x);
}

static inline float gm_load_exp_short_range(float x, int32_t e) {
    const int32_t y = e >> 1;
    return (x * gm_pow2i(y)) * gm_pow2i(e - y);
}

/* q = (int32)trunc(x/ln2 ± 0.5), the ±0.5 taking x's sign (Or(kHalf, And(x, -0.0))). */
static inline int32_t gm_exp_q(float x) {
    const float half = gm_bits_f(gm_f_bits(0.5f) | (gm_f_bits(x) & 0x80000000u));
    return (int32_t)fmaf(x, (float)1.442695040888963407359924681, half);
}

static inline float gm_exp(float x) {
    if (!(x >= -104.0f)) return 0.0f; /* IfThenElseZero(Ge(x, kLowerBound), y) (and no int overflow here) */
    const int32_t q = gm_exp_q(x);
    return gm_load_exp_short_range(gm_exp_poly(gm_exp_reduce(x, q)) + 1.0f, q);
}

static inline float gm_expm1(float x) {
    const int32_t q = gm_exp_q(x);
    const float y = gm_exp_poly(gm_exp_reduce(x, q));
    const float z = fabsf(x) < (float)0.346573590279972654708616 ? y : gm_load_exp_short_range(y + 1.0f, q) - 1.0f;
    return x < -104.0f ? -1.0f : z;
}

static inline float gm_tanh(float x) {
    const uint32_t sign = gm_f_bits(x) & 0x80000000u;
    const float ax = gm_bits_f(gm_f_bits(x) ^ sign);
    const float y = gm_expm1(ax * 2.0f);
    const float z = ax > (float)18.714973875 ? 1.0f : y / (y + 2.0f);
    return gm_bits_f(gm_f_bits(z) ^ sign);
}

/* SinCos3 with SinCosImpl<float>'s constants (after Julien Pommier's sse_mathfun). */
static inline void gm_sincos(float x, float *s, float *c) {
    const float DP1 = -0.78515625f, DP2 = -2.4187564849853515625e-4f, DP3 = -3.77489497744594108e-8f;
    const float cos_p0 = (float)2.443315711809948E-005, cos_p1 = (float)-1.388731625493765E-003,
                cos_p2 = (float)4.166664568298827E-002;
    const float sin_p0 = (float)-1.9515295891E-4, sin_p1 = (float)8.3321608736E-3, sin_p2 = (float)-1.6666654611E-1;
    const float FOPI = (float)1.27323954473516;
    uint32_t sign_bit_sin = gm_f_bits(x) & 0x80000000u;
    x = fabsf(x);
    float y = x * FOPI;
    int32_t imm2 = (int32_t)y; /* truncation (ConvertTo) */
    imm2 = imm2 + 1;
    imm2 = imm2 & ~1;
    y = (float)imm2;
    int32_t imm4 = imm2;
    const uint32_t swap_sign_bit_sin = (uint32_t)(imm2 & 4) << 29;
    const int poly_mask = (imm2 & 2) == 0;
    x = fmaf(y, DP1, x);
    x = fmaf(y, DP2, x);
    x = fmaf(y, DP3, x);
    imm4 = imm4 - 2;
    const uint32_t sign_bit_cos = (uint32_t)(~imm4 & 4) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;
    const float z = x * x;
    float yc = fmaf(cos_p0, z, cos_p1);
    yc = fmaf(yc, z, cos_p2);
    yc = yc * z;
    yc = yc * z;
    yc = fmaf(-z, 0.5f, yc);
    yc = yc + 1.0f;
    float ys = fmaf(sin_p0, z, sin_p1);
    ys = fmaf(ys, z, sin_p2);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    const float xmm1 = poly_mask ? ys : yc, xmm2 = poly_mask ? yc : ys;
    *s = gm_bits_f(gm_f_bits(xmm1) ^ sign_bit_sin);
    *c = gm_bits_f(gm_f_bits(xmm2) ^ sign_bit_cos);
}

float cv_gm_exp(float x) { return gm_exp(x); }
float cv_gm_tanh(float x) { return gm_tanh(x); }
void cv_gm_sincos(float x, float *s, float *c) { gm_sincos(x, s, c); }

/* ---- RoPE -------------------------------------------------------------------------------------- */
/* ops/ops.h CreateInvTimescale: 1/pow(base, 2i/rope_dim) in double, rounded to f32. */
void cv_gm_inv_timescale(int rope_dim, double base, float *out) {
    for (int i = 0; i < rope_dim / 2; i++) out[i] = (float)(1.0 / pow(base, (double)(2 * i) / (double)rope_dim));
}

/* x (n_tok, n_head, dim) in place; pos (n_tok); NEOX halves (x[i], x[i + dim/2]). */
void cv_gm_rope(float *x, int64_t n_tok, int n_head, int dim, const int64_t *pos, const float *inv_ts, float mul) {
    const int half = dim / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        const float fpos = (float)pos[t];
        for (int h = 0; h < n_head; h++) {
            float *v = x + (t * n_head + h) * (int64_t)dim;
            for (int i = 0; i < half; i++) {
                float sn, cs;
                gm_sincos(fpos * inv_ts[i], &sn, &cs);
                const float x0 = mul * v[i], x1 = mul * v[i + half];
                v[i] = fmaf(x0, cs, -(x1 * sn));
                v[i + half] = fmaf(x0, sn, x1 * cs);
            }
        }
    }
}

/* ---- soft-capping (ops/ops-inl.h LogitsSoftCap): cap · tanh(x · (1/cap)) ------------------------- */
void cv_gm_softcap(float *x, int64_t n, float cap) {
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; i++) x[i] = cap * gm_tanh(x[i] * inv);
}

/* ---- attention ----------------------------------------------------------------------------------- */
/* q (n_q, n_head, d), already normed, rotated and scaled; k, v (n_kv, n_head_kv, d) f32 (gemma.cpp's
 * KV cache is f32); query i attends positions [start[i], last[i]]; cap: the scores' soft-cap (0: none)
 * → out (n_q, n_head, d).
 * att (n_rows, n_head, seq_cap) is gemma.cpp's `activations.att`, kept between calls: query i uses row
 * row[i]. As gemma.cpp does, the scores of [start, last] are written into the row, then the soft-cap
 * and softmax run over the row's first last+1 entries — below start those hold what an earlier call
 * left there (a sliding-window layer past its window: attention.cc's att_len) — and only
 * [start, last] weight V. */
int cv_gm_attention(const float *q, int64_t n_q, int n_head, int d, const float *k, const float *v, int n_head_kv,
                    const int64_t *start, const int64_t *last, float cap, float *att, const int64_t *row, int64_t seq_cap,
                    float *out, int lanes, int n_threads) {
    const int group = n_head / n_head_kv, dl = lanes / 2;
    for (int64_t i = 0; i < n_q; i++)
        if (last[i] >= seq_cap || start[i] < 0 || start[i] > last[i]) return -1;
    const int64_t tasks = n_q * n_head;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && tasks > 1)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t i = task / n_head;
        const int h = (int)(task % n_head), hk = h / group;
        const float *qv = q + task * (int64_t)d;
        const int64_t s0 = start[i], s1 = last[i], len = s1 + 1;
        float *a = att + (row[i] * n_head + h) * seq_cap;
        for (int64_t p = s0; p <= s1; p++) a[p] = gm_dot_f32(qv, k + (p * n_head_kv + hk) * (int64_t)d, d, dl);
        if (cap != 0.0f) cv_gm_softcap(a, len, cap);
        float mx = -3.402823466e+38f;
        for (int64_t p = 0; p < len; p++) mx = a[p] > mx ? a[p] : mx;
        for (int64_t p = 0; p < len; p++) a[p] = gm_exp(a[p] - mx);
        const float sum = gm_sum_f32(a, len, dl);
        const float inv = 1.0f / sum;
        for (int64_t p = 0; p < len; p++) a[p] = a[p] * inv;
        float *o = out + task * (int64_t)d;
        const float *v0 = v + (s0 * n_head_kv + hk) * (int64_t)d;
        for (int j = 0; j < d; j++) o[j] = v0[j] * a[s0];
        for (int64_t p = s0 + 1; p <= s1; p++) {
            const float *vp = v + (p * n_head_kv + hk) * (int64_t)d, c = a[p];
            for (int j = 0; j < d; j++) o[j] = fmaf(vp[j], c, o[j]);
        }
    }
    return 0;
}

/* ---- FlashAttention (gemma/flash_attention.cc: gemma.cc's path on targets without a native bf16 dot) */
/* gemma.cpp fuses q·k, an online softmax and p·V and never stores a score row (so no stale scores).
 * FlashAttention splits the batch's (head, token) tasks — task t = head·n_q + token, one query — into
 * tiles of kVTileSize consecutive tasks (GetVTileSize below) and runs each tile in one of three modes:
 *   TileFlashAttention   NF query rows × 8 positions (NF = f32 lanes): q·k as one f32 FMA chain over
 *                        the head dimension, Highway's Exp, the 8 exps summed as a fixed tree;
 *   TileFlashAttention4  4 query rows × NF positions: f32 FMA chains, Highway's Exp of the scores but
 *                        libm's expf for the running scale, ReduceSum's lane tree;
 *   SingleFlashAttention one query, one position at a time: q·k as Dot (DotKernelDouble, f64), libm's
 *                        expf (and tanhf for a soft-cap).
 * A tile runs tiled only when it is full and every row starts at the same position and reads the same
 * KV head; otherwise each of its rows runs SingleFlashAttention. The tiled modes sweep whole tiles of
 * positions up to the tile's smallest last position, then one position at a time (rows past their own
 * last position masked by −FLT_MAX/2: they still rescale by d·(1/d)). Every running update is
 *   m' = max(m, max x); p = exp(x − m'); s = d·exp(m − m'); d' = Σp + s; out = out·(s/d') + Σ p/d'·v
 * with the products and quotients in exactly that order (out·s first, then one FMA per position). */
/* hn::ReduceSum over one f32 vector (x86): across 128-bit blocks (AVX-512: adjacent blocks, then
 * reversed blocks), then within the block ((l0 + l3) + (l1 + l2)). */
static inline float gm_reduce_sum_f32(const float *x, int lanes) {
    float a[4];
    for (int j = 0; j < 4; j++) {
        if (lanes == 16) a[j] = (x[j] + x[j + 4]) + (x[j + 8] + x[j + 12]);
        else if (lanes == 8) a[j] = x[j] + x[j + 4];
        else a[j] = x[j];
    }
    return (a[0] + a[3]) + (a[1] + a[2]);
}

/* SingleFlashAttentionStep: one position's score x into (old_max, old_d) and the output row. */
static inline void gm_flash_step(float x, float cap, float *old_max, float *old_d, const float *v, int d, float *out) {
    if (cap > 0.0f) x = cap * tanhf(x / cap);
    const float m = x < *old_max ? *old_max : x; /* std::max(x, old_max) */
    x = expf(x - m);
    float scale = *old_d * expf(*old_max - m);
    *old_d = x + scale;
    *old_max = m;
    const float inv = 1.0f / *old_d;
    scale *= inv;
    x *= inv;
    for (int j = 0; j < d; j++) out[j] = out[j] * scale;    /* MulByConst */
    for (int j = 0; j < d; j++) out[j] = fmaf(v[j], x, out[j]); /* MulByConstAndAdd */
}

/* SingleFlashAttention: K, V point at position 0 of this query's KV head, rows ks floats apart. */
GM_FMA_CLONES static void gm_flash_single(const float *q, const float *K, const float *V, int64_t ks, int64_t start,
                                          int64_t last, int d, float cap, float *out, int dl) {
    float m = gm_dot_f32(q, K + start * ks, d, dl);
    if (cap > 0.0f) m = cap * tanhf(m / cap);
    float dsum = 1.0f;
    for (int j = 0; j < d; j++) out[j] = V[start * ks + j] * dsum; /* MulByConstTo(1) */
    for (int64_t p = start + 1; p <= last; p++)
        gm_flash_step(gm_dot_f32(q, K + p * ks, d, dl), cap, &m, &dsum, V + p * ks, d, out);
}

/* x = cap · Tanh(x · (1/cap)) on a tile (hn::Tanh). */
static inline void gm_flash_cap(float *x, int n, float cap) {
    if (cap <= 0.0f) return;
    const float inv = 1.0f / cap;
    for (int i = 0; i < n; i++) x[i] = cap * gm_tanh(x[i] * inv);
}

/* TileFlashAttention: NF = lanes query rows (q[r], out[r], last[r]) sharing start and KV head. */
GM_FMA_CLONES static void gm_flash_tile(const float *const *q, float *const *out, const int64_t *last, int64_t start, const float *K,
                          const float *V, int64_t ks, int d, float cap, int lanes) {
    const int NF = lanes, dl = lanes / 2;
    float old_m[16], old_d[16], x[8][16], scale[16];
    int64_t min_last = last[0], max_last = last[0];
    for (int r = 0; r < NF; r++) {
        min_last = last[r] < min_last ? last[r] : min_last;
        max_last = last[r] > max_last ? last[r] : max_last;
        memset(out[r], 0, (size_t)d * sizeof(float));
        old_m[r] = -FLT_MAX / 2.0f;
        old_d[r] = 0.0f;
    }
    int64_t pos = start;
    while (pos + 7 <= min_last) {
        for (int j = 0; j < 8; j++) { /* QDotKTileFloat */
            const float *kr = K + (pos + j) * ks;
            for (int r = 0; r < NF; r++) {
                float s = 0.0f;
                for (int i = 0; i < d; i++) s = fmaf(q[r][i], kr[i], s);
                x[j][r] = s;
            }
            gm_flash_cap(x[j], NF, cap);
        }
        for (int r = 0; r < NF; r++) {
            float m01 = fmaxf(x[0][r], x[1][r]), m23 = fmaxf(x[2][r], x[3][r]), m45 = fmaxf(x[4][r], x[5][r]),
                  m67 = fmaxf(x[6][r], x[7][r]);
            float m = fmaxf(fmaxf(m01, m23), fmaxf(m45, m67));
            m = fmaxf(old_m[r], m);
            for (int j = 0; j < 8; j++) x[j][r] = gm_exp(x[j][r] - m);
            float s = old_d[r] * gm_exp(old_m[r] - m);
            const float sum = ((x[0][r] + x[1][r]) + (x[2][r] + x[3][r])) + ((x[4][r] + x[5][r]) + (x[6][r] + x[7][r]));
            old_d[r] = s + sum;
            old_m[r] = m;
            const float inv = 1.0f / old_d[r];
            scale[r] = s * inv;
            for (int j = 0; j < 8; j++) x[j][r] = x[j][r] * inv;
        }
        for (int r = 0; r < NF; r++) /* MulByConstAndAddTile */
            for (int i = 0; i < d; i++) {
                float o = out[r][i] * scale[r];
                for (int j = 0; j < 8; j++) o = fmaf(V[(pos + j) * ks + i], x[j][r], o);
                out[r][i] = o;
            }
        pos += 8;
    }
    for (; pos <= max_last; pos++) {
        for (int r = 0; r < NF; r++) x[0][r] = gm_dot_f32(q[r], K + pos * ks, d, dl); /* QDotKVector */
        gm_flash_cap(x[0], NF, cap);
        for (int r = 0; r < NF; r++) {
            float xr = x[0][r] - (pos > last[r] ? FLT_MAX / 2.0f : 0.0f); /* past its last position: masked */
            const float m = fmaxf(old_m[r], xr);
            xr = gm_exp(xr - m);
            float s = old_d[r] * gm_exp(old_m[r] - m);
            old_m[r] = m;
            old_d[r] = s + xr;
            const float inv = 1.0f / old_d[r];
            x[0][r] = xr * inv;
            scale[r] = s * inv;
        }
        const float *vp = V + pos * ks; /* MulByConstAndAddVector */
        for (int r = 0; r < NF; r++)
            for (int i = 0; i < d; i++) out[r][i] = fmaf(vp[i], x[0][r], out[r][i] * scale[r]);
    }
}

/* TileFlashAttention4: 4 query rows × NF = lanes positions per step. */
GM_FMA_CLONES static void gm_flash_tile4(const float *const *q, float *const *out, const int64_t *last, int64_t start, const float *K,
                           const float *V, int64_t ks, int d, float cap, int lanes) {
    const int NF = lanes, dl = lanes / 2;
    float old_m[4], old_d[4], x[4][16], scale[4];
    int64_t min_last = last[0], max_last = last[0];
    for (int r = 0; r < 4; r++) {
        min_last = last[r] < min_last ? last[r] : min_last;
        max_last = last[r] > max_last ? last[r] : max_last;
        memset(out[r], 0, (size_t)d * sizeof(float));
        old_m[r] = -FLT_MAX / 2.0f;
        old_d[r] = 0.0f;
    }
    int64_t pos = start;
    while (pos + NF - 1 <= min_last) {
        for (int r = 0; r < 4; r++) { /* QDotKTilex4 */
            for (int j = 0; j < NF; j++) {
                const float *kr = K + (pos + j) * ks;
                float s = 0.0f;
                for (int i = 0; i < d; i++) s = fmaf(q[r][i], kr[i], s);
                x[r][j] = s;
            }
            gm_flash_cap(x[r], NF, cap);
        }
        for (int r = 0; r < 4; r++) { /* SingleFlashAttentionRowVector */
            float m = x[r][0];
            for (int j = 1; j < NF; j++) m = fmaxf(m, x[r][j]); /* ReduceMax: exact in any order */
            m = m < old_m[r] ? old_m[r] : m;                   /* std::max(m, old_max) */
            for (int j = 0; j < NF; j++) x[r][j] = gm_exp(x[r][j] - m);
            float s = old_d[r] * expf(old_m[r] - m);
            old_d[r] = gm_reduce_sum_f32(x[r], NF) + s;
            old_m[r] = m;
            const float inv = 1.0f / old_d[r];
            scale[r] = s * inv;
            for (int j = 0; j < NF; j++) x[r][j] = x[r][j] * inv;
        }
        for (int r = 0; r < 4; r++) /* MulByConstAndAddTile4 */
            for (int i = 0; i < d; i++) {
                float o = out[r][i] * scale[r];
                for (int j = 0; j < NF; j++) o = fmaf(V[(pos + j) * ks + i], x[r][j], o);
                out[r][i] = o;
            }
        pos += NF;
    }
    for (; pos <= max_last; pos++)
        for (int r = 0; r < 4; r++)
            if (pos <= last[r])
                gm_flash_step(gm_dot_f32(q[r], K + pos * ks, d, dl), cap, &old_m[r], &old_d[r], V + pos * ks, d, out[r]);
}

/* flash_attention.cc RoundToSuitablePowerOf2 and GetVTileSize: the tile height gemma.cpp picks from
 * the lane count, the query heads per KV head, the batch's tokens, its tasks and the worker count
 * (target_parallelism = its thread pools' MaxWorkers). */
static int64_t gm_round_pow2(int64_t n) { return n < 4 ? 1 : n < 8 ? 4 : n < 16 ? 8 : n < 32 ? 16 : 32; }

int64_t cv_gm_flash_vtile(int lanes, int64_t group, int64_t n_tokens, int64_t total_tasks, int64_t workers) {
    const int64_t max_equal_k = gm_round_pow2(group * n_tokens);
    const int64_t min_tile = total_tasks / 4 >= workers ? 4 : 1;
    return (lanes <= max_equal_k && total_tasks / lanes >= workers) ? lanes : (min_tile < max_equal_k ? min_tile : max_equal_k);
}

/* One batch of n_q tokens (one query sequence) through gemma.cpp's FlashAttention.
 * q (n_q, n_head, d), already normed, rotated and scaled; k, v (n_kv, n_head_kv, d) f32 at absolute
 * positions; token i attends [start[i], last[i]]; cap: the scores' soft-cap (0: none); workers: gemma.cpp's
 * MaxWorkers → out (n_q, n_head, d). n_threads only splits the tiles among our threads. */
int cv_gm_flash_attention(const float *q, int64_t n_q, int n_head, int d, const float *k, const float *v, int n_head_kv,
                          const int64_t *start, const int64_t *last, float cap, float *out, int lanes, int workers,
                          int n_threads) {
    if (lanes != 16 && lanes != 8 && lanes != 4) return -2;
    for (int64_t i = 0; i < n_q; i++)
        if (start[i] < 0 || start[i] > last[i]) return -1;
    const int64_t group = n_head / n_head_kv, total = n_q * (int64_t)n_head, ks = (int64_t)n_head_kv * d;
    const int64_t tile = cv_gm_flash_vtile(lanes, group, n_q, total, workers > 0 ? workers : 1);
    const int64_t n_tasks = (total + tile - 1) / tile;
    int bad = 0;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_tasks > 1) reduction(|: bad)
    for (int64_t task = 0; task < n_tasks; task++) {
        const float *qr[16];
        float *orow[16];
        int64_t st[16], ls[16], kvh[16];
        const int64_t first = task * tile;
        int use_tile = tile > 1 && first + tile - 1 < total;
        int rows = 0;
        for (int64_t off = 0; off < tile && first + off < total; off++, rows++) {
            const int64_t t = first + off, tok = t % n_q, head = t / n_q;
            qr[off] = q + (tok * n_head + head) * (int64_t)d;
            orow[off] = out + (tok * n_head + head) * (int64_t)d;
            st[off] = start[tok];
            ls[off] = last[tok];
            kvh[off] = head / group;
            if (st[off] != st[0] || kvh[off] != kvh[0]) use_tile = 0;
        }
        if (use_tile) {
            const float *K = k + kvh[0] * d, *V = v + kvh[0] * d;
            if (tile == lanes) gm_flash_tile(qr, orow, ls, st[0], K, V, ks, d, cap, lanes);
            else if (tile == 4) gm_flash_tile4(qr, orow, ls, st[0], K, V, ks, d, cap, lanes);
            else bad = 1;
        } else {
            for (int r = 0; r < rows; r++)
                gm_flash_single(qr[r], k + kvh[r] * d, v + kvh[r] * d, ks, st[r], ls[r], d, cap, orow[r], lanes / 2);
        }
    }
    return bad ? -3 : 0;
}

/* ---- GeGLU --------------------------------------------------------------------------------------- */
/* gate, up: bf16 values (MatMul outputs stored as BF16) → bf16(up · gelu_tanh(gate)). */
void cv_gm_geglu(const float *gate, const float *up, float *out, int64_t n, int native) {
    const float kMul = 0.03567740813636141f, kSqrt2OverPi = 0.797884560804236f;
    for (int64_t i = 0; i < n; i++) {
        const float x = gate[i];
        const float x2 = x * x;
        const float arg = x * fmaf(kMul, x2, kSqrt2OverPi);
        const float cdf = fmaf(0.5f, gm_tanh(arg), 0.5f);
        out[i] = gm_round(up[i] * (x * cdf), native);
    }
}

/* ---- MatMul -------------------------------------------------------------------------------------- */
/* One C element: a, b are K bf16 values. */
#if GM_HAVE_NATIVE
GM_BF16_FN static void gm_mm_native_row4(const uint16_t *a, const uint16_t *b0, int64_t ldb, int nb, int64_t K,
                                          float *out) {
    __m512 c[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512bh va = (__m512bh)_mm512_loadu_si512((const void *)(a + k));
        for (int j = 0; j < nb; j++)
            c[j] = _mm512_dpbf16_ps(c[j], va, (__m512bh)_mm512_loadu_si512((const void *)(b0 + j * ldb + k)));
    }
    if (k < K) { /* LoadN: the rest zero */
        const __mmask32 m = (__mmask32)((1ull << (K - k)) - 1);
        const __m512bh va = (__m512bh)_mm512_maskz_loadu_epi16(m, a + k);
        for (int j = 0; j < nb; j++)
            c[j] = _mm512_dpbf16_ps(c[j], va, (__m512bh)_mm512_maskz_loadu_epi16(m, b0 + j * ldb + k));
    }
    for (int j = 0; j < nb; j++) {
        float lane[16];
        _mm512_storeu_ps(lane, c[j]);
        float s = lane[0];
        for (int l = 1; l < 16; l++) s = s + lane[l];
        out[j] = s;
    }
}
#endif

static float gm_mm_emu(const uint16_t *a, const uint16_t *b, int64_t K, int lanes) {
    float acc[16] = {0};
    const int nb = 2 * lanes;
    for (int64_t k = 0; k < K; k += nb) {
        for (int l = 0; l < lanes; l++) {
            const int64_t e = k + 2 * l;
            const float ae = e < K ? gm_f32(a[e]) : 0.0f, be = e < K ? gm_f32(b[e]) : 0.0f;
            acc[l] = fmaf(ae, be, acc[l]);
        }
        for (int l = 0; l < lanes; l++) {
            const int64_t o = k + 2 * l + 1;
            const float ao = o < K ? gm_f32(a[o]) : 0.0f, bo = o < K ? gm_f32(b[o]) : 0.0f;
            acc[l] = fmaf(ao, bo, acc[l]);
        }
    }
    float s = acc[0];
    for (int l = 1; l < lanes; l++) s = s + acc[l];
    return s;
}

/* gm_mm_emu for up to 4 columns at once in the vector registers it describes (the same FMAs in the
 * same order: per lane the even product, then the odd one; the lanes summed 0..lanes-1). */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw,fma"))) static void gm_mm_emu16_row4(const uint16_t *a, const uint16_t *b0, int64_t ldb,
                                                                            int nb, int64_t K, float *out) {
    __m512 c[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t k = 0; k < K; k += 32) {
        const __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (K - k)) - 1);
        const __m512i va = _mm512_maskz_loadu_epi16(m, a + k);
        const __m512 ae = _mm512_castsi512_ps(_mm512_slli_epi32(va, 16)), ao = _mm512_castsi512_ps(_mm512_and_si512(va, hi));
        for (int j = 0; j < nb; j++) {
            const __m512i vb = _mm512_maskz_loadu_epi16(m, b0 + j * ldb + k);
            c[j] = _mm512_fmadd_ps(ae, _mm512_castsi512_ps(_mm512_slli_epi32(vb, 16)), c[j]);
            c[j] = _mm512_fmadd_ps(ao, _mm512_castsi512_ps(_mm512_and_si512(vb, hi)), c[j]);
        }
    }
    for (int j = 0; j < nb; j++) {
        float lane[16];
        _mm512_storeu_ps(lane, c[j]);
        float sum = lane[0];
        for (int l = 1; l < 16; l++) sum = sum + lane[l];
        out[j] = sum;
    }
}

__attribute__((target("avx2,fma"))) static void gm_mm_emu8_row4(const uint16_t *a, const uint16_t *b0, int64_t ldb, int nb,
                                                               int64_t K, float *out) {
    __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    uint16_t pa[16], pb[16];
    for (int64_t k = 0; k < K; k += 16) {
        const uint16_t *ak = a + k;
        if (K - k < 16) { /* zero-padded tail vector */
            memset(pa, 0, sizeof pa);
            memcpy(pa, ak, (size_t)(K - k) * sizeof(uint16_t));
            ak = pa;
        }
        const __m256i va = _mm256_loadu_si256((const __m256i *)ak);
        const __m256 ae = _mm256_castsi256_ps(_mm256_slli_epi32(va, 16)), ao = _mm256_castsi256_ps(_mm256_and_si256(va, hi));
        for (int j = 0; j < nb; j++) {
            const uint16_t *bk = b0 + j * ldb + k;
            if (K - k < 16) {
                memset(pb, 0, sizeof pb);
                memcpy(pb, bk, (size_t)(K - k) * sizeof(uint16_t));
                bk = pb;
            }
            const __m256i vb = _mm256_loadu_si256((const __m256i *)bk);
            c[j] = _mm256_fmadd_ps(ae, _mm256_castsi256_ps(_mm256_slli_epi32(vb, 16)), c[j]);
            c[j] = _mm256_fmadd_ps(ao, _mm256_castsi256_ps(_mm256_and_si256(vb, hi)), c[j]);
        }
    }
    for (int j = 0; j < nb; j++) {
        float lane[8];
        _mm256_storeu_ps(lane, c[j]);
        float sum = lane[0];
        for (int l = 1; l < 8; l++) sum = sum + lane[l];
        out[j] = sum;
    }
}
#define GM_HAVE_EMU_SIMD 1
#else
#define GM_HAVE_EMU_SIMD 0
#endif

/* A (M, K) f32 (rounded to bf16 here, as gemma.cpp's DecompressA does), B (N, K) bf16 bits →
 * C (M, N) with row stride ldc; out_bf16: C rounded to bf16 (a BF16 MatMul output). */
int cv_gm_matmul(const float *A, int64_t M, int64_t K, const uint16_t *B, int64_t N, float *C, int64_t ldc, int out_bf16,
                 int native, int lanes, int n_threads) {
    if (native && (!GM_HAVE_NATIVE || !cv_gm_cpu_native_bf16() || lanes != 16)) return -1;
    if (lanes != 16 && lanes != 8) return -2;
    uint16_t *Ab = (uint16_t *)malloc((size_t)(M * K) * sizeof(uint16_t));
    if (!Ab) return -3;
    for (int64_t i = 0; i < M * K; i++) Ab[i] = gm_bf16(A[i], native);
    int simd = 0; /* the emulated FMAs in vector registers where this CPU has them */
#if GM_HAVE_EMU_SIMD
    if (!native && lanes == 16) simd = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    if (!native && lanes == 8) simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    const int64_t nblk = (N + 3) / 4;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && nblk > 1)
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * 4;
        const int nb = (int)(N - c0 < 4 ? N - c0 : 4);
        for (int64_t r = 0; r < M; r++) {
            float out[4];
#if GM_HAVE_NATIVE
            if (native) gm_mm_native_row4(Ab + r * K, B + c0 * K, K, nb, K, out);
            else
#endif
#if GM_HAVE_EMU_SIMD
            if (simd && lanes == 16) gm_mm_emu16_row4(Ab + r * K, B + c0 * K, K, nb, K, out);
            else if (simd) gm_mm_emu8_row4(Ab + r * K, B + c0 * K, K, nb, K, out);
            else
#endif
                for (int j = 0; j < nb; j++) out[j] = gm_mm_emu(Ab + r * K, B + (c0 + j) * K, K, lanes);
            for (int j = 0; j < nb; j++) {
                const float y = out[j] * 1.0f + 0.0f; /* MulAdd(sum, scale, add) */
                C[r * ldc + c0 + j] = out_bf16 ? gm_round(y, native) : y;
            }
        }
    }
    free(Ab);
    return 0;
}
