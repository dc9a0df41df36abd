// The small-layer kernels: a dense layer's three products, for layers of 16 to kSmallWidth units, in AVX-512
// registers, with the passes around them fused in (the batch's rows read where they lie, bias + activation, the
// activation's derivative, the bias gradient and the SGD step); and a softmax output layer of fewer units, its loss
// fused into its forward product. OpenBLAS's small-matrix kernels run the wide layers' products alone about as fast
// (64-64-10, batch 32: within 4 % either way since session 12, 8-15 % faster before); what the kernels save is the
// gather, the elementwise passes, the bias GEMVs and the loss's own passes around them (see benchmarks/README.md,
// "Small networks").
#pragma once

#include <cstddef>

#include "activations.hpp"
#include "losses.hpp"

namespace l2fast {

// The widest layer (units out) the kernels take, any number of inputs; and the narrowest they take as such: a float32
// register's lanes (a narrower hidden layer goes faster through OpenBLAS; a narrower softmax output layer has kernels
// of its own, below).
constexpr std::size_t kSmallWidth = 128;
constexpr std::size_t kSmallMinWidth = 16;

// Whether this machine runs the kernels (they need AVX-512F); elsewhere the layers keep the OpenBLAS path.
bool small_kernels_available();

// Rows to ask the caches for while a kernel computes (the next step's rows of X): asked for a few after each block
// of the product, so that they arrive during its arithmetic instead of queueing for the line-fill buffers at once.
struct RowsAhead {
    const void* const* rows = nullptr;  // their addresses
    std::size_t count = 0;
    std::size_t bytes = 0;              // each row's
};

// Every kernel sums its products in one fixed order (over the inner dimension, first to last, one fused
// multiply-add per term), whatever the threads: the same bits from run to run and on any thread count. act is
// Identity or Relu.

// Z (rows x n_out) <- act(alpha A . W_t + b), row r of A (n_in values) at A_rows[r], W_t (n_in x n_out).
template <class T>
void small_forward(const T* const* A_rows, std::size_t rows, std::size_t n_in, const T* W_t, std::size_t n_out,
                   T alpha, const T* b, Activation act, T* Z);

// dA_prev (rows x n_in) <- (alpha dZ (rows x n_out) . W (n_out x n_in)) * act'(A_prev), act' read from the
// activated A_prev (rows x n_in).
template <class T>
void small_backward_input(const T* dZ, std::size_t rows, std::size_t n_out, const T* W, std::size_t n_in, T alpha,
                          const T* A_prev, Activation act, T* dA_prev);

// W_t (n_in x n_out) <- beta W_t + alpha A^T . dZ (rows x n_out), row r of A at A_rows[r] (n_in values), and
// b (n_out) <- b + bias_alpha sum_rows dZ: the fused SGD step of a layer stored transposed. ahead: rows to prefetch
// meanwhile.
template <class T>
void small_weight_step(const T* const* A_rows, const T* dZ, std::size_t rows, std::size_t n_in, std::size_t n_out,
                       T alpha, T beta, T bias_alpha, T* W_t, T* b, const RowsAhead& ahead = {});

// An output layer narrower than a register (a softmax over a few classes) keeps W (n_out x n_in) as its master copy
// and goes through the kernels too, with its logits and dL/dZ stored transposed (class by class, dZ_t: n_out x ld,
// the batch's records along each row): its forward product then runs along the records, in whole registers, from the
// layer's input transposed (A_t), and the softmax takes a register of 16 records at a time with no transposes.
template <class T>
constexpr std::size_t small_lanes = 64 / sizeof(T);

// A_t (cols x ld: row j holds column j of A, its first `rows` entries) <- A (rows x cols, row-major), ld >= rows.
template <class T>
void small_transpose(const T* A, std::size_t rows, std::size_t cols, std::size_t ld, T* A_t);

// dZ_t (n_out x ld) <- the softmax loss's w (softmax(z) - onehot(label)) of the logits z = alpha A . W^T + b, given
// A_t (n_in x ld: the layer's input A, rows x n_in, transposed by small_transpose), W (n_out x n_in, n_out <=
// small_lanes<T>), w the record's sample weight (1 without): the forward product, the softmax of each record and
// the loss's gradient in one call. Returns the loss sum and correct count as inplace_loss_gradient does, the losses
// added in record order.
template <class T>
LossStats small_forward_softmax(const T* A_t, std::size_t rows, std::size_t ld, std::size_t n_in, const T* W,
                                std::size_t n_out, T alpha, const T* b, const Targets<T>& y, T* dZ_t);

// The same softmax loss on logits given class by class (dZ_t, n_out x ld: the first `rows` entries of each row), in
// place: dZ_t <- w (softmax(z) - onehot(label)). The second half of small_forward_softmax.
template <class T>
LossStats small_softmax_transposed(T* dZ_t, std::size_t ld, std::size_t rows, std::size_t n_out, const Targets<T>& y);

// dA_prev (rows x n_in) <- (alpha dZ . W) * act'(A_prev) for such a layer: small_backward_input with dZ given
// transposed (dZ_t, n_out x ld).
template <class T>
void small_backward_input_narrow(const T* dZ_t, std::size_t ld, std::size_t rows, std::size_t n_out, const T* W,
                                 std::size_t n_in, T alpha, const T* A_prev, Activation act, T* dA_prev);

// W (n_out x n_in) <- beta W + alpha dZ^T . A (A: rows x n_in row-major, dZ given transposed: dZ_t, n_out x ld) and
// b (n_out) <- b + bias_alpha sum_rows dZ (in row order): the fused SGD step of such a layer, on W itself.
template <class T>
void small_weight_step_narrow(const T* dZ_t, std::size_t ld, const T* A, std::size_t rows, std::size_t n_in,
                              std::size_t n_out, T alpha, T beta, T bias_alpha, T* W, T* b);

}  // namespace l2fast
