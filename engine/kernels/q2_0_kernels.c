/* Q2_0 (ggml type 42) against Q8_0 activations in ggml-cpu's arithmetic (included by qkernels.c; block
 * layout from ggml-common.h):
 *
 *   block_q2_0: d (fp16), qs[16]; value j (0..63) = (q − 1)·d with q = (qs[j / 4] >> 2·(j % 4)) & 3
 *   (00 → −1, 01 → 0, 10 → +1, 11 → +2; dequantize_row_q2_0). A 64-value block spans two Q8_0 blocks.
 *
 * llama.cpp's route on x86: ggml_vec_dot_q2_0_q8_0 for every activation row and every row count — the
 * generic C function (arch-fallback.h maps it to the x86 name: no x86 SIMD version, no repacked,
 * tinyBLAS, tiled or AMX kernel takes Q2_0; ggml-cpu/quants.c), compiled without FP contraction (its
 * disassembly: vmulss then vaddss, no FMA):
 *   sumi = 0;  sumi += d_a(2b+k) · float(Σ_e (q_e − 1)·y_e)  for k = 0, 1   (products rounded, then added)
 *   sumf += d_w(b) · sumi                                     block after block, from sumf = 0.
 * The integer sums are exact whatever their order; the kernels keep the float steps one by one
 * (this file is compiled without contraction, build.py's -std=c11). */

#pragma pack(push, 1)
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q2_0; /* 18 bytes */
#pragma pack(pop)

enum { T_Q2_0 = 42 };

/* Σ (q − 1)·y over the 32 values of sub-block k (the weight bytes qs[8k..8k+7]) */
static inline int32_t q2_0_isum(const uint8_t *qs, const int8_t *y) {
    int32_t s = 0;
    for (int b = 0; b < 8; b++)
        for (int e = 0; e < 4; e++) s += ((int32_t)((qs[b] >> (2 * e)) & 3) - 1) * y[4 * b + e];
    return s;
}

/* the float chain of ggml_vec_dot_q2_0_q8_0 over the two sub-blocks' integer sums */
#define Q2_0_CHAIN(ISUM)                                                                                                      \
    float sumf = 0.0f;                                                                                                        \
    for (int b = 0; b < nb; b++) {                                                                                            \
        float sumi = 0.0f;                                                                                                    \
        for (int k = 0; k < 2; k++) {                                                                                         \
            const float p = h2f(a[2 * b + k].d) * (float)ISUM(w[b].qs + 8 * k, a[2 * b + k].qs);                              \
            sumi = sumi + p;                                                                                                  \
        }                                                                                                                     \
        const float p = h2f(w[b].d) * sumi;                                                                                   \
        sumf = sumf + p;                                                                                                      \
    }                                                                                                                         \
    return sumf;

static float dot_q2_0(const void *vw, const void *va, int nb) {
    const blk_q2_0 *w = vw;
    const blk_q8_0 *a = va;
    Q2_0_CHAIN(q2_0_isum)
}

#if defined(__x86_64__) && defined(__GNUC__)
/* the same integer sum: byte b of the 8 weight bytes copied to values 4b..4b+3, masked to value e's
 * two bits (0x03, 0x0C, 0x30, 0xC0), q looked up from the masked byte's nibbles; maddubs(q, y) −
 * maddubs(1, y) summed by madd and a horizontal add (q ≤ 3: no int16 saturation, even for y = −128) */
AVX2_FN static inline __attribute__((always_inline)) int32_t q2_0_isum_avx2(const uint8_t *qs, const int8_t *y) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m256i fields = _mm256_set1_epi32((int)0xC0300C03u);
    const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 1, 2, 3, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    uint64_t q64;
    memcpy(&q64, qs, 8);
    const __m256i m = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi64x((long long)q64), spread), fields);
    const __m256i q = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(m, lo4)),
                                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(m, 4), lo4)));
    const __m256i qy = _mm256_loadu_si256((const __m256i *)y);
    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q, qy), _mm256_maddubs_epi16(_mm256_set1_epi8(1), qy));
    const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p32), _mm256_extracti128_si256(p32, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

AVX2_FN static float dot_q2_0_avx2(const void *vw, const void *va, int nb) {
    const blk_q2_0 *w = vw;
    const blk_q8_0 *a = va;
    Q2_0_CHAIN(q2_0_isum_avx2)
}
#endif

static int q2_0_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (wt != T_Q2_0) return -1;
    *be = 64, *bb = 18, *atype = T_Q8_0, *ab = 68;
#if defined(__x86_64__) && defined(__GNUC__)
    *dot = have_avx2() ? dot_q2_0_avx2 : dot_q2_0;
#else
    *dot = dot_q2_0;
#endif
    return 0;
}

/* Y (n_tok × n_rows, stride ldy) = W · xq, every output ggml_vec_dot_q2_0_q8_0's float: each weight row
 * against each activation row (rows split across threads; a batch in tiles of tokens whose activations
 * stay in L1) */
static int q2_0_matmul(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy, int n_threads,
                       dot_fn dot) {
    const int64_t wrow = (int64_t)nb * 18, arow = (int64_t)nb * 68;
    const int64_t tile = arow * 32 <= 32768 ? 32 : arow * 8 <= 32768 ? 8 : 1;
    for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
        const int64_t t1 = t0 + tile < n_tok ? t0 + tile : n_tok;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t t = t0; t < t1; t++) Y[t * ldy + r] = dot((const char *)W + r * wrow, (const char *)xq + t * arow, nb);
    }
    return 0;
}
