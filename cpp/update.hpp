// The fused L2 step: the weight-gradient GEMM writes straight into W and lambda costs no extra pass.
#pragma once

#include <cstddef>

namespace l2fast {

// One minibatch step on the weights W_true = scale * W (W stored, the scalar carried beside it):
//   W_true <- (1 - lr*lam_over_m) W_true - (lr/batch) dZ^T . A_prev
//   b      <- b - (lr/batch) sum_rows dZ
// which is W <- W - lr (mean dL/dW + (lam/m) W). The decay factor goes into scale, so the GEMM
// writes into W with beta = 1: OpenBLAS applies any other beta as a separate pass over W, which
// would make lambda cost a read and a write of every weight per step. When scale would fall below
// 1/2 the step is the single GEMM with beta = (1 - lr*lam_over_m) * scale instead, and scale is 1
// again. The bias sums are blas::sum_rows.
template <class T>
void inplace_fused_l2_step(T* W, double& scale, T* b, const T* dZ, const T* A_prev, std::size_t batch,
                           std::size_t n_out, std::size_t n_in, T lr, T lam_over_m);

// The alpha and beta of that step's GEMM (W <- beta W + alpha dZ^T A_prev), scale moved on to its
// value after the step: the scale path or, below 1/2, the beta path.
template <class T>
struct StepCoefficients {
    T alpha;
    T beta;
};

template <class T>
StepCoefficients<T> fused_step_coefficients(double& scale, std::size_t batch, T lr, T lam_over_m);

// W (n) <- scale * W and scale <- 1: folds a carried scale back into the stored weights.
template <class T>
void inplace_apply_scale(T* W, double& scale, std::size_t n);

// dW <- dW + scale dZ^T . A_prev and db <- db + scale sum_rows dZ: accumulates the gradient of a
// block of records; start with dW = (lam/m) W and scale = 1/m to build dJ/dW block by block.
template <class T>
void accumulate_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch,
                         std::size_t n_out, std::size_t n_in, T scale);

// dW <- dZ^T . A_prev and db <- sum_rows dZ: a block's gradient sums, for adding into wider sums elsewhere.
template <class T>
void sum_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch, std::size_t n_out,
                  std::size_t n_in);

// dW <- (1/batch) dZ^T . A_prev and db <- (1/batch) sum_rows dZ: a minibatch's mean gradient, for the
// optimizers that need it in a buffer of its own (inplace_optimizer_step).
template <class T>
void mean_gradient(T* dW, T* db, const T* dZ, const T* A_prev, std::size_t batch, std::size_t n_out,
                   std::size_t n_in);

// W (n) <- (1 - lr*lam_over_m) W - lr dW in one pass over the same bytes as an axpy: the L2 step for
// a gradient dW (the mean dL/dW) computed elsewhere. sum_squares, when given, has sum_i W_i^2 of the
// weights before the step added to it, in double, read in the same pass.
template <class T>
void inplace_l2_update(T* W, const T* dW, std::size_t n, T lr, T lam_over_m, double* sum_squares = nullptr);

}  // namespace l2fast
