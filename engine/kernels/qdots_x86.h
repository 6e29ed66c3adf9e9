/* The integer-pair kernels of engine/kernels/qkernels.c, included once per x86 instruction set:
 * CV_SFX(name) names a copy, CV_FN is its target attribute and CV_PAIRS(u8, s8) the 8-lane int32
 * sums of adjacent u8·s8 products — maddubs + madd on AVX2, one dpbusd with VNNI (as ggml-cpu's
 * mul_sum_us8_pairs_float picks for the CPU it was built for). The integers are the same either way,
 * so every copy gives the same floats; VNNI only saves instructions. */

CV_FN static inline __m256 CV_SFX(sum_i8_pairs)(__m256i x_u8, __m256i y_s8) { return _mm256_cvtepi32_ps(CV_PAIRS(x_u8, y_s8)); }

/* signed × signed: |x| times y with x's sign moved onto y */
CV_FN static inline __m256 CV_SFX(dot_s8)(__m256i x, __m256i y) {
    return CV_SFX(sum_i8_pairs)(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

CV_FN static inline float CV_SFX(dot_q8_0)(const void *vw, const void *va, int nb) {
    const blk_q8_0 *w = vw, *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d) * _cvtsh_ss(a[b].d));
        const __m256i x = _mm256_loadu_si256((const __m256i *)w[b].qs), y = _mm256_loadu_si256((const __m256i *)a[b].qs);
        acc = _mm256_fmadd_ps(d, CV_SFX(dot_s8)(x, y), acc);
    }
    return hsum8(acc);
}

/* Q4_1 / Q5_1 (unsigned values x, scale dw, min mw) against one Q8_1 activation block, as ggml's
 * AVX2 dots step: m_w·s_a into a float sum, the pair sums fused with d_w·d_a into 8 lanes */
CV_FN static inline void CV_SFX(acc_u8_q8_1)(__m256i x, float dw, float mw, const blk_q8_1 *a, __m256 *acc, float *summs) {
    *summs += mw * _cvtsh_ss(a->s);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * _cvtsh_ss(a->d)), CV_SFX(sum_i8_pairs)(x, _mm256_loadu_si256((const __m256i *)a->qs)), *acc);
}

CV_FN static inline float CV_SFX(dot_q4_1)(const void *vw, const void *va, int nb) {
    const blk_q4_1 *w = vw;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int b = 0; b < nb; b++) CV_SFX(acc_u8_q8_1)(nibbles(w[b].qs), _cvtsh_ss(w[b].d), _cvtsh_ss(w[b].m), (const blk_q8_1 *)va + b, &acc, &summs);
    return hsum8(acc) + summs;
}

CV_FN static inline float CV_SFX(dot_q5_1)(const void *vw, const void *va, int nb) {
    const blk_q5_1 *w = vw;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int b = 0; b < nb; b++)
        CV_SFX(acc_u8_q8_1)(q5_values(w[b].qs, w[b].qh), _cvtsh_ss(w[b].d), _cvtsh_ss(w[b].m), (const blk_q8_1 *)va + b, &acc, &summs);
    return hsum8(acc) + summs;
}

CV_FN static inline float CV_SFX(dot_q5_0)(const void *vw, const void *va, int nb) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256i v = q5_0_values(&w[b]);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d) * _cvtsh_ss(a[b].d));
        acc = _mm256_fmadd_ps(d, CV_SFX(dot_s8)(v, _mm256_loadu_si256((const __m256i *)a[b].qs)), acc);
    }
    return hsum8(acc);
}

CV_FN static inline float CV_SFX(dot_q4_0)(const void *vw, const void *va, int nb) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d) * _cvtsh_ss(a[b].d));
        acc = _mm256_fmadd_ps(d, CV_SFX(dot_s8)(q4_0_values(&w[b]), _mm256_loadu_si256((const __m256i *)a[b].qs)), acc);
    }
    return hsum8(acc);
}

/* Q4_0 as llama.cpp's repacked q4_0_8x8 kernels sum it, for eight weight rows (wrow bytes apart)
 * and nt ≤ 4 activation rows: each block's integer sum, times d_w·d_a, added to one float chain per
 * output — lane i of a vector is row i's chain, as in repack.cpp. out[t·8 + i]: row i, token t. */
CV_FN static void CV_SFX(rep8_q4_0)(const char *W, int64_t wrow, const void *xq, int64_t arow, int nt, int nb, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        __m256i x[8], ax[8];
        float dw[8];
        for (int i = 0; i < 8; i++) {
            const blk_q4_0 *w = (const blk_q4_0 *)(W + i * wrow) + b;
            x[i] = q4_0_values(w), ax[i] = _mm256_sign_epi8(x[i], x[i]), dw[i] = _cvtsh_ss(w->d);
        }
        const __m256 vdw = _mm256_loadu_ps(dw);
        for (int t = 0; t < nt; t++) {
            const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;
            const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);
            __m256i p[8];
            for (int i = 0; i < 8; i++) p[i] = CV_PAIRS(ax[i], _mm256_sign_epi8(y, x[i]));
            /* eight 8-lane integer sums → one vector whose lane i is row i's block sum (any order: exact) */
            const __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            const __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
            const __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(vdw, _mm256_set1_ps(_cvtsh_ss(a->d))), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
}

/* one block of 32 signed weight values (scale dw) against block b of four Q8_0 activation rows */
CV_FN static inline void CV_SFX(acc4_s8_q8_0)(__m256i x, float dw, const void *va, int64_t arow, int b, __m256 *acc) {
    const __m256i ax = _mm256_sign_epi8(x, x);
    for (int t = 0; t < 4; t++) {
        const blk_q8_0 *a = (const blk_q8_0 *)((const char *)va + t * arow) + b;
        const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * _cvtsh_ss(a->d)), CV_SFX(sum_i8_pairs)(ax, _mm256_sign_epi8(y, x)), acc[t]);
    }
}

CV_FN static void CV_SFX(dot4_q8_0)(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q8_0 *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) CV_SFX(acc4_s8_q8_0)(_mm256_loadu_si256((const __m256i *)w[b].qs), _cvtsh_ss(w[b].d), va, arow, b, acc);
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

CV_FN static void CV_SFX(dot4_q4_1)(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q4_1 *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int b = 0; b < nb; b++) {
        const __m256i x = nibbles(w[b].qs);
        for (int t = 0; t < 4; t++)
            CV_SFX(acc_u8_q8_1)(x, _cvtsh_ss(w[b].d), _cvtsh_ss(w[b].m), (const blk_q8_1 *)((const char *)va + t * arow) + b, &acc[t], &summs[t]);
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + summs[t];
}

CV_FN static void CV_SFX(dot4_q4_0)(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q4_0 *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) CV_SFX(acc4_s8_q8_0)(q4_0_values(&w[b]), _cvtsh_ss(w[b].d), va, arow, b, acc);
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

CV_FN static void CV_SFX(dot4_q5_1)(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q5_1 *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int b = 0; b < nb; b++) {
        const __m256i x = q5_values(w[b].qs, w[b].qh);
        for (int t = 0; t < 4; t++)
            CV_SFX(acc_u8_q8_1)(x, _cvtsh_ss(w[b].d), _cvtsh_ss(w[b].m), (const blk_q8_1 *)((const char *)va + t * arow) + b, &acc[t], &summs[t]);
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + summs[t];
}

