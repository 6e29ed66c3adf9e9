/* Q2_K and Q3_K weights with ggml-cpu's arithmetic on x86 (included by qkernels.c after its AVX2
 * helpers; its blk_q8_K, h2f, hsum8 and have_avx2 are used here).
 *
 * Both types multiply Q8_K activations. Every integer below is exact however it is formed; what
 * is pinned is the float order, which depends on the route llama.cpp takes:
 *   vec_dot (arch/x86/quants.c ggml_vec_dot_q{2,3}_K_q8_K, AVX2): per block, 8 float lanes fused
 *     with d = d_a·d_w — Q2_K first adds the min term (lane l: mins[2l]·bsums[2l] + mins[2l+1]·
 *     bsums[2l+1]) fused with dmin = −d_a·dmin_w — summed by hsum_float_8 at the end;
 *   repacked Q2_K (repack.cpp q2_K_8x8_q8_K, taken when ggml is built with AVX-512F and the
 *     matrix has a multiple of 8 rows): gemv adds each block's integer sum × (d_w·d_a) to one float
 *     chain and its min sum × (dmin_w·d_a) to a second; gemm (activation rows in groups of 4) does
 *     the same per 128-value half block; the second chain is subtracted at the end;
 *   tiled (tiled/tiled-kernel.cpp, 8 activation rows or more, matrices not repacked): per block
 *     r = d_w·Σ (Q2_K: fused with −dmin_w·Σmins), then fused into the output with d_a.
 */

#pragma pack(push, 1)
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } blk_q2_K;            /* 84 */
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } blk_q3_K; /* 110 */
#pragma pack(pop)

enum { T_Q2_K = 10, T_Q3_K = 11 };

/* Q3_K's 16 six-bit scales (12 bytes), minus 32: the four 32-bit words ggml's dots build */
static inline void q3_K_scales(const uint8_t *s, int8_t *out) {
    uint32_t aux[3], v[4];
    memcpy(aux, s, 12);
    const uint32_t m1 = 0x03030303u, m2 = 0x0f0f0f0fu;
    v[0] = (aux[0] & m2) | (((aux[2] >> 0) & m1) << 4);
    v[1] = (aux[1] & m2) | (((aux[2] >> 2) & m1) << 4);
    v[2] = ((aux[0] >> 4) & m2) | (((aux[2] >> 4) & m1) << 4);
    v[3] = ((aux[1] >> 4) & m2) | (((aux[2] >> 6) & m1) << 4);
    memcpy(out, v, 16);
    for (int i = 0; i < 16; i++) out[i] = (int8_t)(out[i] - 32);
}

/* Value e = 128j + 32k + p (half j, shift k, byte p) of a block: 2 bits at 2k of qs[32j + p]
 * (Q3_K: minus 4 unless bit 4j + k of hmask[p] is set); scale of sub-block 8j + 2k + p/16.
 * The integers of one block against one activation block, in ggml's AVX2 lanes: li[j][l] sums the
 * bytes p = 4l'..4l'+3 of half j (l' = l mod 4, the upper 16 bytes for l ≥ 4), lm[l] the min lanes. */
static void q2_K_lanes_c(const blk_q2_K *w, const blk_q8_K *a, int32_t li[2][8], int32_t *lm) {
    for (int l = 0; l < 8; l++) lm[l] = (w->scales[2 * l] >> 4) * a->bsums[2 * l] + (w->scales[2 * l + 1] >> 4) * a->bsums[2 * l + 1];
    for (int j = 0; j < 2; j++)
        for (int l = 0; l < 8; l++) {
            int32_t s = 0;
            for (int k = 0; k < 4; k++) {
                const int sub = 8 * j + 2 * k + (l >= 4);
                int32_t t = 0;
                for (int p = 4 * l; p < 4 * l + 4; p++) t += ((w->qs[32 * j + p] >> (2 * k)) & 3) * a->qs[128 * j + 32 * k + p];
                s += (w->scales[sub] & 0xf) * t;
            }
            li[j][l] = s;
        }
}

