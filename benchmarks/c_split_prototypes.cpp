// Config C's step (784-1024-1024-10, batch 256, float32, 60 000 records) cut in two parts one OpenBLAS thread each,
// against the same products whole on OpenBLAS's two threads (gemm_only_epoch_seconds, the yardstick): the two
// prototypes behind benchmarks/README.md's Targets, session 21. Neither is in the library; both were slower.
//   units:  every layer cut by units, four hand-offs a step: a part's rows of W[0] and W[1] forward, its columns of
//           W[2] and W[1] backward (dZ's columns with the old ones, then their step), its rows of W[0]'s step, its
//           half of the next batch gathered; the output layer between the forward and backward halves.
//   hybrid: records for the forward pass and the input gradients (each part's half of the batch through every layer,
//           no hand-off), units for the weight steps (each part's rows of every W): two hand-offs a step.
// The products, bias and ReLU passes and gathers are the library's (blas::gemm, its k sliced at 256); the loss is a
// stand-in of the same size.
//
//   cmake -S cpp -B /tmp/cppt -DPython_EXECUTABLE=$PWD/.venv/bin/python && cmake --build /tmp/cppt
//   OB=$(.venv/bin/python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
//   g++ -O2 -std=gnu++17 -Icpp -isystem $OB/../include benchmarks/c_split_prototypes.cpp
//       /tmp/cppt/libl2fast_kernels.a -L$OB -lscipy_openblas -Wl,-rpath,$OB -lmvec -lpthread -o /tmp/csplit
//   /tmp/csplit units|hybrid EPOCHS
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "activations.hpp"
#include "blas.hpp"
#include "limits.hpp"
#include "network.hpp"
#include "parallel.hpp"

using namespace l2fast;
using T = float;

namespace {

constexpr std::size_t kSizes[4] = {784, 1024, 1024, 10}, kRecords = 60000, kBatch = 256, kSteps = kRecords / kBatch;
constexpr T kAlpha = -1e-6f;  // a tiny step, so that the weights stay bounded

std::vector<T> random(std::size_t n, std::mt19937& rng) {
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    std::vector<T> v(n);
    for (T& x : v) x = dist(rng);
    return v;
}

struct Net {
    std::vector<T> X;
    std::vector<std::int64_t> order;
    std::vector<std::vector<T>> W, b, A, dZ;
    std::vector<T> x[2];  // gathered batches

    Net() {
        std::mt19937 rng(1);
        X = random(kRecords * kSizes[0], rng);
        for (std::size_t i = 0; i < kRecords; ++i) order.push_back(std::int64_t((i * 7919) % kRecords));
        for (std::size_t l = 0; l < 3; ++l) {
            W.push_back(random(kSizes[l + 1] * kSizes[l], rng));
            b.push_back(random(kSizes[l + 1], rng));
            A.emplace_back(kBatch * kSizes[l + 1]);
            dZ.emplace_back(kBatch * kSizes[l + 1]);
        }
        for (auto& v : x) v.resize(kBatch * kSizes[0]);
    }

    // Rows r0..r1-1 of step s's batch into x[s % 2].
    void gather(std::size_t s, std::size_t r0, std::size_t r1) {
        if (s >= kSteps) return;
        for (std::size_t r = r0; r < r1; ++r)
            std::memcpy(x[s % 2].data() + r * kSizes[0], X.data() + order[s * kBatch + r] * kSizes[0],
                        kSizes[0] * sizeof(T));
    }