CV_FN static void CV_SFX(dot4_q5_0)(const void *vw, const void *va, int64_t arow, int nb, float *out) {
    const blk_q5_0 *w = vw;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) CV_SFX(acc4_s8_q8_0)(q5_0_values(&w[b]), _cvtsh_ss(w[b].d), va, arow, b, acc);
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

/* two weight rows × four activation rows: each activation block is loaded and its scale converted
 * once for both rows; each (row, token) keeps its own accumulator, in the one-row order */
CV_FN static inline void CV_SFX(acc8_s8_q8_0)(__m256i x0, __m256i x1, float dw0, float dw1, const void *va, int64_t arow, int b,
                                               __m256 *acc) {
    const __m256i ax0 = _mm256_sign_epi8(x0, x0), ax1 = _mm256_sign_epi8(x1, x1);
    for (int t = 0; t < 4; t++) {
        const blk_q8_0 *a = (const blk_q8_0 *)((const char *)va + t * arow) + b;
        const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);
        const float da = _cvtsh_ss(a->d);
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * da), CV_SFX(sum_i8_pairs)(ax0, _mm256_sign_epi8(y, x0)), acc[t]);
        acc[4 + t] = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * da), CV_SFX(sum_i8_pairs)(ax1, _mm256_sign_epi8(y, x1)), acc[4 + t]);
    }
}

CV_FN static void CV_SFX(dot8_q8_0)(const void *vw, int64_t wrow, const void *va, int64_t arow, int nb, float *out) {
    const blk_q8_0 *w0 = vw, *w1 = (const blk_q8_0 *)((const char *)vw + wrow);
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
        CV_SFX(acc8_s8_q8_0)(_mm256_loadu_si256((const __m256i *)w0[b].qs), _mm256_loadu_si256((const __m256i *)w1[b].qs),
                             _cvtsh_ss(w0[b].d), _cvtsh_ss(w1[b].d), va, arow, b, acc);
    for (int k = 0; k < 8; k++) out[k] = hsum8(acc[k]);
}

CV_FN static void CV_SFX(dot8_q4_0)(const void *vw, int64_t wrow, const void *va, int64_t arow, int nb, float *out) {
    const blk_q4_0 *w0 = vw, *w1 = (const blk_q4_0 *)((const char *)vw + wrow);
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
        CV_SFX(acc8_s8_q8_0)(q4_0_values(&w0[b]), q4_0_values(&w1[b]), _cvtsh_ss(w0[b].d), _cvtsh_ss(w1[b].d), va, arow, b, acc);
    for (int k = 0; k < 8; k++) out[k] = hsum8(acc[k]);
}

CV_FN static void CV_SFX(dot8_q5_0)(const void *vw, int64_t wrow, const void *va, int64_t arow, int nb, float *out) {
    const blk_q5_0 *w0 = vw, *w1 = (const blk_q5_0 *)((const char *)vw + wrow);
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
        CV_SFX(acc8_s8_q8_0)(q5_0_values(&w0[b]), q5_0_values(&w1[b]), _cvtsh_ss(w0[b].d), _cvtsh_ss(w1[b].d), va, arow, b, acc);
    for (int k = 0; k < 8; k++) out[k] = hsum8(acc[k]);
}


/* ---- decode, four weight rows per pass ---------------------------------------------------------
 * One activation row against rows [r0, r1): four rows at a time, each keeping its own 8-lane FMA chain
 * in its vec_dot's order (the floats of dot_* above, bit for bit), so the four chains' latencies
 * overlap and each activation block (its values, scale and offset term) is read once for the four.
 * The integer lanes come from the weights' unsigned values: lane l = Σ u·y − off·Σy over its four
 * bytes = Σ (u − off)·y, exactly ggml's lane (CV_PAIRS_ACC starts from −off·Σy). */

/* 32 unsigned nibbles of 16 bytes: low nibbles (values 0..15), then high (16..31) */
CV_FN static inline __m256i CV_SFX(nib32)(const uint8_t *q) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0f));
}

/* the 5-bit types' 32 unsigned values: nibbles, bit e of qh as bit 4 of value e */
CV_FN static inline __m256i CV_SFX(q5u)(const uint8_t *qs, const uint8_t *qhp) {
#ifdef CV_MASK_BYTES
    uint32_t qh;
    memcpy(&qh, qhp, 4);
    const __m256i n = CV_SFX(nib32)(qs);
    return _mm256_mask_add_epi8(n, (__mmask32)qh, n, _mm256_set1_epi8(0x10));
#else
    return q5_values(qs, qhp);
#endif
}

/* −off·Σy per 4-byte lane of an activation block (off ≤ 128: no int16 saturation without VNNI) */
CV_FN static inline __m256i CV_SFX(neg_off)(__m256i y, int off) {
    return off ? _mm256_sub_epi32(_mm256_setzero_si256(), CV_PAIRS(_mm256_set1_epi8((char)off), y)) : _mm256_setzero_si256();
}

/* one activation block (values y, scale da) against four rows' unsigned values u[i] and fp16 scales h[i]:
 * the four d_w·d_a products in one multiply, each row's broadcast from its lane */
CV_FN static inline void CV_SFX(acc4_u8h)(const __m256i *u, const uint16_t *h, __m256i y, __m256i base, float da, __m256 *acc) {
    uint64_t hh;
    memcpy(&hh, h, 8);
    const __m256 d = _mm256_castps128_ps256(_mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)hh)), _mm_set1_ps(da)));
    for (int i = 0; i < 4; i++)
        acc[i] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(d, _mm256_set1_epi32(i)), _mm256_cvtepi32_ps(CV_PAIRS_ACC(base, u[i], y)), acc[i]);
}

#define CV_GEMV4_PREFETCH(W, wrow, r, r1)                                                                              \
    for (int64_t o = 0; (r) + 12 <= (r1) && o < 4 * (wrow); o += 64) __builtin_prefetch((W) + ((r) + 8) * (wrow) + o)

/* Q4_0 / Q5_0 (signed: u − off) and Q8_0 against Q8_0 activations; the rows left over go one at a time */
#define CV_GEMV4_Q8_0ACT(NAME, BT, UNPACK, OFF, DOT1)                                                                   \
    CV_FN static void CV_SFX(NAME)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) { \
        const blk_q8_0 *a = xq;                                                                                         \
        int64_t r = r0;                                                                                                 \
        for (; r + 4 <= r1; r += 4) {                                                                                   \
            CV_GEMV4_PREFETCH(W, wrow, r, r1);                                                                          \
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};     \
            for (int b = 0; b < nb; b++) {                                                                              \
                __m256i u[4];                                                                                           \
                uint16_t h[4];                                                                                          \
                for (int i = 0; i < 4; i++) {                                                                           \
                    const BT *w = (const BT *)(W + (r + i) * wrow) + b;                                                \
                    u[i] = UNPACK, h[i] = w->d;                                                                         \
                }                                                                                                       \
                const __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);                                         \
                CV_SFX(acc4_u8h)(u, h, y, CV_SFX(neg_off)(y, OFF), _cvtsh_ss(a[b].d), acc);                            \
            }                                                                                                           \
            for (int i = 0; i < 4; i++) Y[r + i] = hsum8(acc[i]);                                                       \
        }                                                                                                               \
        for (; r < r1; r++) Y[r] = DOT1(W + r * wrow, xq, nb);                                                          \
    }

CV_GEMV4_Q8_0ACT(gemv4_q4_0, blk_q4_0, CV_SFX(nib32)(w->qs), 8, CV_SFX(dot_q4_0))
CV_GEMV4_Q8_0ACT(gemv4_q5_0, blk_q5_0, CV_SFX(q5u)(w->qs, w->qh), 16, CV_SFX(dot_q5_0))

