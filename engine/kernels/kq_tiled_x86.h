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

#ifdef CV_KQ_VNNI
/* ---- the same routes with each group of eight rows unpacked once into row lanes ---------------------
 * For every 32-value vector m of a block (Q4_K/Q5_K: sub-block m; Q6_K: values 32m..32m+31) and value
 * group k (its values 4k..4k+3), one vector holds those four unsigned values of each of the eight rows
 * (row i in lane i): dpbusd with the activation's four values broadcast adds a sub-block's dot product
 * to every row's lane at once, and the scales multiply lanes of row scales — the block integers S, M
 * (Q6_K: S − 32·Σ sc·bsums) come out in row lanes without any reduction, then go through the float
 * chains above. All integers as ggml's, exactly. */
typedef struct {
    __m256i u[8][8];   /* [m][k] */
    __m256i sc[16];    /* Q4_K/Q5_K: sc[m] (sub-block m's scale per row, int32); Q6_K: sc[16-value sub-block] */
    __m256i mn[8];     /* Q4_K/Q5_K: mn[j] pair j's mins (mn[2j] | mn[2j+1] << 16 per row); Q6_K: scale pairs likewise */
    __m256 dw, dmw;
} CV_SFX(kq8_blk);

CV_FN static void CV_SFX(kq8_unpack)(int wtype, const char *const *wr, int b, CV_SFX(kq8_blk) *o) {
    const int bb = wtype == T_Q4_K ? 144 : wtype == T_Q5_K ? 176 : 210;
    __m256i v[8][8]; /* [m][row] */
    uint16_t d8[8], dm8[8];
    int32_t sc[16][8], mnp[8][8];
    for (int i = 0; i < 8; i++) {
        const char *wb = wr[i] + (int64_t)b * bb;
        if (wtype == T_Q6_K) {
            const blk_q6_K *w = (const blk_q6_K *)wb;
            for (int h = 0; h < 2; h++) {
                __m256i t4[4];
                q6_K_half(w->ql + 64 * h, w->qh + 32 * h, t4);
                for (int m = 0; m < 4; m++) v[4 * h + m][i] = t4[m];
            }
            d8[i] = w->d, dm8[i] = 0;
            for (int s = 0; s < 16; s++) sc[s][i] = w->scales[s];
            for (int p = 0; p < 8; p++) /* two int16 scales per lane, for madd with two bsums */
                mnp[p][i] = (int32_t)((uint32_t)(uint16_t)(int16_t)w->scales[2 * p] | (uint32_t)(uint16_t)(int16_t)w->scales[2 * p + 1] << 16);
            continue;
        }
        const blk_q4_K *w = (const blk_q4_K *)wb;
        uint8_t s8[8], m8[8];
        q4_K_scales(w->scales, s8, m8);
        __m256i lo[4], hi[4];
        if (wtype == T_Q5_K) q5_K_values((const blk_q5_K *)w, lo, hi);
        else q4_K_nibbles(w, lo, hi);
        for (int j = 0; j < 4; j++) v[2 * j][i] = lo[j], v[2 * j + 1][i] = hi[j];
        d8[i] = w->d, dm8[i] = w->dmin;
        for (int s = 0; s < 8; s++) sc[s][i] = s8[s];
        for (int j = 0; j < 4; j++) mnp[j][i] = (int32_t)((uint32_t)m8[2 * j] | (uint32_t)m8[2 * j + 1] << 16);
    }
    for (int m = 0; m < 8; m++) {
        CV_SFX(tr8x8_i32)(v[m]);
        for (int k = 0; k < 8; k++) o->u[m][k] = v[m][k];
    }
    for (int s = 0; s < (wtype == T_Q6_K ? 16 : 8); s++) o->sc[s] = _mm256_loadu_si256((const __m256i *)sc[s]);
    for (int p = 0; p < (wtype == T_Q6_K ? 8 : 4); p++) o->mn[p] = _mm256_loadu_si256((const __m256i *)mnp[p]);
    o->dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d8));
    o->dmw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dm8));
}

/* the dots of 32-value vector m, value groups k0..k1−1, with up to four tokens' activations y[t] (values
 * 32m + 4k..): four independent dpbusd chains sharing each weight vector */
#define CV_KQ8_DOT(o, m, y, nt, k0, k1, acc)                                                                           \
    for (int k = (k0); k < (k1); k++) {                                                                                 \
        const __m256i uk = (o)->u[m][k];                                                                                \
        for (int t = 0; t < (nt); t++) {                                                                                \
            int32_t y4;                                                                                                 \
            memcpy(&y4, (y)[t] + 32 * (m) + 4 * k, 4);                                                                  \
            acc[t] = CV_DPBUSD(acc[t], uk, _mm256_set1_epi32(y4));                                                      \
        }                                                                                                               \
    }

