// The epoch loop and the whole-data passes. Buffers are sized once per call, never inside the loop.
#include "network.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "aligned.hpp"
#include "blas.hpp"
#include "blas_threads.hpp"
#include "dense.hpp"
#include "linear.hpp"
#include "linear_step.hpp"
#include "parallel.hpp"
#include "small_dense.hpp"
#include "update.hpp"
#include "vectors.hpp"

namespace l2fast {

namespace {

// Rows per block in the whole-data passes: large enough for efficient GEMMs, small enough for cache.
constexpr std::size_t kBlockRows = 2048;
// The most bytes of the next minibatch a step prefetches: larger ones (784-256-10 at batch 128: 400 KB) cost more
// than they save, queueing for the line-fill buffers and pushing the step's own operands out of L2 (measured:
// that epoch 20 % slower with them), and their steps are long enough for the waits not to matter.
constexpr std::size_t kPrefetchBytes = std::size_t(1) << 17;
// How long the helpers of a step cut in two (OptimizerStep, PartialOutputEpoch) poll for the next job: a scikit-learn
// drop-in calls one epoch after another with 0.1-0.3 ms of Python between them (digits: 9 steps an epoch), and a helper
// woken from sleep for each would give the next epoch's first steps no second thread (digits, Adam, 20 epochs, two
// threads: the epochs 17.7-20.3 ms a fit with 50 us, 14.7-15.7 ms with 300 us; one thread 17.1-18.2 ms).
constexpr std::chrono::microseconds kEpochsPoll{300};
// The fewest records a share of an optimizer's step takes (OptimizerStep): a step of fewer than twice as many is one.
constexpr std::size_t kMinShareRows = 32;
// The bounds of a step's hidden-layer product (multiply-adds) for UnitSplitEpoch, and the least ratio of it to the
// output layer's, which runs on one thread (split_step_fits; benchmarks/README.md, B, session 20).
constexpr double kMinSplitProduct = double(std::size_t(1) << 20), kMostSplitProduct = double(std::size_t(1) << 27);
constexpr double kMinSplitRatio = 16.0;

template <class T>
struct Workspace {
    LineVector<T> x;                   // gathered input rows (shuffled training only)
    std::vector<LineVector<T>> out;    // out[l]: layer l's output A (last layer: logits, then dL/dZ)
    std::vector<LineVector<T>> grad;   // grad[l]: dL/dZ of hidden layer l

    Workspace(const Shape& shape, std::size_t rows, bool gather, bool backward) {
        if (gather) x.resize(rows * shape.n_in());
        for (std::size_t l = 0; l < shape.n_layers(); ++l) {
            out.emplace_back(rows * shape.sizes[l + 1]);
            if (backward && l + 1 < shape.n_layers()) grad.emplace_back(rows * shape.sizes[l + 1]);
        }
    }
};

// The rows of X one block works on: dense rows, or (sparse X) ranges of X's CSR entries.
template <class T>
struct BlockX {
    const T* dense = nullptr;
    SparseRows<T> sparse;
    const T* W0_t = nullptr;  // whole-data passes: W[0] transposed (n_in x n_1), see first_layer_transposed

    bool is_sparse() const { return sparse.X != nullptr; }
};

// The layer's true weights are scale[l] * W[l]; a null scale means every scale is 1.
template <class T>
T scale_of(const double* scale, std::size_t l) {
    return scale ? T(scale[l]) : T(1);
}

// W_t, when given, holds per layer either null or the layer's weights transposed (n_in x n_out), which the
// products then read instead of W[l] (see TransposedWeights).
template <class T>
void forward_block(const Shape& shape, const Params<T>& params, const double* scale, const BlockX<T>& X,
                   std::size_t rows, Workspace<T>& ws, T* const* W_t = nullptr) {
    const T* in = X.dense;
    const std::size_t L = shape.n_layers();
    for (std::size_t l = 0; l < L; ++l) {
        const Activation act = l + 1 == L ? Activation::Identity : shape.act;
        if (W_t && W_t[l]) {
            transposed_forward(in, rows, shape.sizes[l], W_t[l], shape.sizes[l + 1], scale_of<T>(scale, l),
                               ws.out[l].data());
            inplace_bias_activation(ws.out[l].data(), params.b[l], rows, shape.sizes[l + 1], act);
        } else if (l == 0 && X.is_sparse())
            sparse_dense_forward(X.sparse, X.W0_t ? X.W0_t : params.W[0],
                                 X.W0_t ? WeightLayout::Transposed : WeightLayout::Rows, scale_of<T>(scale, 0),
                                 params.b[0], shape.sizes[1], act, ws.out[0].data());
        else
            dense_forward(in, rows, shape.sizes[l], params.W[l], scale_of<T>(scale, l), params.b[l],
                          shape.sizes[l + 1], act, ws.out[l].data());
        in = ws.out[l].data();
    }
}

// Walks the layers from the output back; consume(l, dZ, A_prev) sees each layer's dL/dZ after the
// gradient for the layer below has been taken with the old W[l]. A_prev is null for sparse X.
template <class T, class Consume>
void backward_block(const Shape& shape, const Params<T>& params, const double* scale, const BlockX<T>& X,
                    std::size_t rows, Workspace<T>& ws, Consume consume, T* const* W_t = nullptr) {
    const std::size_t L = shape.n_layers();
    for (std::size_t l = L; l-- > 0;) {
        T* dZ = l + 1 == L ? ws.out[l].data() : ws.grad[l].data();
        const T* A_prev = l == 0 ? X.dense : ws.out[l - 1].data();
        if (l > 0) {
            T* dZ_below = ws.grad[l - 1].data();
            if (W_t && W_t[l])
                blas::gemm(blas::Op::N, blas::Op::T, int(rows), int(shape.sizes[l]), int(shape.sizes[l + 1]),
                           scale_of<T>(scale, l), dZ, int(shape.sizes[l + 1]), W_t[l], int(shape.sizes[l + 1]), T(0),
                           dZ_below, int(shape.sizes[l]));
            else
                dense_backward_input(dZ, rows, shape.sizes[l + 1], params.W[l], scale_of<T>(scale, l), shape.sizes[l],
                                     dZ_below);
            inplace_activation_backward(dZ_below, ws.out[l - 1].data(), rows * shape.sizes[l], shape.act);
        }
        consume(l, dZ, A_prev);
    }
}

// Where the next step's records are (its rows of the order, and how many), for a step to ask for them early.
struct NextRows {
    const std::int64_t* picked = nullptr;
    std::size_t rows = 0;
};

// Asks for rows begin..end-1 of the next step's records. A step spreads these over its passes: asked for all at
// once, they would queue for the core's few line-fill buffers and hold up the instructions behind them. The empty
// asm keeps the loop, which the compiler could otherwise drop as one without effects.
template <class T>
void prefetch_rows(const T* X, std::size_t n_in, const NextRows& next, std::size_t begin, std::size_t end) {
    constexpr std::size_t kLine = 64;
    const std::size_t row_bytes = n_in * sizeof(T);
    for (std::size_t i = begin; i < std::min(end, next.rows); ++i) {
        const char* row = reinterpret_cast<const char*>(X + std::size_t(next.picked[i]) * n_in);
        for (std::size_t off = 0; off < row_bytes; off += kLine) __builtin_prefetch(row + off);
        asm volatile("" ::: "memory");
    }
}

// The next step's records, when this step gathers dense rows and the next one's are few enough to prefetch.
template <class T>
NextRows next_rows(const Dataset<T>& data, const std::int64_t* picked, std::size_t start, std::size_t rows,
                   std::size_t n, std::size_t batch, std::size_t n_in) {
    if (data.sparse || !picked || start + rows >= n || n_in * sizeof(T) * batch > kPrefetchBytes) return {};
    return {picked + rows, std::min(batch, n - start - rows)};
}

// Asks for record r's targets (label or values, and sample weight).
template <class T>
void prefetch_targets(const Dataset<T>& data, std::size_t n_out, std::size_t r) {
    if (data.y_labels) __builtin_prefetch(data.y_labels + r);
    if (data.y_values) __builtin_prefetch(data.y_values + r * n_out);
    if (data.weights) __builtin_prefetch(data.weights + r);
}

// Copies the picked rows of X into dst; the rows ahead are prefetched, since a shuffled order
// reads X at random and each row would otherwise wait on memory in turn. The next step's targets are asked for
// too (its rows later, prefetch_rows), so that they arrive while this step computes: a small network's step is
// shorter than the wait for each record's label from memory, one after the other.
template <class T>
void gather_rows(const Dataset<T>& data, std::size_t n_in, std::size_t n_out, const std::int64_t* picked,
                 std::size_t rows, T* dst, NextRows next) {
    constexpr std::size_t kAhead = 8, kLine = 64;
    const std::size_t row_bytes = n_in * sizeof(T);
    const T* X = data.X;
    for (std::size_t i = 0; i < rows; ++i) {
        if (i + kAhead < rows) {
            const char* ahead = reinterpret_cast<const char*>(X + std::size_t(picked[i + kAhead]) * n_in);
            for (std::size_t off = 0; off < row_bytes; off += kLine) __builtin_prefetch(ahead + off);
        }
        if (i < next.rows) prefetch_targets(data, n_out, std::size_t(next.picked[i]));
        std::memcpy(dst + i * n_in, X + std::size_t(picked[i]) * n_in, row_bytes);
    }
}

// The block's rows of X: picked (a shuffled order) or start..start+rows-1. Picked dense rows are copied into
// gathered; sparse ones are only listed as ranges of X's entries.
template <class T>
void take_block(const Dataset<T>& data, std::size_t n_in, const std::int64_t* picked, std::size_t start,
                std::size_t rows, LineVector<T>& gathered, BlockX<T>& X, std::size_t n_out = 0, NextRows next = {}) {
    if (data.sparse) {
        gather_sparse_rows(data.X_csr, picked, start, rows, X.sparse);
    } else if (picked && next.rows) {
        gather_rows(data, n_in, n_out, picked, rows, gathered.data(), next);
        X.dense = gathered.data();
    } else if (picked) {  // rows too many to prefetch a step ahead: a pass of its own, shared between threads
        T* to = gathered.data();
        parallel_pass(rows, n_in, [&](std::size_t r0, std::size_t r1) {
            gather_rows(data, n_in, n_out, picked + r0, r1 - r0, to + r0 * n_in, NextRows{});
        });
        X.dense = to;
    } else {
        X.dense = data.X + start * n_in;
    }
}

// The first layer's products on sparse rows: W <- beta W + alpha dZ^T X and b <- bias_beta b + bias_alpha
// sum_rows dZ (the dense layers' gradient_product, fused step and sums in one). W in the layer's own layout
// unless said otherwise.
template <class T>
void sparse_layer_product(T* W, T* b, const T* dZ, const SparseRows<T>& X, std::size_t n_out,
                          T alpha, T beta, T bias_alpha, T bias_beta, WeightLayout layout = WeightLayout::Rows) {
    sparse_gradient_product(W, layout, dZ, X, n_out, alpha, beta);
    blas::sum_rows(int(X.rows()), int(n_out), bias_alpha, dZ, int(n_out), bias_beta, b);
}

// A whole-data pass on sparse X with several first-layer units reads W[0] through a transposed copy (n_in x n_1):
// each stored entry of X then meets its n_1 weights side by side (see WeightLayout). Empty otherwise. Minibatch
// steps keep W[0] as it is: a copy per step would cost more than the step.
template <class T>
std::vector<T> first_layer_transposed(const Shape& shape, const Params<T>& params, const Dataset<T>& data) {
    const std::size_t n_out = shape.sizes[1], n_in = shape.n_in();
    if (!data.sparse || n_out == 1) return {};
    std::vector<T> W_t(n_in * n_out);
    for (std::size_t o = 0; o < n_out; ++o)
        for (std::size_t j = 0; j < n_in; ++j) W_t[j * n_out + o] = params.W[0][o * n_in + j];
    return W_t;
}

// Passes on should_stop's answer at most every 10 ms: asking means taking the GIL.
class StopCheck {
public:
    explicit StopCheck(const std::function<bool()>& should_stop)
        : should_stop_(should_stop), last_(std::chrono::steady_clock::now()) {}