/* Q8_0: with VNNI the values moved to unsigned (x + 128, offset 128); maddubs would saturate there,
 * so without VNNI the sign trick of dot_s8 */
CV_FN static void CV_SFX(gemv4_q8_0)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {
    const blk_q8_0 *a = xq;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        CV_GEMV4_PREFETCH(W, wrow, r, r1);
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int b = 0; b < nb; b++) {
            const __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);
            const float da = _cvtsh_ss(a[b].d);
#ifdef CV_VNNI
            const __m256i base = CV_SFX(neg_off)(y, 128);
#endif
            uint16_t h[4];
            __m256i l[4];
            for (int i = 0; i < 4; i++) {
                const blk_q8_0 *w = (const blk_q8_0 *)(W + (r + i) * wrow) + b;
                const __m256i x = _mm256_loadu_si256((const __m256i *)w->qs);
                h[i] = w->d;
#ifdef CV_VNNI
                l[i] = CV_PAIRS_ACC(base, _mm256_xor_si256(x, _mm256_set1_epi8((char)0x80)), y);
#else
                l[i] = CV_PAIRS(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
#endif
            }
            uint64_t hh;
            memcpy(&hh, h, 8);
            const __m256 d = _mm256_castps128_ps256(_mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)hh)), _mm_set1_ps(da)));
            for (int i = 0; i < 4; i++)
                acc[i] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(d, _mm256_set1_epi32(i)), _mm256_cvtepi32_ps(l[i]), acc[i]);
        }
        for (int i = 0; i < 4; i++) Y[r + i] = hsum8(acc[i]);
    }
    for (; r < r1; r++) Y[r] = CV_SFX(dot_q8_0)(W + r * wrow, xq, nb);
}

/* Q4_1 / Q5_1 against Q8_1: the lanes fused with d_w·d_a, m_w·s_a added to each row's float sum */
#define CV_GEMV4_Q8_1ACT(NAME, BT, UNPACK, DOT1)                                                                        \
    CV_FN static void CV_SFX(NAME)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) { \
        const blk_q8_1 *a = xq;                                                                                         \
        int64_t r = r0;                                                                                                 \
        for (; r + 4 <= r1; r += 4) {                                                                                   \
            CV_GEMV4_PREFETCH(W, wrow, r, r1);                                                                          \
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};     \
            __m256 summs = _mm256_setzero_ps(); /* lane 2i+1: row i's Σ m_w·s_a */                                     \
            for (int b = 0; b < nb; b++) {                                                                              \
                __m256i u[4];                                                                                           \
                uint32_t dm[4]; /* each row's fp16 d and m */                                                          \
                for (int i = 0; i < 4; i++) {                                                                           \
                    const BT *w = (const BT *)(W + (r + i) * wrow) + b;                                                \
                    u[i] = UNPACK;                                                                                      \
                    memcpy(&dm[i], w, 4);                                                                               \
                }                                                                                                       \
                const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dm)); /* d0 m0 d1 m1 … */            \
                const __m256 d = _mm256_mul_ps(f, _mm256_set1_ps(_cvtsh_ss(a[b].d)));                                   \
                summs = _mm256_add_ps(summs, _mm256_mul_ps(f, _mm256_set1_ps(_cvtsh_ss(a[b].s))));                       \
                const __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);                                         \
                for (int i = 0; i < 4; i++)                                                                             \
                    acc[i] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(d, _mm256_set1_epi32(2 * i)),                     \
                                             _mm256_cvtepi32_ps(CV_PAIRS(u[i], y)), acc[i]);                            \
            }                                                                                                           \
            float sm[8];                                                                                                \
            _mm256_storeu_ps(sm, summs);                                                                                \
            for (int i = 0; i < 4; i++) Y[r + i] = hsum8(acc[i]) + sm[2 * i + 1];                                       \
        }                                                                                                               \
        for (; r < r1; r++) Y[r] = DOT1(W + r * wrow, xq, nb);                                                          \
    }

CV_GEMV4_Q8_1ACT(gemv4_q4_1, blk_q4_1, CV_SFX(nib32)(w->qs), CV_SFX(dot_q4_1))
CV_GEMV4_Q8_1ACT(gemv4_q5_1, blk_q5_1, CV_SFX(q5u)(w->qs, w->qh), CV_SFX(dot_q5_1))

#ifdef CV_MASK_BYTES
/* AVX-512: the four rows in two zmm, rows 2p and 2p+1 in the low and high eight lanes (each its own chain,
 * as above); gemvz_* replace gemv4_* on such CPUs */