CV_FN static void CV_SFX(kq8_group)(int wtype, int route, const char *W, int64_t wrow, int64_t n_rows, int64_t r0, int nb,
                                   const char *xq, int64_t arow, int64_t n_tok, int64_t n_gemm, float *Y, int64_t ldy,
                                   CV_SFX(kq8_blk) *ub) {
    const char *wr[8];
    for (int i = 0; i < 8; i++) wr[i] = W + (r0 + i < n_rows ? r0 + i : n_rows - 1) * wrow;
    for (int b = 0; b < nb; b++) CV_SFX(kq8_unpack)(wtype, wr, b, &ub[b]);
    const int nr = n_rows - r0 < 8 ? (int)(n_rows - r0) : 8;
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
        __m256 acc[4], accm[4];
        for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const blk_q8_K *a[4];
            const int8_t *y[4];
            for (int t = 0; t < 4; t++) a[t] = (const blk_q8_K *)(xq + (t0 + (t < nt ? t : 0)) * arow) + b, y[t] = a[t]->qs;
            const CV_SFX(kq8_blk) *o = &ub[b];
            if (wtype == T_Q6_K) {
                __m256i s[4];
                for (int t = 0; t < 4; t++) s[t] = _mm256_setzero_si256();
                for (int m = 0; m < 8; m++) {
                    __m256i d0[4], d1[4];
                    for (int t = 0; t < 4; t++) d0[t] = d1[t] = _mm256_setzero_si256();
                    CV_KQ8_DOT(o, m, y, nt, 0, 4, d0)
                    CV_KQ8_DOT(o, m, y, nt, 4, 8, d1)
                    for (int t = 0; t < nt; t++)
                        s[t] = _mm256_add_epi32(s[t], _mm256_add_epi32(_mm256_mullo_epi32(d0[t], o->sc[2 * m]), _mm256_mullo_epi32(d1[t], o->sc[2 * m + 1])));
                }
                for (int t = 0; t < nt; t++) {
                    __m256i off = _mm256_setzero_si256();
                    for (int p = 0; p < 8; p++) {
                        int32_t bs2;
                        memcpy(&bs2, a[t]->bsums + 2 * p, 4);
                        off = _mm256_add_epi32(off, _mm256_madd_epi16(o->mn[p], _mm256_set1_epi32(bs2)));
                    }
                    const __m256i si = _mm256_sub_epi32(s[t], _mm256_slli_epi32(off, 5));
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(si), o->dw), _mm256_set1_ps(a[t]->d), acc[t]);
                }
                continue;
            }
            __m256i p[4][4]; /* [t][j] */
            for (int j = 0; j < 4; j++) {
                __m256i d0[4], d1[4];
                for (int t = 0; t < 4; t++) d0[t] = d1[t] = _mm256_setzero_si256();
                CV_KQ8_DOT(o, 2 * j, y, nt, 0, 8, d0)
                CV_KQ8_DOT(o, 2 * j + 1, y, nt, 0, 8, d1)
                for (int t = 0; t < nt; t++) p[t][j] = _mm256_add_epi32(_mm256_mullo_epi32(d0[t], o->sc[2 * j]), _mm256_mullo_epi32(d1[t], o->sc[2 * j + 1]));
            }
            for (int t = 0; t < nt; t++) {
                const blk_q8_K *at = a[t];
                const __m256 vda = _mm256_set1_ps(at->d);
                __m256i mj[4];
                for (int j = 0; j < 4; j++) {
                    const int32_t bp = (int32_t)((uint32_t)(uint16_t)(at->bsums[4 * j] + at->bsums[4 * j + 1]) |
                                                 (uint32_t)(uint16_t)(at->bsums[4 * j + 2] + at->bsums[4 * j + 3]) << 16);
                    mj[j] = _mm256_madd_epi16(o->mn[j], _mm256_set1_epi32(bp));
                }
                if (route == 1 && t0 + t < n_gemm) {
                    const __m256 dd = _mm256_mul_ps(o->dw, vda), dm = _mm256_mul_ps(o->dmw, vda);
                    for (int j = 0; j < 4; j++) {
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[t][j]), dd, acc[t]);
                        accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mj[j]), dm, accm[t]);
                    }
                    continue;
                }
                const __m256 sf = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(p[t][0], p[t][1]), _mm256_add_epi32(p[t][2], p[t][3])));
                const __m256 mm = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(mj[0], mj[1]), _mm256_add_epi32(mj[2], mj[3])));
                if (route == 1) {
                    acc[t] = _mm256_fmadd_ps(sf, _mm256_mul_ps(o->dw, vda), acc[t]);
                    accm[t] = _mm256_fmadd_ps(mm, _mm256_mul_ps(o->dmw, vda), accm[t]);
                } else {
                    acc[t] = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_sub_ps(_mm256_setzero_ps(), o->dmw), mm, _mm256_mul_ps(sf, o->dw)), vda, acc[t]);
                }
            }
        }
        for (int t = 0; t < nt; t++) {
            float out[8];
            _mm256_storeu_ps(out, route == 1 ? _mm256_sub_ps(acc[t], accm[t]) : acc[t]);
            for (int i = 0; i < nr; i++) Y[(t0 + t) * ldy + r0 + i] = out[i];
        }
    }
}

