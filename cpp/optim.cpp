// The fused optimizer steps: each element of P, G and the state is read and written once per step.
#include "optim.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "blas.hpp"
#include "parallel.hpp"
#include "update.hpp"

namespace l2fast {

Method parse_method(const std::string& name) {
    if (name == "sgd") return Method::Sgd;
    if (name == "momentum") return Method::Momentum;
    if (name == "adam") return Method::Adam;
    throw std::invalid_argument("optimizer: expected 'sgd', 'momentum' or 'adam', got '" + name + "'");
}

namespace {

void check_unit(double v, const char* name) {
    if (!(v >= 0.0 && v < 1.0))
        throw std::invalid_argument(std::string(name) + " must be in [0, 1), got " + std::to_string(v));
}

// One entry of each optimizer's step; the ranges below run it over a share of the tensor.
template <class T>
struct MomentumEntry {
    T* P;
    const T* G;
    T* V;
    T lr, coupled, keep, mu;
    bool nesterov;

    // Steps entry i and returns its value before the step.
    T operator()(std::size_t i) const {
        const T p = P[i];
        const T g = G[i] + coupled * p;
        const T v = mu * V[i] + g;
        V[i] = v;
        P[i] = keep * p - lr * (nesterov ? g + mu * v : v);
        return p;
    }
};

template <class T>
struct AdamEntry {
    T* P;
    const T* G;
    T* M;
    T* V;
    T coupled, keep, b1, one_minus_b1, b2, one_minus_b2, scaled_step, scaled_eps;

    T operator()(std::size_t i) const {
        const T p = P[i];
        const T g = G[i] + coupled * p;
        const T m = b1 * M[i] + one_minus_b1 * g;
        const T v = b2 * V[i] + one_minus_b2 * (g * g);
        M[i] = m;
        V[i] = v;
        // step_size m / (sqrt(v) / bc2_sqrt + eps), with bc2_sqrt moved up: one division per entry.
        P[i] = keep * p - scaled_step * m / (std::sqrt(v) + scaled_eps);
        return p;
    }
};

// entry by value: a local copy, whose scalars the stores into P cannot alias, so they stay in registers.
template <class Entry>
L2FAST_VECTOR_CLONES void step_range(const Entry entry, std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) entry(i);
}

// step_range returning sum P_i^2 of the values the step read (omp simd: the sum's order may change, the
// entries' values may not).
template <class Entry>
L2FAST_VECTOR_CLONES double step_range_summed(const Entry entry, std::size_t begin, std::size_t end) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::size_t i = begin; i < end; ++i) {
        const double p = double(entry(i));
        s += p * p;
    }
    return s;
}

// Runs entry over P's n entries in shares on up to `threads` threads; adds sum P_i^2 before the step to
// *sum_squares when given.
template <class Entry>
void run_step(const Entry& entry, std::size_t n, std::size_t threads, std::size_t min_share, double* sum_squares) {
    if (sum_squares) {
        *sum_squares += parallel_sum(n, threads, min_share,
                                     [&](std::size_t begin, std::size_t end) { return step_range_summed(entry, begin, end); });
        return;
    }
    parallel_for(n, threads, min_share, [&](std::size_t begin, std::size_t end) { step_range(entry, begin, end); });
}

}  // namespace

void check_optimizer(const Optimizer& opt) {
    check_unit(opt.momentum, "momentum");
    check_unit(opt.beta1, "beta1");
    check_unit(opt.beta2, "beta2");
    if (!(std::isfinite(opt.eps) && opt.eps > 0))
        throw std::invalid_argument("eps must be a finite number > 0, got " + std::to_string(opt.eps));
}

template <class T>
void inplace_optimizer_step(const Optimizer& opt, std::int64_t step, T* P, const T* G, T* S1, T* S2, std::size_t n,
                            T lr, T decay, double* sum_squares) {
    // Tensors of more than 2 x 128K entries take every thread OpenBLAS would: below that, waking a
    // sleeping helper costs about what it saves (measured on Adam's step, the costliest per entry).
    const std::size_t threads = std::size_t(std::max(blas::num_threads(), 1)), min_share = std::size_t(1) << 17;
    const T coupled = opt.decoupled ? T(0) : decay;
    const T keep = opt.decoupled ? T(1) - lr * decay : T(1);
    switch (opt.method) {
        case Method::Sgd:  // g = G + decay P, P <- P - lr g: the standalone L2 update
            inplace_l2_update(P, G, n, lr, decay, sum_squares);
            return;
        case Method::Momentum:
            run_step(MomentumEntry<T>{P, G, S1, lr, coupled, keep, T(opt.momentum), opt.nesterov}, n, threads,
                     min_share, sum_squares);
            return;
        case Method::Adam: {
            const double t = double(step);
            const double bc2_sqrt = std::sqrt(1.0 - std::pow(opt.beta2, t));
            // eps_on_v: scikit-learn's rate lr sqrt(1 - b2^t) / (1 - b1^t), multiplied in its order, and eps as given
            const T scaled_step = opt.eps_on_v ? T(double(lr) * bc2_sqrt / (1.0 - std::pow(opt.beta1, t)))
                                               : T(double(lr) / (1.0 - std::pow(opt.beta1, t)) * bc2_sqrt);
            const T scaled_eps = opt.eps_on_v ? T(opt.eps) : T(opt.eps * bc2_sqrt);
            run_step(AdamEntry<T>{P, G, S1, S2, coupled, keep, T(opt.beta1), T(1.0 - opt.beta1), T(opt.beta2),
                                  T(1.0 - opt.beta2), scaled_step, scaled_eps},
                     n, threads, min_share, sum_squares);
            return;
        }
    }
}

template void inplace_optimizer_step(const Optimizer&, std::int64_t, float*, const float*, float*, float*,
                                     std::size_t, float, float, double*);
template void inplace_optimizer_step(const Optimizer&, std::int64_t, double*, const double*, double*, double*,
                                     std::size_t, double, double, double*);

}  // namespace l2fast
