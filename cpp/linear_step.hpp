// Minibatch SGD for linear models (no hidden layer): each step in one read of its records, straight from X.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "network.hpp"

namespace l2fast {

// Whether linear_sgd_epoch serves this network: one layer, with few enough weights that W and a step's
// gradient sum stay in the core's first-level caches.
bool linear_step_fits(const Shape& shape);

// train_epoch for a one-layer network trained with plain SGD on dense X. A step reads each of its records once,
// from X itself in the epoch's order (no gathered copy): in blocks of up to 32 records copied out of X (rows padded to
// whole vectors), z = W x + b several records and outputs at a time in registers, the block's losses and dL/dz (the
// softmax's logits class by class on AVX-512 machines), then the block's share of G = sum dL/dz x^T while its rows
// are still in the first-level cache; the records a few rows ahead are prefetched as the block goes. The step's update,
// W <- (1 - lr lam_over_m) W - (lr/b) G and b <- b - (lr/b) sum dL/dz, is one pass over the small W, made by each
// share on a copy of W of its own before the next step's sums (both threads at once, no serial pass). The same step
// as train_epoch's (the GEMM path), up to the order of the float sums. A step of 128 records or more is cut in two
// shares whatever the threads (run side by side on two), so its results do not depend on the thread count. The
// steps go in runs of about run_length each, one job of the pool (parallel_steps); stop is asked after each run,
// outside the pool, and true ends the epoch there (`stopped`). with_norms: the result's weight_norms as train_epoch's.
constexpr std::chrono::microseconds kLinearRun{10000};
template <class T>
EpochResult linear_sgd_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                             std::size_t n, std::size_t batch, T lr, T lam_over_m, const std::function<bool()>& stop,
                             bool with_norms = false, std::chrono::microseconds run_length = kLinearRun);

// Whether linear_sgd_epoch and linear_gradients (linear.hpp) run their AVX-512 kernels where the machine has them
// (true, the default) or the AVX2 ones everywhere (false): the tests run both sets on a machine with AVX-512.
void set_linear_wide_kernels(bool on);
bool linear_wide_kernels_allowed();

// Seconds to read every row of X (m x n_in) once, in a shuffled order of the rows (drawn here, seeded), summing
// them, with the prefetching linear_sgd_epoch does: the memory traffic an epoch of a linear model cannot avoid, the
// floor `l2fast bench` compares config A with. The best of `repeats` orders. With batch > 0, the floor as issue 19
// words it: each batch's rows gathered once (copied into a buffer, same order and prefetching), then the buffer read
// twice from cache, as the fused step's forward and gradient passes read their rows.
template <class T>
double shuffled_read_seconds(const T* X, std::size_t m, std::size_t n_in, int repeats, std::size_t batch = 0);

}  // namespace l2fast
