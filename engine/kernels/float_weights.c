/* F32 and BF16 weights with ggml-cpu's arithmetic (included by qkernels.c after cv_matmul_f16; its
 * hsum16_tree, hsum8_movehl, hsum8_hadd, vec_ok and AVX512_FN / AVX2_FN are used here).
 *
 * ggml-cpu's mul_mat (ggml-cpu.c ggml_compute_forward_mul_mat) with an F32 or BF16 src0:
 *   F32: the activations stay F32 (vec_dot_type F32). Two or more activation rows go to llamafile's
 *     tinyBLAS when the row count is a multiple of 4 and the dot length of the SIMD width
 *     (llamafile/sgemm.cpp: one accumulator of `lanes` floats per output, fused multiply-adds, then
 *     hsum); otherwise ggml_vec_dot_f32 (vec.cpp: four accumulators over steps of 4·lanes, reduced
 *     (0+2, 1+3, 0+1) and summed, the tail added in float as the compiler vectorises it: see f32_tail).
 *   BF16: the activations are rounded to BF16 (vec_dot_type BF16; ggml_compute_fp32_to_bf16: round
 *     to nearest even, NaN kept quiet). With AVX512-BF16 (bf16dot = 1) tinyBLAS steps 32 values
 *     through one vdpbf16ps accumulator and ggml_vec_dot_bf16 steps 64 through two, each reduced by
 *     _mm512_reduce_add_ps into a double, the tail summed in double; without it tinyBLAS loads BF16
 *     as F32 (16 or 8 lanes, FMA) and ggml_vec_dot_bf16 multiplies and adds in 2 (AVX-512F) or 4
 *     (AVX2) accumulators of `lanes` floats over steps of 32 — a multiply and add that GCC, which
 *     builds ggml-cpu, contracts to an FMA — reduced as its code does.
 */

/* ggml_vec_dot_f32's tail (i..n), `sumf += x[i]*y[i]` in float as GCC vectorises it in the -march=native
 * build: products of w at a time rounded and added one by one while w are left, then once w/2 of them,
 * the last 0…w/2−1 fused (FMA). The vector width w is the compiler's: 8 in an AVX-512 Intel host's build
 * (GCC prefers 256-bit vectors there), 16 in a Zen 4 host's; cv_set_f32_tail sets it, crossval measures
 * the loaded libggml-cpu's (crossval/libggml.py f32_tail_width). */
static int f32_tail_w = 8;

int cv_set_f32_tail(int w) {
    if (w != 4 && w != 8 && w != 16) return -1;
    f32_tail_w = w;
    return 0;
}

int cv_f32_tail(void) { return f32_tail_w; }

static inline float f32_tail(const float *x, const float *y, int64_t i, int64_t n, float s) {
    const int w = f32_tail_w;
    if (n - i >= w)
        for (; i + w <= n; i += w)
            for (int l = 0; l < w; l++) s += x[i + l] * y[i + l];
    if (n - i >= w / 2) {
        for (int l = 0; l < w / 2; l++) s += x[i + l] * y[i + l];
        i += w / 2;
    }
    for (; i < n; i++) s = fmaf(x[i], y[i], s);
    return s;
}

static inline float bf2f(uint16_t h) { return bits_f((uint32_t)h << 16); }

/* ggml_compute_fp32_to_bf16 */
static inline uint16_t f2bf(float f) {
    const uint32_t u = f_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- F32: portable versions (the same lanes, one at a time) ------------------------------------ */
static float dot_f32_vecdot_c(const float *x, const float *y, int64_t n, int lanes) {
    if (!lanes) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += (double)(x[i] * y[i]);
        return (float)s;
    }
    const int step = 4 * lanes;
    float acc[4][16] = {{0}};
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < lanes; l++) acc[j][l] = fmaf(x[i + j * lanes + l], y[i + j * lanes + l], acc[j][l]);
    for (int l = 0; l < lanes; l++) acc[0][l] += acc[2][l], acc[1][l] += acc[3][l];
    for (int l = 0; l < lanes; l++) acc[0][l] += acc[1][l];
    float s = lanes == 16 ? hsum16_tree(acc[0]) : hsum8_hadd(acc[0]);
    return f32_tail(x, y, i, n, s);
}

