/* IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M weights against Q8_K activations, in ggml-cpu's arithmetic
 * (included by qkernels.c; block layouts from ggml-common.h, lookup tables from iq_tables.h).
 *
 * Every block is 256 values in eight sub-blocks of 32: value j of sub-block ib is
 *   IQ2_XXS  grid[byte l of word 2ib] · sign,   l = j/8; the word 2ib+1 holds four 7-bit sign indices
 *            (ksigns) and the 4-bit scale s in its top bits; sub-block scale 2s+1
 *   IQ2_XS   grid[qs[4ib+l] & 511] · ksigns[qs[4ib+l] >> 9]; scales[ib] low / high nibble → 2s+1 for
 *            the first / second 16 values
 *   IQ2_S    grid[qs[4ib+l] | (qh[ib] bits 2l..2l+1) << 8] · sign bits of byte 32 + 4ib + l; scales as IQ2_XS
 *   IQ1_S    grid[qs[4ib+l] | (qh[ib] bits 3l..3l+2) << 8] (values −1, 0, 1) + δ, δ = ∓1/8 by qh[ib]'s
 *            top bit; scale 2·(qh[ib] bits 12..14)+1
 *   IQ1_M    as IQ1_S with its 11-bit index split over qh[2ib + l/2], a δ per 8 values, a 3-bit scale
 *            per 16 and the fp16 d spread over the top nibbles of the four scale words
 * times d (IQ2: d/8). The integer parts are exact; what fixes the result is the float order:
 *
 * ggml_vec_dot_*_q8_K (arch/x86/quants.c, the AVX2 code: llama.cpp has no AVX-512 variant of these) —
 *   8 int32 lanes per block, lane k = Σ over sub-blocks of scale · Σ of values 4k..4k+3 × activations
 *   (maddubs pairs, then madd with the scales); per block d = d_w·d_a, lanes += d·lane (FMA);
 *     IQ2_*:  0.125 · hsum(lanes)
 *     IQ1_S:  the δ part as one integer per block, Σ_ib δ·scale·(bsums of ib), into a float sum
 *             (d·int, contracted to an FMA as ggml-cpu is built); hsum(lanes) + 0.125 · that sum
 *     IQ1_M:  the δ part in a second set of 8 lanes; hsum(lanes) + 0.125 · hsum(δ lanes)
 *   hsum: the two halves added, then movehl, then movehdup (hsum_float_8).
 * tiled matmul (tiled/tiled.cpp, 8 activation rows or more): per output one float chain over the
 *   blocks, out = fma(s · d', d_a, out), s the block's whole integer — IQ2: Σ scale·value·act;
 *   IQ1: values 8·grid + δ, so s = 8·Σ lanes + δ part — and d' = d · 0.125.
 * Unpacking, the integer sums and every float step are the same for one row or several, so the
 * multi-token kernels unpack each sub-block once for up to four activation rows. */

#pragma pack(push, 1)
typedef struct { uint16_t d; uint16_t qs[32]; } blk_iq2_xxs;                                 /* 66 */
typedef struct { uint16_t d; uint16_t qs[32]; uint8_t scales[8]; } blk_iq2_xs;               /* 74 */
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; } blk_iq2_s; /* 82 */
typedef struct { uint16_t d; uint8_t qs[32]; uint16_t qh[8]; } blk_iq1_s;                    /* 50 */
typedef struct { uint8_t qs[32]; uint8_t qh[16]; uint8_t scales[8]; } blk_iq1_m;            /* 56 */
#pragma pack(pop)

enum { T_IQ2_XXS = 16, T_IQ2_XS = 17, T_IQ1_S = 19, T_IQ2_S = 22, T_IQ1_M = 29 };

