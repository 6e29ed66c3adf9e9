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
#include <limits.h>
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
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;                /* 18 */
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;             /* 20 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0; /* 22 */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1; /* 24 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K; /* 144 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K; /* 176 */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K; /* 210 */
#pragma pack(pop)

/* ggml_type ids (ggml.h) */
enum { T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q8_1 = 9, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15 };

/* ---- activation quantizers: one row of k floats ---------------------------------------------- */
/* Q8_0 / Q8_1 as ggml-cpu's x86 quantize_row_q8_0/1: d = amax/127 (stored fp16), q = round-half-even
 * of x·(127/amax); Q8_1 also stores s = fp16(d·Σq) with the f32 d. */
CV_CLONES void cv_quantize_q8_0(const float *x, void *vy, int64_t k) {
    blk_q8_0 *y = (blk_q8_0 *)vy;
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax; /* fmaxf for a non-NaN amax, inlined */
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = f2h(d);
        for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)nearbyintf(xb[j] * id);
    }
}


CV_CLONES void cv_quantize_q8_1(const float *x, void *vy, int64_t k) {
    blk_q8_1 *y = (blk_q8_1 *)vy;
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax; /* fmaxf for a non-NaN amax, inlined */
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
CV_CLONES void cv_quantize_q8_K(const float *x, void *vy, int64_t k) {
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

/* Q4_K's 8 six-bit scales and mins packed in 12 bytes (ggml-quants.c get_scale_min_k4) */
static inline void q4_K_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    /* the same values, four at a time: bytes 0-3 hold scales 0-3 (low 6 bits) and their top bits
     * continue scales 4-7 above bytes 8-11's low nibbles; bytes 4-7 and 8-11's high nibbles the mins */
    uint32_t u[3], v[4];
    memcpy(u, s, 12);
    v[0] = u[0] & 0x3f3f3f3fu;
    v[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    v[2] = u[1] & 0x3f3f3f3fu;
    v[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    memcpy(sc, v, 8);
    memcpy(mn, v + 2, 8);
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

/* Σ (v − off)·y over a 32-value block whose values v are 16 bytes of nibbles (low: values 0..15,
 * high: 16..31) — with qh, bit e of its 32 bits is bit 4 of value e (the 5-bit types) */
static inline int nibble_block_sum(const uint8_t *qs, const uint8_t *qhp, int off, const int8_t *y) {
    uint32_t qh = 0;
    if (qhp) memcpy(&qh, qhp, 4);
    int sumi = 0;
    for (int j = 0; j < 16; j++) {
        const int lo = (int)((qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - off;
        const int hi = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off;
        sumi += lo * y[j] + hi * y[j + 16];
    }
    return sumi;
}

CV_CLONES static float dot_q4_1(const void *vw, const void *va, int nb) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++)
        sumf += (h2f(w[b].d) * h2f(a[b].d)) * (float)nibble_block_sum(w[b].qs, NULL, 0, a[b].qs) + h2f(w[b].m) * h2f(a[b].s);
    return sumf;
}

/* ggml_vec_dot_q4_0_q8_0_generic: nibble − 8; Σ·d_w·d_a in that order */
CV_CLONES static float dot_q4_0(const void *vw, const void *va, int nb) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) sumf += (float)nibble_block_sum(w[b].qs, NULL, 8, a[b].qs) * h2f(w[b].d) * h2f(a[b].d);
    return sumf;
}

CV_CLONES static float dot_q5_0(const void *vw, const void *va, int nb) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) sumf += (h2f(w[b].d) * h2f(a[b].d)) * (float)nibble_block_sum(w[b].qs, w[b].qh, 16, a[b].qs);
    return sumf;
}

/* ggml_vec_dot_q5_1_q8_1_generic: 5-bit unsigned values; (d_w·d_a)·Σ + m_w·s_a */
CV_CLONES static float dot_q5_1(const void *vw, const void *va, int nb) {
    const blk_q5_1 *w = vw;
    const blk_q8_1 *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++)
        sumf += (h2f(w[b].d) * h2f(a[b].d)) * (float)nibble_block_sum(w[b].qs, w[b].qh, 0, a[b].qs) + h2f(w[b].m) * h2f(a[b].s);
    return sumf;
}

/* Q5_K: Q4_K's sub-blocks and scales, bit 2j / 2j+1 of qh[l] the fifth bit of value l of sub-blocks
 * 2j / 2j+1; the AVX2 dot's 8 float lanes (each lane's integer as its maddubs/madd forms it) */
CV_CLONES static float dot_q5_K(const void *vw, const void *va, int nb) {
    const blk_q5_K *w = vw;
    const blk_q8_K *a = va;
    float lanes[8] = {0}, summs = 0.0f;
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        q4_K_scales(w[b].scales, sc, mn);
        int summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        int32_t li[8] = {0};
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = w[b].qs + 32 * j;
            const int8_t *y0 = a[b].qs + 64 * j, *y1 = y0 + 32;
            for (int l = 0; l < 32; l++) {
                const int v0 = (q[l] & 0x0f) | (((w[b].qh[l] >> (2 * j)) & 1) << 4), v1 = (q[l] >> 4) | (((w[b].qh[l] >> (2 * j + 1)) & 1) << 4);
                li[l / 4] += sc[2 * j] * v0 * y0[l] + sc[2 * j + 1] * v1 * y1[l]; /* lane = 4 consecutive values */
            }
        }
        const float d = a[b].d * h2f(w[b].d), dmin = -a[b].d * h2f(w[b].dmin);
        summs = fmaf(dmin, (float)summ, summs);
        for (int l = 0; l < 8; l++) lanes[l] = fmaf(d, (float)li[l], lanes[l]);
    }
    float x[4];
    for (int i = 0; i < 4; i++) x[i] = lanes[i + 4] + lanes[i];
    return ((x[0] + x[2]) + (x[1] + x[3])) + summs;
}

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes (get_scale_min_k4). */
CV_CLONES static float dot_q4_K(const void *vw, const void *va, int nb) {
    const blk_q4_K *w = vw;
    const blk_q8_K *a = va;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        q4_K_scales(w[b].scales, sc, mn);
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

/* ---- AVX2 versions (x86-64 with AVX2+FMA+F16C, chosen at run time) --------------------------- */
/* Per block: 32 int8 products summed in int16 pairs (maddubs) then int32 (madd), converted to
 * float and accumulated with the block's scale in 8 lanes, summed at the end — so the float
 * summation order is that of ggml's own AVX2 paths, not the scalar loop's. */
typedef float (*dot_fn)(const void *, const void *, int);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

AVX2_FN static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 bytes of packed nibbles → 32 bytes: low nibbles (elements 0..15), then high (16..31) */
AVX2_FN static inline __m256i nibbles(const uint8_t *q) {
    const __m128i b = _mm_loadu_si128((const __m128i *)q);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

/* Q4_0's 32 values as signed bytes: the nibble minus 8 */
AVX2_FN static inline __m256i q4_0_values(const blk_q4_0 *w) { return _mm256_sub_epi8(nibbles(w->qs), _mm256_set1_epi8(8)); }

/* 32 five-bit values 0..31: the nibbles, bit e of qh as bit 4 of value e */
AVX2_FN static inline __m256i q5_values(const uint8_t *qs, const uint8_t *qhp) {
    uint32_t qh;
    memcpy(&qh, qhp, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000);
    const __m256i bitsel = _mm256_set1_epi64x(0x8040201008040201);
    __m256i hb = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf); /* byte e holds qh's byte e/8 */
    hb = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bitsel), bitsel);        /* 0xff where bit e is set */
    return _mm256_or_si256(nibbles(qs), _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
}

/* Q5_0's 32 values as signed bytes: five bits minus 16 */
AVX2_FN static inline __m256i q5_0_values(const blk_q5_0 *w) { return _mm256_sub_epi8(q5_values(w->qs, w->qh), _mm256_set1_epi8(16)); }

/* Q6_K: the four 32-value vectors of one 128-value half (6-bit, unsigned 0..63) */
AVX2_FN static inline void q6_K_half(const uint8_t *ql, const uint8_t *qhp, __m256i *v) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    const __m256i qa = _mm256_loadu_si256((const __m256i *)ql), qb = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)qhp);
    v[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
    v[1] = _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
    v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
    v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
}

/* decode row loops: Y[r] = dot(row r) for r in [r0, r1), one function per type so the dot inlines */
#define CV_GEMV(attr, name, dotf)                                                                                  \
    attr static void name(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {  \
        for (int64_t r = r0; r < r1; r++) {                                                                        \
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch(W + (r + 4) * wrow + o); /* the hardware prefetcher alone lags: 5-10 % */ \
            Y[r] = dotf(W + r * wrow, xq, nb);                                                                     \
        }                                                                                                          \
    }
/* CV_PAIRS_ACC(acc, u, s): acc + CV_PAIRS(u, s); CV_VNNI: dpbusd (no int16 pair saturation);
 * CV_MASK_BYTES: AVX-512BW byte masks */
#define CV_FN AVX2_FN
#define CV_SFX(name) name##_avx2
#define CV_PAIRS(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
#define CV_PAIRS_ACC(acc, u, s) _mm256_add_epi32(acc, CV_PAIRS(u, s))
#define CV_MADD_ACC(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#include "qdots_x86.h"
#undef CV_MADD_ACC
#undef CV_FN
#undef CV_SFX
#undef CV_PAIRS
#undef CV_PAIRS_ACC
#define CV_VNNI
#define CV_FN __attribute__((target("avx2,fma,f16c,avxvnni")))
#define CV_SFX(name) name##_avxvnni
#define CV_PAIRS(u, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
#define CV_PAIRS_ACC(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define CV_MADD_ACC(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#include "qdots_x86.h"
#undef CV_MADD_ACC
#undef CV_FN
#undef CV_SFX
#undef CV_PAIRS
#undef CV_PAIRS_ACC
#define CV_MASK_BYTES
#define CV_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define CV_SFX(name) name##_avx512vnni
#define CV_PAIRS(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define CV_PAIRS_ACC(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define CV_MADD_ACC(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#include "qdots_x86.h"
#undef CV_MADD_ACC
#undef CV_FN
#undef CV_SFX
#undef CV_PAIRS
#undef CV_PAIRS_ACC
#undef CV_VNNI
#undef CV_MASK_BYTES

/* Q4_K block: the low and high nibbles of its four 32-byte groups (values 64j..64j+31, 64j+32..64j+63) */
AVX2_FN static inline void q4_K_nibbles(const blk_q4_K *w, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        lo[j] = _mm256_and_si256(q, m4), hi[j] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
}

/* against one activation block, per pair j of 32-value sub-blocks: the 8 int32 lanes of
 * sc[2j]·Σq·y + sc[2j+1]·Σq·y, and the min term mn[2j]·Σy + mn[2j+1]·Σy from the 16-value sums */
AVX2_FN static inline void q4_K_pair_sums(const __m256i *lo, const __m256i *hi, const uint8_t *sc, const uint8_t *mn,
                                          const blk_q8_K *a, __m256i *sj, int32_t *imin) {
    for (int j = 0; j < 4; j++) {
        const __m256i p0 = _mm256_maddubs_epi16(lo[j], _mm256_loadu_si256((const __m256i *)(a->qs + 64 * j)));
        const __m256i p1 = _mm256_maddubs_epi16(hi[j], _mm256_loadu_si256((const __m256i *)(a->qs + 64 * j + 32)));
        sj[j] = _mm256_add_epi32(_mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * j])), _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * j + 1])));
        imin[j] = mn[2 * j] * (a->bsums[4 * j] + a->bsums[4 * j + 1]) + mn[2 * j + 1] * (a->bsums[4 * j + 2] + a->bsums[4 * j + 3]);
    }
}

