// What a truncated Newton solver asks of a linear model (no hidden layer), each in one read of X: J's data part
// with its gradient and the loss's curvature at a point, and Hessian-vector products of J at that point.
#pragma once

#include <cstddef>

#include "losses.hpp"
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

// Both passes work on W (or V) transposed into double, n_in x n_out, so that each stored entry of X meets its
// n_out weights side by side, and split the rows between OpenBLAS's number of threads, each summing in double
// into its own copy of the result, added up in thread order. They never read outside X's arrays whatever they
// hold (each row's range clamped to [0, nnz], a column index outside [0, n_in) skipped), so a CSR checked once
// before a solve need not be checked again at every product.

// Returns the loss sum (sum_i w_i L_i, in double) and sets dW (n_out x n_in) and db (n_out) to J's gradient
// (1/m) sum_i w_i dL_i/dz_i x_i^T + lam_over_m W and (1/m) sum_i w_i dL_i/dz_i, z_i = W x_i + b taken in double,
// and c (m), P (m x n_out, softmax only; else unused, may be null) to the curvature described above.
template <class T>
double linear_gradient_curvature(const Dataset<T>& data, Loss loss, std::size_t n_in, std::size_t n_out, const T* W,
                                 const T* b, double lam_over_m, double* dW, double* db, double* c, double* P);

// HV <- (1/m) sum_i R_i x_i^T + lam_over_m V, Hv_b <- (1/m) sum_i R_i with u_i = V x_i + v_b, for a direction
// (V (n_out x n_in), v_b (n_out)) in the parameters of a one-layer network: the Hessian of J times that
// direction. Each record's u_i and its share of HV are taken while it is in cache.
template <class T>
void linear_hessian_product(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const Curvature& curvature,
                            const double* V, const double* v_b, double lam_over_m, double* HV, double* Hv_b);

// diag_W (outputs x n_in) <- sum_i d_ik x_ij^2 and diag_b (outputs) <- sum_i d_ik, with d_ik = c_i p_ik (1 - p_ik)
// given P (outputs = n_out), else c_i (outputs = 1: every output has that diagonal): m times the diagonal of the
// data part of J's Hessian at the curvature's point, which scales the Newton solver's parameters.
template <class T>
void linear_hessian_diagonal(const Dataset<T>& data, std::size_t n_in, std::size_t outputs,
                             const Curvature& curvature, double* diag_W, double* diag_b);

}  // namespace l2fast
