// Linear models (no hidden layer) over the whole data: one pass that reads each record once.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "network.hpp"

namespace l2fast {

// sum_i w_i^2 over w (n), each square taken in double and summed in one fixed order, the same bits on every
// machine: J's penalty, and a step's squared weight norm where no update pass reads W.
template <class T>
double sum_squares(const T* w, std::size_t n);

// Whether linear_gradients serves this shape: one layer and few enough weights for its per-slice sums.
bool linear_pass_fits(const Shape& shape);

// The memory linear_gradients works in: each slice's sums and block of outputs. A caller that passes one pass
// after pass (L-BFGS's evaluations on one X) keeps it between calls, which then allocate nothing once it has grown
// to the network. Not for two calls at once.
template <class T>
struct LinearScratch {
    struct Slice {
        std::vector<double> dW, db;
        std::vector<T> z;
        LossStats stats;
    };
    std::vector<Slice> slices;
    std::vector<T> params;                             // linear_objective's W and b rounded to T (T = float)
    std::shared_ptr<GradientsScratch<T>> other_shapes;  // linear_objective's gradients() where the pass does not fit
};

// gradients() for a one-layer network: for each record, z = W x + b, the loss and dL/dz, and
// dW += dL/dz x^T while x is in cache, so X is read once (the GEMM path reads each block twice and
// packs it). The records are cut into a fixed number of slices summed in double on their own and
// added up in slice order, so the result does not depend on how many threads share the slices.
// grads <- (1/m) sum_i w_i dL_i/dW + lam_over_m W and dJ/db; returns the loss sum. scratch: see above (null: the
// call allocates its own).
template <class T>
LossStats linear_gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                           Params<double>& grads, LinearScratch<T>* scratch = nullptr);

// J = loss_sum / m + lam / (2m) ||W||^2 of a one-layer network at the flat float64 parameters x = [W.ravel(), b]
// (W (n_out x n_in) row-major, then b (n_out)), the layout of l2fast.solvers' L-BFGS, and grad (same layout) <-
// dJ/dx; *loss_sum <- the loss sum. The gradient is gradients()'s, bit for bit: for T = double W and b are x's own
// entries, for float x's values rounded to float in the scratch. ||W||^2 is summed in double. Dense X of a shape
// linear_pass_fits takes the one-read pass and allocates nothing once the scratch has grown; other one-layer
// networks (sparse X, very many weights) take gradients()'s products.
template <class T>
double linear_objective(const Shape& shape, const double* x, const Dataset<T>& data, double lam, double* grad,
                        LinearScratch<T>& scratch, double* loss_sum);

}  // namespace l2fast