/* bytes per block, tables needed, and d (IQ2, IQ1_S: the block's fp16 d; IQ1_M: packed in its scales) */
static inline int iq2_block_bytes(int wt) {
    return wt == T_IQ2_XXS ? 66 : wt == T_IQ2_XS ? 74 : wt == T_IQ2_S ? 82 : wt == T_IQ1_S ? 50 : wt == T_IQ1_M ? 56 : 0;
}
static inline unsigned iq2_tables_needed(int wt) {
    return wt == T_IQ2_XXS ? TB_IQ2XXS | TB_KSIGNS : wt == T_IQ2_XS ? TB_IQ2XS | TB_KSIGNS : wt == T_IQ2_S ? TB_IQ2S : TB_IQ1S;
}
static inline uint16_t iq1_m_d(const blk_iq1_m *x) {
    uint16_t sc[4];
    memcpy(sc, x->scales, 8);
    return (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
}
static inline float iq2_block_d(int wt, const uint8_t *blk) {
    uint16_t d;
    if (wt == T_IQ1_M) d = iq1_m_d((const blk_iq1_m *)blk);
    else memcpy(&d, blk, 2);
    return h2f(d);
}

/* ---- portable: one sub-block as 32 signed values, two scales (per 16) and the IQ1 δ signs (per 8) - */
static void iq2_sub_values(int wt, const uint8_t *blk, int ib, int8_t *v, int *sc, int *dl) {
    uint64_t g[4];
    uint8_t sg[4] = {0, 0, 0, 0};
    dl[0] = dl[1] = dl[2] = dl[3] = 0;
    if (wt == T_IQ2_XXS) {
        const blk_iq2_xxs *x = (const blk_iq2_xxs *)blk;
        uint32_t aux[2];
        memcpy(aux, x->qs + 4 * ib, 8);
        for (int l = 0; l < 4; l++) g[l] = cv_iq2xxs_grid[(aux[0] >> (8 * l)) & 255], sg[l] = cv_ksigns_iq2xs[(aux[1] >> (7 * l)) & 127];
        sc[0] = sc[1] = 2 * (int)(aux[1] >> 28) + 1;
    } else if (wt == T_IQ2_XS) {
        const blk_iq2_xs *x = (const blk_iq2_xs *)blk;
        for (int l = 0; l < 4; l++) g[l] = cv_iq2xs_grid[x->qs[4 * ib + l] & 511], sg[l] = cv_ksigns_iq2xs[x->qs[4 * ib + l] >> 9];
        sc[0] = 2 * (x->scales[ib] & 15) + 1, sc[1] = 2 * (x->scales[ib] >> 4) + 1;
    } else if (wt == T_IQ2_S) {
        const blk_iq2_s *x = (const blk_iq2_s *)blk;
        for (int l = 0; l < 4; l++) g[l] = cv_iq2s_grid[x->qs[4 * ib + l] | ((x->qh[ib] << (8 - 2 * l)) & 0x300)], sg[l] = x->qs[32 + 4 * ib + l];
        sc[0] = 2 * (x->scales[ib] & 15) + 1, sc[1] = 2 * (x->scales[ib] >> 4) + 1;
    } else if (wt == T_IQ1_S) {
        const blk_iq1_s *x = (const blk_iq1_s *)blk;
        const int hw = x->qh[ib];
        for (int l = 0; l < 4; l++) g[l] = cv_iq1s_grid[x->qs[4 * ib + l] | (((hw >> (3 * l)) & 7) << 8)], dl[l] = hw & 0x8000 ? -1 : 1;
        sc[0] = sc[1] = 2 * ((hw >> 12) & 7) + 1;
    } else { /* IQ1_M */
        const blk_iq1_m *x = (const blk_iq1_m *)blk;
        uint16_t s16[4];
        memcpy(s16, x->scales, 8);
        const int hw = s16[ib / 2], sh = 6 * (ib % 2);
        const uint8_t *qh = x->qh + 2 * ib;
        for (int l = 0; l < 4; l++) {
            const int h = qh[l / 2] >> (4 * (l % 2));
            g[l] = cv_iq1s_grid[x->qs[4 * ib + l] | ((h & 7) << 8)], dl[l] = h & 8 ? -1 : 1;
        }
        sc[0] = 2 * ((hw >> sh) & 7) + 1, sc[1] = 2 * ((hw >> (sh + 3)) & 7) + 1;
    }
    for (int l = 0; l < 4; l++)
        for (int j = 0; j < 8; j++) {
            const int8_t b = (int8_t)(g[l] >> (8 * j));
            v[8 * l + j] = (sg[l] >> j) & 1 ? (int8_t)-b : b;
        }
}

/* one block against one activation block: the 8 lanes, the IQ1_M δ lanes, the IQ1_S δ integer */
static void iq2_block_lanes(int wt, const uint8_t *blk, const blk_q8_K *a, int32_t *l1, int32_t *l2, int32_t *s1) {
    for (int k = 0; k < 8; k++) l1[k] = l2[k] = 0;
    *s1 = 0;
    for (int ib = 0; ib < 8; ib++) {
        int8_t v[32];
        int sc[2], dl[4];
        iq2_sub_values(wt, blk, ib, v, sc, dl);
        const int8_t *y = a->qs + 32 * ib;
        for (int j = 0; j < 32; j++) {
            l1[j / 4] += sc[j / 16] * v[j] * y[j];
            l2[j / 4] += sc[j / 16] * dl[j / 8] * y[j];
        }
        *s1 += (a->bsums[2 * ib] + a->bsums[2 * ib + 1]) * dl[0] * sc[0];
    }
}

static inline float iq2_hsum8(const float *x) {
    float h[4];
    for (int i = 0; i < 4; i++) h[i] = x[i + 4] + x[i];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

/* vec_dot's float steps from one block's integers (portable and SIMD share it) */
static inline void iq2_vec_step(int wt, float d, const int32_t *l1, const int32_t *l2, int32_t s1, float *acc, float *acc2,
                                float *sum1) {
    for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)l1[k], acc[k]);
    if (wt == T_IQ1_M)
        for (int k = 0; k < 8; k++) acc2[k] = fmaf(d, (float)l2[k], acc2[k]);
    if (wt == T_IQ1_S) *sum1 = fmaf(d, (float)s1, *sum1);
}
static inline float iq2_vec_end(int wt, const float *acc, const float *acc2, float sum1) {
    if (wt == T_IQ1_S) return iq2_hsum8(acc) + 0.125f * sum1;
    if (wt == T_IQ1_M) return iq2_hsum8(acc) + 0.125f * iq2_hsum8(acc2);
    return 0.125f * iq2_hsum8(acc);
}

