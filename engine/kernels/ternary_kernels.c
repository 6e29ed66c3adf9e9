/* TQ1_0 and TQ2_0 (ggml's ternary types, llama.cpp's quantizations of BitNet models) against Q8_K
 * activations, as ggml-cpu computes them on x86. Included by qkernels.c (layout() dispatch).
 *
 * llama.cpp takes neither type through tinyBLAS, repacking or the tiled matmul: every product is
 * ggml_vec_dot_tq{1,2}_0_q8_K (arch/x86/quants.c). Its AVX2 version forms, per 256-value block,
 * eight int32 lanes: lane m holds Σ code·q over the values e with (e mod 32) div 4 = m (code ∈ {0,1,2},
 * i.e. ternary + 1), minus the Q8_K block sums bsums[2m] and bsums[2m+1] (so Σ (code − 1)·q); every
 * partial sum is exact in its int16 lanes. Then per lane, over the blocks, sumf = sumf + lane · d
 * with d = d_a · fp16(d_w) (one float product), and hsum_float_8 at the end: halves, movehl,
 * movehdup. The multiply-add is compiled as one fused operation (GCC contracts the intrinsics'
 * vector multiply and add; tests/test_kernels.py checks against libggml-cpu's exported dots).
 *
 * Block layouts (ggml-common.h): TQ1_0 {qs[48], qh[4], fp16 d} = 54 bytes: value e < 160 is trit
 * e div 32 of qs[e mod 32]; 160 ≤ e < 240 is trit (e−160) div 16 of qs[32 + (e−160) mod 16]; e ≥ 240
 * is trit (e−240) div 4 of qh[(e−240) mod 4]; trit l of byte b: q = b·3^l mod 256, code = top bits of
 * 3q (the SIMD code: q' = q ∸ 1, then two rounding averages, then >> 6). TQ2_0 {qs[64], fp16 d} = 66
 * bytes: value e is bits 2·((e mod 128) div 32) of qs[32·(e div 128) + e mod 32]. Without AVX2,
 * ggml's generic code adds each block's total as sumf += total · d (scalar). */

typedef struct { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; } blk_tq1_0; /* 54 */
typedef struct { uint8_t qs[64]; uint16_t d; } blk_tq2_0;                /* 66 */
enum { T_TQ1_0 = 34, T_TQ2_0 = 35 };

/* hsum_float_8: the upper half added to the lower, then movehl, then movehdup */
static inline float tq_hsum8(const float *a) {
    const float x0 = a[4] + a[0], x1 = a[5] + a[1], x2 = a[6] + a[2], x3 = a[7] + a[3];
    return (x0 + x2) + (x1 + x3);
}

static inline int tq1_trit_simd(uint8_t b, int l) { /* the AVX2 decode of trit l of byte b */
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const unsigned q = (uint8_t)(b * pow3[l]);
    const unsigned t = q ? q - 1 : 0;
    const unsigned a1 = (t + 1) >> 1, a2 = (t + a1 + 1) >> 1;
    return (int)((a2 >> 6) & 3);
}

static inline int tq1_code(const blk_tq1_0 *w, int e) {
    if (e < 160) return tq1_trit_simd(w->qs[e % 32], e / 32);
    if (e < 240) return tq1_trit_simd(w->qs[32 + (e - 160) % 16], (e - 160) / 16);
    return tq1_trit_simd(w->qh[(e - 240) % 4], (e - 240) / 4);
}

static inline int tq2_code(const blk_tq2_0 *w, int e) { return (w->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3; }

/* the eight int32 lanes of one block */
static void tq_lanes(int wtype, const void *wb, const blk_q8_K *a, int32_t lane[8]) {
    for (int m = 0; m < 8; m++) lane[m] = -(int32_t)a->bsums[2 * m] - (int32_t)a->bsums[2 * m + 1];
    for (int e = 0; e < 256; e++) {
        const int c = wtype == T_TQ1_0 ? tq1_code((const blk_tq1_0 *)wb, e) : tq2_code((const blk_tq2_0 *)wb, e);
        lane[(e % 32) / 4] += c * a->qs[e];
    }
}

/* ggml's AVX2 dot, lane for lane, in portable C (the reference for the vector version below) */
static float tq_dot_lanes(int wtype, const void *w, const void *va, int nb) {
    const blk_q8_K *a = (const blk_q8_K *)va;
    const int bb = wtype == T_TQ1_0 ? 54 : 66;
    float sumf[8] = {0};
    for (int b = 0; b < nb; b++) {
        const char *wb = (const char *)w + (int64_t)b * bb;
        int32_t lane[8];
        tq_lanes(wtype, wb, a + b, lane);
        uint16_t dh;
        memcpy(&dh, wb + bb - 2, 2);
        const float d = a[b].d * h2f(dh);
        for (int m = 0; m < 8; m++) sumf[m] = fmaf((float)lane[m], d, sumf[m]);
    }
    return tq_hsum8(sumf);
}

/* ggml's generic dots (no AVX2): one integer total per block, trits decoded as ((q·3) >> 8) */
static float tq_dot_generic(int wtype, const void *w, const void *va, int nb) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const blk_q8_K *a = (const blk_q8_K *)va;
    const int bb = wtype == T_TQ1_0 ? 54 : 66;
    float sumf = 0.0f;
    for (int b = 0; b < nb; b++) {
        const char *wb = (const char *)w + (int64_t)b * bb;
        int32_t sumi = 0;
        for (int e = 0; e < 256; e++) {
            int c;
            if (wtype == T_TQ2_0) {
                c = tq2_code((const blk_tq2_0 *)wb, e);
            } else {
                const blk_tq1_0 *x = (const blk_tq1_0 *)wb;
                const uint8_t byte = e < 160 ? x->qs[e % 32] : e < 240 ? x->qs[32 + (e - 160) % 16] : x->qh[(e - 240) % 4];
                const int l = e < 160 ? e / 32 : e < 240 ? (e - 160) / 16 : (e - 240) / 4;
                c = (int)(((uint16_t)(uint8_t)(byte * pow3[l]) * 3) >> 8);
            }
            sumi += (c - 1) * a[b].qs[e];
        }
        uint16_t dh;
        memcpy(&dh, wb + bb - 2, 2);
        sumf += (float)sumi * (a[b].d * h2f(dh));
    }
    return sumf;
}

