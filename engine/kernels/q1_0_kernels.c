/* Q1_0 (ggml type 41) against Q8_0 activations in ggml-cpu's arithmetic (included by qkernels.c; block
 * layout from ggml-common.h):
 *
 *   block_q1_0: d (fp16), qs[16]; value j (0..127) = +d where bit j % 8 of qs[j / 8] is set, −d where
 *   it is clear (dequantize_row_q1_0). A 128-value block spans four Q8_0 activation blocks.
 *
 * llama.cpp's route on x86: ggml_vec_dot_q1_0_q8_0 for every activation row and every row count (its
 * repacked q1_0_4x4 / 4x8 kernels are ARM-only, no tinyBLAS, tiled or AMX kernel takes Q1_0;
 * arch/x86/quants.c, AVX2): per block, each activation sub-block K (0..3) as 8 int32 lanes (lane k: the
 * activations 4k..4k+3 of Q8_0 block 4b + K, negated where the weight bit is clear — xor with the
 * clear-bit mask, minus the mask, so −(−128) stays −128 — summed by maddubs with ones, then madd);
 *   block = d_a0 · float(lanes_0), then block = fma(d_aK, float(lanes_K), block) for K = 1, 2, 3;
 *   acc = fma(d_w, block, acc) block after block; hsum_float_8 at the end. No scalar tail. */

#pragma pack(push, 1)
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q1_0; /* 18 bytes */
#pragma pack(pop)

enum { T_Q1_0 = 41 };

/* ---- portable: the AVX2 vec_dot's lanes and float steps, one value at a time -------------------- */
static inline void q1_0_lanes(const uint8_t *bits, const int8_t *y, int32_t *l) {
    for (int k = 0; k < 8; k++) {
        int32_t s = 0;
        for (int e = 4 * k; e < 4 * k + 4; e++) s += (bits[e / 8] >> (e % 8)) & 1 ? y[e] : (int8_t)-y[e];
        l[k] = s;
    }
}

static float dot_q1_0(const void *vw, const void *va, int nb) {
    const blk_q1_0 *w = vw;
    const blk_q8_0 *a = va;
    float acc[8] = {0};
    for (int b = 0; b < nb; b++) {
        float blk[8] = {0};
        for (int K = 0; K < 4; K++) {
            int32_t l[8];
            q1_0_lanes(w[b].qs + 4 * K, a[4 * b + K].qs, l);
            const float dy = h2f(a[4 * b + K].d);
            for (int k = 0; k < 8; k++) blk[k] = K ? fmaf(dy, (float)l[k], blk[k]) : dy * (float)l[k];
        }
        const float d = h2f(w[b].d);
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, blk[k], acc[k]);
    }
    return iq34_hsum8(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define Q1_0_INLINE AVX2_FN static inline __attribute__((always_inline))
#define Q1_0_ATTR512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/* 0xFF in byte e where bit e of the 32 bits at q is clear (ggml's byte_shuf / bit_masks / cmpeq) */
Q1_0_INLINE __m256i q1_0_clear_mask(const uint8_t *q) {
    const __m256i byte_shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit_masks = _mm256_set1_epi64x(0x8040201008040201LL);
    uint32_t q32;
    memcpy(&q32, q, 4);
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)q32), byte_shuf), bit_masks), _mm256_setzero_si256());
}

/* 8 lanes (as floats) of one activation sub-block: the 32 activations at y, negated where the weight
 * bit is clear, summed in fours. AVX2: ggml's xor / subtract with the clear-bit mask, maddubs with
 * ones, madd; AVX-512: the 32 bits are the byte mask themselves (bit e of the little-endian dword is
 * value e's), a masked 0 − y (the same wrapping negation), dpbusd with ones — the same integers. */
Q1_0_INLINE __m256 q1_0_lanes_avx2(const uint8_t *q, const int8_t *y) {
    const __m256i sm = q1_0_clear_mask(q), qy = _mm256_loadu_si256((const __m256i *)y);
    const __m256i sy = _mm256_sub_epi8(_mm256_xor_si256(qy, sm), sm);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), sy), _mm256_set1_epi16(1)));
}
Q1_0_ATTR512 static inline __attribute__((always_inline)) __m256 q1_0_lanes_avx512(const uint8_t *q, const int8_t *y) {
    uint32_t q32;
    memcpy(&q32, q, 4);
    const __m256i qy = _mm256_loadu_si256((const __m256i *)y);
    const __m256i sy = _mm256_mask_sub_epi8(qy, (__mmask32)~q32, _mm256_setzero_si256(), qy);
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), sy));
}

/* ggml_vec_dot_q1_0_q8_0 (AVX2), the `dot` of layout() */
AVX2_FN static float dot_q1_0_avx2(const void *vw, const void *va, int nb) {
    const blk_q1_0 *w = vw;
    const blk_q8_0 *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const blk_q8_0 *y = a + 4 * b;
        __m256 blk = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(y[0].d)), q1_0_lanes_avx2(w[b].qs, y[0].qs));
        for (int K = 1; K < 4; K++) blk = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(y[K].d)), q1_0_lanes_avx2(w[b].qs + 4 * K, y[K].qs), blk);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w[b].d)), blk, acc);
    }
    return hsum8(acc);
}

/* The matmul's kernels, the same chain with the activations' scales converted once (dya: d_a of each
 * Q8_0 block as float, broadcast from memory):
 *   rows: Y[r] for rows r0..r1 against one activation row (decode);
 *   dot4: one weight row against nt ≤ 4 activation rows (arow bytes apart, their scales nb·4 apart). */
