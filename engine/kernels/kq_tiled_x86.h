/* K-quant batches on x86, included by qkernels.c once per instruction set (CV_SFX / CV_FN / CV_MADD_ACC as
 * for qdots_x86.h): llama.cpp's repacked Q4_K gemm and gemv (route 1: Q4_K of rows % 8 == 0) and its
 * tiled matmul (route 2: Q4_K / Q5_K / Q6_K with 8 or more activation rows), eight weight rows at a time
 * with row i in float lane i, so each output's chain is one lane's and every lane runs the scalar
 * chain of the comments on ggml_route:
 *   route 1, tokens in groups of 4 (gemm):  per pair j of sub-blocks  acc  = fma(float(S_j), d_w·d_a, acc),
 *                                                                      accm = fma(float(M_j), dmin_w·d_a, accm)
 *   route 1, the last n_tok % 4 tokens (gemv): the same with S = Σ_j S_j, M = Σ_j M_j once per block
 *   route 2, Q4_K / Q5_K:  acc = fma(fma(−dmin_w, float(M), float(S)·d_w), d_a, acc)
 *   route 2, Q6_K:         acc = fma(float(S)·d_w, d_a, acc)
 * (S: the block's scaled integer, M: its min term Σ mn·bsums; route 1's output is acc − accm). The integers
 * are formed per (row, token) — weights unpacked once per block for up to eight tokens — and turned into
 * row lanes by integer transposes, which are exact. A last group of fewer than eight rows repeats its
 * last row in the spare lanes and stores only its own. */

/* four 8-lane vectors → [Σ p0, Σ p1, Σ p2, Σ p3] */
CV_FN static inline __m128i CV_SFX(hsum4x8)(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* eight rows' [x0 x1 x2 x3] → v[j], lane i = row i's xj */
CV_FN static inline void CV_SFX(tr8x4)(const __m128i *a, __m256i *v) {
    __m256i r[4];
    for (int i = 0; i < 4; i++) r[i] = _mm256_set_m128i(a[i + 4], a[i]);
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2), v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3), v[3] = _mm256_unpackhi_epi64(t1, t3);
}

#define CV_KQ_T 8 /* tokens per pass over a group's blocks */

