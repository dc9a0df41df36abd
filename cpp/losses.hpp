// Output layer: the loss, its output activation and dL/dZ fused in one pass over the logits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace l2fast {

// squared_error: identity output, L = 1/2 sum_k (z_k - y_k)^2.
// logistic: sigmoid output, one column, labels 0/1 stored as T.
// softmax: softmax output, integer labels 0..cols-1, cross-entropy.
// For all three dL/dZ = yhat - y (one-hot y for softmax).
enum class Loss { SquaredError, Logistic, Softmax };

Loss parse_loss(const std::string& name);

// Where the targets of a block of rows live: y_values (m x cols, T) for squared_error and logistic,
// y_labels (m, int64) for softmax. Row i of the block is record rows[i], or row0 + i when rows is null.
// weights, when not null, holds one sample weight w >= 0 per record (m): its loss and dL/dZ are scaled by w.
template <class T>
struct Targets {
    const T* values = nullptr;
    const std::int64_t* labels = nullptr;
    const T* weights = nullptr;
    const std::int64_t* rows = nullptr;
    std::size_t row0 = 0;

    std::size_t record(std::size_t i) const { return rows ? std::size_t(rows[i]) : row0 + i; }
};

struct LossStats {
    double loss_sum = 0.0;     // sum over records of w L (w = 1 without sample weights), accumulated in double
    std::int64_t correct = 0;  // records classified right (0 for squared_error), not weighted

    LossStats& operator+=(const LossStats& o) {
        loss_sum += o.loss_sum;
        correct += o.correct;
        return *this;
    }
};

// Z (rows x cols logits) <- w dL/dZ per record (not yet divided by the batch); returns the loss sum.
template <class T>
LossStats inplace_loss_gradient(T* Z, std::size_t rows, std::size_t cols, Loss loss, const Targets<T>& y);

// Z (rows x cols logits) <- the network's output yhat (probabilities, or values for regression).
template <class T>
void inplace_output_activation(T* Z, std::size_t rows, std::size_t cols, Loss loss);

// Throws std::invalid_argument unless every label is an integer in [0, n_classes).
void check_labels(const std::int64_t* labels, std::size_t m, std::size_t n_classes);

// The first i < n with v[i] outside [0, bound), n when there is none. A vectorised pass over all of v first (a
// loop that may stop early does not vectorise), the scalar search only when it found one: these checks read a
// whole label or order array on every call.
std::size_t first_outside(const std::int64_t* v, std::size_t n, std::size_t bound);

// The same for values other than 0 and 1 (logistic targets), and for values not finite and >= 0 (sample weights).
template <class T>
std::size_t first_not_binary(const T* v, std::size_t n);
template <class T>
std::size_t first_not_weight(const T* v, std::size_t n);

}  // namespace l2fast
