// What the hardware allows: the benchmark's yardsticks, run through the same BLAS as the kernels.
#pragma once

#include <cstddef>

#include "network.hpp"

namespace l2fast {

// Seconds for the GEMMs alone of one training epoch of `shape` over m records in minibatches of
// `batch`: per step the forward products, the input gradients of every layer but the first and the
// weight-gradient products, at the shapes and transposes train_epoch uses. Buffers are random.
template <class T>
double gemm_only_epoch_seconds(const Shape& shape, std::size_t m, std::size_t batch);

}  // namespace l2fast