/* the tiled matmul's integer for one block: IQ1 values enter as 8·grid + δ */
static inline int32_t iq2_tiled_int(int wt, const int32_t *l1, const int32_t *l2, int32_t s1) {
    int32_t s = 0, t = 0;
    for (int k = 0; k < 8; k++) s += l1[k], t += l2[k];
    return wt == T_IQ1_S ? 8 * s + s1 : wt == T_IQ1_M ? 8 * s + t : s;
}
static inline float iq2_tiled_d(int wt, const uint8_t *blk) { return iq2_block_d(wt, blk) * 0.125f; }

static float iq2_dot_portable(int wt, const void *vw, const void *va, int nb) {
    const uint8_t *w = vw;
    const blk_q8_K *a = va;
    const int bb = iq2_block_bytes(wt);
    float acc[8] = {0}, acc2[8] = {0}, sum1 = 0.0f;
    for (int b = 0; b < nb; b++) {
        int32_t l1[8], l2[8], s1;
        iq2_block_lanes(wt, w + (int64_t)b * bb, &a[b], l1, l2, &s1);
        iq2_vec_step(wt, iq2_block_d(wt, w + (int64_t)b * bb) * a[b].d, l1, l2, s1, acc, acc2, &sum1);
    }
    return iq2_vec_end(wt, acc, acc2, sum1);
}

static float dot_iq2_xxs(const void *w, const void *a, int nb) { return iq2_dot_portable(T_IQ2_XXS, w, a, nb); }
static float dot_iq2_xs(const void *w, const void *a, int nb) { return iq2_dot_portable(T_IQ2_XS, w, a, nb); }
static float dot_iq2_s(const void *w, const void *a, int nb) { return iq2_dot_portable(T_IQ2_S, w, a, nb); }
static float dot_iq1_s(const void *w, const void *a, int nb) { return iq2_dot_portable(T_IQ1_S, w, a, nb); }
static float dot_iq1_m(const void *w, const void *a, int nb) { return iq2_dot_portable(T_IQ1_M, w, a, nb); }

