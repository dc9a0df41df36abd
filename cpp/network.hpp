// Whole-network passes over blocks of records: one training epoch, prediction, evaluation, gradients.
// Everything here takes raw pointers and sizes; callers validate with the check_* functions first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "activations.hpp"
#include "losses.hpp"
#include "optim.hpp"
#include "sparse.hpp"

namespace l2fast {

// sizes = [n_x, n_1, ..., n_out]; hidden layers use act, the output layer is fixed by loss.
struct Shape {
    std::vector<std::size_t> sizes;
    Activation act = Activation::Relu;
    Loss loss = Loss::Softmax;

    std::size_t n_layers() const { return sizes.size() - 1; }
    std::size_t n_in() const { return sizes.front(); }
    std::size_t n_out() const { return sizes.back(); }
};

// W[l] is (sizes[l+1] x sizes[l]) row-major, b[l] has sizes[l+1] entries.
template <class T>
struct Params {
    std::vector<T*> W;
    std::vector<T*> b;
};

// X is (m x n_in) row-major; targets as in Targets<T>: values (m x n_out) or labels (m); weights, when not
// null, one sample weight >= 0 per record (m). Sparse X: `sparse` set, X null and X_csr (m x n_in) instead; only
// the first layer's two products differ (sparse.hpp), and a shuffled minibatch is a list of X_csr's row ranges.
template <class T>
struct Dataset {
    const T* X = nullptr;
    std::size_t m = 0;
    const T* y_values = nullptr;
    const std::int64_t* y_labels = nullptr;
    const T* weights = nullptr;
    Csr<T> X_csr;
    bool sparse = false;
};

// The targets of the records at positions row0.. of a pass: rows[i] (a shuffled order's) or row0 + i.
template <class T>
Targets<T> targets_of(const Dataset<T>& data, const std::int64_t* rows, std::size_t row0) {
    Targets<T> y;
    y.values = data.y_values;
    y.labels = data.y_labels;
    y.weights = data.weights;
    y.rows = rows;
    y.row0 = row0;
    return y;
}

// Whether a float32 epoch of plain SGD trains a dense layer (n_in -> n_out, minibatches of `batch` rows) on a
// transposed copy of its weights: when its forward product is small enough for OpenBLAS's small-matrix kernels
// but of a shape that only the plain product A W^T with W^T stored gets them for, at about half the time
// (TransposedWeights in network.cpp). gemm_only_epoch_seconds follows it.
bool train_transposed(std::size_t batch, std::size_t n_in, std::size_t n_out);

// Whether a float64 epoch with an optimizer runs a dense layer's forward product on a transposed copy of its
// weights (ForwardCopies in network.cpp): where A W^T would pack and A W_t takes OpenBLAS's small-matrix kernel.
bool forward_on_copy(std::size_t batch, std::size_t n_in, std::size_t n_out);

// Whether an epoch with an optimizer (momentum, Adam) on dense X cuts each step of at least 64 records in two shares of
// its rows, run side by side on two threads when the call has them, their gradient sums added in a fixed order (so the
// bits never depend on the threads): when every product of a share of a `batch`-record step (the layers `sizes`) has
// at most 2^21 multiply-adds, or 2^24 for a layer of at most 128 units, where two shares on one OpenBLAS thread each
// were measured faster than whole steps on OpenBLAS's threads. Sparse X keeps whole steps.
bool optimizer_step_shares(const std::vector<std::size_t>& sizes, std::size_t batch);

// Whether a plain-SGD epoch on dense X runs in those two shares too, SGD's update after the shares' sums (g = G +
// decay W, W <- W - lr g) instead of the L2 step fused into each weight product: in float64 (single false), where
// optimizer_step_shares allows it and the network is not a linear model (linear_step.cpp). 64-64-10 float64 at batch
// 200: 2 x faster on two cores than the fused step (134 -> 68 ms for 10 epochs of 20 000 records), the same on one.
// float32 keeps its fused step (and the small-layer kernels).
bool sgd_step_shares(const std::vector<std::size_t>& sizes, std::size_t batch, bool single);

// Whether an epoch on dense X, given its threads (share_threads) with OpenBLAS on one, cuts each step in two parts by
// its hidden layer's units (UnitSplitEpoch in network.cpp), whose bits do not depend on the threads: plain SGD, or an
// optimizer, whose steps optimizer_step_shares (sgd_step_shares) does not cut in two shares of records; a network of
// one hidden layer with ReLU or identity units, not one the small-layer kernels take (SmallStep) nor one whose first
// layer trains transposed (train_transposed), a step's hidden product of 2^20 to 2^27 multiply-adds and its output
// layer's (at least two units) at most a sixteenth of that.
bool split_step_fits(const std::vector<std::size_t>& sizes, std::size_t batch, Activation act);

// Whether an epoch with an optimizer (plain SGD where sgd_step_shares says so) on dense X, given its threads with
// OpenBLAS on one, cuts each step in two parts by its hidden layer's units, each part with its partial of the output
// layer's product (PartialOutputEpoch in network.cpp), instead of two shares of records: a network of one hidden layer
// of at least 32 units on at most 128 inputs, whose steps optimizer_step_shares cuts. Its bits do not depend on the
// threads either.
bool partial_output_fits(const std::vector<std::size_t>& sizes, std::size_t batch);
// Validation: each throws std::invalid_argument naming the offending argument.
void check_shape(const Shape& shape);
void check_order(const std::int64_t* order, std::size_t n, std::size_t m);

// One pass over the records in `order` (n of them; null order: records 0..m-1 in turn) in minibatches
// of `batch`, each step W <- (1 - lr lam/m) W - (lr/b) dZ^T A_prev with the GEMM writing into W
// (inplace_fused_l2_step: the decay rides on a per-layer scale, folded back into W at the end).
// Returns the loss sum and correct count of every minibatch, measured before its own update.
// should_stop, when given, is asked at most every 10 ms between steps; when it answers true the
// epoch ends after the step in hand, with W whole (scales folded back), and `stopped` is set.
// With with_norms, weight_norms is the sum over the steps of sum_l ||W_l||^2 at the weights each step's loss was
// computed with (before its update): scikit-learn's MLP adds alpha/2 ||W||^2 to every batch's loss.
struct EpochResult {
    LossStats stats;
    bool stopped = false;
    std::size_t steps = 0;
    double weight_norms = 0.0;
};

// An optimizer other than plain SGD with its state: slots[s].W[l] and slots[s].b[l] are state array s
// (opt.n_slots() of them) of layer l's weights and biases, shaped like them. step counts the steps
// taken before the epoch (Adam's t); train_epoch moves it on.
template <class T>
struct OptimizerRun {
    Optimizer opt;
    std::vector<Params<T>> slots;
    std::int64_t step = 0;

