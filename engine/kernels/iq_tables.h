/* Storage for the i-quants' lookup tables (grids, sign patterns, IQ4_NL's and MXFP4's values). The values are not
 * written in this source: engine/kernels/iq_tables.py derives them from the gguf package and hands
 * each one over through cv_set_table when engine.kernels is imported. A kernel whose tables have not
 * arrived is reported unsupported (cv_iq_ready), so it can never run on zeros. Included by qkernels.c. */

static uint64_t cv_iq2xxs_grid[256], cv_iq2xs_grid[512], cv_iq2s_grid[1024], cv_iq1s_grid[2048];
static uint32_t cv_iq3xxs_grid[256], cv_iq3s_grid[512];
static uint8_t cv_ksigns_iq2xs[128];
static int8_t cv_kvalues_iq4nl[16];
static int8_t cv_kvalues_mxfp4[16];
/* ksigns as 8 sign bytes per entry (−1 where the bit is set, +1 elsewhere): _mm256_sign_epi8 operands */
static uint64_t cv_signs64_iq2xs[128];

enum { TB_IQ2XXS = 1, TB_IQ2XS = 2, TB_IQ2S = 4, TB_IQ1S = 8, TB_IQ3XXS = 16, TB_IQ3S = 32, TB_KSIGNS = 64, TB_KVALUES4 = 128, TB_KVALUES_FP4 = 256 };
static unsigned cv_tables_set = 0;

static const struct {
    const char *name;
    void *p;
    int64_t nbytes;
    unsigned bit;
} cv_tables[] = {
    {"iq2xxs_grid", cv_iq2xxs_grid, sizeof cv_iq2xxs_grid, TB_IQ2XXS},
    {"iq2xs_grid", cv_iq2xs_grid, sizeof cv_iq2xs_grid, TB_IQ2XS},
    {"iq2s_grid", cv_iq2s_grid, sizeof cv_iq2s_grid, TB_IQ2S},
    {"iq1s_grid", cv_iq1s_grid, sizeof cv_iq1s_grid, TB_IQ1S},
    {"iq3xxs_grid", cv_iq3xxs_grid, sizeof cv_iq3xxs_grid, TB_IQ3XXS},
    {"iq3s_grid", cv_iq3s_grid, sizeof cv_iq3s_grid, TB_IQ3S},
    {"ksigns_iq2xs", cv_ksigns_iq2xs, sizeof cv_ksigns_iq2xs, TB_KSIGNS},
    {"kvalues_iq4nl", cv_kvalues_iq4nl, sizeof cv_kvalues_iq4nl, TB_KVALUES4},
    {"kvalues_mxfp4", cv_kvalues_mxfp4, sizeof cv_kvalues_mxfp4, TB_KVALUES_FP4},
};

/* 0 when `name` is a known table of exactly nbytes (copied in), −1 otherwise */
int cv_set_table(const char *name, const void *data, int64_t nbytes) {
    for (size_t i = 0; i < sizeof cv_tables / sizeof cv_tables[0]; i++) {
        if (strcmp(name, cv_tables[i].name)) continue;
        if (nbytes != cv_tables[i].nbytes) return -1;
        memcpy(cv_tables[i].p, data, (size_t)nbytes);
        if (cv_tables[i].bit == TB_KSIGNS)
            for (int k = 0; k < 128; k++) {
                uint64_t s = 0;
                for (int j = 0; j < 8; j++) s |= (uint64_t)((cv_ksigns_iq2xs[k] >> j) & 1 ? 0xff : 0x01) << (8 * j);
                cv_signs64_iq2xs[k] = s;
            }
        cv_tables_set |= cv_tables[i].bit;
        return 0;
    }
    return -1;
}

static inline int cv_iq_ready(unsigned bits) { return (cv_tables_set & bits) == bits; }