#if defined(__x86_64__) && defined(__GNUC__)
#define IQ_INLINE AVX2_FN static inline __attribute__((always_inline))

AVX2_FN static inline int32_t iq2_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

IQ_INLINE float iq2_block_d_f16c(const int wt, const uint8_t *blk) {
    uint16_t d;
    if (wt == T_IQ1_M) d = iq1_m_d((const blk_iq1_m *)blk);
    else memcpy(&d, blk, 2);
    return _cvtsh_ss(d);
}

/* per block, before its sub-blocks: S holds in dword ib the two int16 scales of sub-block ib (values
 * 0..15, 16..31); IQ1_S also D, δ·scale of each sub-block twice (one int16 per 16-value bsum) */
IQ_INLINE void iq2_block_prep(const int wt, const uint8_t *blk, __m256i *S, __m256i *D, __m256i *E) {
    const __m256i one16 = _mm256_set1_epi16(1);
    if (wt == T_IQ2_XS || wt == T_IQ2_S) { /* 8 bytes of nibbles: low → values 0..15, high → 16..31 */
        const __m128i x = _mm_loadl_epi64((const __m128i *)(blk + (wt == T_IQ2_XS ? 66 : 74)));
        const __m128i m4 = _mm_set1_epi8(15);
        const __m128i n = _mm_unpacklo_epi8(_mm_and_si128(x, m4), _mm_and_si128(_mm_srli_epi16(x, 4), m4));
        *S = _mm256_add_epi16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(n), 1), one16);
    } else if (wt == T_IQ1_S) { /* qh bits 12..14: the scale, bit 15: δ's sign */
        const __m128i qh = _mm_loadu_si128((const __m128i *)(blk + 34));
        const __m128i ls = _mm_add_epi16(_mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)), 1), _mm_set1_epi16(1));
        const __m256i l32 = _mm256_cvtepu16_epi32(ls);
        *S = _mm256_or_si256(l32, _mm256_slli_epi32(l32, 16));
        const __m128i dl = _mm_sign_epi16(ls, _mm_or_si128(_mm_srai_epi16(qh, 15), _mm_set1_epi16(1)));
        const __m256i d32 = _mm256_cvtepu16_epi32(dl);
        *D = _mm256_or_si256(d32, _mm256_slli_epi32(d32, 16));
    } else if (wt == T_IQ1_M) { /* 16 3-bit scales: word w of the 4, bits 3k..3k+2 → scale 4w + k */
        uint64_t sc;
        memcpy(&sc, blk + 48, 8);
        const __m256i w = _mm256_shuffle_epi8(_mm256_set1_epi64x((long long)sc),
                                              _mm256_set_epi64x(0x0706070607060706LL, 0x0504050405040504LL, 0x0302030203020302LL, 0x0100010001000100LL));
        const __m256i k = _mm256_mullo_epi16(w, _mm256_set_epi16(16, 128, 1024, 8192, 16, 128, 1024, 8192, 16, 128, 1024, 8192, 16, 128, 1024, 8192));
        *S = _mm256_add_epi16(_mm256_slli_epi16(_mm256_srli_epi16(k, 13), 1), one16);
        /* δ·scale of each 8 values g = 0..31 (word g of D for g < 16, of E after): scale word g/2 of S, its
         * sign from bit 3 of qh nibble g (bit 3 / 7 of qh byte g/2) */
        const __m256i lo = _mm256_unpacklo_epi16(*S, *S), hi = _mm256_unpackhi_epi16(*S, *S);
        const __m128i qh = _mm_loadu_si128((const __m128i *)(blk + 32));
        const __m128i n0 = _mm_cmpeq_epi8(_mm_and_si128(qh, _mm_set1_epi8(0x08)), _mm_set1_epi8(0x08));
        const __m128i n1 = _mm_cmpeq_epi8(_mm_and_si128(qh, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0x80));
        const __m256i s0 = _mm256_or_si256(_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(n0, n1)), one16);
        const __m256i s1 = _mm256_or_si256(_mm256_cvtepi8_epi16(_mm_unpackhi_epi8(n0, n1)), one16);
        *D = _mm256_sign_epi16(_mm256_permute2x128_si256(lo, hi, 0x20), s0);
        *E = _mm256_sign_epi16(_mm256_permute2x128_si256(lo, hi, 0x31), s1);
    }
}

