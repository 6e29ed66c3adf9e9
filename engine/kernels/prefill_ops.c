/* The per-row ops of a batched forward pass (prefill) in ggml's arithmetic, threaded over rows —
 * included by qkernels.c after rope_row. The numpy versions in engine/ops.py compute the same
 * formulas; these follow ggml-cpu's loops exactly (rms_norm's double sum in element order) and run
 * where the kernels are built (faithful mode, engine/weights.py NativeWeights).
 *
 * rms_norm (ops.cpp ggml_compute_forward_rms_norm_f32): sum += (double)(x·x) element by element,
 *   mean = (float)(sum / n), scale = 1.0f / sqrtf(mean + eps), y = x·scale, then y·w (ggml_mul).
 *   With AVX-512 eight rows go side by side, one double lane each (an 8 × 8 transpose feeds them),
 *   so every row keeps its one sequential chain.
 * rope: rope_row's pairs (rotate_pairs as compiled: fused in whole vectors, unfused past them) for
 *   every token row with its own cos/sin row, then an optional ·scale (gemma's ggml_scale of q). */

#if defined(__x86_64__) && defined(__GNUC__)
#define AVX512_OPS_FN __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))

/* 8 × 8 floats (m[i] row i) transposed in place */
AVX512_OPS_FN static inline void tr8x8_ps(__m256 *m) {
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(m[i], m[i + 1]), t[i + 1] = _mm256_unpackhi_ps(m[i], m[i + 1]);
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44), s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44), s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) m[k] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x20), m[k + 4] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x31);
}

/* Σ (double)(x·x) of eight rows (x + r·ld), each in element order, n % 8 == 0 */
AVX512_OPS_FN static void sumsq8(const float *const *x, int64_t n, double *out) {
    __m512d acc = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 m[8];
        for (int r = 0; r < 8; r++) m[r] = _mm256_loadu_ps(x[r] + i);
        tr8x8_ps(m); /* m[c]: element i + c of each row */
        for (int c = 0; c < 8; c++) acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_mul_ps(m[c], m[c])));
    }
    _mm512_storeu_pd(out, acc);
}
#endif

/* y (n_rows × n, contiguous) = rms_norm of the rows of x: row (t, s) at x + t·ldx + s·n for t < n_tok,
 * s < n_sub (n_rows = n_tok·n_sub); w (n) or NULL */
int cv_rms_norm_rows(const float *x, int64_t ldx, int64_t n_tok, int64_t n_sub, int64_t n, const float *w, float eps, float *y,
                     int n_threads) {
    if (n <= 0 || n_tok < 0 || n_sub < 1 || ldx < n_sub * n) return -1;
    const int64_t n_rows = n_tok * n_sub, n_groups = (n_rows + 7) / 8;
#if defined(__x86_64__) && defined(__GNUC__)
    const int vec = n % 8 == 0 && vec_ok(16);
#else
    const int vec = 0;
#endif
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_groups > 1)
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t r0 = 8 * g, nr = n_rows - r0 < 8 ? n_rows - r0 : 8;
        const float *xr[8];
        double sum[8];
        for (int r = 0; r < 8; r++) {
            const int64_t row = r0 + (r < nr ? r : 0);
            xr[r] = x + (row / n_sub) * ldx + (row % n_sub) * n;
        }
#if defined(__x86_64__) && defined(__GNUC__)
        if (vec) sumsq8(xr, n, sum);
