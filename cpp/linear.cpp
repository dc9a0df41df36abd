// Linear models over the whole data in one read of X (see linear.hpp).
#include "linear.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "linear_step.hpp"
#include "parallel.hpp"
#include "vectors.hpp"

namespace l2fast {

namespace {

constexpr std::size_t kSlices = 16;              // fixed: the summation order never depends on the threads
constexpr std::size_t kMaxWeights = 1 << 16;     // per-slice sums of at most 16 x 64K doubles (8 MiB)
constexpr std::size_t kMinRowsPerThread = 4096;  // below this a second thread costs more than it saves

// The inner loops are compiled three times, for AVX-512, AVX2 and any x86-64, the best picked at load time. All
// three give the same bits: the sums are written out in one order (below), and this file is compiled with
// -ffp-contract=off, so that no clone fuses a multiply and an add that another clone rounds twice.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_LINEAR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
bool wide_vectors() {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    return avx512;
}
#else
#define L2FAST_LINEAR_CLONES
bool wide_vectors() { return false; }
#endif

// A dot product's eight partial sums (lane l sums the products at j = l mod 8) as one vector of GCC's vector
// extension: an AVX-512 register for double (two AVX registers, or four SSE, in the other clones), an AVX
// register for float. Loaded and stored unaligned (vectors.hpp's load).
constexpr std::size_t kLanes = 8;
typedef float Float8 __attribute__((vector_size(8 * sizeof(float))));
typedef double Double8 __attribute__((vector_size(8 * sizeof(double))));
template <class T>
using Lanes = std::conditional_t<std::is_same_v<T, float>, Float8, Double8>;

// Eight values of x as doubles.
template <class T>
[[gnu::always_inline]] inline Double8 load_double8(const T* x) {
    if constexpr (std::is_same_v<T, double>)
        return load<Double8>(x);
    else
        return __builtin_convertvector(load<Float8>(x), Double8);
}

// The dot product of a and b: the eight partial sums over the first n - n mod 8 entries, added up lane by lane,
// then the last entries one by one.
template <class T>
L2FAST_LINEAR_CLONES T dot(const T* a, const T* b, std::size_t n) {
    using V = Lanes<T>;
    V acc = {};
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) acc += load<V>(a + j) * load<V>(b + j);
    T sum = T(0);
    for (std::size_t l = 0; l < kLanes; ++l) sum += acc[l];
    for (; j < n; ++j) sum += a[j] * b[j];
    return sum;
}

// One round of transpose8 on rows a = v[r] (r without `bit`) and b = v[r + bit]: afterwards v[r][l] is what
// v[r | (l & bit)][l & ~bit] was and v[r + bit][l] what v[r | (l & bit)][l | bit] was.
template <std::size_t bit, class V>
[[gnu::always_inline]] inline void swap_index_bit(V& a, V& b) {
    const V ra = a, rb = b;
    if constexpr (bit == 1) {
        a = __builtin_shufflevector(ra, rb, 0, 8, 2, 10, 4, 12, 6, 14);
        b = __builtin_shufflevector(ra, rb, 1, 9, 3, 11, 5, 13, 7, 15);
    } else if constexpr (bit == 2) {
        a = __builtin_shufflevector(ra, rb, 0, 1, 8, 9, 4, 5, 12, 13);
        b = __builtin_shufflevector(ra, rb, 2, 3, 10, 11, 6, 7, 14, 15);
    } else {
        a = __builtin_shufflevector(ra, rb, 0, 1, 2, 3, 8, 9, 10, 11);
        b = __builtin_shufflevector(ra, rb, 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

// The eight vectors v[0..7] of eight lanes each as the columns of a matrix: afterwards v[l][r] is what v[r][l] was.
// Three rounds of two-vector shuffles, each swapping one bit of the row index with the same bit of the lane index
// (written out, so that v stays in registers).
template <class V>
[[gnu::always_inline]] inline void transpose8(V v[8]) {
    swap_index_bit<1>(v[0], v[1]), swap_index_bit<1>(v[2], v[3]);
    swap_index_bit<1>(v[4], v[5]), swap_index_bit<1>(v[6], v[7]);
    swap_index_bit<2>(v[0], v[2]), swap_index_bit<2>(v[1], v[3]);
    swap_index_bit<2>(v[4], v[6]), swap_index_bit<2>(v[5], v[7]);
    swap_index_bit<4>(v[0], v[4]), swap_index_bit<4>(v[1], v[5]);
    swap_index_bit<4>(v[2], v[6]), swap_index_bit<4>(v[3], v[7]);
}

// dot(w, x_r) for the R consecutive records x_0 .. x_{R-1} of x (rows of n), w loaded once for all R. Each
// record's sum is dot()'s, term for term, so a record's z does not depend on the records it is grouped with.
// R = 8 where a vector of partial sums is one register (AVX-512): eight sums in flight keep both of a core's
// adders busy; R = 4 elsewhere, whose sixteen registers hold no more. With R = 8 the eight records' partial sums
// are transposed, so that one vector add takes the same step of all eight sums (lane by lane, in dot()'s order:
// short rows spent most of their time adding up each record's lanes one by one); so are their last n mod 8
// products when x may be read a whole vector past its last row's start (tail_readable), the lanes past the row's
// end read but never added.
template <class T, std::size_t R>
L2FAST_LINEAR_CLONES void dot_rows(const T* w, const T* x, std::size_t n, bool tail_readable, T out[R]) {
    using V = Lanes<T>;
    V acc[R] = {};
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        const V wj = load<V>(w + j);
        for (std::size_t r = 0; r < R; ++r) acc[r] += wj * load<V>(x + r * n + j);
    }
    if constexpr (R == kLanes) {
        transpose8(acc);
        V sum = V{};
        for (std::size_t l = 0; l < kLanes; ++l) sum += acc[l];
        if (j < n && tail_readable) {
            V products[R];
            T w_tail[kLanes] = {};  // w's row may end its array
            std::memcpy(w_tail, w + j, (n - j) * sizeof(T));
            const V wj = load<V>(w_tail);
            for (std::size_t r = 0; r < R; ++r) products[r] = wj * load<V>(x + r * n + j);
            transpose8(products);
            for (std::size_t t = 0; t < n - j; ++t) sum += products[t];
            j = n;
        }
        for (std::size_t r = 0; r < R; ++r) {
            T s = sum[r];
            for (std::size_t t = j; t < n; ++t) s += w[t] * x[r * n + t];
            out[r] = s;
        }
    } else {
        for (std::size_t r = 0; r < R; ++r) {
            T sum = T(0);
            for (std::size_t l = 0; l < kLanes; ++l) sum += acc[r][l];
            for (std::size_t t = j; t < n; ++t) sum += w[t] * x[r * n + t];
            out[r] = sum;
        }
    }
}

// g += d[0] x_0 + d[1] x_1 + ... + d[R-1] x_{R-1} for R consecutive records of x (rows of n), added left to
// right in double: g is read and written once for R records. The sum for one record at a time is the same
// (R = 1: add_scaled), so dW does not depend on how records are grouped either.
template <class T, std::size_t R>
L2FAST_LINEAR_CLONES void add_scaled_rows(double* g, const double d[R], const T* x, std::size_t n) {
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        Double8 sum = load<Double8>(g + j);
        for (std::size_t r = 0; r < R; ++r) sum += d[r] * load_double8(x + r * n + j);
        std::memcpy(g + j, &sum, sizeof sum);
    }
    for (; j < n; ++j) {
        double sum = g[j];
        for (std::size_t r = 0; r < R; ++r) sum += d[r] * double(x[r * n + j]);
        g[j] = sum;
    }
}

// Records [begin, end) in blocks of kBlock: z for the block (R records at a time, then one by one), the block's
// losses and dL/dz in one call (which vectorises across records), then the block's share of dW while its rows
// are still in cache. Where X is larger than a core's L2 cache, the next block's rows are meanwhile fetched into
// L2 a few lines per group of records: the first read of each row is what the pass waits for otherwise (the
// hardware prefetcher, following R short rows at once, falls behind); 10-25 % of a 50k x 100 pass.
constexpr std::size_t kBlock = 32;
constexpr std::size_t kPrefetchBytes = std::size_t(2) << 20;  // X at least this large: prefetch

template <class T, std::size_t R>
void slice_pass(const Shape& shape, const Params<T>& params, const Dataset<T>& data, std::size_t begin,
                std::size_t end, typename LinearScratch<T>::Slice& out) {
    static_assert(kBlock % R == 0);
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out();
    out.dW.assign(n_out * n_in, 0.0);  // kept capacity: no allocation when the scratch is reused
    out.db.assign(n_out, 0.0);
    out.stats = LossStats{};
    std::vector<T>& z = out.z;
    z.resize(kBlock * n_out);
    const std::size_t row_bytes = n_in * sizeof(T);
    const std::size_t lines_per_group = data.m * row_bytes >= kPrefetchBytes ? (R * row_bytes + 63) / 64 : 0;
    for (std::size_t first = begin; first < end; first += kBlock) {
        const std::size_t rows = std::min(kBlock, end - first), grouped = rows - rows % R;
        const T* X = data.X + first * n_in;
        const char* next = reinterpret_cast<const char*>(X) + rows * row_bytes;
        const char* next_end = reinterpret_cast<const char*>(data.X) + std::min(end, first + 2 * kBlock) * row_bytes;
        for (std::size_t r = 0; r < grouped; r += R) {
            for (std::size_t q = 0; q < lines_per_group && next < next_end; ++q, next += 64)
                __builtin_prefetch(next, 0, 2);
            T zk[R];
            // x's last full vector of the group's last row, read past the row, still inside X
            const bool tail_readable = (first + r + R) * n_in + kLanes <= data.m * n_in + n_in % kLanes;
            for (std::size_t k = 0; k < n_out; ++k) {
                dot_rows<T, R>(params.W[0] + k * n_in, X + r * n_in, n_in, tail_readable, zk);
                for (std::size_t q = 0; q < R; ++q) z[(r + q) * n_out + k] = zk[q] + params.b[0][k];
            }
        }
        for (std::size_t r = grouped; r < rows; ++r)
            for (std::size_t k = 0; k < n_out; ++k)
                z[r * n_out + k] = dot(params.W[0] + k * n_in, X + r * n_in, n_in) + params.b[0][k];
        out.stats += inplace_loss_gradient(z.data(), rows, n_out, shape.loss, targets_of(data, nullptr, first));
        for (std::size_t k = 0; k < n_out; ++k) {
            double* g = out.dW.data() + k * n_in;
            double db = out.db[k];  // summed in a register: through memory each add waited on the last one's store
            for (std::size_t r = 0; r < grouped; r += R) {
                double d[R];
                for (std::size_t q = 0; q < R; ++q) {
                    d[q] = double(z[(r + q) * n_out + k]);
                    db += d[q];
                }
                add_scaled_rows<T, R>(g, d, X + r * n_in, n_in);
            }
            for (std::size_t r = grouped; r < rows; ++r) {
                const double d = double(z[r * n_out + k]);
                add_scaled_rows<T, 1>(g, &d, X + r * n_in, n_in);
                db += d;
            }
            out.db[k] = db;
        }
    }
}

}  // namespace

// The sum of the squares of w's entries, each taken in double, in dot()'s order: eight partial sums, added up lane
// by lane, then the last entries one by one.
template <class T>
L2FAST_LINEAR_CLONES double sum_squares(const T* w, std::size_t n) {
    Double8 acc = {};
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        const Double8 v = load_double8(w + j);
        acc += v * v;
    }
    double sum = 0.0;
    for (std::size_t l = 0; l < kLanes; ++l) sum += acc[l];
    for (; j < n; ++j) sum += double(w[j]) * double(w[j]);
    return sum;
}

