/* IQ3_XXS, IQ3_S, IQ4_XS (against Q8_K activations) and IQ4_NL (against Q8_0) in ggml-cpu's arithmetic
 * (included by qkernels.c after iq_tables.h; block layouts from ggml-common.h). Each type's matmul goes
 * the route llama.cpp's CPU backend takes on x86 (iq34_matmul):
 *
 *   IQ3_XXS, IQ3_S, IQ4_XS — 256-value blocks of eight 32-value sub-blocks; value j of sub-block ib:
 *     IQ3_XXS  byte j%4 of iq3xxs_grid[qs[8ib + j/4]], negative where bit j%8 of ksigns[(w >> 7(j/8)) & 127]
 *              is set, w the ib-th uint32 after the 64 index bytes; scale 2·(w >> 28) + 1; unit d/4
 *     IQ3_S    byte j%4 of iq3s_grid[qs[8ib + j/4] | (bit j/4 of qh[ib]) << 8], negative where bit j%8
 *              of signs[4ib + j/8] is set; scale 2·(nibble ib of scales) + 1; unit d
 *     IQ4_XS   kvalues_iq4nl[nibble] (low nibbles of qs[16ib..] for j < 16, high ones after); scale
 *              (nibble ib of scales_l | 2 bits ib of scales_h << 4) − 32; unit d
 *   ggml_vec_dot_*_q8_K (arch/x86/quants.c, AVX2; no AVX-512 variant), under 8 activation rows: 8 int32
 *     lanes per block, lane k = Σ_ib scale_ib · Σ of values 4k..4k+3 × activations (maddubs pairs, madd
 *     with the scale); lanes += (d_w·d_a)·lane (FMA) block after block; hsum_float_8 at the end
 *     (IQ3_XXS: 0.25 · hsum).
 *   tiled matmul (tiled/tiled.cpp, 8 activation rows or more): per output one chain over the blocks,
 *     out = fma(float(s)·d', d_a, out), s the block's whole integer, d' = d·0.25 (IQ3_XXS) or d.
 *
 *   IQ4_NL — 32-value blocks, value j = kvalues_iq4nl[low nibble of qs[j] (j < 16) / high of qs[j−16]]·d:
 *     repacked q4_0-style 8×8 (repack.cpp iq4_nl_8x8_q8_0, AVX2, rows % 8 == 0; gemv and gemm alike):
 *       per output one chain, out = fma(float(block sum), d_w·d_a, out).
 *     otherwise one activation row: ggml_vec_dot_iq4_nl_q8_0 — blocks alternately into two 8-lane FMA
 *       accumulators (pairs of blocks), hsum_float_8 of their sum, an odd last block added in scalar
 *       (d·Σ fused or not as the build compiled it: tail_add in qkernels.c);
 *     two or more rows: llamafile's tinyBLAS (sgemm.cpp tinyBLAS_Q0_AVX): one 8-lane FMA chain per
 *       output, scale d_w·d_a, hsum at the end.
 * Integer sums are exact however they are formed; only these float steps fix the result. */

#pragma pack(push, 1)
typedef struct { uint16_t d; uint8_t qs[96]; } blk_iq3_xxs;                                            /* 98 */
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; } blk_iq3_s; /* 110 */
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } blk_iq4_xs;      /* 136 */
typedef struct { uint16_t d; uint8_t qs[16]; } blk_iq4_nl;                                              /* 18 */
#pragma pack(pop)

enum { T_IQ3_XXS = 18, T_IQ4_NL = 20, T_IQ3_S = 21, T_IQ4_XS = 23 };

static int iq34_type(int wt) { return wt == T_IQ3_XXS || wt == T_IQ3_S || wt == T_IQ4_XS || wt == T_IQ4_NL; }
static inline int iq34_block_bytes(int wt) { return wt == T_IQ3_XXS ? 98 : wt == T_IQ3_S ? 110 : wt == T_IQ4_XS ? 136 : 18; }
static inline unsigned iq34_tables_needed(int wt) {
    return wt == T_IQ3_XXS ? TB_IQ3XXS | TB_KSIGNS : wt == T_IQ3_S ? TB_IQ3S : TB_KVALUES4;
}
/* the vec_dot's final factor and the tiled path's d' factor (the unit of the integer) */
static inline float iq34_unit(int wt) { return wt == T_IQ3_XXS ? 0.25f : 1.0f; }