/* sub-block ib's 16 int16 scales from S: its dword broadcast, then word 0 to the low half, word 1 to the high */
IQ_INLINE __m256i iq2_scales_of(__m256i S, int ib) {
    return _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(S, _mm256_set1_epi32(ib)),
                               _mm256_set_epi64x(0x0302030203020302LL, 0x0302030203020302LL, 0x0100010001000100LL, 0x0100010001000100LL));
}

/* one sub-block for the maddubs step: magnitudes u (unsigned bytes), signs s (±1 bytes, applied to the
 * activations), the scales as 16 int16 (8 for values 0..15, 8 for 16..31) */
IQ_INLINE void iq2_sub(const int wt, const uint8_t *blk, const int ib, __m256i S, __m256i *u, __m256i *s, __m256i *sc) {
    if (wt == T_IQ2_XXS) {
        const blk_iq2_xxs *x = (const blk_iq2_xxs *)blk;
        uint32_t aux[2];
        memcpy(aux, x->qs + 4 * ib, 8);
        const uint8_t *i8 = (const uint8_t *)(x->qs + 4 * ib); /* the four grid indices, one byte each */
        *u = _mm256_set_epi64x(cv_iq2xxs_grid[i8[3]], cv_iq2xxs_grid[i8[2]], cv_iq2xxs_grid[i8[1]], cv_iq2xxs_grid[i8[0]]);
        *s = _mm256_set_epi64x(cv_signs64_iq2xs[(aux[1] >> 21) & 127], cv_signs64_iq2xs[(aux[1] >> 14) & 127],
                               cv_signs64_iq2xs[(aux[1] >> 7) & 127], cv_signs64_iq2xs[aux[1] & 127]);
        *sc = _mm256_set1_epi16((short)(2 * (aux[1] >> 28) + 1));
        return;
    }
    *sc = iq2_scales_of(S, ib);
    if (wt == T_IQ2_XS) {
        const blk_iq2_xs *x = (const blk_iq2_xs *)blk;
        const uint16_t *q = x->qs + 4 * ib;
        *u = _mm256_set_epi64x(cv_iq2xs_grid[q[3] & 511], cv_iq2xs_grid[q[2] & 511], cv_iq2xs_grid[q[1] & 511], cv_iq2xs_grid[q[0] & 511]);
        *s = _mm256_set_epi64x(cv_signs64_iq2xs[q[3] >> 9], cv_signs64_iq2xs[q[2] >> 9], cv_signs64_iq2xs[q[1] >> 9], cv_signs64_iq2xs[q[0] >> 9]);
    } else if (wt == T_IQ2_S) {
        const blk_iq2_s *x = (const blk_iq2_s *)blk;
        const uint8_t *q = x->qs + 4 * ib;
        const int h = x->qh[ib];
        *u = _mm256_set_epi64x(cv_iq2s_grid[q[3] | ((h << 2) & 0x300)], cv_iq2s_grid[q[2] | ((h << 4) & 0x300)],
                               cv_iq2s_grid[q[1] | ((h << 6) & 0x300)], cv_iq2s_grid[q[0] | ((h << 8) & 0x300)]);
        uint32_t sb;
        memcpy(&sb, x->qs + 32 + 4 * ib, 4);
        const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)sb), _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                                                                                  0x0101010101010101LL, 0));
        *s = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel), _mm256_set1_epi8(1));
    } else if (wt == T_IQ1_S) {
        const blk_iq1_s *x = (const blk_iq1_s *)blk;
        const uint8_t *q = x->qs + 4 * ib;
        const int hw = x->qh[ib];
        const __m256i g = _mm256_set_epi64x(cv_iq1s_grid[q[3] | ((hw >> 1) & 0x700)], cv_iq1s_grid[q[2] | ((hw << 2) & 0x700)],
                                            cv_iq1s_grid[q[1] | ((hw << 5) & 0x700)], cv_iq1s_grid[q[0] | ((hw << 8) & 0x700)]);
        *u = _mm256_sign_epi8(g, g), *s = g;
    } else { /* IQ1_M */
        const blk_iq1_m *x = (const blk_iq1_m *)blk;
        const uint8_t *q = x->qs + 4 * ib, *qh = x->qh + 2 * ib;
        const __m256i g = _mm256_set_epi64x(cv_iq1s_grid[q[3] | ((qh[1] << 4) & 0x700)], cv_iq1s_grid[q[2] | ((qh[1] << 8) & 0x700)],
                                            cv_iq1s_grid[q[1] | ((qh[0] << 4) & 0x700)], cv_iq1s_grid[q[0] | ((qh[0] << 8) & 0x700)]);
        *u = _mm256_sign_epi8(g, g), *s = g;
    }
}