/* a block's 8 int32 lanes, all four pairs together, and each pair's integer min term */
AVX2_FN static inline __m256i q4_K_block_lanes(const __m256i *lo, const __m256i *hi, const uint8_t *sc, const uint8_t *mn,
                                               const blk_q8_K *a, int32_t *imin) {
    __m256i sj[4];
    q4_K_pair_sums(lo, hi, sc, mn, a, sj, imin);
    return _mm256_add_epi32(_mm256_add_epi32(sj[0], sj[1]), _mm256_add_epi32(sj[2], sj[3]));
}

/* ggml_vec_dot_q4_K_q8_K's min term: four float lanes (one per pair of sub-blocks), each an FMA
 * chain of dmin = −d_a·dmin_w times that pair's integer, summed movehl-then-movehdup at the end */
static inline void q4_K_min_lanes(float *am, float dmin, const int32_t *imin) {
    for (int k = 0; k < 4; k++) am[k] = fmaf(dmin, (float)imin[k], am[k]);
}
static inline float q4_K_min_sum(const float *am) { return (am[0] + am[2]) + (am[1] + am[3]); }

/* Q5_K block: Q4_K's nibble vectors with bit 2j (low) / 2j+1 (high) of each qh byte as bit 4 */
AVX2_FN static inline void q5_K_values(const blk_q5_K *w, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1), hb = _mm256_loadu_si256((const __m256i *)w->qh);
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        const __m256i b0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4);
        const __m256i b1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4);
        lo[j] = _mm256_or_si256(_mm256_and_si256(q, m4), b0), hi[j] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), b1);
    }
}

/* ggml_vec_dot_q5_K_q8_K (AVX2): d = d_a·d_w and dmin = −d_a·dmin_w per block; the mins' integer
 * times dmin added to a float sum, the lanes fused with d, hsum + that sum at the end */
AVX2_FN static float dot_q5_K_avx2(const void *vw, const void *va, int nb) {
    const blk_q5_K *w = vw;
    const blk_q8_K *a = va;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        q4_K_scales(w[b].scales, sc, mn);
        __m256i lo[4], hi[4];
        q5_K_values(&w[b], lo, hi);
        int32_t imin[4];
        const __m256i sumi = q4_K_block_lanes(lo, hi, sc, mn, &a[b], imin);
        const float summ = (float)(imin[0] + imin[1] + imin[2] + imin[3]);
        summs = fmaf(-a[b].d * _cvtsh_ss(w[b].dmin), summ, summs); /* contracted, as ggml-cpu is built (-march=native) */
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[b].d * _cvtsh_ss(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc) + summs;
}

/* ggml_vec_dot_q4_K_q8_K (AVX2): 6-bit scales/mins; nibble products per 32 values scaled in int32,
 * the lanes fused with d = d_a·d_w, the min term in its own four lanes (q4_K_min_lanes) */
AVX2_FN static float dot_q4_K_avx2(const void *vw, const void *va, int nb) {
    const blk_q4_K *w = vw;
    const blk_q8_K *a = va;
    __m256 acc = _mm256_setzero_ps();
    float am[4] = {0, 0, 0, 0};
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        q4_K_scales(w[b].scales, sc, mn);
        __m256i lo[4], hi[4];
        q4_K_nibbles(&w[b], lo, hi);
        int32_t imin[4];
        const __m256i sumi = q4_K_block_lanes(lo, hi, sc, mn, &a[b], imin);
        q4_K_min_lanes(am, -a[b].d * _cvtsh_ss(w[b].dmin), imin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[b].d * _cvtsh_ss(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc) + q4_K_min_sum(am);
}

/* Q6_K's −32 offset as ggml's AVX2 dot applies it: once per block, from the activation block sums —
 * lane l takes 32·(bsums[2l]·scale[2l] + bsums[2l+1]·scale[2l+1]) — so each of the 8 int32 lanes holds
 * ggml's integer and the float lanes accumulate identically */
AVX2_FN static inline __m256i q6_K_offset(const blk_q6_K *w, const blk_q8_K *a) {
    const __m256i bsums = _mm256_loadu_si256((const __m256i *)a->bsums);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
    return _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
}

/* Q6_K block: its 8 unsigned 32-value vectors and each one's pair of int16 scales (16 values each) */
AVX2_FN static inline void q6_K_unpack(const blk_q6_K *w, __m256i *v, __m256i *s16) {
    for (int h = 0; h < 2; h++) {
        q6_K_half(w->ql + 64 * h, w->qh + 32 * h, v + 4 * h);
        for (int k = 0; k < 4; k++)
            s16[4 * h + k] = _mm256_set_m128i(_mm_set1_epi16(w->scales[8 * h + 2 * k + 1]), _mm_set1_epi16(w->scales[8 * h + 2 * k]));
    }
}

/* the unpacked block against one activation block: 8 int32 lanes of Σ scale·q·y (maddubs) minus the offset */
AVX2_FN static inline __m256i q6_K_lanes(const blk_q6_K *w, const __m256i *v, const __m256i *s16, const blk_q8_K *a) {
    __m256i sumi = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++)
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(v[k], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * k))), s16[k]));
    return _mm256_sub_epi32(sumi, q6_K_offset(w, a));
}

AVX2_FN static inline float dot_q6_K_avx2(const void *vw, const void *va, int nb) {
    const blk_q6_K *w = vw;
    const blk_q8_K *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i v[8], s16[8];
        q6_K_unpack(&w[b], v, s16);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w[b].d) * a[b].d), _mm256_cvtepi32_ps(q6_K_lanes(&w[b], v, s16, &a[b])), acc);
    }
    return hsum8(acc);
}

/* Four activation rows at once (prefill): each weight block is loaded and unpacked once for four
 * tokens, each token keeping its own 8-lane accumulator — per token the same float order as the
 * one-row kernels above, so prefill and decode give identical results. */
typedef void (*dot4_fn)(const void *, const void *, int64_t, int, float *);

AVX2_FN static void dot4_q4_K_avx2(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q4_K *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float am[4][4] = {{0}};
    for (int b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        q4_K_scales(w[b].scales, sc, mn);
        __m256i lo[4], hi[4];
        q4_K_nibbles(&w[b], lo, hi);
        const float dw = _cvtsh_ss(w[b].d), dminw = _cvtsh_ss(w[b].dmin);
        for (int t = 0; t < 4; t++) {
            const blk_q8_K *a = (const blk_q8_K *)((const char *)va + t * arow) + b;
            int32_t imin[4];
            const __m256i sumi = q4_K_block_lanes(lo, hi, sc, mn, a, imin);
            q4_K_min_lanes(am[t], -a->d * dminw, imin);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a->d * dw), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + q4_K_min_sum(am[t]);
}

AVX2_FN static void dot4_q6_K_avx2(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q6_K *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        __m256i v[8], s16[8];
        q6_K_unpack(&w[b], v, s16);
        const float dw = _cvtsh_ss(w[b].d);
        for (int t = 0; t < 4; t++) {
            const blk_q8_K *a = (const blk_q8_K *)((const char *)va + t * arow) + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a->d), _mm256_cvtepi32_ps(q6_K_lanes(&w[b], v, s16, a)), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

#define CV_FN AVX2_FN
#define CV_SFX(name) name##_avx2
#define CV_MADD_ACC(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#include "kq_tiled_x86.h"
#undef CV_FN
#undef CV_SFX
#undef CV_MADD_ACC
#define CV_FN __attribute__((target("avx2,fma,f16c,avxvnni")))
#define CV_SFX(name) name##_avxvnni
#define CV_MADD_ACC(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#define CV_KQ_VNNI
#define CV_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#include "kq_tiled_x86.h"
#undef CV_FN
#undef CV_SFX
#undef CV_MADD_ACC
#undef CV_DPBUSD
#define CV_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define CV_SFX(name) name##_avx512vnni
#define CV_MADD_ACC(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#define CV_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define CV_KQ_ZMM
#include "kq_tiled_x86.h"
#undef CV_KQ_ZMM
#undef CV_FN
#undef CV_SFX
#undef CV_MADD_ACC
#undef CV_DPBUSD
#undef CV_KQ_VNNI

static int simd_override = -1; /* cv_set_simd: tests run the portable path on AVX2 machines too */

static int have_avx2(void) {
    static int cached = -1;
    if (simd_override >= 0) return simd_override > 0 && cached > 0;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached;
}

/* which integer-pair instruction the kernels use: 2 AVX-512 VNNI (+VL), 1 AVX-VNNI, 0 maddubs+madd.
 * cv_set_simd(2) keeps plain AVX2 on a VNNI machine (tests compare the two). */
static int vnni_kind(void) {
    static int cached = -1;
    if (!have_avx2() || simd_override == 2) return 0;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") ? 2
                 : __builtin_cpu_supports("avxvnni")                                        ? 1
                                                                                             : 0;
    }
    return cached;
}
#define CV_PICK(base) (vnni_kind() == 2 ? base##_avx512vnni : vnni_kind() == 1 ? base##_avxvnni : base##_avx2)
#else
static int simd_override = -1;
static int have_avx2(void) { (void)simd_override; return 0; }
static int vnni_kind(void) { return 0; }
#define CV_PICK(base) base##_avx2
#define dot_q8_0_avx2 dot_q8_0
#define dot_q4_1_avx2 dot_q4_1
#define dot_q5_0_avx2 dot_q5_0
#define dot_q4_0_avx2 dot_q4_0
#define dot_q5_1_avx2 dot_q5_1
#define dot_q5_K_avx2 dot_q5_K
#define dot_q4_K_avx2 dot_q4_K
#define dot_q6_K_avx2 dot_q6_K
typedef void (*dot4_fn)(const void *, const void *, int64_t, int, float *);
#endif

int cv_simd(void) { return have_avx2() ? (vnni_kind() ? 3 : 2) : 0; }

/* -1: detect (default: the best the CPU has); 0: portable C; 2: AVX2 without VNNI; 3: AVX2 with VNNI
 * where the CPU has it. Returns the level in use. */
int cv_set_simd(int level) {
    simd_override = -1;
    (void)have_avx2(); /* fill the detection cache */
    simd_override = level;
    return cv_simd();
}

/* ---- matmul: Y[t, r] = Σ_k W[r, k] · X[t, k] with X quantized as ggml would ------------------- */

/* weight type → (block elements, block bytes, activation type, activation block bytes, dot) */
typedef void (*gemv_fn)(const char *, int64_t, int64_t, int64_t, const void *, int, float *);
#if defined(__x86_64__) && defined(__GNUC__)
CV_GEMV(AVX2_FN, gemv_q6_K_avx2, dot_q6_K_avx2)

/* Q6_K decode with AVX-512: dot_q6_K_avx2's operations on two rows at once, row A in the low and row B in
 * the high 256 bits of each zmm (q6_K_half's unpack, maddubs against the activation's 32-byte vectors
 * broadcast to both halves, madd with each 16 values' scale — a vpermw of the two rows' sixteen int16
 * scales —, minus 32·Σ scale·bsums), so every int32 lane is that row's lane of dot_q6_K_avx2 and each
 * float chain its own; four rows a pass, the rows left over through dot_q6_K_avx2 */
#define AVX512BW_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")))
AVX512BW_FN static inline __m512i ld2x256(const void *pa, const void *pb) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)pa)), _mm256_loadu_si256((const __m256i *)pb), 1);
}
AVX512BW_FN static void gemvz_q6_K(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {
    const blk_q8_K *a = xq;
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
    __m512i spread[8]; /* 128-bit lanes: scale 2k, 2k+1 of row A, then of row B (int16 words 0..15: A, 16..31: B) */
    for (int k = 0; k < 8; k++) {
        int16_t ix[32];
        for (int l = 0; l < 32; l++) ix[l] = (int16_t)(16 * (l / 16) + 2 * k + (l / 8) % 2);
        spread[k] = _mm512_loadu_si512((const void *)ix);
    }
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        for (int64_t o = 0; r + 8 <= r1 && o < 4 * wrow; o += 64) __builtin_prefetch(W + (r + 4) * wrow + o);
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int b = 0; b < nb; b++) {
            const __m512i bs = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)a[b].bsums));
            __m512i y[8];
            for (int k = 0; k < 8; k++) y[k] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[b].qs + 32 * k)));
            for (int p = 0; p < 2; p++) {
                const blk_q6_K *wa = (const blk_q6_K *)(W + (r + 2 * p) * wrow) + b, *wb = (const blk_q6_K *)(W + (r + 2 * p + 1) * wrow) + b;
                const __m512i sc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wa->scales))),
                                                      _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wb->scales)), 1);
                __m512i sumi = _mm512_setzero_si512();
                for (int h = 0; h < 2; h++) {
                    const __m512i qa = ld2x256(wa->ql + 64 * h, wb->ql + 64 * h), qb = ld2x256(wa->ql + 64 * h + 32, wb->ql + 64 * h + 32);
                    const __m512i qh = ld2x256(wa->qh + 32 * h, wb->qh + 32 * h);
                    __m512i v[4];
                    v[0] = _mm512_or_si512(_mm512_and_si512(qa, m4), _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
                    v[1] = _mm512_or_si512(_mm512_and_si512(qb, m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2), m2), 4));
                    v[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qa, 4), m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
                    v[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qb, 4), m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 6), m2), 4));
                    for (int k = 0; k < 4; k++)
                        sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(_mm512_maddubs_epi16(v[k], y[4 * h + k]), _mm512_permutexvar_epi16(spread[4 * h + k], sc)));
                }
                sumi = _mm512_sub_epi32(sumi, _mm512_slli_epi32(_mm512_madd_epi16(bs, sc), 5));
                const __m512 d = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(_cvtsh_ss(wa->d) * a[b].d)),
                                                    _mm256_set1_ps(_cvtsh_ss(wb->d) * a[b].d), 1);
                acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc[p]);
            }
        }
        for (int p = 0; p < 2; p++) {
            Y[r + 2 * p] = hsum8(_mm512_castps512_ps256(acc[p]));
            Y[r + 2 * p + 1] = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[p]), 1)));
        }
    }
    for (; r < r1; r++) Y[r] = dot_q6_K_avx2(W + r * wrow, xq, nb);
}
#endif
/* How the llama.cpp being matched adds the odd last block of ggml_vec_dot_iq4_nl_q8_0 and
 * ggml_vec_dot_mxfp4_q8_0 (after the block pairs' two 8-lane accumulators): `sumf += d·Σ` is the
 * compiler's to contract into an FMA or not, and GCC does in some -march builds (an AVX-512 Intel
 * host's) and not in others (a Zen 4 host's). tail_add follows cv_set_tail_fma, which crossval sets
 * from the loaded libggml-cpu (crossval/libggml.py vec_dot_tail_fused); default fused. The unfused
 * form relies on this file being compiled without FP contraction (build.py's -std=c11). */