static void q3_K_lanes_c(const blk_q3_K *w, const blk_q8_K *a, int32_t li[2][8]) {
    int8_t sc[16];
    q3_K_scales(w->scales, sc);
    for (int j = 0; j < 2; j++)
        for (int l = 0; l < 8; l++) {
            int32_t s = 0;
            for (int k = 0; k < 4; k++) {
                const int sub = 8 * j + 2 * k + (l >= 4);
                int32_t t = 0;
                for (int p = 4 * l; p < 4 * l + 4; p++) {
                    const int v = ((w->qs[32 * j + p] >> (2 * k)) & 3) - (((w->hmask[p] >> (4 * j + k)) & 1) ? 0 : 4);
                    t += v * a->qs[128 * j + 32 * k + p];
                }
                s += sc[sub] * t;
            }
            li[j][l] = s;
        }
}

static inline float q2_K_dmin(const blk_q2_K *w) { return h2f(w->dmin); }
static inline float q3_K_dmin(const blk_q3_K *w) { (void)w; return 0.0f; }

static inline int32_t sum8_i32(const int32_t *v) { return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]; }

/* portable dots in the AVX2 lanes' order */
static float dot_q2_K(const void *vw, const void *va, int nb) {
    const blk_q2_K *w = vw;
    const blk_q8_K *a = va;
    float acc[8] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t li[2][8], lm[8];
        q2_K_lanes_c(&w[b], &a[b], li, lm);
        const float d = a[b].d * h2f(w[b].d), dmin = -a[b].d * h2f(w[b].dmin);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)(li[0][l] + li[1][l]), fmaf(dmin, (float)lm[l], acc[l]));
    }
    float x[4];
    for (int i = 0; i < 4; i++) x[i] = acc[i + 4] + acc[i];
    return (x[0] + x[2]) + (x[1] + x[3]);
}

static float dot_q3_K(const void *vw, const void *va, int nb) {
    const blk_q3_K *w = vw;
    const blk_q8_K *a = va;
    float acc[8] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t li[2][8];
        q3_K_lanes_c(&w[b], &a[b], li);
        const float d = a[b].d * h2f(w[b].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)(li[0][l] + li[1][l]), acc[l]);
    }
    float x[4];
    for (int i = 0; i < 4; i++) x[i] = acc[i + 4] + acc[i];
    return (x[0] + x[2]) + (x[1] + x[3]);
}

/* one block's integer sums for the chained routes: isum[j] per half block, imin[j] the min term's */
static void q2_K_isums_c(const void *vw, const blk_q8_K *a, int32_t *isum, int32_t *imin) {
    const blk_q2_K *w = vw;
    int32_t li[2][8], lm[8];
    q2_K_lanes_c(w, a, li, lm);
    isum[0] = sum8_i32(li[0]), isum[1] = sum8_i32(li[1]);
    imin[0] = lm[0] + lm[1] + lm[2] + lm[3], imin[1] = lm[4] + lm[5] + lm[6] + lm[7];
}

