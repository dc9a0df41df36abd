// The cuda backend's kernels. python/l2fast/backends/cuda.py compiles this file with NVRTC once per dtype,
// after the lines `typedef float T;` (or double) and `constexpr int THREADS = 256;` (its block size), and
// each kernel mirrors a function of the NumPy reference.
// Activations: 0 identity, 1 relu, 2 tanh, 3 sigmoid. Losses: 0 squared_error, 1 logistic, 2 softmax.
// Element-wise kernels take one element (or one row) per thread and return when past the end. Those whose
// index math divides are templates over the index type I: cuda.py launches the `int` instantiation whenever
// every index fits in 31 bits, as 64-bit division is a slow subroutine on the GPU. The learning rate, the
// decay and the scales that depend on them are read from device memory, so a captured training step
// replays unchanged under a learning-rate schedule.

template <typename I>
__device__ __forceinline__ I thread_index() {
    return I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
}

// exp only ever of -|z|: no overflow on either side.
__device__ __forceinline__ T sigmoid_of(T z) {
    const T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

__device__ __forceinline__ T activate(T z, int act) {
    switch (act) {
        case 1: return z > T(0) ? z : T(0);
        case 2: return tanh(z);
        case 3: return sigmoid_of(z);
        default: return z;
    }
}

// dA/dZ from the activated output A.
__device__ __forceinline__ T derivative_from_output(T a, int act) {
    switch (act) {
        case 1: return a > T(0) ? T(1) : T(0);
        case 2: return T(1) - a * a;
        case 3: return a * (T(1) - a);
        default: return T(1);
    }
}

// dst (rows, cols) <- the rows order[offset .. offset + rows) of src (., cols); offset is read on the
// device, so a captured step gathers the next batch each time it is replayed.
template <typename I>
__global__ void gather_rows(const T* src, const long long* order, const long long* counters, T* dst, I rows,
                            I cols) {
    const I i = thread_index<I>();
    if (i >= rows * cols) return;
    const I r = i / cols, c = i - r * cols;
    dst[i] = src[order[counters[0] + r] * cols + c];
}

extern "C" __global__ void gather_labels(const long long* src, const long long* order, const long long* counters,
                                         long long* dst, long long rows) {
    const long long r = thread_index<long long>();
    if (r >= rows) return;
    dst[r] = src[order[counters[0] + r]];
}

// Z (K models x rows x n) <- act(Z + b[k]): the bias and activation of a layer's GEMM output.
template <typename I>
__global__ void bias_activation(T* Z, const T* bias, I rows, I n, I total, int act) {
    const I i = thread_index<I>();
    if (i >= total) return;
    const I row = i / n, j = i - row * n, k = row / rows;
    Z[i] = activate(Z[i] + bias[k * n + j], act);
}

// dA (total) <- dA * act'(Z), from the activated output A: dL/dZ of a hidden layer.
extern "C" __global__ void activation_backward(T* dA, const T* A, long long total, int act) {
    const long long i = thread_index<long long>();
    if (i >= total) return;
    dA[i] *= derivative_from_output(A[i], act);
}

// One thread per record of K x rows, blocks_per_model blocks for each model: the loss of the logits Z[r]
// (n of them) against the targets of record i = r - k rows; Z[r] is overwritten with dL/dZ = yhat - y. Each
// block sums its records' losses (and right answers) and adds them to loss_sum[k] (and correct[k]) with one
// atomic add each. With `weighted`, record i's loss and dL/dZ are scaled by its sample weight weights[i].
extern "C" __global__ void loss_gradient(T* Z, const T* y_values, const long long* y_labels, const T* weights,
                                         int weighted, long long rows, int blocks_per_model, long long n, int loss,
                                         double* loss_sum, unsigned long long* correct) {
    __shared__ double block_loss[THREADS];
    __shared__ unsigned block_right[THREADS];
    const unsigned k = blockIdx.x / unsigned(blocks_per_model);
    const long long i = (long long)(blockIdx.x - k * unsigned(blocks_per_model)) * THREADS + threadIdx.x;
    double record_loss = 0.0;
    bool right = false;
    if (i < rows) {
        T* z = Z + ((long long)k * rows + i) * n;
        if (loss == 2) {
            const long long label = y_labels[i];
            T z_max = z[0];
            long long best = 0;
            for (long long j = 1; j < n; ++j)
                if (z[j] > z_max) {
                    z_max = z[j];
                    best = j;
                }
            T total = T(0);
            for (long long j = 0; j < n; ++j) total += exp(z[j] - z_max);
            record_loss = (log(total) + z_max) - z[label];
            right = best == label;
            for (long long j = 0; j < n; ++j) z[j] = exp(z[j] - z_max) / total - (j == label ? T(1) : T(0));
        } else if (loss == 1) {
            const T x = z[0], t = y_values[i];
            record_loss = (x > T(0) ? x : T(0)) - t * x + log1p(exp(-fabs(x)));
            const T p = sigmoid_of(x);
            right = (p >= T(0.5)) == (t == T(1));
            z[0] = p - t;
        } else {
            T sum = T(0);
            for (long long j = 0; j < n; ++j) {
                const T d = z[j] - y_values[i * n + j];
                sum += d * d;
                z[j] = d;
            }
            record_loss = T(0.5) * sum;
        }
        if (weighted) {
            const T w = weights[i];
            record_loss *= double(w);
            for (long long j = 0; j < n; ++j) z[j] *= w;
        }
    }
    block_loss[threadIdx.x] = record_loss;
    block_right[threadIdx.x] = right ? 1u : 0u;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (int(threadIdx.x) < stride) {
            block_loss[threadIdx.x] += block_loss[threadIdx.x + stride];
            block_right[threadIdx.x] += block_right[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        atomicAdd(loss_sum + k, block_loss[0]);
        if (block_right[0]) atomicAdd(correct + k, (unsigned long long)block_right[0]);
    }
}

// The network's output from the last layer's logits Z (rows x n), in place: softmax rows or sigmoid.
extern "C" __global__ void output_activation(T* Z, long long rows, long long n, int loss) {
    const long long r = thread_index<long long>();
    if (r >= rows) return;
    T* z = Z + r * n;
    if (loss == 1) {
        z[0] = sigmoid_of(z[0]);
        return;
    }
    T z_max = z[0];
    for (long long j = 1; j < n; ++j) z_max = z[j] > z_max ? z[j] : z_max;
    T total = T(0);
    for (long long j = 0; j < n; ++j) total += exp(z[j] - z_max);
    for (long long j = 0; j < n; ++j) z[j] = exp(z[j] - z_max) / total;
}

// out[k, j] <- beta out[k, j] + scale[0] sum_i dZ[k, i, j] for K models of rows x n: the bias step (scale
// -lr/rows, beta 1), a mean bias gradient (1/rows, 0) or a whole-data sum (1/m, 1). Each block sums a tile
// of `width` adjacent columns (a power of two, at most 32: a warp reads consecutive addresses) of one
// model, its THREADS / width lanes each taking every lanes-th row, then adds the lanes up in shared memory.
extern "C" __global__ void column_sums(T* out, const T* dZ, long long rows, int n, int width, const T* scale,
                                       T beta) {
    __shared__ T partial[THREADS];
    const int tiles = (n + width - 1) / width, lanes = THREADS / width;
    const int k = int(blockIdx.x) / tiles, tile = int(blockIdx.x) - k * tiles;
    const int lane = int(threadIdx.x) / width, column = tile * width + (int(threadIdx.x) & (width - 1));
    T s = T(0);
    if (column < n) {
        const T* values = dZ + (long long)k * rows * n + column;
        for (long long i = lane; i < rows; i += lanes) s += values[i * n];
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int stride = lanes / 2; stride > 0; stride >>= 1) {
        if (lane < stride) partial[threadIdx.x] += partial[threadIdx.x + stride * width];
        __syncthreads();
    }
    if (lane == 0 && column < n) {
        const long long o = (long long)k * n + column;
        const T total = scale[0] * partial[threadIdx.x];
        out[o] = beta == T(0) ? total : beta * out[o] + total;
    }
}

// W (K x per_model) <- keep[k] W: each stacked model's weight decay before a shared GEMM with beta = 1.
template <typename I>
__global__ void scale_models(T* W, const T* keep, I per_model, I total) {
    const I i = thread_index<I>();
    if (i >= total) return;
    W[i] *= keep[i / per_model];
}

// One momentum step on P (n) with rates = {lr, decay}: python/l2fast/optim.py gives the formulas.
extern "C" __global__ void momentum_step(T* P, const T* G, T* V, long long n, const T* rates, T mu, int nesterov,
                                         int decoupled) {
    const long long i = thread_index<long long>();
    if (i >= n) return;
    const T lr = rates[0], decay = rates[1];
    const T g = decoupled ? G[i] : G[i] + decay * P[i];
    const T v = mu * V[i] + g;
    V[i] = v;
    const T keep = decoupled ? T(1) - lr * decay : T(1);
    P[i] = keep * P[i] - lr * (nesterov ? g + mu * v : v);
}

// One Adam step on P (n) with rates = {lr, decay}; its number t is counters[1] + 1, read on the device so
// that a replayed step counts on. eps_on_v: eps is added to sqrt(V), not to sqrt(V / (1 - b2^t)) (scikit-learn's
// Adam, l2fast.optim.Adam(eps_on_v=True)), which is eps / sqrt(1 - b2^t) in this form.
extern "C" __global__ void adam_step(T* P, const T* G, T* M, T* V, long long n, const T* rates, double beta1,
                                     double beta2, T eps, int decoupled, int eps_on_v, const long long* counters) {
    const long long i = thread_index<long long>();
    if (i >= n) return;
    const T lr = rates[0], decay = rates[1];
    const double t = (double)(counters[1] + 1);
    const T step_size = (T)((double)lr / (1.0 - pow(beta1, t)));
    const T bc2_sqrt = (T)sqrt(1.0 - pow(beta2, t));
    const T g = decoupled ? G[i] : G[i] + decay * P[i];
    const T m = (T)beta1 * M[i] + (T)(1.0 - beta1) * g;
    const T v = (T)beta2 * V[i] + (T)(1.0 - beta2) * (g * g);
    M[i] = m;
    V[i] = v;
    const T keep = decoupled ? T(1) - lr * decay : T(1);
    const T eps_t = eps_on_v ? eps / bc2_sqrt : eps;
    P[i] = keep * P[i] - step_size * m / (sqrt(v) / bc2_sqrt + eps_t);
}

// out[0] += sum_i W[i]^2 over W (n), in double: a layer's squared weight norm before its step (scikit-learn's MLP
// adds alpha/2 ||W||^2 to each batch's loss). One entry per thread; each block adds its threads' squares up in
// shared memory and its total into out atomically.
extern "C" __global__ void sum_squares(const T* W, long long n, double* out) {
    __shared__ double partial[THREADS];
    const long long i = thread_index<long long>();
    const double w = i < n ? (double)W[i] : 0.0;
    partial[threadIdx.x] = w * w;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}

// After each step: the next batch starts rows further on, and one more step has been taken.
extern "C" __global__ void advance_counters(long long* counters, long long rows) {
    if (thread_index<long long>() != 0) return;
    counters[0] += rows;
    counters[1] += 1;
}
