// Sparse first-layer passes: X in CSR form against a dense W, the two products a layer takes of its input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "activations.hpp"

namespace l2fast {

// A CSR matrix (rows x cols): row i's entries are data[p], column indices[p] for p in [indptr[i], indptr[i+1]).
// Indices and row pointers are both int32 or both int64 (scipy's two index types): exactly one pair is set.
template <class T>
struct Csr {
    const T* data = nullptr;
    const std::int32_t* indices32 = nullptr;
    const std::int32_t* indptr32 = nullptr;
    const std::int64_t* indices64 = nullptr;
    const std::int64_t* indptr64 = nullptr;
    std::size_t rows = 0, cols = 0, nnz = 0;  // nnz: the length of data and of indices

    std::int64_t row_start(std::size_t i) const { return indptr64 ? indptr64[i] : indptr32[i]; }
};

// Throws std::invalid_argument naming `name` unless indptr starts at 0, never decreases and ends within nnz, and
// each row's column indices lie in [0, cols) and increase strictly (sorted, no duplicates).
template <class T>
void check_csr(const Csr<T>& X, const char* name);

// Some rows of a Csr, in any order: row r of the block is X's entries [begin[r], end[r]). A block of consecutive
// rows and a shuffled minibatch are both this small list of ranges over X's own arrays: nothing is copied.
template <class T>
struct SparseRows {
    const Csr<T>* X = nullptr;
    std::vector<std::int64_t> begin, end;

    std::size_t rows() const { return begin.size(); }
};

// rows <- X's rows picked[0..n) (picked null: rows first, first + 1, ..., first + n - 1). Each range is read once
// and clamped to [0, nnz], so the kernels stay within X's arrays whatever its row pointers hold.
template <class T>
void gather_sparse_rows(const Csr<T>& X, const std::int64_t* picked, std::size_t first, std::size_t n,
                        SparseRows<T>& rows);

// How the kernels find W[o][j] (o < n_out, j < X.cols): in the layer's own W (n_out x cols, row-major), or in a
// transposed copy (cols x n_out, row-major), where each stored entry of X meets n_out neighbouring weights
// (one cache line) instead of n_out lines cols apart: worth the copy for whole-data passes with n_out > 1.
enum class WeightLayout { Rows, Transposed };

// out (rows x n_out) <- act(X_rows . (scale W)^T + b), b (n_out): the first layer's forward pass, split over the
// rows between OpenBLAS's number of threads.
template <class T>
void sparse_dense_forward(const SparseRows<T>& X_rows, const T* W, WeightLayout layout, T scale, const T* b,
                          std::size_t n_out, Activation act, T* out);

// dW <- beta dW + alpha dZ^T . X_rows, dZ (rows x n_out), dW laid out as `layout` says: the first layer's weight
// gradient, split over blocks of X's columns (each thread owns its columns of dW: no atomics). beta = 0
// overwrites dW. A column index outside [0, cols) is skipped rather than followed (check_csr refuses such input
// beforehand).
template <class T>
void sparse_gradient_product(T* dW, WeightLayout layout, const T* dZ, const SparseRows<T>& X_rows, std::size_t n_out,
                             T alpha, T beta);

}  // namespace l2fast
