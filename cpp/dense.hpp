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

// A layer trained on its transposed weights W_t (n_in x n_out, see train_transposed in network.hpp) takes its two
// products in slices of at most transposed_slice_rows(n_out) rows of W_t: OpenBLAS's small-matrix kernels read
// their B operand (W_t) again for each few rows of A, fast while it stays in the L1 cache (48 KB) and at twice
// the time once it spills (784-64-10 at batch 32: the forward product 21 us in 7 slices against 26 us in the 4
// of 196 rows that the GEMM wrapper would cut; 784-128-10 at batch 64, on W: 279 us for both products, 229 us
// in slices of W_t). The slices are fixed by the shape alone, so the bits do not depend on the threads.
std::size_t transposed_slice_rows(std::size_t n_out, std::size_t bytes_per_value);

// Z (rows x n_out) <- alpha A (rows x n_in) . W_t (n_in x n_out), summed slice by slice.
template <class T>
void transposed_forward(const T* A, std::size_t rows, std::size_t n_in, const T* W_t, std::size_t n_out, T alpha,
                        T* Z);

// W_t (n_in x n_out) <- beta W_t + alpha A_prev^T (n_in x rows) . dZ (rows x n_out), a block of W_t's rows at a
// time.
template <class T>
void transposed_weight_product(const T* A_prev, const T* dZ, std::size_t rows, std::size_t n_in, std::size_t n_out,
                               T alpha, T beta, T* W_t);

}  // namespace l2fast
