/* Quantized matrix × activation kernels with ggml's CPU arithmetic (engine/kernels/README in
 * engine/kernels/__init__.py): activations are quantized to the weight type's vec_dot type exactly as
 * ggml-cpu's x86 quantize_row_* do, the products are integer dot products per block, and each
 * block's integer sum is scaled by the same fp16/f32 factors ggml's vec_dot_* functions use
 * (ggml/src/ggml-cpu/quants.c). Block layouts follow ggml/src/ggml-common.h. Only the order in
 * which per-block float terms are summed can differ from llama.cpp's SIMD paths.
 *
 * Hot functions are compiled for several x86 targets (AVX-512, AVX2, baseline) and picked at load
 * time by the CPU's features (GCC target_clones); rows are split across threads with OpenMP.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CV_CLONES
#endif

/* ---- fp16 <-> fp32 (IEEE binary16, round to nearest even), as F16C does ---------------------- */
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* result is subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign; /* < half the smallest subnormal */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e; /* 14 + (113 - e) */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

/* ---- block layouts (ggml-common.h) ---------------------------------------------------------- */
#pragma pack(push, 1)
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;                 /* 34 bytes */
typedef struct { uint16_t d, s; int8_t qs[32]; } blk_q8_1;              /* 36: s = fp16(d·Σq) */
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } blk_q8_K; /* 292 */
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;             /* 20 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0; /* 22 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K; /* 144 */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K; /* 210 */
#pragma pack(pop)

/* ggml_type ids (ggml.h) */
enum { T_Q4_1 = 3, T_Q5_0 = 6, T_Q8_0 = 8, T_Q8_1 = 9, T_Q4_K = 12, T_Q6_K = 14, T_Q8_K = 15 };

/* ---- activation quantizers: one row of k floats ---------------------------------------------- */
/* Q8_0 / Q8_1 as ggml-cpu's x86 quantize_row_q8_0/1: d = amax/127 (stored fp16), q = round-half-even
 * of x·(127/amax); Q8_1 also stores s = fp16(d·Σq) with the f32 d. */
void cv_quantize_q8_0(const float *x, void *vy, int64_t k) {
    blk_q8_0 *y = (blk_q8_0 *)vy;
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = f2h(d);
        for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)nearbyintf(xb[j] * id);
    }
}

void cv_quantize_q8_1(const float *x, void *vy, int64_t k) {
    blk_q8_1 *y = (blk_q8_1 *)vy;
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            y[b].qs[j] = (int8_t)nearbyintf(xb[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = f2h(d);
        y[b].s = f2h(d * (float)sum);
    }
}

/* Q8_K as quantize_row_q8_K_ref: iscale = -127/max (max: the value of largest |x|),
 * q = min(127, nearest_int(iscale·x)), d = 1/iscale, bsums over each 16 values. */
void cv_quantize_q8_K(const float *x, void *vy, int64_t k) {
    blk_q8_K *y = (blk_q8_K *)vy;
    for (int64_t b = 0; b < k / 256; b++) {
        const float *xb = x + b * 256;
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < 256; j++) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) { amax = ax; max = xb[j]; }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(blk_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < 256; j++) {
            int v = (int)nearbyintf(iscale * xb[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += y[b].qs[j * 16 + l];
            y[b].bsums[j] = (int16_t)s;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- dot products of one weight row with one quantized activation row ------------------------ */
CV_CLONES static float dot_q8_0(const void *vw, const void *va, int nb) {
    const blk_q8_0 *w = vw, *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int j = 0; j < 32; j++) sumi += w[b].qs[j] * a[b].qs[j];
        sumf += (float)sumi * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sumf;
}

CV_CLONES static float dot_q4_1(const void *vw, const void *va, int nb) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (w[b].qs[j] & 0x0f) * a[b].qs[j];
            sumi += (w[b].qs[j] >> 4) * a[b].qs[j + 16];
        }
        sumf += (h2f(w[b].d) * h2f(a[b].d)) * (float)sumi + h2f(w[b].m) * h2f(a[b].s);
    }
    return sumf;
}