    bool operator()() {
        if (!should_stop_ || std::chrono::steady_clock::now() - last_ < std::chrono::milliseconds(10)) return false;
        last_ = std::chrono::steady_clock::now();
        return should_stop_();
    }

private:
    const std::function<bool()>& should_stop_;
    std::chrono::steady_clock::time_point last_;
};

// to (cols x rows) <- from (rows x cols)^T, both row-major, in tiles of 8 x 8 that keep the strided writes in a few
// cache lines at a time.
template <class T>
void transpose(const T* from, std::size_t rows, std::size_t cols, T* to) {
    constexpr std::size_t kTile = 8;
    for (std::size_t i0 = 0; i0 < rows; i0 += kTile)
        for (std::size_t j0 = 0; j0 < cols; j0 += kTile)
            for (std::size_t i = i0; i < std::min(rows, i0 + kTile); ++i)
                for (std::size_t j = j0; j < std::min(cols, j0 + kTile); ++j) to[j * rows + i] = from[i * cols + j];
}

// total += ||scale_l W_l||^2 layer by layer, for a fused SGD step's weights (true W = scale W), each layer read where
// the step keeps it: its transposed copy W_t[l] when it has one, else W[l].
template <class T>
void add_scaled_weight_norms(double& total, const Shape& shape, const Params<T>& params,
                             const std::vector<double>& scale, const T* const* W_t) {
    for (std::size_t l = 0; l < shape.n_layers(); ++l)
        total += scale[l] * scale[l] * sum_squares(W_t[l] ? W_t[l] : params.W[l], shape.sizes[l + 1] * shape.sizes[l]);
}

// A float32 epoch of plain SGD trains its small dense layers on a transposed copy of W (n_in x n_out), made at
// the start and copied back at the end: OpenBLAS's small-matrix kernels run the forward product A W^T in about
// half the time when W^T is stored (A W^T as a plain product), and the weight gradient just as fast into W^T
// (A_prev^T dZ); only the input gradient dZ W becomes the slower kind, and it is the smallest of the three
// (see benchmarks/README.md, "Small networks"). Larger layers go through OpenBLAS's packed path, where the layout
// makes no difference, and keep W as it is; so do float64 (its results stay as they were) and sparse first layers.
template <class T>
class TransposedWeights {
public:
    // every_layer: all layers of at least kSmallMinWidth units transposed (the small-layer kernels' step, SmallStep).
    TransposedWeights(const Shape& shape, Params<T>& params, std::size_t batch, bool sparse_X, bool every_layer)
        : shape_(shape), params_(params), copies_(shape.n_layers()), W_t_(shape.n_layers(), nullptr) {
        if (!std::is_same_v<T, float>) return;
        for (std::size_t l = 0; l < shape.n_layers(); ++l) {
            const std::size_t n_in = shape.sizes[l], n_out = shape.sizes[l + 1];
            const bool transposed = every_layer ? n_out >= kSmallMinWidth : train_transposed(batch, n_in, n_out);
            if ((l == 0 && sparse_X) || !transposed) continue;
            copies_[l].resize(n_in * n_out);
            W_t_[l] = copies_[l].data();
            transpose(params.W[l], n_out, n_in, W_t_[l]);
        }
    }

    // Per layer: its transposed copy, or null where the layer trains on W itself.
    T* const* layers() const { return W_t_.data(); }

    // W <- its transposed copy, for every layer that has one.
    void copy_back() {
        for (std::size_t l = 0; l < shape_.n_layers(); ++l)
            if (W_t_[l]) transpose(W_t_[l], shape_.sizes[l], shape_.sizes[l + 1], params_.W[l]);
    }

private:
    const Shape& shape_;
    Params<T>& params_;
    std::vector<std::vector<T>> copies_;
    std::vector<T*> W_t_;
};

// A float32 plain-SGD step of a network whose layers are all at most kSmallWidth units wide, on dense X, where the
// machine runs the small-layer kernels (small_dense.hpp): the layers of at least kSmallMinWidth units (the first
// among them) trained transposed (W_t, n_in x n_out) in the kernels, the batch's rows of X read where they lie (no
// gather), bias + activation in the forward product, the activation's derivative in the input gradient, the bias
// gradient and the fused L2 step in the weight product, and the next step's rows prefetched during the first
// layer's weight product; a softmax output layer narrower than that in kernels of its own on W, the loss fused into
// its forward product; other narrower layers on W through OpenBLAS, as in the general step (benchmarks/README.md,
// "Small networks").
template <class T>
class SmallStep {
public:
    // A layer of at least a register's width of units goes through the kernels; a narrower hidden one, or a narrower
    // output layer of a loss other than softmax, through OpenBLAS on W itself.
    static bool small_layer(std::size_t n_out) { return n_out >= kSmallMinWidth && n_out <= kSmallWidth; }

    static bool fits(const Shape& shape, bool sparse_X) {
        if (!std::is_same_v<T, float> || sparse_X || !small_kernels_available()) return false;
        if (shape.n_layers() > 1 && shape.act != Activation::Relu && shape.act != Activation::Identity) return false;
        if (!small_layer(shape.sizes[1])) return false;  // the first layer reads the batch's rows where they lie
        for (std::size_t l = 2; l < shape.sizes.size(); ++l)
            if (shape.sizes[l] > kSmallWidth) return false;
        return true;
    }

    // A softmax output layer narrower than a register goes through the kernels too, on W itself, its loss fused into
    // its forward product (small_forward_softmax).
    static bool narrow_softmax(const Shape& shape) {
        return shape.loss == Loss::Softmax && shape.n_layers() > 1 && shape.n_out() < kSmallMinWidth &&
               shape.n_out() <= small_lanes<T>;
    }

    SmallStep(const Shape& shape, std::size_t batch, Workspace<T>& ws)
        : shape_(shape), ws_(ws), rows_(shape.n_layers(), std::vector<const T*>(batch)), ahead_(batch),
          narrow_softmax_(narrow_softmax(shape)),
          ld_((batch + small_lanes<T> - 1) / small_lanes<T> * small_lanes<T>) {
        std::size_t most = 0;
        for (std::size_t l = 1; l < shape.n_layers(); ++l) {
            most = std::max(most, shape.sizes[l] * shape.sizes[l + 1]);
            for (std::size_t r = 0; r < batch; ++r) rows_[l][r] = ws.out[l - 1].data() + r * shape.sizes[l];
        }
        W_.resize(most);
        if (narrow_softmax_) {
            A_t_.resize(shape.sizes[shape.n_layers() - 1] * ld_);
            dZ_t_.resize(shape.n_out() * ld_);
        }
    }

    // One step on records picked[0 .. rows-1] (or start .. start+rows-1), prefetching the next step's.
    LossStats operator()(Params<T>& params, const Dataset<T>& data, std::vector<double>& scale, T* const* W_t,
                         const std::int64_t* picked, std::size_t start, std::size_t rows, const NextRows& next, T lr,
                         T lam_over_m, double* weight_norms) {
        const Shape& shape = shape_;
        const std::size_t L = shape.n_layers(), n_in = shape.n_in();
        for (std::size_t r = 0; r < rows; ++r)
            rows_[0][r] = data.X + (picked ? std::size_t(picked[r]) : start + r) * n_in;
        for (std::size_t i = 0; i < next.rows; ++i) prefetch_targets(data, shape.n_out(), std::size_t(next.picked[i]));
        LossStats stats;
        for (std::size_t l = 0; l < L; ++l) {
            const Activation act = l + 1 == L ? Activation::Identity : shape.act;
            if (l + 1 == L && narrow_softmax_) {
                small_transpose(ws_.out[l - 1].data(), rows, shape.sizes[l], ld_, A_t_.data());
                stats = small_forward_softmax(A_t_.data(), rows, ld_, shape.sizes[l], params.W[l], shape.n_out(),
                                              T(scale[l]), params.b[l], targets_of(data, picked, start), dZ_t_.data());
            } else if (W_t[l])
                small_forward(rows_[l].data(), rows, shape.sizes[l], W_t[l], shape.sizes[l + 1], T(scale[l]),
                              params.b[l], act, ws_.out[l].data());
            else
                dense_forward(ws_.out[l - 1].data(), rows, shape.sizes[l], params.W[l], T(scale[l]), params.b[l],
                              shape.sizes[l + 1], act, ws_.out[l].data());
        }
        if (!narrow_softmax_)
            stats = inplace_loss_gradient(ws_.out.back().data(), rows, shape.n_out(), shape.loss,
                                          targets_of(data, picked, start));
        // The next step's rows, asked for during the first layer's weight step, the step's last and longest product.
        for (std::size_t i = 0; i < next.rows; ++i) ahead_[i] = data.X + std::size_t(next.picked[i]) * n_in;
        const RowsAhead ahead{ahead_.data(), next.rows, n_in * sizeof(T)};
        if (weight_norms) add_scaled_weight_norms(*weight_norms, shape, params, scale, W_t);
        for (std::size_t l = L; l-- > 0;) {
            const std::size_t n_out = shape.sizes[l + 1], n_below = shape.sizes[l];
            const T* dZ = l + 1 == L ? ws_.out[l].data() : ws_.grad[l].data();
            if (l + 1 == L && narrow_softmax_) {  // on W (n_out x n_below), from dL/dZ transposed
                small_backward_input_narrow(dZ_t_.data(), ld_, rows, n_out, params.W[l], n_below, T(scale[l]),
                                            ws_.out[l - 1].data(), shape.act, ws_.grad[l - 1].data());
                const StepCoefficients<T> c = fused_step_coefficients(scale[l], rows, lr, lam_over_m);
                small_weight_step_narrow(dZ_t_.data(), ld_, ws_.out[l - 1].data(), rows, n_below, n_out, c.alpha,
                                         c.beta, -lr / T(rows), params.W[l], params.b[l]);
                continue;
            }
            if (!W_t[l]) {  // a narrow layer, on W (n_out x n_below); never the first
                dense_backward_input(dZ, rows, n_out, params.W[l], T(scale[l]), n_below, ws_.grad[l - 1].data());
                inplace_activation_backward(ws_.grad[l - 1].data(), ws_.out[l - 1].data(), rows * n_below, shape.act);
                inplace_fused_l2_step(params.W[l], scale[l], params.b[l], dZ, ws_.out[l - 1].data(),
                                      rows, n_out, n_below, lr, lam_over_m);
                continue;
            }
            if (l > 0) {  // the input gradient first, with the old weights, read as W (n_out x n_below)
                transpose(W_t[l], n_below, n_out, W_.data());
                small_backward_input(dZ, rows, n_out, W_.data(), n_below, T(scale[l]), ws_.out[l - 1].data(),
                                     shape.act, ws_.grad[l - 1].data());
            }
            const StepCoefficients<T> c = fused_step_coefficients(scale[l], rows, lr, lam_over_m);
            small_weight_step(rows_[l].data(), dZ, rows, n_below, n_out, c.alpha, c.beta, -lr / T(rows), W_t[l],
                              params.b[l], l == 0 ? ahead : RowsAhead{});
        }
        return stats;
    }

private:
    const Shape& shape_;
    Workspace<T>& ws_;
    std::vector<std::vector<const T*>> rows_;  // rows_[l][r]: row r of layer l's input
    std::vector<const void*> ahead_;           // the next step's rows of X
    std::vector<T> W_;                         // a layer's W (n_out x n_in), for its input gradient
    const bool narrow_softmax_;
    const std::size_t ld_;                     // narrow_softmax_: the row length of A_t_ and dZ_t_ (batch, padded)
    LineVector<T> A_t_;                        // narrow_softmax_: the output layer's input transposed (n_in x ld_)
    LineVector<T> dZ_t_;                       // narrow_softmax_: its logits, then dL/dZ, transposed (n_out x ld_)
};

// to (cols x rows, rows ld_to apart) <- from (rows x cols)^T for double, in blocks of 4 x 4 transposed in registers
// (four loads, eight shuffles, four stores), the edges entry by entry: the copies ForwardCopies refreshes after every
// step, at about half the time of transpose()'s (64 x 64: 1.4 us against 3.1 us a refresh; the same values, only
// moved). A block of W's rows goes into the same columns of the copy.
L2FAST_VECTOR_CLONES void transpose_doubles(const double* from, std::size_t rows, std::size_t cols, double* to,
                                            std::size_t ld_to) {
    typedef std::int64_t Lanes __attribute__((vector_size(32)));
    std::size_t i0 = 0;
    for (; i0 + 4 <= rows; i0 += 4) {
        std::size_t j0 = 0;
        for (; j0 + 4 <= cols; j0 += 4) {
            const double* f = from + i0 * cols + j0;
            const DoubleVec r0 = load<DoubleVec>(f), r1 = load<DoubleVec>(f + cols), r2 = load<DoubleVec>(f + 2 * cols),
                            r3 = load<DoubleVec>(f + 3 * cols);
            // pairs of rows interleaved, then their halves put together: column c of the block in lane order
            const DoubleVec even01 = __builtin_shuffle(r0, r1, Lanes{0, 4, 2, 6}),
                            odd01 = __builtin_shuffle(r0, r1, Lanes{1, 5, 3, 7}),
                            even23 = __builtin_shuffle(r2, r3, Lanes{0, 4, 2, 6}),
                            odd23 = __builtin_shuffle(r2, r3, Lanes{1, 5, 3, 7});
            double* t = to + j0 * ld_to + i0;
            store(t, __builtin_shuffle(even01, even23, Lanes{0, 1, 4, 5}));
            store(t + ld_to, __builtin_shuffle(odd01, odd23, Lanes{0, 1, 4, 5}));
            store(t + 2 * ld_to, __builtin_shuffle(even01, even23, Lanes{2, 3, 6, 7}));
            store(t + 3 * ld_to, __builtin_shuffle(odd01, odd23, Lanes{2, 3, 6, 7}));
        }
        for (; j0 < cols; ++j0)
            for (std::size_t i = i0; i < i0 + 4; ++i) to[j0 * ld_to + i] = from[i * cols + j0];
    }
    for (; i0 < rows; ++i0)
        for (std::size_t j = 0; j < cols; ++j) to[j * ld_to + i0] = from[i0 * cols + j];
}

// The buffers of an epoch with an optimizer (momentum, Adam): per share of a step (OptimizerStep), its Workspace and
// the layers' gradient sums. A thread keeps the last ones it used, when at most kKeptBytes, for its next call on the
// same shape: a scikit-learn drop-in's epoch on digits is 9 steps, and allocating and zeroing its 360 KB afresh (page
// faults included) cost a few percent of it. A call that finds the kept ones in use (a should_stop that trains another
// network on this thread) makes its own.
template <class T>
class StepBuffers {
public:
    StepBuffers(const Shape& shape, std::size_t rows, bool gather, std::size_t shares) {
        Kept& kept = kept_buffers();
        std::size_t values = gather ? rows * shape.n_in() : 0;
        for (std::size_t l = 0; l < shape.n_layers(); ++l)
            values += 2 * rows * shape.sizes[l + 1] + (shape.sizes[l] + 1) * shape.sizes[l + 1];
        if (kept.in_use || shares * values * sizeof(T) > kKeptBytes) {
            own_ = std::make_unique<Buffers>(shape, rows, gather, shares);
            buffers_ = own_.get();
            return;
        }
        if (!kept.buffers || kept.sizes != shape.sizes || kept.rows != rows || kept.gather != gather ||
            kept.shares != shares) {
            kept.buffers.reset();
            kept.buffers = std::make_unique<Buffers>(shape, rows, gather, shares);
            kept.sizes = shape.sizes;
            kept.rows = rows;
            kept.gather = gather;
            kept.shares = shares;
        }
        kept.in_use = true;
        kept_ = &kept;
        buffers_ = kept.buffers.get();
    }
    StepBuffers(const StepBuffers&) = delete;
    StepBuffers& operator=(const StepBuffers&) = delete;
    ~StepBuffers() {
        if (kept_) kept_->in_use = false;
    }

