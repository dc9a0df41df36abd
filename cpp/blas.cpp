// blas.hpp's sum_rows, compiled for AVX2 and for any x86-64 (the columns' sums side by side in vectors, each column's
// rows still added in row order: the same bits either way).
#include "blas.hpp"

#include "parallel.hpp"

namespace l2fast::blas {

template <class T>
L2FAST_VECTOR_CLONES void sum_rows(int rows, int cols, T alpha, const T* A, int lda, T beta, T* y) {
    constexpr int kChunk = 256;  // columns whose running sums stay in the first-level cache
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

template void sum_rows(int, int, float, const float*, int, float, float*);
template void sum_rows(int, int, double, const double*, int, double, double*);

}  // namespace l2fast::blas