/* ---- portable: one sub-block as 32 signed values and its scale (the lanes below are ggml's) ------- */
static void iq34_sub_values(int wt, const uint8_t *blk, int ib, int8_t *v, int *sc) {
    if (wt == T_IQ3_XXS) {
        const blk_iq3_xxs *x = (const blk_iq3_xxs *)blk;
        uint32_t w;
        memcpy(&w, x->qs + 64 + 4 * ib, 4);
        for (int j = 0; j < 32; j++) {
            const int mag = (cv_iq3xxs_grid[x->qs[8 * ib + j / 4]] >> (8 * (j % 4))) & 255;
            v[j] = (int8_t)((cv_ksigns_iq2xs[(w >> (7 * (j / 8))) & 127] >> (j % 8)) & 1 ? -mag : mag);
        }
        *sc = 2 * (int)(w >> 28) + 1;
    } else if (wt == T_IQ3_S) {
        const blk_iq3_s *x = (const blk_iq3_s *)blk;
        for (int j = 0; j < 32; j++) {
            const int idx = x->qs[8 * ib + j / 4] | (((x->qh[ib] >> (j / 4)) & 1) << 8);
            const int mag = (cv_iq3s_grid[idx] >> (8 * (j % 4))) & 255;
            v[j] = (int8_t)((x->signs[4 * ib + j / 8] >> (j % 8)) & 1 ? -mag : mag);
        }
        *sc = 2 * ((x->scales[ib / 2] >> (4 * (ib % 2))) & 15) + 1;
    } else { /* IQ4_XS */
        const blk_iq4_xs *x = (const blk_iq4_xs *)blk;
        for (int j = 0; j < 16; j++) v[j] = cv_kvalues_iq4nl[x->qs[16 * ib + j] & 15], v[j + 16] = cv_kvalues_iq4nl[x->qs[16 * ib + j] >> 4];
        *sc = (((x->scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | (((x->scales_h >> (2 * ib)) & 3) << 4)) - 32;
    }
}

static void iq34_block_lanes(int wt, const uint8_t *blk, const int8_t *y, int32_t *l) {
    for (int k = 0; k < 8; k++) l[k] = 0;
    for (int ib = 0; ib < 8; ib++) {
        int8_t v[32];
        int sc;
        iq34_sub_values(wt, blk, ib, v, &sc);
        for (int k = 0; k < 8; k++) {
            int s = 0;
            for (int e = 4 * k; e < 4 * k + 4; e++) s += v[e] * y[32 * ib + e];
            l[k] += sc * s;
        }
    }
}

static inline float iq34_hsum8(const float *x) { /* hsum_float_8: halves, movehl, movehdup */
    float h[4];
    for (int i = 0; i < 4; i++) h[i] = x[i + 4] + x[i];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

static float iq34_dot_k_portable(int wt, const void *vw, const void *va, int nb) {
    const uint8_t *w = vw;
    const blk_q8_K *a = va;
    const int bb = iq34_block_bytes(wt);
    float acc[8] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t l[8];
        iq34_block_lanes(wt, w + (int64_t)b * bb, a[b].qs, l);
        const float d = h2f(*(const uint16_t *)(w + (int64_t)b * bb)) * a[b].d;
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)l[k], acc[k]);
    }
    return iq34_unit(wt) * iq34_hsum8(acc);
}
static float dot_iq3_xxs(const void *w, const void *a, int nb) { return iq34_dot_k_portable(T_IQ3_XXS, w, a, nb); }
static float dot_iq3_s(const void *w, const void *a, int nb) { return iq34_dot_k_portable(T_IQ3_S, w, a, nb); }
static float dot_iq4_xs(const void *w, const void *a, int nb) { return iq34_dot_k_portable(T_IQ4_XS, w, a, nb); }

/* IQ4_NL (and MXFP4, another 16-value table), portable: the AVX2 vec_dot's eight integer lanes of one
 * block's 32 products (low nibbles are values 0-15, high nibbles 16-31), then its two accumulators and
 * scalar tail, lane for lane */
static inline void kv4_lanes(const int8_t *kv, const uint8_t *qs, const int8_t *y, int32_t *l) {
    for (int k = 0; k < 8; k++) {
        int s = 0;
        for (int e = 4 * k; e < 4 * k + 4; e++) s += (e < 16 ? kv[qs[e] & 15] : kv[qs[e - 16] >> 4]) * y[e];
        l[k] = s;
    }
}
static float dot_iq4_nl(const void *vw, const void *va, int nb) {
    const blk_iq4_nl *w = vw;
    const blk_q8_0 *a = va;
    float acc[2][8] = {{0}}, sum[8];
    int b = 0;
    for (; b + 1 < nb; b += 2)
        for (int p = 0; p < 2; p++) {
            int32_t l[8];
            kv4_lanes(cv_kvalues_iq4nl, w[b + p].qs, a[b + p].qs, l);
            const float d = h2f(a[b + p].d) * h2f(w[b + p].d);
            for (int k = 0; k < 8; k++) acc[p][k] = fmaf(d, (float)l[k], acc[p][k]);
        }
    for (int k = 0; k < 8; k++) sum[k] = acc[0][k] + acc[1][k];
    float sumf = iq34_hsum8(sum);
    for (; b < nb; b++) {
        int32_t l[8], s = 0;
        kv4_lanes(cv_kvalues_iq4nl, w[b].qs, a[b].qs, l);
        for (int k = 0; k < 8; k++) s += l[k];
        sumf = tail_add(T_IQ4_NL, sumf, h2f(a[b].d) * h2f(w[b].d), (float)s);
    }
    return sumf;
}
/* tinyBLAS's order (one 8-lane chain, hsum at the end) */
static float dot_iq4_nl_tiny(const void *vw, const void *va, int nb) {
    const blk_iq4_nl *w = vw;
    const blk_q8_0 *a = va;
    float acc[8] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t l[8];
        kv4_lanes(cv_kvalues_iq4nl, w[b].qs, a[b].qs, l);
        const float d = h2f(w[b].d) * h2f(a[b].d);
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)l[k], acc[k]);
    }
    return iq34_hsum8(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define IQ34_INLINE AVX2_FN static inline __attribute__((always_inline))

IQ34_INLINE int32_t iq34_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 32 IQ4 values (int8) from 16 bytes of nibbles: low nibbles first, then high */
IQ34_INLINE __m256i iq4_values(const uint8_t *q) {
    const __m128i kv = _mm_loadu_si128((const __m128i *)cv_kvalues_iq4nl), m4 = _mm_set1_epi8(0x0f);
    const __m128i b = _mm_loadu_si128((const __m128i *)q);
    return _mm256_set_m128i(_mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(b, 4), m4)), _mm_shuffle_epi8(kv, _mm_and_si128(b, m4)));
}