#ifdef CV_KQ_ZMM
/* AVX-512: sixteen rows per zmm — two unpacked 8-row halves side by side, the same lanes' arithmetic */
typedef struct {
    __m512i u[8][8], sc[16], mn[8];
    __m512 dw, dmw;
} CV_SFX(kq16_blk);

#define CV_KQ16_DOT(o, m, y, nt, k0, k1, acc)                                                                          \
    for (int k = (k0); k < (k1); k++) {                                                                                 \
        const __m512i uk = (o)->u[m][k];                                                                                \
        for (int t = 0; t < (nt); t++) {                                                                                \
            int32_t y4;                                                                                                 \
            memcpy(&y4, (y)[t] + 32 * (m) + 4 * k, 4);                                                                  \
            acc[t] = _mm512_dpbusd_epi32(acc[t], uk, _mm512_set1_epi32(y4));                                            \
        }                                                                                                               \
    }

CV_FN static void CV_SFX(kq16_group)(int wtype, int route, const char *W, int64_t wrow, int64_t n_rows, int64_t r0, int nb,
                                    const char *xq, int64_t arow, int64_t n_tok, int64_t n_gemm, float *Y, int64_t ldy,
                                    CV_SFX(kq16_blk) *ub) {
    for (int b = 0; b < nb; b++) {
        CV_SFX(kq8_blk) h[2];
        for (int hf = 0; hf < 2; hf++) {
            const char *wr[8];
            for (int i = 0; i < 8; i++) wr[i] = W + (r0 + 8 * hf + i) * wrow;
            CV_SFX(kq8_unpack)(wtype, wr, b, &h[hf]);
        }
        CV_SFX(kq16_blk) *o = &ub[b];
        for (int m = 0; m < 8; m++)
            for (int k = 0; k < 8; k++) o->u[m][k] = _mm512_inserti64x4(_mm512_castsi256_si512(h[0].u[m][k]), h[1].u[m][k], 1);
        for (int q = 0; q < 16; q++) o->sc[q] = _mm512_inserti64x4(_mm512_castsi256_si512(h[0].sc[q]), h[1].sc[q], 1);
        for (int q = 0; q < 8; q++) o->mn[q] = _mm512_inserti64x4(_mm512_castsi256_si512(h[0].mn[q]), h[1].mn[q], 1);
        o->dw = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(h[0].dw)), _mm256_castps_pd(h[1].dw), 1));
        o->dmw = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(h[0].dmw)), _mm256_castps_pd(h[1].dmw), 1));
    }
    const int nr = 16;
    for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
        __m512 acc[4], accm[4];
        for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const blk_q8_K *a[4];
            const int8_t *y[4];
            for (int t = 0; t < 4; t++) a[t] = (const blk_q8_K *)(xq + (t0 + (t < nt ? t : 0)) * arow) + b, y[t] = a[t]->qs;
            const CV_SFX(kq16_blk) *o = &ub[b];
            if (wtype == T_Q6_K) {
                __m512i s[4];
                for (int t = 0; t < 4; t++) s[t] = _mm512_setzero_si512();
                for (int m = 0; m < 8; m++) {
                    __m512i d0[4], d1[4];
                    for (int t = 0; t < 4; t++) d0[t] = d1[t] = _mm512_setzero_si512();
                    CV_KQ16_DOT(o, m, y, nt, 0, 4, d0)
                    CV_KQ16_DOT(o, m, y, nt, 4, 8, d1)
                    for (int t = 0; t < nt; t++)
                        s[t] = _mm512_add_epi32(s[t], _mm512_add_epi32(_mm512_mullo_epi32(d0[t], o->sc[2 * m]), _mm512_mullo_epi32(d1[t], o->sc[2 * m + 1])));
                }
                for (int t = 0; t < nt; t++) {
                    __m512i off = _mm512_setzero_si512();
                    for (int p = 0; p < 8; p++) {
                        int32_t bs2;
                        memcpy(&bs2, a[t]->bsums + 2 * p, 4);
                        off = _mm512_add_epi32(off, _mm512_madd_epi16(o->mn[p], _mm512_set1_epi32(bs2)));
                    }
                    const __m512i si = _mm512_sub_epi32(s[t], _mm512_slli_epi32(off, 5));
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(si), o->dw), _mm512_set1_ps(a[t]->d), acc[t]);
                }
                continue;
            }
            __m512i p[4][4]; /* [t][j] */
            for (int j = 0; j < 4; j++) {
                __m512i d0[4], d1[4];
                for (int t = 0; t < 4; t++) d0[t] = d1[t] = _mm512_setzero_si512();
                CV_KQ16_DOT(o, 2 * j, y, nt, 0, 8, d0)
                CV_KQ16_DOT(o, 2 * j + 1, y, nt, 0, 8, d1)
                for (int t = 0; t < nt; t++) p[t][j] = _mm512_add_epi32(_mm512_mullo_epi32(d0[t], o->sc[2 * j]), _mm512_mullo_epi32(d1[t], o->sc[2 * j + 1]));
            }
            for (int t = 0; t < nt; t++) {
                const blk_q8_K *at = a[t];
                const __m512 vda = _mm512_set1_ps(at->d);
                __m512i mj[4];
                for (int j = 0; j < 4; j++) {
                    const int32_t bp = (int32_t)((uint32_t)(uint16_t)(at->bsums[4 * j] + at->bsums[4 * j + 1]) |
                                                 (uint32_t)(uint16_t)(at->bsums[4 * j + 2] + at->bsums[4 * j + 3]) << 16);
                    mj[j] = _mm512_madd_epi16(o->mn[j], _mm512_set1_epi32(bp));
                }
                if (route == 1 && t0 + t < n_gemm) {
                    const __m512 dd = _mm512_mul_ps(o->dw, vda), dm = _mm512_mul_ps(o->dmw, vda);
                    for (int j = 0; j < 4; j++) {
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t][j]), dd, acc[t]);
                        accm[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mj[j]), dm, accm[t]);
                    }
                    continue;
                }
                const __m512 sf = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(p[t][0], p[t][1]), _mm512_add_epi32(p[t][2], p[t][3])));
                const __m512 mm = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(mj[0], mj[1]), _mm512_add_epi32(mj[2], mj[3])));
                if (route == 1) {
                    acc[t] = _mm512_fmadd_ps(sf, _mm512_mul_ps(o->dw, vda), acc[t]);
                    accm[t] = _mm512_fmadd_ps(mm, _mm512_mul_ps(o->dmw, vda), accm[t]);
                } else {
                    acc[t] = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_sub_ps(_mm512_setzero_ps(), o->dmw), mm, _mm512_mul_ps(sf, o->dw)), vda, acc[t]);
                }
            }
        }
        for (int t = 0; t < nt; t++) {
            float out[16];
            _mm512_storeu_ps(out, route == 1 ? _mm512_sub_ps(acc[t], accm[t]) : acc[t]);
            for (int i = 0; i < nr; i++) Y[(t0 + t) * ldy + r0 + i] = out[i];
        }
    }
}