static float dot_f32_tiny_c(const float *x, const float *y, int64_t n, int lanes) {
    float acc[16] = {0};
    for (int64_t i = 0; i + lanes <= n; i += lanes)
        for (int l = 0; l < lanes; l++) acc[l] = fmaf(x[i + l], y[i + l], acc[l]);
    return lanes == 16 ? hsum16_tree(acc) : hsum8_movehl(acc);
}

/* ---- BF16: portable versions of the paths without AVX512-BF16 ---------------------------------- */
static float dot_bf16_vecdot_c(const uint16_t *x, const uint16_t *y, int64_t n, int lanes) {
    double s = 0.0;
    int64_t i = 0;
    if (lanes) {
        const int nacc = lanes == 16 ? 2 : 4; /* AVX-512F: c1, c2 of 16; AVX2: c1..c4 of 8; steps of 32 */
        float acc[4][16] = {{0}};
        for (; i + 32 <= n; i += 32)
            for (int j = 0; j < nacc; j++)
                for (int l = 0; l < lanes; l++) acc[j][l] = fmaf(bf2f(x[i + j * lanes + l]), bf2f(y[i + j * lanes + l]), acc[j][l]);
        if (lanes == 16) {
            s += (double)hsum16_tree(acc[0]);
            s += (double)hsum16_tree(acc[1]);
        } else {
            float c[8];
            for (int l = 0; l < 8; l++) c[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
            s += (double)hsum8_movehl(c);
        }
    }
    for (; i < n; i++) s += (double)(bf2f(x[i]) * bf2f(y[i]));
    return (float)s;
}

static float dot_bf16_tiny_c(const uint16_t *x, const uint16_t *y, int64_t n, int lanes) {
    float acc[16] = {0};
    for (int64_t i = 0; i + lanes <= n; i += lanes)
        for (int l = 0; l < lanes; l++) acc[l] = fmaf(bf2f(x[i + l]), bf2f(y[i + l]), acc[l]);
    return lanes == 16 ? hsum16_tree(acc) : hsum8_movehl(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* ---- the same with vector instructions, lane for lane ------------------------------------------ */
AVX512_FN static float dot_f32_16(const float *x, const float *y, int64_t n, int tiny) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const int step = tiny ? 16 : 64, nacc = tiny ? 1 : 4;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < nacc; j++) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16 * j), _mm512_loadu_ps(y + i + 16 * j), acc[j]);
    if (!tiny) {
        acc[0] = _mm512_add_ps(acc[0], acc[2]), acc[1] = _mm512_add_ps(acc[1], acc[3]);
        acc[0] = _mm512_add_ps(acc[0], acc[1]);
    }
    float s = hsum16_vec(acc[0]);
    return f32_tail(x, y, i, n, s);
}

AVX2_FN static float dot_f32_8(const float *x, const float *y, int64_t n, int tiny) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const int step = tiny ? 8 : 32, nacc = tiny ? 1 : 4;
    int64_t i = 0;
    for (; i + step <= n; i += step)
        for (int j = 0; j < nacc; j++) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * j), _mm256_loadu_ps(y + i + 8 * j), acc[j]);
    float a[8];
    if (!tiny) {
        acc[0] = _mm256_add_ps(acc[0], acc[2]), acc[1] = _mm256_add_ps(acc[1], acc[3]);
        acc[0] = _mm256_add_ps(acc[0], acc[1]);
    }
    _mm256_storeu_ps(a, acc[0]);
    float s = tiny ? hsum8_movehl(a) : hsum8_hadd(a);
    return f32_tail(x, y, i, n, s);
}

