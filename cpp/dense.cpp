// Dense layer passes over the BLAS wrapper.
#include "dense.hpp"

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

#define L2FAST_INSTANTIATE(T)                                                                                \
    template void dense_forward(const T*, std::size_t, std::size_t, const T*, T, const T*, std::size_t,       \
                                Activation, T*);                                                             \
    template void dense_backward_input(const T*, std::size_t, std::size_t, const T*, T, std::size_t, T*);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