static float dot_tq1_0(const void *w, const void *a, int nb) { return tq_dot_generic(T_TQ1_0, w, a, nb); }
static float dot_tq2_0(const void *w, const void *a, int nb) { return tq_dot_generic(T_TQ2_0, w, a, nb); }

#if defined(__x86_64__) && defined(__GNUC__)
/* trit decode of 32 bytes already multiplied by 3^l (mod 256) */
AVX2_FN static inline __m256i tq1_codes(__m256i q) {
    q = _mm256_subs_epu8(q, _mm256_set1_epi8(1));
    q = _mm256_avg_epu8(q, _mm256_avg_epu8(q, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(q, 6), _mm256_set1_epi8(3));
}

/* b·3 and b·9 (mod 256) per byte */
AVX2_FN static inline __m256i mul3_u8(__m256i b) { return _mm256_add_epi8(b, _mm256_add_epi8(b, b)); }
AVX2_FN static inline __m256i mul9_u8(__m256i b) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(b, 3), _mm256_set1_epi8((char)0xF8)), b);
}

AVX2_FN static float dot_tq1_0_avx2(const void *vw, const void *va, int nb) {
    const blk_tq1_0 *w = (const blk_tq1_0 *)vw;
    const blk_q8_K *a = (const blk_q8_K *)va;
    __m256 sumf = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        /* the 256 codes as eight 32-byte vectors: vector v holds values 32v .. 32v+31 */
        __m256i c[8];
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        const __m256i q1 = mul3_u8(q0), q2 = mul9_u8(q0), q3 = mul9_u8(q1), q4 = mul9_u8(q2);
        c[0] = tq1_codes(q0), c[1] = tq1_codes(q1), c[2] = tq1_codes(q2), c[3] = tq1_codes(q3), c[4] = tq1_codes(q4);
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(w[b].qs + 32));
        const __m256i r = _mm256_broadcastsi128_si256(r0);
        const __m256i r1 = mul3_u8(r), r2 = mul9_u8(r), r3 = mul9_u8(r1), r4 = mul9_u8(r2);
        int32_t qh;
        memcpy(&qh, w[b].qh, 4);
        /* byte 4l + j = qh[j]·3^l (mod 256): 16-bit lanes, multiplied, masked, packed */
        const __m256i qh16 = _mm256_cvtepu8_epi16(_mm_set1_epi32(qh));
        const __m256i hm = _mm256_and_si256(_mm256_mullo_epi16(qh16, _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27)),
                                            _mm256_set1_epi16(0xFF));
        const __m128i hv = _mm_packus_epi16(_mm256_castsi256_si128(hm), _mm256_extracti128_si256(hm, 1));
        c[5] = tq1_codes(_mm256_permute2x128_si256(r, r1, 0x20)); /* [r·1 | r·3] */
        c[6] = tq1_codes(_mm256_permute2x128_si256(r2, r3, 0x20));
        c[7] = tq1_codes(_mm256_inserti128_si256(r4, hv, 1));
        __m256i s16 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)a[b].bsums));
        for (int v = 0; v < 8; v++)
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c[v], _mm256_loadu_si256((const __m256i *)(a[b].qs + 32 * v))));
        const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
        const __m256 d = _mm256_set1_ps(a[b].d * _cvtsh_ss(w[b].d));
        sumf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), d, sumf);
    }
    float s[8];
    _mm256_storeu_ps(s, sumf);
    return tq_hsum8(s);
}

AVX2_FN static float dot_tq2_0_avx2(const void *vw, const void *va, int nb) {
    const blk_tq2_0 *w = (const blk_tq2_0 *)vw;
    const blk_q8_K *a = (const blk_q8_K *)va;
    const __m256i three = _mm256_set1_epi8(3);
    __m256 sumf = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i s16 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)a[b].bsums));
        for (int j = 0; j < 2; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * j));
            for (int l = 0; l < 4; l++) {
                const __m256i c = _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), three);
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c, _mm256_loadu_si256((const __m256i *)(a[b].qs + 128 * j + 32 * l))));
            }
        }
        const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
        const __m256 d = _mm256_set1_ps(a[b].d * _cvtsh_ss(w[b].d));
        sumf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), d, sumf);
    }
    float s[8];
    _mm256_storeu_ps(s, sumf);
    return tq_hsum8(s);
}
#endif

/* ggml's lane order in portable C (tests: the AVX2 kernels above must equal it) */
float cv_tq_dot_lanes(int wtype, const void *w, const void *a, int nb) { return tq_dot_lanes(wtype, w, a, nb); }

/* layout() for the ternary types: 256-value blocks against Q8_K */
static int ternary_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (wt != T_TQ1_0 && wt != T_TQ2_0) return -1;
    *be = 256, *bb = wt == T_TQ1_0 ? 54 : 66, *atype = T_Q8_K, *ab = 292;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        *dot = wt == T_TQ1_0 ? dot_tq1_0_avx2 : dot_tq2_0_avx2;
        return 0;
    }
#endif
    *dot = wt == T_TQ1_0 ? dot_tq1_0 : dot_tq2_0;
    return 0;
}