#define AVX512BF16_FN __attribute__((target("avx512f,avx512dq,avx512bw,avx512bf16,avx2,fma,f16c")))

/* tinyBLAS<32, __m512, __m512bh> (tiny = 1): one vdpbf16ps accumulator over steps of 32, then
 * _mm512_reduce_add_ps; ggml_vec_dot_bf16 (tiny = 0): two over steps of 64, each reduced into a
 * double, the tail in double */
AVX512BF16_FN static float dot_bf16_dp(const uint16_t *x, const uint16_t *y, int64_t n, int tiny) {
    __m512 c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    int64_t i = 0;
    if (tiny) {
        for (; i + 32 <= n; i += 32)
            c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
        return hsum16_vec(c1);
    }
    for (; i + 64 <= n; i += 64) {
        c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
        c2 = _mm512_dpbf16_ps(c2, (__m512bh)_mm512_loadu_si512(x + i + 32), (__m512bh)_mm512_loadu_si512(y + i + 32));
    }
    double s = (double)hsum16_vec(c1);
    s += (double)hsum16_vec(c2);
    for (; i < n; i++) s += (double)(bf2f(x[i]) * bf2f(y[i]));
    return (float)s;
}

/* the one-row dots (tiny = 0) of four weight rows (ldw apart) against one activation row: each row
 * keeps its own chains, in dot_f32_16's / dot_bf16_dp's order; the activation loads are shared */
AVX512_FN static void dot4r_f32_16(const float *w, int64_t ldw, const float *x, int64_t n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 xv[4];
        for (int j = 0; j < 4; j++) xv[j] = _mm512_loadu_ps(x + i + 16 * j);
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * ldw + i + 16 * j), xv[j], acc[r][j]);
    }
    for (int r = 0; r < 4; r++) {
        const __m512 a = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][2]), _mm512_add_ps(acc[r][1], acc[r][3]));
        out[r] = f32_tail(w + r * ldw, x, i, n, hsum16_vec(a));
    }
}

AVX512BF16_FN static void dot4r_bf16_dp(const uint16_t *w, int64_t ldw, const uint16_t *x, int64_t n, float *out) {
    __m512 c1[4], c2[4];
    for (int r = 0; r < 4; r++) c1[r] = c2[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512bh x1 = (__m512bh)_mm512_loadu_si512(x + i), x2 = (__m512bh)_mm512_loadu_si512(x + i + 32);
        for (int r = 0; r < 4; r++) {
            c1[r] = _mm512_dpbf16_ps(c1[r], (__m512bh)_mm512_loadu_si512(w + r * ldw + i), x1);
            c2[r] = _mm512_dpbf16_ps(c2[r], (__m512bh)_mm512_loadu_si512(w + r * ldw + i + 32), x2);
        }
    }
    for (int r = 0; r < 4; r++) {
        double s = (double)hsum16_vec(c1[r]);
        s += (double)hsum16_vec(c2[r]);
        for (int64_t k = i; k < n; k++) s += (double)(bf2f(w[r * ldw + k]) * bf2f(x[k]));
        out[r] = (float)s;
    }
}

/* tinyBLAS's dots (tiny = 1: one accumulator per output over the whole length, then hsum) for four
 * weight rows × nt ≤ 4 activation rows at once; out[4·t + r] */
AVX512_FN static void tile4_f32_16(const float *w, int64_t ldw, const float *x, int64_t ldx, int nt, int64_t n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m512 xv[4];
        for (int t = 0; t < nt; t++) xv[t] = _mm512_loadu_ps(x + t * ldx + i);
        for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_loadu_ps(w + r * ldw + i);
            for (int t = 0; t < nt; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < 4; r++) out[4 * t + r] = hsum16_vec(acc[r][t]);
}

