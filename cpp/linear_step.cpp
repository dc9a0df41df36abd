// Minibatch SGD for linear models in one read of each step's records (see linear_step.hpp).
#include "linear_step.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "linear.hpp"
#include "parallel.hpp"
#include "vectors.hpp"

namespace l2fast {

namespace {

constexpr std::size_t kMaxWeights = 1 << 13;  // W and G: 2 x 32 KiB of float32 at most, beside a block of rows
constexpr std::size_t kGroup = 8;             // records whose rows one pass over a weight row meets together
static_assert(kGroup == 8, "block_backward and sum_lanes are written for groups of eight records");
constexpr std::size_t kBlock = 32;            // the most records per block
constexpr std::size_t kBlockBytes = 24 << 10; // a block's rows stay in L1 beside W and G (32 rows of 100 float32)
constexpr std::size_t kAhead = 8;             // records whose rows are asked for before their block starts
constexpr std::size_t kLine = 64;
constexpr std::size_t kShares = 2;            // the parts a step of at least kShares x kShareRows records is cut in
constexpr std::size_t kShareRows = 64;

typedef std::int32_t IntVec __attribute__((vector_size(32)));  // shuffle masks of FloatVec and DoubleVec
typedef std::int64_t LongVec __attribute__((vector_size(32)));

// The kernels are compiled for x86-64-v3 (AVX2 with FMA) and for any x86-64, the best picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define L2FAST_FMA_CLONES
#endif

// out[r] = the sum of acc[r]'s lanes, r < 8, by pairwise shuffles (a transpose folded into the additions).
[[gnu::always_inline]] inline void sum_lanes(const FloatVec acc[kGroup], float out[kGroup]) {
    FloatVec pairs[4], quads[2];
    for (int i = 0; i < 4; ++i)
        pairs[i] = __builtin_shuffle(acc[2 * i], acc[2 * i + 1], IntVec{0, 8, 2, 10, 4, 12, 6, 14}) +
                   __builtin_shuffle(acc[2 * i], acc[2 * i + 1], IntVec{1, 9, 3, 11, 5, 13, 7, 15});
    for (int i = 0; i < 2; ++i)
        quads[i] = __builtin_shuffle(pairs[2 * i], pairs[2 * i + 1], IntVec{0, 1, 8, 9, 4, 5, 12, 13}) +
                   __builtin_shuffle(pairs[2 * i], pairs[2 * i + 1], IntVec{2, 3, 10, 11, 6, 7, 14, 15});
    const FloatVec all = __builtin_shuffle(quads[0], quads[1], IntVec{0, 1, 2, 3, 8, 9, 10, 11}) +
                         __builtin_shuffle(quads[0], quads[1], IntVec{4, 5, 6, 7, 12, 13, 14, 15});
    store(out, all);
}

[[gnu::always_inline]] inline void sum_lanes(const DoubleVec acc[kGroup], double out[kGroup]) {
    for (int half = 0; half < 2; ++half) {
        const DoubleVec* a = acc + 4 * half;
        const DoubleVec ab = __builtin_shuffle(a[0], a[1], LongVec{0, 4, 2, 6}) +
                             __builtin_shuffle(a[0], a[1], LongVec{1, 5, 3, 7});
        const DoubleVec cd = __builtin_shuffle(a[2], a[3], LongVec{0, 4, 2, 6}) +
                             __builtin_shuffle(a[2], a[3], LongVec{1, 5, 3, 7});
        store(out + 4 * half,
              __builtin_shuffle(ab, cd, LongVec{0, 1, 4, 5}) + __builtin_shuffle(ab, cd, LongVec{2, 3, 6, 7}));
    }
}

// z[r n_out + k] = W[k] . x[r] + b[k] for the block's records r < rows (a multiple of 8; x rows of width P, a
// multiple of the vector width, zero past n_in, as are W's rows): eight records meet each weight vector at once.
template <class T>
L2FAST_FMA_CLONES void block_forward(const T* W, const T* b, const T* x, std::size_t rows, std::size_t P,
                                     std::size_t n_out, T* z) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    for (std::size_t g = 0; g < rows; g += kGroup) {
        const T* xg = x + g * P;
        for (std::size_t k = 0; k < n_out; ++k) {
            const T* w = W + k * P;
            V acc[kGroup] = {};
            for (std::size_t j = 0; j < P; j += L) {
                const V wj = load<V>(w + j);
                for (std::size_t r = 0; r < kGroup; ++r) acc[r] += wj * load<V>(xg + r * P + j);
            }
            T sums[kGroup];
            sum_lanes(acc, sums);
            for (std::size_t r = 0; r < kGroup; ++r) z[(g + r) * n_out + k] = sums[r] + b[k];
        }
    }
}

// G[k] += sum_r d[r n_out + k] x[r] and db[k] += sum_r d[r n_out + k] over the block's rows (as block_forward's;
// d is zero on the rows past the block's records): each vector of G is read and written once per eight records.
template <class T>
L2FAST_FMA_CLONES void block_backward(T* G, T* db, const T* d, const T* x, std::size_t rows, std::size_t P,
                                      std::size_t n_out) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    for (std::size_t g = 0; g < rows; g += kGroup) {
        const T* xg = x + g * P;
        for (std::size_t k = 0; k < n_out; ++k) {
            T dk[kGroup];
            for (std::size_t r = 0; r < kGroup; ++r) dk[r] = d[(g + r) * n_out + k];
            // the eight records' terms in two chains of four (even and odd records), added at the end: one chain of
            // eight dependent multiply-adds per vector of G kept the core waiting on each result in turn
            db[k] += ((dk[0] + dk[2]) + (dk[4] + dk[6])) + ((dk[1] + dk[3]) + (dk[5] + dk[7]));
            T* gk = G + k * P;
            for (std::size_t j = 0; j < P; j += L) {
                V even = load<V>(gk + j), odd = dk[1] * load<V>(xg + P + j);
                even += dk[0] * load<V>(xg + j);
                for (std::size_t r = 2; r < kGroup; r += 2) {
                    even += dk[r] * load<V>(xg + r * P + j);
                    odd += dk[r + 1] * load<V>(xg + (r + 1) * P + j);
                }
                store(gk + j, even + odd);
            }
        }
    }
}