static void q3_K_isums_c(const void *vw, const blk_q8_K *a, int32_t *isum, int32_t *imin) {
    int32_t li[2][8];
    q3_K_lanes_c(vw, a, li);
    isum[0] = sum8_i32(li[0]), isum[1] = sum8_i32(li[1]);
    imin[0] = imin[1] = 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
AVX2_FN static inline int32_t kq_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

/* the same lanes with AVX2: maddubs of the 2-bit values with the activations, madd with the scales */
AVX2_FN static inline __m256i q2_K_scale_pair(__m128i sc16, int k) { /* low half scale 2k, high 2k+1 (of 8 int16) */
    const __m128i lo = _mm_shuffle_epi8(sc16, _mm_set1_epi16((short)(((4 * k + 1) << 8) | (4 * k))));
    const __m128i hi = _mm_shuffle_epi8(sc16, _mm_set1_epi16((short)(((4 * k + 3) << 8) | (4 * k + 2))));
    return _mm256_set_m128i(hi, lo);
}

AVX2_FN static inline void q2_K_lanes(const blk_q2_K *w, const blk_q8_K *a, __m256i *sj, __m256i *mn) {
    const __m128i ms = _mm_loadu_si128((const __m128i *)w->scales), m4 = _mm_set1_epi8(0xf);
    *mn = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4)), _mm256_loadu_si256((const __m256i *)a->bsums));
    const __m256i all = _mm256_cvtepu8_epi16(_mm_and_si128(ms, m4)), m3 = _mm256_set1_epi8(3);
    for (int j = 0; j < 2; j++) {
        const __m128i sc16 = j ? _mm256_extracti128_si256(all, 1) : _mm256_castsi256_si128(all);
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        __m256i s = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
            const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(a->qs + 128 * j + 32 * k)));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(q2_K_scale_pair(sc16, k), p));
        }
        sj[j] = s;
    }
}

/* q3_K_scales in a register (the same four words, minus 32 per byte), not through memory */
AVX2_FN static inline __m128i q3_K_scales128(const uint8_t *s) {
    uint32_t aux[3];
    memcpy(aux, s, 12);
    const uint32_t m1 = 0x03030303u, m2 = 0x0f0f0f0fu;
    const __m128i v = _mm_set_epi32((int)(((aux[1] >> 4) & m2) | (((aux[2] >> 6) & m1) << 4)), (int)(((aux[0] >> 4) & m2) | (((aux[2] >> 4) & m1) << 4)),
                                    (int)((aux[1] & m2) | (((aux[2] >> 2) & m1) << 4)), (int)((aux[0] & m2) | (((aux[2] >> 0) & m1) << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

AVX2_FN static inline void q3_K_lanes(const blk_q3_K *w, const blk_q8_K *a, __m256i *sj) {
    const __m256i all = _mm256_cvtepi8_epi16(q3_K_scales128(w->scales)), m3 = _mm256_set1_epi8(3);
    const __m256i hbits = _mm256_loadu_si256((const __m256i *)w->hmask);
    for (int j = 0; j < 2; j++) {
        const __m128i sc16 = j ? _mm256_extracti128_si256(all, 1) : _mm256_castsi256_si128(all);
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        __m256i s = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const int bit = 4 * j + k;
            const __m256i y = _mm256_loadu_si256((const __m256i *)(a->qs + 128 * j + 32 * k));
            const __m256i ql = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
            /* 4 where the high bit is clear: subtracted as its own maddubs (ggml's form) */
            const __m256i qh = _mm256_andnot_si256(_mm256_and_si256(_mm256_srli_epi16(hbits, bit), _mm256_set1_epi8(1)), _mm256_set1_epi8(1));
            const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(ql, y), _mm256_maddubs_epi16(_mm256_slli_epi16(qh, 2), y));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(q2_K_scale_pair(sc16, k), p));
        }
        sj[j] = s;
    }
}

AVX2_FN static float dot_q2_K_avx2(const void *vw, const void *va, int nb) {
    const blk_q2_K *w = vw;
    const blk_q8_K *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i sj[2], mn;
        q2_K_lanes(&w[b], &a[b], sj, &mn);
        const float d = a[b].d * _cvtsh_ss(w[b].d), dmin = -a[b].d * _cvtsh_ss(w[b].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mn), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sj[0], sj[1])), acc);
    }
    return hsum8(acc);
}

AVX2_FN static float dot_q3_K_avx2(const void *vw, const void *va, int nb) {
    const blk_q3_K *w = vw;
    const blk_q8_K *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i sj[2];
        q3_K_lanes(&w[b], &a[b], sj);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[b].d * _cvtsh_ss(w[b].d)), _mm256_cvtepi32_ps(_mm256_add_epi32(sj[0], sj[1])), acc);
    }
    return hsum8(acc);
}