    Workspace<T>& workspace(std::size_t share) { return buffers_->ws[share]; }
    Params<T>& gradients(std::size_t share) { return buffers_->grad[share]; }

private:
    static constexpr std::size_t kKeptBytes = std::size_t(2) << 20;

    struct Buffers {
        std::vector<Workspace<T>> ws;
        std::vector<LineVector<T>> store;
        std::vector<Params<T>> grad;  // grad[s].W[l], grad[s].b[l]: share s's sums for layer l, in store

        Buffers(const Shape& shape, std::size_t rows, bool gather, std::size_t shares) : grad(shares) {
            for (std::size_t s = 0; s < shares; ++s) {
                ws.emplace_back(shape, rows, gather, true);
                for (std::size_t l = 0; l < shape.n_layers(); ++l) {
                    store.emplace_back(shape.sizes[l + 1] * shape.sizes[l]);
                    store.emplace_back(shape.sizes[l + 1]);
                }
            }
            for (std::size_t s = 0, i = 0; s < shares; ++s)
                for (std::size_t l = 0; l < shape.n_layers(); ++l, i += 2) {
                    grad[s].W.push_back(store[i].data());
                    grad[s].b.push_back(store[i + 1].data());
                }
        }
    };

    struct Kept {
        std::vector<std::size_t> sizes;
        std::size_t rows = 0, shares = 0;
        bool gather = false;
        bool in_use = false;
        std::unique_ptr<Buffers> buffers;
    };

    static Kept& kept_buffers() {
        thread_local Kept kept;
        return kept;
    }

    std::unique_ptr<Buffers> own_;
    Kept* kept_ = nullptr;
    Buffers* buffers_ = nullptr;
};

// A float64 epoch with an optimizer (momentum, Adam: the scikit-learn drop-ins' MLPs) runs the forward product of
// each small layer, A W^T, on a transposed copy W_t (n_in x n_out) refreshed after each update: A W^T packs in
// OpenBLAS where A W_t takes its small-matrix kernel (64-64-10 at batch 200, one thread: the two forward products
// 27 us against 40 us a step, the refresh 3 us, the epoch 10-15 % faster). W stays the master copy: the input
// gradient dZ W (the fast kind as it is), the weight gradient, the optimizer's update and its sum of squares run on
// W and its state as before, and only the forward products' last bits may differ (each kernel sums an entry's k in
// order, but not every kernel in the same order: the 64 -> 10 layer's differ). float32 keeps TransposedWeights.
template <class T>
class ForwardCopies {
public:
    ForwardCopies(const Shape& shape, const Params<T>& params, std::size_t batch, bool sparse_X)
        : shape_(shape), params_(params), copies_(shape.n_layers()), W_t_(shape.n_layers(), nullptr) {
        if (!std::is_same_v<T, double>) return;
        for (std::size_t l = 0; l < shape.n_layers(); ++l) {
            if ((l == 0 && sparse_X) || !forward_on_copy(batch, shape.sizes[l], shape.sizes[l + 1])) continue;
            copies_[l].resize(shape.sizes[l] * shape.sizes[l + 1]);
            W_t_[l] = copies_[l].data();
            refresh(l, 0, shape.sizes[l + 1]);
        }
    }

    // Per layer: the copy its forward product reads, or null.
    T* const* layers() const { return W_t_.data(); }

    // The copy's columns first..last-1 <- rows first..last-1 of W[l] transposed, after they have changed.
    void refresh(std::size_t l, std::size_t first, std::size_t last) {
        const std::size_t n_in = shape_.sizes[l], n_out = shape_.sizes[l + 1];
        if constexpr (std::is_same_v<T, double>)  // only float64 epochs have copies
            if (W_t_[l]) transpose_doubles(params_.W[l] + first * n_in, last - first, n_in, W_t_[l] + first, n_out);
    }

private:
    const Shape& shape_;
    const Params<T>& params_;
    std::vector<LineVector<T>> copies_;
    std::vector<T*> W_t_;
};

// The most rows a share of a step takes: half a batch, or a whole step too short to cut.
std::size_t share_capacity(std::size_t batch) {
    return std::max((batch + 1) / 2, std::min(batch, 2 * kMinShareRows - 1));
}

// Whether OpenBLAS runs every product of a share of a `batch`-record step on the thread that asks for it, whatever its
// own count: it gives a GEMM of m n k multiply-adds min(threads, m n k / 262144) threads and a GEMV of fewer than
// 2304 x 4 entries one.
bool share_products_unthreaded(const std::vector<std::size_t>& sizes, std::size_t batch) {
    constexpr double kOneThreadGemm = 2.0 * 262144.0, kOneThreadGemv = 2304.0 * 4.0;
    const double rows = double(share_capacity(batch));
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
        const double n_in = double(sizes[l]), n_out = double(sizes[l + 1]);
        if (rows * n_in * n_out >= kOneThreadGemm) return false;
        if ((n_in == 1 || n_out == 1) && rows * std::max(n_in, n_out) >= kOneThreadGemv) return false;
    }
    return true;
}

// The threads two shares of `batch` records run on: share_threads when given (the caller runs OpenBLAS on one thread
// for the call, as the cpu backend does), else OpenBLAS's count; at most two. One where OpenBLAS would thread a share's
// products itself: two shares would then call on its threads at once.
std::size_t share_threads_for(const Shape& shape, std::size_t batch, std::size_t share_threads) {
    const std::size_t blas_threads = std::size_t(std::max(blas::num_threads(), 1));
    const std::size_t threads = std::min<std::size_t>(share_threads ? share_threads : blas_threads, 2);
    return blas_threads > 1 && !share_products_unthreaded(shape.sizes, batch) ? 1 : threads;
}

// A step of an epoch with an optimizer (momentum, Adam: the scikit-learn drop-ins' MLPs; plain SGD where
// sgd_step_shares says so): each layer's mean gradient into a buffer, then one fused pass of the optimizer over W, b
// and their state (inplace_optimizer_step), from the last layer down. Where optimizer_step_shares allows it, a step of
// at least 2 kMinShareRows records is cut in two shares of its rows, each with a workspace and gradient sums of its own
// (the gather, forward pass, loss, backward pass and gradient products of its rows), run side by side when the call
// has two threads (share_threads_for); the shares' sums are added in share order before the update, so the bits
// depend on the step's size alone, never on the threads.
template <class T>
class OptimizerStep {
public:
    OptimizerStep(const Shape& shape, Params<T>& params, OptimizerRun<T>& run, std::size_t batch, bool gather,
                  bool sparse_X, std::size_t share_threads)
        : shape_(shape),
          params_(params),
          run_(run),
          two_shares_(!sparse_X && optimizer_step_shares(shape.sizes, batch)),
          buffers_(shape, two_shares_ ? share_capacity(batch) : batch, gather, two_shares_ ? 2 : 1),
          copies_(shape, params, batch, sparse_X),
          threads_(share_threads_for(shape, batch, share_threads)) {}

    // One step on `rows` records (picked, or start.. in turn), with decay lam/m; norms as in train_epoch.
    LossStats operator()(const Dataset<T>& data, const std::int64_t* picked, std::size_t start, std::size_t rows,
                         const NextRows& next, T lr, T decay, double* norms) {
        const std::size_t shares = two_shares_ && rows >= 2 * kMinShareRows ? 2 : 1;
        ++run_.step;
        LossStats stats[2];
        const auto share = [&](std::size_t s) {
            const std::size_t begin = rows * s / shares, end = rows * (s + 1) / shares;
            const std::size_t ahead_begin = next.rows * s / shares, ahead_end = next.rows * (s + 1) / shares;
            const NextRows ahead = {next.picked ? next.picked + ahead_begin : nullptr, ahead_end - ahead_begin};
            stats[s] = share_sums(data, picked ? picked + begin : nullptr, start + begin, end - begin, rows, shares,
                                  ahead, s);
        };
        if (shares == 1)
            share(0);
        else
            parallel_for(shares, threads_, 1, [&](std::size_t first, std::size_t last) {
                for (std::size_t s = first; s < last; ++s) share(s);
            }, kEpochsPoll);
        for (std::size_t s = 1; s < shares; ++s) stats[0] += stats[s];
        // The update in two parts too (each layer's first and second half of W's rows), whatever this step's
        // shares: it runs on the same threads, and the weights' sum of squares is the parts' sums added in order.
        const std::size_t parts = two_shares_ ? 2 : 1;
        double part_norms[2] = {0.0, 0.0};
        if (parts == 1) {
            update(rows, shares, 0, 1, lr, decay, norms);
        } else {
            parallel_for(parts, threads_, 1, [&](std::size_t first, std::size_t last) {
                for (std::size_t p = first; p < last; ++p)
                    update(rows, shares, p, parts, lr, decay, norms ? &part_norms[p] : nullptr);
            }, kEpochsPoll);
            if (norms)
                for (std::size_t p = 0; p < parts; ++p) *norms += part_norms[p];
        }
        return stats[0];
    }

private:
    // Share s of a step of `rows` records (`shares` of them): its `count` records' loss, and into its buffers
    // dL/dW and dL/db summed over them (divided by rows when the step is one share: the mean itself).
    LossStats share_sums(const Dataset<T>& data, const std::int64_t* picked, std::size_t start, std::size_t count,
                         std::size_t rows, std::size_t shares, const NextRows& next, std::size_t s) {
        Workspace<T>& ws = buffers_.workspace(s);
        Params<T>& grad = buffers_.gradients(s);
        const std::size_t n_in = shape_.n_in();
        BlockX<T> block;
        take_block(data, n_in, picked, start, count, ws.x, block, shape_.n_out(), next);
        forward_block(shape_, params_, nullptr, block, count, ws, copies_.layers());
        prefetch_rows(data.X, n_in, next, 0, next.rows / 2);
        const LossStats stats = inplace_loss_gradient(ws.out.back().data(), count, shape_.n_out(), shape_.loss,
                                                      targets_of(data, picked, start));
        prefetch_rows(data.X, n_in, next, next.rows / 2, next.rows);
        const T mean = T(1) / T(rows);
        backward_block(shape_, params_, nullptr, block, count, ws, [&](std::size_t l, const T* dZ, const T* A_prev) {
            const std::size_t n_out = shape_.sizes[l + 1];
            if (l == 0 && block.is_sparse())
                sparse_layer_product(grad.W[0], grad.b[0], dZ, block.sparse, n_out, mean, T(0), mean, T(0));
            else if (shares == 1)
                mean_gradient(grad.W[l], grad.b[l], dZ, A_prev, count, n_out, shape_.sizes[l]);
            else
                sum_gradient(grad.W[l], grad.b[l], dZ, A_prev, count, n_out, shape_.sizes[l]);
        });
        return stats;
    }