    // State array s of layer l's weights (or biases), from entry `from` on; null when the optimizer has no such array.
    T* slot(std::size_t s, bool weights, std::size_t l, std::size_t from) const {
        if (s >= slots.size()) return nullptr;
        return (weights ? slots[s].W[l] : slots[s].b[l]) + from;
    }

    // The optimizer's pass (inplace_optimizer_step, this step's) over entries [from, from + n) of layer l's weights (or
    // biases) in params and their state, G their mean gradient; norms as inplace_optimizer_step's sum_squares.
    void apply(Params<T>& params, std::size_t l, bool weights, std::size_t from, const T* G, std::size_t n, T lr,
               T decay, double* norms = nullptr) const {
        inplace_optimizer_step(opt, step, (weights ? params.W[l] : params.b[l]) + from, G, slot(0, weights, l, from),
                               slot(1, weights, l, from), n, lr, decay, norms);
    }
};

// With run given (and not SGD), each step computes the layer's mean gradient into a buffer with one
// GEMM, then updates W, b and their state in one fused pass each (inplace_optimizer_step); so does plain SGD on
// dense X where sgd_step_shares says so.
// short_lam_over_m, when given, is the decay of a step on fewer than batch records (the last, when batch does not
// divide n) instead of lam_over_m: scikit-learn's MLP decays each batch of b records by alpha/b, its short last
// batch too, which one call then takes along with the full ones. share_threads: the threads for steps cut in two
// shares (optimizer_step_shares) or two parts (split_step_fits), at most two; 0: OpenBLAS's count. A caller that gives
// it runs OpenBLAS on one thread for the epoch (the cpu backend does), so that each share's products stay on its own
// thread; where OpenBLAS has more and would thread a share's products itself, the shares run one after the other. An
// epoch that split_step_fits is cut by units only so (share_threads given, OpenBLAS on one thread), else whole steps;
// one that partial_output_fits likewise, else in two shares of records.
template <class T>
EpochResult train_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                        std::size_t n, std::size_t batch, T lr, T lam_over_m,
                        const std::function<bool()>& should_stop = {}, OptimizerRun<T>* run = nullptr,
                        bool with_norms = false, std::optional<T> short_lam_over_m = std::nullopt,
                        std::size_t share_threads = 0);