static int tail_fma[2] = {1, 1}; /* [0] IQ4_NL, [1] MXFP4 */

int cv_set_tail_fma(int wtype, int fused) {
    if (wtype != 20 && wtype != 39) return -1;
    tail_fma[wtype == 39] = fused != 0;
    return 0;
}

int cv_tail_fma(int wtype) { return wtype == 20 || wtype == 39 ? tail_fma[wtype == 39] : -1; }

static inline float tail_add(int wtype, float sumf, float d, float s) { return tail_fma[wtype == 39] ? fmaf(d, s, sumf) : sumf + d * s; }

#include "iq_tables.h"
#include "iq2_kernels.c" /* IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M */
#include "iq34_kernels.c" /* IQ3_XXS, IQ3_S, IQ4_XS, IQ4_NL */
#include "ternary_kernels.c" /* TQ1_0, TQ2_0 */
#include "mxfp4_kernels.c" /* MXFP4 */
static void gemv_rows(gemv_fn gemv, const char *W, int64_t wrow, int64_t n_rows, int group, const void *xq, int nb, float *Y,
                      int n_threads);
#if defined(__x86_64__) && defined(__GNUC__)
/* The batch driver of the types whose activations are Q8_0 and whose kernels take the activations'
 * scales pre-converted (NVFP4, Q1_0): `spb` Q8_0 blocks per weight block, their f16 scales widened
 * once into dya (n_tok × nb × spb floats). Decode: `rows` over contiguous row ranges, one per thread;
 * batches: tiles of tokens whose activations stay in L1, `dot4` on each weight row against four tokens
 * at a time. Each output is its row kernel's float, whatever the split. −1 when out of memory. */
typedef void (*q8s_rows_fn)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, const float *dya, int nb, float *Y);
typedef void (*q8s_dot4_fn)(const void *w, const void *a, int64_t arow, const float *dya, int nt, int nb, float *out);

static int q8s_matmul(const void *W, int64_t wrow, int64_t n_rows, int nb, int spb, const void *xq, int64_t n_tok, float *Y,
                      int64_t ldy, int n_threads, q8s_rows_fn rows, q8s_dot4_fn dot4) {
    const int64_t arow = (int64_t)nb * spb * (int64_t)sizeof(blk_q8_0), per_tok = (int64_t)nb * spb;
    float *dya = malloc(sizeof(float) * (size_t)(n_tok * per_tok));
    if (!dya) return -1;
    for (int64_t i = 0; i < n_tok * per_tok; i++) dya[i] = h2f(((const blk_q8_0 *)xq)[i].d);
    if (n_tok == 1) {
        if (n_threads <= 1) rows((const char *)W, wrow, 0, n_rows, xq, dya, nb, Y);
        else {
#pragma omp parallel num_threads(n_threads)
            {
                const int64_t nth = omp_get_num_threads(), it = omp_get_thread_num(), per = (n_rows + nth - 1) / nth;
                const int64_t r0 = it * per < n_rows ? it * per : n_rows, r1 = r0 + per < n_rows ? r0 + per : n_rows;
                if (r0 < r1) rows((const char *)W, wrow, r0, r1, xq, dya, nb, Y);
            }
        }
        free(dya);
        return 0;
    }
    const int64_t tile = arow * 32 <= 32768 ? 32 : arow * 8 <= 32768 ? 8 : 4;
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
    for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
        const int64_t t1 = t0 + tile < n_tok ? t0 + tile : n_tok;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t t = t0; t < t1; t += 4) {
                const int nt = t1 - t < 4 ? (int)(t1 - t) : 4;
                float o[4];
                dot4((const char *)W + r * wrow, (const char *)xq + t * arow, arow, dya + t * per_tok, nt, nb, o);
                for (int k = 0; k < nt; k++) Y[(t + k) * ldy + r] = o[k];
            }
    }
    free(dya);
    return 0;
}
#endif
#include "nvfp4_kernels.c" /* NVFP4 */
#include "q1_0_kernels.c" /* Q1_0 */
#include "q2_0_kernels.c" /* Q2_0 */

static gemv_fn gemv_for(int wtype) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        if (wtype == T_Q8_0) return CV_PICK(gemv4_q8_0);
        if (vnni_kind() == 2) { /* AVX-512: two rows per register (qdots_x86.h gemvz_*) */
            if (wtype == T_Q4_1) return gemvz_q4_1_avx512vnni;
            if (wtype == T_Q5_0) return gemvz_q5_0_avx512vnni;
            if (wtype == T_Q4_0) return gemvz_q4_0_avx512vnni;
            if (wtype == T_Q5_1) return gemvz_q5_1_avx512vnni;
        }
        if (wtype == T_Q4_1) return CV_PICK(gemv4_q4_1);
        if (wtype == T_Q5_0) return CV_PICK(gemv4_q5_0);
        if (wtype == T_Q4_0) return CV_PICK(gemv4_q4_0);
        if (wtype == T_Q5_1) return CV_PICK(gemv4_q5_1);
        if (wtype == T_Q6_K) return vnni_kind() == 2 ? gemvz_q6_K : gemv_q6_K_avx2;
        if (iq2_type(wtype)) return iq2_gemv_for(wtype);
    }
#endif
    (void)wtype;
    return NULL;
}

/* two weight rows × four tokens (out: row 0's four, then row 1's) */
typedef void (*dot8_fn)(const void *, int64_t, const void *, int64_t, int, float *);

static dot8_fn dot8_for(int wtype) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        if (wtype == T_Q8_0) return CV_PICK(dot8_q8_0);
        if (wtype == T_Q5_0) return CV_PICK(dot8_q5_0);
        if (wtype == T_Q4_0) return CV_PICK(dot8_q4_0);
    }
#endif
    (void)wtype;
    return NULL;
}

static dot4_fn dot4_for(int wtype) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        if (wtype == T_Q8_0) return CV_PICK(dot4_q8_0);
        if (wtype == T_Q4_1) return CV_PICK(dot4_q4_1);
        if (wtype == T_Q5_0) return CV_PICK(dot4_q5_0);
        if (wtype == T_Q4_0) return CV_PICK(dot4_q4_0);
        if (wtype == T_Q5_1) return CV_PICK(dot4_q5_1);
        if (wtype == T_Q4_K) return dot4_q4_K_avx2;
        if (wtype == T_Q6_K) return dot4_q6_K_avx2;
        if (iq2_type(wtype)) return iq2_dot4_for(wtype);
    }
#endif
    (void)wtype;
    return NULL;
}

#include "kquants_more.c" /* Q2_K, Q3_K */

