// CSR x dense products of the first layer, threaded with parallel_for: the forward pass over rows, the weight
// gradient over blocks of W's columns.
#include "sparse.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "blas.hpp"
#include "parallel.hpp"

namespace l2fast {

namespace {

// Below this many multiply-adds a product runs on the calling thread: waking helpers would cost more.
constexpr std::size_t kMinParallelWork = std::size_t(1) << 16;

std::size_t threads() { return std::size_t(std::max(blas::num_threads(), 1)); }

template <class T>
std::size_t stored_entries(const SparseRows<T>& X_rows) {
    std::size_t nnz = 0;
    for (std::size_t r = 0; r < X_rows.rows(); ++r) nnz += std::size_t(X_rows.end[r] - X_rows.begin[r]);
    return nnz;
}

template <class T, class I>
void check_csr_as(const Csr<T>& X, const I* indices, const I* indptr, const char* name) {
    const std::string at = std::string(name) + ": ";
    if (indptr[0] != 0) throw std::invalid_argument(at + "indptr[0] must be 0, got " + std::to_string(indptr[0]));
    for (std::size_t i = 0; i < X.rows; ++i) {
        const I b = indptr[i], e = indptr[i + 1];
        if (e < b) throw std::invalid_argument(at + "indptr decreases at row " + std::to_string(i));
        if (std::uint64_t(e) > X.nnz)
            throw std::invalid_argument(at + "indptr[" + std::to_string(i + 1) + "] = " + std::to_string(e) +
                                        " is beyond the " + std::to_string(X.nnz) + " stored entries");
        for (I p = b; p < e; ++p) {
            const I j = indices[p];
            if (j < 0 || std::uint64_t(j) >= X.cols)
                throw std::invalid_argument(at + "column index " + std::to_string(j) + " in row " + std::to_string(i) +
                                            " is outside [0, " + std::to_string(X.cols) + ")");
            if (p > b && j <= indices[p - 1])
                throw std::invalid_argument(at + "the column indices of row " + std::to_string(i) +
                                            " are unsorted or repeat one; sort them and sum duplicates "
                                            "(scipy: X.sum_duplicates())");
        }
    }
}

// W[o][j] is W[o * out_stride + j * in_stride]: (cols, 1) for WeightLayout::Rows, (1, n_out) for Transposed.
struct Strides {
    std::size_t out_stride, in_stride;

    Strides(WeightLayout layout, std::size_t n_out, std::size_t cols)
        : out_stride(layout == WeightLayout::Rows ? cols : 1), in_stride(layout == WeightLayout::Rows ? 1 : n_out) {}
};

template <class T, class I>
void forward_as(const SparseRows<T>& X_rows, const I* indices, const T* W, Strides w, T scale, const T* b,
                std::size_t n_out, Activation act, T* out) {
    const Csr<T>& X = *X_rows.X;
    const std::size_t rows = X_rows.rows(), cols = X.cols;
    const std::size_t work = stored_entries(X_rows) * n_out;
    const std::size_t min_share = work < kMinParallelWork ? rows : std::max<std::size_t>(1, rows * 8192 / work);
    parallel_for(rows, threads(), min_share, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            T* z = out + r * n_out;
            std::fill(z, z + n_out, T(0));
            for (std::int64_t p = X_rows.begin[r]; p < X_rows.end[r]; ++p) {
                const std::uint64_t j = std::uint64_t(indices[p]);
                if (j >= cols) continue;
                const T v = X.data[p];
                const T* w_j = W + j * w.in_stride;
                for (std::size_t o = 0; o < n_out; ++o) z[o] += v * w_j[o * w.out_stride];
            }
            for (std::size_t o = 0; o < n_out; ++o) z[o] *= scale;
        }
        inplace_bias_activation(out + r0 * n_out, b, r1 - r0, n_out, act);
    });
}

