/* engine/kernels/tokmerge.c: the tokenizers' merge loops (declarations for the cffi module). */
#include <stdint.h>
void *cv_strtab_new(const uint8_t *blob, int64_t blob_len, const int64_t *off, const int32_t *len, const int32_t *split,
                    const int32_t *value, int32_t n, const float *scores, int32_t n_score);
void cv_strtab_free(void *t);
int64_t cv_merge(const void *t, const void *tokens, int spm, const uint8_t *text, int64_t n, int32_t *out_id);
