// Linear models over the whole data in one read of X (see linear.hpp).
#include "linear.hpp"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"
#include "vectors.hpp"

namespace l2fast {

namespace {

constexpr std::size_t kSlices = 16;              // fixed: the summation order never depends on the threads
constexpr std::size_t kMaxWeights = 1 << 16;     // per-slice sums of at most 16 x 64K doubles (8 MiB)
constexpr std::size_t kMinRowsPerThread = 4096;  // below this a second thread costs more than it saves

// Eight independent partial sums, so that the compiler vectorises the dot product without reordering
// anything it was not told to.
template <class T>
L2FAST_VECTOR_CLONES T dot(const T* a, const T* b, std::size_t n) {
    constexpr std::size_t kLanes = 8;
    T acc[kLanes] = {};
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) acc[l] += a[j + l] * b[j + l];
    T sum = T(0);
    for (std::size_t l = 0; l < kLanes; ++l) sum += acc[l];
    for (; j < n; ++j) sum += a[j] * b[j];
    return sum;
}

// dot()'s eight partial sums are kVecs<T> vectors (vectors.hpp).
template <class T>
constexpr std::size_t kVecs = 8 / kWidth<T>;

// The dot products of four records with one weight row, the row loaded once for all four. Each record keeps
// dot()'s eight partial sums (lane l sums the products at j = l mod 8) and adds them up in dot()'s order, so a
// record's z is dot()'s, whatever records it is grouped with.
constexpr std::size_t kRows = 4;

template <class T>
L2FAST_VECTOR_CLONES void dot_rows(const T* w, const T* const x[kRows], std::size_t n, T out[kRows]) {
    using V = Vec<T>;
    constexpr std::size_t W = kWidth<T>, H = kVecs<T>;
    V acc[kRows][H] = {};
    std::size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (std::size_t h = 0; h < H; ++h) {
            const V wj = load<V>(w + j + h * W);
            for (std::size_t r = 0; r < kRows; ++r) acc[r][h] += wj * load<V>(x[r] + j + h * W);
        }
    for (std::size_t r = 0; r < kRows; ++r) {
        T sum = T(0);
        for (std::size_t h = 0; h < H; ++h)
            for (std::size_t l = 0; l < W; ++l) sum += acc[r][h][l];
        for (std::size_t t = j; t < n; ++t) sum += w[t] * x[r][t];
        out[r] = sum;
    }
}

// g += d[0] x[0] + d[1] x[1] + d[2] x[2] + d[3] x[3], added left to right in double: g is read and written
// once for four records.
template <class T>
L2FAST_VECTOR_CLONES void add_scaled_rows(double* g, const double d[kRows], const T* const x[kRows], std::size_t n) {
    std::size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        DoubleVec sum = load<DoubleVec>(g + j);
        for (std::size_t r = 0; r < kRows; ++r) {
            DoubleVec xr;
            if constexpr (std::is_same_v<T, double>) {
                xr = load<DoubleVec>(x[r] + j);
            } else {
                typedef float Float4 __attribute__((vector_size(16)));
                xr = __builtin_convertvector(load<Float4>(x[r] + j), DoubleVec);
            }
            sum += d[r] * xr;
        }
        std::memcpy(g + j, &sum, sizeof sum);
    }
    for (; j < n; ++j) {
        double sum = g[j];
        for (std::size_t r = 0; r < kRows; ++r) sum += d[r] * double(x[r][j]);
        g[j] = sum;
    }
}

template <class T>
L2FAST_VECTOR_CLONES void add_scaled(double* g, double d, const T* x, std::size_t n) {
    for (std::size_t j = 0; j < n; ++j) g[j] += d * double(x[j]);
}

template <class T>
struct Slice {
    std::vector<double> dW, db;
    LossStats stats;
};

// Records [begin, end) in blocks of kBlock: z for the block (four records at a time, then one by one), the
// block's losses and dL/dz in one call (which vectorises across records), then the block's share of dW
// while its rows are still in cache.
constexpr std::size_t kBlock = 32;

