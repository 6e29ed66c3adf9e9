/* MXFP4 (ggml type 39, llama-quantize's MXFP4_MOE experts) against Q8_0 activations in ggml-cpu's
 * arithmetic (included by qkernels.c after iq_tables.h; block layout from ggml-common.h):
 *
 *   block_mxfp4: e (one E8M0 byte), qs[16]; value j = kvalues_mxfp4[low nibble of qs[j]] (j < 16) or
 *   [high nibble of qs[j − 16]] (j ≥ 16) — the E2M1 values doubled: 0, 1, 2, 3, 4, 6, 8, 12 and their
 *   negatives — times ggml_e8m0_to_fp32_half(e) = 2^(e − 128) (e < 2: the subnormals 2^−128, 2^−127).
 *   The activations' scale d_a (fp16) times that power of two is exact short of float underflow, and
 *   both sides round it once, so only the sums' order below can differ.
 *
 * llama.cpp's route on x86 (no tinyBLAS, tiled or AMX kernel takes MXFP4):
 *   repacked 8×8 (repack.cpp mxfp4_8x8_q8_0, AVX2, rows % 8 == 0; gemv for one activation row, gemm for
 *     groups of four, and forward_mul_mat_id's gemv for MoE experts): per output one chain over the
 *     blocks, out = fma(float(block sum), e_half(w)·d_a, out) (arch/x86/repack.cpp
 *     gemv/gemm_q4_b32_8x8_q8_0_lut_avx);
 *   otherwise, for every activation row: ggml_vec_dot_mxfp4_q8_0 (arch/x86/quants.c, AVX2) — pairs of
 *     blocks into two 8-lane FMA accumulators (lane k: the products of values 4k..4k+3), hsum_float_8
 *     of their sum, an odd last block added in scalar (d·Σ fused or not as the build compiled it:
 *     tail_add in qkernels.c).
 * Integer sums are exact however they are formed (|value| ≤ 12: no int16 saturation). */

#pragma pack(push, 1)
typedef struct { uint8_t e; uint8_t qs[16]; } blk_mxfp4; /* 17 bytes */
#pragma pack(pop)

enum { T_MXFP4 = 39 };

/* ggml_e8m0_to_fp32_half (ggml-impl.h; ggml-cpu's x86 table holds the same values) */
static inline float mxfp4_scale(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- portable: the AVX2 vec_dot's lanes, accumulators and scalar tail, one value at a time ------ */
static float dot_mxfp4(const void *vw, const void *va, int nb) {
    const blk_mxfp4 *w = vw;
    const blk_q8_0 *a = va;
    float acc[2][8] = {{0}}, sum[8];
    int b = 0;
    for (; b + 1 < nb; b += 2)
        for (int p = 0; p < 2; p++) {
            int32_t l[8];
            kv4_lanes(cv_kvalues_mxfp4, w[b + p].qs, a[b + p].qs, l);
            const float d = h2f(a[b + p].d) * mxfp4_scale(w[b + p].e);
            for (int k = 0; k < 8; k++) acc[p][k] = fmaf(d, (float)l[k], acc[p][k]);
        }
    for (int k = 0; k < 8; k++) sum[k] = acc[0][k] + acc[1][k];
    float sumf = iq34_hsum8(sum);
    for (; b < nb; b++) {
        int32_t l[8], s = 0;
        kv4_lanes(cv_kvalues_mxfp4, w[b].qs, a[b].qs, l);
        for (int k = 0; k < 8; k++) s += l[k];
        sumf = tail_add(T_MXFP4, sumf, h2f(a[b].d) * mxfp4_scale(w[b].e), (float)s);
    }
    return sumf;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MXFP4_INLINE AVX2_FN static inline __attribute__((always_inline))

/* 32 values (int8) of one block: low nibbles first, then high */
MXFP4_INLINE __m256i mxfp4_values(__m128i kv, const uint8_t *q) {
    const __m128i m4 = _mm_set1_epi8(0x0f), b = _mm_loadu_si128((const __m128i *)q);
    return _mm256_set_m128i(_mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(b, 4), m4)), _mm_shuffle_epi8(kv, _mm_and_si128(b, m4)));
}

/* one block's 8 int32 lanes against 32 activations (|v| · y with v's sign, pairs, then pairs) */
MXFP4_INLINE __m256i mxfp4_block(__m256i v, const int8_t *y) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)y);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v)), _mm256_set1_epi16(1));
}

