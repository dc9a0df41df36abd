// blas.hpp's sum_rows, compiled for AVX2 and for any x86-64 (the columns' sums side by side in vectors, each column's
// rows still added in row order: the same bits either way), its chunks of columns shared between threads.
#include "blas.hpp"

#include <algorithm>

#include "blas_threads.hpp"
#include "parallel.hpp"

namespace l2fast::blas {

namespace {

constexpr int kChunk = 256;  // columns whose running sums stay in the first-level cache

template <class T>
L2FAST_VECTOR_CLONES void sum_rows_chunks(int rows, int cols, T alpha, const T* A, int lda, T beta, T* y) {
    T sums[kChunk];
    for (int c0 = 0; c0 < cols; c0 += kChunk) {
        const int width = cols - c0 < kChunk ? cols - c0 : kChunk;
        for (int c = 0; c < width; ++c) sums[c] = T(0);
        for (int r = 0; r < rows; ++r) {
            const T* a = A + std::size_t(r) * std::size_t(lda) + std::size_t(c0);
            for (int c = 0; c < width; ++c) sums[c] += a[c];
        }
        T* out = y + c0;
        if (beta == T(0))
            for (int c = 0; c < width; ++c) out[c] = alpha * sums[c];
        else
            for (int c = 0; c < width; ++c) out[c] = beta * out[c] + alpha * sums[c];
    }
}

}  // namespace

// The chunks of columns shared between threads (parallel_pass): a chunk's sums are the same on any of them.
template <class T>
void sum_rows(int rows, int cols, T alpha, const T* A, int lda, T beta, T* y) {
    if (cols <= 0) return;
    const std::size_t chunks = std::size_t(cols + kChunk - 1) / kChunk;
    parallel_pass(chunks, std::size_t(std::max(rows, 0)) * kChunk, [=](std::size_t c0, std::size_t c1) {
        const int first = int(c0) * kChunk, last = std::min(cols, int(c1) * kChunk);
        sum_rows_chunks(rows, last - first, alpha, A + first, lda, beta, y + first);
    });
}

template void sum_rows(int, int, float, const float*, int, float, float*);
template void sum_rows(int, int, double, const double*, int, double, double*);

}  // namespace l2fast::blas
