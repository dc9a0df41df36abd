// Dense layer passes over the BLAS wrapper.
#include "dense.hpp"

#include "blas.hpp"

namespace l2fast {

template <class T>
void dense_forward(const T* A_prev, std::size_t batch, std::size_t n_in, const T* W, const T* b,
                   std::size_t n_out, Activation act, T* A_out) {
    blas::gemm(blas::Op::N, blas::Op::T, int(batch), int(n_out), int(n_in), T(1), A_prev, int(n_in), W,
               int(n_in), T(0), A_out, int(n_out));
    inplace_bias_activation(A_out, b, batch, n_out, act);
}

template <class T>
void dense_backward_input(const T* dZ, std::size_t batch, std::size_t n_out, const T* W, std::size_t n_in,
                          T* dA_prev) {
    blas::gemm(blas::Op::N, blas::Op::N, int(batch), int(n_in), int(n_out), T(1), dZ, int(n_out), W,
               int(n_in), T(0), dA_prev, int(n_in));
}

template void dense_forward(const float*, std::size_t, std::size_t, const float*, const float*, std::size_t,
                            Activation, float*);
template void dense_forward(const double*, std::size_t, std::size_t, const double*, const double*,
                            std::size_t, Activation, double*);
template void dense_backward_input(const float*, std::size_t, std::size_t, const float*, std::size_t, float*);
template void dense_backward_input(const double*, std::size_t, std::size_t, const double*, std::size_t,
                                   double*);

}  // namespace l2fast
