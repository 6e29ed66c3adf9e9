/* Batched attention (prefill) over an F16 cache with AVX-512: the arithmetic of cv_attention_f16's
 * tinyBLAS route (≥ 2 query rows, head dims a multiple of 16), dot for dot — included by qkernels.c.
 *
 * llama.cpp's CPU backend multiplies K·q and V·p with tinyBLAS when the batch has rows to spare
 * (llamafile/sgemm.cpp tinyBLAS: one 16-float FMA chain per output over the dot, then
 * _mm512_reduce_add_ps). Each output is still its own chain here; the kernel only computes sixteen of
 * them side by side — four query rows × four keys (K·q) or four query rows × four V rows (V·p) — so
 * every operand load feeds four FMAs, and reduces the sixteen accumulators together (hsum16x16: the
 * same pairs added as GCC's _mm512_reduce_add_ps, hsum16_tree). The softmax is cv_attention_f16's,
 * row by row. V·p runs over the union of the four rows' unmasked dot steps: a step of zero
 * probabilities adds exact zeros to a chain (which starts at +0), as cv_attention_f16 already relies on.
 * Work: (head, four query rows) items handed out dynamically, costliest (latest rows) first. */

#if defined(__x86_64__) && defined(__GNUC__)
/* sixteen 16-lane accumulators → their sums, lane 4q + m the sum of v[q + 4m]: at every level the pairs
 * of _mm512_reduce_add_ps (lanes i, i + 8; i, i + 4; i, i + 2; i, i + 1), four vectors at a time */
AVX512_FN static inline __m512 hsum16x16(const __m512 *v) {
    __m512 s[8], t[4], u[2];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88), _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xDD));
    /* t[i] quarter q: v[4i + q]'s four partial sums */
    for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    /* u[i] quarter q: (v[8i + q], v[8i + 4 + q]) pairs of two */
    return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
}


/* lane 4i + k = Σ_x a[i][x]·cvtph(b_k[x]) over x in [x0, x1) (a multiple of 16 long) for four f32 rows a
 * (stride lda: queries, or probabilities) and four f16 rows b_k (keys, or V rows): sixteen chains, each
 * one accumulator from +0 (accumulator i + 4k: hsum16x16 puts its sum in lane 4i + k) */
AVX512_FN static inline __m512 dot4x4_f16_range(const float *a, int64_t lda, const uint16_t *const b[4], int64_t x0, int64_t x1) {
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t x = x0; x < x1; x += 16) {
        __m512 bv[4];
        for (int k = 0; k < 4; k++) bv[k] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b[k] + x)));
        for (int i = 0; i < 4; i++) {
            const __m512 av = _mm512_loadu_ps(a + i * lda + x);
            for (int k = 0; k < 4; k++) acc[i + 4 * k] = _mm512_fmadd_ps(av, bv[k], acc[i + 4 * k]);
        }
    }
    return hsum16x16(acc);
}

/* the same over [0, n), n % 16 == 0 */
AVX512_FN static inline __m512 dot4x4_f16(const float *a, int64_t lda, const uint16_t *const b[4], int64_t n) {
    return dot4x4_f16_range(a, lda, b, 0, n);
}

/* x rounded to F16 (nearest even, as f2h) and back: n % 16 == 0 */
AVX512_FN static inline void f16_round_row(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
}

/* softmax_lanes(w, n, 16) with its max and its final scaling in vectors (both exact, any order: the max
 * of `w[i] > max ? w[i] : max` is max_ps's, which also passes over NaNs) — n % 16 == 0 */
AVX512_FN static void softmax16_row(float *w, int64_t n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(w + i), m);
    float ml[16], max = -INFINITY;
    _mm512_storeu_ps(ml, m);
    for (int l = 0; l < 16; l++) max = ml[l] > max ? ml[l] : max;
    int64_t done;
    const double sum = soft_max16(w, w, n, max, &done);
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(w + i, _mm512_mul_ps(_mm512_loadu_ps(w + i), inv));
}

/* cv_attention_f16 with lanes 16, n_q ≥ 2, d and dv multiples of 16 and the V·p steps inside the cache
 * (n_up ≤ n_ctx): the same outputs. Returns -1 without memory. */