/* IQ1_M: the four δ·scale words of sub-block ib, each over its 8 values' 4 int16 pair sums */
IQ_INLINE __m256i iq2_sd_of(__m256i D, __m256i E, const int ib) {
    const int q = 2 * (ib % 4);
    return _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(ib < 4 ? D : E, _mm256_set_epi32(q + 1, q, q + 1, q, q + 1, q, q + 1, q)),
                               _mm256_set_epi64x(0x0706070607060706LL, 0x0504050405040504LL, 0x0302030203020302LL, 0x0100010001000100LL));
}

/* one weight block against nt activation blocks (a[t]): lanes l1[t], IQ1_M δ lanes l2[t], IQ1_S δ integer s1[t] */
IQ_INLINE void iq2_lanes(const int wt, const uint8_t *blk, const blk_q8_K *const *a, const int nt, __m256i *l1, __m256i *l2, int32_t *s1) {
    __m256i S = _mm256_setzero_si256(), D = _mm256_setzero_si256(), E = _mm256_setzero_si256();
    iq2_block_prep(wt, blk, &S, &D, &E);
    for (int t = 0; t < nt; t++) {
        l1[t] = l2[t] = _mm256_setzero_si256();
        if (wt == T_IQ1_S) s1[t] = iq2_hsum_i32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a[t]->bsums), D));
    }
    const __m256i one = _mm256_set1_epi8(1);
#pragma GCC unroll 8
    for (int ib = 0; ib < 8; ib++) {
        __m256i u, s, sc, sd = one;
        iq2_sub(wt, blk, ib, S, &u, &s, &sc);
        if (wt == T_IQ1_M) sd = iq2_sd_of(D, E, ib);
        for (int t = 0; t < nt; t++) {
            const __m256i y = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 32 * ib));
            l1[t] = _mm256_add_epi32(l1[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(y, s)), sc));
            if (wt == T_IQ1_M) l2[t] = _mm256_add_epi32(l2[t], _mm256_madd_epi16(_mm256_maddubs_epi16(one, y), sd));
        }
    }
}