AVX2_FN static inline void q2_K_isums_avx2(const void *vw, const blk_q8_K *a, int32_t *isum, int32_t *imin) {
    __m256i sj[2], mn;
    q2_K_lanes(vw, a, sj, &mn);
    isum[0] = kq_hsum_i32(sj[0]), isum[1] = kq_hsum_i32(sj[1]);
    int32_t m[8]; /* min lanes 0-3 cover sub-blocks 0-7 (the first half block), 4-7 the second */
    _mm256_storeu_si256((__m256i *)m, mn);
    imin[0] = m[0] + m[1] + m[2] + m[3], imin[1] = m[4] + m[5] + m[6] + m[7];
}

AVX2_FN static inline void q3_K_isums_avx2(const void *vw, const blk_q8_K *a, int32_t *isum, int32_t *imin) {
    __m256i sj[2];
    q3_K_lanes(vw, a, sj);
    isum[0] = kq_hsum_i32(sj[0]), isum[1] = kq_hsum_i32(sj[1]);
    imin[0] = imin[1] = 0;
}
#else
#define dot_q2_K_avx2 dot_q2_K
#define dot_q3_K_avx2 dot_q3_K
#endif

/* the SIMD width of the llama.cpp build being matched (ENGINE_GGML_LANES, else this CPU's): Q2_K is
 * repacked only by an AVX-512 build */
int cv_ggml_lanes(void);
static int kq_build_lanes(void) {
    const char *e = getenv("ENGINE_GGML_LANES");
    return e && *e ? atoi(e) : cv_ggml_lanes();
}

/* rows [0, n_rows) of Y for one weight type and instruction set: route 0 vec_dot, 1 repacked (gemm for
 * tokens below n_gemm, gemv after), 2 tiled; one function per type so the block code inlines */
#define KQ_ROWS(attr, name, BLK, dotf, isumsf, dminf, HAS_MIN)                                                                    \
    attr static void name(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy,       \
                          int route, int64_t n_gemm, int n_threads) {                                                       \
        const int64_t wrow = nb * (int64_t)sizeof(BLK), arow = (int64_t)nb * 292;                                         \
        _Pragma("omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)")                             \
        for (int64_t r = 0; r < n_rows; r++) {                                                                              \
            const BLK *w = (const BLK *)((const char *)W + r * wrow);                                                       \
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch((const char *)w + 4 * wrow + o);                      \
            for (int64_t t = 0; t < n_tok; t++) {                                                                           \
                const blk_q8_K *a = (const blk_q8_K *)((const char *)xq + t * arow);                                        \
                if (route == 0) {                                                                                           \
                    Y[t * ldy + r] = dotf(w, a, nb);                                                                        \
                    continue;                                                                                               \
                }                                                                                                           \
                float acc = 0.0f, accm = 0.0f;                                                                              \
                for (int b = 0; b < nb; b++) {                                                                              \
                    const float dw = h2f(w[b].d), dmw = dminf(&w[b]);                                                        \
                    int32_t is[2], im[2];                                                                                   \
                    isumsf(&w[b], &a[b], is, im);                                                                           \
                    if (route == 2) { /* tiled: d_w·Σ (fused with −dmin_w·Σmins), fused with d_a */                         \
                        const float s1 = (float)(is[0] + is[1]) * dw;                                                       \
                        acc = fmaf(HAS_MIN ? fmaf(-dmw, (float)(im[0] + im[1]), s1) : s1, a[b].d, acc);                     \
                    } else if (t < n_gemm) { /* repacked gemm: a chain step per half block */                               \
                        const float dd = dw * a[b].d, dm = dmw * a[b].d;                                                    \
                        acc = fmaf((float)is[0], dd, acc), accm = fmaf((float)im[0], dm, accm);                             \
                        acc = fmaf((float)is[1], dd, acc), accm = fmaf((float)im[1], dm, accm);                             \
                    } else { /* repacked gemv: one per block */                                                             \
                        acc = fmaf((float)(is[0] + is[1]), dw * a[b].d, acc);                                               \
                        accm = fmaf((float)(im[0] + im[1]), dmw * a[b].d, accm);                                            \
                    }                                                                                                       \
                }                                                                                                           \
                Y[t * ldy + r] = acc - accm;                                                                                \
            }                                                                                                               \
        }                                                                                                                   \
    }

