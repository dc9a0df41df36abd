// A linear model's gradient with curvature, and its Hessian-vector products, in one read of X (see newton.hpp).
#include "newton.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"

namespace l2fast {

namespace {

constexpr std::size_t kMinWorkPerThread = std::size_t(1) << 16;  // multiply-adds below which one thread does it

// One record's row as (values, columns, count): a dense row has columns null (0..n_in-1).
template <class T, class I>
struct Row {
    const T* values;
    const I* columns;
    std::size_t count;
};

template <class T, class I, class V>
L2FAST_VECTOR_CLONES double row_dot(const Row<T, I>& x, const V* v, std::size_t n_in) {
    double sum = 0.0;
    if (x.columns) {
        for (std::size_t p = 0; p < x.count; ++p) {
            const std::uint64_t j = std::uint64_t(x.columns[p]);
            if (j < n_in) sum += double(x.values[p]) * double(v[j]);
        }
    } else {
        for (std::size_t j = 0; j < x.count; ++j) sum += double(x.values[j]) * double(v[j]);
    }
    return sum;
}

template <class T, class I>
L2FAST_VECTOR_CLONES void row_add_scaled(const Row<T, I>& x, double r, double* h, std::size_t n_in) {
    if (x.columns) {
        for (std::size_t p = 0; p < x.count; ++p) {
            const std::uint64_t j = std::uint64_t(x.columns[p]);
            if (j < n_in) h[j] += r * double(x.values[p]);
        }
    } else {
        for (std::size_t j = 0; j < x.count; ++j) h[j] += r * double(x.values[j]);
    }
}

// z (n_out) += the row times WT (n_in x n_out, row-major: each stored entry meets its n_out weights side by side).
template <class T, class I>
void add_row_product(const Row<T, I>& x, const double* WT, std::size_t n_in, std::size_t n_out, double* z) {
    if (n_out == 1) {
        z[0] += row_dot(x, WT, n_in);
        return;
    }
    for (std::size_t p = 0; p < x.count; ++p) {
        const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
        if (j >= n_in) continue;
        const double v = double(x.values[p]);
        const double* w = WT + j * n_out;
        for (std::size_t k = 0; k < n_out; ++k) z[k] += v * w[k];
    }
}

// GT (n_in x n_out) += the row's outer product with r (n_out).
template <class T, class I>
void add_row_outer(const Row<T, I>& x, const double* r, std::size_t n_in, std::size_t n_out, double* GT) {
    if (n_out == 1) {
        if (r[0] != 0.0) row_add_scaled(x, r[0], GT, n_in);
        return;
    }
    for (std::size_t p = 0; p < x.count; ++p) {
        const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
        if (j >= n_in) continue;
        const double v = double(x.values[p]);
        double* g = GT + j * n_out;
        for (std::size_t k = 0; k < n_out; ++k) g[k] += v * r[k];
    }
}

// A (rows x cols) transposed into double, row-major both.
template <class T>
std::vector<double> transposed(const T* A, std::size_t rows, std::size_t cols) {
    std::vector<double> AT(rows * cols);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) AT[c * rows + r] = double(A[r * cols + c]);
    return AT;
}

// Calls body(rows_at) with rows_at(i) giving record i of X as a Row, dense or CSR of either index type.
template <class T, class Body>
void with_rows(const Dataset<T>& data, std::size_t n_in, Body body) {
    if (!data.sparse) {
        body([&](std::size_t i) { return Row<T, int>{data.X + i * n_in, nullptr, n_in}; });
        return;
    }
    const Csr<T>& X = data.X_csr;
    auto csr = [&](const auto* indices, const auto* indptr) {
        using I = std::remove_cv_t<std::remove_pointer_t<decltype(indices)>>;
        const std::int64_t nnz = std::int64_t(X.nnz);
        body([=](std::size_t i) {
            const std::int64_t begin = std::clamp<std::int64_t>(indptr[i], 0, nnz);
            const std::int64_t end = std::clamp<std::int64_t>(indptr[i + 1], begin, nnz);
            return Row<T, I>{X.data + begin, indices + begin, std::size_t(end - begin)};
        });
    };
    if (X.indptr64)
        csr(X.indices64, X.indptr64);
    else
        csr(X.indices32, X.indptr32);
}

// Sums pass(begin, end, sums) over the rows [0, m) into out (size doubles, overwritten): the rows are cut into
// one share per thread (fewer for little work), the first summed into out, each other into its own zeroed copy,
// added up in share order.
template <class Pass>
void sum_over_shares(std::size_t m, std::size_t work, std::size_t size, double* out, Pass pass) {
    const std::size_t shares = std::min<std::size_t>(std::max(blas::num_threads(), 1),
                                                     std::max<std::size_t>(1, std::min(m, work / kMinWorkPerThread)));
    std::fill(out, out + size, 0.0);
    std::vector<double> others((shares - 1) * size, 0.0);
    parallel_for(shares, shares, 1, [&](std::size_t s0, std::size_t s1) {
        for (std::size_t s = s0; s < s1; ++s)
            pass(m * s / shares, m * (s + 1) / shares, s == 0 ? out : others.data() + (s - 1) * size);
    });
    for (std::size_t s = 1; s < shares; ++s)
        for (std::size_t j = 0; j < size; ++j) out[j] += others[(s - 1) * size + j];
}

// r (n_out) <- the curvature of record i applied to u (n_out), in place.
inline void apply_curvature(const Curvature& curvature, std::size_t i, std::size_t n_out, double* u) {
    const double c = curvature.c[i];
    if (!curvature.P) {
        for (std::size_t k = 0; k < n_out; ++k) u[k] *= c;
        return;
    }
    const double* p = curvature.P + i * n_out;
    double pu = 0.0;
    for (std::size_t k = 0; k < n_out; ++k) pu += p[k] * u[k];
    for (std::size_t k = 0; k < n_out; ++k) u[k] = c * p[k] * (u[k] - pu);
}

// Record i's loss from its logits z (n_out, double), which become w dL/dz; sets c[i] and P's row i (softmax).
template <class T>
double record_loss(const Dataset<T>& data, Loss loss, std::size_t i, std::size_t n_out, double* z, double* c,
                   double* P) {
    const double w = data.weights ? double(data.weights[i]) : 1.0;
    c[i] = w;
    if (loss == Loss::Softmax) {
        const std::size_t label = std::size_t(data.y_labels[i]);
        const double z_max = *std::max_element(z, z + n_out), z_label = z[label];
        double total = 0.0;
        for (std::size_t k = 0; k < n_out; ++k) total += (z[k] = std::exp(z[k] - z_max));
        const double L = std::log(total) + z_max - z_label;
        double* p = P + i * n_out;
        for (std::size_t k = 0; k < n_out; ++k) {
            p[k] = z[k] / total;
            z[k] = w * (p[k] - (k == label ? 1.0 : 0.0));
        }
        return w * L;
    }
    if (loss == Loss::Logistic) {
        const double t = double(data.y_values[i]), e = std::exp(-std::abs(z[0]));
        const double L = std::max(z[0], 0.0) - t * z[0] + std::log1p(e);
        const double p = z[0] >= 0 ? 1 / (1 + e) : e / (1 + e);
        c[i] = w * p * (1 - p);
        z[0] = w * (p - t);
        return w * L;
    }
    double L = 0.0;
    for (std::size_t k = 0; k < n_out; ++k) {
        const double d = z[k] - double(data.y_values[i * n_out + k]);
        L += 0.5 * d * d;
        z[k] = w * d;
    }
    return w * L;
}

}  // namespace