template <class T, class I>
void gradient_as(T* dW, Strides w, const T* dZ, const SparseRows<T>& X_rows, const I* indices, std::size_t n_out,
                 T alpha, T beta) {
    const Csr<T>& X = *X_rows.X;
    const std::size_t rows = X_rows.rows(), cols = X.cols;
    const std::size_t work = stored_entries(X_rows) * n_out;
    const std::size_t min_share = work < kMinParallelWork ? cols : std::max<std::size_t>(256, cols / (4 * threads()));
    parallel_for(cols, threads(), min_share, [&](std::size_t j0, std::size_t j1) {
        if (beta != T(1)) {  // along the memory order of the layout
            auto rescale = [&](std::size_t o, std::size_t j) {
                T& d = dW[o * w.out_stride + j * w.in_stride];
                d = beta == T(0) ? T(0) : beta * d;
            };
            if (w.in_stride == 1) {
                for (std::size_t o = 0; o < n_out; ++o)
                    for (std::size_t j = j0; j < j1; ++j) rescale(o, j);
            } else {
                for (std::size_t j = j0; j < j1; ++j)
                    for (std::size_t o = 0; o < n_out; ++o) rescale(o, j);
            }
        }
        const bool whole = j0 == 0 && j1 == cols;
        for (std::size_t r = 0; r < rows; ++r) {
            const I* first = indices + X_rows.begin[r];
            const I* last = indices + X_rows.end[r];
            // Sorted columns: this share's entries of the row are one run, found by binary search.
            const I* p = whole ? first : std::lower_bound(first, last, I(j0));
            const T* dz = dZ + r * n_out;
            for (; p < last; ++p) {
                const std::uint64_t j = std::uint64_t(*p);
                if (j >= j1) {
                    if (j < cols) break;  // past this share (in range, sorted)
                    continue;             // out of range: never followed
                }
                if (j < j0) continue;
                const T v = alpha * X.data[p - indices];
                T* d_j = dW + j * w.in_stride;
                for (std::size_t o = 0; o < n_out; ++o) d_j[o * w.out_stride] += v * dz[o];
            }
        }
    });
}

}  // namespace

template <class T>
void check_csr(const Csr<T>& X, const char* name) {
    if (X.indptr64)
        check_csr_as(X, X.indices64, X.indptr64, name);
    else
        check_csr_as(X, X.indices32, X.indptr32, name);
}

template <class T>
void gather_sparse_rows(const Csr<T>& X, const std::int64_t* picked, std::size_t first, std::size_t n,
                        SparseRows<T>& rows) {
    rows.X = &X;
    rows.begin.resize(n);
    rows.end.resize(n);
    const std::int64_t nnz = std::int64_t(X.nnz);
    for (std::size_t r = 0; r < n; ++r) {
        const std::size_t i = picked ? std::size_t(picked[r]) : first + r;
        const std::int64_t b = std::clamp<std::int64_t>(X.row_start(i), 0, nnz);
        rows.begin[r] = b;
        rows.end[r] = std::clamp<std::int64_t>(X.row_start(i + 1), b, nnz);
    }
}

template <class T>
void sparse_dense_forward(const SparseRows<T>& X_rows, const T* W, WeightLayout layout, T scale, const T* b,
                          std::size_t n_out, Activation act, T* out) {
    const Strides w(layout, n_out, X_rows.X->cols);
    if (X_rows.X->indices64)
        forward_as(X_rows, X_rows.X->indices64, W, w, scale, b, n_out, act, out);
    else
        forward_as(X_rows, X_rows.X->indices32, W, w, scale, b, n_out, act, out);
}

template <class T>
void sparse_gradient_product(T* dW, WeightLayout layout, const T* dZ, const SparseRows<T>& X_rows, std::size_t n_out,
                             T alpha, T beta) {
    const Strides w(layout, n_out, X_rows.X->cols);
    if (X_rows.X->indices64)
        gradient_as(dW, w, dZ, X_rows, X_rows.X->indices64, n_out, alpha, beta);
    else
        gradient_as(dW, w, dZ, X_rows, X_rows.X->indices32, n_out, alpha, beta);
}

#define L2FAST_INSTANTIATE(T)                                                                                \
    template void check_csr(const Csr<T>&, const char*);                                                     \
    template void gather_sparse_rows(const Csr<T>&, const std::int64_t*, std::size_t, std::size_t,          \
                                     SparseRows<T>&);                                                        \
    template void sparse_dense_forward(const SparseRows<T>&, const T*, WeightLayout, T, const T*, std::size_t, \
                                       Activation, T*);                                                      \
    template void sparse_gradient_product(T*, WeightLayout, const T*, const SparseRows<T>&, std::size_t, T, T);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
