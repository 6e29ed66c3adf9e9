int cv_gm_cpu_native_bf16(void);
int cv_gm_cpu_target(void);
void cv_gm_to_bf16(const float *x, uint16_t *y, int64_t n, int daz);
void cv_gm_round_bf16(const float *x, float *y, int64_t n, int daz);
void cv_gm_rmsnorm(const float *x, int64_t n_rows, int64_t d, const float *w, float *out, int in_bf16, int out_bf16,
                   int native, int lanes);
float cv_gm_exp(float x);
float cv_gm_tanh(float x);
void cv_gm_sincos(float x, float *s, float *c);
void cv_gm_inv_timescale(int rope_dim, double base, float *out);
void cv_gm_rope(float *x, int64_t n_tok, int n_head, int dim, const int64_t *pos, const float *inv_ts, float mul);
int cv_gm_attention(const float *q, int64_t n_q, int n_head, int d, const float *k, const float *v, int n_head_kv,
                    const int64_t *start, const int64_t *last, float cap, float *att, const int64_t *row, int64_t seq_cap,
                    float *out, int lanes, int n_threads);
void cv_gm_softcap(float *x, int64_t n, float cap);
void cv_gm_geglu(const float *gate, const float *up, float *out, int64_t n, int native);
int cv_gm_matmul(const float *A, int64_t M, int64_t K, const uint16_t *B, int64_t N, float *C, int64_t ldc, int out_bf16,
                 int native, int lanes, int n_threads);
int64_t cv_gm_flash_vtile(int lanes, int64_t group, int64_t n_tokens, int64_t total_tasks, int64_t workers);
int cv_gm_flash_attention(const float *q, int64_t n_q, int n_head, int d, const float *k, const float *v, int n_head_kv,
                          const int64_t *start, const int64_t *last, float cap, float *out, int lanes, int workers,
                          int n_threads);
