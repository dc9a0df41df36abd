// Config A's linear epoch (cpp/linear_step.cpp) split into what its rows' reads cost and what its compute costs:
// linear_sgd_epoch on 100k x 100 float32 (2 MiB aligned, transparent huge pages asked for, as NumPy's arrays get
// them), batch 256, in three orders of the same length: shuffled (the epoch), in order (the hardware prefetchers
// stream X), and a shuffled order of only 256 distinct records (rows in L1/L2: the compute alone). Thread CPU time,
// best and median of the epochs; then _core.shuffled_read_seconds's floor. benchmarks/README.md, A (session 12).
//
//   cmake -S cpp -B /tmp/cppt -DPython_EXECUTABLE=$PWD/.venv/bin/python && cmake --build /tmp/cppt
//   OB=$(.venv/bin/python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
//   g++ -O2 -std=gnu++17 -Icpp -isystem $OB/../include benchmarks/linear_epoch_parts.cpp \
//       /tmp/cppt/libl2fast_kernels.a -L$OB -lscipy_openblas -Wl,-rpath,$OB -lmvec -lpthread -o /tmp/parts
//   /tmp/parts K THREADS EPOCHS     (K = 1: logistic 100 -> 1, K = 10: softmax 100 -> 10)
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "blas.hpp"
#include "linear_step.hpp"
#include "network.hpp"

using namespace l2fast;

static double thread_ms() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

int main(int argc, char** argv) {
    const int k = argc > 1 ? std::atoi(argv[1]) : 1, threads = argc > 2 ? std::atoi(argv[2]) : 1;
    const int epochs = argc > 3 ? std::atoi(argv[3]) : 15;
    const std::size_t m = 100000, n = 100, bytes = m * n * sizeof(float), huge = std::size_t(1) << 21;
    float* X = static_cast<float*>(std::aligned_alloc(huge, (bytes + huge - 1) / huge * huge));
    madvise(X, bytes, MADV_HUGEPAGE);
    std::mt19937_64 rng(0);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < m * n; ++i) X[i] = normal(rng);
    std::vector<float> y_values(m);
    std::vector<std::int64_t> y_labels(m), order(m);
    for (std::size_t i = 0; i < m; ++i) {
        y_values[i] = float(X[i * n] + X[i * n + 1] > 0);
        y_labels[i] = std::int64_t(rng() % std::uint64_t(k));
    }
    const Shape shape{{n, std::size_t(k)}, Activation::Identity, k == 1 ? Loss::Logistic : Loss::Softmax};
    const Dataset<float> data{X, m, k == 1 ? y_values.data() : nullptr, k == 1 ? nullptr : y_labels.data(), nullptr};
    blas::set_num_threads(threads);
    const char* names[] = {"shuffled", "in order", "256 records (cached)"};
    for (int mode = 0; mode < 3; ++mode) {
        std::vector<float> W(std::size_t(k) * n, 0.0f), b(std::size_t(k), 0.0f);
        Params<float> params{{W.data()}, {b.data()}};
        std::vector<double> ms;
        for (int e = 0; e < epochs; ++e) {
            for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(mode == 2 ? i % 256 : i);
            if (mode != 1) std::shuffle(order.begin(), order.end(), rng);
            const double t0 = thread_ms();
            linear_sgd_epoch<float>(shape, params, data, order.data(), m, 256, 0.01f, 1e-5f, {}, false);
            ms.push_back(thread_ms() - t0);
        }
        std::sort(ms.begin(), ms.end());
        std::printf("100 -> %d, %d thread(s), %s: thread CPU min %.2f median %.2f ms\n", k, threads, names[mode], ms[0],
                    ms[ms.size() / 2]);
    }
    std::printf("floor (shuffled_read_seconds, best of 7, wall): %.2f ms\n", shuffled_read_seconds(X, m, n, 7) * 1e3);
    std::free(X);
}