KQ_ROWS(, kq_rows_q2_K, blk_q2_K, dot_q2_K, q2_K_isums_c, q2_K_dmin, 1)
KQ_ROWS(, kq_rows_q3_K, blk_q3_K, dot_q3_K, q3_K_isums_c, q3_K_dmin, 0)
#if defined(__x86_64__) && defined(__GNUC__)
/* Up to four activation rows per weight block (prefill): each block's values and scales are unpacked
 * once for all of them; per token the lanes are the one-row kernels' (sj[t][j]: half j, mn[t]: the
 * min lanes), so every output keeps its one-token float order. */
AVX2_FN static inline void q2_K_block4(const blk_q2_K *w, const blk_q8_K *const *a, int nt, __m256i sj[4][2], __m256i *mn) {
    const __m128i ms = _mm_loadu_si128((const __m128i *)w->scales), m4 = _mm_set1_epi8(0xf);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4));
    for (int t = 0; t < nt; t++) mn[t] = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)a[t]->bsums));
    const __m256i all = _mm256_cvtepu8_epi16(_mm_and_si128(ms, m4)), m3 = _mm256_set1_epi8(3);
    for (int j = 0; j < 2; j++) {
        const __m128i sc16 = j ? _mm256_extracti128_si256(all, 1) : _mm256_castsi256_si128(all);
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        for (int t = 0; t < nt; t++) sj[t][j] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3), sc = q2_K_scale_pair(sc16, k);
            for (int t = 0; t < nt; t++) {
                const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(a[t]->qs + 128 * j + 32 * k)));
                sj[t][j] = _mm256_add_epi32(sj[t][j], _mm256_madd_epi16(sc, p));
            }
        }
    }
}

AVX2_FN static inline void q3_K_block4(const blk_q3_K *w, const blk_q8_K *const *a, int nt, __m256i sj[4][2], __m256i *mn) {
    const __m256i all = _mm256_cvtepi8_epi16(q3_K_scales128(w->scales)), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hbits = _mm256_loadu_si256((const __m256i *)w->hmask);
    for (int t = 0; t < nt; t++) mn[t] = _mm256_setzero_si256();
    for (int j = 0; j < 2; j++) {
        const __m128i sc16 = j ? _mm256_extracti128_si256(all, 1) : _mm256_castsi256_si128(all);
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        for (int t = 0; t < nt; t++) sj[t][j] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256i ql = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3), sc = q2_K_scale_pair(sc16, k);
            const __m256i qh = _mm256_slli_epi16(_mm256_andnot_si256(_mm256_and_si256(_mm256_srli_epi16(hbits, 4 * j + k), one), one), 2);
            for (int t = 0; t < nt; t++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 128 * j + 32 * k));
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(ql, y), _mm256_maddubs_epi16(qh, y));
                sj[t][j] = _mm256_add_epi32(sj[t][j], _mm256_madd_epi16(sc, p));
            }
        }
    }
}

/* four 8-lane integer vectors → their four sums; and per 128-bit half (lo: out[0..3], hi: out[4..7]) */
AVX2_FN static inline void kq_reduce4(__m256i v0, __m256i v1, __m256i v2, __m256i v3, int32_t *out) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    _mm256_storeu_si256((__m256i *)out, h);
}