/* one sub-block for the maddubs step: magnitudes u (unsigned), sign carrier s (applied to the
 * activations with _mm256_sign_epi8), the scale as 16 int16 */
IQ34_INLINE void iq34_sub(const int wt, const uint8_t *blk, int ib, __m256i *u, __m256i *s, __m256i *sc) {
    if (wt == T_IQ3_XXS) {
        const blk_iq3_xxs *x = (const blk_iq3_xxs *)blk;
        const uint8_t *q = x->qs + 8 * ib;
        uint32_t w;
        memcpy(&w, x->qs + 64 + 4 * ib, 4);
        *u = _mm256_set_epi32((int)cv_iq3xxs_grid[q[7]], (int)cv_iq3xxs_grid[q[6]], (int)cv_iq3xxs_grid[q[5]], (int)cv_iq3xxs_grid[q[4]],
                              (int)cv_iq3xxs_grid[q[3]], (int)cv_iq3xxs_grid[q[2]], (int)cv_iq3xxs_grid[q[1]], (int)cv_iq3xxs_grid[q[0]]);
        *s = _mm256_set_epi64x((long long)cv_signs64_iq2xs[(w >> 21) & 127], (long long)cv_signs64_iq2xs[(w >> 14) & 127],
                               (long long)cv_signs64_iq2xs[(w >> 7) & 127], (long long)cv_signs64_iq2xs[w & 127]);
        *sc = _mm256_set1_epi16((short)(2 * (w >> 28) + 1));
    } else if (wt == T_IQ3_S) {
        const blk_iq3_s *x = (const blk_iq3_s *)blk;
        const uint8_t *q = x->qs + 8 * ib;
        const int h = x->qh[ib];
        *u = _mm256_set_epi32((int)cv_iq3s_grid[q[7] | ((h << 1) & 256)], (int)cv_iq3s_grid[q[6] | ((h << 2) & 256)],
                              (int)cv_iq3s_grid[q[5] | ((h << 3) & 256)], (int)cv_iq3s_grid[q[4] | ((h << 4) & 256)],
                              (int)cv_iq3s_grid[q[3] | ((h << 5) & 256)], (int)cv_iq3s_grid[q[2] | ((h << 6) & 256)],
                              (int)cv_iq3s_grid[q[1] | ((h << 7) & 256)], (int)cv_iq3s_grid[q[0] | ((h << 8) & 256)]);
        uint32_t sb;
        memcpy(&sb, x->signs + 4 * ib, 4);
        const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)sb), _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                                                                                  0x0101010101010101LL, 0));
        *s = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel), _mm256_set1_epi8(1)); /* −1 where set, +1 elsewhere */
        *sc = _mm256_set1_epi16((short)(2 * ((x->scales[ib / 2] >> (4 * (ib % 2))) & 15) + 1));
    } else { /* IQ4_XS: signed values; |v| against the activations carrying v's sign */
        const blk_iq4_xs *x = (const blk_iq4_xs *)blk;
        const __m256i v = iq4_values(x->qs + 16 * ib);
        *u = _mm256_sign_epi8(v, v), *s = v;
        *sc = _mm256_set1_epi16((short)((((x->scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | (((x->scales_h >> (2 * ib)) & 3) << 4)) - 32));
    }
}

/* one weight block against nt activation blocks a[t]: each one's 8 int32 lanes */
IQ34_INLINE void iq34_lanes(const int wt, const uint8_t *blk, const blk_q8_K *const *a, const int nt, __m256i *l) {
    __m256i l2[4]; /* odd sub-blocks in a second sum (two independent chains, as ggml's loop) */
    for (int t = 0; t < nt; t++) l[t] = l2[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int ib = 0; ib < 8; ib += 2) {
        __m256i u0, s0, sc0, u1, s1, sc1;
        iq34_sub(wt, blk, ib, &u0, &s0, &sc0);
        iq34_sub(wt, blk, ib + 1, &u1, &s1, &sc1);
        for (int t = 0; t < nt; t++) {
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 32 * ib));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 32 * ib + 32));
            l[t] = _mm256_add_epi32(l[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(y0, s0)), sc0));
            l2[t] = _mm256_add_epi32(l2[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(y1, s1)), sc1));
        }
    }
    for (int t = 0; t < nt; t++) l[t] = _mm256_add_epi32(l[t], l2[t]);
}