static int layout(int wtype, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    const int simd = have_avx2();
    switch (wtype) {
    case T_Q2_K: *be = 256; *bb = 84; *atype = T_Q8_K; *ab = 292; *dot = simd ? dot_q2_K_avx2 : dot_q2_K; return 0;
    case T_Q3_K: *be = 256; *bb = 110; *atype = T_Q8_K; *ab = 292; *dot = simd ? dot_q3_K_avx2 : dot_q3_K; return 0;
    case T_Q8_0: *be = 32; *bb = 34; *atype = T_Q8_0; *ab = 34; *dot = simd ? CV_PICK(dot_q8_0) : dot_q8_0; return 0;
    case T_Q4_0: *be = 32; *bb = 18; *atype = T_Q8_0; *ab = 34; *dot = simd ? CV_PICK(dot_q4_0) : dot_q4_0; return 0;
    case T_Q5_1: *be = 32; *bb = 24; *atype = T_Q8_1; *ab = 36; *dot = simd ? CV_PICK(dot_q5_1) : dot_q5_1; return 0;
    case T_Q5_K: *be = 256; *bb = 176; *atype = T_Q8_K; *ab = 292; *dot = simd ? dot_q5_K_avx2 : dot_q5_K; return 0;
    case T_Q4_1: *be = 32; *bb = 20; *atype = T_Q8_1; *ab = 36; *dot = simd ? CV_PICK(dot_q4_1) : dot_q4_1; return 0;
    case T_Q5_0: *be = 32; *bb = 22; *atype = T_Q8_0; *ab = 34; *dot = simd ? CV_PICK(dot_q5_0) : dot_q5_0; return 0;
    case T_Q4_K: *be = 256; *bb = 144; *atype = T_Q8_K; *ab = 292; *dot = simd ? dot_q4_K_avx2 : dot_q4_K; return 0;
    case T_Q6_K: *be = 256; *bb = 210; *atype = T_Q8_K; *ab = 292; *dot = simd ? dot_q6_K_avx2 : dot_q6_K; return 0;
    case T_MXFP4: return mxfp4_layout(wtype, be, bb, atype, ab, dot);
    case T_NVFP4: return nvfp4_layout(wtype, be, bb, atype, ab, dot);
    case T_Q1_0: return q1_0_layout(wtype, be, bb, atype, ab, dot);
    case T_Q2_0: return q2_0_layout(wtype, be, bb, atype, ab, dot);
    default: return iq34_type(wtype) ? iq34_layout(wtype, be, bb, atype, ab, dot)
                 : iq2_layout(wtype, be, bb, atype, ab, dot) == 0 ? 0 : ternary_layout(wtype, be, bb, atype, ab, dot);
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

static int vec_ok(int lanes);
#if defined(__x86_64__) && defined(__GNUC__)
/* cv_quantize_q8_0 with AVX-512, block for block the same: amax is a max (exact in any order), then the
 * scalar d and id, and each value's nearbyintf(x·id) as vcvtps2dq under the default round-to-nearest-even */
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c"))) static void quantize_q8_0_avx512(const float *x, void *vy, int64_t k) {
    blk_q8_0 *y = (blk_q8_0 *)vy;
    int64_t b = 0;
    /* sixteen blocks at a time: their sixteen maxima by a transposed max tree (lane j: block j), then d,
     * id and f2h(d) for all sixteen in vectors — the same IEEE divisions, comparison and rounding */
    for (; b + 16 <= k / 32; b += 16) {
        __m512 m[16];
        for (int j = 0; j < 16; j++) { /* m[q + 4r] holds block 4q + r: the tree leaves lane 4q + r to it */
            const float *xb = x + 32 * (b + j);
            m[(j / 4) + 4 * (j % 4)] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), _mm512_abs_ps(_mm512_loadu_ps(xb + 16)));
        }
        __m512 s8[8], t4[4], u2[2];
        for (int i = 0; i < 8; i++)
            s8[i] = _mm512_max_ps(_mm512_shuffle_f32x4(m[2 * i], m[2 * i + 1], 0x44), _mm512_shuffle_f32x4(m[2 * i], m[2 * i + 1], 0xEE));
        for (int i = 0; i < 4; i++)
            t4[i] = _mm512_max_ps(_mm512_shuffle_f32x4(s8[2 * i], s8[2 * i + 1], 0x88), _mm512_shuffle_f32x4(s8[2 * i], s8[2 * i + 1], 0xDD));
        for (int i = 0; i < 2; i++)
            u2[i] = _mm512_max_ps(_mm512_shuffle_ps(t4[2 * i], t4[2 * i + 1], 0x44), _mm512_shuffle_ps(t4[2 * i], t4[2 * i + 1], 0xEE));
        const __m512 amax = _mm512_max_ps(_mm512_shuffle_ps(u2[0], u2[1], 0x88), _mm512_shuffle_ps(u2[0], u2[1], 0xDD));
        const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
        const __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(127.0f), amax);
        uint16_t dh[16];
        float idv[16];
        _mm256_storeu_si256((__m256i *)dh, _mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_storeu_ps(idv, id);
        for (int j = 0; j < 16; j++) {
            const float *xb = x + 32 * (b + j);
            const __m512 vid = _mm512_set1_ps(idv[j]);
            y[b + j].d = dh[j];
            _mm_storeu_si128((__m128i *)y[b + j].qs, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb), vid))));
            _mm_storeu_si128((__m128i *)(y[b + j].qs + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16), vid))));
        }
    }
    for (; b < k / 32; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = f2h(d);
        const __m512 vid = _mm512_set1_ps(id);
        _mm_storeu_si128((__m128i *)y[b].qs, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x0, vid))));
        _mm_storeu_si128((__m128i *)(y[b].qs + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x1, vid))));
    }
}
#endif

int cv_quantize_acts(int wtype, const float *X, int64_t n_cols, int64_t n_tok, void *xq, int n_threads) {
    int be, bb, at, ab;
    dot_fn f;
    if (layout(wtype, &be, &bb, &at, &ab, &f) || n_cols % be) return -1;
    const int64_t row = (n_cols / be) * ab;
#if defined(__x86_64__) && defined(__GNUC__)
    const int q8_0_avx512 = vec_ok(16) && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    const int q8_0_avx512 = 0;
#endif
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_tok > 1)
    for (int64_t t = 0; t < n_tok; t++) {
        void *dst = (char *)xq + t * row;
        if (at == T_Q8_0 && q8_0_avx512) quantize_q8_0_avx512(X + t * n_cols, dst, n_cols);
        else if (at == T_Q8_0) cv_quantize_q8_0(X + t * n_cols, dst, n_cols);
        else if (at == T_Q8_1) cv_quantize_q8_1(X + t * n_cols, dst, n_cols);
        else cv_quantize_q8_K(X + t * n_cols, dst, n_cols);
    }
    return 0;
}

/* ---- K-quant matmuls that llama.cpp routes around vec_dot on x86 ------------------------------
 * With AVX2, ggml-cpu repacks Q4_K weights of a multiple of 8 rows into 8-row interleaved blocks
 * (repack.cpp, q4_K_8x8_q8_K) and multiplies them with its own gemv (one activation row) and gemm
 * (groups of 4 rows; leftover rows through gemv): per output, one float chain over the blocks —
 * gemv adds each block's integer sum, gemm each pair of 32-value sub-blocks' — fused with the
 * d_w·d_a scale, and a second chain for the mins, subtracted at the end (arch/x86/repack.cpp).
 * Q6_K (and unrepacked K-quants) with 8 or more activation rows go through the tiled matmul
 * (tiled/tiled-kernel.cpp): per output, each block's integer sum times d_w, then fused into the
 * output with d_a (an FMA on AVX2; on AVX-512 VNNI the source's multiply-then-add is contracted to an
 * FMA by the compiler — measured against llama.cpp on 14- and 19-row batches). The integer sums are
 * exact, so only these float chains decide the result. Fewer rows use vec_dot (the dots above). */

/* which of llama.cpp's x86 paths a (wtype, rows, activation rows) matmul takes: 0 vec_dot, 1 repack,
 * 2 tiled, 3 repacked Q4_0 (repack.cpp q4_0_8x8_q8_0: its gemv and gemm alike add each block's
 * integer sum times d_w·d_a to one float chain per output, arch/x86/repack.cpp) */
static int ggml_route(int wtype, int64_t n_rows, int64_t n_tok) {
    if (!have_avx2()) return 0;
    if (wtype == T_Q4_0 && n_rows % 8 == 0) return 3;
    if (wtype == T_Q4_K && n_rows % 8 == 0) return 1;
    if ((wtype == T_Q4_K || wtype == T_Q5_K || wtype == T_Q6_K) && n_tok >= 8) return 2;
    return 0;
}

/* one activation row: rows split across threads in runs of a multiple of `group` rows (the kernel's
 * rows per pass); no thread team for one thread */
static void gemv_rows(gemv_fn gemv, const char *W, int64_t wrow, int64_t n_rows, int group, const void *xq, int nb, float *Y,
                      int n_threads) {
    if (n_threads <= 1) {
        gemv(W, wrow, 0, n_rows, xq, nb, Y);
        return;
    }
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t nt = omp_get_num_threads(), it = omp_get_thread_num();
        const int64_t per = (n_rows / group + nt - 1) / nt * group;
        const int64_t r0 = it * per < n_rows ? it * per : n_rows, r1 = r0 + per < n_rows ? r0 + per : n_rows;
        if (r0 < r1) gemv(W, wrow, r0, r1, xq, nb, Y);
    }
}

/* Y (n_tok × n_rows, row stride ldy floats) from weights W (n_rows rows of n_cols in wtype blocks)
 * and pre-quantized xq. ldy > n_rows lets several weights fill column ranges of one output. */
int cv_matmul_q(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const void *xq, int64_t n_tok, float *Y, int64_t ldy,
                int n_threads) {
    int be, bb, at, ab;
    dot_fn dot;
    if (layout(wtype, &be, &bb, &at, &ab, &dot) || n_cols % be) return -1;
    const int nb = (int)(n_cols / be);
    const int64_t wrow = (int64_t)nb * bb, arow = (int64_t)nb * ab;
    if (n_threads < 1) n_threads = 1;
    if (iq34_type(wtype)) return iq34_matmul(wtype, W, n_rows, nb, xq, n_tok, Y, ldy, n_threads, dot), 0;
    if (wtype == T_MXFP4) return mxfp4_matmul(W, n_rows, nb, xq, n_tok, Y, ldy, n_threads, dot);
    if (wtype == T_NVFP4) return nvfp4_matmul(W, n_rows, nb, xq, n_tok, Y, ldy, n_threads, dot);
    if (wtype == T_Q1_0) return q1_0_matmul(W, n_rows, nb, xq, n_tok, Y, ldy, n_threads, dot);
    if (wtype == T_Q2_0) return q2_0_matmul(W, n_rows, nb, xq, n_tok, Y, ldy, n_threads, dot);
    if (wtype == T_Q2_K || wtype == T_Q3_K) return kq_matmul(wtype, W, n_rows, nb, xq, n_tok, Y, ldy, n_threads);
    const int route = ggml_route(wtype, n_rows, n_tok);
#if defined(__x86_64__) && defined(__GNUC__)
    if (route == 1 && n_tok == 1) { /* the repacked gemv, eight rows per pass */
        gemv_rows(vnni_kind() == 2 ? gemvz_q4_K_avx512vnni : CV_PICK(gemv8_q4_K), (const char *)W, wrow, n_rows, 8, xq, nb, Y, n_threads);
        return 0;
    }
#endif
    if (route == 1 || route == 2) {
#if defined(__x86_64__) && defined(__GNUC__)
        if (vnni_kind()) /* rows unpacked into lanes once per group (kq_tiled_x86.h kq8_mm) */
            return (vnni_kind() == 2 ? kq8_mm_avx512vnni : kq8_mm_avxvnni)(wtype, route, W, n_rows, nb, xq, n_tok, Y, ldy, n_threads);
        CV_PICK(kq_mm)(wtype, route, W, n_rows, nb, xq, n_tok, Y, ldy, n_threads);
#endif
        return 0;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    if (iq2_route_tiled(wtype, n_tok)) {
        iq2_matmul_tiled(wtype, W, n_rows, nb, xq, n_tok, Y, ldy, n_threads);
        return 0;
    }
#endif
#if defined(__x86_64__) && defined(__GNUC__)
    if (route == 3 && vnni_kind()) { /* VNNI: rows in lanes (qdots_x86.h gemv8_q4_0, rep8mm_q4_0) */
        if (n_tok == 1) {
            gemv_rows(vnni_kind() == 2 ? gemv8_q4_0_avx512vnni : gemv8_q4_0_avxvnni, (const char *)W, wrow, n_rows, 8, xq, nb, Y, n_threads);
            return 0;
        }
        return (vnni_kind() == 2 ? rep8mm_q4_0_avx512vnni : rep8mm_q4_0_avxvnni)((const char *)W, n_rows, nb, (const char *)xq, n_tok, Y, ldy,
                                                                                n_threads);
    }
    if (route == 3) { /* eight rows (the repacked block's) × up to four tokens per call */
        void (*rep8)(const char *, int64_t, const void *, int64_t, int, int, float *) = CV_PICK(rep8_q4_0);
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r += 8) {
            const char *next = (const char *)W + (r + 8) * wrow; /* the next group's 8 rows, contiguous */
            for (int64_t o = 0; r + 8 < n_rows && o < 8 * wrow; o += 64) __builtin_prefetch(next + o);
            for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
                const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
                float o[32];
                rep8((const char *)W + r * wrow, wrow, (const char *)xq + t0 * arow, arow, nt, nb, o);
                for (int t = 0; t < nt; t++)
                    for (int i = 0; i < 8; i++) Y[(t0 + t) * ldy + r + i] = o[8 * t + i];
            }
        }
        return 0;
    }