CV_FN static void CV_SFX(kq_group)(int wtype, int route, const char *W, int64_t wrow, int64_t n_rows, int64_t r0, int nb,
                                  const char *xq, int64_t arow, int64_t n_tok, int64_t n_gemm, float *Y, int64_t ldy) {
    const char *wr[8];
    for (int i = 0; i < 8; i++) wr[i] = W + (r0 + i < n_rows ? r0 + i : n_rows - 1) * wrow;
    const int bb = wtype == T_Q4_K ? 144 : wtype == T_Q5_K ? 176 : 210;
    for (int64_t t0 = 0; t0 < n_tok; t0 += CV_KQ_T) {
        const int nt = n_tok - t0 < CV_KQ_T ? (int)(n_tok - t0) : CV_KQ_T;
        __m256 acc[CV_KQ_T], accm[CV_KQ_T];
        for (int t = 0; t < CV_KQ_T; t++) acc[t] = accm[t] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            __m128i S[CV_KQ_T][8], M[CV_KQ_T][8];
            __m256i L[CV_KQ_T][8];
            uint16_t d8[8], dm8[8];
            __m128i bsp[CV_KQ_T];
            if (wtype != T_Q6_K)
                for (int t = 0; t < nt; t++) {
                    const __m256i bs = _mm256_loadu_si256((const __m256i *)((const blk_q8_K *)(xq + (t0 + t) * arow) + b)->bsums);
                    bsp[t] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                }
            for (int i = 0; i < 8; i++) {
                const char *wb = wr[i] + (int64_t)b * bb;
                if (wtype == T_Q6_K) {
                    const blk_q6_K *w = (const blk_q6_K *)wb;
                    __m256i v[8], s16[8];
                    q6_K_unpack(w, v, s16);
                    d8[i] = w->d;
                    for (int t = 0; t < nt; t++) L[t][i] = q6_K_lanes(w, v, s16, (const blk_q8_K *)(xq + (t0 + t) * arow) + b);
                    continue;
                }
                const blk_q4_K *w = (const blk_q4_K *)wb; /* Q5_K: the same d, dmin and scales first */
                uint32_t u[3];
                memcpy(u, w->scales, 12);
                const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
                const uint32_t mn_lo = u[1] & 0x3f3f3f3fu, mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
                const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
                const __m128i mn = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo));
                __m256i lo[4], hi[4], s0[4], s1[4];
                if (wtype == T_Q5_K) q5_K_values((const blk_q5_K *)w, lo, hi);
                else q4_K_nibbles(w, lo, hi);
                for (int j = 0; j < 4; j++) {
                    s0[j] = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 1) << 8 | (4 * j))));
                    s1[j] = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)((4 * j + 3) << 8 | (4 * j + 2))));
                }
                d8[i] = w->d, dm8[i] = w->dmin;
                for (int t = 0; t < nt; t++) {
                    const int8_t *y = ((const blk_q8_K *)(xq + (t0 + t) * arow) + b)->qs;
                    __m256i p[4];
                    for (int j = 0; j < 4; j++) {
                        const __m256i a0 = _mm256_maddubs_epi16(lo[j], _mm256_loadu_si256((const __m256i *)(y + 64 * j)));
                        const __m256i a1 = _mm256_maddubs_epi16(hi[j], _mm256_loadu_si256((const __m256i *)(y + 64 * j + 32)));
                        p[j] = CV_MADD_ACC(CV_MADD_ACC(_mm256_setzero_si256(), a0, s0[j]), a1, s1[j]);
                    }
                    S[t][i] = CV_SFX(hsum4x8)(p[0], p[1], p[2], p[3]);
                    M[t][i] = _mm_madd_epi16(mn, bsp[t]);
                }
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d8));
            const __m256 dmw = wtype == T_Q6_K ? dw : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dm8));
            for (int t = 0; t < nt; t++) {
                const float da = ((const blk_q8_K *)(xq + (t0 + t) * arow) + b)->d;
                const __m256 vda = _mm256_set1_ps(da);
                if (wtype == T_Q6_K) {
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(CV_SFX(hsum8x8_i32)(L[t])), dw), vda, acc[t]);
                    continue;
                }
                __m256i v[4], m[4];
                CV_SFX(tr8x4)(S[t], v);
                CV_SFX(tr8x4)(M[t], m);
                if (route == 1 && t0 + t < n_gemm) {
                    const __m256 dd = _mm256_mul_ps(dw, vda), dm = _mm256_mul_ps(dmw, vda);
                    for (int j = 0; j < 4; j++) {
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v[j]), dd, acc[t]);
                        accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m[j]), dm, accm[t]);
                    }
                    continue;
                }
                const __m256 s = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
                const __m256 mm = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(m[0], m[1]), _mm256_add_epi32(m[2], m[3])));
                if (route == 1) {
                    acc[t] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, vda), acc[t]);
                    accm[t] = _mm256_fmadd_ps(mm, _mm256_mul_ps(dmw, vda), accm[t]);
                } else {
                    const __m256 ndmw = _mm256_sub_ps(_mm256_setzero_ps(), dmw);
                    acc[t] = _mm256_fmadd_ps(_mm256_fmadd_ps(ndmw, mm, _mm256_mul_ps(s, dw)), vda, acc[t]);
                }
            }
        }
        const int nr = n_rows - r0 < 8 ? (int)(n_rows - r0) : 8;
        for (int t = 0; t < nt; t++) {
            float o[8];
            _mm256_storeu_ps(o, route == 1 ? _mm256_sub_ps(acc[t], accm[t]) : acc[t]);
            for (int i = 0; i < nr; i++) Y[(t0 + t) * ldy + r0 + i] = o[i];
        }
    }
}

CV_FN static void CV_SFX(kq_mm)(int wtype, int route, const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y,
                                int64_t ldy, int n_threads) {
    const int64_t wrow = (int64_t)nb * (wtype == T_Q4_K ? 144 : wtype == T_Q5_K ? 176 : 210), arow = (int64_t)nb * 292;
    const int64_t n_gemm = route == 1 ? n_tok - n_tok % 4 : 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t g = 0; g < (n_rows + 7) / 8; g++)
        CV_SFX(kq_group)(wtype, route, (const char *)W, wrow, n_rows, g * 8, nb, (const char *)xq, arow, n_tok, n_gemm, Y, ldy);
}
