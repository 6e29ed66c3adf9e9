/* NVFP4 (ggml type 40) against Q8_0 activations in ggml-cpu's arithmetic (included by qkernels.c after
 * iq_tables.h and mxfp4_kernels.c; block layout from ggml-common.h):
 *
 *   block_nvfp4: d[4] (one UE4M3 byte per 16-value sub-block), qs[32]; value j of sub-block s =
 *   kvalues_mxfp4[low nibble of qs[8s + j]] (j < 8) or [high nibble of qs[8s + j − 8]] (j ≥ 8) — the
 *   E2M1 values doubled, the table MXFP4 uses (ggml's x86 code reads one kvalues_fp4 for both) —
 *   times ggml_ue4m3_to_fp32(d[s]) (ggml-impl.h: 0 for the bytes 0 and 0x7F, else bit 7 ignored,
 *   exponent e = bits 3..6, mantissa m = bits 0..2: m·2^−9 (e = 0) or (1 + m/8)·2^(e−7), then · 0.5).
 *   A 64-value block spans two Q8_0 activation blocks: sub-blocks 0, 1 the first, 2, 3 the second.
 *
 * llama.cpp's route on x86: ggml_vec_dot_nvfp4_q8_0 for every activation row and every row count (no
 * repacked, tinyBLAS, tiled or AMX kernel takes NVFP4; arch/x86/quants.c, AVX2): one 8-lane FMA
 * accumulator over the blocks; per block two FMAs, lanes 0..3 of the first carrying sub-block 0 (lane k:
 * values 4k..4k+3 × activations) and lanes 4..7 sub-block 1, scale s = ue4m3(d[s])·d_a rounded once in
 * scalar; the second FMA the same for sub-blocks 2, 3; hsum_float_8 at the end. No scalar tail.
 * Integer sums are exact however they are formed (|value| ≤ 12: no int16 saturation); the sign trick
 * (|v| · (y with v's sign)) is kept, so even an activation byte of −128 gives llama.cpp's integer. */

#pragma pack(push, 1)
typedef struct { uint8_t d[4]; uint8_t qs[32]; } blk_nvfp4; /* 36 bytes */
#pragma pack(pop)

enum { T_NVFP4 = 40 };

/* ggml_ue4m3_to_fp32 (ggml-cpu's x86 table ggml_table_f32_ue4m3 holds the same values): with the
 * 0.5 folded in, m·2^−10 or (8 + m)·2^(e−11) — exact either way */
static float nvfp4_ue4m3[256];

__attribute__((constructor)) static void nvfp4_init(void) {
    for (int x = 0; x < 256; x++) {
        const int e = (x >> 3) & 15, m = x & 7;
        nvfp4_ue4m3[x] = x == 0 || x == 0x7F ? 0.0f : e == 0 ? ldexpf((float)m, -10) : ldexpf((float)(8 + m), e - 11);
    }
}

/* ---- portable: the AVX2 vec_dot's lanes and accumulator, one value at a time -------------------- */
/* lane k (0..7) of one 32-value half (sub-blocks 2h, 2h + 1) against activations y (32 int8) */
static inline void nvfp4_lanes(const blk_nvfp4 *x, int h, const int8_t *y, int32_t *l) {
    for (int k = 0; k < 8; k++) {
        const int s = 2 * h + k / 4;
        int32_t acc = 0;
        for (int e = 4 * (k % 4); e < 4 * (k % 4) + 4; e++) {
            const uint8_t q = x->qs[8 * s + (e & 7)];
            const int v = cv_kvalues_mxfp4[e < 8 ? q & 15 : q >> 4];
            const int8_t a = y[16 * (k / 4) + e];
            const int8_t sa = v < 0 ? (int8_t)-a : v ? a : 0; /* _mm256_sign_epi8(y, v): −(−128) stays −128 */
            acc += (v < 0 ? -v : v) * sa;
        }
        l[k] = acc;
    }
}

static float dot_nvfp4(const void *vw, const void *va, int nb) {
    const blk_nvfp4 *w = vw;
    const blk_q8_0 *a = va;
    float acc[8] = {0};
    for (int b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            int32_t l[8];
            nvfp4_lanes(&w[b], h, a[2 * b + h].qs, l);
            const float dy = h2f(a[2 * b + h].d);
            const float s0 = nvfp4_ue4m3[w[b].d[2 * h]] * dy, s1 = nvfp4_ue4m3[w[b].d[2 * h + 1]] * dy;
            for (int k = 0; k < 8; k++) acc[k] = fmaf(k < 4 ? s0 : s1, (float)l[k], acc[k]);
        }
    return iq34_hsum8(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define NVFP4_INLINE AVX2_FN static inline __attribute__((always_inline))
#define NVFP4_ATTR512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/* 64 values (int8) of one block as two 32-value halves in the activations' order: sub-block 2h's 16
 * values (low nibbles of its 8 bytes, then high), then sub-block 2h + 1's (ggml's unpacklo/hi_epi64) */
NVFP4_INLINE void nvfp4_values(__m128i kv, const uint8_t *q, __m256i *v01, __m256i *v23) {
    const __m128i m4 = _mm_set1_epi8(0x0f), b01 = _mm_loadu_si128((const __m128i *)q), b23 = _mm_loadu_si128((const __m128i *)(q + 16));
    const __m128i lo01 = _mm_shuffle_epi8(kv, _mm_and_si128(b01, m4)), hi01 = _mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(b01, 4), m4));
    const __m128i lo23 = _mm_shuffle_epi8(kv, _mm_and_si128(b23, m4)), hi23 = _mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(b23, 4), m4));
    *v01 = _mm256_set_m128i(_mm_unpackhi_epi64(lo01, hi01), _mm_unpacklo_epi64(lo01, hi01));
    *v23 = _mm256_set_m128i(_mm_unpackhi_epi64(lo23, hi23), _mm_unpacklo_epi64(lo23, hi23));
}

