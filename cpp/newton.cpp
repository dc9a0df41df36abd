// A linear model's gradient with curvature, and its Hessian-vector products, in one read of X (see newton.hpp).
#include "newton.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "huge_pages.hpp"
#include "parallel.hpp"
#include "vectors.hpp"

namespace l2fast {

namespace {

// The record loops are compiled three times, for AVX-512, AVX2 and any x86-64, the best picked at load time. All
// three give the same bits: each sum is taken in one order, and this file is compiled with -ffp-contract=off, so
// that no clone fuses a multiply and an add that another rounds twice.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_NEWTON_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define L2FAST_NEWTON_CLONES
#endif

constexpr std::size_t kMinWorkPerThread = std::size_t(1) << 16;  // multiply-adds below which one thread does it

// One record's row as (values, columns, count): a dense row has columns null (0..n_in-1).
template <class T, class I>
struct Row {
    const T* values;
    const I* columns;
    std::size_t count;
    std::size_t readable;  // entries of columns that may be read, the next rows' included (for prefetching)
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

// The rows of WT and of the sums as the passes lay them out: n_out doubles padded to a width the compiler knows
// (1, 2, 4, 8, 12 or 16 for n_out up to 16, the padding zero), so that each of a stored entry's products is a few
// whole vectors instead of a loop of unknown length; n_out itself beyond 16. The padded outputs stay zero.
template <std::size_t S>
struct FixedWidth {
    static constexpr std::size_t stride() { return S; }
    static constexpr std::size_t vectors = S % kWidth<double> == 0 ? S / kWidth<double> : 0;  // whole DoubleVecs
};
struct AnyWidth {
    std::size_t n;
    std::size_t stride() const { return n; }
    static constexpr std::size_t vectors = 0;
};

// Calls body(width) with the layout for n_out outputs (above).
template <class Body>
void with_width(std::size_t n_out, Body body) {
    if (n_out == 1)
        body(FixedWidth<1>{});
    else if (n_out == 2)
        body(FixedWidth<2>{});
    else if (n_out <= 4)
        body(FixedWidth<4>{});
    else if (n_out <= 8)
        body(FixedWidth<8>{});
    else if (n_out <= 12)
        body(FixedWidth<12>{});
    else if (n_out <= 16)
        body(FixedWidth<16>{});
    else
        body(AnyWidth{n_out});
}

// Asks for the rows of A (n_in x stride) at the entry's column, for reading or (write) for updating.
template <bool write>
[[gnu::always_inline]] inline void prefetch_row(const double* A, std::uint64_t j, std::size_t n_in, std::size_t s) {
    if (j >= n_in) return;
    __builtin_prefetch(A + j * s, write);
    __builtin_prefetch(A + j * s + s - 1, write);  // a row may end on the next cache line
}

// z (width) += the row times WT (n_in x width, row-major: each stored entry meets its outputs side by side). A
// sparse row's entries meet rows of WT, and then of GT (add_row_outer, next), in random order: each is asked for
// ahead, WT's kLookahead entries ahead (into the next rows too), GT's as its entry passes here.
template <class T, class I, class Width>
[[gnu::always_inline]] inline void add_row_product(const Row<T, I>& x, const double* WT, std::size_t n_in,
                                                   Width width, double* z, const double* GT) {
    if constexpr (std::is_same_v<Width, FixedWidth<1>>) {
        z[0] += row_dot(x, WT, n_in);
        return;
    }
    const std::size_t s = width.stride();
    if constexpr (Width::vectors > 0) {  // z held in registers across the row
        constexpr std::size_t n = Width::vectors, lanes = kWidth<double>;
        DoubleVec acc[n];
        for (std::size_t q = 0; q < n; ++q) acc[q] = load<DoubleVec>(z + q * lanes);
        constexpr std::size_t kLookahead = 16;
        for (std::size_t p = 0; p < x.count; ++p) {
            const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
            if (x.columns) {
                if (p + kLookahead < x.readable) prefetch_row<false>(WT, std::uint64_t(x.columns[p + kLookahead]), n_in, s);
                prefetch_row<true>(GT, j, n_in, s);
            }
            if (j >= n_in) continue;
            const double v = double(x.values[p]);
            const DoubleVec vv = {v, v, v, v};
            const double* w = WT + j * s;
            for (std::size_t q = 0; q < n; ++q) acc[q] += vv * load<DoubleVec>(w + q * lanes);
        }
        for (std::size_t q = 0; q < n; ++q) store(z + q * lanes, acc[q]);
        return;
    }
    for (std::size_t p = 0; p < x.count; ++p) {
        const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
        if (j >= n_in) continue;
        const double v = double(x.values[p]);
        const double* w = WT + j * s;
        for (std::size_t k = 0; k < s; ++k) z[k] += v * w[k];
    }
}

// GT (n_in x width) += the row's outer product with r (width); with squared, the row's squares' (x_ij^2 in double).
template <bool squared = false, class T, class I, class Width>
[[gnu::always_inline]] inline void add_row_outer(const Row<T, I>& x, const double* r, std::size_t n_in, Width width,
                                                 double* GT) {
    const auto value = [&](std::size_t p) {
        const double v = squared ? double(x.values[p]) * double(x.values[p]) : double(x.values[p]);
        return squared ? v * v : v;
    };
    if constexpr (std::is_same_v<Width, FixedWidth<1>> && !squared) {
        if (r[0] != 0.0) row_add_scaled(x, r[0], GT, n_in);
        return;
    }
    const std::size_t s = width.stride();
    if constexpr (Width::vectors > 0) {  // r held in registers across the row
        constexpr std::size_t n = Width::vectors, lanes = kWidth<double>;
        DoubleVec rv[n];
        for (std::size_t q = 0; q < n; ++q) rv[q] = load<DoubleVec>(r + q * lanes);
        for (std::size_t p = 0; p < x.count; ++p) {
            const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
            if (j >= n_in) continue;
            const double v = squared ? double(x.values[p]) * double(x.values[p]) : double(x.values[p]);
            const DoubleVec vv = {v, v, v, v};
            double* g = GT + j * s;
            for (std::size_t q = 0; q < n; ++q) store(g + q * lanes, load<DoubleVec>(g + q * lanes) + vv * rv[q]);
        }
        return;
    }
    for (std::size_t p = 0; p < x.count; ++p) {
        const std::uint64_t j = x.columns ? std::uint64_t(x.columns[p]) : p;
        if (j >= n_in) continue;
        const double v = squared ? double(x.values[p]) * double(x.values[p]) : double(x.values[p]);
        double* g = GT + j * s;
        for (std::size_t k = 0; k < s; ++k) g[k] += v * r[k];
    }
}

// A (rows x cols) transposed into double, row-major both, its rows padded with zeros to stride >= rows entries.
template <class T>
HugeArray transposed(const T* A, std::size_t rows, std::size_t cols, std::size_t stride) {
    HugeArray AT = huge_zeroed(stride * cols);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) AT[c * stride + r] = double(A[r * cols + c]);
    return AT;
}

// Calls body(rows_at) with rows_at(i) giving record i of X as a Row, dense or CSR of either index type.
template <class T, class Body>
void with_rows(const Dataset<T>& data, std::size_t n_in, Body body) {
    if (!data.sparse) {
        body([&](std::size_t i) { return Row<T, int>{data.X + i * n_in, nullptr, n_in, n_in}; });
        return;
    }
    const Csr<T>& X = data.X_csr;
    auto csr = [&](const auto* indices, const auto* indptr) {
        using I = std::remove_cv_t<std::remove_pointer_t<decltype(indices)>>;
        const std::int64_t nnz = std::int64_t(X.nnz);
        body([=](std::size_t i) {
            const std::int64_t begin = std::clamp<std::int64_t>(indptr[i], 0, nnz);
            const std::int64_t end = std::clamp<std::int64_t>(indptr[i + 1], begin, nnz);
            return Row<T, I>{X.data + begin, indices + begin, std::size_t(end - begin), std::size_t(nnz - begin)};
        });
    };
    if (X.indptr64)
        csr(X.indices64, X.indptr64);
    else
        csr(X.indices32, X.indptr32);
}

// Returns the sums (size doubles) of pass(begin, end, sums) over the rows [0, m): the rows are cut into one share
// per thread (fewer for little work), each summed into its own zeroed array, added up in share order into the
// first.
template <class Pass>
HugeArray sum_over_shares(std::size_t m, std::size_t work, std::size_t size, Pass pass) {
    const std::size_t shares = std::min<std::size_t>(std::max(blas::num_threads(), 1),
                                                     std::max<std::size_t>(1, std::min(m, work / kMinWorkPerThread)));
    HugeArray out = huge_zeroed(size);
    const HugeArray others = huge_zeroed((shares - 1) * size);
    parallel_for(shares, shares, 1, [&](std::size_t s0, std::size_t s1) {
        for (std::size_t s = s0; s < s1; ++s)
            pass(m * s / shares, m * (s + 1) / shares, s == 0 ? out.get() : others.get() + (s - 1) * size);
    });
    for (std::size_t s = 1; s < shares; ++s)
        for (std::size_t j = 0; j < size; ++j) out[j] += others[(s - 1) * size + j];
    return out;
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

// Records [begin, end) of the gradient pass, summed into sums: J's weight gradient transposed (n_in x stride),
// then its bias gradient (stride) and the loss sum (1), all unscaled.
template <class T, class RowAt, class Width>
L2FAST_NEWTON_CLONES void gradient_rows(const Dataset<T>& data, Loss loss, RowAt row_at, std::size_t begin,
                                        std::size_t end, std::size_t n_in, std::size_t n_out, Width width,
                                        const double* WT, const T* b, double* c, double* P, double* sums) {
    const std::size_t s = width.stride(), size = n_in * s;
    std::vector<double> z(s, 0.0);
    for (std::size_t i = begin; i < end; ++i) {
        const auto x = row_at(i);
        for (std::size_t k = 0; k < n_out; ++k) z[k] = double(b[k]);
        add_row_product(x, WT, n_in, width, z.data(), sums);
        sums[size + s] += record_loss(data, loss, i, n_out, z.data(), c, P);
        add_row_outer(x, z.data(), n_in, width, sums);
        for (std::size_t k = 0; k < n_out; ++k) sums[size + k] += z[k];
    }
}

// Records [begin, end) of a Hessian product, summed into sums: HV transposed (n_in x stride), then Hv_b (stride),
// unscaled.
template <class RowAt, class Width>
L2FAST_NEWTON_CLONES void hessian_rows(const Curvature& curvature, RowAt row_at, std::size_t begin, std::size_t end,
                                       std::size_t n_in, std::size_t n_out, Width width, const double* VT,
                                       const double* v_b, double* sums) {
    const std::size_t s = width.stride(), size = n_in * s;
    std::vector<double> u(s, 0.0);
    for (std::size_t i = begin; i < end; ++i) {
        const auto x = row_at(i);
        std::copy(v_b, v_b + n_out, u.begin());
        add_row_product(x, VT, n_in, width, u.data(), sums);
        apply_curvature(curvature, i, n_out, u.data());
        add_row_outer(x, u.data(), n_in, width, sums);
        for (std::size_t k = 0; k < n_out; ++k) sums[size + k] += u[k];
    }
}

// Records [begin, end) of the Hessian's diagonal, summed into sums: diag_W transposed (n_in x stride), then diag_b
// (stride), unscaled.
template <class RowAt, class Width>
L2FAST_NEWTON_CLONES void diagonal_rows(const Curvature& curvature, RowAt row_at, std::size_t begin, std::size_t end,
                                        std::size_t n_in, std::size_t outputs, Width width, double* sums) {
    const std::size_t s = width.stride(), size = n_in * s;
    std::vector<double> d(s, 0.0);
    for (std::size_t i = begin; i < end; ++i) {
        const double c = curvature.c[i];
        if (curvature.P) {
            const double* p = curvature.P + i * outputs;
            for (std::size_t k = 0; k < outputs; ++k) d[k] = c * p[k] * (1 - p[k]);
        } else {
            d[0] = c;
        }
        add_row_outer<true>(row_at(i), d.data(), n_in, width, sums);
        for (std::size_t k = 0; k < outputs; ++k) sums[size + k] += d[k];
    }
}

}  // namespace

template <class T>
double linear_gradient_curvature(const Dataset<T>& data, Loss loss, std::size_t n_in, std::size_t n_out, const T* W,
                                 const T* b, double lam_over_m, double* dW, double* db, double* c, double* P) {
    const std::size_t m = data.m, entries = data.sparse ? data.X_csr.nnz : m * n_in;
    HugeArray out;  // dW transposed (n_in x stride), db (stride), the loss sum
    std::size_t s = n_out;
    with_width(n_out, [&](auto width) {
        s = width.stride();
        const HugeArray WT = transposed(W, n_out, n_in, s);
        const std::size_t size = n_in * s;
        with_rows(data, n_in, [&](auto row_at) {
            out = sum_over_shares(m, entries * n_out * 2, size + s + 1,
                                  [&](std::size_t begin, std::size_t end, double* sums) {
                                      gradient_rows(data, loss, row_at, begin, end, n_in, n_out, width, WT.get(), b,
                                                    c, P, sums);
                                  });
        });
    });
    const std::size_t size = n_in * s;
    const double inv_m = 1.0 / double(m);
    for (std::size_t k = 0; k < n_out; ++k)
        for (std::size_t j = 0; j < n_in; ++j)
            dW[k * n_in + j] = out[j * s + k] * inv_m + lam_over_m * double(W[k * n_in + j]);
    for (std::size_t k = 0; k < n_out; ++k) db[k] = out[size + k] * inv_m;
    return out[size + s];
}

template <class T>
void linear_hessian_product(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const Curvature& curvature,
                            const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b) {
    const std::size_t m = data.m, entries = data.sparse ? data.X_csr.nnz : m * n_in;
    HugeArray out;  // HV transposed (n_in x stride), Hv_b (stride)
    std::size_t s = n_out;
    with_width(n_out, [&](auto width) {
        s = width.stride();
        const HugeArray VT = transposed(V, n_out, n_in, s);
        with_rows(data, n_in, [&](auto row_at) {
            out = sum_over_shares(m, entries * n_out * 2, n_in * s + s,
                                  [&](std::size_t begin, std::size_t end, double* sums) {
                                      hessian_rows(curvature, row_at, begin, end, n_in, n_out, width, VT.get(), v_b,
                                                   sums);
                                  });
        });
    });
    const std::size_t size = n_in * s;
    const double inv_m = 1.0 / double(m);
    for (std::size_t k = 0; k < n_out; ++k)
        for (std::size_t j = 0; j < n_in; ++j)
            HV[k * n_in + j] = out[j * s + k] * inv_m + lam_over_m * V[k * n_in + j];
    for (std::size_t k = 0; k < n_out; ++k) Hv_b[k] = out[size + k] * inv_m;
}

template <class T>
void linear_hessian_diagonal(const Dataset<T>& data, std::size_t n_in, std::size_t outputs,
                             const Curvature& curvature, double* diag_W, double* diag_b) {
    const std::size_t m = data.m, entries = data.sparse ? data.X_csr.nnz : m * n_in;
    HugeArray out;  // diag_W transposed (n_in x stride), diag_b (stride)
    std::size_t s = outputs;
    with_width(outputs, [&](auto width) {
        s = width.stride();
        with_rows(data, n_in, [&](auto row_at) {
            out = sum_over_shares(m, entries * outputs, n_in * s + s,
                                  [&](std::size_t begin, std::size_t end, double* sums) {
                                      diagonal_rows(curvature, row_at, begin, end, n_in, outputs, width, sums);
                                  });
        });
    });
    for (std::size_t k = 0; k < outputs; ++k)
        for (std::size_t j = 0; j < n_in; ++j) diag_W[k * n_in + j] = out[j * s + k];
    for (std::size_t k = 0; k < outputs; ++k) diag_b[k] = out[n_in * s + k];
}

#define L2FAST_INSTANTIATE(T)                                                                                      \
    template double linear_gradient_curvature(const Dataset<T>&, Loss, std::size_t, std::size_t, const T*,        \
                                              const T*, double, double*, double*, double*, double*);              \
    template void linear_hessian_product(const Dataset<T>&, std::size_t, std::size_t, const Curvature&,           \
                                         const double*, const double*, double, double*, double*);                 \
    template void linear_hessian_diagonal(const Dataset<T>&, std::size_t, std::size_t, const Curvature&, double*,  \
                                          double*);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
