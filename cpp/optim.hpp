// Optimizers beyond plain gradient descent: each step is one fused pass over a parameter tensor, its
// gradient and its state, with the L2 term folded in (coupled) or applied as weight decay (decoupled).
// The formulas are those of python/l2fast/optim.py, the specification.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace l2fast {

enum class Method { Sgd, Momentum, Adam };

Method parse_method(const std::string& name);

struct Optimizer {
    Method method = Method::Sgd;
    double momentum = 0.9;
    bool nesterov = false;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    bool decoupled = false;
    // Adam's eps added to sqrt(S2) rather than to sqrt(S2 / (1 - b2^t)) (scikit-learn's and Keras' placement,
    // the Adam paper's epsilon-hat): P <- keep P - lr sqrt(1 - b2^t) / (1 - b1^t) S1 / (sqrt(S2) + eps).
    bool eps_on_v = false;

    // State arrays per parameter: none (SGD), a velocity (momentum), two moments (Adam).
    std::size_t n_slots() const { return method == Method::Sgd ? 0 : method == Method::Momentum ? 1 : 2; }
};

// Throws std::invalid_argument naming the hyperparameter out of range.
void check_optimizer(const Optimizer& opt);

// One step on P (n entries) from G, the batch mean of dL/dP, with decay = lam/m (0 for biases):
//   g = G + decay P (coupled) or G (decoupled), keep = 1 (coupled) or 1 - lr decay (decoupled)
//   SGD:      P <- P - lr g
//   Momentum: S1 <- mu S1 + g;  P <- keep P - lr (nesterov ? g + mu S1 : S1)
//   Adam:     S1 <- b1 S1 + (1 - b1) g;  S2 <- b2 S2 + (1 - b2) g^2;
//             P <- keep P - lr / (1 - b1^t) S1 / (sqrt(S2) / sqrt(1 - b2^t) + eps)
// step is t >= 1, this step's number. Large tensors are split across threads. sum_squares, when given, has
// sum_i P_i^2 of P before the step added to it, in double, read in the step's own pass.
template <class T>
void inplace_optimizer_step(const Optimizer& opt, std::int64_t step, T* P, const T* G, T* S1, T* S2, std::size_t n,
                            T lr, T decay, double* sum_squares = nullptr);

}  // namespace l2fast
