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

CV_GEMV(CV_FN, CV_SFX(gemv_q8_0), CV_SFX(dot_q8_0))
CV_GEMV(CV_FN, CV_SFX(gemv_q4_1), CV_SFX(dot_q4_1))
CV_GEMV(CV_FN, CV_SFX(gemv_q5_0), CV_SFX(dot_q5_0))
CV_GEMV(CV_FN, CV_SFX(gemv_q4_0), CV_SFX(dot_q4_0))
CV_GEMV(CV_FN, CV_SFX(gemv_q5_1), CV_SFX(dot_q5_1))