CV_FN static inline __m512i CV_SFX(nib64)(const uint8_t *q0, const uint8_t *q1) {
    const __m512i b = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q0))),
                                         _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q1)), 1);
    return _mm512_and_si512(_mm512_srlv_epi64(b, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0x0f));
}
CV_FN static inline __m512i CV_SFX(q5u64)(const uint8_t *qs0, const uint8_t *qh0, const uint8_t *qs1, const uint8_t *qh1) {
    uint32_t h0, h1;
    memcpy(&h0, qh0, 4), memcpy(&h1, qh1, 4);
    const __m512i n = CV_SFX(nib64)(qs0, qs1);
    return _mm512_mask_add_epi8(n, (__mmask64)((uint64_t)h1 << 32 | h0), n, _mm512_set1_epi8(0x10));
}
#define CV_GEMVZ(NAME, BT, UNPACK2, OFF, MINS, DOT1)                                                                   \
    CV_FN static void CV_SFX(NAME)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) { \
        const int ab = MINS ? 36 : 34, yoff = MINS ? 4 : 2;                                                             \
        const __m512i pick[2] = {_mm512_set_epi32(MINS ? 2 : 1, MINS ? 2 : 1, MINS ? 2 : 1, MINS ? 2 : 1, MINS ? 2 : 1, MINS ? 2 : 1, \
                                                  MINS ? 2 : 1, MINS ? 2 : 1, 0, 0, 0, 0, 0, 0, 0, 0),                    \
                                 _mm512_set_epi32(MINS ? 6 : 3, MINS ? 6 : 3, MINS ? 6 : 3, MINS ? 6 : 3, MINS ? 6 : 3, MINS ? 6 : 3, \
                                                  MINS ? 6 : 3, MINS ? 6 : 3, MINS ? 4 : 2, MINS ? 4 : 2, MINS ? 4 : 2, MINS ? 4 : 2, \
                                                  MINS ? 4 : 2, MINS ? 4 : 2, MINS ? 4 : 2, MINS ? 4 : 2)};             \
        int64_t r = r0;                                                                                                 \
        for (; r + 8 <= r1; r += 8) { /* eight rows: the activation block's lanes and d_a once for four pairs */      \
            for (int64_t o = 0; r + 16 <= r1 && o < 8 * wrow; o += 64) __builtin_prefetch(W + (r + 8) * wrow + o);     \
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};     \
            __m512 summs = _mm512_setzero_ps(); /* MINS: lane 2i+1 is row i's Σ m_w·s_a */                             \
            for (int b = 0; b < nb; b++) {                                                                              \
                const char *a = (const char *)xq + (int64_t)b * ab;                                                     \
                const __m256i y = _mm256_loadu_si256((const __m256i *)(a + yoff));                                      \
                const __m512i y2 = _mm512_broadcast_i64x4(y), no = _mm512_broadcast_i64x4(CV_SFX(neg_off)(y, OFF));     \
                const BT *w[8];                                                                                         \
                uint32_t sc[8];                                                                                         \
                for (int i = 0; i < 8; i++) w[i] = (const BT *)(W + (r + i) * wrow) + b, memcpy(&sc[i], w[i], 4);     \
                const uint16_t *ah = (const uint16_t *)a;                                                               \
                __m512 d; /* MINS: d0·d_a m0·d_a d1·d_a … ; else d0·d_a … d7·d_a */                                    \
                if (MINS) {                                                                                             \
                    const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));                         \
                    d = _mm512_mul_ps(f, _mm512_set1_ps(_cvtsh_ss(ah[0])));                                             \
                    summs = _mm512_add_ps(summs, _mm512_mul_ps(f, _mm512_set1_ps(_cvtsh_ss(ah[1]))));                   \
                } else {                                                                                                \
                    uint64_t hl = 0, hh = 0;                                                                            \
                    for (int i = 0; i < 4; i++) hl |= (uint64_t)(sc[i] & 0xffffu) << (16 * i), hh |= (uint64_t)(sc[4 + i] & 0xffffu) << (16 * i); \
                    d = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi64x((long long)hh, (long long)hl)), \
                                                             _mm256_set1_ps(_cvtsh_ss(ah[0]))));                        \
                }                                                                                                       \
                for (int q = 0; q < 4; q++) {                                                                           \
                    const int k0 = MINS ? 4 * q : 2 * q, k1 = MINS ? 4 * q + 2 : 2 * q + 1;                            \
                    const __m512i pk = _mm512_inserti64x4(_mm512_set1_epi32(k0), _mm256_set1_epi32(k1), 1);             \
                    const BT *w0 = w[2 * q], *w1 = w[2 * q + 1];                                                        \
                    const __m512i u = UNPACK2;                                                                          \
                    acc[q] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pk, d), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(no, u, y2)), acc[q]); \
                }                                                                                                       \
            }                                                                                                           \
            float sm[16];                                                                                               \
            _mm512_storeu_ps(sm, summs);                                                                                \
            for (int q = 0; q < 4; q++) {                                                                               \
                const float h0 = hsum8(_mm512_castps512_ps256(acc[q])), h1 = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[q]), 1))); \
                Y[r + 2 * q] = MINS ? h0 + sm[4 * q + 1] : h0, Y[r + 2 * q + 1] = MINS ? h1 + sm[4 * q + 3] : h1;        \
            }                                                                                                           \
        }                                                                                                               \
        for (; r + 4 <= r1; r += 4) {                                                                                   \
            CV_GEMV4_PREFETCH(W, wrow, r, r1);                                                                          \
            __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};                                                 \
            __m256 summs = _mm256_setzero_ps();                                                                         \
            for (int b = 0; b < nb; b++) {                                                                              \
                const char *a = (const char *)xq + (int64_t)b * ab;                                                     \
                const __m256i y = _mm256_loadu_si256((const __m256i *)(a + yoff));                                      \
                const __m512i y2 = _mm512_broadcast_i64x4(y), no = _mm512_broadcast_i64x4(CV_SFX(neg_off)(y, OFF));     \
                const BT *w[4];                                                                                         \
                uint32_t sc[4];                                                                                         \
                for (int i = 0; i < 4; i++) w[i] = (const BT *)(W + (r + i) * wrow) + b, memcpy(&sc[i], w[i], 4);     \
                const uint16_t *ah = (const uint16_t *)a;                                                               \
                __m512 d;                                                                                               \
                if (MINS) { /* d0 m0 d1 m1 … */                                                                         \
                    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sc));                            \
                    d = _mm512_castps256_ps512(_mm256_mul_ps(f, _mm256_set1_ps(_cvtsh_ss(ah[0]))));                     \
                    summs = _mm256_add_ps(summs, _mm256_mul_ps(f, _mm256_set1_ps(_cvtsh_ss(ah[1]))));                   \
                } else {                                                                                                \
                    const __m128i h = _mm_set_epi16(0, 0, 0, 0, (short)sc[3], (short)sc[2], (short)sc[1], (short)sc[0]); \
                    d = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(h), _mm_set1_ps(_cvtsh_ss(ah[0]))));             \
                }                                                                                                       \
                for (int q = 0; q < 2; q++) {                                                                           \
                    const BT *w0 = w[2 * q], *w1 = w[2 * q + 1];                                                        \
                    const __m512i u = UNPACK2;                                                                          \
                    acc[q] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick[q], d), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(no, u, y2)), acc[q]); \
                }                                                                                                       \
            }                                                                                                           \
            float sm[8];                                                                                                \
            _mm256_storeu_ps(sm, summs);                                                                                \
            for (int q = 0; q < 2; q++) {                                                                               \
                const float h0 = hsum8(_mm512_castps512_ps256(acc[q])), h1 = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[q]), 1))); \
                Y[r + 2 * q] = MINS ? h0 + sm[4 * q + 1] : h0, Y[r + 2 * q + 1] = MINS ? h1 + sm[4 * q + 3] : h1;        \
            }                                                                                                           \
        }                                                                                                               \
        for (; r < r1; r++) Y[r] = DOT1(W + r * wrow, xq, nb);                                                          \
    }
CV_GEMVZ(gemvz_q4_0, blk_q4_0, CV_SFX(nib64)(w0->qs, w1->qs), 8, 0, CV_SFX(dot_q4_0))
CV_GEMVZ(gemvz_q5_0, blk_q5_0, CV_SFX(q5u64)(w0->qs, w0->qh, w1->qs, w1->qh), 16, 0, CV_SFX(dot_q5_0))
CV_GEMVZ(gemvz_q4_1, blk_q4_1, CV_SFX(nib64)(w0->qs, w1->qs), 0, 1, CV_SFX(dot_q4_1))
CV_GEMVZ(gemvz_q5_1, blk_q5_1, CV_SFX(q5u64)(w0->qs, w0->qh, w1->qs, w1->qh), 0, 1, CV_SFX(dot_q5_1))
#endif

/* eight int32 vectors → one whose lane i is the sum of v[i]'s lanes (integers: any order is exact) */
CV_FN static inline __m256i CV_SFX(hsum8x8_i32)(const __m256i *v) {
    const __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31));
}

/* One Q4_K block of a row against one Q8_K activation block: the block's whole scaled integer Σ sc·q·y
 * in 8 int32 lanes (*sum) and its min term Σ mn·bsums in 4 (*min); bsp: the activation's 8 sums of
 * 32 values as int16, in both halves */
CV_FN static inline void CV_SFX(q4_K_block_ints)(const blk_q4_K *w, const blk_q8_K *a, __m128i bsp, __m256i *sum, __m128i *min) {
    uint32_t u[3];
    memcpy(u, w->scales, 12);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    const uint32_t mn_lo = u[1] & 0x3f3f3f3fu, mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const __m128i scm = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)); /* 8 scales as int16 */
    *min = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo)), bsp);
    const __m256i sc = _mm256_broadcastsi128_si256(scm), m4 = _mm256_set1_epi8(0x0f);
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * j));
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), _mm256_loadu_si256((const __m256i *)(a->qs + 64 * j)));
        const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_loadu_si256((const __m256i *)(a->qs + 64 * j + 32)));
        /* every int16 lane = scale 2j, resp. 2j+1 (bytes 4j, 4j+1 resp. 4j+2, 4j+3 of sc) */
        const __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 1) << 8 | (4 * j))));
        const __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 3) << 8 | (4 * j + 2))));
        acc = CV_MADD_ACC(CV_MADD_ACC(acc, p0, s0), p1, s1);
    }
    *sum = acc;
}

