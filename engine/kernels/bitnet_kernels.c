/* bitnet.cpp's CPU arithmetic (its llama.cpp fork, ggml of about October 2024), for faithful mode on
 * I2_S models. Included at the end of qkernels.c: it reuses the F16 dot products, the softmax and the
 * half-float tables there.
 *
 * I2_S matmul (fork ggml.c mul_mat, I2_S branch; ggml-quants.c quantize_row_i8_s;
 * ggml-bitnet-mad.cpp ggml_vec_dot_i2_i8_s):
 *   per activation row x (K floats):  m = max(1e-5, max|x|) in double, s = (float)(127/m),
 *       a = clamp(nearest_int(x·s), −128, 127), sum_a = Σ a (int32); nearest_int adds 1.5·2²³ and
 *       the build (GCC, -march=native, contraction on) fuses x·s into that add: the product is not
 *       rounded first, so x·s = 51.4999999 gives 51 where a rounded product (51.5) would give 52
 *   per weight row:  d = Σ code·a, code = t + 1 ∈ {0, 1, 2}, summed as the AVX2 kernel sums it:
 *       16 int16 lanes (lane l of each 32-element group takes elements 2l, 2l+1 of its 4 groups),
 *       wrapping modulo 2¹⁶, over runs of up to 32 blocks of 128, each run's lanes then added in int32
 *   y = ((float)d − (float)sum_a) / s · scale_w      (float, left to right; scale_w one per tensor)
 *
 * F16 weights × f32 activations (the tied lm_head): the fork's llamafile_sgemm takes an F16 A with
 * an F32 B (current llama.cpp wants an F16 B there) for two or more activation rows when the dot
 * length divides by the SIMD width: one accumulator of `lanes` floats, then hsum, the activations
 * NOT rounded; one row goes through ggml_vec_dot_f16 with the activations rounded to F16.
 *
 * Attention (fork src/llama.cpp llm_build_kqv, no flash attention, F16 cache): the attended KV length
 * is n_kv = min(n_ctx, max(32, pad32(cells))) (llama_kv_cache_get_padding: 32). K·Q: q is permuted,
 * so never contiguous: always ggml_vec_dot_f16 with q rounded to F16. V·P: the probabilities are
 * contiguous F32, so with two or more query rows tinyBLAS takes it with them unrounded (n_kv is a
 * multiple of 16); one query row goes through ggml_vec_dot_f16 over the n_kv cells, probabilities
 * rounded to F16 — whole 4·lanes steps in vectors, the rest in double. */

