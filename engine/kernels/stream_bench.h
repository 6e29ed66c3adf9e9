#pragma once
#include <stdint.h>
/* stream_bench.c: sum of buf's n_words 8-byte words, read once by `threads` OpenMP threads. */
uint64_t cv_stream_read(const uint64_t *buf, int64_t n_words, int threads);