template <class T>
void slice_pass(const Shape& shape, const Params<T>& params, const Dataset<T>& data, std::size_t begin,
                std::size_t end, Slice<T>& out) {
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out();
    out.dW.assign(n_out * n_in, 0.0);
    out.db.assign(n_out, 0.0);
    std::vector<T> z(kBlock * n_out);
    Targets<T> y;
    y.values = data.y_values;
    y.labels = data.y_labels;
    y.weights = data.weights;
    for (std::size_t first = begin; first < end; first += kBlock) {
        const std::size_t rows = std::min(kBlock, end - first), grouped = rows - rows % kRows;
        const T* X = data.X + first * n_in;
        for (std::size_t r = 0; r < grouped; r += kRows) {
            const T* x[kRows] = {X + r * n_in, X + (r + 1) * n_in, X + (r + 2) * n_in, X + (r + 3) * n_in};
            T zk[kRows];
            for (std::size_t k = 0; k < n_out; ++k) {
                dot_rows(params.W[0] + k * n_in, x, n_in, zk);
                for (std::size_t q = 0; q < kRows; ++q) z[(r + q) * n_out + k] = zk[q] + params.b[0][k];
            }
        }
        for (std::size_t r = grouped; r < rows; ++r)
            for (std::size_t k = 0; k < n_out; ++k)
                z[r * n_out + k] = dot(params.W[0] + k * n_in, X + r * n_in, n_in) + params.b[0][k];
        y.row0 = first;
        out.stats += inplace_loss_gradient(z.data(), rows, n_out, shape.loss, y);
        for (std::size_t k = 0; k < n_out; ++k) {
            double* g = out.dW.data() + k * n_in;
            for (std::size_t r = 0; r < grouped; r += kRows) {
                const T* x[kRows] = {X + r * n_in, X + (r + 1) * n_in, X + (r + 2) * n_in, X + (r + 3) * n_in};
                double d[kRows];
                for (std::size_t q = 0; q < kRows; ++q) {
                    d[q] = double(z[(r + q) * n_out + k]);
                    out.db[k] += d[q];
                }
                add_scaled_rows(g, d, x, n_in);
            }
            for (std::size_t r = grouped; r < rows; ++r) {
                const double d = double(z[r * n_out + k]);
                add_scaled(g, d, X + r * n_in, n_in);
                out.db[k] += d;
            }
        }
    }
}

}  // namespace

bool linear_pass_fits(const Shape& shape) {
    return shape.n_layers() == 1 && shape.n_out() * shape.n_in() <= kMaxWeights;
}

template <class T>
LossStats linear_gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                           Params<double>& grads) {
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out(), m = data.m;
    std::vector<Slice<T>> slices(kSlices);
    const std::size_t rows_per_slice = (m + kSlices - 1) / kSlices;
    const std::size_t threads = std::min<std::size_t>(std::max(blas::num_threads(), 1),
                                                      std::max<std::size_t>(m / kMinRowsPerThread, 1));
    parallel_for(kSlices, threads, 1, [&](std::size_t first, std::size_t last) {
        for (std::size_t s = first; s < last; ++s)
            slice_pass(shape, params, data, std::min(m, s * rows_per_slice), std::min(m, (s + 1) * rows_per_slice),
                       slices[s]);
    });
    LossStats total;
    std::fill(grads.W[0], grads.W[0] + n_out * n_in, 0.0);
    std::fill(grads.b[0], grads.b[0] + n_out, 0.0);
    for (const Slice<T>& s : slices) {
        total += s.stats;
        for (std::size_t k = 0; k < n_out * n_in; ++k) grads.W[0][k] += s.dW[k];
        for (std::size_t k = 0; k < n_out; ++k) grads.b[0][k] += s.db[k];
    }
    const double inv_m = 1.0 / double(m);
    for (std::size_t k = 0; k < n_out * n_in; ++k)
        grads.W[0][k] = grads.W[0][k] * inv_m + lam_over_m * double(params.W[0][k]);
    for (std::size_t k = 0; k < n_out; ++k) grads.b[0][k] *= inv_m;
    return total;
}

template LossStats linear_gradients(const Shape&, const Params<float>&, const Dataset<float>&, double,
                                    Params<double>&);
template LossStats linear_gradients(const Shape&, const Params<double>&, const Dataset<double>&, double,
                                    Params<double>&);

}  // namespace l2fast