AVX512_FN static int attn_prefill16(const float *q, int64_t n_q, int n_head, int d, const uint16_t *k16, const uint16_t *v16t, int64_t n_ctx,
                          int64_t n_kv, int n_head_kv, int dv, const float *mask, float scale, float softcap, float *out,
                          int n_threads) {
    const int rep = n_head / n_head_kv;
    const int64_t n_pad = (n_kv + 15) / 16 * 16, n_up = (n_kv + 63) / 64 * 64;
    const int64_t n_tiles = (n_q + 3) / 4, n_items = n_tiles * n_head;
    const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
    int err = 0;
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (n_threads > 1)
    {
        float *qf = malloc(sizeof(float) * (size_t)(4 * d)), *w = malloc(sizeof(float) * (size_t)(4 * n_pad));
        float *pf = calloc((size_t)(4 * n_up), sizeof(float)); /* zeros past n_kv */
        if (!qf || !w || !pf) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; it++) {
            if (!qf || !w || !pf) continue;
            const int h = (int)(it % n_head), hk = h / rep;
            const int64_t t0 = (n_tiles - 1 - it / n_head) * 4; /* latest rows first */
            const int nt = n_q - t0 < 4 ? (int)(n_q - t0) : 4;
            int64_t jlo[4], jhi[4], JLO = n_kv, JHI = 0;
            for (int i = 0; i < 4; i++) {
                const int64_t t = t0 + (i < nt ? i : 0); /* a short tile repeats its first row */
                f16_round_row(q + (t * n_head + h) * d, qf + i * d, d);
                const float *mt = mask + t * n_kv;
                jlo[i] = 0, jhi[i] = n_kv;
                while (jlo[i] < n_kv && mt[jlo[i]] == -INFINITY) jlo[i]++;
                while (jhi[i] > jlo[i] && mt[jhi[i] - 1] == -INFINITY) jhi[i]--;
                if (jlo[i] < JLO) JLO = jlo[i];
                if (jhi[i] > JHI) JHI = jhi[i];
                float *wi = w + i * n_pad;
                for (int64_t j = 0; j < n_pad; j++) wi[j] = -INFINITY; /* masked cells and llama.cpp's padding */
            }
            /* K·q for the keys some row sees, four at a time (past n_kv: the last key again, unused) */
            for (int64_t j0 = JLO; j0 < JHI; j0 += 4) {
                const uint16_t *kb[4];
                for (int k = 0; k < 4; k++) kb[k] = k16 + ((j0 + k < n_kv ? j0 + k : n_kv - 1) * n_head_kv + hk) * d;
                const __m512 sv = dot4x4_f16(qf, d, kb, d); /* lane 4i + k: row i, key j0 + k */
                if (softcap == 0.0f && j0 + 4 <= JHI) { /* x·scale + mask, −inf where masked, four keys a row */
                    __m512 m = _mm512_undefined_ps();
                    for (int i = 0; i < 4; i++)
                        m = _mm512_insertf32x4(m, _mm_loadu_ps(mask + (t0 + (i < nt ? i : 0)) * n_kv + j0), i);
                    const __m512 x = _mm512_add_ps(_mm512_mul_ps(sv, _mm512_set1_ps(scale)), m);
                    const __m512 r = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ),
                                                        _mm512_set1_ps(-INFINITY));
                    for (int i = 0; i < 4; i++) _mm_storeu_ps(w + i * n_pad + j0, _mm512_extractf32x4_ps(r, i));
                    continue;
                }
                float s[16];
                _mm512_storeu_ps(s, sv);
                for (int i = 0; i < 4; i++) {
                    const float *mt = mask + (t0 + (i < nt ? i : 0)) * n_kv;
                    for (int k = 0; k < 4 && j0 + k < JHI; k++) {
                        const int64_t j = j0 + k;
                        if (mt[j] == -INFINITY) continue;
                        float x = s[4 * i + k];
                        if (softcap > 0.0f) x = tanhf(x * inv_cap) * softcap;
                        w[i * n_pad + j] = x * scale + mt[j];
                    }
                }
            }
            int64_t s0[4], s1[4], S0 = n_up, S1 = 0;
            for (int i = 0; i < 4; i++) {
                softmax16_row(w + i * n_pad, n_pad);
                f16_round_row(w + i * n_pad, pf + i * n_up, n_pad); /* past n_kv: −inf's exp, zero */
                s0[i] = jlo[i] / 16 * 16, s1[i] = (jhi[i] + 15) / 16 * 16 < n_up ? (jhi[i] + 15) / 16 * 16 : n_up;
                if (s1[i] > s0[i]) {
                    if (s0[i] < S0) S0 = s0[i];
                    if (s1[i] > S1) S1 = s1[i];
                }
            }
            /* V·p, four V rows at a time */
            for (int e0 = 0; e0 < dv; e0 += 4) {
                const uint16_t *vb[4];
                for (int k = 0; k < 4; k++) vb[k] = v16t + ((int64_t)hk * dv + e0 + k) * n_ctx;
                float o[16];
                if (S1 > S0) _mm512_storeu_ps(o, dot4x4_f16_range(pf, n_up, vb, S0, S1));
                for (int i = 0; i < nt; i++) {
                    float *ot = out + ((t0 + i) * n_head + h) * dv + e0;
                    for (int k = 0; k < 4; k++) ot[k] = s1[i] > s0[i] ? o[4 * i + k] : 0.0f;
                }
            }
        }
        free(qf), free(w), free(pf);
    }
    return err ? -1 : 0;
}
#endif