/* vec_dot for nt activation rows (arow bytes apart) at once: out[t] */
IQ34_INLINE void iq34_dotn(const int wt, const void *vw, const void *va, int64_t arow, int nb, const int nt, float *out) {
    const uint8_t *w = vw;
    const int bb = iq34_block_bytes(wt);
    __m256 acc[4];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = w + (int64_t)b * bb;
        const blk_q8_K *a[4];
        for (int t = 0; t < nt; t++) a[t] = (const blk_q8_K *)((const char *)va + t * arow) + b;
        __m256i l[4];
        iq34_lanes(wt, blk, a, nt, l);
        const float dw = _cvtsh_ss(*(const uint16_t *)blk);
        for (int t = 0; t < nt; t++) acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[t]->d), _mm256_cvtepi32_ps(l[t]), acc[t]);
    }
    for (int t = 0; t < nt; t++) out[t] = iq34_unit(wt) * hsum8(acc[t]);
}

/* the tiled route for weight row r and nt ≤ 16 activation rows (arow bytes apart): each block is
 * unpacked once (magnitudes, sign carriers, scales of its 8 sub-blocks), then every activation row
 * takes its exact integer and out[t] = fma(float(s)·d·unit, d_a, out[t]); Y[t·ldy + r] */
IQ34_INLINE void iq34_tiled_row(const int wt, const char *W, int64_t wrow, int64_t r, const void *xq, int64_t arow, int nb, int nt,
                                float *Y, int64_t ldy) {
    const int bb = iq34_block_bytes(wt);
    float acc[16] = {0};
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = (const uint8_t *)W + r * wrow + (int64_t)b * bb;
        __m256i u[8], sg[8], sc[8];
        for (int ib = 0; ib < 8; ib++) iq34_sub(wt, blk, ib, &u[ib], &sg[ib], &sc[ib]);
        const float dw = _cvtsh_ss(*(const uint16_t *)blk) * iq34_unit(wt);
        for (int t = 0; t < nt; t++) {
            const blk_q8_K *a = (const blk_q8_K *)((const char *)xq + t * arow) + b;
            __m256i l0 = _mm256_setzero_si256(), l1 = _mm256_setzero_si256();
            for (int ib = 0; ib < 8; ib += 2) {
                const __m256i y0 = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * ib)), y1 = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * ib + 32));
                l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(_mm256_maddubs_epi16(u[ib], _mm256_sign_epi8(y0, sg[ib])), sc[ib]));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(_mm256_maddubs_epi16(u[ib + 1], _mm256_sign_epi8(y1, sg[ib + 1])), sc[ib + 1]));
            }
            acc[t] = fmaf((float)iq34_hsum_i32(_mm256_add_epi32(l0, l1)) * dw, a->d, acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) Y[t * ldy + r] = acc[t];
}

#define IQ34_K_FNS(sfx, WT)                                                                                                      \
    AVX2_FN static float dot_##sfx##_avx2(const void *w, const void *a, int nb) {                                                \
        float o;                                                                                                                 \
        iq34_dotn(WT, w, a, 0, nb, 1, &o);                                                                                       \
        return o;                                                                                                                \
    }                                                                                                                            \
    AVX2_FN static void dot4_##sfx##_avx2(const void *w, const void *a, int64_t arow, int nb, float *out) {                      \
        iq34_dotn(WT, w, a, arow, nb, 4, out);                                                                                   \
    }                                                                                                                            \
    AVX2_FN static void tiled_##sfx(const char *W, int64_t wrow, int64_t r, const void *xq, int64_t arow, int nb, int nt, float *Y, \
                                    int64_t ldy) {                                                                               \
        iq34_tiled_row(WT, W, wrow, r, xq, arow, nb, nt, Y, ldy);                                                               \
    }                                                                                                                            \
    CV_GEMV(AVX2_FN, gemv_##sfx##_avx2, dot_##sfx##_avx2)
IQ34_K_FNS(iq3_xxs, T_IQ3_XXS)
IQ34_K_FNS(iq3_s, T_IQ3_S)
IQ34_K_FNS(iq4_xs, T_IQ4_XS)

/* ---- IQ4_NL ---------------------------------------------------------------------------------- */
/* one block's 8 int32 lanes against one Q8_0 activation block (|v| · y with v's sign, pairs, then pairs) */
IQ34_INLINE __m256i iq4_nl_block(__m256i v, __m256i av, const blk_q8_0 *a) {
    const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(y, v)), _mm256_set1_epi16(1));
}