/* 8 int32 lanes of values v against 32 activations (mul_add_epi8, then madd with ones) */
NVFP4_INLINE __m256i nvfp4_half(__m256i v, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(y, v)), _mm256_set1_epi16(1));
}

/* the per-half scale vector: ue4m3(d[2h]) · d_a in lanes 0..3, ue4m3(d[2h + 1]) · d_a in 4..7 */
NVFP4_INLINE __m256 nvfp4_scales(const blk_nvfp4 *x, int h, float dy) {
    return _mm256_set_m128(_mm_set1_ps(nvfp4_ue4m3[x->d[2 * h + 1]] * dy), _mm_set1_ps(nvfp4_ue4m3[x->d[2 * h]] * dy));
}

/* ggml_vec_dot_nvfp4_q8_0 (AVX2), the `dot` of layout() */
AVX2_FN static float dot_nvfp4_avx2(const void *vw, const void *va, int nb) {
    const blk_nvfp4 *w = vw;
    const blk_q8_0 *a = va;
    const __m128i kv = _mm_loadu_si128((const __m128i *)cv_kvalues_mxfp4);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i v01, v23;
        nvfp4_values(kv, w[b].qs, &v01, &v23);
        const __m256i p1 = nvfp4_half(v01, _mm256_loadu_si256((const __m256i *)a[2 * b].qs));
        const __m256i p2 = nvfp4_half(v23, _mm256_loadu_si256((const __m256i *)a[2 * b + 1].qs));
        acc = _mm256_fmadd_ps(nvfp4_scales(&w[b], 0, _cvtsh_ss(a[2 * b].d)), _mm256_cvtepi32_ps(p1), acc);
        acc = _mm256_fmadd_ps(nvfp4_scales(&w[b], 1, _cvtsh_ss(a[2 * b + 1].d)), _mm256_cvtepi32_ps(p2), acc);
    }
    return hsum8(acc);
}

/* The matmul's kernels, the same chain and products built with fewer instructions: a half's 32 values
 * from its 16 bytes broadcast to both 128-bit lanes, shifted by 0 / 4 bits per lane (srlv), masked and
 * reordered by 64-bit quarters (low nibbles 0..7, high 0..7, low 8..15, high 8..15) before the table
 * lookup; the activations' scales converted once (dya: d_a of each Q8_0 block as float) and each half's
 * scale pair as one vector product (the same rounding as ggml's scalar one). PAIRS: maddubs + madd, or
 * VNNI's dpbusd — the same integers.
 *   rows: Y[r] for rows r0..r1 against one activation row (decode);
 *   dot4: one weight row against nt ≤ 4 activation rows (arow bytes apart, their scales 2·nb apart). */