    // The loss's stand-in: dL/dZ of the output rows r0..r1-1.
    void loss(std::size_t r0, std::size_t r1) {
        for (std::size_t i = r0 * kSizes[3]; i < r1 * kSizes[3]; ++i) dZ[2][i] = A[2][i] * 1e-3f;
    }
};

std::size_t cut(std::size_t n, std::size_t p) { return n * p / 2; }

// Four phases a step (F0, F1, B2, B1), the output layer after F1; phase 0 gathers step 0.
void units_part(Net& net, std::size_t phase, std::size_t p) {
    if (phase == 0) return net.gather(0, cut(kBatch, p), cut(kBatch, p + 1));
    const std::size_t s = (phase - 1) / 4, k = (phase - 1) % 4;
    const T* x = net.x[s % 2].data();
    if (k < 2) {  // layer k's units forward
        const std::size_t n_in = kSizes[k], n_out = kSizes[k + 1], u0 = cut(n_out, p), u1 = cut(n_out, p + 1);
        T* out = net.A[k].data();
        blas::gemm(blas::Op::N, blas::Op::T, int(kBatch), int(u1 - u0), int(n_in), T(1), k == 0 ? x : net.A[0].data(),
                   int(n_in), net.W[k].data() + u0 * n_in, int(n_in), T(0), out + u0, int(n_out));
        for (std::size_t r = 0; r < kBatch; ++r)
            inplace_bias_activation(out + r * n_out + u0, net.b[k].data() + u0, 1, u1 - u0, Activation::Relu);
        return;
    }
    // layer l's columns (the units of layer l - 1) backward: dZ below with the old columns, then their step
    const std::size_t l = k == 2 ? 2 : 1, n_in = kSizes[l], n_out = kSizes[l + 1];
    const std::size_t u0 = cut(n_in, p), units = cut(n_in, p + 1) - u0;
    T* below = net.dZ[l - 1].data() + u0;
    const T* A = net.A[l - 1].data() + u0;
    blas::gemm(blas::Op::N, blas::Op::N, int(kBatch), int(units), int(n_out), T(1), net.dZ[l].data(), int(n_out),
               net.W[l].data() + u0, int(n_in), T(0), below, int(n_in));
    blas::gemm(blas::Op::T, blas::Op::N, int(n_out), int(units), int(kBatch), kAlpha, net.dZ[l].data(), int(n_out), A,
               int(n_in), T(1), net.W[l].data() + u0, int(n_in));
    for (std::size_t r = 0; r < kBatch; ++r)
        inplace_activation_backward(below + r * n_in, A + r * n_in, units, Activation::Relu);
    blas::sum_rows(int(kBatch), int(units), kAlpha, below, int(n_in), T(1), net.b[l - 1].data() + u0);
    if (l == 1) {  // W[0]'s rows of these units, then the next batch's half
        blas::gemm(blas::Op::T, blas::Op::N, int(units), int(kSizes[0]), int(kBatch), kAlpha, below, int(n_in), x,
                   int(kSizes[0]), T(1), net.W[0].data() + u0 * kSizes[0], int(kSizes[0]));
        net.gather(s + 1, cut(kBatch, p), cut(kBatch, p + 1));
    }
}

void units_output(Net& net) {
    blas::gemm(blas::Op::N, blas::Op::T, int(kBatch), int(kSizes[3]), int(kSizes[2]), T(1), net.A[1].data(),
               int(kSizes[2]), net.W[2].data(), int(kSizes[2]), T(0), net.A[2].data(), int(kSizes[3]));
    net.loss(0, kBatch);
    blas::sum_rows(int(kBatch), int(kSizes[3]), kAlpha, net.dZ[2].data(), int(kSizes[3]), T(1), net.b[2].data());
}

double units_epoch(Net& net, std::size_t threads) {
    const auto start = std::chrono::steady_clock::now();
    const std::size_t phases = 1 + 4 * kSteps;
    for (std::size_t done = 0; done < phases;) {
        const std::size_t first = done;
        done += parallel_steps(
            phases - done, threads, [](std::size_t) { return std::size_t(2); },
            [&](std::size_t t, std::size_t p) { units_part(net, first + t, p); },
            [&](std::size_t t) {
                if (first + t > 0 && (first + t - 1) % 4 == 1) units_output(net);
                return true;
            });
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Two phases a step: the part's records through every layer and back (input gradients), then its units' steps.
void hybrid_part(Net& net, std::size_t phase, std::size_t p) {
    const std::size_t s = phase / 2;
    const T* x = net.x[s % 2].data();
    if (phase % 2 == 0) {
        const std::size_t r0 = cut(kBatch, p), rows = cut(kBatch, p + 1) - r0;
        net.gather(s, r0, r0 + rows);
        for (std::size_t l = 0; l < 3; ++l) {
            const T* in = l == 0 ? x + r0 * kSizes[0] : net.A[l - 1].data() + r0 * kSizes[l];
            T* out = net.A[l].data() + r0 * kSizes[l + 1];
            blas::gemm(blas::Op::N, blas::Op::T, int(rows), int(kSizes[l + 1]), int(kSizes[l]), T(1), in,
                       int(kSizes[l]), net.W[l].data(), int(kSizes[l]), T(0), out, int(kSizes[l + 1]));
            inplace_bias_activation(out, net.b[l].data(), rows, kSizes[l + 1],
                                    l == 2 ? Activation::Identity : Activation::Relu);
        }
        net.loss(r0, r0 + rows);
        for (std::size_t l = 2; l > 0; --l) {
            T* below = net.dZ[l - 1].data() + r0 * kSizes[l];
            blas::gemm(blas::Op::N, blas::Op::N, int(rows), int(kSizes[l]), int(kSizes[l + 1]), T(1),
                       net.dZ[l].data() + r0 * kSizes[l + 1], int(kSizes[l + 1]), net.W[l].data(), int(kSizes[l]),
                       T(0), below, int(kSizes[l]));
            inplace_activation_backward(below, net.A[l - 1].data() + r0 * kSizes[l], rows * kSizes[l],
                                        Activation::Relu);
        }
        return;
    }
    for (std::size_t l = 3; l-- > 0;) {
        const std::size_t u0 = cut(kSizes[l + 1], p), units = cut(kSizes[l + 1], p + 1) - u0;
        blas::gemm(blas::Op::T, blas::Op::N, int(units), int(kSizes[l]), int(kBatch), kAlpha, net.dZ[l].data() + u0,
                   int(kSizes[l + 1]), l == 0 ? x : net.A[l - 1].data(), int(kSizes[l]), T(1),
                   net.W[l].data() + u0 * kSizes[l], int(kSizes[l]));
        blas::sum_rows(int(kBatch), int(units), kAlpha, net.dZ[l].data() + u0, int(kSizes[l + 1]), T(1),
                       net.b[l].data() + u0);
    }
}

double hybrid_epoch(Net& net, std::size_t threads) {
    const auto start = std::chrono::steady_clock::now();
    const std::size_t phases = 2 * kSteps;
    for (std::size_t done = 0; done < phases;) {
        const std::size_t first = done;
        done += parallel_steps(
            phases - done, threads, [](std::size_t) { return std::size_t(2); },
            [&](std::size_t t, std::size_t p) { hybrid_part(net, first + t, p); }, [](std::size_t) { return true; });
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "units";
    const int epochs = argc > 2 ? std::atoi(argv[2]) : 3;
    if (mode != "units" && mode != "hybrid") {
        std::fprintf(stderr, "usage: %s units|hybrid [EPOCHS]\n", argv[0]);
        return 2;
    }
    Net net;
    Shape shape;
    shape.sizes.assign(kSizes, kSizes + 4);
    for (int e = 0; e < epochs; ++e) {  // the contenders alternate
        blas::set_num_threads(1);
        const double cut_s = mode == "units" ? units_epoch(net, 2) : hybrid_epoch(net, 2);
        blas::set_num_threads(2);
        const double whole_s = gemm_only_epoch_seconds<float>(shape, kRecords, kBatch);
        std::printf("%s: %.3f s, GEMMs alone on OpenBLAS's two threads %.3f s: %.3f x\n", mode.c_str(), cut_s, whole_s,
                    cut_s / whole_s);
    }
}