#endif
#if defined(__x86_64__) && defined(__GNUC__)
    if (n_tok >= 2 && vnni_kind() && (wtype == T_Q8_0 || wtype == T_Q4_0 || wtype == T_Q5_0 || wtype == T_Q4_1 || wtype == T_Q5_1))
        return (vnni_kind() == 2 ? u8mm_avx512vnni : u8mm_avxvnni)(wtype, (const char *)W, n_rows, nb, (const char *)xq, n_tok, Y, ldy,
                                                                    n_threads);
#endif
    const dot4_fn dot4 = dot4_for(wtype);
    const dot8_fn dot8 = n_tok >= 4 ? dot8_for(wtype) : NULL;
    const gemv_fn gemv = n_tok == 1 ? gemv_for(wtype) : NULL;
    if (gemv) { /* decode: one row loop per type, the dot inlined */
        gemv_rows(gemv, (const char *)W, wrow, n_rows, 4, xq, nb, Y, n_threads);
        return 0;
    }
    /* tokens in tiles whose activations stay in L1 while every weight row passes over them (one
     * pass over all tokens per row would stream the whole activation matrix from L2 once per row) */
    const int64_t tile = arow * 32 <= 32768 ? 32 : arow * 8 <= 32768 ? 8 : 4;
#pragma omp parallel num_threads(n_threads)
    for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
        const int64_t t1 = t0 + tile < n_tok ? t0 + tile : n_tok;
        if (dot8) { /* rows in pairs, four tokens at a time; the odd row and tail tokens below */
#pragma omp for schedule(static) nowait
            for (int64_t r = 0; r < n_rows - 1; r += 2) {
                const char *wr = (const char *)W + r * wrow;
                int64_t t = t0;
                float o[8];
                for (; t + 4 <= t1; t += 4) {
                    dot8(wr, wrow, (const char *)xq + t * arow, arow, nb, o);
                    for (int k = 0; k < 4; k++) Y[(t + k) * ldy + r] = o[k], Y[(t + k) * ldy + r + 1] = o[4 + k];
                }
                for (; t < t1; t++)
                    Y[t * ldy + r] = dot(wr, (const char *)xq + t * arow, nb), Y[t * ldy + r + 1] = dot(wr + wrow, (const char *)xq + t * arow, nb);
            }
            if (n_rows % 2) {
#pragma omp single nowait
                for (int64_t t = t0; t < t1; t++) Y[t * ldy + n_rows - 1] = dot((const char *)W + (n_rows - 1) * wrow, (const char *)xq + t * arow, nb);
            }
            continue;
        }
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < n_rows; r++) {
            const void *wr = (const char *)W + r * wrow;
            int64_t t = t0;
            if (dot4) {
                float o[4];
                for (; t + 4 <= t1; t += 4) {
                    dot4(wr, (const char *)xq + t * arow, arow, nb, o);
                    for (int k = 0; k < 4; k++) Y[(t + k) * ldy + r] = o[k];
                }
            }
            for (; t < t1; t++) Y[t * ldy + r] = dot(wr, (const char *)xq + t * arow, nb);
        }
    }
    return 0;
}

/* ---- rope cache (ggml-cpu ops.cpp ggml_rope_cache_init) --------------------------------------- */
/* theta_scale = powf(base, -2/n_rot); theta_i = pos · theta_scale^i by repeated float multiplication;
 * cos/sin through libm's cosf/sinf (glibc's are not correctly rounded everywhere, so a float64 cos
 * rounded to float32 differs from llama.cpp at a few hundred of 19,200 entries). With frequency
 * factors and attn_factor (ops.cpp ggml_rope_cache_init → rope_yarn with freq_scale 1 and
 * ext_factor 0): cos = cosf(theta_i / ff_i) · mscale, sin likewise; ff NULL and mscale 0 are none */
void cv_rope_cache_ext(const float *pos, int64_t n_pos, int n_rot, float base, const float *ff, float mscale, float *cos_out,
                       float *sin_out) {
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    for (int64_t p = 0; p < n_pos; p++) {
        float theta = pos[p];
        for (int i = 0; i < n_rot / 2; i++) {
            const float t = ff ? theta / ff[i] : theta;
            cos_out[p * (n_rot / 2) + i] = mscale != 0.0f ? cosf(t) * mscale : cosf(t);
            sin_out[p * (n_rot / 2) + i] = mscale != 0.0f ? sinf(t) * mscale : sinf(t);
            theta *= theta_scale;
        }
    }
}

void cv_rope_cache(const float *pos, int64_t n_pos, int n_rot, float base, float *cos_out, float *sin_out) {
    cv_rope_cache_ext(pos, n_pos, n_rot, base, NULL, 0.0f, cos_out, sin_out);
}

/* ---- attention, softmax and SwiGLU with ggml-cpu's arithmetic ---------------------------------
 * llama.cpp's CPU attention without flash attention (llama-graph.cpp build_attn_mha) is
 *   kq = mul_mat(K, q)  →  soft_max_ext(kq, mask, scale)  →  kqv = mul_mat(Vᵀ, kq)
 * with an F16 cache: q and the probabilities are rounded to F16 (the F16 vec_dot type), and the
 * order of every float sum is set by the SIMD width ggml was compiled for ("lanes": 16 with
 * AVX-512F+DQ, 8 with AVX2+FMA, 0 for its scalar code). One query row (n_q = 1, decode) goes through
 * ggml_vec_dot_f16 (vec.cpp: four accumulators of `lanes` floats, a fixed reduction, the tail summed
 * in double); two or more rows go through llamafile's tinyBLAS when the dot length is a multiple of
 * `lanes` and the row count a multiple of 4 (llamafile/sgemm.cpp: one accumulator, then hsum).
 * llama.cpp pads the KV length to a multiple of 256 with masked cells; a masked cell adds an exact
 * zero, so padding to whole SIMD steps reproduces its sums. The exponential is ggml_v_expf
 * (vec.h), evaluated one lane at a time with the same fused operations. */

static float h2f_tab[65536];
static int h2f_tab_ready = 0;

static void h2f_table_init(void) {
    if (!h2f_tab_ready) {
        for (int i = 0; i < 65536; i++) h2f_tab[i] = h2f((uint16_t)i);
        h2f_tab_ready = 1;
    }
}

/* f2h over a row: F16C's conversion (round to nearest even, as f2h) eight at a time where the CPU has it */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,f16c"))) static int64_t f2h_row8(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
}
#endif
static int vec_ok(int lanes);
static void f2h_row(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (vec_ok(8)) i = f2h_row8(x, y, n);
#endif
    for (; i < n; i++) y[i] = f2h(x[i]);
}

/* _mm512_reduce_add_ps as GCC expands it */
static inline float hsum16_tree(const float *a) {
    float t3[8], t6[4];
    for (int i = 0; i < 8; i++) t3[i] = a[i + 8] + a[i];
    for (int i = 0; i < 4; i++) t6[i] = t3[i + 4] + t3[i];
    return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}
/* tinyBLAS hsum(__m256) and the AVX2 softmax: halves, then movehl, then movehdup */
static inline float hsum8_movehl(const float *a) {
    float x[4];
    for (int i = 0; i < 4; i++) x[i] = a[i + 4] + a[i];
    return (x[0] + x[2]) + (x[1] + x[3]);
}
/* GGML_F32x8_REDUCE's last step: halves, then two hadds */
static inline float hsum8_hadd(const float *a) {
    float t[4];
    for (int i = 0; i < 4; i++) t[i] = a[i] + a[i + 4];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* ggml_vec_dot_f16: x[i] · y[i] for i < n. ggml sums whole steps of 4·lanes in vectors and the rest in
 * double; padded = 1 is the attention's masked padding: llama.cpp's KV length is a multiple of 256,
 * so the last partial step runs in the vectors with zeros beyond n */
CV_CLONES static float dot_f16_vecdot(const uint16_t *x, const uint16_t *y, int64_t n, int lanes, int padded) {
    double sumf = 0.0;
    int64_t i = 0;
    if (lanes) {
        const int step = 4 * lanes;
        float acc[4][16] = {{0}};
        for (; i + step <= n; i += step)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < lanes; l++)
                    acc[j][l] = fmaf(h2f_tab[x[i + j * lanes + l]], h2f_tab[y[i + j * lanes + l]], acc[j][l]);
        if (padded) {
            for (int j = 0; i + j * lanes < n && j < 4; j++)
                for (int l = 0; l < lanes && i + j * lanes + l < n; l++)
                    acc[j][l] = fmaf(h2f_tab[x[i + j * lanes + l]], h2f_tab[y[i + j * lanes + l]], acc[j][l]);
            i = n;
        }
        for (int l = 0; l < lanes; l++) acc[0][l] += acc[2][l], acc[1][l] += acc[3][l];
        for (int l = 0; l < lanes; l++) acc[0][l] += acc[1][l];
        sumf = lanes == 16 ? hsum16_tree(acc[0]) : hsum8_hadd(acc[0]);
    }
    for (; i < n; i++) sumf += (double)(h2f_tab[x[i]] * h2f_tab[y[i]]);
    return (float)sumf;
}

/* tinyBLAS: one accumulator of `lanes` floats over the whole dot, then hsum (n % lanes == 0 there;
 * a shorter n is the masked-padding case and adds nothing) */
CV_CLONES static float dot_f16_tiny(const uint16_t *x, const uint16_t *y, int64_t n, int lanes) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes)
        for (int l = 0; l < lanes; l++) acc[l] = fmaf(h2f_tab[x[i + l]], h2f_tab[y[i + l]], acc[l]);
    for (int l = 0; i + l < n; l++) acc[l] = fmaf(h2f_tab[x[i + l]], h2f_tab[y[i + l]], acc[l]);
    return lanes == 16 ? hsum16_tree(acc) : hsum8_movehl(acc);
}

/* ggml_v_expf, one lane: the AVX-512 variant (scalef) and the AVX2 variant (exponent bits) */
static inline float expf_v16(float x) {
    const float r = 0x1.8p23f, z = fmaf(x, 0x1.715476p+0f, r), n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    return ldexpf(j, (int)n);
}

