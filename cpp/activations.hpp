// Hidden-layer activations: bias + activation fused over a GEMM output, and the derivative from A.
#pragma once

#include <cstddef>
#include <string>

namespace l2fast {

enum class Activation { Identity, Relu, Tanh, Sigmoid };

// Parses "identity" | "relu" | "tanh" | "sigmoid"; throws std::invalid_argument otherwise.
Activation parse_activation(const std::string& name);

// Z (rows x cols, row-major) <- act(Z + b) in one pass; b has cols entries.
template <class T>
void inplace_bias_activation(T* Z, const T* b, std::size_t rows, std::size_t cols, Activation act);

// dA (n entries) <- dA * act'(Z), with act'(Z) written in terms of the activated output A = act(Z).
template <class T>
void inplace_activation_backward(T* dA, const T* A, std::size_t n, Activation act);

// The numerically safe logistic function shared with the loss: never overflows.
template <class T>
T sigmoid(T z);

}  // namespace l2fast