CV_CLONES static float dot_q5_0(const void *vw, const void *va, int nb) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            const int lo = (int)((w[b].qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16;
            const int hi = (int)((w[b].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += lo * a[b].qs[j] + hi * a[b].qs[j + 16];
        }
        sumf += (h2f(w[b].d) * h2f(a[b].d)) * (float)sumi;
    }
    return sumf;
}

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes (get_scale_min_k4). */
CV_CLONES static float dot_q4_K(const void *vw, const void *va, int nb) {
    const blk_q4_K *w = vw;
    const blk_q8_K *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        const uint8_t *s = w[b].scales;
        for (int j = 0; j < 8; j++) {
            if (j < 4) {
                sc[j] = s[j] & 63;
                mn[j] = s[j + 4] & 63;
            } else {
                sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
                mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
            }
        }
        int summ = 0;
        for (int j = 0; j < 16; j++) summ += a[b].bsums[j] * mn[j / 2];
        int sumi = 0;
        for (int j = 0; j < 4; j++) { /* 64 values per 32 bytes: low nibbles, then high */
            const uint8_t *q = w[b].qs + 32 * j;
            const int8_t *y0 = a[b].qs + 64 * j, *y1 = y0 + 32;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 0x0f) * y0[l];
                s1 += (q[l] >> 4) * y1[l];
            }
            sumi += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
        }
        const float d = h2f(w[b].d) * a[b].d, dmin = h2f(w[b].dmin) * a[b].d;
        sumf += d * (float)sumi - dmin * (float)summ;
    }
    return sumf;
}

/* Q6_K: 16 sub-blocks of 16 with int8 scales; 6-bit values from ql (4 bits) and qh (2 bits). */
CV_CLONES static float dot_q6_K(const void *vw, const void *va, int nb) {
    const blk_q6_K *w = vw;
    const blk_q8_K *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        int8_t v[256];
        for (int h = 0; h < 2; h++) { /* two halves of 128 */
            const uint8_t *ql = w[b].ql + 64 * h, *qh = w[b].qh + 32 * h;
            int8_t *o = v + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += v[16 * j + l] * a[b].qs[16 * j + l];
            sumi += w[b].scales[j] * s;
        }
        sumf += (h2f(w[b].d) * a[b].d) * (float)sumi;
    }
    return sumf;
}

/* ---- matmul: Y[t, r] = Σ_k W[r, k] · X[t, k] with X quantized as ggml would ------------------- */
typedef float (*dot_fn)(const void *, const void *, int);

/* weight type → (block elements, block bytes, activation type, activation block bytes, dot) */
static int layout(int wtype, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    switch (wtype) {
    case T_Q8_0: *be = 32; *bb = 34; *atype = T_Q8_0; *ab = 34; *dot = dot_q8_0; return 0;
    case T_Q4_1: *be = 32; *bb = 20; *atype = T_Q8_1; *ab = 36; *dot = dot_q4_1; return 0;
    case T_Q5_0: *be = 32; *bb = 22; *atype = T_Q8_0; *ab = 34; *dot = dot_q5_0; return 0;
    case T_Q4_K: *be = 256; *bb = 144; *atype = T_Q8_K; *ab = 292; *dot = dot_q4_K; return 0;
    case T_Q6_K: *be = 256; *bb = 210; *atype = T_Q8_K; *ab = 292; *dot = dot_q6_K; return 0;
    default: return -1;
    }
}

int cv_supported(int wtype) {
    int be, bb, at, ab;
    dot_fn f;
    return layout(wtype, &be, &bb, &at, &ab, &f) == 0;
}

/* Quantize activations X (n_tok × n_cols) for weight type wtype into xq (cv_act_bytes bytes). */
int64_t cv_act_bytes(int wtype, int64_t n_cols, int64_t n_tok) {
    int be, bb, at, ab;
    dot_fn f;
    if (layout(wtype, &be, &bb, &at, &ab, &f)) return -1;
    return n_tok * (n_cols / be) * ab;
}

int cv_quantize_acts(int wtype, const float *X, int64_t n_cols, int64_t n_tok, void *xq) {
    int be, bb, at, ab;
    dot_fn f;
    if (layout(wtype, &be, &bb, &at, &ab, &f) || n_cols % be) return -1;
    const int64_t row = (n_cols / be) * ab;
    for (int64_t t = 0; t < n_tok; t++) {
        void *dst = (char *)xq + t * row;
        if (at == T_Q8_0) cv_quantize_q8_0(X + t * n_cols, dst, n_cols);
        else if (at == T_Q8_1) cv_quantize_q8_1(X + t * n_cols, dst, n_cols);
        else cv_quantize_q8_K(X + t * n_cols, dst, n_cols);
    }
    return 0;
}

/* Y (n_tok × n_rows) from weights W (n_rows rows of n_cols in wtype blocks) and pre-quantized xq. */
int cv_matmul_q(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tok, float *Y, int n_threads) {
    int be, bb, at, ab;
    dot_fn dot;
    if (layout(wtype, &be, &bb, &at, &ab, &dot) || n_cols % be) return -1;
    const int nb = (int)(n_cols / be);
    const int64_t wrow = (int64_t)nb * bb, arow = (int64_t)nb * ab;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
        const void *wr = (const char *)W + r * wrow;
        for (int64_t t = 0; t < n_tok; t++) Y[t * n_rows + r] = dot(wr, (const char *)xq + t * arow, nb);
    }
    return 0;
}