    // Part p of `parts` of the update: of each layer, last first, the rows of W (and entries of b) in its part, the
    // shares' sums into share 0's buffers as the mean, then the optimizer's pass over them and the forward copy's
    // columns. inplace_optimizer_step stays on its thread: the parts run side by side (share_threads_for) only with
    // OpenBLAS's count at one, which it takes as its own, or on layers below share_products_unthreaded's bounds, far
    // fewer weights than it splits.
    void update(std::size_t rows, std::size_t shares, std::size_t p, std::size_t parts, T lr, T decay, double* norms) {
        Params<T>& grad = buffers_.gradients(0);
        const T mean = T(1) / T(rows);
        for (std::size_t l = shape_.n_layers(); l-- > 0;) {
            const std::size_t n_in = shape_.sizes[l], n_out = shape_.sizes[l + 1];
            const std::size_t first = n_out * p / parts, last = n_out * (p + 1) / parts;
            const std::size_t w0 = first * n_in, n_w = (last - first) * n_in, n_b = last - first;
            if (n_b == 0) continue;
            if (shares == 2) {
                const Params<T>& other = buffers_.gradients(1);
                add_mean(grad.W[l] + w0, other.W[l] + w0, n_w, mean);
                add_mean(grad.b[l] + first, other.b[l] + first, n_b, mean);
            }
            run_.apply(params_, l, true, w0, grad.W[l] + w0, n_w, lr, decay, norms);
            run_.apply(params_, l, false, first, grad.b[l] + first, n_b, lr, T(0));
            copies_.refresh(l, first, last);
        }
    }

    // sums <- (sums + other) mean.
    static void add_mean(T* sums, const T* other, std::size_t n, T mean) {
        for (std::size_t i = 0; i < n; ++i) sums[i] = (sums[i] + other[i]) * mean;
    }

    const Shape& shape_;
    Params<T>& params_;
    OptimizerRun<T>& run_;
    const bool two_shares_;
    StepBuffers<T> buffers_;
    ForwardCopies<T> copies_;
    const std::size_t threads_;
};

// The steps of an epoch, as the epochs cut in parts of their own take them (UnitSplitEpoch, PartialOutputEpoch): n
// records (order's, or in turn when null) in steps of batch, at lr, each decayed by lam_over_m, or by short_lam_over_m
// when given for a step of fewer than full_batch records; with_norms as train_epoch's.
template <class T>
struct EpochSteps {
    const Dataset<T>& data;
    const std::int64_t* order;
    std::size_t n, batch, full_batch;
    T lr, lam_over_m;
    std::optional<T> short_lam_over_m;
    bool with_norms;

    std::size_t count() const { return (n + batch - 1) / batch; }
    std::size_t rows_of(std::size_t s) const { return std::min(batch, n - s * batch); }
    const std::int64_t* picked_of(std::size_t s) const { return order ? order + s * batch : nullptr; }
    // Step s's rows of X when the records come in turn.
    const T* rows_in_turn(std::size_t s, std::size_t n_in) const { return data.X + s * batch * n_in; }
    // The targets of step s's records.
    Targets<T> targets(std::size_t s) const { return targets_of(data, picked_of(s), s * batch); }
    // The decay of a step of `rows` records.
    T decay_of(std::size_t rows) const {
        return rows < full_batch && short_lam_over_m ? *short_lam_over_m : lam_over_m;
    }
};

// An epoch of a network with one hidden layer (split_step_fits), OpenBLAS on one thread, plain SGD or (run given) an
// optimizer: each step in two parts by the hidden layer's units, part p owning the units
// [n1 p / 2, n1 (p + 1) / 2): their rows of W[0] and b[0], their columns of A1 and dZ1, and the same columns of W[1]
// (its inputs). OpenBLAS's own two threads cut each of a step's products afresh and wait for each other inside it; here
// each part's products run whole on its thread, its half of W[0] (784-256-10: 400 KB) and of an optimizer's state stay
// in its core's cache from step to step, and a step has two hand-offs (parallel_steps):
//  F  the part's columns of A1 = act(X_b W[0]^T + b[0]); then, on the thread that closes the phase, the output layer
//     (Z2 = A1 W[1]^T + b[1], narrow: split_step_fits), its loss, and b[1]'s step (plain SGD) or gradient;
//  B  the part's columns of dZ1 = (dZ2 W[1]) * act'(A1), its columns of W[1] and rows of W[0] stepped (plain SGD: the
//     L2 step fused into the products, as inplace_fused_l2_step; an optimizer: their mean gradients into buffers, then
//     its pass over the part's rows of W[0] and b[0], and on the thread that closes the phase over W[1] and b[1], whose
//     old columns every part reads first), and its half of the next step's rows gathered, into the other of two batch
//     buffers (the other part may still read this step's).
// The parts are the same on one thread (one after the other) as on two, and each runs its products on one OpenBLAS
// thread, so the bits never depend on the thread count. They are not the general step's: OpenBLAS picks its
// small-matrix and direct kernels by a product's shape, and a part's half of a product may fall on the other side of
// that choice than the whole (200-200-10 at batch 32). The steps go in runs of about kLinearRun, stop() asked between
// them, as linear_sgd_epoch's are.
template <class T>
class UnitSplitEpoch {
public:
    UnitSplitEpoch(const Shape& shape, Params<T>& params, const EpochSteps<T>& epoch, OptimizerRun<T>* run = nullptr)
        : shape_(shape), params_(params), epoch_(epoch), run_(run), n_in_(shape.n_in()), n1_(shape.sizes[1]),
          n2_(shape.sizes[2]), steps_(epoch.count()), A1_(epoch.batch * n1_), dZ1_(epoch.batch * n1_),
          Z2_(epoch.batch * n2_) {
        const std::size_t batch = epoch.batch;
        if (epoch_.order)
            for (auto& x : x_) x.resize(batch * n_in_);
        if (run_) {  // the mean gradients, for the optimizer's pass
            gW0_.resize(n1_ * n_in_);
            gW1_.resize(n2_ * n1_);
            gb0_.resize(n1_);
            gb1_.resize(n2_);
            grad_.W = {gW0_.data(), gW1_.data()};
            grad_.b = {gb0_.data(), gb1_.data()};
        } else {  // plain SGD trains W[1] transposed where the general step would
            transposed_.emplace(shape, params, batch, false, false);
            W1_t_ = transposed_->layers()[1];
        }
    }

    EpochResult operator()(std::size_t threads, const std::function<bool()>& stop) {
        EpochResult result;
        // phase 0 gathers step 0's rows; then step s is phases 2 s + 1 (F) and 2 s + 2 (B)
        const std::size_t phases = 1 + 2 * steps_;
        for (std::size_t done = 0; done < phases;) {
            const auto run_start = std::chrono::steady_clock::now();
            done += parallel_steps(
                phases - done, threads, [](std::size_t) { return std::size_t(2); },
                [&](std::size_t t, std::size_t p) { part(done + t, p); },
                [&](std::size_t t) {
                    const std::size_t phase = done + t;
                    if (phase % 2 == 1) {
                        close_forward((phase - 1) / 2);
                        return true;
                    }
                    if (phase > 0 && run_) close_backward();
                    // a run ends only after a step's B (or the first gather)
                    return phase == 0 || std::chrono::steady_clock::now() - run_start < kLinearRun;
                });
            if (done < phases && stop && stop()) {
                result.stopped = true;
                break;
            }
        }
        if (run_ && !result.stopped) close_backward();  // parallel_steps calls no after() for a run's last step
        if (transposed_) transposed_->copy_back();
        for (std::size_t l = 0; l < 2; ++l)
            inplace_apply_scale(params_.W[l], scale_[l], shape_.sizes[l + 1] * shape_.sizes[l]);
        result.stats = tally_.stats;
        result.steps = tally_.steps;
        result.weight_norms = tally_.norms;
        return result;
    }

private:
    // Step s's batch: its gathered rows, or X's own rows in turn.
    const T* X_of(std::size_t s) const { return epoch_.order ? x_[s % 2].data() : epoch_.rows_in_turn(s, n_in_); }
    std::size_t unit_begin(std::size_t p) const { return n1_ * p / 2; }

    void part(std::size_t phase, std::size_t p) {
        if (phase == 0)
            gather(0, p);
        else if (phase % 2 == 1)
            forward((phase - 1) / 2, p);
        else
            backward((phase - 2) / 2, p);
    }

    // Part p of step s's rows into its batch buffer, their targets asked for too (the loss reads them next).
    void gather(std::size_t s, std::size_t p) {
        if (!epoch_.order || s >= steps_) return;
        const std::size_t rows = epoch_.rows_of(s), r0 = rows * p / 2, count = rows * (p + 1) / 2 - r0;
        const std::int64_t* picked = epoch_.picked_of(s) + r0;
        gather_rows(epoch_.data, n_in_, n2_, picked, count, x_[s % 2].data() + r0 * n_in_, NextRows{picked, count});
    }

    void forward(std::size_t s, std::size_t p) {
        const std::size_t rows = epoch_.rows_of(s), u0 = unit_begin(p), units = unit_begin(p + 1) - u0;
        if (epoch_.with_norms) {  // the weights this step's loss is computed with, before its update
            norms_[p].W0 = sum_squares(params_.W[0] + u0 * n_in_, units * n_in_);
            if (W1_t_) norms_[p].W1 = sum_squares(W1_t_ + u0 * n2_, units * n2_);
        }
        T* A1 = A1_.data() + u0;
        blas::gemm(blas::Op::N, blas::Op::T, int(rows), int(units), int(n_in_), T(scale_[0]), X_of(s), int(n_in_),
                   params_.W[0] + u0 * n_in_, int(n_in_), T(0), A1, int(n1_));
        for (std::size_t r = 0; r < rows; ++r)
            inplace_bias_activation(A1 + r * n1_, params_.b[0] + u0, 1, units, shape_.act);
    }

    // After both parts of F: the output layer, its loss and bias step, and the step's coefficients.
    void close_forward(std::size_t s) {
        const std::size_t rows = epoch_.rows_of(s);
        // each layer's ||scale W||^2: W[0]'s (and a transposed W[1]'s) the parts' halves added
        if (epoch_.with_norms) {
            const double W1 = W1_t_ ? norms_[0].W1 + norms_[1].W1 : sum_squares(params_.W[1], n2_ * n1_);
            tally_.norms += scale_[0] * scale_[0] * (norms_[0].W0 + norms_[1].W0);
            tally_.norms += scale_[1] * scale_[1] * W1;
        }
        T* Z2 = Z2_.data();
        if (W1_t_) {
            transposed_forward(A1_.data(), rows, n1_, W1_t_, n2_, T(scale_[1]), Z2);
            inplace_bias_activation(Z2, params_.b[1], rows, n2_, Activation::Identity);
        } else {
            dense_forward(A1_.data(), rows, n1_, params_.W[1], T(scale_[1]), params_.b[1], n2_, Activation::Identity,
                          Z2);
        }
        tally_.stats += inplace_loss_gradient(Z2, rows, n2_, shape_.loss, epoch_.targets(s));
        decay_ = epoch_.decay_of(rows);
        tally_.steps = s + 1;
        if (run_) {
            ++run_->step;
            blas::sum_rows(int(rows), int(n2_), T(1) / T(rows), Z2, int(n2_), T(0), gb1_.data());
            return;
        }
        blas::sum_rows(int(rows), int(n2_), -epoch_.lr / T(rows), Z2, int(n2_), T(1), params_.b[1]);
        old_scale1_ = T(scale_[1]);
        c1_ = fused_step_coefficients(scale_[1], rows, epoch_.lr, decay_);
        c0_ = fused_step_coefficients(scale_[0], rows, epoch_.lr, decay_);
    }

    // After both parts of B (an optimizer's epoch): its pass over W[1] and b[1], whose old columns the parts read.
    void close_backward() {
        optimizer_step(1, 0, n2_ * n1_, n2_);
    }

    // The optimizer's pass over layer l's weights [w0, w0 + n_w) and biases [b0, b0 + n_b), from their mean gradients.
    void optimizer_step(std::size_t l, std::size_t w0, std::size_t n_w, std::size_t n_b, std::size_t b0 = 0) {
        run_->apply(params_, l, true, w0, grad_.W[l] + w0, n_w, epoch_.lr, decay_);
        run_->apply(params_, l, false, b0, grad_.b[l] + b0, n_b, epoch_.lr, T(0));
    }

    void backward(std::size_t s, std::size_t p) {
        const std::size_t rows = epoch_.rows_of(s), u0 = unit_begin(p), units = unit_begin(p + 1) - u0;
        const T* Z2 = Z2_.data();  // dL/dZ2 by now
        T* dZ1 = dZ1_.data() + u0;
        const T* A1 = A1_.data() + u0;
        // dZ1's columns with W[1]'s old columns (old_scale1_ stays 1 in an optimizer's epoch)
        if (W1_t_)
            blas::gemm(blas::Op::N, blas::Op::T, int(rows), int(units), int(n2_), old_scale1_, Z2, int(n2_),
                       W1_t_ + u0 * n2_, int(n2_), T(0), dZ1, int(n1_));
        else
            blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(units), int(n2_), old_scale1_, Z2, int(n2_),
                       params_.W[1] + u0, int(n1_), T(0), dZ1, int(n1_));
        // then those columns' step (plain SGD) or mean gradient (an optimizer's, whose pass over W[1] comes after B)
        if (run_)
            blas::gemm(blas::Op::T, blas::Op::N, int(n2_), int(units), int(rows), T(1) / T(rows), Z2, int(n2_), A1,
                       int(n1_), T(0), gW1_.data() + u0, int(n1_));
        else if (W1_t_)
            blas::gemm(blas::Op::T, blas::Op::N, int(units), int(n2_), int(rows), c1_.alpha, A1, int(n1_), Z2,
                       int(n2_), c1_.beta, W1_t_ + u0 * n2_, int(n2_));
        else
            blas::gemm(blas::Op::T, blas::Op::N, int(n2_), int(units), int(rows), c1_.alpha, Z2, int(n2_), A1,
                       int(n1_), c1_.beta, params_.W[1] + u0, int(n1_));
        for (std::size_t r = 0; r < rows; ++r)
            inplace_activation_backward(dZ1 + r * n1_, A1 + r * n1_, units, shape_.act);
        // W[0]'s rows and b[0]'s entries: the fused L2 step into them (plain SGD), or the mean gradients into buffers
        // and the optimizer's pass over them
        const T mean = T(1) / T(rows);
        T* W0 = run_ ? gW0_.data() : params_.W[0];
        T* b0 = run_ ? gb0_.data() : params_.b[0];
        blas::gemm(blas::Op::T, blas::Op::N, int(units), int(n_in_), int(rows), run_ ? mean : c0_.alpha, dZ1, int(n1_),
                   X_of(s), int(n_in_), run_ ? T(0) : c0_.beta, W0 + u0 * n_in_, int(n_in_));
        blas::sum_rows(int(rows), int(units), run_ ? mean : -epoch_.lr / T(rows), dZ1, int(n1_), run_ ? T(0) : T(1),
                       b0 + u0);
        if (run_) optimizer_step(0, u0 * n_in_, units * n_in_, units, u0);
        gather(s + 1, p);
    }