/* ggml_vec_dot_mxfp4_q8_0 (AVX2) */
AVX2_FN static float dot_mxfp4_avx2(const void *vw, const void *va, int nb) {
    const blk_mxfp4 *w = vw;
    const blk_q8_0 *a = va;
    const __m128i kv = _mm_loadu_si128((const __m128i *)cv_kvalues_mxfp4);
    __m256 acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i p1 = mxfp4_block(mxfp4_values(kv, w[b].qs), a[b].qs), p2 = mxfp4_block(mxfp4_values(kv, w[b + 1].qs), a[b + 1].qs);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b].d) * mxfp4_scale(w[b].e)), _mm256_cvtepi32_ps(p1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b + 1].d) * mxfp4_scale(w[b + 1].e)), _mm256_cvtepi32_ps(p2), acc2);
    }
    float sumf = hsum8(_mm256_add_ps(acc1, acc2));
    for (; b < nb; b++) {
        const __m256i p = mxfp4_block(mxfp4_values(kv, w[b].qs), a[b].qs);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        sumf = tail_add(T_MXFP4, sumf, _cvtsh_ss(a[b].d) * mxfp4_scale(w[b].e), (float)_mm_cvtsi128_si32(s));
    }
    return sumf;
}
CV_GEMV(AVX2_FN, gemv_mxfp4_avx2, dot_mxfp4_avx2)

/* mxfp4_scale of the eight bytes of e8 (byte i → lane i) */
MXFP4_INLINE __m256 mxfp4_scales8(uint64_t e8) {
    const __m256i e = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)e8));
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e)));
}

/* The repacked kernels' chains for eight weight rows (wrow bytes apart) and nt ≤ 16 activation rows:
 * lane i of out[8t..8t+7] is row i's, fma(float(block sum), e_half(w_i)·d_a, lane) block after block.
 * The integers are formed with row i in lane i, as the repacked layout gives them to llama.cpp: the
 * eight rows' qs dwords are transposed (lane i of T_k = row i's dword k), each nibble looked up as
 * value + OFF (OFF = −min value: unsigned bytes), and dpbusd against activation dword j broadcast sums
 * row i's products in lane i; OFF·Σ activations (ysum, per activation row and block) comes back out.
 * DPBUSD is VNNI's instruction or maddubs + madd: the same integers while maddubs' int16 pair sums cannot
 * saturate, 2·(max − min value)·127 ≤ 32767 (mxfp4_layout checks it; MXFP4's span is 24). */
#define MXFP4_REP8(NAME, ATTR, DPBUSD)                                                                                             \
    ATTR static void NAME(const char *W, int64_t wrow, const void *xq, int64_t arow, int nt, int nb, const int32_t *ysum,        \
                          const int8_t *kvu, int off, const char *pf, float *out) {                                                \
        const int64_t pf_lines = pf ? 8 * wrow / 64 : 0;                                                                           \
        __m256 acc[16];                                                                                                            \
        for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();                                                                 \
        const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kvu)), m4 = _mm256_set1_epi8(0x0f);       \
        for (int b = 0; b < nb; b++) {                                                                                             \
            for (int64_t l = b * pf_lines / nb; l < (b + 1) * pf_lines / nb; l++) __builtin_prefetch(pf + 64 * l);              \
            __m256i y4[4], u[8];                                                                                                   \
            uint64_t e8 = 0;                                                                                                       \
            for (int i = 0; i < 4; i++) {                                                                                          \
                const blk_mxfp4 *lo = (const blk_mxfp4 *)(W + i * wrow) + b, *hi = (const blk_mxfp4 *)(W + (i + 4) * wrow) + b;     \
                y4[i] = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)hi->qs), _mm_loadu_si128((const __m128i *)lo->qs));       \
                e8 |= (uint64_t)lo->e << (8 * i) | (uint64_t)hi->e << (8 * i + 32);                                                \
            }                                                                                                                      \
            const __m256i t0 = _mm256_unpacklo_epi32(y4[0], y4[1]), t1 = _mm256_unpackhi_epi32(y4[0], y4[1]);                      \
            const __m256i t2 = _mm256_unpacklo_epi32(y4[2], y4[3]), t3 = _mm256_unpackhi_epi32(y4[2], y4[3]);                      \
            const __m256i T[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3),     \
                                  _mm256_unpackhi_epi64(t1, t3)};                                                                  \
            for (int k = 0; k < 4; k++) {                                                                                          \
                u[k] = _mm256_shuffle_epi8(lut, _mm256_and_si256(T[k], m4));                                                       \
                u[k + 4] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(T[k], 4), m4));                             \
            }                                                                                                                      \
            const __m256 vsw = mxfp4_scales8(e8);                                                                                  \
            for (int t = 0; t < nt; t++) {                                                                                         \
                const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;                                          \
                const int32_t *yd = (const int32_t *)a->qs;                                                                        \
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();                                                  \
                for (int k = 0; k < 8; k += 2) {                                                                                   \
                    s0 = DPBUSD(s0, u[k], _mm256_set1_epi32(yd[k]));                                                               \
                    s1 = DPBUSD(s1, u[k + 1], _mm256_set1_epi32(yd[k + 1]));                                                       \
                }                                                                                                                  \
                const __m256i sums = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(off * ysum[t * nb + b]));        \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(vsw, _mm256_set1_ps(_cvtsh_ss(a->d))), acc[t]);  \
            }                                                                                                                      \
        }                                                                                                                          \
        for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);                                                       \
    }
