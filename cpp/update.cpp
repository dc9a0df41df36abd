// Weight and bias updates; the L2 term rides on the GEMM's beta.
#include "update.hpp"

#include "blas.hpp"

namespace l2fast {

template <class T>
void inplace_fused_l2_step(T* W, T* b, const T* dZ, const T* A_prev, const T* ones, std::size_t batch,
                           std::size_t n_out, std::size_t n_in, T lr, T lam_over_m) {
    const T step = lr / T(batch);
    blas::gemm(blas::Op::T, blas::Op::N, int(n_out), int(n_in), int(batch), -step, dZ, int(n_out), A_prev,
               int(n_in), T(1) - lr * lam_over_m, W, int(n_in));
    blas::gemv_t(int(batch), int(n_out), -step, dZ, ones, T(1), b);
}

template <class T>
void accumulate_gradient(T* dW, T* db, const T* dZ, const T* A_prev, const T* ones, std::size_t batch,
                         std::size_t n_out, std::size_t n_in, T scale) {
    blas::gemm(blas::Op::T, blas::Op::N, int(n_out), int(n_in), int(batch), scale, dZ, int(n_out), A_prev,
               int(n_in), T(1), dW, int(n_in));
    blas::gemv_t(int(batch), int(n_out), scale, dZ, ones, T(1), db);
}

template <class T>
void inplace_l2_update(T* W, const T* dW, std::size_t n, T lr, T lam_over_m) {
    const T keep = T(1) - lr * lam_over_m;
    for (std::size_t i = 0; i < n; ++i) W[i] = keep * W[i] - lr * dW[i];
}

#define L2FAST_INSTANTIATE(T)                                                                           \
    template void inplace_fused_l2_step(T*, T*, const T*, const T*, const T*, std::size_t, std::size_t, \
                                        std::size_t, T, T);                                             \
    template void accumulate_gradient(T*, T*, const T*, const T*, const T*, std::size_t, std::size_t,   \
                                      std::size_t, T);                                                 \
    template void inplace_l2_update(T*, const T*, std::size_t, T, T);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