#define NVFP4_PAIRS_AVX2(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
#define NVFP4_PAIRS_VNNI(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define NVFP4_KERNELS(SFX, ATTR, PAIRS)                                                                                          \
    ATTR static inline __attribute__((always_inline)) __m256i nvfp4_vals_##SFX(__m256i lut, const uint8_t *q) {                \
        const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));                                    \
        const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0f)); \
        return _mm256_shuffle_epi8(lut, _mm256_permute4x64_epi64(nib, 0xd8));                                                  \
    }                                                                                                                           \
    ATTR static inline __attribute__((always_inline)) __m256 nvfp4_sc_##SFX(const uint8_t *d, const float *dy) {                \
        return _mm256_mul_ps(_mm256_set_m128(_mm_broadcast_ss(&nvfp4_ue4m3[d[1]]), _mm_broadcast_ss(&nvfp4_ue4m3[d[0]])),      \
                             _mm256_broadcast_ss(dy));                                                                          \
    }                                                                                                                           \
    ATTR static inline __attribute__((always_inline)) __m256 nvfp4_lanes_##SFX(__m256i v, const int8_t *y) {                   \
        return _mm256_cvtepi32_ps(PAIRS(_mm256_sign_epi8(v, v), _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y), v))); \
    }                                                                                                                           \
    ATTR static float nvfp4_row_##SFX(const blk_nvfp4 *w, const blk_q8_0 *a, const float *dya, int nb) {                       \
        const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)cv_kvalues_mxfp4));                   \
        __m256 acc = _mm256_setzero_ps();                                                                                       \
        for (int b = 0; b < nb; b++) {                                                                                          \
            acc = _mm256_fmadd_ps(nvfp4_sc_##SFX(w[b].d, dya + 2 * b), nvfp4_lanes_##SFX(nvfp4_vals_##SFX(lut, w[b].qs), a[2 * b].qs), acc); \
            acc = _mm256_fmadd_ps(nvfp4_sc_##SFX(w[b].d + 2, dya + 2 * b + 1),                                                 \
                                  nvfp4_lanes_##SFX(nvfp4_vals_##SFX(lut, w[b].qs + 16), a[2 * b + 1].qs), acc);                \
        }                                                                                                                       \
        return hsum8(acc);                                                                                                      \
    }                                                                                                                           \
    ATTR static void nvfp4_rows_##SFX(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, const float *dya, int nb, \
                                      float *Y) {                                                                               \
        for (int64_t r = r0; r < r1; r++) {                                                                                     \
            for (int64_t o = 0; o < wrow; o += 64) __builtin_prefetch(W + (r + 4) * wrow + o);                                  \
            Y[r] = nvfp4_row_##SFX((const blk_nvfp4 *)(W + r * wrow), xq, dya, nb);                                             \
        }                                                                                                                       \
    }                                                                                                                           \
    ATTR static void nvfp4_dot4_##SFX(const void *vw, const void *va, int64_t arow, const float *dya, int nt, int nb, float *out) { \
        const blk_nvfp4 *w = vw;                                                                                                \
        const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)cv_kvalues_mxfp4));                   \
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};                   \
        for (int b = 0; b < nb; b++) {                                                                                          \
            const __m256i v01 = nvfp4_vals_##SFX(lut, w[b].qs), v23 = nvfp4_vals_##SFX(lut, w[b].qs + 16);                      \
            const __m256i u01 = _mm256_sign_epi8(v01, v01), u23 = _mm256_sign_epi8(v23, v23);                                   \
            for (int t = 0; t < nt; t++) {                                                                                      \
                const blk_q8_0 *y = (const blk_q8_0 *)((const char *)va + t * arow) + 2 * b;                                    \
                const float *dy = dya + (int64_t)t * nb * 2 + 2 * b;                                                            \
                const __m256i p1 = PAIRS(u01, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y[0].qs), v01));            \
                const __m256i p2 = PAIRS(u23, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y[1].qs), v23));            \
                acc[t] = _mm256_fmadd_ps(nvfp4_sc_##SFX(w[b].d, dy), _mm256_cvtepi32_ps(p1), acc[t]);                           \
                acc[t] = _mm256_fmadd_ps(nvfp4_sc_##SFX(w[b].d + 2, dy + 1), _mm256_cvtepi32_ps(p2), acc[t]);                   \
            }                                                                                                                   \
        }                                                                                                                       \
        for (int t = 0; t < nt; t++) out[t] = hsum8(acc[t]);                                                                    \
    }
NVFP4_KERNELS(avx2, AVX2_FN, NVFP4_PAIRS_AVX2)
NVFP4_KERNELS(avx512, NVFP4_ATTR512, NVFP4_PAIRS_VNNI)
#endif

/* layout() for NVFP4; unsupported until its value table arrived */
static int nvfp4_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (wt != T_NVFP4 || !cv_iq_ready(TB_KVALUES_FP4)) return -1;
    *be = 64, *bb = 36, *atype = T_Q8_0, *ab = 68;
#if defined(__x86_64__) && defined(__GNUC__)
    *dot = have_avx2() ? dot_nvfp4_avx2 : dot_nvfp4;
#else
    *dot = dot_nvfp4;
#endif
    return 0;
}

/* Y (n_tok × n_rows, stride ldy) = W · xq, every output ggml_vec_dot_nvfp4_q8_0's float: one activation
 * row through the row loop; batches in tiles of tokens whose activations stay in L1, each weight row
 * unpacked once per four tokens; VNNI's dpbusd (AVX-512 VL) where the CPU has it; −1 when out of memory */
static int nvfp4_matmul(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy, int n_threads,
                        dot_fn dot) {
    const int64_t wrow = (int64_t)nb * 36, arow = (int64_t)nb * 68;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        const int wide = vnni_kind() == 2;
        return q8s_matmul(W, wrow, n_rows, nb, 2, xq, n_tok, Y, ldy, n_threads, wide ? nvfp4_rows_avx512 : nvfp4_rows_avx2,
                          wide ? nvfp4_dot4_avx512 : nvfp4_dot4_avx2);
    }
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot((const char *)W + r * wrow, (const char *)xq + t * arow, nb);
    return 0;
}