/* ggml_vec_dot_iq4_nl_q8_0 (AVX2): pairs of blocks into two accumulators, an odd last block in scalar */
AVX2_FN static float dot_iq4_nl_avx2(const void *vw, const void *va, int nb) {
    const blk_iq4_nl *w = vw;
    const blk_q8_0 *a = va;
    __m256 acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i v1 = iq4_values(w[b].qs), v2 = iq4_values(w[b + 1].qs);
        const __m256i p1 = iq4_nl_block(v1, _mm256_sign_epi8(v1, v1), &a[b]), p2 = iq4_nl_block(v2, _mm256_sign_epi8(v2, v2), &a[b + 1]);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b].d) * _cvtsh_ss(w[b].d)), _mm256_cvtepi32_ps(p1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b + 1].d) * _cvtsh_ss(w[b + 1].d)), _mm256_cvtepi32_ps(p2), acc2);
    }
    float sumf = hsum8(_mm256_add_ps(acc1, acc2));
    for (; b < nb; b++) {
        const __m256i v = iq4_values(w[b].qs);
        sumf = tail_add(T_IQ4_NL, sumf, _cvtsh_ss(a[b].d) * _cvtsh_ss(w[b].d), (float)iq34_hsum_i32(iq4_nl_block(v, _mm256_sign_epi8(v, v), &a[b])));
    }
    return sumf;
}
CV_GEMV(AVX2_FN, gemv_iq4_nl_avx2, dot_iq4_nl_avx2)

/* tinyBLAS: one chain per output (d_w·d_a times the lanes, FMA), hsum at the end; nt ≤ 4 activation rows */
AVX2_FN static void tiny_iq4_nl_avx2(const void *vw, const void *va, int64_t arow, int nb, int nt, float *out) {
    const blk_iq4_nl *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        const __m256i v = iq4_values(w[b].qs), av = _mm256_sign_epi8(v, v);
        const float dw = _cvtsh_ss(w[b].d);
        for (int t = 0; t < nt; t++) {
            const blk_q8_0 *a = (const blk_q8_0 *)((const char *)va + t * arow) + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * _cvtsh_ss(a->d)), _mm256_cvtepi32_ps(iq4_nl_block(v, av, a)), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = hsum8(acc[t]);
}

/* the repacked 8×8 kernels for eight weight rows (wrow bytes apart) and nt ≤ 16 activation rows: lane i
 * of a chain is row i's; each block's integer sum times d_w·d_a added with an FMA. out[8t + i]. The
 * eight rows' values are unpacked once per block for all nt activation rows; PAIRS forms the 8-lane
 * int32 sums of adjacent u8·s8 products (maddubs + madd, or one VNNI dpbusd: the same integers). */
#define IQ4_NL_REP8(NAME, ATTR, PAIRS)                                                                                             \
    ATTR static void NAME(const char *W, int64_t wrow, const void *xq, int64_t arow, int nt, int nb, float *out) {                \
        __m256 acc[16];                                                                                                            \
        for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();                                                                 \
        const __m128i kv = _mm_loadu_si128((const __m128i *)cv_kvalues_iq4nl), m4 = _mm_set1_epi8(0x0f);                            \
        for (int b = 0; b < nb; b++) {                                                                                             \
            __m256i v[8], av[8];                                                                                                   \
            float dw[8];                                                                                                           \
            for (int i = 0; i < 8; i++) {                                                                                          \
                const blk_iq4_nl *w = (const blk_iq4_nl *)(W + i * wrow) + b;                                                      \
                const __m128i q = _mm_loadu_si128((const __m128i *)w->qs);                                                         \
                v[i] = _mm256_set_m128i(_mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(q, 4), m4)), _mm_shuffle_epi8(kv, _mm_and_si128(q, m4))); \
                av[i] = _mm256_sign_epi8(v[i], v[i]), dw[i] = _cvtsh_ss(w->d);                                                     \
            }                                                                                                                      \
            const __m256 vdw = _mm256_loadu_ps(dw);                                                                                \
            for (int t = 0; t < nt; t++) {                                                                                         \
                const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;                                          \
                const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);                                                      \
                __m256i p[8];                                                                                                      \
                for (int i = 0; i < 8; i++) p[i] = PAIRS(av[i], _mm256_sign_epi8(y, v[i]));                                        \
                const __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));               \
                const __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));               \
                const __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31)); \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(vdw, _mm256_set1_ps(_cvtsh_ss(a->d))), acc[t]);  \
            }                                                                                                                      \
        }                                                                                                                          \
        for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);                                                       \
    }
#define IQ4_PAIRS_AVX2(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
IQ4_NL_REP8(rep8_iq4_nl_avx2, AVX2_FN, IQ4_PAIRS_AVX2)