// Asks for the cache lines of n_bytes at p.
inline void prefetch_bytes(const void* p, std::size_t n_bytes) {
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(kLine - 1);
    const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + n_bytes;
    for (std::uintptr_t line = first; line < end; line += kLine)
        __builtin_prefetch(reinterpret_cast<const void*>(line));
}

// The epoch's records in order: record i of the epoch is row order[i] of X (row i without an order).
template <class T>
struct Records {
    const Dataset<T>& data;
    const std::int64_t* order;
    std::size_t n, n_in, n_out;

    std::size_t at(std::size_t i) const { return order ? std::size_t(order[i]) : i; }
    const T* row(std::size_t i) const { return data.X + at(i) * n_in; }

    // Asks for record i's row and target, when there is such a record.
    void prefetch(std::size_t i) const {
        if (i >= n) return;
        const std::size_t r = at(i);
        prefetch_bytes(data.X + r * n_in, n_in * sizeof(T));
        if (data.y_labels) __builtin_prefetch(data.y_labels + r);
        if (data.y_values) prefetch_bytes(data.y_values + r * n_out, n_out * sizeof(T));
        if (data.weights) __builtin_prefetch(data.weights + r);
    }
};

// W as rows of width P (a multiple of the vector width; zero past n_in), and the rows per block.
struct StepLayout {
    std::size_t P, block;

    template <class T>
    static StepLayout of(std::size_t n_in) {
        const std::size_t P = (n_in + kWidth<T> - 1) / kWidth<T> * kWidth<T>;
        return {P, std::clamp<std::size_t>(kBlockBytes / (P * sizeof(T)) / kGroup * kGroup, kGroup, kBlock)};
    }
};

