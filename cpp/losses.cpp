// Output layer: loss + gradient (training) and output activation (prediction).
#include "losses.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "activations.hpp"
#include "parallel.hpp"
#include "vector_math.hpp"

namespace l2fast {

Loss parse_loss(const std::string& name) {
    if (name == "squared_error") return Loss::SquaredError;
    if (name == "logistic") return Loss::Logistic;
    if (name == "softmax") return Loss::Softmax;
    throw std::invalid_argument("loss: unknown loss '" + name +
                                "'; expected squared_error, logistic or softmax");
}

namespace {

// Whether any of v[0..n) fails `bad`: a loop without an early exit, which vectorises.
template <class T, class Bad>
[[gnu::always_inline]] inline bool any_of(const T* v, std::size_t n, Bad bad) {
    unsigned found = 0;
    for (std::size_t i = 0; i < n; ++i) found |= unsigned(bad(v[i]));
    return found != 0;
}

template <class T, class Bad>
std::size_t first_of(const T* v, std::size_t n, Bad bad) {
    for (std::size_t i = 0; i < n; ++i)
        if (bad(v[i])) return i;
    return n;
}

struct Outside {
    std::uint64_t bound;
    bool operator()(std::int64_t x) const { return std::uint64_t(x) >= bound; }  // negatives wrap past any bound
};

template <class T>
bool not_binary(T x) { return (x != T(0)) & (x != T(1)); }

template <class T>
bool not_weight(T x) { return !((x >= T(0)) & (x <= std::numeric_limits<T>::max())); }  // NaN fails both

L2FAST_VECTOR_CLONES bool any_outside(const std::int64_t* v, std::size_t n, std::uint64_t bound) {
    return any_of(v, n, Outside{bound});
}

template <class T>
L2FAST_VECTOR_CLONES bool any_not_binary(const T* v, std::size_t n) {
    return any_of(v, n, not_binary<T>);
}

template <class T>
L2FAST_VECTOR_CLONES bool any_not_weight(const T* v, std::size_t n) {
    return any_of(v, n, not_weight<T>);
}

}  // namespace

std::size_t first_outside(const std::int64_t* v, std::size_t n, std::size_t bound) {
    return any_outside(v, n, bound) ? first_of(v, n, Outside{bound}) : n;
}

template <class T>
std::size_t first_not_binary(const T* v, std::size_t n) {
    return any_not_binary(v, n) ? first_of(v, n, not_binary<T>) : n;
}

template <class T>
std::size_t first_not_weight(const T* v, std::size_t n) {
    return any_not_weight(v, n) ? first_of(v, n, not_weight<T>) : n;
}

template std::size_t first_not_binary(const float*, std::size_t);
template std::size_t first_not_binary(const double*, std::size_t);
template std::size_t first_not_weight(const float*, std::size_t);
template std::size_t first_not_weight(const double*, std::size_t);

void check_labels(const std::int64_t* labels, std::size_t m, std::size_t n_classes) {
    const std::size_t i = first_outside(labels, m, n_classes);
    if (i < m)
        throw std::invalid_argument("y: label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
                                    " is outside [0, " + std::to_string(n_classes) + ")");
}

// Softmax row in place: returns log(sum exp(z - max)) and the index of the largest logit. The exponentials
// in a loop of their own, which vectorises (see vector_math.hpp); their sum in order, in the next.
template <class T>
static T inplace_softmax_row(T* z, std::size_t cols, std::size_t* argmax) {
    std::size_t best = 0;
    for (std::size_t k = 1; k < cols; ++k)
        if (z[k] > z[best]) best = k;
    const T zmax = z[best];
    for (std::size_t k = 0; k < cols; ++k) z[k] = std::exp(z[k] - zmax);
    T total = 0;
    for (std::size_t k = 0; k < cols; ++k) total += z[k];
    for (std::size_t k = 0; k < cols; ++k) z[k] /= total;
    *argmax = best;
    return std::log(total) + zmax;  // log-sum-exp of the original logits
}

// Record r's loss and dL/dZ (z, cols) scaled by its sample weight, if any; returns the loss.
template <class T>
double weighted(T* z, std::size_t cols, const Targets<T>& y, std::size_t r, double record_loss) {
    if (!y.weights) return record_loss;
    const T w = y.weights[r];  // w = 1 changes nothing, bit for bit: multiplying by 1 is exact
    for (std::size_t k = 0; k < cols; ++k) z[k] *= w;
    return record_loss * double(w);
}

// The logistic loss of n records at once: softplus(z) - t z, sigmoid(z) >= 1/2 (as 0 or 1) and dL/dz =
// sigmoid(z) - t, from one exp of -|z| that never overflows. One loop with no reduction, so that it runs
// on vectors of records (exp and log1p from glibc's libmvec where the build found it).
template <class T>
L2FAST_VECTOR_CLONES void logistic_records(T* z, const T* t, T* loss, T* positive, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const T zi = z[i];
        const T e = std::exp(-std::fabs(zi));
        loss[i] = (zi > T(0) ? zi : T(0)) - t[i] * zi + std::log1p(e);
        const T numerator = zi >= T(0) ? T(1) : e;
        const T p = numerator / (T(1) + e);
        positive[i] = T(p >= T(0.5));
        z[i] = p - t[i];
    }
}