/* With VNNI the eight rows' block is transposed so that lane i of every vector holds row i: vector k
 * carries values 4k..4k+3 of each row, offset by +128 to unsigned bytes; dpbusd against activation
 * dword k broadcast to all lanes then sums row i's products in lane i directly, and the offset comes
 * back out as 128·Σ activations (ysum, per activation row and block). The same integers again. */
#define IQ4_NL_REP8T(NAME, ATTR, DPBUSD)                                                                                           \
    ATTR static void NAME(const char *W, int64_t wrow, const void *xq, int64_t arow, int nt, int nb, const int32_t *ysum,        \
                          float *out) {                                                                                            \
        __m256 acc[16];                                                                                                            \
        for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();                                                                 \
        const __m128i kv = _mm_loadu_si128((const __m128i *)cv_kvalues_iq4nl), m4 = _mm_set1_epi8(0x0f);                            \
        for (int b = 0; b < nb; b++) {                                                                                             \
            __m256i v[8], u[8];                                                                                                    \
            float dw[8];                                                                                                           \
            for (int i = 0; i < 8; i++) {                                                                                          \
                const blk_iq4_nl *w = (const blk_iq4_nl *)(W + i * wrow) + b;                                                      \
                const __m128i q = _mm_loadu_si128((const __m128i *)w->qs);                                                         \
                v[i] = _mm256_set_m128i(_mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(q, 4), m4)), _mm_shuffle_epi8(kv, _mm_and_si128(q, m4))); \
                dw[i] = _cvtsh_ss(w->d);                                                                                           \
            }                                                                                                                      \
            /* 8×8 transpose of dwords: u[k] lane i = v[i] dword k */                                                              \
            __m256i t0[8], t1[8];                                                                                                  \
            for (int i = 0; i < 8; i += 2) t0[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]), t0[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]); \
            for (int i = 0; i < 8; i += 4)                                                                                         \
                for (int j = 0; j < 2; j++)                                                                                        \
                    t1[i + j] = _mm256_unpacklo_epi64(t0[i + j], t0[i + j + 2]), t1[i + j + 2] = _mm256_unpackhi_epi64(t0[i + j], t0[i + j + 2]); \
            const __m256i off = _mm256_set1_epi8((char)0x80);                                                                      \
            for (int k = 0; k < 4; k++) {                                                                                          \
                const int src = (k & 1) * 2 + (k >> 1); /* t1 order: lo-lo, hi-lo, lo-hi, hi-hi */                                \
                u[k] = _mm256_xor_si256(_mm256_permute2x128_si256(t1[src], t1[src + 4], 0x20), off);                               \
                u[k + 4] = _mm256_xor_si256(_mm256_permute2x128_si256(t1[src], t1[src + 4], 0x31), off);                           \
            }                                                                                                                      \
            const __m256 vdw = _mm256_loadu_ps(dw);                                                                                \
            for (int t = 0; t < nt; t++) {                                                                                         \
                const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;                                          \
                const int32_t *y4 = (const int32_t *)a->qs;                                                                        \
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();                                                  \
                for (int k = 0; k < 8; k += 2) {                                                                                   \
                    s0 = DPBUSD(s0, u[k], _mm256_set1_epi32(y4[k]));                                                               \
                    s1 = DPBUSD(s1, u[k + 1], _mm256_set1_epi32(y4[k + 1]));                                                       \
                }                                                                                                                  \
                const __m256i sums = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(128 * ysum[t * nb + b]));        \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(vdw, _mm256_set1_ps(_cvtsh_ss(a->d))), acc[t]);  \
            }                                                                                                                      \
        }                                                                                                                          \
        for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);                                                       \
    }
IQ4_NL_REP8T(rep8t_iq4_nl_avxvnni, __attribute__((target("avx2,fma,f16c,avxvnni"))), _mm256_dpbusd_avx_epi32)
IQ4_NL_REP8T(rep8t_iq4_nl_avx512vnni, __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))), _mm256_dpbusd_epi32)

/* AVX-512 VNNI: sixteen rows per pass, lane i of every zmm row i's — the transposed kernel's integers
 * and per-row chain (acc = fma(float(sum), d_w·d_a, acc), block after block), with the transpose done
 * on the packed bytes: the 16 qs bytes of rows r, r+4, r+8, r+12 fill the four 128-bit lanes of z[r]
 * (r = 0..3), so a 4×4 dword transpose inside each 128-bit lane (unpack 32, then 64) gives t[k],
 * lane i = qs dword k of row i (its low nibbles are values 4k..4k+3, its high ones 16+4k..16+4k+3);
 * one table lookup per nibble half (kvalues + 128, the unsigned bytes dpbusd takes) gives u[k] and
 * u[k+4]. The rows' fp16 scales are gathered (byte offsets i·wrow, so 15·wrow < 2³¹). Y + t·ldy
 * receives the 16 outputs of activation row t ≤ nt ≤ 16. */