    const Shape& shape_;
    Params<T>& params_;
    const EpochSteps<T> epoch_;
    OptimizerRun<T>* const run_;  // null: plain SGD, the L2 step fused into the products
    const std::size_t n_in_, n1_, n2_, steps_;
    std::optional<TransposedWeights<T>> transposed_;
    T* W1_t_ = nullptr;  // plain SGD: W[1] transposed (n1 x n2) where the general step would train it so
    LineVector<T> x_[2], A1_, dZ1_, Z2_;
    std::vector<T> gW0_, gW1_, gb0_, gb1_;  // an optimizer's mean gradients
    Params<T> grad_;
    double scale_[2] = {1.0, 1.0};  // each layer's decay, as train_epoch's scale (plain SGD)
    T decay_ = T(0), old_scale1_ = T(1);
    StepCoefficients<T> c0_{}, c1_{};
    struct alignas(64) Norms {
        double W0 = 0.0, W1 = 0.0;
    } norms_[2];
    struct alignas(64) Tally {
        LossStats stats;
        std::size_t steps = 0;
        double norms = 0.0;
    } tally_;
};

// to (cols x rows, rows ld_to apart) <- from (rows x cols, rows ld_from apart)^T: transpose_doubles where it applies.
template <class T>
void transpose_into(const T* from, std::size_t ld_from, std::size_t rows, std::size_t cols, T* to, std::size_t ld_to) {
    if constexpr (std::is_same_v<T, double>) {
        if (ld_from == cols) {
            transpose_doubles(from, rows, cols, to, ld_to);
            return;
        }
    }
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < cols; ++j) to[j * ld_to + i] = from[i * ld_from + j];
}

// An epoch of a small network with one hidden layer and an optimizer (plain SGD included: OptimizerRun's update), whose
// steps optimizer_step_shares would cut in two shares of records (partial_output_fits): each step in two parts by the
// hidden units instead, part p owning units [n1 p / 2, n1 (p + 1) / 2) with their rows of W[0], entries of b[0] and
// columns of W[1] (and the optimizer's state of them), and one hand-off a step (parallel_steps). A part's step:
//  A  the step's whole batch gathered into the part's own buffer (a small X stays in each core's cache), its columns of
//     A1 = act(X_b W[0]^T + b[0]) and its partial of the output layer's logits, A1_p W[1]_p^T (part 0's with b[1]),
//     from copies of its weights transposed (OpenBLAS's small-matrix kernels take those products' plain form);
//  B  after the hand-off: the logits, part 0's partial + part 1's, and their loss and dL/dZ2, worked out alike by both
//     parts; then the mean gradients of its weights and biases (part 0: b[1]'s too), the optimizer's pass over them
//     and the transposed copies refreshed.
// Part p's B of step s and A of step s + 1 are one step of the run: a part touches only its own weights and buffers
// but the other's partial logits, which go in two buffers by the step's parity. Against two shares of records, no
// part reads the other's gradient sums, weights or batch rows (digits' 64-64-10 at batch 200: the update 14 us a step
// on two threads against 9 us on one, from the shares' sums and weights moving between the cores), and a step has one
// hand-off instead of two. The parts are the same on one thread as on two, so the bits do not depend on the threads.
template <class T>
class PartialOutputEpoch {
public:
    PartialOutputEpoch(const Shape& shape, Params<T>& params, const EpochSteps<T>& epoch, OptimizerRun<T>& run)
        : shape_(shape), params_(params), epoch_(epoch), run_(run), n_in_(shape.n_in()), n1_(shape.sizes[1]),
          n2_(shape.sizes[2]), steps_(epoch.count()) {
        const std::size_t batch = epoch.batch;
        Kept& kept = kept_parts();
        const std::size_t values = (epoch_.order ? 3 * batch * n_in_ : 0) + 3 * n_in_ * n1_ + 4 * n1_ * n2_ +
                                   2 * batch * n1_ + 6 * batch * n2_;
        if (kept.in_use || values * sizeof(T) > kKeptBytes) {
            own_ = std::make_unique<Parts>();
            parts_ = own_.get();
        } else {
            kept.in_use = true;
            kept_ = &kept;
            parts_ = &kept.parts;
        }
        if (parts_->sizes != shape.sizes || parts_->batch != batch || parts_->gather != (epoch_.order != nullptr)) {
            parts_->sizes = shape.sizes;
            parts_->batch = batch;
            parts_->gather = epoch_.order != nullptr;
            for (std::size_t p = 0; p < 2; ++p) size_part(parts_->part[p], p);
        }
        for (Part& part : parts_->part) {  // the weights may have changed since the buffers' last epoch
            move_columns(part, true);
            refresh(part);
        }
    }
    PartialOutputEpoch(const PartialOutputEpoch&) = delete;
    PartialOutputEpoch& operator=(const PartialOutputEpoch&) = delete;
    ~PartialOutputEpoch() {
        if (kept_) kept_->in_use = false;
    }

    // The epoch on `threads` (1 or 2), stop() asked between runs of steps of about kLinearRun.
    EpochResult operator()(std::size_t threads, const std::function<bool()>& stop) {
        try {
            run(threads, stop);
        } catch (...) {
            for (Part& part : parts_->part) move_columns(part, false);
            throw;
        }
        for (Part& part : parts_->part) move_columns(part, false);
        return result_;
    }

private:
    // A thread keeps the parts' buffers of its last epoch, up to this size, for its next one on the same shape and
    // batch (as StepBuffers): a drop-in's digits epoch is 9 steps, and fresh buffers cost it their page faults.
    static constexpr std::size_t kKeptBytes = std::size_t(4) << 20;

    void run(std::size_t threads, const std::function<bool()>& stop) {
        one_thread_ = threads < 2;
        // run step t: each part's B of step t - 1 (t >= 1), then its A of step t (t < steps_, unless stopping)
        for (std::size_t done = 0; done <= steps_;) {
            const auto run_start = std::chrono::steady_clock::now();
            const std::size_t first = done;
            done += parallel_steps(
                steps_ + 1 - done, threads, [](std::size_t) { return std::size_t(2); },
                [&](std::size_t t, std::size_t p) { part(first + t, p); },
                [&](std::size_t t) {
                    close(first + t);
                    return std::chrono::steady_clock::now() - run_start < kLinearRun;
                }, kEpochsPoll);
            close(done - 1);  // parallel_steps calls no after() for the last step it is given
            if (done > steps_) break;
            if (stop && stop()) {  // one more run step, for the B of the step whose A has run
                stopping_ = true;
                result_.stopped = true;
                parallel_steps(1, threads, [](std::size_t) { return std::size_t(2); },
                               [&](std::size_t, std::size_t p) { part(done, p); }, [](std::size_t) { return true; },
                               kEpochsPoll);
                close(done);
                break;
            }
        }
    }

    struct alignas(64) Part {
        std::size_t u0 = 0, units = 0;
        LineVector<T> x[2], W0_t, W1_t, A1, dZ1, partial[2], Z2, gW0, gW1, gb;  // x[1]: part 0's only
        LineVector<T> W1, S1[2];  // the part's columns of W[1] and of their state, n2 x units, trained here
        LossStats stats;  // of the step whose B ran last
        double norms = 0.0;
    };

    struct Parts {
        std::vector<std::size_t> sizes;
        std::size_t batch = 0;
        bool gather = false;
        Part part[2];
    };

    struct Kept {
        Parts parts;
        bool in_use = false;
    };

    static Kept& kept_parts() {
        thread_local Kept kept;
        return kept;
    }

    void size_part(Part& part, std::size_t p) const {
        part.u0 = n1_ * p / 2;
        part.units = n1_ * (p + 1) / 2 - part.u0;
        for (std::size_t i = 0; i < 2; ++i)
            part.x[i].resize(epoch_.order && (i == 0 || p == 0) ? epoch_.batch * n_in_ : 0);
        part.W0_t.resize(n_in_ * part.units);
        part.W1_t.resize(part.units * n2_);
        part.A1.resize(epoch_.batch * part.units);
        part.dZ1.resize(epoch_.batch * part.units);
        for (auto& z : part.partial) z.resize(epoch_.batch * n2_);
        part.Z2.resize(epoch_.batch * n2_);
        part.gW0.resize(part.units * n_in_);
        part.gW1.resize(n2_ * part.units);
        part.gb.resize(std::max(part.units, n2_));
        part.W1.resize(n2_ * part.units);
        for (auto& S : part.S1) S.resize(n2_ * part.units);
    }

    void part(std::size_t t, std::size_t p) {
        if (t >= 1) backward(t - 1, p);
        if (t < steps_ && !stopping_) forward(t, p);
    }

    // After run step t (both parts): step t - 1's loss and weight norms tallied, and the optimizer's step count moved
    // on for step t's B. Runs once per run step, whichever way the run ends.
    void close(std::size_t t) {
        if (closed_ > t) return;
        closed_ = t + 1;
        if (t >= 1) {
            result_.stats += parts_->part[0].stats;
            result_.steps = t;
            if (epoch_.with_norms) result_.weight_norms += parts_->part[0].norms + parts_->part[1].norms;
        }
        if (t < steps_ && !stopping_) ++run_.step;
    }

    // Step s's batch for part p: X's own rows in turn, or the part's gathered rows; on one thread, part 1 reads part
    // 0's, which keeps two steps' rows (it gathers step s + 1's before part 1's B of step s).
    T* batch_of(std::size_t s, std::size_t p) {
        if (one_thread_ && p == 1) p = 0;
        return p == 0 ? parts_->part[0].x[s % 2].data() : parts_->part[1].x[0].data();
    }