// The logistic rows of a block, kChunk records at a time through logistic_records; the losses are added
// up in double in record order, as the other losses are.
template <class T>
LossStats logistic_loss_gradient(T* z, std::size_t rows, const Targets<T>& y) {
    constexpr std::size_t kChunk = 256;
    T t[kChunk], loss[kChunk], positive[kChunk];
    LossStats stats;
    for (std::size_t start = 0; start < rows; start += kChunk) {
        const std::size_t n = std::min(kChunk, rows - start);
        for (std::size_t i = 0; i < n; ++i) t[i] = y.values[y.record(start + i)];
        logistic_records(z + start, t, loss, positive, n);
        for (std::size_t i = 0; i < n; ++i) {
            stats.correct += (positive[i] == T(1)) == (t[i] == T(1));
            stats.loss_sum += weighted(z + start + i, 1, y, y.record(start + i), double(loss[i]));
        }
    }
    return stats;
}

// e^z in place: one loop with nothing else in it, which runs on vectors of values (glibc's libmvec, see
// vector_math.hpp; the scalar exp where the build found no libmvec).
template <class T>
L2FAST_VECTOR_CLONES void inplace_exp(T* z, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) z[i] = std::exp(z[i]);
}

// log s in place for sums s >= 1 (of exponentials whose largest is e^0): log1p(s - 1), where s - 1 is exact, in one
// loop with nothing else in it, which runs on vectors of values as inplace_exp does.
template <class T>
L2FAST_VECTOR_CLONES void inplace_log_of_sums(T* s, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) s[i] = std::log1p(s[i] - T(1));
}

// The softmax loss of a block, in passes over chunks of rows: each row's largest logit taken out, then every
// exp of the chunk at once (vectorised), then each row's sum and probabilities, every log of the
// chunk's sums at once, each row's loss. Compiled for AVX2 too (its divisions four at a time: the same bits).
template <class T>
L2FAST_VECTOR_CLONES LossStats softmax_loss_gradient(T* Z, std::size_t rows, std::size_t cols, const Targets<T>& y) {
    constexpr std::size_t kChunk = 64;
    LossStats stats;
    T z_max[kChunk], z_label[kChunk], log_total[kChunk];
    std::size_t record[kChunk], label[kChunk];
    for (std::size_t start = 0; start < rows; start += kChunk) {
        const std::size_t n = std::min(kChunk, rows - start);
        // the chunk's labels first, in a loop of their own: records of a shuffled order have theirs far apart in
        // memory, and asked for together they arrive together instead of one row's wait after another's
        for (std::size_t i = 0; i < n; ++i) record[i] = y.record(start + i);
        for (std::size_t i = 0; i < n; ++i) label[i] = std::size_t(y.labels[record[i]]);
        for (std::size_t i = 0; i < n; ++i) {
            T* z = Z + (start + i) * cols;
            std::size_t best = 0;
            for (std::size_t k = 1; k < cols; ++k)
                if (z[k] > z[best]) best = k;
            stats.correct += best == label[i];
            z_max[i] = z[best];
            z_label[i] = z[label[i]];
            for (std::size_t k = 0; k < cols; ++k) z[k] -= z_max[i];
        }
        inplace_exp(Z + start * cols, n * cols);
        for (std::size_t i = 0; i < n; ++i) {
            T* z = Z + (start + i) * cols;
            T total = 0;
            for (std::size_t k = 0; k < cols; ++k) total += z[k];
            for (std::size_t k = 0; k < cols; ++k) z[k] /= total;
            log_total[i] = total;
        }
        inplace_log_of_sums(log_total, n);
        for (std::size_t i = 0; i < n; ++i) {
            T* z = Z + (start + i) * cols;
            z[label[i]] -= T(1);
            stats.loss_sum += weighted(z, cols, y, record[i], double(log_total[i] + z_max[i] - z_label[i]));
        }
    }
    return stats;
}

template <class T>
LossStats inplace_loss_gradient(T* Z, std::size_t rows, std::size_t cols, Loss loss, const Targets<T>& y) {
    if (loss == Loss::Logistic) return logistic_loss_gradient(Z, rows, y);
    if (loss == Loss::Softmax) return softmax_loss_gradient(Z, rows, cols, y);
    LossStats stats;
    for (std::size_t i = 0; i < rows; ++i) {
        T* z = Z + i * cols;
        const std::size_t r = y.record(i);
        double record_loss = 0.0;
        switch (loss) {
            case Loss::SquaredError: {
                const T* target = y.values + r * cols;
                T l = 0;
                for (std::size_t k = 0; k < cols; ++k) {
                    z[k] -= target[k];
                    l += z[k] * z[k];
                }
                record_loss = double(T(0.5) * l);
                break;
            }
            case Loss::Logistic:  // logistic_loss_gradient
            case Loss::Softmax:   // softmax_loss_gradient
                break;
        }
        stats.loss_sum += weighted(z, cols, y, r, record_loss);
    }
    return stats;
}

template <class T>
void inplace_output_activation(T* Z, std::size_t rows, std::size_t cols, Loss loss) {
    std::size_t best = 0;
    for (std::size_t i = 0; i < rows; ++i) {
        T* z = Z + i * cols;
        switch (loss) {
            case Loss::SquaredError: break;
            case Loss::Logistic: z[0] = sigmoid(z[0]); break;
            case Loss::Softmax: inplace_softmax_row(z, cols, &best); break;
        }
    }
}

template LossStats inplace_loss_gradient(float*, std::size_t, std::size_t, Loss, const Targets<float>&);
template LossStats inplace_loss_gradient(double*, std::size_t, std::size_t, Loss, const Targets<double>&);
template void inplace_output_activation(float*, std::size_t, std::size_t, Loss);
template void inplace_output_activation(double*, std::size_t, std::size_t, Loss);

}  // namespace l2fast