#endif
        for (int r = 0; r < nr; r++) {
            if (!vec) {
                sum[r] = 0.0;
                for (int64_t i = 0; i < n; i++) sum[r] += (double)(xr[r][i] * xr[r][i]);
            }
            const float mean = (float)(sum[r] / (double)n);
            const float scale = 1.0f / sqrtf(mean + eps);
            float *yr = y + (r0 + r) * n;
            for (int64_t i = 0; i < n; i++) yr[i] = xr[r][i] * scale;
            if (w)
                for (int64_t i = 0; i < n; i++) yr[i] = yr[i] * w[i];
        }
    }
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* rope_row compiled with FMA and AVX-512 (fmaf a vfmadd, the loops vectorised: the same operations per pair) */
AVX512_OPS_FN static void rope_row_fma(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs, const float *sn) {
    const int per_vec = rope_vec_pairs[neox ? 1 : 0], fused = n_rot / 2 / per_vec * per_vec, half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        if (neox) {
            float *a = v, *b = v + half;
            for (int i = 0; i < fused; i++) {
                const float x0 = a[i], x1 = b[i];
                a[i] = fmaf(x0, cs[i], -(x1 * sn[i]));
                b[i] = fmaf(x0, sn[i], x1 * cs[i]);
            }
            for (int i = fused; i < half; i++) {
                const float x0 = a[i], x1 = b[i];
                const float p = x0 * cs[i], q = x1 * sn[i], r = x0 * sn[i], s = x1 * cs[i];
                a[i] = p - q, b[i] = r + s;
            }
        } else {
            for (int i = 0; i < fused; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = fmaf(x0, cs[i], -(x1 * sn[i]));
                v[2 * i + 1] = fmaf(x0, sn[i], x1 * cs[i]);
            }
            for (int i = fused; i < half; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1];
                const float p = x0 * cs[i], q = x1 * sn[i], r = x0 * sn[i], s = x1 * cs[i];
                v[2 * i] = p - q, v[2 * i + 1] = r + s;
            }
        }
    }
}
#endif

/* y = rope(x) for n_tok rows of n_heads × head_dim (x row t at x + t·ldx, y row t at y + t·ldy; x == y
 * in place), cos/sin row t at cs/sn + t·n_rot/2; then y·scale unless scale == 1 */
int cv_rope_rows(const float *x, int64_t ldx, float *y, int64_t ldy, int64_t n_tok, int n_heads, int head_dim, int n_rot, int neox,
                 const float *cs, const float *sn, float scale, int n_threads) {
    if (n_rot > head_dim || n_rot % 2 || ldx < (int64_t)n_heads * head_dim || ldy < (int64_t)n_heads * head_dim) return -1;
    const int64_t nh = (int64_t)n_heads * head_dim;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1 && n_tok > 1)
    for (int64_t t = 0; t < n_tok; t++) {
        float *yt = y + t * ldy;
        if (yt != x + t * ldx) memcpy(yt, x + t * ldx, sizeof(float) * (size_t)nh);
#if defined(__x86_64__) && defined(__GNUC__)
        if (vec_ok(16)) rope_row_fma(yt, n_heads, head_dim, n_rot, neox, cs + t * (n_rot / 2), sn + t * (n_rot / 2));
        else
#endif
            rope_row(yt, n_heads, head_dim, n_rot, neox, cs + t * (n_rot / 2), sn + t * (n_rot / 2));
        if (scale != 1.0f)
            for (int64_t i = 0; i < nh; i++) yt[i] = yt[i] * scale;
    }
    return 0;
}

/* a batch's keys and values into llama.cpp's F16 cache layout (ggml_cpy to F16: round to nearest even):
 * k row t (n_head_kv × d floats at k + t·ldk) → kc row p0 + t; v row t (n_head_kv × dv at v + t·ldv) →
 * vct[(h·dv + e)·n_ctx + p0 + t] (V transposed) */
int cv_kv_store_f16(const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t n, int n_head_kv, int d, int dv, uint16_t *kc,
                    uint16_t *vct, int64_t n_ctx, int64_t p0) {
    const int64_t nk = (int64_t)n_head_kv * d, nv = (int64_t)n_head_kv * dv;
    if (p0 < 0 || p0 + n > n_ctx || ldk < nk || ldv < nv) return -1;
    uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)(n * nv > 0 ? n * nv : 1));
    if (!tmp) return -1;
    for (int64_t t = 0; t < n; t++) {
        f2h_row(k + t * ldk, kc + (p0 + t) * nk, nk);
        f2h_row(v + t * ldv, tmp + t * nv, nv);
    }
    for (int64_t i = 0; i < nv; i++) /* each cache row of V written front to back */
        for (int64_t t = 0; t < n; t++) vct[i * n_ctx + p0 + t] = tmp[t * nv + i];
    free(tmp);
    return 0;
}