    // The part's columns of A1 and its partial logits for step s.
    void forward(std::size_t s, std::size_t p) {
        Part& part = parts_->part[p];
        const std::size_t rows = epoch_.rows_of(s), units = part.units;
        const T* X = epoch_.rows_in_turn(s, n_in_);
        if (epoch_.order) {
            T* x = batch_of(s, p);
            if (!one_thread_ || p == 0) {
                const std::int64_t* picked = epoch_.picked_of(s);
                const NextRows next =
                    p == 0 && s + 1 < steps_ ? NextRows{picked + rows, epoch_.rows_of(s + 1)} : NextRows{};
                gather_rows(epoch_.data, n_in_, n2_, picked, rows, x, next);
            }
            X = x;
        }
        blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(units), int(n_in_), T(1), X, int(n_in_), part.W0_t.data(),
                   int(units), T(0), part.A1.data(), int(units));
        inplace_bias_activation(part.A1.data(), params_.b[0] + part.u0, rows, units, shape_.act);
        T* partial = part.partial[s % 2].data();
        blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(n2_), int(units), T(1), part.A1.data(), int(units),
                   part.W1_t.data(), int(n2_), T(0), partial, int(n2_));
        if (p == 0) inplace_bias_activation(partial, params_.b[1], rows, n2_, Activation::Identity);
    }

    // Step s's loss from both partials, then the part's gradients and the optimizer's pass over its parameters.
    void backward(std::size_t s, std::size_t p) {
        Part& part = parts_->part[p];
        const std::size_t rows = epoch_.rows_of(s), units = part.units, u0 = part.u0;
        const T* X = epoch_.order ? batch_of(s, p) : epoch_.rows_in_turn(s, n_in_);
        // dL/dZ2: each part's own on two threads; on one, part 1 takes part 0's (the same values)
        T* Z2 = one_thread_ && p == 1 ? parts_->part[0].Z2.data() : part.Z2.data();
        if (!one_thread_ || p == 0) {
            const T* P0 = parts_->part[0].partial[s % 2].data();
            const T* P1 = parts_->part[1].partial[s % 2].data();
            for (std::size_t i = 0; i < rows * n2_; ++i) Z2[i] = P0[i] + P1[i];
            part.stats = inplace_loss_gradient(Z2, rows, n2_, shape_.loss, epoch_.targets(s));
        }
        const T mean = T(1) / T(rows);
        // dZ1's columns with W[1]'s old columns, then the gradients
        blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(units), int(n2_), T(1), Z2, int(n2_), part.W1.data(),
                   int(units), T(0), part.dZ1.data(), int(units));
        blas::gemm(blas::Op::T, blas::Op::N, int(n2_), int(units), int(rows), mean, Z2, int(n2_), part.A1.data(),
                   int(units), T(0), part.gW1.data(), int(units));
        inplace_activation_backward(part.dZ1.data(), part.A1.data(), rows * units, shape_.act);
        blas::gemm(blas::Op::T, blas::Op::N, int(units), int(n_in_), int(rows), mean, part.dZ1.data(), int(units), X,
                   int(n_in_), T(0), part.gW0.data(), int(n_in_));
        const T decay = epoch_.decay_of(rows);
        double* norms = epoch_.with_norms ? &part.norms : nullptr;
        part.norms = 0.0;
        // the optimizer's pass, last layer first as OptimizerStep's: the part's block of W[1]'s columns, b[1] (part 0),
        // W[0]'s rows and b[0]'s entries
        inplace_optimizer_step(run_.opt, run_.step, part.W1.data(), part.gW1.data(), slots(part, 0), slots(part, 1),
                               n2_ * units, epoch_.lr, decay, norms);
        if (p == 0) {
            blas::sum_rows(int(rows), int(n2_), mean, Z2, int(n2_), T(0), part.gb.data());
            run_.apply(params_, 1, false, 0, part.gb.data(), n2_, epoch_.lr, T(0));
        }
        run_.apply(params_, 0, true, u0 * n_in_, part.gW0.data(), units * n_in_, epoch_.lr, decay, norms);
        blas::sum_rows(int(rows), int(units), mean, part.dZ1.data(), int(units), T(0), part.gb.data());
        run_.apply(params_, 0, false, u0, part.gb.data(), units, epoch_.lr, T(0));
        refresh(part);
    }

    // The part's transposed copies <- its rows of W[0] and columns of W[1].
    void refresh(Part& part) {
        transpose_into(params_.W[0] + part.u0 * n_in_, n_in_, part.units, n_in_, part.W0_t.data(), part.units);
        transpose_into(part.W1.data(), part.units, n2_, part.units, part.W1_t.data(), n2_);
    }

    // The part's block of W[1]'s state array s, or null when the optimizer keeps none.
    T* slots(Part& part, std::size_t s) const { return s < run_.slots.size() ? part.S1[s].data() : nullptr; }

    // The part's columns of W[1] and of their state into its blocks (in), or back (out). W[1]'s rows are short (its
    // inputs, the hidden units), and the parts' columns of a row may share a cache line: trained in place, that line
    // would move between the cores with every step's update.
    void move_columns(Part& part, bool in) {
        const std::size_t units = part.units;
        for (std::size_t s = 0; s <= run_.slots.size(); ++s) {
            T* whole = s == 0 ? params_.W[1] : run_.slot(s - 1, true, 1, 0);
            T* block = s == 0 ? part.W1.data() : part.S1[s - 1].data();
            for (std::size_t o = 0; o < n2_; ++o) {
                T* row = whole + o * n1_ + part.u0;
                if (in)
                    std::copy(row, row + units, block + o * units);
                else
                    std::copy(block + o * units, block + (o + 1) * units, row);
            }
        }
    }

    const Shape& shape_;
    Params<T>& params_;
    const EpochSteps<T> epoch_;
    OptimizerRun<T>& run_;
    const std::size_t n_in_, n1_, n2_, steps_;
    std::unique_ptr<Parts> own_;
    Kept* kept_ = nullptr;
    Parts* parts_ = nullptr;
    EpochResult result_;
    std::size_t closed_ = 0;
    bool stopping_ = false, one_thread_ = false;
};

}  // namespace

bool optimizer_step_shares(const std::vector<std::size_t>& sizes, std::size_t batch) {
    // Two shares, each on one OpenBLAS thread, against whole steps on OpenBLAS's two (Adam, the median epoch of
    // 10 000 records, batch 200; benchmarks/README.md, R, session 17): faster for 64-100-10, 64-256-10, 784-100-10
    // (7.8 M multiply-adds a share's product: float64 52-56 ms against 75-89, float32 26 against 34-43) and
    // 784-128-10 (10 M: 64 against 78-84, 32-33 against 43-53); slower for 784-256-10 in float32 (84-89 against
    // 64-70) and 128-256-10 in float64 (30-36 against 29), even for 300-300-10. OpenBLAS cuts a product of a
    // narrow layer (its units, the columns of A W^T) into thin pieces for its threads.
    constexpr double kMostShareProduct = double(std::size_t(1) << 21), kMostNarrowProduct = double(std::size_t(1) << 24);
    constexpr std::size_t kNarrowUnits = 128;
    if (batch < 2 * kMinShareRows) return false;
    const double rows = double(share_capacity(batch));  // a share's, or a short step's
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
        const double product = rows * double(sizes[l]) * double(sizes[l + 1]);
        if (product > (sizes[l + 1] <= kNarrowUnits ? kMostNarrowProduct : kMostShareProduct)) return false;
    }
    return true;
}

bool sgd_step_shares(const std::vector<std::size_t>& sizes, std::size_t batch, bool single) {
    Shape shape;
    shape.sizes = sizes;
    return !single && !linear_step_fits(shape) && optimizer_step_shares(sizes, batch);
}

bool split_step_fits(const std::vector<std::size_t>& sizes, std::size_t batch, Activation act) {
    if (sizes.size() != 3 || (act != Activation::Relu && act != Activation::Identity)) return false;
    const std::size_t n_in = sizes[0], n1 = sizes[1], n2 = sizes[2];
    Shape shape;
    shape.sizes = sizes;
    shape.act = act;
    if (n2 < 2 || SmallStep<float>::fits(shape, false) || train_transposed(batch, n_in, n1)) return false;
    const double hidden = double(batch) * double(n_in) * double(n1), output = double(batch) * double(n1) * double(n2);
    return hidden >= kMinSplitProduct && hidden <= kMostSplitProduct && output * kMinSplitRatio <= hidden;
}

bool partial_output_fits(const std::vector<std::size_t>& sizes, std::size_t batch) {
    // Against two shares of records, an Adam epoch on two threads (one), float64 unless said
    // (benchmarks/partial_output_shapes.py; benchmarks/README.md, R, session 21): 64-64-10 at batch 200 5.0 ms against
    // 5.4 (7.2 against 7.5), in float32 2.9 against 3.0 (3.9 against 4.2), at batch 64 6.3 against 8.6 (8.8 against
    // 9.4); 64-100-10 3.5 against 4.0 (5.5 against 6.2); 64-256-10 8.4 against 9.1 (15.7 against 15.6); 128-64-10 8.0
    // against 9.1 (11.9 against 14.2). Slower, in fits of 3 epochs: 64-16-10 (each part's product too small beside its
    // gather of the whole batch: 15.7 ms against 11.1) and 784 inputs (784-100-10 117-119 against 104, 784-128-10 in
    // float32 71-72 against 59-61: the parts' products leave OpenBLAS's small-matrix kernels, so their transposed
    // copies only cost).
    constexpr std::size_t kMostInputs = 128, kFewestUnits = 32;
    return sizes.size() == 3 && sizes[0] <= kMostInputs && sizes[1] >= kFewestUnits &&
           optimizer_step_shares(sizes, batch);
}

bool forward_on_copy(std::size_t batch, std::size_t n_in, std::size_t n_out) {
    // A W^T packs where OpenBLAS's small-matrix rule for it fails (C of more than 1200 entries, or an inner dimension
    // below 32: see train_transposed) and A W_t does not: at most 100^3 multiply-adds, one product (W_t's rows in
    // transposed_forward's single slice, which keeps the copy in the L1 cache); nor for one output (a GEMV either way).
    const std::size_t inner = std::min<std::size_t>(n_in, blas::kMaxInner);
    const bool packs = batch * n_out > 1200 || inner < 32;
    return packs && n_out > 1 && n_in <= transposed_slice_rows(n_out, sizeof(double)) &&
           double(batch) * double(n_out) * double(n_in) <= 1e6;
}

bool train_transposed(std::size_t batch, std::size_t n_in, std::size_t n_out) {
    // OpenBLAS's small-matrix kernels (SkylakeX) take GEMMs of at most 100^3 multiply-adds, but A W^T with W stored
    // only when C has at most 1200 entries and the inner dimension is 32 or more; outside that it packs, at twice
    // the time (64-64-10, batch 32: 3.7 us against 2.2 us for A W^T with W^T stored). Inside it (an output layer of
    // 10 units) W stays as it is, since its input gradient dZ W is then the fast kind too. W^T's products go in
    // slices of rows (transposed_slice_rows) that keep them small: up to 128 units, that brings layers with many
    // inputs into the small-matrix range too (784-128 at batch 64); wider ones keep the packed path, which is faster
    // than their thin slices (784-256 at batch 128: 1.0 ms against 1.3 ms a step).
    constexpr double kSmallGemm = 1e6;
    const std::size_t inner = std::min<std::size_t>(n_in, blas::kMaxInner);
    const bool packs = batch * n_out > 1200 || inner < 32;
    const std::size_t sliced = std::min(n_in, transposed_slice_rows(n_out, sizeof(float)));
    return packs && (double(batch) * double(n_out) * double(inner) <= kSmallGemm ||
                     (n_out <= 128 && double(batch) * double(n_out) * double(sliced) <= kSmallGemm));
}

void check_shape(const Shape& shape) {
    if (shape.sizes.size() < 2) throw std::invalid_argument("layer_sizes: need at least [n_in, n_out]");
    for (std::size_t s : shape.sizes)
        if (s == 0) throw std::invalid_argument("layer_sizes: every layer needs at least one unit");
    if (shape.loss == Loss::Logistic && shape.n_out() != 1)
        throw std::invalid_argument("layer_sizes: the logistic loss needs exactly one output unit");
    if (shape.loss == Loss::Softmax && shape.n_out() < 2)
        throw std::invalid_argument("layer_sizes: the softmax loss needs at least two output units");
}

void check_order(const std::int64_t* order, std::size_t n, std::size_t m) {
    const std::size_t i = first_outside(order, n, m);
    if (i < n)
        throw std::invalid_argument("order: index " + std::to_string(order[i]) + " at position " +
                                    std::to_string(i) + " is outside [0, " + std::to_string(m) + ")");
}

// train_epoch with a decay of its own for the short last step, as two epochs: the full steps, then the short one.
template <class T>
EpochResult short_step_apart(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                             std::size_t n, std::size_t batch, T lr, T lam_over_m, T short_lam_over_m,
                             const std::function<bool()>& should_stop, OptimizerRun<T>* run, bool with_norms) {
    const std::size_t n_full = n / batch * batch;
    EpochResult result = train_epoch(shape, params, data, order, n_full, batch, lr, lam_over_m, should_stop, run,
                                     with_norms);
    if (result.stopped) return result;
    std::vector<std::int64_t> rest;  // without an order the records come in turn: the short step's are n_full..n-1
    if (!order) {
        rest.resize(n - n_full);
        for (std::size_t i = 0; i < rest.size(); ++i) rest[i] = std::int64_t(n_full + i);
    }
    const EpochResult last = train_epoch(shape, params, data, order ? order + n_full : rest.data(), n - n_full, batch,
                                         lr, short_lam_over_m, should_stop, run, with_norms);
    result.stats += last.stats;
    result.stopped = last.stopped;
    result.steps += last.steps;
    result.weight_norms += last.weight_norms;
    return result;
}

// Calls step(picked, start, rows, next, decay) for each step of an epoch over `order` (n records in steps of batch;
// null order: in turn), decay being lam_over_m, or short_lam_over_m when given for a step of fewer than full_batch
// records; counts the steps in result and ends after the step in hand when stop() says so.
template <class T, class Step>
void for_each_step(const Dataset<T>& data, std::size_t n_in, const std::int64_t* order, std::size_t n,
                   std::size_t batch, std::size_t full_batch, T lam_over_m, std::optional<T> short_lam_over_m,
                   StopCheck& stop, EpochResult& result, Step step) {
    for (std::size_t start = 0; start < n; start += batch) {
        const std::size_t rows = std::min(batch, n - start);
        const T step_lam = rows < full_batch && short_lam_over_m ? *short_lam_over_m : lam_over_m;
        const std::int64_t* picked = order ? order + start : nullptr;
        step(picked, start, rows, next_rows(data, picked, start, rows, n, batch, n_in), step_lam);
        ++result.steps;
        if (stop()) {
            result.stopped = true;
            return;
        }
    }
}

// Whether an epoch may cut its steps in parts of its own (UnitSplitEpoch, PartialOutputEpoch): dense X, its threads
// given (share_threads) and OpenBLAS on one thread, so that each part's products stay on its thread.
template <class T>
bool cut_in_parts(const Dataset<T>& data, std::size_t share_threads) {
    return !data.sparse && share_threads >= 1 && blas::num_threads() == 1;
}

// The threads such an epoch's two parts run on.
static std::size_t parts_threads(std::size_t share_threads) { return std::min<std::size_t>(share_threads, 2); }