template <class T>
double linear_gradient_curvature(const Dataset<T>& data, Loss loss, std::size_t n_in, std::size_t n_out, const T* W,
                                 const T* b, double lam_over_m, double* dW, double* db, double* c, double* P) {
    const std::size_t size = n_out * n_in, m = data.m;
    const std::size_t entries = data.sparse ? data.X_csr.nnz : m * n_in;
    const std::vector<double> WT = transposed(W, n_out, n_in);
    std::vector<double> out(size + n_out + 1);  // dW transposed (n_in x n_out), db, the loss sum
    with_rows(data, n_in, [&](auto row_at) {
        sum_over_shares(m, entries * n_out * 2, out.size(), out.data(),
                        [&](std::size_t begin, std::size_t end, double* sums) {
                            std::vector<double> z(n_out);
                            for (std::size_t i = begin; i < end; ++i) {
                                const auto x = row_at(i);
                                for (std::size_t k = 0; k < n_out; ++k) z[k] = double(b[k]);
                                add_row_product(x, WT.data(), n_in, n_out, z.data());
                                sums[size + n_out] += record_loss(data, loss, i, n_out, z.data(), c, P);
                                add_row_outer(x, z.data(), n_in, n_out, sums);
                                for (std::size_t k = 0; k < n_out; ++k) sums[size + k] += z[k];
                            }
                        });
    });
    const double inv_m = 1.0 / double(m);
    for (std::size_t k = 0; k < n_out; ++k)
        for (std::size_t j = 0; j < n_in; ++j)
            dW[k * n_in + j] = out[j * n_out + k] * inv_m + lam_over_m * double(W[k * n_in + j]);
    for (std::size_t k = 0; k < n_out; ++k) db[k] = out[size + k] * inv_m;
    return out[size + n_out];
}

template <class T>
void linear_hessian_product(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const Curvature& curvature,
                            const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b) {
    const std::size_t size = n_out * n_in, m = data.m;
    const std::size_t entries = data.sparse ? data.X_csr.nnz : m * n_in;
    const std::vector<double> VT = transposed(V, n_out, n_in);
    std::vector<double> out(size + n_out);  // HV transposed (n_in x n_out), Hv_b
    with_rows(data, n_in, [&](auto row_at) {
        sum_over_shares(m, entries * n_out * 2, out.size(), out.data(),
                        [&](std::size_t begin, std::size_t end, double* sums) {
                            std::vector<double> u(n_out);
                            for (std::size_t i = begin; i < end; ++i) {
                                const auto x = row_at(i);
                                std::copy(v_b, v_b + n_out, u.begin());
                                add_row_product(x, VT.data(), n_in, n_out, u.data());
                                apply_curvature(curvature, i, n_out, u.data());
                                add_row_outer(x, u.data(), n_in, n_out, sums);
                                for (std::size_t k = 0; k < n_out; ++k) sums[size + k] += u[k];
                            }
                        });
    });
    const double inv_m = 1.0 / double(m);
    for (std::size_t k = 0; k < n_out; ++k)
        for (std::size_t j = 0; j < n_in; ++j)
            HV[k * n_in + j] = out[j * n_out + k] * inv_m + lam_over_m * V[k * n_in + j];
    for (std::size_t k = 0; k < n_out; ++k) Hv_b[k] = out[size + k] * inv_m;
}

#define L2FAST_INSTANTIATE(T)                                                                                      \
    template double linear_gradient_curvature(const Dataset<T>&, Loss, std::size_t, std::size_t, const T*,        \
                                              const T*, double, double*, double*, double*, double*);              \
    template void linear_hessian_product(const Dataset<T>&, std::size_t, std::size_t, const Curvature&,           \
                                         const double*, const double*, double, double*, double*);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