static inline float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float expf_v8(float x) {
    const float r = 0x1.8p23f, z = fmaf(x, 0x1.715476p+0f, r), n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = f_bits(z) << 23;
    const float k = bits_f(e + f_bits(1.0f));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) return fmaf(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = bits_f(g + 0x7f000000u), s2 = bits_f(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

static inline float expf_lanes(float x, int lanes) {
    return lanes == 16 ? expf_v16(x) : lanes == 8 ? expf_v8(x) : expf(x);
}

/* The same sums with x86 vector instructions, lane for lane (each lane's fused multiply-adds and the
 * reductions are the scalar code's, so the results are identical; only faster). */
#if defined(__x86_64__) && defined(__GNUC__)
#define AVX512_FN __attribute__((target("avx512f,avx512dq,avx2,fma,f16c")))

/* hsum16_tree on a register: GCC expands _mm512_reduce_add_ps in exactly that order (the order
 * ggml-cpu, built by GCC, sums in); other compilers go through memory and the scalar tree */
AVX512_FN static inline float hsum16_vec(__m512 v) {
#if defined(__clang__)
    float a[16];
    _mm512_storeu_ps(a, v);
    return hsum16_tree(a);
#else
    return _mm512_reduce_add_ps(v);
#endif
}

AVX512_FN static float dot16_f16(const uint16_t *x, const uint16_t *y, int64_t n, int tiny, int padded) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const int step = tiny ? 16 : 64, nacc = tiny ? 1 : 4;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < nacc; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i + 16 * j))),
                                     _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(y + i + 16 * j))), acc[j]);
    if ((padded || tiny) && i < n) { /* the masked tail: zeros up to the step */
        uint16_t bx[64] = {0}, by[64] = {0};
        memcpy(bx, x + i, sizeof(uint16_t) * (size_t)(n - i));
        memcpy(by, y + i, sizeof(uint16_t) * (size_t)(n - i));
        for (int j = 0; j < nacc; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(bx + 16 * j))),
                                     _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(by + 16 * j))), acc[j]);
        i = n;
    }
    if (!tiny) {
        acc[0] = _mm512_add_ps(acc[0], acc[2]), acc[1] = _mm512_add_ps(acc[1], acc[3]);
        acc[0] = _mm512_add_ps(acc[0], acc[1]);
    }
    double sumf = hsum16_vec(acc[0]);
    for (; i < n; i++) sumf += (double)(h2f_tab[x[i]] * h2f_tab[y[i]]);
    return (float)sumf;
}

/* dot16_f16's tinyBLAS chain (tiny = 1: one accumulator per output, FMAs over steps of 16, then hsum)
 * for four weight rows (ldw apart) × nt ≤ 4 activation rows, the activations already rounded to F16
 * and widened back to float (xf: the same values the chain converts); out[4·t + r]. Each weight
 * vector is converted once for the nt activation rows. */
AVX512_FN static void tile4_f16_16(const uint16_t *w, int64_t ldw, const float *xf, int64_t ldx, int nt, int64_t n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m512 xv[4];
        for (int t = 0; t < nt; t++) xv[t] = _mm512_loadu_ps(xf + t * ldx + i);
        for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + r * ldw + i)));
            for (int t = 0; t < nt; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < 4; r++) out[4 * t + r] = hsum16_vec(acc[r][t]);
}

AVX2_FN static float dot8_f16(const uint16_t *x, const uint16_t *y, int64_t n, int tiny, int padded) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const int step = tiny ? 8 : 32, nacc = tiny ? 1 : 4;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < nacc; j++)
            acc[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8 * j))),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i + 8 * j))), acc[j]);
    if ((padded || tiny) && i < n) {
        uint16_t bx[32] = {0}, by[32] = {0};
        memcpy(bx, x + i, sizeof(uint16_t) * (size_t)(n - i));
        memcpy(by, y + i, sizeof(uint16_t) * (size_t)(n - i));
        for (int j = 0; j < nacc; j++)
            acc[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bx + 8 * j))),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(by + 8 * j))), acc[j]);
        i = n;
    }
    float a[8];
    if (!tiny) {
        acc[0] = _mm256_add_ps(acc[0], acc[2]), acc[1] = _mm256_add_ps(acc[1], acc[3]);
        acc[0] = _mm256_add_ps(acc[0], acc[1]);
    }
    _mm256_storeu_ps(a, acc[0]);
    double sumf = tiny ? hsum8_movehl(a) : hsum8_hadd(a);
    for (; i < n; i++) sumf += (double)(h2f_tab[x[i]] * h2f_tab[y[i]]);
    return (float)sumf;
}

/* expf_v16 on 16 lanes at once */
AVX512_FN static inline __m512 exp16(__m512 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r), n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 hi = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                                      _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f)));
    const __m512 j = _mm512_fmadd_ps(hi, u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(j, n);
    const __mmask16 out_of_range = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192.0f), _CMP_GT_OQ);
    if (!out_of_range) return res;
    const __m512 edge = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_set1_ps(INFINITY),
                                             _mm512_setzero_ps());
    return _mm512_mask_blend_ps(out_of_range, res, edge);
}

/* softmax chunks of 16: y = exp(x − max), returns the double sum of the chunks' float sums */
AVX512_FN static double soft_max16(float *y, const float *x, int64_t n, float max, int64_t *done) {
    double sum = 0.0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(max)));
        _mm512_storeu_ps(y + i, e);
        sum += (double)hsum16_vec(e);
    }
    *done = i;
    return sum;
}

/* silu(x)·g on 16 lanes: x / (1 + exp(0 − x)) · g */
AVX512_FN static int64_t swiglu16(const float *x, const float *g, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __m512 s = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(g + i)));
    }
    return i;
}
#endif

static int vec_ok(int lanes) { /* vector versions usable for this lane count on this CPU */
#if defined(__x86_64__) && defined(__GNUC__)
    static int c16 = -1, c8 = -1;
    if (c16 < 0) {
        __builtin_cpu_init();
        c16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("f16c");
        c8 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return simd_override != 0 && (lanes == 16 ? c16 : lanes == 8 ? c8 : 0);
#else
    (void)lanes;
    return 0;
#endif
}

static float dot_f16(const uint16_t *x, const uint16_t *y, int64_t n, int lanes, int tiny, int padded) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (vec_ok(lanes)) return lanes == 16 ? dot16_f16(x, y, n, tiny, padded) : dot8_f16(x, y, n, tiny, padded);
#endif
    return tiny ? dot_f16_tiny(x, y, n, lanes) : dot_f16_vecdot(x, y, n, lanes, padded);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* One query's V·p (decode) over whole 64-value steps [s0, s1): out[e] for V rows e of v (row stride
 * n_ctx), four rows at a time against p's steps converted once — each row dot16_f16's four accumulators,
 * its tree and its reduce, so each out[e] is dot16_f16(v_e + s0, p + s0, s1 − s0); → rows done (a
 * multiple of four) */
AVX512_FN static int pv16_rows(const uint16_t *v, int64_t n_ctx, const uint16_t *p, int64_t s0, int64_t s1, int n_rows, float *out) {
    int e = 0;
    for (; e + 4 <= n_rows; e += 4) {
        __m512 acc[4][4];
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 4; j++) acc[k][j] = _mm512_setzero_ps();
        for (int64_t i = s0; i < s1; i += 64) {
            __m512 pj[4];
            for (int j = 0; j < 4; j++) pj[j] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + i + 16 * j)));
            for (int k = 0; k < 4; k++) {
                const uint16_t *ve = v + (int64_t)(e + k) * n_ctx + i;
                for (int j = 0; j < 4; j++) acc[k][j] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ve + 16 * j))), pj[j], acc[k][j]);
            }
        }
        for (int k = 0; k < 4; k++) {
            const __m512 a0 = _mm512_add_ps(acc[k][0], acc[k][2]), a1 = _mm512_add_ps(acc[k][1], acc[k][3]);
            out[e + k] = (float)(double)hsum16_vec(_mm512_add_ps(a0, a1));
        }
    }
    return e;
}
#endif

/* ggml_vec_soft_max_f32: y = exp(x − max) over whole SIMD chunks (each chunk's lanes summed in
 * float, added to a double), then libm's expf one by one for the tail; returns the sum */
double cv_vec_soft_max(float *y, const float *x, int64_t n, float max, int lanes) {
    double sum = 0.0;
    int64_t i = 0;
    if (lanes) {
#if defined(__x86_64__) && defined(__GNUC__)
        if (lanes == 16 && vec_ok(16)) sum = soft_max16(y, x, n, max, &i);
#endif
        for (; i + lanes <= n; i += lanes) {
            float e[16];
            for (int l = 0; l < lanes; l++) e[l] = y[i + l] = expf_lanes(x[i + l] - max, lanes);
            sum += (double)(lanes == 16 ? hsum16_tree(e) : hsum8_movehl(e));
        }
    }
    for (; i < n; i++) sum += (double)(y[i] = expf(x[i] - max));
    return sum;
}

/* ops.cpp soft_max after scale and mask: max, exp and sum, then ·(1/sum) in place */
static void softmax_lanes(float *w, int64_t n, int lanes) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) max = w[i] > max ? w[i] : max;
    const float inv = (float)(1.0 / cv_vec_soft_max(w, w, n, max, lanes));
    for (int64_t t = 0; t < n; t++) w[t] *= inv;
}

/* one F16 dot as ggml_vec_dot_f16 (tiny = 0) or tinyBLAS (tiny = 1) sums it (tests) */
float cv_dot_f16(const uint16_t *x, const uint16_t *y, int64_t n, int lanes, int tiny) {
    h2f_table_init();
    return dot_f16(x, y, n, lanes, tiny, 0);
}

/* ---- F16 weights: ggml-cpu's mul_mat with an F16 src0 (ggml-cpu.c ggml_compute_forward_mul_mat) --
 * The activations are rounded to F16 (the F16 vec_dot type; ggml_cpu_fp32_to_fp16 rounds to nearest
 * even). Two or more activation rows go to llamafile_sgemm, whose tinyBLAS takes the matmul when the
 * row count is a multiple of 4 and the dot length a multiple of the SIMD width (llamafile/sgemm.cpp
 * tinyBLAS::matmul; it is not compiled without AVX); anything else, and one row, goes through
 * ggml_vec_dot_f16. W (n_rows, n_cols) fp16; X (n_tok, n_cols) f32; Y row t at Y + t·ldy. */
int cv_matmul_f16(const uint16_t *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                  int lanes, int n_threads) {
    if (n_rows < 0 || n_cols <= 0 || n_tok < 0 || ldy < n_rows || (lanes != 0 && lanes != 8 && lanes != 16)) return -1;
    uint16_t *x16 = malloc((size_t)(n_tok * n_cols) * sizeof *x16);
    if (!x16 && n_tok) return -1;
    h2f_table_init();
    f2h_row(X, x16, n_tok * n_cols);
    const int tiny = lanes > 0 && n_tok >= 2 && n_rows % 4 == 0 && n_cols % lanes == 0;
#if defined(__x86_64__) && defined(__GNUC__)
    float *xf = tiny && lanes == 16 && vec_ok(16) ? malloc((size_t)(n_tok * n_cols) * sizeof *xf) : NULL;
    if (xf) { /* tinyBLAS four weight rows × four activation rows at a time (tile4_f16_16) */
        for (int64_t i = 0; i < n_tok * n_cols; i++) xf[i] = h2f_tab[x16[i]];
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r += 4)
            for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
                const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
                float o[16];
                tile4_f16_16(W + r * n_cols, n_cols, xf + t0 * n_cols, n_cols, nt, n_cols, o);
                for (int t = 0; t < nt; t++)
                    for (int k = 0; k < 4; k++) Y[(t0 + t) * ldy + r + k] = o[4 * t + k];
            }
        free(xf);
        free(x16);
        return 0;
    }
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot_f16(W + r * n_cols, x16 + t * n_cols, n_cols, lanes, tiny, 0);
    free(x16);
    return 0;
}

#include "float_weights.c" /* F32, BF16 */
#include "attn_prefill.c" /* batched attention, AVX-512 */