// train_epoch with an optimizer other than plain SGD: its steps are OptimizerStep's, or cut in parts of their own
// (PartialOutputEpoch, UnitSplitEpoch).
template <class T>
EpochResult optimizer_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                            std::size_t n, std::size_t batch, std::size_t full_batch, T lr, T lam_over_m,
                            const std::function<bool()>& should_stop, OptimizerRun<T>& run, bool with_norms,
                            std::optional<T> short_lam_over_m, std::size_t share_threads) {
    EpochResult result;
    const EpochSteps<T> epoch{data, order, n, batch, full_batch, lr, lam_over_m, short_lam_over_m, with_norms};
    StopCheck stop(should_stop);
    const auto stop_asked = [&] { return stop(); };
    // One small hidden layer whose steps cut in two shares of records: its steps cut by units, each part with its
    // partial of the output layer.
    if (cut_in_parts(data, share_threads) && partial_output_fits(shape.sizes, batch))
        return PartialOutputEpoch<T>(shape, params, epoch, run)(parts_threads(share_threads), stop_asked);
    // One wide hidden layer whose steps do not cut in two shares of records: its steps cut by units.
    if (cut_in_parts(data, share_threads) && !optimizer_step_shares(shape.sizes, batch) &&
        split_step_fits(shape.sizes, batch, shape.act))
        return UnitSplitEpoch<T>(shape, params, epoch, &run)(parts_threads(share_threads), stop_asked);
    const bool gather = order != nullptr && !data.sparse;
    OptimizerStep<T> step(shape, params, run, batch, gather, data.sparse, share_threads);
    for_each_step(data, shape.n_in(), order, n, batch, full_batch, lam_over_m, short_lam_over_m, stop, result,
                  [&](const std::int64_t* picked, std::size_t start, std::size_t rows, const NextRows& next, T decay) {
                      result.stats += step(data, picked, start, rows, next, lr, decay,
                                           with_norms ? &result.weight_norms : nullptr);
                  });
    return result;
}

template <class T>
EpochResult train_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                        std::size_t n, std::size_t batch, T lr, T lam_over_m, const std::function<bool()>& should_stop,
                        OptimizerRun<T>* run, bool with_norms, std::optional<T> short_lam_over_m,
                        std::size_t share_threads) {
    EpochResult result;
    if (n == 0) return result;
    const std::size_t full_batch = batch;
    batch = std::min(batch, n);
    if (run != nullptr && run->opt.method != Method::Sgd)
        return optimizer_epoch(shape, params, data, order, n, batch, full_batch, lr, lam_over_m, should_stop, *run,
                               with_norms, short_lam_over_m, share_threads);
    if (!data.sparse && linear_step_fits(shape)) {  // a linear model: one read of each step's rows
        if (short_lam_over_m && n % full_batch != 0)  // the linear step takes one decay: the short step on its own
            return short_step_apart(shape, params, data, order, n, full_batch, lr, lam_over_m, *short_lam_over_m,
                                    should_stop, run, with_norms);
        StopCheck stop(should_stop);
        return linear_sgd_epoch(shape, params, data, order, n, batch, lr, lam_over_m, [&] { return stop(); },
                                with_norms);
    }
    // Plain SGD on a float64 network whose steps cut in two shares: OptimizerStep's steps with SGD's update.
    if (!data.sparse && sgd_step_shares(shape.sizes, batch, std::is_same_v<T, float>)) {
        OptimizerRun<T> sgd;  // plain SGD keeps no state
        return optimizer_epoch(shape, params, data, order, n, batch, full_batch, lr, lam_over_m, should_stop,
                               run != nullptr ? *run : sgd, with_norms, short_lam_over_m, share_threads);
    }
    // A network with one wide hidden layer: its steps cut by units.
    if (cut_in_parts(data, share_threads) && split_step_fits(shape.sizes, batch, shape.act)) {
        StopCheck stop(should_stop);
        const EpochSteps<T> epoch{data, order, n, batch, full_batch, lr, lam_over_m, short_lam_over_m, with_norms};
        return UnitSplitEpoch<T>(shape, params, epoch)(parts_threads(share_threads), [&] { return stop(); });
    }
    // Otherwise the L2 step fused into each layer's weight product (inplace_fused_l2_step).
    const std::size_t n_in = shape.n_in();
    const bool small = SmallStep<T>::fits(shape, data.sparse);
    const bool gather = order != nullptr && !data.sparse && !small;
    Workspace<T> ws(shape, batch, gather, true);
    BlockX<T> block;
    // Each layer's weight decay accumulates in a scale beside W (see inplace_fused_l2_step).
    std::vector<double> scale(shape.n_layers(), 1.0);
    TransposedWeights<T> transposed(shape, params, batch, data.sparse, small);
    T* const* W_t = transposed.layers();
    std::optional<SmallStep<T>> small_step;
    if (small) small_step.emplace(shape, batch, ws);
    StopCheck stop(should_stop);
    for_each_step(data, n_in, order, n, batch, full_batch, lam_over_m, short_lam_over_m, stop, result,
                  [&](const std::int64_t* picked, std::size_t start, std::size_t rows, const NextRows& next,
                      T step_lam) {
        double* norms = with_norms ? &result.weight_norms : nullptr;
        if (small) {
            result.stats += (*small_step)(params, data, scale, W_t, picked, start, rows, next, lr, step_lam, norms);
            return;
        }
        take_block(data, n_in, picked, start, rows, ws.x, block, shape.n_out(), next);
        forward_block(shape, params, scale.data(), block, rows, ws, W_t);
        prefetch_rows(data.X, n_in, next, 0, next.rows / 2);
        result.stats += inplace_loss_gradient(ws.out.back().data(), rows, shape.n_out(), shape.loss,
                                              targets_of(data, picked, start));
        prefetch_rows(data.X, n_in, next, next.rows / 2, next.rows);
        if (norms)  // the GEMM step reads no weight outside the product: one pass of its own
            add_scaled_weight_norms(*norms, shape, params, scale, W_t);
        backward_block(shape, params, scale.data(), block, rows, ws, [&](std::size_t l, const T* dZ, const T* A_prev) {
            const std::size_t n_out = shape.sizes[l + 1];
            if (l == 0 && block.is_sparse()) {
                const StepCoefficients<T> c = fused_step_coefficients(scale[0], rows, lr, step_lam);
                sparse_layer_product(params.W[0], params.b[0], dZ, block.sparse, n_out, c.alpha, c.beta, -lr / T(rows),
                                     T(1));
            } else if (W_t[l]) {  // the same step, written into the transposed copy: W^T += alpha A_prev^T dZ
                const StepCoefficients<T> c = fused_step_coefficients(scale[l], rows, lr, step_lam);
                transposed_weight_product(A_prev, dZ, rows, shape.sizes[l], n_out, c.alpha, c.beta, W_t[l]);
                blas::sum_rows(int(rows), int(n_out), -lr / T(rows), dZ, int(n_out), T(1), params.b[l]);
            } else {
                inplace_fused_l2_step(params.W[l], scale[l], params.b[l], dZ, A_prev, rows, n_out, shape.sizes[l], lr,
                                      step_lam);
            }
        }, W_t);
    });
    transposed.copy_back();
    for (std::size_t l = 0; l < shape.n_layers(); ++l)
        inplace_apply_scale(params.W[l], scale[l], shape.sizes[l + 1] * shape.sizes[l]);
    return result;
}

template <class T>
StackedEpochResult train_epoch_stacked(const Shape& shape, std::vector<Params<T>>& models, const Dataset<T>& data,
                                       const std::int64_t* order, std::size_t n, std::size_t batch, T lr,
                                       const std::vector<T>& lam_over_m, const std::function<bool()>& should_stop) {
    const std::size_t K = models.size(), L = shape.n_layers(), n_in = shape.n_in();
    StackedEpochResult result;
    result.stats.assign(K, LossStats{});
    if (n == 0 || K == 0) return result;
    batch = std::min(batch, n);
    std::vector<Workspace<T>> ws;
    ws.reserve(K);
    for (std::size_t k = 0; k < K; ++k) ws.emplace_back(shape, batch, false, true);
    LineVector<T> x(order && !data.sparse ? batch * n_in : 0);
    BlockX<T> block;
    std::vector<double> scale(K * L, 1.0);  // scale[k * L + l]: model k's layer l, as in train_epoch
    blas::Batch<T> products(K);
    std::vector<const T*> A(K), B(K);
    std::vector<T*> C(K);
    std::vector<T> alpha(K), beta(K);
    StopCheck stop(should_stop);
    for (std::size_t start = 0; start < n; start += batch) {
        const int rows = int(std::min(batch, n - start));
        const std::int64_t* picked = order ? order + start : nullptr;
        take_block(data, n_in, picked, start, std::size_t(rows), x, block, shape.n_out(),  // one batch for all K
                   next_rows(data, picked, start, std::size_t(rows), n, batch, n_in));
        const T* X = block.dense;
        for (std::size_t l = 0; l < L; ++l) {
            const int fan_in = int(shape.sizes[l]), fan_out = int(shape.sizes[l + 1]);
            const Activation act = l + 1 == L ? Activation::Identity : shape.act;
            if (l == 0 && block.is_sparse()) {
                for (std::size_t k = 0; k < K; ++k)
                    sparse_dense_forward(block.sparse, models[k].W[0], WeightLayout::Rows, T(scale[k * L]),
                                         models[k].b[0], std::size_t(fan_out), act, ws[k].out[0].data());
                continue;
            }
            for (std::size_t k = 0; k < K; ++k) {
                A[k] = l == 0 ? X : ws[k].out[l - 1].data();
                B[k] = models[k].W[l];
                C[k] = ws[k].out[l].data();
                alpha[k] = T(scale[k * L + l]);
                beta[k] = T(0);
            }
            products.gemm(blas::Op::N, blas::Op::T, rows, fan_out, fan_in, alpha.data(), A.data(), fan_in, B.data(),
                          fan_in, beta.data(), C.data(), fan_out, K);
            for (std::size_t k = 0; k < K; ++k)
                inplace_bias_activation(C[k], models[k].b[l], std::size_t(rows), std::size_t(fan_out), act);
        }
        for (std::size_t k = 0; k < K; ++k)
            result.stats[k] += inplace_loss_gradient(ws[k].out.back().data(), std::size_t(rows), shape.n_out(),
                                                     shape.loss, targets_of(data, picked, start));
        for (std::size_t l = L; l-- > 0;) {
            const int fan_in = int(shape.sizes[l]), fan_out = int(shape.sizes[l + 1]);
            auto dZ = [&](std::size_t k) { return l + 1 == L ? ws[k].out[l].data() : ws[k].grad[l].data(); };
            if (l > 0) {  // the input gradients first, with the old weights
                for (std::size_t k = 0; k < K; ++k) {
                    A[k] = dZ(k);
                    B[k] = models[k].W[l];
                    C[k] = ws[k].grad[l - 1].data();
                    alpha[k] = T(scale[k * L + l]);
                    beta[k] = T(0);
                }
                products.gemm(blas::Op::N, blas::Op::N, rows, fan_in, fan_out, alpha.data(), A.data(), fan_out,
                              B.data(), fan_in, beta.data(), C.data(), fan_in, K);
                for (std::size_t k = 0; k < K; ++k)
                    inplace_activation_backward(C[k], ws[k].out[l - 1].data(), std::size_t(rows) * fan_in, shape.act);
            }
            if (l == 0 && block.is_sparse()) {
                for (std::size_t k = 0; k < K; ++k) {
                    const StepCoefficients<T> c = fused_step_coefficients(scale[k * L], std::size_t(rows), lr,
                                                                          lam_over_m[k]);
                    sparse_layer_product(models[k].W[0], models[k].b[0], dZ(k), block.sparse,
                                         std::size_t(fan_out), c.alpha, c.beta, -lr / T(rows), T(1));
                }
                continue;
            }
            for (std::size_t k = 0; k < K; ++k) {
                const StepCoefficients<T> c =
                    fused_step_coefficients(scale[k * L + l], std::size_t(rows), lr, lam_over_m[k]);
                A[k] = dZ(k);
                B[k] = l == 0 ? X : ws[k].out[l - 1].data();
                C[k] = models[k].W[l];
                alpha[k] = c.alpha;
                beta[k] = c.beta;
            }
            products.gemm(blas::Op::T, blas::Op::N, fan_out, fan_in, rows, alpha.data(), A.data(), fan_out, B.data(),
                          fan_in, beta.data(), C.data(), fan_in, K);
            for (std::size_t k = 0; k < K; ++k)
                blas::sum_rows(rows, fan_out, -lr / T(rows), dZ(k), fan_out, T(1), models[k].b[l]);
        }
        ++result.steps;
        if (stop()) {
            result.stopped = true;
            break;
        }
    }
    for (std::size_t k = 0; k < K; ++k)
        for (std::size_t l = 0; l < L; ++l)
            inplace_apply_scale(models[k].W[l], scale[k * L + l], shape.sizes[l + 1] * shape.sizes[l]);
    return result;
}