#define IQ4Z_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
IQ4Z_FN static void rep16z_iq4_nl(const char *W, int64_t wrow, const void *xq, int64_t arow, int nt, int nb, const int32_t *ysum, float *Y,
                                  int64_t ldy, const char *pf, int64_t pf_bytes) {
    const int64_t pf_step = (pf_bytes / nb + 63) / 64 * 64; /* the next group's bytes, prefetched a slice per block */
    __m512 acc[16];
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    const __m512i kvu = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)cv_kvalues_iq4nl)), _mm512_set1_epi8((char)0x80));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i roff = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)wrow));
    for (int b = 0; b < nb; b++) {
        for (int64_t o = b * pf_step; pf && o < (b + 1) * pf_step && o < pf_bytes; o += 64) __builtin_prefetch(pf + o);
        const char *p = W + (int64_t)b * 18 + 2; /* qs of row 0's block b */
        __m512i z[4];
        for (int r = 0; r < 4; r++) {
            __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + r * wrow)));
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (r + 4) * wrow)), 1);
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (r + 8) * wrow)), 2);
            z[r] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (r + 12) * wrow)), 3);
        }
        const __m512i a0 = _mm512_unpacklo_epi32(z[0], z[1]), a1 = _mm512_unpackhi_epi32(z[0], z[1]);
        const __m512i a2 = _mm512_unpacklo_epi32(z[2], z[3]), a3 = _mm512_unpackhi_epi32(z[2], z[3]);
        const __m512i tk[4] = {_mm512_unpacklo_epi64(a0, a2), _mm512_unpackhi_epi64(a0, a2), _mm512_unpacklo_epi64(a1, a3),
                               _mm512_unpackhi_epi64(a1, a3)};
        __m512i u[8];
        for (int k = 0; k < 4; k++) {
            u[k] = _mm512_shuffle_epi8(kvu, _mm512_and_si512(tk[k], m4));
            u[k + 4] = _mm512_shuffle_epi8(kvu, _mm512_and_si512(_mm512_srli_epi16(tk[k], 4), m4));
        }
        const __m512i dh = _mm512_i32gather_epi32(roff, (const void *)(W + (int64_t)b * 18), 1);
        const __m512 vdw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dh));
        for (int t = 0; t < nt; t++) {
            const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;
            const int32_t *y4 = (const int32_t *)a->qs;
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            for (int k = 0; k < 8; k += 2) {
                s0 = _mm512_dpbusd_epi32(s0, u[k], _mm512_set1_epi32(y4[k]));
                s1 = _mm512_dpbusd_epi32(s1, u[k + 1], _mm512_set1_epi32(y4[k + 1]));
            }
            const __m512i sums = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(128 * ysum[t * nb + b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(vdw, _mm512_set1_ps(_cvtsh_ss(a->d))), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(Y + t * ldy, acc[t]);
}
#endif

/* layout() for these types; unsupported until their tables arrived */
static int iq34_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (!iq34_type(wt) || !cv_iq_ready(iq34_tables_needed(wt))) return -1;
    *bb = iq34_block_bytes(wt);
    if (wt == T_IQ4_NL) *be = 32, *atype = T_Q8_0, *ab = 34;
    else *be = 256, *atype = T_Q8_K, *ab = 292;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        *dot = wt == T_IQ3_XXS ? dot_iq3_xxs_avx2 : wt == T_IQ3_S ? dot_iq3_s_avx2 : wt == T_IQ4_XS ? dot_iq4_xs_avx2 : dot_iq4_nl_avx2;
        return 0;
    }
#endif
    *dot = wt == T_IQ3_XXS ? dot_iq3_xxs : wt == T_IQ3_S ? dot_iq3_s : wt == T_IQ4_XS ? dot_iq4_xs : dot_iq4_nl;
    return 0;
}

/* Y (n_tok × n_rows, stride ldy) = W · xq along llama.cpp's route for this type (the header comment):
 * rows split across threads, activation rows in L1-sized tiles, up to four per weight block */