#define KQ_ROWS4(name, BLK, blockf, dminf, HAS_MIN)                                                                       \
    AVX2_FN static void name(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy,    \
                             int route, int64_t n_gemm, int n_threads) {                                                    \
        const int64_t wrow = nb * (int64_t)sizeof(BLK), arow = (int64_t)nb * 292;                                         \
        _Pragma("omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)")                             \
        for (int64_t r = 0; r < n_rows; r++) {                                                                              \
            const BLK *w = (const BLK *)((const char *)W + r * wrow);                                                       \
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch((const char *)w + 4 * wrow + o);                      \
            for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {                                                                     \
                const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;                                                      \
                __m256 vacc[4];                                                                                             \
                float acc[4] = {0, 0, 0, 0}, accm[4] = {0, 0, 0, 0};                                                        \
                for (int t = 0; t < 4; t++) vacc[t] = _mm256_setzero_ps();                                                  \
                for (int b = 0; b < nb; b++) {                                                                              \
                    const blk_q8_K *a[4];                                                                                   \
                    for (int t = 0; t < nt; t++) a[t] = (const blk_q8_K *)((const char *)xq + (t0 + t) * arow) + b;         \
                    __m256i sj[4][2], mn[4];                                                                                \
                    blockf(&w[b], a, nt, sj, mn);                                                                           \
                    for (int t = nt; t < 4; t++) sj[t][0] = sj[t][1] = mn[t] = _mm256_setzero_si256();                      \
                    const float dw = _cvtsh_ss(w[b].d), dmw = dminf(&w[b]);                                                 \
                    if (route == 0) { /* vec_dot: the lanes fused with d (Q2_K: the min lanes with dmin first) */           \
                        for (int t = 0; t < nt; t++) {                                                                      \
                            if (HAS_MIN) vacc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-a[t]->d * dmw), _mm256_cvtepi32_ps(mn[t]), vacc[t]); \
                            vacc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a[t]->d * dw), _mm256_cvtepi32_ps(_mm256_add_epi32(sj[t][0], sj[t][1])), vacc[t]); \
                        }                                                                                                   \
                        continue;                                                                                           \
                    }                                                                                                       \
                    int32_t h0[8], h1[8], hm[8]; /* per token: half 0, half 1, mins (lo: half 0, hi: half 1) */            \
                    kq_reduce4(sj[0][0], sj[1][0], sj[2][0], sj[3][0], h0);                                                 \
                    kq_reduce4(sj[0][1], sj[1][1], sj[2][1], sj[3][1], h1);                                                 \
                    kq_reduce4(mn[0], mn[1], mn[2], mn[3], hm);                                                             \
                    for (int t = 0; t < nt; t++) {                                                                          \
                        const int32_t is0 = h0[t] + h0[4 + t], is1 = h1[t] + h1[4 + t], im0 = hm[t], im1 = hm[4 + t];       \
                        const float da = a[t]->d;                                                                           \
                        if (route == 2) { /* tiled */                                                                       \
                            const float s1 = (float)(is0 + is1) * dw;                                                       \
                            acc[t] = fmaf(HAS_MIN ? fmaf(-dmw, (float)(im0 + im1), s1) : s1, da, acc[t]);                   \
                        } else if (t0 + t < n_gemm) { /* repacked gemm */                                                   \
                            const float dd = dw * da, dm = dmw * da;                                                        \
                            acc[t] = fmaf((float)is0, dd, acc[t]), accm[t] = fmaf((float)im0, dm, accm[t]);                 \
                            acc[t] = fmaf((float)is1, dd, acc[t]), accm[t] = fmaf((float)im1, dm, accm[t]);                 \
                        } else { /* repacked gemv */                                                                        \
                            acc[t] = fmaf((float)(is0 + is1), dw * da, acc[t]);                                             \
                            accm[t] = fmaf((float)(im0 + im1), dmw * da, accm[t]);                                          \
                        }                                                                                                   \
                    }                                                                                                       \
                }                                                                                                           \
                for (int t = 0; t < nt; t++) Y[(t0 + t) * ldy + r] = route == 0 ? hsum8(vacc[t]) : acc[t] - accm[t];        \
            }                                                                                                               \
        }                                                                                                                   \
    }

