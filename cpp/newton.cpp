// Hessian-vector products for linear models in one read of X, dense or CSR (see newton.hpp).
#include "newton.hpp"

#include <algorithm>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"

namespace l2fast {

namespace {

constexpr std::size_t kMinWorkPerThread = std::size_t(1) << 16;  // multiply-adds below which one thread does it

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

// One record's row as (values, columns, count): a dense row has columns null (0..n_in-1).
template <class T, class I>
struct Row {
    const T* values;
    const I* columns;
    std::size_t count;
};

template <class T, class I>
L2FAST_VECTOR_CLONES double row_dot(const Row<T, I>& x, const double* v) {
    double sum = 0.0;
    if (x.columns) {
        for (std::size_t p = 0; p < x.count; ++p) sum += double(x.values[p]) * v[x.columns[p]];
    } else {
        for (std::size_t j = 0; j < x.count; ++j) sum += double(x.values[j]) * v[j];
    }
    return sum;
}

template <class T, class I>
L2FAST_VECTOR_CLONES void row_add_scaled(const Row<T, I>& x, double r, double* h) {
    if (x.columns) {
        for (std::size_t p = 0; p < x.count; ++p) h[x.columns[p]] += r * double(x.values[p]);
    } else {
        for (std::size_t j = 0; j < x.count; ++j) h[j] += r * double(x.values[j]);
    }
}

// Rows [begin, end): H (n_out x n_in) and h_b (n_out) += sum_i R_i x_i^T and sum_i R_i.
template <class T, class I, class RowAt>
void share_pass(RowAt row_at, std::size_t begin, std::size_t end, std::size_t n_in, std::size_t n_out,
                const Curvature& curvature, const double* V, const double* v_b, double* H, double* h_b) {
    std::vector<double> u(n_out);
    for (std::size_t i = begin; i < end; ++i) {
        const Row<T, I> x = row_at(i);
        for (std::size_t k = 0; k < n_out; ++k) u[k] = row_dot(x, V + k * n_in) + v_b[k];
        apply_curvature(curvature, i, n_out, u.data());
        for (std::size_t k = 0; k < n_out; ++k) {
            if (u[k] != 0.0) row_add_scaled(x, u[k], H + k * n_in);
            h_b[k] += u[k];
        }
    }
}

template <class T, class I, class RowAt>
void product(RowAt row_at, std::size_t m, std::size_t entries, std::size_t n_in, std::size_t n_out,
             const Curvature& curvature, const double* V, const double* v_b, double lam_over_m, double* HV,
             double* Hv_b) {
    const std::size_t size = n_out * n_in;
    const std::size_t work = entries * n_out * 2;
    const std::size_t shares = std::min<std::size_t>(std::max(blas::num_threads(), 1),
                                                     std::max<std::size_t>(1, std::min(m, work / kMinWorkPerThread)));
    // Share 0 sums into HV, Hv_b; the others into their own (size + n_out) doubles.
    std::vector<double> extra((shares - 1) * (size + n_out), 0.0);
    std::fill(HV, HV + size, 0.0);
    std::fill(Hv_b, Hv_b + n_out, 0.0);
    parallel_for(shares, shares, 1, [&](std::size_t s0, std::size_t s1) {
        for (std::size_t s = s0; s < s1; ++s) {
            double* H = s == 0 ? HV : extra.data() + (s - 1) * (size + n_out);
            double* h_b = s == 0 ? Hv_b : H + size;
            share_pass<T, I>(row_at, m * s / shares, m * (s + 1) / shares, n_in, n_out, curvature, V, v_b, H, h_b);
        }
    });
    for (std::size_t s = 1; s < shares; ++s) {
        const double* H = extra.data() + (s - 1) * (size + n_out);
        for (std::size_t j = 0; j < size; ++j) HV[j] += H[j];
        for (std::size_t k = 0; k < n_out; ++k) Hv_b[k] += H[size + k];
    }
    const double inv_m = 1.0 / double(m);
    for (std::size_t j = 0; j < size; ++j) HV[j] = HV[j] * inv_m + lam_over_m * V[j];
    for (std::size_t k = 0; k < n_out; ++k) Hv_b[k] *= inv_m;
}

template <class T, class I>
void sparse_product(const Csr<T>& X, const I* indices, const I* indptr, std::size_t n_out, const Curvature& curvature,
                    const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b) {
    auto row_at = [&](std::size_t i) {
        return Row<T, I>{X.data + indptr[i], indices + indptr[i], std::size_t(indptr[i + 1] - indptr[i])};
    };
    product<T, I>(row_at, X.rows, X.nnz, X.cols, n_out, curvature, V, v_b, lam_over_m, HV, Hv_b);
}

}  // namespace

template <class T>
void linear_hessian_product(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const Curvature& curvature,
                            const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b) {
    if (!data.sparse) {
        auto row_at = [&](std::size_t i) { return Row<T, int>{data.X + i * n_in, nullptr, n_in}; };
        product<T, int>(row_at, data.m, data.m * n_in, n_in, n_out, curvature, V, v_b, lam_over_m, HV, Hv_b);
    } else if (data.X_csr.indptr64) {
        sparse_product(data.X_csr, data.X_csr.indices64, data.X_csr.indptr64, n_out, curvature, V, v_b, lam_over_m,
                       HV, Hv_b);
    } else {
        sparse_product(data.X_csr, data.X_csr.indices32, data.X_csr.indptr32, n_out, curvature, V, v_b, lam_over_m,
                       HV, Hv_b);
    }
}

template void linear_hessian_product(const Dataset<float>&, std::size_t, std::size_t, const Curvature&, const double*,
                                     const double*, double, double*, double*);
template void linear_hessian_product(const Dataset<double>&, std::size_t, std::size_t, const Curvature&,
                                     const double*, const double*, double, double*, double*);

}  // namespace l2fast