/* q (n_q, n_head, d) f32; k16 (n_ctx, n_head_kv, d) fp16; v16t (n_head_kv, dv, n_ctx) fp16 (llama.cpp's
 * transposed V); mask (n_q, n_kv) additive; softcap > 0: gemma2's scale(1/cap) → tanh → scale(cap)
 * on the scores before the softmax; out (n_q, n_head, dv). Returns 0, or -1 on a bad argument. */
int cv_attention_f16(const float *q, int64_t n_q, int n_head, int d, const uint16_t *k16, const uint16_t *v16t, int64_t n_ctx,
                     int64_t n_kv, int n_head_kv, int dv, const float *mask, float scale, float softcap, int lanes, float *out,
                     int n_threads) {
    if (lanes != 0 && lanes != 8 && lanes != 16) return -1;
    if (n_head % n_head_kv || n_kv > n_ctx || n_kv < 1) return -1;
    h2f_table_init();
    const int rep = n_head / n_head_kv;
    /* mul_mat picks tinyBLAS for ≥ 2 query rows when the dot length divides by lanes and the row count by 4;
     * the padded KV length is a multiple of 256, so only d and dv decide */
    const int tiny_kq = lanes && n_q >= 2 && d % lanes == 0;
    const int tiny_kqv = lanes && n_q >= 2 && dv % 4 == 0;
    const int64_t n_pad = lanes ? (n_kv + 15) / 16 * 16 : n_kv; /* whole SIMD chunks, as llama.cpp's 256-padded rows */
    /* p·V reads whole dot steps: cells past n_kv meet a zero probability and add nothing (0 · a finite
     * cached value), so when the cache row is long enough the masked tail is read in place */
    const int64_t n_up = lanes ? (n_kv + 4 * lanes - 1) / (4 * lanes) * (4 * lanes) : n_kv;
    const int direct = lanes && n_up <= n_ctx;
#if defined(__x86_64__) && defined(__GNUC__)
    if (lanes == 16 && vec_ok(16) && tiny_kq && tiny_kqv && direct) /* sixteen dots side by side (attn_prefill.c) */
        return attn_prefill16(q, n_q, n_head, d, k16, v16t, n_ctx, n_kv, n_head_kv, dv, mask, scale, softcap, out, n_threads);
#endif
    int err = 0;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1)
    for (int h = 0; h < n_head; h++) {
        const int hk = h / rep;
        uint16_t *q16 = malloc(sizeof(uint16_t) * (size_t)d);
        uint16_t *p16 = calloc((size_t)n_up, sizeof(uint16_t)); /* zeros past n_kv: masked cells */
        float *w = malloc(sizeof(float) * (size_t)n_pad);
        if (!q16 || !p16 || !w) {
            err = 1;
        } else {
            for (int64_t t = 0; t < n_q; t++) {
                const float *qt = q + (t * n_head + h) * d;
                f2h_row(qt, q16, d);
                /* a masked cell's score is −inf whatever its (finite) dot: only the others are computed */
                const float *mt = mask + t * n_kv;
                int64_t jlo = 0, jhi = n_kv; /* the unmasked cells lie in [jlo, jhi) */
                while (jlo < n_kv && mt[jlo] == -INFINITY) jlo++;
                while (jhi > jlo && mt[jhi - 1] == -INFINITY) jhi--;
                const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
                for (int64_t j = 0; j < n_kv; j++) {
                    if (mt[j] == -INFINITY) {
                        w[j] = -INFINITY;
                        continue;
                    }
                    const uint16_t *kj = k16 + (j * n_head_kv + hk) * d;
                    float x = dot_f16(kj, q16, d, lanes, tiny_kq, 0);
                    if (softcap > 0.0f) x = tanhf(x * inv_cap) * softcap;
                    w[j] = x * scale + mt[j];
                }
                for (int64_t j = n_kv; j < n_pad; j++) w[j] = -INFINITY; /* llama.cpp's masked padding */
                softmax_lanes(w, n_pad, lanes);
                f2h_row(w, p16, n_kv);
                /* p·V: whole dot steps of zero probabilities add exact zeros to every accumulator (which
                 * start at +0 and never hold −0), so the steps before jlo and after jhi are skipped; steps
                 * keep their alignment, so each value meets the same accumulator */
                const int64_t n = direct ? n_up : n_kv, step = lanes ? (tiny_kqv ? lanes : 4 * lanes) : 0;
                const int64_t s0 = step ? jlo / step * step : 0, s1 = step ? ((jhi + step - 1) / step * step < n ? (jhi + step - 1) / step * step : n) : n;
                float *ot = out + (t * n_head + h) * dv;
                int e0 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
                if (lanes == 16 && !tiny_kqv && direct && s1 > s0 && vec_ok(16)) /* whole steps: four V rows at a time */
                    e0 = pv16_rows(v16t + (int64_t)hk * dv * n_ctx, n_ctx, p16, s0, s1, dv, ot);
#endif
                for (int e = e0; e < dv; e++) {
                    const uint16_t *ve = v16t + ((int64_t)hk * dv + e) * n_ctx;
                    ot[e] = s1 > s0 ? dot_f16(ve + s0, p16 + s0, s1 - s0, lanes, tiny_kqv, 1) : 0.0f;
                }
            }
        }
        free(q16), free(p16), free(w);
    }
    return err ? -1 : 0;
}

/* ggml_vec_swiglu_f32 per row: y = silu(gate) · up with silu(x) = x / (1 + exp(-x)) through ggml_v_expf
 * over whole SIMD chunks and libm's expf for the tail (ggml_silu_f32). gu (n_rows, 2·n_ff) holds
 * [gate | up] (one matmul of the stacked weights); y (n_rows, n_ff). */
void cv_swiglu(const float *gu, float *y, int64_t n_rows, int64_t n_ff, int lanes, int n_threads) {
    const int64_t nv = lanes ? n_ff - n_ff % lanes : 0;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_rows > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        const float *x = gu + r * 2 * n_ff, *g = x + n_ff;
        float *yr = y + r * n_ff;
        int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        if (lanes == 16 && vec_ok(16)) i = swiglu16(x, g, yr, nv);
#endif
        for (; i < nv; i++) yr[i] = (x[i] / (1.0f + expf_lanes(0.0f - x[i], lanes))) * g[i];
        for (; i < n_ff; i++) yr[i] = (x[i] / (1.0f + expf(-x[i]))) * g[i];
    }
}

/* ggml_vec_geglu_f32 per row: y = gelu(gate) · up with GELU from ggml's fp16 table (ggml-cpu.c fills
 * ggml_table_gelu_f16 at init with ggml_gelu_f32, vec.h; its 1 + A·x·x is compiled as a fused
 * multiply-add, and tanh is libm's tanhf); x ≤ −10 → 0, x ≥ 10 → x·up. Layout as cv_swiglu. */
static uint16_t gelu_tab[65536];
static int gelu_tab_ready = 0;

static void gelu_table_init(void) {
    if (gelu_tab_ready) return;
    const float s2pi = 0.79788456080286535587989211986876f, a = 0.044715f;
    for (int i = 0; i < 65536; i++) {
        const float x = h2f((uint16_t)i);
        gelu_tab[i] = f2h(0.5f * x * (1.0f + tanhf(s2pi * x * fmaf(a * x, x, 1.0f))));
    }
    gelu_tab_ready = 1;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* eight at a time: F16C's round-to-nearest-even conversion is f2h's */
AVX2_FN static int64_t geglu8(const float *x, const float *g, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16_t h[8];
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (int l = 0; l < 8; l++) {
            const float xv = x[i + l];
            y[i + l] = xv <= -10.0f ? 0.0f : xv >= 10.0f ? xv * g[i + l] : h2f_tab[gelu_tab[h[l]]] * g[i + l];
        }
    }
    return i;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* sixteen at a time with AVX-512: the table's entries as floats (h2f of each), gathered */
static float gelu_tab_f32[65536];
static int gelu_tab_f32_ready = 0;

__attribute__((target("avx512f,avx512dq,avx2,fma,f16c"))) static int64_t geglu16(const float *x, const float *g, float *y, int64_t n) {
    int64_t i = 0;
    const __m512 lo = _mm512_set1_ps(-10.0f), hi = _mm512_set1_ps(10.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i), gv = _mm512_loadu_ps(g + i);
        const __m512i idx = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(xv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m512 r = _mm512_mul_ps(_mm512_i32gather_ps(idx, gelu_tab_f32, 4), gv);
        r = _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(xv, hi, _CMP_GE_OQ), xv, gv);      /* x ≥ 10: x·up */
        r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(xv, lo, _CMP_LE_OQ), _mm512_setzero_ps()); /* x ≤ −10: 0 */
        _mm512_storeu_ps(y + i, r);
    }
    return i;
}
#endif

void cv_geglu(const float *gu, float *y, int64_t n_rows, int64_t n_ff, int n_threads) {
    gelu_table_init();
    h2f_table_init();
#if defined(__x86_64__) && defined(__GNUC__)
    const int v16 = vec_ok(16);
    if (v16 && !gelu_tab_f32_ready) {
        for (int i = 0; i < 65536; i++) gelu_tab_f32[i] = h2f_tab[gelu_tab[i]];
        gelu_tab_f32_ready = 1;
    }
#endif
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_rows > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        const float *x = gu + r * 2 * n_ff, *g = x + n_ff;
        float *yr = y + r * n_ff;
        int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        if (v16) i = geglu16(x, g, yr, n_ff);
        else if (have_avx2()) i = geglu8(x, g, yr, n_ff);
#endif
        for (; i < n_ff; i++)
            yr[i] = x[i] <= -10.0f ? 0.0f : x[i] >= 10.0f ? x[i] * g[i] : h2f_tab[gelu_tab[f2h(x[i])]] * g[i];
    }
}

/* the SIMD width ggml-cpu uses on this CPU when built for it (GGML_NATIVE): 16, 8 or 0 */
int cv_ggml_lanes(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return 16;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
    return 0;
}

/* ---- one decoder layer for one token (decode), in C ------------------------------------------
 * The same graph as engine/models/llama.py, gemma.py and families.py for a single position, with every op in
 * ggml's arithmetic (rms_norm: float squares summed in double, ops.cpp ggml_compute_forward_rms_norm_f32;
 * the rest as above), so a decode step costs one call per layer instead of ~20 numpy ops. */

typedef struct {
    int n_embd, n_head, n_head_kv, head_dim, head_dim_v, n_ff, rope_dim;
    int neox, gelu, post_norms, qk_norm, lanes, threads; /* qk_norm: 1 per head (gemma3, qwen3), 2 over the full width (olmo2) */
    float rms_eps, attn_scale, kq_scale, softcap, rope_base;
    int64_t window; /* 0: none */
    int no_pre_norms;                  /* olmo2: the blocks read x itself (no attn_norm / ffn_norm) */
    float residual_scale, rope_mscale; /* granite: block outputs · residual_scale before the add (0: none);
                                          phi3: rope's attn_factor on cos and sin (0: none) */
    int n_expert, n_expert_used;       /* qwen3moe: routed experts (moe_decode.c; 0: a dense FFN) */
} cv_layer_cfg;