bool linear_pass_fits(const Shape& shape) {
    return shape.n_layers() == 1 && shape.n_out() * shape.n_in() <= kMaxWeights;
}

template <class T>
LossStats linear_gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                           Params<double>& grads, LinearScratch<T>* scratch) {
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out(), m = data.m;
    LinearScratch<T> own;
    std::vector<typename LinearScratch<T>::Slice>& slices = (scratch ? *scratch : own).slices;
    slices.resize(kSlices);
    const std::size_t rows_per_slice = (m + kSlices - 1) / kSlices;
    const std::size_t threads = std::min<std::size_t>(std::max(blas::num_threads(), 1),
                                                      std::max<std::size_t>(m / kMinRowsPerThread, 1));
    // Each thread takes the next slice not yet taken, so that a thread that shares its core with another process
    // does fewer slices rather than holding up the others at the end.
    std::atomic<std::size_t> next_slice{0};
    const bool wide = wide_vectors() && linear_wide_kernels_allowed();
    parallel_for(threads, threads, 1, [&](std::size_t, std::size_t) {
        for (std::size_t s; (s = next_slice.fetch_add(1, std::memory_order_relaxed)) < kSlices;)
            (wide ? slice_pass<T, 8> : slice_pass<T, 4>)(shape, params, data, std::min(m, s * rows_per_slice),
                                                         std::min(m, (s + 1) * rows_per_slice), slices[s]);
    }, kSolverPoll);
    LossStats total;
    std::fill(grads.W[0], grads.W[0] + n_out * n_in, 0.0);
    std::fill(grads.b[0], grads.b[0] + n_out, 0.0);
    for (const typename LinearScratch<T>::Slice& s : slices) {
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

template <class T>
double linear_objective(const Shape& shape, const double* x, const Dataset<T>& data, double lam, double* grad,
                        LinearScratch<T>& scratch, double* loss_sum) {
    const std::size_t n_weights = shape.n_out() * shape.n_in(), n_params = n_weights + shape.n_out();
    Params<T> params;
    if constexpr (std::is_same_v<T, double>) {
        params.W = {const_cast<double*>(x)};  // only read
        params.b = {const_cast<double*>(x) + n_weights};
    } else {
        scratch.params.resize(n_params);
        for (std::size_t k = 0; k < n_params; ++k) scratch.params[k] = T(x[k]);
        params.W = {scratch.params.data()};
        params.b = {scratch.params.data() + n_weights};
    }
    Params<double> grads;
    grads.W = {grad};
    grads.b = {grad + n_weights};
    const double m = double(data.m);
    LossStats stats;
    if (!data.sparse && linear_pass_fits(shape)) {
        stats = linear_gradients(shape, params, data, lam / m, grads, &scratch);
    } else {
        if (!scratch.other_shapes) scratch.other_shapes = make_gradients_scratch<T>();
        stats = gradients(shape, params, data, lam / m, grads, scratch.other_shapes.get());
    }
    *loss_sum = stats.loss_sum;
    return stats.loss_sum / m + lam / (2 * m) * sum_squares(params.W[0], n_weights);
}

template LossStats linear_gradients(const Shape&, const Params<float>&, const Dataset<float>&, double,
                                    Params<double>&, LinearScratch<float>*);
template LossStats linear_gradients(const Shape&, const Params<double>&, const Dataset<double>&, double,
                                    Params<double>&, LinearScratch<double>*);
template double linear_objective(const Shape&, const double*, const Dataset<float>&, double, double*,
                                 LinearScratch<float>&, double*);
template double linear_objective(const Shape&, const double*, const Dataset<double>&, double, double*,
                                 LinearScratch<double>&, double*);
template double sum_squares(const float*, std::size_t);
template double sum_squares(const double*, std::size_t);

}  // namespace l2fast