/* Q4_K's repacked gemv (repack.cpp ggml_gemv_q4_K_8x8_q8_K) on eight plain rows at a time (rows % 8 == 0):
 * lane i of two float chains is row i — acc += float(block integer) · (d_w·d_a), accm += float(min
 * integer) · (dmin_w·d_a), both fused — and the row's output is acc − accm */
CV_FN static void CV_SFX(gemv8_q4_K)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {
    const blk_q8_K *a = xq;
    for (int64_t r = r0; r + 8 <= r1; r += 8) {
        for (int64_t o = 0; r + 16 <= r1 && o < 8 * wrow; o += 64) __builtin_prefetch(W + (r + 8) * wrow + o);
        __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[b].bsums);
            const __m128i bsp = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            __m256i s[8];
            __m128i m[8];
            uint16_t d[8], dm[8];
            for (int i = 0; i < 8; i++) {
                const blk_q4_K *w = (const blk_q4_K *)(W + (r + i) * wrow) + b;
                CV_SFX(q4_K_block_ints)(w, &a[b], bsp, &s[i], &m[i]);
                d[i] = w->d, dm[i] = w->dmin;
            }
            const __m128i m03 = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
            const __m128i m47 = _mm_hadd_epi32(_mm_hadd_epi32(m[4], m[5]), _mm_hadd_epi32(m[6], m[7]));
            const __m256 da = _mm256_set1_ps(a[b].d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(CV_SFX(hsum8x8_i32)(s)), _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d)), da), acc);
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_set_m128i(m47, m03)), _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dm)), da), accm);
        }
        _mm256_storeu_ps(Y + r, _mm256_sub_ps(acc, accm));
    }
}

#ifdef CV_MASK_BYTES
/* gemv8_q4_K with each row's block in zmm: its 128 bytes as two 64-byte halves, whose low and high nibbles
 * meet the activation's values rearranged once per block for all eight rows (half h, nibbles n: values
 * 128h + 32n .. +31 and 128h + 64 + 32n .. +31, sub-blocks 4h + n and 4h + n + 2); the sub-block scales
 * per 256-bit half by byte shuffle. Each row's block integer is exact, so it is gemv8_q4_K's, and the
 * float chains around it are gemv8_q4_K's own */
CV_FN static void CV_SFX(gemvz_q4_K)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {
    const blk_q8_K *a = xq;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i pick[4]; /* sub-block scale k sits in bytes 2k, 2k+1 of every 128-bit lane */
    for (int n = 0; n < 4; n++) {
        const int k0 = (n & 1) + 4 * (n >> 1), k1 = k0 + 2; /* n: lo0, hi0, lo1, hi1 → sub-blocks (0,2) (1,3) (4,6) (5,7) */
        pick[n] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)((2 * k0 + 1) << 8 | 2 * k0))),
                                     _mm256_set1_epi16((short)((2 * k1 + 1) << 8 | 2 * k1)), 1);
    }
    for (int64_t r = r0; r + 8 <= r1; r += 8) {
        for (int64_t o = 0; r + 16 <= r1 && o < 8 * wrow; o += 64) __builtin_prefetch(W + (r + 8) * wrow + o);
        __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[b].bsums);
            const __m128i bsp = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const int8_t *y = a[b].qs;
            __m512i ya[4];
            for (int n = 0; n < 4; n++) {
                const int8_t *yn = y + 128 * (n >> 1) + 32 * (n & 1);
                ya[n] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)yn)), _mm256_loadu_si256((const __m256i *)(yn + 64)), 1);
            }
            __m256i s[8];
            __m128i m[8];
            uint16_t d[8], dm[8];
            for (int i = 0; i < 8; i++) {
                const blk_q4_K *w = (const blk_q4_K *)(W + (r + i) * wrow) + b;
                uint32_t u[3];
                memcpy(u, w->scales, 12);
                const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
                const uint32_t mn_lo = u[1] & 0x3f3f3f3fu, mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
                m[i] = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo)), bsp);
                const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
                const __m512i q0 = _mm512_loadu_si512((const void *)w->qs), q1 = _mm512_loadu_si512((const void *)(w->qs + 64));
                const __m512i v[4] = {_mm512_and_si512(q0, m4), _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4), _mm512_and_si512(q1, m4),
                                      _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4)};
                __m512i t = _mm512_setzero_si512();
                for (int n = 0; n < 4; n++) t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(v[n], ya[n]), _mm512_shuffle_epi8(sc, pick[n]));
                s[i] = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
                d[i] = w->d, dm[i] = w->dmin;
            }
            const __m128i m03 = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
            const __m128i m47 = _mm_hadd_epi32(_mm_hadd_epi32(m[4], m[5]), _mm_hadd_epi32(m[6], m[7]));
            const __m256 da = _mm256_set1_ps(a[b].d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(CV_SFX(hsum8x8_i32)(s)), _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d)), da), acc);
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_set_m128i(m47, m03)), _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dm)), da), accm);
        }
        _mm256_storeu_ps(Y + r, _mm256_sub_ps(acc, accm));
    }
}
#endif

#ifdef CV_VNNI
/* ---- prefill, 32-value block types (tinyBLAS_Q0_AVX / vec_dot order: one 8-lane FMA chain per output)
 * A thread takes four weight rows at a time, turns their blocks once into unsigned values u (32 bytes),
 * d_w (and Q4_1/Q5_1's m_w) as floats, then runs every token past them four at a time: 16 outputs in
 * registers, each its own chain acc = fma(d_w·d_a, float(lane), acc) block after block, lane =
 * Σ u·y − off·Σy (dpbusd from −off·Σy: ggml's lane exactly). Unsigned Q8_0 (x + 128) needs dpbusd:
 * maddubs would saturate, so this path is VNNI only. */
#ifndef CV_U8MM_TYPE
#define CV_U8MM_TYPE
typedef struct {
    int wtype, off, mins;          /* offset subtracted from u; mins: + m_w·s_a per block (Q8_1 activations) */
    int64_t wrow, arow, ab;        /* bytes per weight row, activation row, activation block */
    int nb;
} cv_u8mm;
#endif

/* row blocks → u (nb × 32 bytes), dw (nb), mw (nb) */
CV_FN static void CV_SFX(u8mm_unpack)(const cv_u8mm *p, const char *wr, uint8_t *u, float *dw, float *mw) {
    for (int b = 0; b < p->nb; b++) {
        __m256i v;
        if (p->wtype == T_Q8_0) {
            const blk_q8_0 *w = (const blk_q8_0 *)wr + b;
            v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)w->qs), _mm256_set1_epi8((char)0x80)), dw[b] = _cvtsh_ss(w->d);
        } else if (p->wtype == T_Q4_0) {
            const blk_q4_0 *w = (const blk_q4_0 *)wr + b;
            v = CV_SFX(nib32)(w->qs), dw[b] = _cvtsh_ss(w->d);
        } else if (p->wtype == T_Q5_0) {
            const blk_q5_0 *w = (const blk_q5_0 *)wr + b;
            v = CV_SFX(q5u)(w->qs, w->qh), dw[b] = _cvtsh_ss(w->d);
        } else if (p->wtype == T_Q4_1) {
            const blk_q4_1 *w = (const blk_q4_1 *)wr + b;
            v = CV_SFX(nib32)(w->qs), dw[b] = _cvtsh_ss(w->d), mw[b] = _cvtsh_ss(w->m);
        } else {
            const blk_q5_1 *w = (const blk_q5_1 *)wr + b;
            v = CV_SFX(q5u)(w->qs, w->qh), dw[b] = _cvtsh_ss(w->d), mw[b] = _cvtsh_ss(w->m);
        }
        _mm256_storeu_si256((__m256i *)(u + 32 * b), v);
    }
}