typedef struct {
    const float *attn_norm, *ffn_norm, *attn_post_norm, *ffn_post_norm, *q_norm, *k_norm;
    const void *w[7]; /* q, k, v, o, gate, up, down: raw GGUF blocks */
    int t[7];         /* their ggml types */
    const float *bq, *bk, *bv; /* qwen2: q/k/v biases, added after the matmuls (or NULL) */
    const float *rope_ff;      /* phi3: rope frequency factors, theta_i / ff_i (or NULL) */
    const void *gate_inp;      /* qwen3moe: the router (n_expert rows) and its type; w[4..6] are expert 0's */
    int t_gate_inp;
    int64_t exp_stride[3];     /* bytes from one expert's gate / up / down matrix to the next */
    const float *s[7];         /* `.scale` of q … down (or NULL): y = (W·x) · s[0], experts' y · s[e] */
    const float *attn_sub_norm, *ffn_sub_norm; /* bitnet: RMS norms of the attention output before o and of the
                                                  FFN activation before down (or NULL) */
} cv_layer_w;

static void rms_norm_row(const float *x, const float *w, float *y, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    if (w)
        for (int64_t i = 0; i < n; i++) y[i] = y[i] * w[i];
}

/* a matmul's output · its `.scale` (llama-graph.cpp build_lora_mm's ggml_mul), when it has one */
static void scale_row(float *y, int64_t n, const float *s) {
    if (s)
        for (int64_t i = 0; i < n; i++) y[i] = y[i] * s[0];
}

static int act_type(int wtype) {
    int be, bb, at, ab;
    dot_fn dot;
    return layout(wtype, &be, &bb, &at, &ab, &dot) ? -1 : at;
}

/* y (rows) = W (rows × cols, wtype) · x (cols), x quantized as ggml would into xq — unless
 * quantize = 0: xq already holds x in this weight's activation type (q, k, v share one); F16
 * weights round x to F16 themselves (cv_matmul_f16) */
static int mm1(int wtype, const void *W, int64_t rows, int64_t cols, const float *x, float *y, void *xq, int threads, int quantize,
               int lanes) {
    if (wtype == T_F16) return cv_matmul_f16(W, rows, cols, x, 1, y, rows, lanes, threads);
    if (wtype == 0 || wtype == 30) return cv_matmul_float(wtype, W, rows, cols, x, 1, y, rows, lanes, -1, threads);
    if (quantize && cv_quantize_acts(wtype, x, cols, 1, xq, 1)) return -1;
    return cv_matmul_q(wtype, W, rows, cols, xq, 1, y, rows, threads);
}

/* ops.cpp rotate_pairs as compiled: fused in whole vectors of rope_vec_pairs[neox] pairs, each product
 * rounded in the leftover pairs (engine/ops.py rope_fused_pairs); cv_set_rope_vec sets the vector
 * sizes the llama.cpp being matched was compiled with (default: 4 interleaved pairs, 8 NEOX pairs) */
static int rope_vec_pairs[2] = {4, 8};

int cv_set_rope_vec(int norm_pairs, int neox_pairs) {
    if (norm_pairs < 1 || neox_pairs < 1) return -1;
    rope_vec_pairs[0] = norm_pairs, rope_vec_pairs[1] = neox_pairs;
    return 0;
}

int cv_rope_vec(int neox) { return rope_vec_pairs[neox ? 1 : 0]; }

static void rope_row(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs, const float *sn) {
    const int per_vec = rope_vec_pairs[neox ? 1 : 0], fused = n_rot / 2 / per_vec * per_vec;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            const int i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
            const float x0 = v[i0], x1 = v[i1];
            if (i < fused) {
                v[i0] = fmaf(x0, cs[i], -(x1 * sn[i]));
                v[i1] = fmaf(x0, sn[i], x1 * cs[i]);
            } else {
                const float a = x0 * cs[i], b = x1 * sn[i], c = x0 * sn[i], d = x1 * cs[i];
                v[i0] = a - b;
                v[i1] = c + d;
            }
        }
    }
}

#include "moe_decode.c" /* qwen3moe's routed FFN */
#include "prefill_ops.c" /* rms_norm and rope over a batch's rows */

/* x (n_embd) in place: x ← layer(x) at position pos. k16 (n_ctx, n_head_kv, head_dim) and v16t
 * (n_head_kv, head_dim_v, n_ctx) are this layer's F16 cache; row pos is written. */
int cv_layer_decode(const cv_layer_cfg *c, const cv_layer_w *lw, float *x, int64_t pos, uint16_t *k16, uint16_t *v16t,
                    int64_t n_ctx) {
    if (pos >= n_ctx) return -1;
    const int64_t nq = (int64_t)c->n_head * c->head_dim, nk = (int64_t)c->n_head_kv * c->head_dim,
                  nv = (int64_t)c->n_head_kv * c->head_dim_v, E = c->n_embd, F = c->n_ff;
    const int64_t n_kv = pos + 1;
    const int64_t na = (int64_t)c->n_head * c->head_dim_v;
    /* one scratch block per call: the float vectors, then room for the largest quantized activation row */
    const int64_t cols[7] = {E, E, E, na, E, E, F};
    int64_t xq_bytes = 0;
    for (int i = 0; i < 7; i++) {
        const int64_t nbytes = lw->t[i] == T_F16 || lw->t[i] == 0 || lw->t[i] == 30 ? 0 : cv_act_bytes(lw->t[i], cols[i], 1);
        if (nbytes < 0) return -1;
        xq_bytes = nbytes > xq_bytes ? nbytes : xq_bytes;
    }
    const int64_t n_floats = E + nq + nk + nv + na + E + 2 * F + F + n_kv + c->rope_dim;
    float *h = malloc(sizeof(float) * (size_t)n_floats + (size_t)xq_bytes);
    if (!h) return -1;
    float *q = h + E, *k = q + nq, *v = k + nk, *a = v + nv, *o = a + na, *gu = o + E, *f = gu + 2 * F, *mask = f + F,
          *cs = mask + n_kv, *sn = cs + c->rope_dim / 2;
    void *xq = cs + c->rope_dim;
    int err = 0;
    const float posf = (float)pos;
    if (!err) {
        if (c->no_pre_norms) memcpy(h, x, sizeof(float) * (size_t)E);
        else rms_norm_row(x, lw->attn_norm, h, E, c->rms_eps);
        err |= mm1(lw->t[0], lw->w[0], nq, E, h, q, xq, c->threads, 1, c->lanes);
        err |= mm1(lw->t[1], lw->w[1], nk, E, h, k, xq, c->threads, act_type(lw->t[1]) != act_type(lw->t[0]), c->lanes);
        err |= mm1(lw->t[2], lw->w[2], nv, E, h, v, xq, c->threads, act_type(lw->t[2]) != act_type(lw->t[1]), c->lanes);
    }
    if (!err) {
        scale_row(q, nq, lw->s[0]), scale_row(k, nk, lw->s[1]), scale_row(v, nv, lw->s[2]);
        if (lw->bq) for (int64_t i = 0; i < nq; i++) q[i] = q[i] + lw->bq[i];
        if (lw->bk) for (int64_t i = 0; i < nk; i++) k[i] = k[i] + lw->bk[i];
        if (lw->bv) for (int64_t i = 0; i < nv; i++) v[i] = v[i] + lw->bv[i];
        if (c->qk_norm == 1) {
            for (int hh = 0; hh < c->n_head; hh++) rms_norm_row(q + (int64_t)hh * c->head_dim, lw->q_norm, q + (int64_t)hh * c->head_dim, c->head_dim, c->rms_eps);
            for (int hh = 0; hh < c->n_head_kv; hh++) rms_norm_row(k + (int64_t)hh * c->head_dim, lw->k_norm, k + (int64_t)hh * c->head_dim, c->head_dim, c->rms_eps);
        } else if (c->qk_norm == 2) {
            rms_norm_row(q, lw->q_norm, q, nq, c->rms_eps);
            rms_norm_row(k, lw->k_norm, k, nk, c->rms_eps);
        }
        cv_rope_cache_ext(&posf, 1, c->rope_dim, c->rope_base, lw->rope_ff, c->rope_mscale, cs, sn);
        rope_row(q, c->n_head, c->head_dim, c->rope_dim, c->neox, cs, sn);
        rope_row(k, c->n_head_kv, c->head_dim, c->rope_dim, c->neox, cs, sn);
        if (c->attn_scale != 1.0f)
            for (int64_t i = 0; i < nq; i++) q[i] = q[i] * c->attn_scale;
        f2h_row(k, k16 + pos * nk, nk); /* F16C where the CPU has it: f2h's values */
        for (int64_t i0 = 0; i0 < nv; i0 += 64) { /* V's row pos, transposed: (head, e) → v16t[head][e][pos] */
            uint16_t t16[64];
            const int64_t m = nv - i0 < 64 ? nv - i0 : 64;
            f2h_row(v + i0, t16, m);
            for (int64_t i = 0; i < m; i++) v16t[(i0 + i) * n_ctx + pos] = t16[i];
        }
        const int64_t lo = c->window > 0 ? pos - (c->window - 1 < pos ? c->window - 1 : pos) : 0;
        for (int64_t j = 0; j < n_kv; j++) mask[j] = j >= lo ? 0.0f : -INFINITY;
        err |= cv_attention_f16(q, 1, c->n_head, c->head_dim, k16, v16t, n_ctx, n_kv, c->n_head_kv, c->head_dim_v, mask, c->kq_scale,
                                c->softcap, c->lanes, a, c->threads) != 0;
    }
    if (!err) {
        if (lw->attn_sub_norm) rms_norm_row(a, lw->attn_sub_norm, a, na, c->rms_eps);
        err |= mm1(lw->t[3], lw->w[3], E, na, a, o, xq, c->threads, 1, c->lanes);
        scale_row(o, E, lw->s[3]);
        if (c->post_norms) rms_norm_row(o, lw->attn_post_norm, o, E, c->rms_eps);
        if (c->residual_scale != 0.0f) for (int64_t i = 0; i < E; i++) o[i] = o[i] * c->residual_scale;
        for (int64_t i = 0; i < E; i++) x[i] = x[i] + o[i];
        if (c->no_pre_norms) memcpy(h, x, sizeof(float) * (size_t)E);
        else rms_norm_row(x, lw->ffn_norm, h, E, c->rms_eps);
        if (c->n_expert) err |= moe_ffn_row(c, lw, h, o, gu, f, xq);
        else {
            err |= mm1(lw->t[4], lw->w[4], F, E, h, gu, xq, c->threads, 1, c->lanes);
            err |= mm1(lw->t[5], lw->w[5], F, E, h, gu + F, xq, c->threads, act_type(lw->t[5]) != act_type(lw->t[4]), c->lanes);
        }
    }
    if (!err) {
        if (!c->n_expert) {
            scale_row(gu, F, lw->s[4]), scale_row(gu + F, F, lw->s[5]);
            if (c->gelu) cv_geglu(gu, f, 1, F, 1);
            else cv_swiglu(gu, f, 1, F, c->lanes, 1);
            if (lw->ffn_sub_norm) rms_norm_row(f, lw->ffn_sub_norm, f, F, c->rms_eps);
            err |= mm1(lw->t[6], lw->w[6], E, F, f, o, xq, c->threads, 1, c->lanes);
            scale_row(o, E, lw->s[6]);
        }
        if (c->post_norms) rms_norm_row(o, lw->ffn_post_norm, o, E, c->rms_eps);
        if (c->residual_scale != 0.0f) for (int64_t i = 0; i < E; i++) o[i] = o[i] * c->residual_scale;
        for (int64_t i = 0; i < E; i++) x[i] = x[i] + o[i];
    }
    free(h);
    return err ? -1 : 0;
}

#include "bitnet_kernels.c" /* bitnet.cpp's I2_S, F16 and attention arithmetic (engine/kernels/bitnet_kernels.c) */
