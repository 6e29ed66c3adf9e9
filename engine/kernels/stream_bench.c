/* A read-only streaming kernel: the bandwidth `crossval bench` divides a decode step's weight bytes
 * by (the memory roofline). Every 8-byte word of buf is read once and summed, the threads splitting
 * the buffer into contiguous slices (OpenMP static schedule) as a decode step's matmuls split rows.
 * Four independent accumulators keep the add chain from limiting the read rate. Returns the sum
 * (so the reads cannot be optimized away). */
#include "stream_bench.h"

uint64_t cv_stream_read(const uint64_t *buf, int64_t n_words, int threads) {
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int64_t blk = 0; blk < n_words / 64; blk++) {
        const uint64_t *p = buf + blk * 64;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (int i = 0; i < 64; i += 4) {
            a += p[i];
            b += p[i + 1];
            c += p[i + 2];
            d += p[i + 3];
        }
        total += a + b + c + d;
    }
    for (int64_t i = n_words / 64 * 64; i < n_words; i++) total += buf[i];
    return total;
}