// What one share of a step works in: its block of rows copied out of X (rows of width P), the block's logits, and
// the share's sums G = sum dL/dz x^T (n_out x P) and db = sum dL/dz.
template <class T>
struct ShareBuffers {
    std::vector<T> x, z, G, db;

    ShareBuffers(const StepLayout& layout, std::size_t n_out)
        : x(layout.block * layout.P, T(0)), z(layout.block * n_out, T(0)), G(n_out * layout.P), db(n_out) {}
};

// One share of a step, records start..start+rows-1: its sums into buf, the loss sum returned.
template <class T>
LossStats share_sums(const Shape& shape, const StepLayout& layout, const T* W, const T* b, const Records<T>& records,
                     std::size_t start, std::size_t rows, ShareBuffers<T>& buf) {
    const std::size_t n_in = records.n_in, n_out = records.n_out, P = layout.P, block = layout.block;
    LossStats stats;
    std::fill(buf.G.begin(), buf.G.end(), T(0));
    std::fill(buf.db.begin(), buf.db.end(), T(0));
    for (std::size_t first = start; first < start + rows; first += block) {
        const std::size_t count = std::min(block, start + rows - first);
        const std::size_t padded = (count + kGroup - 1) / kGroup * kGroup;
        for (std::size_t r = 0; r < count; ++r) {
            if (r < kAhead) records.prefetch(first + count + r);
            std::memcpy(buf.x.data() + r * P, records.row(first + r), n_in * sizeof(T));
        }
        // the next block's rows are asked for a few at a time while this one computes (all at once, they would
        // queue for the core's few line-fill buffers and hold up the instructions behind them)
        std::size_t next = std::min(kAhead, block);
        const std::size_t per_group = (block - next + 2 * padded / kGroup - 1) / (2 * padded / kGroup);
        for (std::size_t g = 0; g < padded; g += kGroup) {
            for (std::size_t q = 0; q < per_group && next < block; ++q) records.prefetch(first + count + next++);
            block_forward(W, b, buf.x.data() + g * P, kGroup, P, n_out, buf.z.data() + g * n_out);
        }
        const std::int64_t* picked = records.order ? records.order + first : nullptr;
        stats += inplace_loss_gradient(buf.z.data(), count, n_out, shape.loss, targets_of(records.data, picked, first));
        std::fill(buf.z.begin() + count * n_out, buf.z.begin() + padded * n_out, T(0));
        for (std::size_t g = 0; g < padded; g += kGroup) {
            for (std::size_t q = 0; q < per_group && next < block; ++q) records.prefetch(first + count + next++);
            block_backward(buf.G.data(), buf.db.data(), buf.z.data() + g * n_out, buf.x.data() + g * P, kGroup, P,
                           n_out);
        }
    }
    return stats;
}

}  // namespace

bool linear_step_fits(const Shape& shape) {
    return shape.n_layers() == 1 && shape.n_out() * shape.n_in() <= kMaxWeights;
}