/* NR (≤ 4) unpacked rows × NT (1 or 4) tokens: y0 points at the first token's first block values (rows
 * arow bytes apart, blocks ab); da / sa: d_a / s_a of block b, token t at [b·n_tok + t] (from the tile's
 * first token). d_w·d_a for a row's NT tokens in one multiply, each broadcast from its lane. out[r][t] */
#define CV_U8MM_TILE(NAME, NR, NT, MINS)                                                                                \
    CV_FN static void CV_SFX(NAME)(const uint8_t *u, const float *dw, const float *mw, int nb, const char *y0, int64_t arow, \
                                   int64_t ab, const float *da, const float *sa, int64_t n_tok, const __m256i *nob, float out[4][4]) { \
        __m256 acc[NR][NT];                                                                                             \
        __m128 sm[NR];                                                                                                  \
        for (int r = 0; r < NR; r++) {                                                                                  \
            sm[r] = _mm_setzero_ps();                                                                                   \
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();                                               \
        }                                                                                                               \
        for (int b = 0; b < nb; b++) {                                                                                  \
            __m256i y[NT], no[NT];                                                                                      \
            for (int t = 0; t < NT; t++) {                                                                              \
                y[t] = _mm256_loadu_si256((const __m256i *)(y0 + t * arow + b * ab));                                   \
                no[t] = MINS ? _mm256_setzero_si256() : _mm256_load_si256(nob + (int64_t)b * n_tok + t);              \
            }                                                                                                           \
            const __m256 dav = NT == 4 ? _mm256_castps128_ps256(_mm_loadu_ps(da + (int64_t)b * n_tok)) : _mm256_set1_ps(da[(int64_t)b * n_tok]); \
            for (int r = 0; r < NR; r++) {                                                                              \
                const __m256i ur = _mm256_loadu_si256((const __m256i *)(u + ((int64_t)r * nb + b) * 32));               \
                const __m256 d = _mm256_mul_ps(_mm256_set1_ps(dw[r * nb + b]), dav);                                    \
                for (int t = 0; t < NT; t++)                                                                            \
                    acc[r][t] = _mm256_fmadd_ps(NT == 1 ? d : _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(t)),        \
                                                _mm256_cvtepi32_ps(CV_PAIRS_ACC(no[t], ur, y[t])), acc[r][t]);          \
            }                                                                                                           \
            if (MINS) {                                                                                                 \
                const float *s = sa + (int64_t)b * n_tok;                                                               \
                const __m128 s4 = NT == 4 ? _mm_loadu_ps(s) : _mm_set_ss(s[0]);                                         \
                for (int r = 0; r < NR; r++) sm[r] = _mm_add_ps(sm[r], _mm_mul_ps(_mm_set1_ps(mw[r * nb + b]), s4));  \
            }                                                                                                           \
        }                                                                                                               \
        for (int r = 0; r < NR; r++) {                                                                                  \
            float s4[4];                                                                                                \
            _mm_storeu_ps(s4, sm[r]);                                                                                   \
            for (int t = 0; t < NT; t++) out[r][t] = MINS ? hsum8(acc[r][t]) + s4[t] : hsum8(acc[r][t]);                \
        }                                                                                                               \
    }
#ifdef CV_MASK_BYTES
/* the 4 × 4 tile with AVX-512: tokens in pairs, one zmm per (row, pair) — token 2q's chain in the low eight
 * lanes, 2q+1's in the high eight, each the same chain as in the 256-bit tile */
#define CV_U8MM_TILE_Z(NAME, MINS)                                                                                      \
    CV_FN static void CV_SFX(NAME)(const uint8_t *u, const float *dw, const float *mw, int nb, const char *y0, int64_t arow, \
                                   int64_t ab, const float *da, const float *sa, int64_t n_tok, const __m256i *nob, float out[4][4]) { \
        __m512 acc[4][2];                                                                                               \
        __m128 sm[4];                                                                                                   \
        for (int r = 0; r < 4; r++) sm[r] = _mm_setzero_ps(), acc[r][0] = acc[r][1] = _mm512_setzero_ps();            \
        const __m512i lo_hi[2] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),                     \
                                  _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2)};                    \
        for (int b = 0; b < nb; b++) {                                                                                  \
            __m512i y[2], no[2];                                                                                        \
            __m512 dq[2];                                                                                               \
            const __m512 dav = _mm512_castps128_ps512(_mm_loadu_ps(da + (int64_t)b * n_tok));                          \
            for (int q = 0; q < 2; q++) {                                                                               \
                const char *yb = y0 + 2 * q * arow + b * ab;                                                            \
                y[q] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)yb)),             \
                                          _mm256_loadu_si256((const __m256i *)(yb + arow)), 1);                         \
                no[q] = MINS ? _mm512_setzero_si512() : _mm512_loadu_si512((const void *)(nob + (int64_t)b * n_tok + 2 * q)); \
                dq[q] = _mm512_permutexvar_ps(lo_hi[q], dav);                                                           \
            }                                                                                                           \
            for (int r = 0; r < 4; r++) {                                                                               \
                const __m512i ur = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(u + ((int64_t)r * nb + b) * 32))); \
                const __m512 dwr = _mm512_set1_ps(dw[r * nb + b]);                                                      \
                for (int q = 0; q < 2; q++)                                                                             \
                    acc[r][q] = _mm512_fmadd_ps(_mm512_mul_ps(dwr, dq[q]), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(no[q], ur, y[q])), acc[r][q]); \
            }                                                                                                           \
            if (MINS) {                                                                                                 \
                const __m128 s4 = _mm_loadu_ps(sa + (int64_t)b * n_tok);                                                \
                for (int r = 0; r < 4; r++) sm[r] = _mm_add_ps(sm[r], _mm_mul_ps(_mm_set1_ps(mw[r * nb + b]), s4));   \
            }                                                                                                           \
        }                                                                                                               \
        for (int r = 0; r < 4; r++) {                                                                                   \
            float s4[4];                                                                                                \
            _mm_storeu_ps(s4, sm[r]);                                                                                   \
            for (int q = 0; q < 2; q++) {                                                                               \
                const float h0 = hsum8(_mm512_castps512_ps256(acc[r][q])), h1 = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][q]), 1))); \
                out[r][2 * q] = MINS ? h0 + s4[2 * q] : h0, out[r][2 * q + 1] = MINS ? h1 + s4[2 * q + 1] : h1;          \
            }                                                                                                           \
        }                                                                                                               \
    }
CV_U8MM_TILE_Z(u8mm_4x4z, 0)
CV_U8MM_TILE_Z(u8mm_4x4zm, 1)
#endif
#ifndef CV_MASK_BYTES
CV_U8MM_TILE(u8mm_4x4, 4, 4, 0)
#endif
CV_U8MM_TILE(u8mm_4x1, 4, 1, 0)
CV_U8MM_TILE(u8mm_1x4, 1, 4, 0)
CV_U8MM_TILE(u8mm_1x1, 1, 1, 0)
#ifndef CV_MASK_BYTES
CV_U8MM_TILE(u8mm_4x4m, 4, 4, 1)
#endif
CV_U8MM_TILE(u8mm_4x1m, 4, 1, 1)
CV_U8MM_TILE(u8mm_1x4m, 1, 4, 1)
CV_U8MM_TILE(u8mm_1x1m, 1, 1, 1)