static inline int i2s_nearest_int(float x, float s) { /* nearest_int(x·s) as compiled: one fused rounding */
    float v = fmaf(x, s, 12582912.f);
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

void cv_i2s_quantize_acts(const float *X, int64_t n_tok, int64_t K, int8_t *q, float *scales, int32_t *sums) {
    for (int64_t t = 0; t < n_tok; t++) {
        const float *x = X + t * K;
        double m = 0.00001;
        for (int64_t i = 0; i < K; i++) m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
        const float s = (float)(127 / m);
        int32_t sum = 0;
        for (int64_t i = 0; i < K; i++) {
            int v = i2s_nearest_int(x[i], s);
            v = v > 127 ? 127 : v < -128 ? -128 : v;
            sum += v;
            q[t * K + i] = (int8_t)v;
        }
        scales[t] = s, sums[t] = sum;
    }
}

/* Σ code·a for one weight row (K/4 code bytes) with the AVX2 kernel's int16 lanes */
static int32_t i2s_dot_portable(const uint8_t *w, const int8_t *a, int64_t K) {
    const int64_t nb = K / 128;
    int32_t total = 0;
    for (int64_t b0 = 0; b0 < nb; b0 += 32) {
        uint16_t lane[16] = {0};
        for (int64_t b = b0; b < nb && b < b0 + 32; b++) {
            const uint8_t *wb = w + b * 32;
            const int8_t *ab = a + b * 128;
            for (int g = 0; g < 4; g++)
                for (int l = 0; l < 16; l++) {
                    const int c0 = (wb[2 * l] >> (6 - 2 * g)) & 3, c1 = (wb[2 * l + 1] >> (6 - 2 * g)) & 3;
                    lane[l] = (uint16_t)(lane[l] + (uint16_t)(c0 * ab[32 * g + 2 * l] + c1 * ab[32 * g + 2 * l + 1]));
                }
        }
        for (int l = 0; l < 16; l++) total += (int16_t)lane[l];
    }
    return total;
}

#if defined(__x86_64__) && defined(__GNUC__)
AVX2_FN static int32_t i2s_dot_avx2(const uint8_t *w, const int8_t *a, int64_t K) {
    const int64_t nb = K / 128;
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int64_t b0 = 0; b0 < nb; b0 += 32) {
        __m256i run = _mm256_setzero_si256(); /* 16 int16 lanes, wrapping */
        for (int64_t b = b0; b < nb && b < b0 + 32; b++) {
            const __m256i codes = _mm256_loadu_si256((const __m256i *)(w + b * 32));
            for (int g = 0; g < 4; g++) {
                const __m256i c = _mm256_and_si256(_mm256_srli_epi16(codes, 6 - 2 * g), mask);
                const __m256i y = _mm256_loadu_si256((const __m256i *)(a + b * 128 + 32 * g));
                run = _mm256_add_epi16(run, _mm256_maddubs_epi16(c, y));
            }
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(run, ones));
    }
    int32_t v[8];
    _mm256_storeu_si256((__m256i *)v, acc);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
#endif

int32_t cv_i2s_dot(const uint8_t *w, const int8_t *a, int64_t K) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) return i2s_dot_avx2(w, a, K);
#endif
    return i2s_dot_portable(w, a, K);
}

/* W: the I2_S tensor (N rows of K; codes then the f32 scale at byte N·K/4); q, scales, sums from
 * cv_i2s_quantize_acts; Y row t at Y + t·ldy */
int cv_i2s_matmul(const uint8_t *W, int64_t N, int64_t K, const int8_t *q, const float *scales, const int32_t *sums, int64_t n_tok,
                  float *Y, int64_t ldy, int n_threads) {
    if (K <= 0 || K % 128 || N < 0 || n_tok < 0 || ldy < N) return -1;
    float sw;
    memcpy(&sw, W + N * K / 4, 4);
    const int use_avx2 = have_avx2();
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < N; r++)
        for (int64_t t = 0; t < n_tok; t++) {
#if defined(__x86_64__) && defined(__GNUC__)
            const int32_t d = use_avx2 ? i2s_dot_avx2(W + r * K / 4, q + t * K, K) : i2s_dot_portable(W + r * K / 4, q + t * K, K);
#else
            const int32_t d = i2s_dot_portable(W + r * K / 4, q + t * K, K);
#endif
            const float tmp = (float)d;
            Y[t * ldy + r] = (tmp - (float)sums[t]) / scales[t] * sw;
        }
    return 0;
}

/* tinyBLAS with an F16 A and an F32 B: one accumulator of `lanes` floats, then hsum */
CV_CLONES static float dot_f16_f32_tiny(const uint16_t *x, const float *y, int64_t n, int lanes) {
    float acc[16] = {0};
    for (int64_t i = 0; i + lanes <= n; i += lanes)
        for (int l = 0; l < lanes; l++) acc[l] = fmaf(h2f_tab[x[i + l]], y[i + l], acc[l]);
    return lanes == 16 ? hsum16_tree(acc) : hsum8_movehl(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
AVX512_FN static float dot16_f16_f32(const uint16_t *x, const float *y, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))), _mm512_loadu_ps(y + i), acc);
    return hsum16_vec(acc);
}
#endif

static float dot_f16_f32(const uint16_t *x, const float *y, int64_t n, int lanes) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (lanes == 16 && vec_ok(16)) return dot16_f16_f32(x, y, n);
#endif
    return dot_f16_f32_tiny(x, y, n, lanes);
}

