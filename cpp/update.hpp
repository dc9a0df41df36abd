// The fused L2 step: the weight-gradient GEMM writes straight into W, its beta carrying (1 - lr*lam/m).
#pragma once

#include <cstddef>

namespace l2fast {

// W (n_out x n_in) <- (1 - lr*lam_over_m) W - (lr/batch) dZ^T . A_prev   (one GEMM, in place)
// b (n_out)        <- b - (lr/batch) sum_rows dZ
// This is W <- W - lr (mean dL/dW + (lam/m) W) exactly, with no extra pass over W for lambda.
// ones holds at least batch entries equal to 1 (the bias sums are a GEMV against it).
template <class T>
void inplace_fused_l2_step(T* W, T* b, const T* dZ, const T* A_prev, const T* ones, std::size_t batch,
                           std::size_t n_out, std::size_t n_in, T lr, T lam_over_m);

// dW <- beta dW + scale dZ^T . A_prev and db <- db + scale sum_rows dZ: accumulates the gradient of a
// block of records; start with dW = (lam/m) W, beta = 1 and scale = 1/m to build dJ/dW block by block.
template <class T>
void accumulate_gradient(T* dW, T* db, const T* dZ, const T* A_prev, const T* ones, std::size_t batch,
                         std::size_t n_out, std::size_t n_in, T scale);

// W (n) <- (1 - lr*lam_over_m) W - lr dW in one pass over the same bytes as an axpy: the L2 step for
// a gradient dW (the mean dL/dW) computed elsewhere.
template <class T>
void inplace_l2_update(T* W, const T* dW, std::size_t n, T lr, T lam_over_m);

}  // namespace l2fast
