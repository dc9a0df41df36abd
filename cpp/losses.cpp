// Output layer: loss + gradient (training) and output activation (prediction).
#include "losses.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "activations.hpp"
#include "parallel.hpp"

namespace l2fast {

Loss parse_loss(const std::string& name) {
    if (name == "squared_error") return Loss::SquaredError;
    if (name == "logistic") return Loss::Logistic;
    if (name == "softmax") return Loss::Softmax;
    throw std::invalid_argument("loss: unknown loss '" + name +
                                "'; expected squared_error, logistic or softmax");
}

void check_labels(const std::int64_t* labels, std::size_t m, std::size_t n_classes) {
    for (std::size_t i = 0; i < m; ++i) {
        if (labels[i] < 0 || std::size_t(labels[i]) >= n_classes) {
            throw std::invalid_argument("y: label " + std::to_string(labels[i]) + " at index " +
                                        std::to_string(i) + " is outside [0, " +
                                        std::to_string(n_classes) + ")");
        }
    }
}

// Softmax row in place: returns log(sum exp(z - max)) and the index of the largest logit.
template <class T>
static T inplace_softmax_row(T* z, std::size_t cols, std::size_t* argmax) {
    std::size_t best = 0;
    for (std::size_t k = 1; k < cols; ++k)
        if (z[k] > z[best]) best = k;
    const T zmax = z[best];
    T total = 0;
    for (std::size_t k = 0; k < cols; ++k) {
        z[k] = std::exp(z[k] - zmax);
        total += z[k];
    }
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

// e^x for x <= 0 (the shifted logits of a softmax), float: Cephes' expf, 2^n p(r) with |r| <= ln2/2, written
// for the compiler to vectorise (std::exp is a call per value); within 2 ulp of std::exp, and exactly 0 for the
// values whose e^x is below float's smallest normal. Non-finite z never gets here (inputs are checked).
L2FAST_VECTOR_CLONES void inplace_exp_nonpositive(float* z, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const float x = z[i] < -87.0f ? -87.0f : z[i];
        const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds x log2(e) to a whole number
        const float k = (x * 1.44269504088896341f + shifter) - shifter;
        const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        std::int32_t bits = (std::int32_t(k) + 127) << 23;  // 2^k, k >= -126
        float two_k;
        std::memcpy(&two_k, &bits, sizeof two_k);
        z[i] = z[i] < -87.0f ? 0.0f : p * two_k;
    }
}

void inplace_exp_nonpositive(double* z, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) z[i] = std::exp(z[i]);
}

// The softmax loss of a block, in passes over chunks of rows: each row's largest logit taken out, then every
// exp of the chunk at once (vectorised), then each row's sum, probabilities and loss.
template <class T>
LossStats softmax_loss_gradient(T* Z, std::size_t rows, std::size_t cols, const Targets<T>& y) {
    constexpr std::size_t kChunk = 64;
    LossStats stats;
    T z_max[kChunk], z_label[kChunk];
    for (std::size_t start = 0; start < rows; start += kChunk) {
        const std::size_t n = std::min(kChunk, rows - start);
        for (std::size_t i = 0; i < n; ++i) {
            T* z = Z + (start + i) * cols;
            const std::size_t label = std::size_t(y.labels[y.record(start + i)]);
            std::size_t best = 0;
            for (std::size_t k = 1; k < cols; ++k)
                if (z[k] > z[best]) best = k;
            stats.correct += best == label;
            z_max[i] = z[best];
            z_label[i] = z[label];
            for (std::size_t k = 0; k < cols; ++k) z[k] -= z_max[i];
        }
        inplace_exp_nonpositive(Z + start * cols, n * cols);
        for (std::size_t i = 0; i < n; ++i) {
            T* z = Z + (start + i) * cols;
            const std::size_t r = y.record(start + i);
            T total = 0;
            for (std::size_t k = 0; k < cols; ++k) total += z[k];
            for (std::size_t k = 0; k < cols; ++k) z[k] /= total;
            double record_loss = double(std::log(total) + z_max[i] - z_label[i]);
            z[std::size_t(y.labels[r])] -= T(1);
            stats.loss_sum += weighted(z, cols, y, r, record_loss);
        }
    }
    return stats;
}

template <class T>
LossStats inplace_loss_gradient(T* Z, std::size_t rows, std::size_t cols, Loss loss, const Targets<T>& y) {
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
            case Loss::Logistic: {
                const T t = y.values[r];
                const T zi = z[0];
                // softplus(z) - t z and sigmoid(z) from one exp of -|z|, which never overflows
                const T e = std::exp(-std::abs(zi));
                const T l = (zi > T(0) ? zi : T(0)) - t * zi + std::log1p(e);
                const T p = zi >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
                record_loss = double(l);
                stats.correct += (p >= T(0.5)) == (t == T(1));
                z[0] = p - t;
                break;
            }
            case Loss::Softmax: break;  // softmax_loss_gradient
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