AVX512BF16_FN static void tile4_bf16_dp(const uint16_t *w, int64_t ldw, const uint16_t *x, int64_t ldx, int nt, int64_t n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i + 32 <= n; i += 32) {
        __m512bh xv[4];
        for (int t = 0; t < nt; t++) xv[t] = (__m512bh)_mm512_loadu_si512(x + t * ldx + i);
        for (int r = 0; r < 4; r++) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * ldw + i);
            for (int t = 0; t < nt; t++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < 4; r++) out[4 * t + r] = hsum16_vec(acc[r][t]);
}

static int have_avx512bf16(void) {
    static int c = -1;
    if (c < 0) {
        __builtin_cpu_init();
        c = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") && vec_ok(16);
    }
    return c && simd_override != 0;
}
#else
static int have_avx512bf16(void) { return 0; }
#endif

/* whether the llama.cpp being matched has AVX512-BF16 (ENGINE_GGML_BF16 = 0 / 1 overrides; the default
 * is this CPU's, for a build as wide as the CPU): its BF16 dots are then vdpbf16ps ones */
int cv_ggml_bf16_dot(void) {
    const char *e = getenv("ENGINE_GGML_BF16");
    if (e && *e) return atoi(e) != 0;
    const char *l = getenv("ENGINE_GGML_LANES");
    if (l && *l && atoi(l) != 16) return 0;
    return have_avx512bf16();
}

static float dot_f32(const float *x, const float *y, int64_t n, int lanes, int tiny) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (vec_ok(lanes)) return lanes == 16 ? dot_f32_16(x, y, n, tiny) : dot_f32_8(x, y, n, tiny);
#endif
    return tiny ? dot_f32_tiny_c(x, y, n, lanes) : dot_f32_vecdot_c(x, y, n, lanes);
}

static float dot_bf16(const uint16_t *x, const uint16_t *y, int64_t n, int lanes, int bf16dot, int tiny) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (bf16dot) return dot_bf16_dp(x, y, n, tiny);
#endif
    (void)bf16dot;
    return tiny ? dot_bf16_tiny_c(x, y, n, lanes) : dot_bf16_vecdot_c(x, y, n, lanes);
}

/* one F32 (wtype 0) or BF16 (30) dot as vec_dot (tiny = 0) or tinyBLAS (tiny = 1) sums it (tests) */
float cv_dot_float(int wtype, const void *x, const void *y, int64_t n, int lanes, int bf16dot, int tiny) {
    if (wtype == 0) return dot_f32(x, y, n, lanes, tiny);
    return dot_bf16(x, y, n, lanes, bf16dot, tiny);
}

/* W (n_rows, n_cols) F32 (wtype 0) or BF16 (wtype 30); X (n_tok, n_cols) f32 → Y row t at Y + t·ldy.
 * bf16dot: the build has AVX512-BF16 (cv_ggml_bf16_dot); -1 asks. Returns 0, or -1 on a bad argument. */
