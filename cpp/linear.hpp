// Linear models (no hidden layer) over the whole data: one pass that reads each record once.
#pragma once

#include <cstddef>

#include "network.hpp"

namespace l2fast {

// Whether linear_gradients serves this shape: one layer and few enough weights for its per-slice sums.
bool linear_pass_fits(const Shape& shape);

// gradients() for a one-layer network: for each record, z = W x + b, the loss and dL/dz, and
// dW += dL/dz x^T while x is in cache, so X is read once (the GEMM path reads each block twice and
// packs it). The records are cut into a fixed number of slices summed in double on their own and
// added up in slice order, so the result does not depend on how many threads share the slices.
// grads <- (1/m) sum_i w_i dL_i/dW + lam_over_m W and dJ/db; returns the loss sum.
template <class T>
LossStats linear_gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                           Params<double>& grads);

}  // namespace l2fast
