// Hidden-layer activations: the element-wise passes that follow each GEMM.
#include "activations.hpp"

#include <cmath>
#include <stdexcept>

#include "blas_threads.hpp"
#include "parallel.hpp"

namespace l2fast {

Activation parse_activation(const std::string& name) {
    if (name == "identity") return Activation::Identity;
    if (name == "relu") return Activation::Relu;
    if (name == "tanh") return Activation::Tanh;
    if (name == "sigmoid") return Activation::Sigmoid;
    throw std::invalid_argument("activation: unknown activation '" + name +
                                "'; expected identity, relu, tanh or sigmoid");
}

template <class T>
T sigmoid(T z) {
    // exp of a non-positive number only, so no overflow on either side.
    const T e = std::exp(-std::abs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <class T, class F>
static void bias_then(T* Z, const T* b, std::size_t rows, std::size_t cols, F f) {
    for (std::size_t i = 0; i < rows; ++i) {
        T* row = Z + i * cols;
        for (std::size_t j = 0; j < cols; ++j) row[j] = f(row[j] + b[j]);
    }
}

template <class T>
L2FAST_VECTOR_CLONES void bias_activation_rows(T* Z, const T* b, std::size_t rows, std::size_t cols, Activation act) {
    switch (act) {
        case Activation::Identity: bias_then(Z, b, rows, cols, [](T z) { return z; }); break;
        case Activation::Relu: bias_then(Z, b, rows, cols, [](T z) { return z > T(0) ? z : T(0); }); break;
        case Activation::Tanh: bias_then(Z, b, rows, cols, [](T z) { return std::tanh(z); }); break;
        case Activation::Sigmoid: bias_then(Z, b, rows, cols, [](T z) { return sigmoid(z); }); break;
    }
}

template <class T>
L2FAST_VECTOR_CLONES void activation_backward_range(T* dA, const T* A, std::size_t n, Activation act) {
    switch (act) {
        case Activation::Identity: break;
        case Activation::Relu:
            for (std::size_t i = 0; i < n; ++i) dA[i] = A[i] > T(0) ? dA[i] : T(0);
            break;
        case Activation::Tanh:
            for (std::size_t i = 0; i < n; ++i) dA[i] *= T(1) - A[i] * A[i];
            break;
        case Activation::Sigmoid:
            for (std::size_t i = 0; i < n; ++i) dA[i] *= A[i] * (T(1) - A[i]);
            break;
    }
}

template <class T>
void inplace_bias_activation(T* Z, const T* b, std::size_t rows, std::size_t cols, Activation act) {
    parallel_pass(rows, cols, [=](std::size_t r0, std::size_t r1) {
        bias_activation_rows(Z + r0 * cols, b, r1 - r0, cols, act);
    });
}

template <class T>
void inplace_activation_backward(T* dA, const T* A, std::size_t n, Activation act) {
    if (act == Activation::Identity) return;
    parallel_pass(n, 1, [=](std::size_t i0, std::size_t i1) {
        activation_backward_range(dA + i0, A + i0, i1 - i0, act);
    });
}

template float sigmoid(float);
template double sigmoid(double);
template void inplace_bias_activation(float*, const float*, std::size_t, std::size_t, Activation);
template void inplace_bias_activation(double*, const double*, std::size_t, std::size_t, Activation);
template void inplace_activation_backward(float*, const float*, std::size_t, Activation);
template void inplace_activation_backward(double*, const double*, std::size_t, Activation);

}  // namespace l2fast