/* vec_dot for nt activation rows (arow bytes apart) at once: out[t] */
IQ_INLINE void iq2_dotn(const int wt, const void *vw, const void *va, int64_t arow, int nb, const int nt, float *out) {
    const uint8_t *w = vw;
    const int bb = iq2_block_bytes(wt);
    __m256 acc[4], acc2[4];
    float sum1[4];
    for (int t = 0; t < nt; t++) acc[t] = acc2[t] = _mm256_setzero_ps(), sum1[t] = 0.0f;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = w + (int64_t)b * bb;
        const blk_q8_K *a[4];
        for (int t = 0; t < nt; t++) a[t] = (const blk_q8_K *)((const char *)va + t * arow) + b;
        __m256i l1[4], l2[4];
        int32_t s1[4];
        iq2_lanes(wt, blk, a, nt, l1, l2, s1);
        const float dw = iq2_block_d_f16c(wt, blk);
        for (int t = 0; t < nt; t++) {
            const float d = dw * a[t]->d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(l1[t]), acc[t]);
            if (wt == T_IQ1_M) acc2[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(l2[t]), acc2[t]);
            if (wt == T_IQ1_S) sum1[t] = fmaf(d, (float)s1[t], sum1[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t] = wt == T_IQ1_S ? hsum8(acc[t]) + 0.125f * sum1[t] : wt == T_IQ1_M ? hsum8(acc[t]) + 0.125f * hsum8(acc2[t]) : 0.125f * hsum8(acc[t]);
}

#define IQ2_DOTS(sfx, WT)                                                                                                        \
    AVX2_FN static float dot_##sfx##_avx2(const void *w, const void *a, int nb) {                                                \
        float o;                                                                                                                 \
        iq2_dotn(WT, w, a, 0, nb, 1, &o);                                                                                        \
        return o;                                                                                                                \
    }                                                                                                                            \
    AVX2_FN static void dot4_##sfx##_avx2(const void *w, const void *a, int64_t arow, int nb, float *out) {                      \
        iq2_dotn(WT, w, a, arow, nb, 4, out);                                                                                    \
    }                                                                                                                            \
    CV_GEMV(AVX2_FN, gemv_##sfx##_avx2, dot_##sfx##_avx2)
IQ2_DOTS(iq2_xxs, T_IQ2_XXS)
IQ2_DOTS(iq2_xs, T_IQ2_XS)
IQ2_DOTS(iq2_s, T_IQ2_S)
IQ2_DOTS(iq1_s, T_IQ1_S)
IQ2_DOTS(iq1_m, T_IQ1_M)

/* the tiled route for row r and nt ≤ 16 activation rows (Y[t·ldy + r]): each weight block unpacked once
 * for all of them (IQ1: as the tiled kernel's values 8·grid + δ), then per row its whole integer and one
 * FMA step of the chain */
IQ_INLINE void iq2_tiled_rows(const int wt, const char *W, int64_t wrow, int64_t r, const void *xq, int64_t arow, int nb, int nt,
                              float *Y, int64_t ldy) {
    const int bb = iq2_block_bytes(wt);
    float acc[16];
    for (int t = 0; t < nt; t++) acc[t] = 0.0f;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = (const uint8_t *)W + r * wrow + (int64_t)b * bb;
        __m256i S = _mm256_setzero_si256(), D = _mm256_setzero_si256(), E = _mm256_setzero_si256(), u[8], s[8], sc[8];
        iq2_block_prep(wt, blk, &S, &D, &E);
#pragma GCC unroll 8
        for (int ib = 0; ib < 8; ib++) {
            iq2_sub(wt, blk, ib, S, &u[ib], &s[ib], &sc[ib]);
            if (wt == T_IQ1_S || wt == T_IQ1_M) { /* the tiled kernel's values 8·grid + δ (never 0), as magnitude and sign */
                __m256i dl;
                if (wt == T_IQ1_S) dl = _mm256_set1_epi8(((const blk_iq1_s *)blk)->qh[ib] & 0x8000 ? -1 : 1);
                else {
                    const uint8_t *qh = ((const blk_iq1_m *)blk)->qh + 2 * ib;
                    const long long m = -1LL, p = 0x0101010101010101LL;
                    dl = _mm256_set_epi64x(qh[1] & 0x80 ? m : p, qh[1] & 0x08 ? m : p, qh[0] & 0x80 ? m : p, qh[0] & 0x08 ? m : p);
                }
                const __m256i v = _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), s[ib]), dl);
                u[ib] = _mm256_sign_epi8(v, v), s[ib] = v;
            }
        }
        const float dw = iq2_block_d_f16c(wt, blk) * 0.125f;
        for (int t = 0; t < nt; t++) {
            const blk_q8_K *a = (const blk_q8_K *)((const char *)xq + t * arow) + b;
            __m256i l1 = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int ib = 0; ib < 8; ib++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * ib));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(_mm256_maddubs_epi16(u[ib], _mm256_sign_epi8(y, s[ib])), sc[ib]));
            }
            acc[t] = fmaf((float)iq2_hsum_i32(l1) * dw, a->d, acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) Y[t * ldy + r] = acc[t];
}

#define IQ2_TILED(sfx, WT)                                                                                                       \
    AVX2_FN static void tiled_##sfx(const char *W, int64_t wrow, int64_t r, const void *xq, int64_t arow, int nb, int nt, float *Y, \
                                    int64_t ldy) {                                                                               \
        iq2_tiled_rows(WT, W, wrow, r, xq, arow, nb, nt, Y, ldy);                                                                \
    }