static void iq34_matmul(int wt, const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy, int n_threads,
                        dot_fn dot) {
    const int64_t wrow = (int64_t)nb * iq34_block_bytes(wt), arow = (int64_t)nb * (wt == T_IQ4_NL ? 34 : 292);
    const int simd = have_avx2();
    const int repacked = wt == T_IQ4_NL && simd && n_rows % 8 == 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (repacked) {
        const int vnni = vnni_kind();
        int32_t *ysum = NULL; /* Σ of each activation block's 32 values (the transposed VNNI kernels' offset) */
        if (vnni && (ysum = malloc(sizeof(int32_t) * (size_t)(n_tok * nb)))) {
            for (int64_t t = 0; t < n_tok; t++)
                for (int b = 0; b < nb; b++) {
                    const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;
                    int32_t sy = 0;
                    for (int j = 0; j < 32; j++) sy += a->qs[j];
                    ysum[t * nb + b] = sy;
                }
        }
        /* AVX-512 VNNI: groups of 16 rows (rep16z_iq4_nl), the last 8 of a 16k + 8 matrix alone */
        const int64_t n16 = ysum && vnni == 2 && 15 * wrow < INT32_MAX ? n_rows / 16 * 16 : 0, n_groups = n16 / 16 + (n_rows - n16) / 8;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t g = 0; g < n_groups; g++) {
            const int64_t r = g < n16 / 16 ? 16 * g : n16 + 8 * (g - n16 / 16), rows = r < n16 ? 16 : 8;
            const char *next = (const char *)W + (r + rows) * wrow;
            const int64_t next_bytes = r + rows < n_rows ? (n_rows - r - rows < 16 ? n_rows - r - rows : 16) * wrow : 0;
            if (rows != 16) /* the 16-row kernel prefetches the next group itself, a slice per block */
                for (int64_t o = 0; o < next_bytes; o += 64) __builtin_prefetch(next + o);
            for (int64_t t0 = 0; t0 < n_tok; t0 += 16) {
                const int nt = n_tok - t0 < 16 ? (int)(n_tok - t0) : 16;
                float o[128];
                const char *wr8 = (const char *)W + r * wrow, *a = (const char *)xq + t0 * arow;
                if (rows == 16) {
                    rep16z_iq4_nl(wr8, wrow, a, arow, nt, nb, ysum + t0 * nb, Y + t0 * ldy + r, ldy, t0 ? NULL : next, next_bytes);
                    continue;
                }
                if (ysum && vnni == 2) rep8t_iq4_nl_avx512vnni(wr8, wrow, a, arow, nt, nb, ysum + t0 * nb, o);
                else if (ysum) rep8t_iq4_nl_avxvnni(wr8, wrow, a, arow, nt, nb, ysum + t0 * nb, o);
                else rep8_iq4_nl_avx2(wr8, wrow, a, arow, nt, nb, o);
                for (int t = 0; t < nt; t++)
                    for (int i = 0; i < 8; i++) Y[(t0 + t) * ldy + r + i] = o[8 * t + i];
            }
        }
        free(ysum);
        return;
    }
    if (simd && n_tok == 1) { /* decode: vec_dot, one row loop per type */
        const gemv_fn gemv = wt == T_IQ3_XXS ? gemv_iq3_xxs_avx2 : wt == T_IQ3_S ? gemv_iq3_s_avx2 : wt == T_IQ4_XS ? gemv_iq4_xs_avx2 : gemv_iq4_nl_avx2;
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
        {
            const int64_t nth = omp_get_num_threads(), it = omp_get_thread_num(), per = (n_rows + nth - 1) / nth;
            const int64_t r0 = it * per, r1 = r0 + per < n_rows ? r0 + per : n_rows;
            if (r0 < r1) gemv((const char *)W, wrow, r0, r1, xq, nb, Y);
        }
        return;
    }
#endif
    const int tiled = simd && wt != T_IQ4_NL && n_tok >= 8, tiny = wt == T_IQ4_NL && n_tok >= 2;
    const int64_t tile = arow * 16 <= 32768 ? 16 : arow * 8 <= 32768 ? 8 : 4;
#pragma omp parallel num_threads(n_threads)
    for (int64_t tt = 0; tt < n_tok; tt += tile) {
        const int64_t tt1 = tt + tile < n_tok ? tt + tile : n_tok;
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < n_rows; r++) {
            const char *wr = (const char *)W + r * wrow;
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch(wr + 4 * wrow + o);
            const int gs = tiled ? 16 : 4; /* activation rows per unpacked weight block */
            for (int64_t t0 = tt; t0 < tt1; t0 += gs) {
                const int nt = tt1 - t0 < gs ? (int)(tt1 - t0) : gs;
                const char *a = (const char *)xq + t0 * arow;
                float *y = Y + t0 * ldy + r;
#if defined(__x86_64__) && defined(__GNUC__)
                if (simd) {
                    if (tiled) {
                        (wt == T_IQ3_XXS ? tiled_iq3_xxs : wt == T_IQ3_S ? tiled_iq3_s : tiled_iq4_xs)((const char *)W, wrow, r, a, arow, nb, nt,
                                                                                                   Y + t0 * ldy, ldy);
                    } else if (tiny) {
                        float o[4];
                        tiny_iq4_nl_avx2(wr, a, arow, nb, nt, o);
                        for (int t = 0; t < nt; t++) y[t * ldy] = o[t];
                    } else if (nt == 4) {
                        float o[4];
                        (wt == T_IQ3_XXS ? dot4_iq3_xxs_avx2 : wt == T_IQ3_S ? dot4_iq3_s_avx2 : dot4_iq4_xs_avx2)(wr, a, arow, nb, o);
                        for (int t = 0; t < 4; t++) y[t * ldy] = o[t];
                    } else {
                        for (int t = 0; t < nt; t++) y[t * ldy] = dot(wr, a + t * arow, nb);
                    }
                    continue;
                }
#endif
                for (int t = 0; t < nt; t++) /* portable: ggml's x86 orders, one value at a time */
                    y[t * ldy] = tiny ? dot_iq4_nl_tiny(wr, a + t * arow, nb) : dot(wr, a + t * arow, nb);
            }
        }
    }
}