/* Y (n_tok × n_rows, stride ldy) = W · xq for Q8_0 / Q4_0 / Q5_0 / Q4_1 / Q5_1; returns -1 without memory */
CV_FN static int CV_SFX(u8mm)(int wtype, const char *W, int64_t n_rows, int nb, const char *xq, int64_t n_tok, float *Y,
                              int64_t ldy, int n_threads) {
    cv_u8mm p = {wtype, wtype == T_Q8_0 ? 128 : wtype == T_Q4_0 ? 8 : wtype == T_Q5_0 ? 16 : 0, wtype == T_Q4_1 || wtype == T_Q5_1,
                 (int64_t)nb * (wtype == T_Q8_0 ? 34 : wtype == T_Q4_0 ? 18 : wtype == T_Q5_0 ? 22 : wtype == T_Q4_1 ? 20 : 24), 0, 0, nb};
    p.ab = p.mins ? 36 : 34, p.arow = (int64_t)nb * p.ab;
    float *da = malloc(sizeof(float) * (size_t)(n_tok * nb * (p.mins ? 2 : 1)));
    __m256i *nob = p.mins ? NULL : aligned_alloc(32, sizeof(__m256i) * (size_t)(n_tok * nb)); /* −off·Σy lanes per (block, token) */
    if (!da || (!p.mins && !nob)) return free(da), free(nob), -1;
    float *sa = da + n_tok * nb;
    int err = 0;
    /* activation scales (and −off·Σy lanes) on the calling thread; rows in chunks on demand (as rep8mm_q4_0) */
    for (int64_t t = 0; t < n_tok; t++)
        for (int b = 0; b < nb; b++) {
            const uint16_t *ab = (const uint16_t *)(xq + t * p.arow + b * p.ab);
            da[(int64_t)b * n_tok + t] = _cvtsh_ss(ab[0]);
            if (!p.mins)
                _mm256_store_si256(nob + (int64_t)b * n_tok + t, CV_SFX(neg_off)(_mm256_loadu_si256((const __m256i *)(ab + 1)), p.off));
            if (p.mins) sa[(int64_t)b * n_tok + t] = _cvtsh_ss(ab[1]);
        }
#pragma omp parallel num_threads(n_threads)
    {
        uint8_t *u = malloc((size_t)nb * 4 * 32 + sizeof(float) * (size_t)nb * 8);
        if (!u) {
#pragma omp atomic write
            err = 1;
        }
        float *dw = (float *)(u + (size_t)nb * 4 * 32), *mw = dw + 4 * nb;
#pragma omp for schedule(dynamic, 4)
        for (int64_t r0 = 0; r0 < n_rows; r0 += 4) {
            if (!u) continue;
            const int nr = n_rows - r0 < 4 ? (int)(n_rows - r0) : 4;
            for (int r = 0; r < nr; r++) CV_SFX(u8mm_unpack)(&p, W + (r0 + r) * p.wrow, u + (size_t)r * nb * 32, dw + r * nb, mw + r * nb);
            const int yoff = p.mins ? 4 : 2;
            for (int64_t t0 = 0; t0 < n_tok;) {
                float out[4][4];
                const int nt = n_tok - t0 >= 4 ? 4 : 1;
                const char *y0 = xq + t0 * p.arow + yoff;
                const float *dat = da + t0, *sat = sa + t0;
                const __m256i *not0 = nob ? nob + t0 : NULL;
                if (nr == 4) {
#ifdef CV_MASK_BYTES /* AVX-512: the token-pair tile */
                    if (p.mins) (nt == 4 ? CV_SFX(u8mm_4x4zm) : CV_SFX(u8mm_4x1m))(u, dw, mw, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
                    else (nt == 4 ? CV_SFX(u8mm_4x4z) : CV_SFX(u8mm_4x1))(u, dw, mw, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
#else
                    if (p.mins) (nt == 4 ? CV_SFX(u8mm_4x4m) : CV_SFX(u8mm_4x1m))(u, dw, mw, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
                    else (nt == 4 ? CV_SFX(u8mm_4x4) : CV_SFX(u8mm_4x1))(u, dw, mw, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
#endif
                    for (int r = 0; r < 4; r++)
                        for (int t = 0; t < nt; t++) Y[(t0 + t) * ldy + r0 + r] = out[r][t];
                } else {
                    for (int r = 0; r < nr; r++) {
                        const uint8_t *ur = u + (size_t)r * nb * 32;
                        if (p.mins) (nt == 4 ? CV_SFX(u8mm_1x4m) : CV_SFX(u8mm_1x1m))(ur, dw + r * nb, mw + r * nb, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
                        else (nt == 4 ? CV_SFX(u8mm_1x4) : CV_SFX(u8mm_1x1))(ur, dw + r * nb, mw + r * nb, nb, y0, p.arow, p.ab, dat, sat, n_tok, not0, out);
                        for (int t = 0; t < nt; t++) Y[(t0 + t) * ldy + r0 + r] = out[0][t];
                    }
                }
                t0 += nt;
            }
        }
        free(u);
    }
    free(da), free(nob);
    return err ? -1 : 0;
}
#endif

#ifdef CV_VNNI
/* ---- repacked Q4_0 (repack.cpp q4_0_8x8_q8_0: gemv and gemm alike add each block's integer sum ×
 * d_w·d_a to one float chain per output), eight rows at a time with row i in float lane i; the
 * integer sums from unsigned nibbles, −8·Σy folded into dpbusd's start, rows' lanes summed into one
 * vector by hsum8x8_i32 (exact). Rows % 8 == 0. */
CV_FN static void CV_SFX(gemv8_q4_0)(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, int nb, float *Y) {
    const blk_q8_0 *a = xq;
    for (int64_t r = r0; r + 8 <= r1; r += 8) {
        for (int64_t o = 0; r + 16 <= r1 && o < 8 * wrow; o += 64) __builtin_prefetch(W + (r + 8) * wrow + o);
        __m256 acc = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs), no = CV_SFX(neg_off)(y, 8);
            __m256i l[8];
            uint16_t h[8];
            for (int i = 0; i < 8; i++) {
                const blk_q4_0 *w = (const blk_q4_0 *)(W + (r + i) * wrow) + b;
                l[i] = CV_PAIRS_ACC(no, CV_SFX(nib32)(w->qs), y), h[i] = w->d;
            }
            const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)), _mm256_set1_ps(_cvtsh_ss(a[b].d)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(CV_SFX(hsum8x8_i32)(l)), d, acc);
        }
        _mm256_storeu_ps(Y + r, acc);
    }
}

/* 8 × 8 matrix of 32-bit words (m[i] row i) transposed in place */
CV_FN static inline void CV_SFX(tr8x8_i32)(__m256i *m) {
    __m256i t[8], q[8];
    for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_epi32(m[i], m[i + 1]), t[i + 1] = _mm256_unpackhi_epi32(m[i], m[i + 1]);
    for (int i = 0; i < 8; i += 4)
        for (int k = 0; k < 2; k++)
            q[i + 2 * k] = _mm256_unpacklo_epi64(t[i + k], t[i + 2 + k]), q[i + 2 * k + 1] = _mm256_unpackhi_epi64(t[i + k], t[i + 2 + k]);
    for (int k = 0; k < 4; k++)
        m[k] = _mm256_permute2x128_si256(q[k], q[4 + k], 0x20), m[k + 4] = _mm256_permute2x128_si256(q[k], q[4 + k], 0x31);
}

#ifdef CV_MASK_BYTES
/* sixteen unpacked rows (u: per block 8 value groups × 64 bytes, rows r, r + 8 of a pair in the two halves)
 * × NT tokens from t0 (nt of them real; the rest repeat t0 and are not stored): per output the chain
 * acc = fma(float(block integer), d_w·d_a, acc), block after block */
CV_FN static inline void CV_SFX(rep16mm_q4_0_tile)(const uint8_t *u, const float *dw, const int NT, int nt, int64_t t0, const char *xq,
                                                   int64_t arow, const int32_t *noff, const float *da, int nb, float *Y, int64_t ldy,
                                                   int64_t r) {
    const blk_q8_0 *a[8];
    int64_t tt[8];
    for (int t = 0; t < NT; t++) tt[t] = t0 + (t < nt ? t : 0), a[t] = (const blk_q8_0 *)(xq + tt[t] * arow);
    __m512 acc[8];
    for (int t = 0; t < 8; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *ub = u + (size_t)b * 512;
        __m512i l[8];
        for (int t = 0; t < NT; t++) l[t] = _mm512_set1_epi32(noff[tt[t] * nb + b]);
        for (int k = 0; k < 8; k++) {
            const __m512i uk = _mm512_loadu_si512((const void *)(ub + 64 * k));
            for (int t = 0; t < NT; t++) {
                int32_t y4;
                memcpy(&y4, a[t][b].qs + 4 * k, 4);
                l[t] = _mm512_dpbusd_epi32(l[t], uk, _mm512_set1_epi32(y4));
            }
        }
        const __m512 dwb = _mm512_loadu_ps(dw + b * 16);
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(l[t]), _mm512_mul_ps(dwb, _mm512_set1_ps(da[tt[t] * nb + b])), acc[t]);
    }
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(Y + (t0 + t) * ldy + r, acc[t]);
}
#endif

