// Weight and bias updates; the L2 term rides on a scale carried beside W.
#include "update.hpp"

#include <algorithm>

#include "blas.hpp"
#include "parallel.hpp"

namespace l2fast {

namespace {
constexpr double kMinScale = 0.5;

// dW <- beta dW + scale dZ^T . A_prev, db <- beta db + scale sum_rows dZ: the gradient products of a block.
template <class T>
void gradient_product(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch, std::size_t n_out,
                      std::size_t n_in, T scale, T beta) {
    blas::gemm(blas::Op::T, blas::Op::N, int(n_out), int(n_in), int(batch), scale, dZ, int(n_out), A_prev,
               int(n_in), beta, dW, int(n_in));
    blas::sum_rows(int(batch), int(n_out), scale, dZ, int(n_out), beta, db);
}

template <class T>
L2FAST_VECTOR_CLONES void l2_update_range(T* W, const T* dW, std::size_t begin, std::size_t end, T keep, T lr) {
    for (std::size_t i = begin; i < end; ++i) W[i] = keep * W[i] - lr * dW[i];
}

// The same update, returning sum W_i^2 of the weights it read (omp simd: the sum's order may change, W's
// values may not, so W ends as l2_update_range leaves it).
template <class T>
L2FAST_VECTOR_CLONES double l2_update_range_summed(T* W, const T* dW, std::size_t begin, std::size_t end, T keep,
                                                   T lr) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::size_t i = begin; i < end; ++i) {
        const T w = W[i];
        s += double(w) * double(w);
        W[i] = keep * w - lr * dW[i];
    }
    return s;
}
}  // namespace

template <class T>
StepCoefficients<T> fused_step_coefficients(double& scale, std::size_t batch, T lr, T lam_over_m) {
    const T step = lr / T(batch);
    const double new_scale = (1.0 - double(lr) * double(lam_over_m)) * scale;
    if (new_scale >= kMinScale) {
        scale = new_scale;
        return {T(-double(step) / new_scale), T(1)};
    }
    scale = 1.0;
    return {-step, T(new_scale)};
}

template <class T>
void inplace_fused_l2_step(T* W, double& scale, T* b, const T* dZ, const T* A_prev, std::size_t batch,
                           std::size_t n_out, std::size_t n_in, T lr, T lam_over_m) {
    const StepCoefficients<T> c = fused_step_coefficients(scale, batch, lr, lam_over_m);
    blas::gemm(blas::Op::T, blas::Op::N, int(n_out), int(n_in), int(batch), c.alpha, dZ, int(n_out), A_prev,
               int(n_in), c.beta, W, int(n_in));
    blas::sum_rows(int(batch), int(n_out), -lr / T(batch), dZ, int(n_out), T(1), b);
}

template <class T>
void inplace_apply_scale(T* W, double& scale, std::size_t n) {
    if (scale == 1.0) return;
    const T s = T(scale);
    for (std::size_t i = 0; i < n; ++i) W[i] *= s;
    scale = 1.0;
}

template <class T>
void accumulate_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch,
                         std::size_t n_out, std::size_t n_in, T scale) {
    gradient_product(dW, db, dZ, A_prev, batch, n_out, n_in, scale, T(1));
}

template <class T>
void sum_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch, std::size_t n_out,
                  std::size_t n_in) {
    gradient_product(dW, db, dZ, A_prev, batch, n_out, n_in, T(1), T(0));
}

template <class T>
void mean_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch, std::size_t n_out,
                   std::size_t n_in) {
    gradient_product(dW, db, dZ, A_prev, batch, n_out, n_in, T(1) / T(batch), T(0));
}

template <class T>
void inplace_l2_update(T* W, const T* dW, std::size_t n, T lr, T lam_over_m, double* sum_squares) {
    const T keep = T(1) - lr * lam_over_m;
    // Memory-bound: one core cannot draw the machine's memory bandwidth, so updates of 512K entries
    // and more take every thread OpenBLAS would, in shares of at least 256K. The helpers spin a moment
    // after each job, so an update that follows another starts without waking them (measured at 1M:
    // 70-100 us, OpenBLAS's threaded axpy 50-70).
    const std::size_t threads = std::size_t(std::max(blas::num_threads(), 1)), min_share = std::size_t(1) << 18;
    if (sum_squares) {
        *sum_squares += parallel_sum(n, threads, min_share, [=](std::size_t begin, std::size_t end) {
            return l2_update_range_summed(W, dW, begin, end, keep, lr);
        });
        return;
    }
    parallel_for(n, threads, min_share,
                 [=](std::size_t begin, std::size_t end) { l2_update_range(W, dW, begin, end, keep, lr); });
}

#define L2FAST_INSTANTIATE(T)                                                                                \
    template void inplace_fused_l2_step(T*, double&, T*, const T*, const T*, std::size_t, std::size_t,       \
                                        std::size_t, T, T);                                                  \
    template void inplace_apply_scale(T*, double&, std::size_t);                                             \
    template StepCoefficients<T> fused_step_coefficients(double&, std::size_t, T, T);                       \
    template void accumulate_gradient(T*, T*, const T*, const T*, std::size_t, std::size_t, std::size_t, T); \
    template void mean_gradient(T*, T*, const T*, const T*, std::size_t, std::size_t, std::size_t);          \
    template void sum_gradient(T*, T*, const T*, const T*, std::size_t, std::size_t, std::size_t);           \
    template void inplace_l2_update(T*, const T*, std::size_t, T, T, double*);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
