// Dense layer passes: forward (GEMM, then bias + activation in one pass) and the input gradient.
#pragma once

#include <cstddef>

#include "activations.hpp"

namespace l2fast {

// A_out (batch x n_out) <- act(A_prev (batch x n_in) . (scale W)^T + b), W is (n_out x n_in) row-major.
template <class T>
void dense_forward(const T* A_prev, std::size_t batch, std::size_t n_in, const T* W, T scale, const T* b,
                   std::size_t n_out, Activation act, T* A_out);

// dA_prev (batch x n_in) <- dZ (batch x n_out) . (scale W); call it before W is updated.
template <class T>
void dense_backward_input(const T* dZ, std::size_t batch, std::size_t n_out, const T* W, T scale,
                          std::size_t n_in, T* dA_prev);

}  // namespace l2fast