/* the fork's mul_mat with an F16 weight: W (n_rows, n_cols) fp16, X (n_tok, n_cols) f32 */
int cv_bitnet_matmul_f16(const uint16_t *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                         int lanes, int n_threads) {
    if (n_rows < 0 || n_cols <= 0 || n_tok < 0 || ldy < n_rows || (lanes != 0 && lanes != 8 && lanes != 16)) return -1;
    h2f_table_init();
    const int tiny = lanes > 0 && n_tok >= 2 && n_cols % lanes == 0;
    uint16_t *x16 = NULL;
    if (!tiny) {
        x16 = malloc((size_t)(n_tok * n_cols) * sizeof *x16);
        if (!x16 && n_tok) return -1;
        for (int64_t i = 0; i < n_tok * n_cols; i++) x16[i] = f2h(X[i]);
    }
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++)
            Y[t * ldy + r] = tiny ? dot_f16_f32(W + r * n_cols, X + t * n_cols, n_cols, lanes)
                                  : dot_f16(W + r * n_cols, x16 + t * n_cols, n_cols, lanes, 0, 0);
    free(x16);
    return 0;
}

/* the fork's attended KV length for `cells` used cells (llama_kv_cache_update's kv_self.n) */
int64_t cv_bitnet_n_kv(int64_t cells, int64_t n_ctx) {
    int64_t n = (cells + 31) / 32 * 32;
    n = n < 32 ? 32 : n;
    return n < n_ctx ? n : n_ctx;
}

/* as cv_attention_f16 (same layout), with the fork's routes above; n_kv is the number of cells in
 * use (the mask's width); cells in [n_kv, the padded length) get probability 0 */
int cv_attention_f16_bitnet(const float *q, int64_t n_q, int n_head, int d, const uint16_t *k16, const uint16_t *v16t,
                            int64_t n_ctx, int64_t n_kv, int n_head_kv, int dv, const float *mask, float scale, int lanes,
                            float *out, int n_threads) {
    if (lanes != 0 && lanes != 8 && lanes != 16) return -1;
    if (n_head % n_head_kv || n_kv > n_ctx || n_kv < 1) return -1;
    h2f_table_init();
    const int rep = n_head / n_head_kv;
    const int64_t n_pad = cv_bitnet_n_kv(n_kv, n_ctx);
    const int tiny_kqv = lanes && n_q >= 2 && n_pad % lanes == 0;
    int err = 0;
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) schedule(static) if (n_threads > 1)
    for (int h = 0; h < n_head; h++) {
        const int hk = h / rep;
        uint16_t *q16 = malloc(sizeof(uint16_t) * (size_t)d);
        uint16_t *p16 = calloc((size_t)n_pad, sizeof(uint16_t));
        float *w = malloc(sizeof(float) * (size_t)n_pad);
        if (!q16 || !p16 || !w) {
            err = 1;
        } else {
            for (int64_t t = 0; t < n_q; t++) {
                const float *qt = q + (t * n_head + h) * d;
                for (int i = 0; i < d; i++) q16[i] = f2h(qt[i]);
                for (int64_t j = 0; j < n_kv; j++) w[j] = dot_f16(k16 + (j * n_head_kv + hk) * d, q16, d, lanes, 0, 0);
                const float *mt = mask + t * n_kv;
                for (int64_t j = 0; j < n_kv; j++) w[j] = w[j] * scale + mt[j];
                for (int64_t j = n_kv; j < n_pad; j++) w[j] = -INFINITY;
                softmax_lanes(w, n_pad, lanes);
                float *ot = out + (t * n_head + h) * dv;
                if (tiny_kqv) {
                    for (int64_t j = n_kv; j < n_pad; j++) w[j] = 0.0f;
                    for (int e = 0; e < dv; e++) ot[e] = dot_f16_f32(v16t + ((int64_t)hk * dv + e) * n_ctx, w, n_pad, lanes);
                } else {
                    for (int64_t j = 0; j < n_kv; j++) p16[j] = f2h(w[j]);
                    for (int e = 0; e < dv; e++) ot[e] = dot_f16(v16t + ((int64_t)hk * dv + e) * n_ctx, p16, n_pad, lanes, 0, 0);
                }
            }
        }
        free(q16), free(p16), free(w);
    }
    return err ? -1 : 0;
}