int cv_matmul_float(int wtype, const void *W, int64_t n_rows, int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy,
                    int lanes, int bf16dot, int n_threads) {
    if (bf16dot < 0) bf16dot = cv_ggml_bf16_dot();
    if ((wtype != 0 && wtype != 30) || n_rows < 0 || n_cols <= 0 || n_tok < 0 || ldy < n_rows || (lanes != 0 && lanes != 8 && lanes != 16))
        return -1;
    if (wtype == 30 && bf16dot && (lanes != 16 || !have_avx512bf16())) return -1;
    const int kn = wtype == 30 && bf16dot ? 32 : lanes; /* tinyBLAS's step (KN) */
    const int tiny = lanes > 0 && n_tok >= 2 && n_rows % 4 == 0 && n_cols % kn == 0;
    if (n_threads < 1) n_threads = 1;
#if defined(__x86_64__) && defined(__GNUC__)
    /* tinyBLAS four weight rows × four activation rows at a time (prefill; n_rows % 4 == 0 there) */
    if (tiny && lanes == 16 && vec_ok(16) && (wtype == 0 || bf16dot)) {
        uint16_t *xb = NULL;
        if (wtype == 30) {
            if (!(xb = malloc((size_t)(n_tok * n_cols) * sizeof *xb))) return -1;
            for (int64_t i = 0; i < n_tok * n_cols; i++) xb[i] = f2bf(X[i]);
        }
        const int64_t es = wtype == 0 ? 4 : 2;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r += 4) {
            const char *wr = (const char *)W + r * n_cols * es;
            for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
                const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
                float o[16];
                if (wtype == 0) tile4_f32_16((const float *)wr, n_cols, X + t0 * n_cols, n_cols, nt, n_cols, o);
                else tile4_bf16_dp((const uint16_t *)wr, n_cols, xb + t0 * n_cols, n_cols, nt, n_cols, o);
                for (int t = 0; t < nt; t++)
                    for (int k = 0; k < 4; k++) Y[(t0 + t) * ldy + r + k] = o[4 * t + k];
            }
        }
        free(xb);
        return 0;
    }
    /* one-row dots four weight rows at a time (decode): the same per-row order, more loads in flight */
    if (!tiny && lanes == 16 && vec_ok(16) && (wtype == 0 || bf16dot)) {
        uint16_t *xb = NULL;
        if (wtype == 30) {
            if (!(xb = malloc((size_t)(n_tok * n_cols) * sizeof *xb)) && n_tok) return -1;
            for (int64_t i = 0; i < n_tok * n_cols; i++) xb[i] = f2bf(X[i]);
        }
        const int64_t es = wtype == 0 ? 4 : 2, n4 = (n_rows + 3) / 4;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t g = 0; g < n4; g++) {
            const int64_t r = 4 * g;
            const char *wr = (const char *)W + r * n_cols * es;
            for (int64_t o = 0; o < 4 * n_cols * es; o += 64) __builtin_prefetch(wr + 8 * n_cols * es + o);
            for (int64_t t = 0; t < n_tok; t++) {
                float o4[4];
                if (r + 4 <= n_rows) {
                    if (wtype == 0) dot4r_f32_16((const float *)wr, n_cols, X + t * n_cols, n_cols, o4);
                    else dot4r_bf16_dp((const uint16_t *)wr, n_cols, xb + t * n_cols, n_cols, o4);
                } else {
                    for (int64_t k = 0; r + k < n_rows; k++)
                        o4[k] = wtype == 0 ? dot_f32((const float *)wr + k * n_cols, X + t * n_cols, n_cols, lanes, 0)
                                           : dot_bf16((const uint16_t *)wr + k * n_cols, xb + t * n_cols, n_cols, lanes, bf16dot, 0);
                }
                for (int64_t k = 0; k < 4 && r + k < n_rows; k++) Y[t * ldy + r + k] = o4[k];
            }
        }
        free(xb);
        return 0;
    }
#endif
    if (wtype == 0) {
        const float *w = W;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r++) {
            for (int64_t o = 0; o < 4 * n_cols; o += 64) __builtin_prefetch((const char *)(w + (r + 2) * n_cols) + o);
            for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot_f32(w + r * n_cols, X + t * n_cols, n_cols, lanes, tiny);
        }
        return 0;
    }
    uint16_t *xb = malloc((size_t)(n_tok * n_cols) * sizeof *xb);
    if (!xb && n_tok) return -1;
    for (int64_t i = 0; i < n_tok * n_cols; i++) xb[i] = f2bf(X[i]);
    const uint16_t *w = W;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t o = 0; o < 2 * n_cols; o += 64) __builtin_prefetch((const char *)(w + (r + 2) * n_cols) + o);
        for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot_bf16(w + r * n_cols, xb + t * n_cols, n_cols, lanes, bf16dot, tiny);
    }
    free(xb);
    return 0;
}