#define MXFP4_DPBUSD_AVX2(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
MXFP4_REP8(rep8_mxfp4_avx2, AVX2_FN, MXFP4_DPBUSD_AVX2)
MXFP4_REP8(rep8_mxfp4_avxvnni, __attribute__((target("avx2,fma,f16c,avxvnni"))), _mm256_dpbusd_avx_epi32)
MXFP4_REP8(rep8_mxfp4_avx512vnni, __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))), _mm256_dpbusd_epi32)
#endif

/* layout() for MXFP4; unsupported until its value table arrived */
static int mxfp4_layout(int wt, int *be, int *bb, int *atype, int *ab, dot_fn *dot) {
    if (wt != T_MXFP4 || !cv_iq_ready(TB_KVALUES_FP4)) return -1;
    int lo = 0, hi = 0;
    for (int i = 0; i < 16; i++) lo = cv_kvalues_mxfp4[i] < lo ? cv_kvalues_mxfp4[i] : lo, hi = cv_kvalues_mxfp4[i] > hi ? cv_kvalues_mxfp4[i] : hi;
    if (hi - lo > 128) return -1; /* the repacked kernels' unsigned bytes (value − min), paired by maddubs */
    *be = 32, *bb = 17, *atype = T_Q8_0, *ab = 34;
#if defined(__x86_64__) && defined(__GNUC__)
    *dot = have_avx2() ? dot_mxfp4_avx2 : dot_mxfp4;
#else
    *dot = dot_mxfp4;
#endif
    return 0;
}

/* Y (n_tok × n_rows, stride ldy) = W · xq along llama.cpp's route (the header comment): the repacked
 * chains for rows % 8 == 0 (eight rows, up to 16 activation rows per unpacked block), vec_dot else;
 * −1 when out of memory */
static int mxfp4_matmul(const void *W, int64_t n_rows, int nb, const void *xq, int64_t n_tok, float *Y, int64_t ldy, int n_threads,
                        dot_fn dot) {
    const int64_t wrow = (int64_t)nb * 17, arow = (int64_t)nb * 34;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2() && n_rows % 8 == 0) {
        int8_t kvu[16];
        int off = 0;
        for (int i = 0; i < 16; i++) off = -cv_kvalues_mxfp4[i] > off ? -cv_kvalues_mxfp4[i] : off;
        for (int i = 0; i < 16; i++) kvu[i] = (int8_t)(uint8_t)(cv_kvalues_mxfp4[i] + off); /* 0..128: mxfp4_layout checked */
        int32_t *ysum = malloc(sizeof(int32_t) * (size_t)(n_tok * nb)); /* Σ of each activation block's 32 values */
        if (!ysum) return -1;
        {
            for (int64_t t = 0; t < n_tok; t++)
                for (int b = 0; b < nb; b++) {
                    const blk_q8_0 *a = (const blk_q8_0 *)((const char *)xq + t * arow) + b;
                    int32_t sy = 0;
                    for (int j = 0; j < 32; j++) sy += a->qs[j];
                    ysum[t * nb + b] = sy;
                }
            void (*rep8)(const char *, int64_t, const void *, int64_t, int, int, const int32_t *, const int8_t *, int, const char *, float *) = CV_PICK(rep8_mxfp4);
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
            for (int64_t r = 0; r < n_rows; r += 8) {
                const char *next = r + 8 < n_rows ? (const char *)W + (r + 8) * wrow : NULL; /* prefetched along the blocks */
                for (int64_t t0 = 0; t0 < n_tok; t0 += 16) {
                    const int nt = n_tok - t0 < 16 ? (int)(n_tok - t0) : 16;
                    float o[128];
                    rep8((const char *)W + r * wrow, wrow, (const char *)xq + t0 * arow, arow, nt, nb, ysum + t0 * nb, kvu, off, t0 ? NULL : next, o);
                    for (int t = 0; t < nt; t++)
                        for (int i = 0; i < 8; i++) Y[(t0 + t) * ldy + r + i] = o[8 * t + i];
                }
            }
            free(ysum);
            return 0;
        }
    }
    if (have_avx2() && n_tok == 1) { /* decode: the dot inlined in one row loop */
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
        {
            const int64_t nth = omp_get_num_threads(), it = omp_get_thread_num(), per = (n_rows + nth - 1) / nth;
            const int64_t r0 = it * per, r1 = r0 + per < n_rows ? r0 + per : n_rows;
            if (r0 < r1) gemv_mxfp4_avx2((const char *)W, wrow, r0, r1, xq, nb, Y);
        }
        return 0;
    }
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++) Y[t * ldy + r] = dot((const char *)W + r * wrow, (const char *)xq + t * arow, nb);
    return 0;
}
