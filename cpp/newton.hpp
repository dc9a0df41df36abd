// Hessian-vector products of J for linear models (no hidden layer): what a truncated Newton solver asks for.
#pragma once

#include <cstddef>

#include "network.hpp"

namespace l2fast {

// The curvature of the loss at the current parameters, per record i: R_i = c_i u_i, or, given the softmax
// probabilities P (m x n_out, null otherwise), R_i = c_i (p_i * u_i - p_i (p_i . u_i)), the softmax Hessian
// times u_i. Logistic: c_i = w_i p_i (1 - p_i); softmax: c_i = w_i; squared error: c_i = w_i (w_i the sample
// weight, 1 without).
struct Curvature {
    const double* c = nullptr;  // (m)
    const double* P = nullptr;  // (m x n_out) or null
};

// HV <- (1/m) sum_i R_i x_i^T + lam_over_m V, Hv_b <- (1/m) sum_i R_i with u_i = V x_i + v_b, for a direction
// (V (n_out x n_in), v_b (n_out)) in the parameters of a one-layer network: the Hessian of J times that
// direction. X (dense or CSR, data.m rows) is read once: each record's u_i and its share of HV are taken
// while it is in cache. Rows are split between OpenBLAS's number of threads, each summing in double into
// its own copy of HV (the calling thread into HV itself), added up in thread order.
template <class T>
void linear_hessian_product(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const Curvature& curvature,
                            const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b);

}  // namespace l2fast