IQ2_TILED(iq2_xxs, T_IQ2_XXS)
IQ2_TILED(iq2_xs, T_IQ2_XS)
IQ2_TILED(iq2_s, T_IQ2_S)
IQ2_TILED(iq1_s, T_IQ1_S)
IQ2_TILED(iq1_m, T_IQ1_M)
typedef void (*iq2_tiled_fn)(const char *, int64_t, int64_t, const void *, int64_t, int, int, float *, int64_t);
#endif

static int iq2_type(int wt) { return wt == T_IQ2_XXS || wt == T_IQ2_XS || wt == T_IQ2_S || wt == T_IQ1_S || wt == T_IQ1_M; }

/* layout() for these types: 256-value blocks against Q8_K; unsupported until the tables arrived */
static int iq2_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (!iq2_type(wt) || !cv_iq_ready(iq2_tables_needed(wt))) return -1;
    *be = 256, *bb = iq2_block_bytes(wt), *atype = T_Q8_K, *ab = 292;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        *dot = wt == T_IQ2_XXS ? dot_iq2_xxs_avx2 : wt == T_IQ2_XS ? dot_iq2_xs_avx2 : wt == T_IQ2_S ? dot_iq2_s_avx2
             : wt == T_IQ1_S   ? dot_iq1_s_avx2   : dot_iq1_m_avx2;
        return 0;
    }
#endif
    *dot = wt == T_IQ2_XXS ? dot_iq2_xxs : wt == T_IQ2_XS ? dot_iq2_xs : wt == T_IQ2_S ? dot_iq2_s : wt == T_IQ1_S ? dot_iq1_s : dot_iq1_m;
    return 0;
}

/* llama.cpp's route for these types: vec_dot under 8 activation rows, the tiled matmul from 8 (x86) */
static int iq2_route_tiled(int wt, int64_t n_tok) { return iq2_type(wt) && have_avx2() && n_tok >= 8; }

#if defined(__x86_64__) && defined(__GNUC__)
static gemv_fn iq2_gemv_for(int wt) {
    return wt == T_IQ2_XXS ? gemv_iq2_xxs_avx2 : wt == T_IQ2_XS ? gemv_iq2_xs_avx2 : wt == T_IQ2_S ? gemv_iq2_s_avx2
         : wt == T_IQ1_S   ? gemv_iq1_s_avx2   : wt == T_IQ1_M  ? gemv_iq1_m_avx2  : NULL;
}
static dot4_fn iq2_dot4_for(int wt) {
    return wt == T_IQ2_XXS ? dot4_iq2_xxs_avx2 : wt == T_IQ2_XS ? dot4_iq2_xs_avx2 : wt == T_IQ2_S ? dot4_iq2_s_avx2
         : wt == T_IQ1_S   ? dot4_iq1_s_avx2   : wt == T_IQ1_M  ? dot4_iq1_m_avx2  : NULL;
}

/* the tiled route: rows split across threads, tokens in L1-sized tiles of up to 16 */
static void iq2_matmul_tiled(int wt, const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy,
                             int n_threads) {
    const iq2_tiled_fn f = wt == T_IQ2_XXS ? tiled_iq2_xxs : wt == T_IQ2_XS ? tiled_iq2_xs : wt == T_IQ2_S ? tiled_iq2_s
                         : wt == T_IQ1_S   ? tiled_iq1_s   : tiled_iq1_m;
    const int64_t wrow = (int64_t)nb * iq2_block_bytes(wt), arow = (int64_t)nb * 292;
    const int64_t tile = 16; /* activations of 16 rows stay in L1 (or L2) while each weight block is unpacked once for them */
#pragma omp parallel num_threads(n_threads)
    for (int64_t tt = 0; tt < n_tok; tt += tile) {
        const int64_t tt1 = tt + tile < n_tok ? tt + tile : n_tok;
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < n_rows; r++) {
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch((const char *)W + (r + 4) * wrow + o);
            f((const char *)W, wrow, r, (const char *)xq + tt * arow, arow, nb, (int)(tt1 - tt), Y + tt * ldy, ldy);
        }
    }
}
#endif
