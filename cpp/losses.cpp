// Output layer: loss + gradient (training) and output activation (prediction).
#include "losses.hpp"

#include <cmath>
#include <stdexcept>

#include "activations.hpp"

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

template <class T>
LossStats inplace_loss_gradient(T* Z, std::size_t rows, std::size_t cols, Loss loss, const Targets<T>& y) {
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
            case Loss::Softmax: {
                const std::size_t label = std::size_t(y.labels[r]);
                const T z_label = z[label];
                std::size_t best = 0;
                const T lse = inplace_softmax_row(z, cols, &best);
                record_loss = double(lse - z_label);
                stats.correct += best == label;
                z[label] -= T(1);
                break;
            }
        }
        if (y.weights) {  // w = 1 changes nothing, bit for bit: multiplying by 1 is exact
            const T w = y.weights[r];
            record_loss *= double(w);
            for (std::size_t k = 0; k < cols; ++k) z[k] *= w;
        }
        stats.loss_sum += record_loss;
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
