// Dense layer passes over the BLAS wrapper.
#include "dense.hpp"

#include <algorithm>

#include "blas.hpp"

namespace l2fast {

template <class T>
void dense_forward(const T* A_prev, std::size_t batch, std::size_t n_in, const T* W, T scale, const T* b,
                   std::size_t n_out, Activation act, T* A_out) {
    blas::gemm(blas::Op::N, blas::Op::T, int(batch), int(n_out), int(n_in), scale, A_prev, int(n_in), W,
               int(n_in), T(0), A_out, int(n_out));
    inplace_bias_activation(A_out, b, batch, n_out, act);
}

template <class T>
void dense_backward_input(const T* dZ, std::size_t batch, std::size_t n_out, const T* W, T scale,
                          std::size_t n_in, T* dA_prev) {
    blas::gemm(blas::Op::N, blas::Op::N, int(batch), int(n_in), int(n_out), scale, dZ, int(n_out), W,
               int(n_in), T(0), dA_prev, int(n_in));
}

std::size_t transposed_slice_rows(std::size_t n_out, std::size_t bytes_per_value) {
    constexpr std::size_t kL1Share = std::size_t(32) << 10;  // of the 48 KB L1: A's rows and C's share the rest
    return std::clamp<std::size_t>(kL1Share / (n_out * bytes_per_value), 1, blas::kMaxInner);
}

// Near-equal slices of at most transposed_slice_rows(n_out) of n_in: slice s is [begin(s), begin(s + 1)).
struct Slices {
    std::size_t n, count;

    Slices(std::size_t n_in, std::size_t n_out, std::size_t bytes_per_value) : n(n_in) {
        const std::size_t most = transposed_slice_rows(n_out, bytes_per_value);
        count = (n_in + most - 1) / most;
    }

    std::size_t begin(std::size_t s) const { return n * s / count; }
};

template <class T>
void transposed_forward(const T* A, std::size_t rows, std::size_t n_in, const T* W_t, std::size_t n_out, T alpha,
                        T* Z) {
    const Slices slices(n_in, n_out, sizeof(T));
    for (std::size_t s = 0; s < slices.count; ++s) {
        const std::size_t k0 = slices.begin(s), k1 = slices.begin(s + 1);
        blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(n_out), int(k1 - k0), alpha, A + k0, int(n_in),
                   W_t + k0 * n_out, int(n_out), s == 0 ? T(0) : T(1), Z, int(n_out));
    }
}

template <class T>
void transposed_weight_product(const T* A_prev, const T* dZ, std::size_t rows, std::size_t n_in, std::size_t n_out,
                               T alpha, T beta, T* W_t) {
    const Slices slices(n_in, n_out, sizeof(T));
    for (std::size_t s = 0; s < slices.count; ++s) {
        const std::size_t k0 = slices.begin(s), k1 = slices.begin(s + 1);
        blas::gemm(blas::Op::T, blas::Op::N, int(k1 - k0), int(n_out), int(rows), alpha, A_prev + k0, int(n_in), dZ,
                   int(n_out), beta, W_t + k0 * n_out, int(n_out));
    }
}

#define L2FAST_INSTANTIATE(T)                                                                                \
    template void dense_forward(const T*, std::size_t, std::size_t, const T*, T, const T*, std::size_t,       \
                                Activation, T*);                                                             \
    template void dense_backward_input(const T*, std::size_t, std::size_t, const T*, T, std::size_t, T*);      \
    template void transposed_forward(const T*, std::size_t, std::size_t, const T*, std::size_t, T, T*);        \
    template void transposed_weight_product(const T*, const T*, std::size_t, std::size_t, std::size_t, T, T, T*);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