#define Q1_0_KERNELS(SFX, ATTR, LANES)                                                                                          \
    ATTR static float q1_0_row_##SFX(const blk_q1_0 *w, const blk_q8_0 *a, const float *dya, int nb) {                           \
        __m256 acc = _mm256_setzero_ps();                                                                                       \
        for (int b = 0; b < nb; b++) {                                                                                          \
            const blk_q8_0 *y = a + 4 * b;                                                                                      \
            const float *dy = dya + 4 * b;                                                                                      \
            __m256 blk = _mm256_mul_ps(_mm256_broadcast_ss(dy), LANES(w[b].qs, y[0].qs));                                      \
            blk = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + 1), LANES(w[b].qs + 4, y[1].qs), blk);                              \
            blk = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + 2), LANES(w[b].qs + 8, y[2].qs), blk);                              \
            blk = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + 3), LANES(w[b].qs + 12, y[3].qs), blk);                             \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w[b].d)), blk, acc);                                                 \
        }                                                                                                                       \
        return hsum8(acc);                                                                                                      \
    }                                                                                                                           \
    ATTR static void q1_0_row2_##SFX(const blk_q1_0 *w0, const blk_q1_0 *w1, const blk_q8_0 *a, const float *dya, int nb, float *out) { \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                                          \
        for (int b = 0; b < nb; b++) {                                                                                          \
            const blk_q8_0 *y = a + 4 * b;                                                                                      \
            const float *dy = dya + 4 * b;                                                                                      \
            __m256 blk0 = _mm256_mul_ps(_mm256_broadcast_ss(dy), LANES(w0[b].qs, y[0].qs));                                    \
            __m256 blk1 = _mm256_mul_ps(_mm256_broadcast_ss(dy), LANES(w1[b].qs, y[0].qs));                                    \
            for (int K = 1; K < 4; K++) {                                                                                       \
                blk0 = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + K), LANES(w0[b].qs + 4 * K, y[K].qs), blk0);                   \
                blk1 = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + K), LANES(w1[b].qs + 4 * K, y[K].qs), blk1);                   \
            }                                                                                                                   \
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w0[b].d)), blk0, acc0);                                             \
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w1[b].d)), blk1, acc1);                                             \
        }                                                                                                                       \
        out[0] = hsum8(acc0), out[1] = hsum8(acc1);                                                                             \
    }                                                                                                                           \
    ATTR static void q1_0_rows_##SFX(const char *W, int64_t wrow, int64_t r0, int64_t r1, const void *xq, const float *dya, int nb, \
                                     float *Y) {                                                                                \
        int64_t r = r0;                                                                                                         \
        for (; r + 2 <= r1; r += 2) {                                                                                           \
            for (int64_t o = 0; o < 2 * wrow; o += 64) __builtin_prefetch(W + (r + 4) * wrow + o);                              \
            q1_0_row2_##SFX((const blk_q1_0 *)(W + r * wrow), (const blk_q1_0 *)(W + (r + 1) * wrow), xq, dya, nb, Y + r);      \
        }                                                                                                                       \
        if (r < r1) Y[r] = q1_0_row_##SFX((const blk_q1_0 *)(W + r * wrow), xq, dya, nb);                                       \
    }                                                                                                                           \
    ATTR static void q1_0_dot4_##SFX(const void *vw, const void *va, int64_t arow, const float *dya, int nt, int nb, float *out) { \
        const blk_q1_0 *w = vw;                                                                                                 \
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};                   \
        for (int b = 0; b < nb; b++) {                                                                                          \
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d));                                                                 \
            for (int t = 0; t < nt; t++) {                                                                                      \
                const blk_q8_0 *y = (const blk_q8_0 *)((const char *)va + t * arow) + 4 * b;                                    \
                const float *dy = dya + (int64_t)t * nb * 4 + 4 * b;                                                            \
                __m256 blk = _mm256_mul_ps(_mm256_broadcast_ss(dy), LANES(w[b].qs, y[0].qs));                                  \
                for (int K = 1; K < 4; K++) blk = _mm256_fmadd_ps(_mm256_broadcast_ss(dy + K), LANES(w[b].qs + 4 * K, y[K].qs), blk); \
                acc[t] = _mm256_fmadd_ps(d, blk, acc[t]);                                                                       \
            }                                                                                                                   \
        }                                                                                                                       \
        for (int t = 0; t < nt; t++) out[t] = hsum8(acc[t]);                                                                    \
    }
Q1_0_KERNELS(avx2, AVX2_FN, q1_0_lanes_avx2)
Q1_0_KERNELS(avx512, Q1_0_ATTR512, q1_0_lanes_avx512)
#endif

static int q1_0_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (wt != T_Q1_0) return -1;
    *be = 128, *bb = 18, *atype = T_Q8_0, *ab = 136;
#if defined(__x86_64__) && defined(__GNUC__)
    *dot = have_avx2() ? dot_q1_0_avx2 : dot_q1_0;
#else
    *dot = dot_q1_0;
#endif
    return 0;
}

/* Y (n_tok × n_rows, stride ldy) = W · xq, every output ggml_vec_dot_q1_0_q8_0's float: one activation
 * row through the row loop; batches in tiles of tokens whose activations stay in L1, each weight row
 * against four tokens at a time; AVX-512 (BW, VL, VNNI) where the CPU has it; −1 when out of memory */
static int q1_0_matmul(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy, int n_threads,
                       dot_fn dot) {
    const int64_t wrow = (int64_t)nb * 18, arow = (int64_t)nb * 136;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        const int wide = vnni_kind() == 2;
        return q8s_matmul(W, wrow, n_rows, nb, 4, xq, n_tok, Y, ldy, n_threads, wide ? q1_0_rows_avx512 : q1_0_rows_avx2,
                          wide ? q1_0_dot4_avx512 : q1_0_dot4_avx2);
    }
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot((const char *)W + r * wrow, (const char *)xq + t * arow, nb);
    return 0;
}
