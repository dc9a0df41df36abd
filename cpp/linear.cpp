// Linear models over the whole data in one read of X (see linear.hpp).
#include "linear.hpp"

#include <algorithm>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"

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

template <class T>
L2FAST_VECTOR_CLONES void add_scaled(double* g, double d, const T* x, std::size_t n) {
    for (std::size_t j = 0; j < n; ++j) g[j] += d * double(x[j]);
}

template <class T>
struct Slice {
    std::vector<double> dW, db;
    LossStats stats;
};

template <class T>
void slice_pass(const Shape& shape, const Params<T>& params, const Dataset<T>& data, std::size_t begin,
                std::size_t end, Slice<T>& out) {
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out();
    out.dW.assign(n_out * n_in, 0.0);
    out.db.assign(n_out, 0.0);
    std::vector<T> z(n_out);
    Targets<T> y;
    y.values = data.y_values;
    y.labels = data.y_labels;
    y.weights = data.weights;
    for (std::size_t i = begin; i < end; ++i) {
        const T* x = data.X + i * n_in;
        for (std::size_t k = 0; k < n_out; ++k) z[k] = dot(params.W[0] + k * n_in, x, n_in) + params.b[0][k];
        y.row0 = i;
        out.stats += inplace_loss_gradient(z.data(), 1, n_out, shape.loss, y);
        for (std::size_t k = 0; k < n_out; ++k) {
            const double d = double(z[k]);
            if (d == 0.0) continue;  // zero-weight records and exact fits add nothing
            add_scaled(out.dW.data() + k * n_in, d, x, n_in);
            out.db[k] += d;
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