template <class T>
void predict(const Shape& shape, const Params<T>& params, const T* X, std::size_t m, T* out) {
    Dataset<T> data;
    data.X = X;
    data.m = m;
    predict(shape, params, data, out);
}

template <class T>
void predict(const Shape& shape, const Params<T>& params, const Dataset<T>& data, T* out) {
    const std::size_t m = data.m, rows_max = std::min(m, kBlockRows);
    Workspace<T> ws(shape, rows_max, false, false);
    LineVector<T> unused;
    const std::vector<T> W0_t = first_layer_transposed(shape, params, data);
    BlockX<T> block;
    block.W0_t = W0_t.empty() ? nullptr : W0_t.data();
    for (std::size_t start = 0; start < m; start += rows_max) {
        const std::size_t rows = std::min(rows_max, m - start);
        take_block(data, shape.n_in(), nullptr, start, rows, unused, block);
        forward_block(shape, params, nullptr, block, rows, ws);
        T* logits = ws.out.back().data();
        inplace_output_activation(logits, rows, shape.n_out(), shape.loss);
        std::memcpy(out + start * shape.n_out(), logits, rows * shape.n_out() * sizeof(T));
    }
}

template <class T>
LossStats evaluate(const Shape& shape, const Params<T>& params, const Dataset<T>& data) {
    LossStats total;
    const std::size_t rows_max = std::min(data.m, kBlockRows);
    Workspace<T> ws(shape, rows_max, false, false);
    LineVector<T> unused;
    const std::vector<T> W0_t = first_layer_transposed(shape, params, data);
    BlockX<T> block;
    block.W0_t = W0_t.empty() ? nullptr : W0_t.data();
    for (std::size_t start = 0; start < data.m; start += rows_max) {
        const std::size_t rows = std::min(rows_max, data.m - start);
        take_block(data, shape.n_in(), nullptr, start, rows, unused, block);
        forward_block(shape, params, nullptr, block, rows, ws);
        total += inplace_loss_gradient(ws.out.back().data(), rows, shape.n_out(), shape.loss,
                                       targets_of(data, nullptr, start));
    }
    return total;
}

template <class T>
struct GradientsScratch {
    // What one share of the records works in: a block's activations, a float network's block products, and (the
    // second share's) its own double sums, which the first share keeps in grads.
    struct Share {
        std::vector<std::vector<T>> block_W, block_b;
        std::vector<std::vector<double>> sum_W, sum_b;
    };
    std::vector<std::size_t> sizes;  // the network the buffers are for
    std::size_t rows = 0;            // ... and the most rows of a block
    std::size_t grown = 0;
    std::vector<Workspace<T>> ws;    // one per share, once made
    Share shares[2];

    // Buffers for `count` (1 or 2) shares of blocks of up to rows_needed records, kept while the network and count
    // allow.
    void prepare(const Shape& shape, std::size_t rows_needed, std::size_t count, bool sums_in_T) {
        if (ws.size() < count || sizes != shape.sizes || rows_needed > rows) {
            rows = sizes == shape.sizes ? std::max(rows, rows_needed) : rows_needed;
            sizes = shape.sizes;
            ws.clear();
            for (std::size_t s = 0; s < count; ++s) ws.emplace_back(shape, rows, false, true);
            ++grown;
        }
        const std::size_t L = shape.n_layers();
        for (std::size_t s = 0; s < count; ++s) {
            Share& share = shares[s];
            share.block_W.resize(sums_in_T ? L : 0);
            share.block_b.resize(sums_in_T ? L : 0);
            share.sum_W.resize(s == 1 ? L : 0);
            share.sum_b.resize(s == 1 ? L : 0);
            for (std::size_t l = 0; l < L; ++l) {
                const std::size_t n_w = shape.sizes[l + 1] * shape.sizes[l], n_b = shape.sizes[l + 1];
                if (sums_in_T) share.block_W[l].resize(n_w), share.block_b[l].resize(n_b);
                if (s == 1) share.sum_W[l].assign(n_w, 0.0), share.sum_b[l].assign(n_b, 0.0);
            }
        }
    }
};

template <class T>
std::shared_ptr<GradientsScratch<T>> make_gradients_scratch() {
    return std::make_shared<GradientsScratch<T>>();
}

template <class T>
std::size_t times_grown(const GradientsScratch<T>& scratch) {
    return scratch.grown;
}

bool gradients_shares(const std::vector<std::size_t>& sizes, std::size_t m) {
    // a one-layer network's pass (linear_gradients) cuts its records in slices for OpenBLAS's threads itself
    return sizes.size() > 2 && optimizer_step_shares(sizes, 2 * std::min((m + 1) / 2, kBlockRows));
}

template <class T>
LossStats gradients(const Shape& shape, const Params<T>& params, const Dataset<T>& data, double lam_over_m,
                    Params<double>& grads, GradientsScratch<T>* scratch,
                    const std::function<void(std::size_t)>& layer_done, std::size_t share_threads) {
    if (!data.sparse && linear_pass_fits(shape)) {
        const LossStats stats = linear_gradients(shape, params, data, lam_over_m, grads);
        if (layer_done) layer_done(0);
        return stats;
    }
    // double networks sum straight into grads; float ones take each block's products in float and add them up
    // in double, so that the sums of many blocks keep their precision (L-BFGS needs J's gradient to the last
    // digits it can get).
    constexpr bool direct = std::is_same_v<T, double>;
    const std::size_t L = shape.n_layers(), m = data.m;
    const std::size_t shares = share_threads && !data.sparse && gradients_shares(shape.sizes, m) ? 2 : 1;
    const std::size_t rows_max = std::min((m + shares - 1) / shares, kBlockRows);
    GradientsScratch<T> own;
    GradientsScratch<T>& kept = scratch ? *scratch : own;
    kept.prepare(shape, rows_max, shares, !direct);
    for (std::size_t l = 0; l < L; ++l) {
        std::fill(grads.W[l], grads.W[l] + shape.sizes[l + 1] * shape.sizes[l], 0.0);
        std::fill(grads.b[l], grads.b[l] + shape.sizes[l + 1], 0.0);
    }
    // Sparse X with several first-layer units: W[0] read, and its gradient summed, transposed (in double).
    const std::vector<T> W0_t = first_layer_transposed(shape, params, data);
    const std::size_t n_w0 = shape.sizes[1] * shape.n_in();
    std::vector<double> sum0_t(W0_t.empty() ? 0 : n_w0);
    std::vector<T> block0_t(W0_t.empty() || direct ? 0 : n_w0);
    const double inv_m = 1.0 / double(m);
    std::size_t first_final = L;  // layers first_final .. L-1 are final (the sums' mean plus the penalty's term)
    const auto make_final = [&](std::size_t l) {
        const std::size_t n_w = shape.sizes[l + 1] * shape.sizes[l];
        for (std::size_t i = 0; i < n_w; ++i) grads.W[l][i] = grads.W[l][i] * inv_m + lam_over_m * double(params.W[l][i]);
        for (std::size_t i = 0; i < shape.sizes[l + 1]; ++i) grads.b[l][i] *= inv_m;
        first_final = l;
    };
    // Share s's sums over records [begin, end): into grads (share 0) or its own (share 1), block by block. Only a
    // pass over all the records (one share) makes layers final as the last block's backward pass reaches them.
    const auto share_sums = [&](std::size_t s, std::size_t begin, std::size_t end) {
        Workspace<T>& ws = kept.ws[s];
        typename GradientsScratch<T>::Share& own_share = kept.shares[s];
        const auto W_sums = [&](std::size_t l) { return s == 0 ? grads.W[l] : own_share.sum_W[l].data(); };
        const auto b_sums = [&](std::size_t l) { return s == 0 ? grads.b[l] : own_share.sum_b[l].data(); };
        LossStats total;
        LineVector<T> unused;
        BlockX<T> block;
        block.W0_t = W0_t.empty() ? nullptr : W0_t.data();
        for (std::size_t start = begin; start < end; start += rows_max) {
            const std::size_t rows = std::min(rows_max, end - start);
            take_block(data, shape.n_in(), nullptr, start, rows, unused, block);
            forward_block(shape, params, nullptr, block, rows, ws);
            total += inplace_loss_gradient(ws.out.back().data(), rows, shape.n_out(), shape.loss,
                                           targets_of(data, nullptr, start));
            backward_block(shape, params, nullptr, block, rows, ws, [&](std::size_t l, const T* dZ, const T* A_prev) {
                const std::size_t n_out = shape.sizes[l + 1], n_in = shape.sizes[l];
                const bool sparse = l == 0 && block.is_sparse();
                if constexpr (direct) {
                    if (sparse && block.W0_t)
                        sparse_layer_product(sum0_t.data(), grads.b[0], dZ, block.sparse, n_out, 1.0, 1.0,
                                             1.0, 1.0, WeightLayout::Transposed);
                    else if (sparse)
                        sparse_layer_product(grads.W[0], grads.b[0], dZ, block.sparse, n_out, 1.0, 1.0,
                                             1.0, 1.0);
                    else
                        accumulate_gradient(W_sums(l), b_sums(l), dZ, A_prev, rows, n_out, n_in, 1.0);
                } else {
                    std::vector<std::vector<T>>& block_W = own_share.block_W;
                    std::vector<std::vector<T>>& block_b = own_share.block_b;
                    if (sparse && block.W0_t) {
                        sparse_layer_product(block0_t.data(), block_b[0].data(), dZ, block.sparse, n_out,
                                             T(1), T(0), T(1), T(0), WeightLayout::Transposed);
                        for (std::size_t i = 0; i < n_w0; ++i) sum0_t[i] += double(block0_t[i]);
                        for (std::size_t i = 0; i < n_out; ++i) grads.b[0][i] += double(block_b[0][i]);
                        return;
                    }
                    if (sparse)
                        sparse_layer_product(block_W[0].data(), block_b[0].data(), dZ, block.sparse, n_out,
                                             T(1), T(0), T(1), T(0));
                    else
                        sum_gradient(block_W[l].data(), block_b[l].data(), dZ, A_prev, rows, n_out, n_in);
                    double* W_to = W_sums(l);
                    double* b_to = b_sums(l);
                    for (std::size_t i = 0; i < n_out * n_in; ++i) W_to[i] += double(block_W[l][i]);
                    for (std::size_t i = 0; i < n_out; ++i) b_to[i] += double(block_b[l][i]);
                }
                if (shares == 1 && layer_done && !data.sparse && start + rows == end) {  // the last block: final
                    make_final(l);
                    layer_done(l);
                }
            });
        }
        return total;
    };
    LossStats total;
    if (shares == 1) {
        total = share_sums(0, 0, m);
    } else {
        // each share's products on its own thread (OpenBLAS on one, see share_threads_for); its sums added to
        // share 0's in share order below, so the bits never depend on the threads
        LossStats stats[2];
        const std::size_t half = (m + 1) / 2;
        parallel_for(2, share_threads_for(shape, 2 * rows_max, share_threads), 1,
                     [&](std::size_t first, std::size_t last) {
                         for (std::size_t s = first; s < last; ++s)
                             stats[s] = s == 0 ? share_sums(0, 0, half) : share_sums(1, half, m);
                     },
                     kSolverPoll);
        total = stats[0];
        total += stats[1];
    }
    if (!sum0_t.empty())
        for (std::size_t o = 0; o < shape.sizes[1]; ++o)
            for (std::size_t j = 0; j < shape.n_in(); ++j)
                grads.W[0][o * shape.n_in() + j] = sum0_t[j * shape.sizes[1] + o];
    for (std::size_t l = first_final; l-- > 0;) {
        if (shares == 2) {
            const typename GradientsScratch<T>::Share& other = kept.shares[1];
            for (std::size_t i = 0; i < other.sum_W[l].size(); ++i) grads.W[l][i] += other.sum_W[l][i];
            for (std::size_t i = 0; i < other.sum_b[l].size(); ++i) grads.b[l][i] += other.sum_b[l][i];
        }
        make_final(l);
        if (layer_done) layer_done(l);
    }
    return total;
}

#define L2FAST_INSTANTIATE(T)                                                                                   \
    template EpochResult train_epoch(const Shape&, Params<T>&, const Dataset<T>&, const std::int64_t*,        \
                                     std::size_t, std::size_t, T, T, const std::function<bool()>&,             \
                                     OptimizerRun<T>*, bool, std::optional<T>, std::size_t);                     \
    template StackedEpochResult train_epoch_stacked(const Shape&, std::vector<Params<T>>&, const Dataset<T>&,  \
                                                    const std::int64_t*, std::size_t, std::size_t, T,          \
                                                    const std::vector<T>&, const std::function<bool()>&);      \
    template void predict(const Shape&, const Params<T>&, const T*, std::size_t, T*);                          \
    template void predict(const Shape&, const Params<T>&, const Dataset<T>&, T*);                              \
    template LossStats evaluate(const Shape&, const Params<T>&, const Dataset<T>&);                           \
    template LossStats gradients(const Shape&, const Params<T>&, const Dataset<T>&, double, Params<double>&,    \
                                 GradientsScratch<T>*, const std::function<void(std::size_t)>&, std::size_t);     \
    template std::shared_ptr<GradientsScratch<T>> make_gradients_scratch();                                    \
    template std::size_t times_grown(const GradientsScratch<T>&);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