/* batches: each group of eight rows unpacked once into lanes — for value group k (values 4k..4k+3) of a
 * block, one vector holding those four unsigned values of each row (row i in lane i) — so dpbusd
 * with the activation's four values broadcast sums a whole row per lane and no reduction is left; −8·Σy
 * per (token, block) is the start of the sum (computed once per matmul) */
CV_FN static int CV_SFX(rep8mm_q4_0)(const char *W, int64_t n_rows, int nb, const char *xq, int64_t n_tok, float *Y, int64_t ldy,
                                     int n_threads) {
    const int64_t wrow = (int64_t)nb * 18, arow = (int64_t)nb * 34;
    int32_t *noff = malloc(sizeof(int32_t) * (size_t)(n_tok * nb));
    float *da = malloc(sizeof(float) * (size_t)(n_tok * nb));
    if (!noff || !da) return free(noff), free(da), -1;
    int err = 0;
    /* −8·Σy and d_a per (token, block) on the calling thread (a few µs), so the team has no barrier
     * before the rows; they go out in 16-row chunks on demand (a thread the OS delays leaves its share to
     * the other instead of holding the join) — each output is one thread's either way */
    for (int64_t t = 0; t < n_tok; t++)
        for (int b = 0; b < nb; b++) {
            const blk_q8_0 *a = (const blk_q8_0 *)(xq + t * arow) + b;
            const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)a->qs)); /* exact */
            const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            const int s = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
            noff[t * nb + b] = -8 * s, da[t * nb + b] = _cvtsh_ss(a->d);
        }
#pragma omp parallel num_threads(n_threads)
    {
        uint8_t *u = malloc((size_t)nb * 512 + sizeof(float) * 16 * (size_t)nb); /* u[b][k][row][4], dw[b][row] */
        float *dw = (float *)(u + (size_t)nb * 512);
        if (!u) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp for schedule(dynamic, 2)
        for (int64_t r = 0; r < n_rows; r += 8) {
            if (!u) continue;
#ifdef CV_MASK_BYTES
            /* AVX-512: sixteen rows per zmm where the matrix has them (rows r, r + 8 of a 16-row pair in the two halves) */
            if (r % 16 == 8 && r + 8 <= n_rows) continue; /* done with the group before */
            if (r + 16 <= n_rows) {
                for (int b = 0; b < nb; b++)
                    for (int hf = 0; hf < 2; hf++) {
                        __m256i m[8];
                        for (int i = 0; i < 8; i++) {
                            const blk_q4_0 *w = (const blk_q4_0 *)(W + (r + 8 * hf + i) * wrow) + b;
                            m[i] = CV_SFX(nib32)(w->qs), dw[b * 16 + 8 * hf + i] = _cvtsh_ss(w->d);
                        }
                        CV_SFX(tr8x8_i32)(m);
                        for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(u + (size_t)b * 512 + 64 * k + 32 * hf), m[k]);
                    }
                for (int64_t t0 = 0; t0 < n_tok;) { /* eight tokens (four at the end): independent dpbusd chains */
                    if (n_tok - t0 >= 8) CV_SFX(rep16mm_q4_0_tile)(u, dw, 8, 8, t0, xq, arow, noff, da, nb, Y, ldy, r), t0 += 8;
                    else {
                        const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
                        CV_SFX(rep16mm_q4_0_tile)(u, dw, 4, nt, t0, xq, arow, noff, da, nb, Y, ldy, r), t0 += nt;
                    }
                }
                continue;
            }
#endif
            for (int b = 0; b < nb; b++) {
                __m256i m[8];
                for (int i = 0; i < 8; i++) {
                    const blk_q4_0 *w = (const blk_q4_0 *)(W + (r + i) * wrow) + b;
                    m[i] = CV_SFX(nib32)(w->qs), dw[b * 8 + i] = _cvtsh_ss(w->d);
                }
                CV_SFX(tr8x8_i32)(m);
                for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(u + (size_t)b * 256 + 32 * k), m[k]);
            }
            for (int64_t t0 = 0; t0 < n_tok; t0 += 4) { /* four tokens: four independent dpbusd chains per weight vector */
                const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
                const blk_q8_0 *a[4];
                for (int t = 0; t < 4; t++) a[t] = (const blk_q8_0 *)(xq + (t0 + (t < nt ? t : 0)) * arow);
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int b = 0; b < nb; b++) {
                    const uint8_t *ub = u + (size_t)b * 256;
                    __m256i l[4];
                    for (int t = 0; t < 4; t++) l[t] = _mm256_set1_epi32(noff[(t0 + (t < nt ? t : 0)) * nb + b]);
                    for (int k = 0; k < 8; k++) {
                        const __m256i uk = _mm256_loadu_si256((const __m256i *)(ub + 32 * k));
                        for (int t = 0; t < 4; t++) {
                            int32_t y4;
                            memcpy(&y4, a[t][b].qs + 4 * k, 4);
                            l[t] = CV_PAIRS_ACC(l[t], uk, _mm256_set1_epi32(y4));
                        }
                    }
                    const __m256 dwb = _mm256_loadu_ps(dw + b * 8);
                    for (int t = 0; t < 4; t++)
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l[t]), _mm256_mul_ps(dwb, _mm256_set1_ps(da[(t0 + (t < nt ? t : 0)) * nb + b])), acc[t]);
                }
                for (int t = 0; t < nt; t++) {
                    float o[8];
                    _mm256_storeu_ps(o, acc[t]);
                    for (int i = 0; i < 8; i++) Y[(t0 + t) * ldy + r + i] = o[i];
                }
            }
        }
        free(u);
    }
    free(noff), free(da);
    return err ? -1 : 0;
}
#endif