KQ_ROWS4(kq_rows_q2_K_avx2, blk_q2_K, q2_K_block4, q2_K_dmin, 1)
KQ_ROWS4(kq_rows_q3_K_avx2, blk_q3_K, q3_K_block4, q3_K_dmin, 0)
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* the repacked Q2_K gemv (route 1, one activation row): per row the integer sum and min sum of each
 * block (q2_K_lanes' lanes, totalled) into the two chains of KQ_ROWS4's gemv branch */
AVX2_FN static void gemv_q2_K_rep_avx2(const void *W, int64_t n_rows, int nb, const void *xq, float *Y, int n_threads) {
    const int64_t wrow = nb * (int64_t)sizeof(blk_q2_K);
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        const blk_q2_K *w = (const blk_q2_K *)((const char *)W + r * wrow);
        const blk_q8_K *a = xq;
        for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch((const char *)w + 4 * wrow + o);
        float acc = 0.0f, accm = 0.0f;
        for (int b = 0; b < nb; b++) {
            __m256i sj[2], mn;
            q2_K_lanes(&w[b], &a[b], sj, &mn);
            const float da = a[b].d;
            acc = fmaf((float)kq_hsum_i32(_mm256_add_epi32(sj[0], sj[1])), _cvtsh_ss(w[b].d) * da, acc);
            accm = fmaf((float)kq_hsum_i32(mn), _cvtsh_ss(w[b].dmin) * da, accm);
        }
        Y[r] = acc - accm;
    }
}
#endif

/* Y (n_tok × n_rows, stride ldy) for Q2_K / Q3_K weights, by llama.cpp's route (see the top) */
static int kq_matmul(int wtype, const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy,
                     int n_threads) {
    const int simd = have_avx2();
    const int route = !simd ? 0 : wtype == T_Q2_K && n_rows % 8 == 0 && kq_build_lanes() == 16 ? 1 : n_tok >= 8 ? 2 : 0;
    const int64_t n_gemm = route == 1 ? n_tok - n_tok % 4 : 0;
    if (n_threads < 1) n_threads = 1;
#if defined(__x86_64__) && defined(__GNUC__)
#if defined(__x86_64__) && defined(__GNUC__)
    if (simd && route == 1 && n_tok == 1) { /* decode's repacked Q2_K gemv: its two chains per row, one block's lanes at a time */
        gemv_q2_K_rep_avx2(W, n_rows, nb, xq, Y, n_threads);
        return 0;
    }
#endif
    if (simd && route == 0 && n_tok == 1) { /* decode's vec_dot: the one-row dot itself, row after row */
        float (*dot)(const void *, const void *, int) = wtype == T_Q2_K ? dot_q2_K_avx2 : dot_q3_K_avx2;
        const int64_t wrow = nb * (int64_t)(wtype == T_Q2_K ? sizeof(blk_q2_K) : sizeof(blk_q3_K));
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r++) {
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch((const char *)W + (r + 4) * wrow + o);
            Y[r] = dot((const char *)W + r * wrow, xq, nb);
        }
        return 0;
    }
    if (simd) {
        (wtype == T_Q2_K ? kq_rows_q2_K_avx2 : kq_rows_q3_K_avx2)(W, n_rows, nb, xq, n_tok, Y, ldy, route, n_gemm, n_threads);
        return 0;
    }
#endif
    (wtype == T_Q2_K ? kq_rows_q2_K : kq_rows_q3_K)(W, n_rows, nb, xq, n_tok, Y, ldy, route, n_gemm, n_threads);
    return 0;
}