#endif

CV_FN static int CV_SFX(kq8_mm)(int wtype, int route, const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y,
                                int64_t ldy, int n_threads) {
    const int64_t wrow = (int64_t)nb * (wtype == T_Q4_K ? 144 : wtype == T_Q5_K ? 176 : 210), arow = (int64_t)nb * 292;
    const int64_t n_gemm = route == 1 ? n_tok - n_tok % 4 : 0;
    int err = 0;
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
    {
#ifdef CV_KQ_ZMM
        const size_t blk = sizeof(CV_SFX(kq16_blk));
#else
        const size_t blk = sizeof(CV_SFX(kq8_blk));
#endif
        void *ub = aligned_alloc(64, ((blk * (size_t)nb + 63) / 64) * 64);
        if (!ub) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp for schedule(static)
        for (int64_t g = 0; g < (n_rows + 15) / 16; g++) {
            if (!ub) continue;
            const int64_t r0 = g * 16;
#ifdef CV_KQ_ZMM
            if (route == 2 && r0 + 16 <= n_rows) { /* the tiled route (route 1 keeps the 8-row path) */
                CV_SFX(kq16_group)(wtype, route, (const char *)W, wrow, n_rows, r0, nb, (const char *)xq, arow, n_tok, n_gemm, Y, ldy, ub);
                continue;
            }
#endif
            for (int64_t r = r0; r < r0 + 16 && r < n_rows; r += 8)
                CV_SFX(kq8_group)(wtype, route, (const char *)W, wrow, n_rows, r, nb, (const char *)xq, arow, n_tok, n_gemm, Y, ldy, ub);
        }
        free(ub);
    }
    return err ? -1 : 0;
}
#endif