template <class T>
EpochResult linear_sgd_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                             std::size_t n, std::size_t batch, T lr, T lam_over_m, const std::function<bool()>& stop,
                             bool with_norms) {
    EpochResult result;
    if (n == 0) return result;
    batch = std::min(batch, n);
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out();
    const Records<T> records{data, order, n, n_in, n_out};
    const StepLayout layout = StepLayout::of<T>(n_in);
    const std::size_t P = layout.P;
    std::vector<T> W(n_out * P, T(0));
    for (std::size_t k = 0; k < n_out; ++k) std::copy_n(params.W[0] + k * n_in, n_in, W.data() + k * P);
    std::vector<ShareBuffers<T>> shares(kShares, ShareBuffers<T>(layout, n_out));
    const std::size_t threads = std::min<std::size_t>(std::max(blas::num_threads(), 1), kShares);
    const T decay = T(1) - lr * lam_over_m;
    T* b = params.b[0];
    LossStats share_stats[kShares];
    for (std::size_t start = 0; start < n; start += batch) {
        const std::size_t rows = std::min(batch, n - start);
        // A step of many records is cut in kShares parts, whatever the threads, so that its sums do not depend on
        // them; on two threads the parts read X side by side, twice the rows in flight from memory.
        const std::size_t parts = rows >= kShareRows * kShares ? kShares : 1, per_part = (rows + parts - 1) / parts;
        parallel_for(parts, parts > 1 ? threads : 1, 1, [&](std::size_t first, std::size_t last) {
            for (std::size_t s = first; s < last; ++s) {
                const std::size_t begin = start + s * per_part, end = std::min(start + rows, begin + per_part);
                share_stats[s] = share_sums(shape, layout, W.data(), b, records, begin, end - begin, shares[s]);
            }
        });
        for (std::size_t s = 0; s < parts; ++s) result.stats += share_stats[s];
        for (std::size_t s = 1; s < parts; ++s) {
            for (std::size_t i = 0; i < n_out * P; ++i) shares[0].G[i] += shares[s].G[i];
            for (std::size_t k = 0; k < n_out; ++k) shares[0].db[k] += shares[s].db[k];
        }
        const T step = -lr / T(rows);
        if (with_norms) result.weight_norms += sum_squares(W.data(), n_out * P);  // zero past n_in
        for (std::size_t i = 0; i < n_out * P; ++i) W[i] = decay * W[i] + step * shares[0].G[i];
        for (std::size_t k = 0; k < n_out; ++k) b[k] += step * shares[0].db[k];
        ++result.steps;
        if (stop && stop()) {
            result.stopped = true;
            break;
        }
    }
    for (std::size_t k = 0; k < n_out; ++k) std::copy_n(W.data() + k * P, n_in, params.W[0] + k * n_in);
    return result;
}

template EpochResult linear_sgd_epoch(const Shape&, Params<float>&, const Dataset<float>&, const std::int64_t*,
                                      std::size_t, std::size_t, float, float, const std::function<bool()>&, bool);
template EpochResult linear_sgd_epoch(const Shape&, Params<double>&, const Dataset<double>&, const std::int64_t*,
                                      std::size_t, std::size_t, double, double, const std::function<bool()>&, bool);

namespace {

// Reads the epoch's records' rows in order, prefetched as the step does, summing them into a few vectors (kept in
// registers: a sum in memory would make the loop one store after another instead of a read). Returns the sum.
template <class T>
L2FAST_FMA_CLONES T read_rows(const Records<T>& records) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    V acc[4] = {};
    T tail = T(0);
    for (std::size_t i = 0; i < records.n; ++i) {
        records.prefetch(i + kAhead);
        const T* x = records.row(i);
        std::size_t j = 0;
        for (; j + 4 * L <= records.n_in; j += 4 * L)
            for (std::size_t h = 0; h < 4; ++h) acc[h] += load<V>(x + j + h * L);
        for (; j + L <= records.n_in; j += L) acc[0] += load<V>(x + j);
        for (; j < records.n_in; ++j) tail += x[j];
    }
    const V all = acc[0] + acc[1] + acc[2] + acc[3];
    for (std::size_t l = 0; l < L; ++l) tail += all[l];
    return tail;
}

}  // namespace

template <class T>
double shuffled_read_seconds(const T* X, std::size_t m, std::size_t n_in, int repeats) {
    std::vector<std::int64_t> order(m);
    for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(i);
    std::mt19937_64 rng(0);
    Dataset<T> data;
    data.X = X;
    data.m = m;
    double best = 1e300;
    T total = T(0);
    for (int rep = 0; rep < std::max(repeats, 1); ++rep) {
        std::shuffle(order.begin(), order.end(), rng);
        const Records<T> records{data, order.data(), m, n_in, 0};
        const auto t0 = std::chrono::steady_clock::now();
        total += read_rows(records);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    volatile T keep = total;  // the sums are used, so the reads stay
    (void)keep;
    return best;
}

template double shuffled_read_seconds(const float*, std::size_t, std::size_t, int);
template double shuffled_read_seconds(const double*, std::size_t, std::size_t, int);

}  // namespace l2fast