// train_epoch for K models of one shape at once: one order, one gathered batch for all, each
// layer's K GEMMs handed to OpenBLAS as one batch, model k stepping with its own lam_over_m[k].
// Model k ends exactly where train_epoch alone would take it, up to the rounding of the products.
struct StackedEpochResult {
    std::vector<LossStats> stats;  // one per model
    bool stopped = false;
    std::size_t steps = 0;
};

template <class T>
StackedEpochResult train_epoch_stacked(const Shape& shape, std::vector<Params<T>>& models, const Dataset<T>& data,
                                       const std::int64_t* order, std::size_t n, std::size_t batch, T lr,
                                       const std::vector<T>& lam_over_m,
                                       const std::function<bool()>& should_stop = {});

// out (m x n_out) <- yhat for each row of X (m x n_in).
template <class T>
void predict(const Shape& shape, const Params<T>& params, const T* X, std::size_t m, T* out);

// The same for data.X or data.X_csr (data.m rows); targets are not read.
template <class T>
void predict(const Shape& shape, const Params<T>& params, const Dataset<T>& data, T* out);

// Loss sum and correct count over the whole data set, parameters unchanged.
template <class T>
LossStats evaluate(const Shape& shape, const Params<T>& params, const Dataset<T>& data);

// The scratch memory of gradients() (the layers' outputs and dL/dZ, float blocks' sums), kept by a caller that
// calls it again and again on batches of one network, as a data-parallel step does: a call with a scratch
// allocates nothing once the scratch has grown to the network's largest block. Not for two calls at once.
template <class T>
struct GradientsScratch;
template <class T>
std::shared_ptr<GradientsScratch<T>> make_gradients_scratch();
template <class T>
std::size_t times_grown(const GradientsScratch<T>& scratch);  // how often it has (re)allocated its buffers

// grads <- dJ/dW = (1/m) sum_i w_i dL_i/dW + (lam/m) W and dJ/db over the whole data set, summed in double
// whatever T (each block's products in T, added into double totals); returns the loss sum. scratch: see above
// (one-layer networks take the linear pass, which keeps none). layer_done(l), when given, is called on the
// calling thread as soon as grads.W[l] and grads.b[l] are final, from the last layer down: dense X's layers
// during the last block's backward pass (a data-parallel step starts their allreduce while the layers below
// are worked out), sparse X's after the pass.
// share_threads (0: none) asks for the records cut in two halves where gradients_shares allows it, each half's
// blocks on its own thread with its own sums, added half 0 then half 1 (so the bits are the same on one thread and
// on two); the caller runs OpenBLAS on one thread for the call, as for train_epoch's shares. layer_done is then called
// for each layer after both halves.
template <class T>
LossStats gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                    Params<double>& grads, GradientsScratch<T>* scratch = nullptr,
                    const std::function<void(std::size_t)>& layer_done = {}, std::size_t share_threads = 0);

// Whether gradients() with share_threads cuts dense X's m records in two halves: for networks with a hidden layer,
// where optimizer_step_shares allows two shares of a block's rows (a half, up to 2048 records). 64-100-10 on digits
// (1797 records), float64: a half on one thread 0.92 ms against 1.38-1.40 ms for the whole pass on OpenBLAS's two.
bool gradients_shares(const std::vector<std::size_t>& sizes, std::size_t m);

}  // namespace l2fast
