// Kernel tests without Python: each fused kernel against a plain loop version of its formula.
// Exits non-zero when any check fails, printing each failure.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <sched.h>

#include "activations.hpp"
#include "blas.hpp"
#include "blas_threads.hpp"
#include "dense.hpp"
#include "linear.hpp"
#include "linear_step.hpp"
#include "losses.hpp"
#include "network.hpp"
#include "newton.hpp"
#include "optim.hpp"
#include "parallel.hpp"
#include "shuffle.hpp"
#include "small_dense.hpp"
#include "sparse.hpp"
#include "update.hpp"

using namespace l2fast;

static int failures = 0;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            ++failures;                                                         \
        }                                                                       \
    } while (0)

static std::vector<double> randn(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
    std::normal_distribution<double> dist(0.0, scale);
    std::vector<double> v(n);
    for (double& x : v) x = dist(rng);
    return v;
}

static std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

static double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    return worst;
}

static void expect_throws(const std::function<void()>& f, const char* what) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return;
    }
    std::printf("FAILED: %s did not throw std::invalid_argument\n", what);
    ++failures;
}

static void test_dense_forward() {
    std::mt19937_64 rng(1);
    const std::size_t batch = 5, n_in = 4, n_out = 3;
    auto A = randn(batch * n_in, rng), W = randn(n_out * n_in, rng), b = randn(n_out, rng);
    for (Activation act : {Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid}) {
        std::vector<double> out(batch * n_out), want(batch * n_out);
        dense_forward(A.data(), batch, n_in, W.data(), 1.0, b.data(), n_out, act, out.data());
        for (std::size_t i = 0; i < batch; ++i)
            for (std::size_t j = 0; j < n_out; ++j) {
                double z = b[j];
                for (std::size_t k = 0; k < n_in; ++k) z += A[i * n_in + k] * W[j * n_in + k];
                const double a[] = {z, z > 0 ? z : 0, std::tanh(z), 1 / (1 + std::exp(-z))};
                want[i * n_out + j] = a[int(act)];
            }
        CHECK(max_abs_diff(out, want) < 1e-14);
    }
}

static void test_activation_backward_is_the_derivative() {
    std::mt19937_64 rng(2);
    auto Z = randn(50, rng, 2.0);
    const double h = 1e-6;
    for (Activation act : {Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid}) {
        std::vector<double> zero(1, 0.0);
        for (double z : Z) {
            double A = z, plus = z + h, minus = z - h;
            inplace_bias_activation(&A, zero.data(), 1, 1, act);
            inplace_bias_activation(&plus, zero.data(), 1, 1, act);
            inplace_bias_activation(&minus, zero.data(), 1, 1, act);
            double d = 1.0;
            inplace_activation_backward(&d, &A, 1, act);
            CHECK(std::abs(d - (plus - minus) / (2 * h)) < 1e-6);
        }
    }
}

// Three steps of the fused kernel (scale carried, folded back at the end) against the plain formula
// W <- W - lr (mean dL/dW + (lam/m) W): a small decay (the scale path), a large one (the scale and the
// beta paths in turn) and one past 1 - lr lam/m < 0 (the beta path only).
static void test_fused_step_equals_the_unfused_formula() {
    std::mt19937_64 rng(3);
    const std::size_t batch = 7, n_in = 6, n_out = 4;
    for (double lam_over_m : {0.05, 1.5, 4.0}) {
        auto W = randn(n_out * n_in, rng), b = randn(n_out, rng);
        std::vector<double> W_want = W, b_want = b;
        const double lr = 0.3;
        double scale = 1.0;
        for (int step = 0; step < 3; ++step) {
            auto dZ = randn(batch * n_out, rng), A = randn(batch * n_in, rng);
            for (std::size_t j = 0; j < n_out; ++j) {
                double gb = 0;
                for (std::size_t i = 0; i < batch; ++i) gb += dZ[i * n_out + j];
                b_want[j] -= lr * gb / batch;
                for (std::size_t k = 0; k < n_in; ++k) {
                    double g = 0;
                    for (std::size_t i = 0; i < batch; ++i) g += dZ[i * n_out + j] * A[i * n_in + k];
                    W_want[j * n_in + k] -= lr * (g / batch + lam_over_m * W_want[j * n_in + k]);
                }
            }
            inplace_fused_l2_step(W.data(), scale, b.data(), dZ.data(), A.data(), batch, n_out, n_in,
                                  lr, lam_over_m);
            CHECK(scale >= 0.5 && scale <= 1.0);
        }
        CHECK(lam_over_m < 4.0 ? scale < 1.0 : scale == 1.0);
        inplace_apply_scale(W.data(), scale, W.size());
        CHECK(scale == 1.0);
        CHECK(max_abs_diff(W, W_want) < 1e-14);
        CHECK(max_abs_diff(b, b_want) < 1e-14);
    }
}

static void test_gemm_takes_the_gemv_path_for_single_rows_and_columns_correctly() {
    std::mt19937_64 rng(6);
    // (m, n, k) with m or n equal to 1, every transpose combination, against a plain triple loop.
    for (auto [m, n, k] : {std::array<int, 3>{5, 1, 4}, {1, 5, 4}, {1, 1, 3}, {3, 4, 2}}) {
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb) {
                auto A = randn(std::size_t(m * k), rng), B = randn(std::size_t(k * n), rng);
                auto C = randn(std::size_t(m * n), rng);
                std::vector<double> want = C;
                const int lda = ta ? m : k, ldb = tb ? k : n;
                for (int i = 0; i < m; ++i)
                    for (int j = 0; j < n; ++j) {
                        double acc = 0;
                        for (int p = 0; p < k; ++p)
                            acc += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
                        want[i * n + j] = 0.5 * acc + 0.25 * want[i * n + j];
                    }
                blas::gemm(ta ? blas::Op::T : blas::Op::N, tb ? blas::Op::T : blas::Op::N, m, n, k, 0.5, A.data(),
                           lda, B.data(), ldb, 0.25, C.data(), n);
                CHECK(max_abs_diff(C, want) < 1e-14);
            }
    }
}

static void test_loss_gradient_is_the_derivative_of_the_loss() {
    std::mt19937_64 rng(4);
    const std::size_t rows = 3, cols = 4;
    const std::vector<std::int64_t> labels = {2, 0, 3};
    auto values = randn(rows * cols, rng);
    const std::vector<double> binary = {1, 0, 1};
    for (Loss loss : {Loss::SquaredError, Loss::Logistic, Loss::Softmax}) {
        const std::size_t c = loss == Loss::Logistic ? 1 : cols;
        Targets<double> y;
        y.labels = labels.data();
        y.values = loss == Loss::Logistic ? binary.data() : values.data();
        auto Z = randn(rows * c, rng);
        std::vector<double> grad = Z;
        inplace_loss_gradient(grad.data(), rows, c, loss, y);
        const double h = 1e-6;
        for (std::size_t k = 0; k < Z.size(); ++k) {
            std::vector<double> plus = Z, minus = Z;
            plus[k] += h;
            minus[k] -= h;
            const double lp = inplace_loss_gradient(plus.data(), rows, c, loss, y).loss_sum;
            const double lm = inplace_loss_gradient(minus.data(), rows, c, loss, y).loss_sum;
            CHECK(std::abs(grad[k] - (lp - lm) / (2 * h)) < 1e-6);
        }
    }
}

static void test_sample_weights_scale_each_record() {
    std::mt19937_64 rng(14);
    const std::size_t rows = 4, cols = 3;
    const std::vector<std::int64_t> labels = {2, 0, 1, 1};
    const std::vector<double> binary = {1, 0, 0, 1}, weights = {0.5, 2.0, 0.0, 1.0}, ones(rows, 1.0);
    auto values = randn(rows * cols, rng);
    for (Loss loss : {Loss::SquaredError, Loss::Logistic, Loss::Softmax}) {
        const std::size_t c = loss == Loss::Logistic ? 1 : cols;
        Targets<double> y;
        y.labels = labels.data();
        y.values = loss == Loss::Logistic ? binary.data() : values.data();
        const auto Z = randn(rows * c, rng);
        std::vector<double> plain = Z, weighted = Z, unit = Z;
        const LossStats s = inplace_loss_gradient(plain.data(), rows, c, loss, y);
        Targets<double> yw = y;
        yw.weights = weights.data();
        const LossStats sw = inplace_loss_gradient(weighted.data(), rows, c, loss, yw);
        yw.weights = ones.data();
        const LossStats s1 = inplace_loss_gradient(unit.data(), rows, c, loss, yw);
        CHECK(s1.loss_sum == s.loss_sum && unit == plain);  // weights of 1: bit-identical
        CHECK(sw.correct == s.correct);                     // counts stay unweighted
        double expected = 0.0;
        for (std::size_t i = 0; i < rows; ++i) {
            std::vector<double> one(Z.begin() + i * c, Z.begin() + (i + 1) * c);
            Targets<double> yi = y;
            yi.row0 = i;
            expected += weights[i] * inplace_loss_gradient(one.data(), 1, c, loss, yi).loss_sum;
            for (std::size_t k = 0; k < c; ++k) CHECK(weighted[i * c + k] == weights[i] * plain[i * c + k]);
        }
        CHECK(std::abs(sw.loss_sum - expected) < 1e-12);
    }
}

static void test_float_gradients_are_summed_in_double() {
    std::mt19937_64 rng(15);
    const std::size_t m = 5000, n_in = 4;  // three blocks of rows
    Shape shape{{n_in, 6, 1}, Activation::Tanh, Loss::Logistic};
    auto X = randn(m * n_in, rng);
    std::vector<double> y(m);
    for (std::size_t i = 0; i < m; ++i) y[i] = X[i * n_in] > 0;
    auto W0 = randn(6 * n_in, rng, 0.5), W1 = randn(6, rng, 0.5);
    std::vector<double> b0(6, 0.1), b1(1, -0.2);
    std::vector<float> Xf(X.begin(), X.end()), yf(y.begin(), y.end()), W0f(W0.begin(), W0.end()),
        W1f(W1.begin(), W1.end()), b0f(b0.begin(), b0.end()), b1f(b1.begin(), b1.end());
    Params<double> p64{{W0.data(), W1.data()}, {b0.data(), b1.data()}};
    Params<float> p32{{W0f.data(), W1f.data()}, {b0f.data(), b1f.data()}};
    std::vector<double> g[2][4];
    for (auto& gs : g) gs[0].resize(W0.size()), gs[1].resize(W1.size()), gs[2].resize(6), gs[3].resize(1);
    Params<double> g64{{g[0][0].data(), g[0][1].data()}, {g[0][2].data(), g[0][3].data()}};
    Params<double> g32{{g[1][0].data(), g[1][1].data()}, {g[1][2].data(), g[1][3].data()}};
    const double l64 = gradients(shape, p64, Dataset<double>{X.data(), m, y.data(), nullptr}, 0.01, g64).loss_sum;
    const double l32 = gradients(shape, p32, Dataset<float>{Xf.data(), m, yf.data(), nullptr}, 0.01, g32).loss_sum;
    CHECK(std::abs(l32 - l64) < 1e-5 * l64);
    for (std::size_t t = 0; t < 4; ++t)
        for (std::size_t k = 0; k < g[0][t].size(); ++k) CHECK(std::abs(g[1][t][k] - g[0][t][k]) < 1e-5);
}

static void test_checks_refuse_bad_input() {
    const std::vector<std::int64_t> labels = {0, 2, 3};
    check_labels(labels.data(), 3, 4);
    expect_throws([&] { check_labels(labels.data(), 3, 3); }, "check_labels with a label of 3 for 3 classes");
    const std::vector<std::int64_t> order = {0, -1};
    expect_throws([&] { check_order(order.data(), 2, 5); }, "check_order with -1");
    expect_throws([] { check_shape(Shape{{3, 2}, Activation::Relu, Loss::Logistic}); }, "logistic with 2 outputs");
    expect_throws([] { check_shape(Shape{{3, 0, 2}, Activation::Relu, Loss::Softmax}); }, "a layer of 0 units");
    expect_throws([] { check_shape(Shape{{3}, Activation::Relu, Loss::Softmax}); }, "a single layer size");
    expect_throws([] { parse_activation("elu"); }, "parse_activation(elu)");
    expect_throws([] { parse_loss("hinge"); }, "parse_loss(hinge)");
}

static void test_training_lowers_the_cost_and_gradients_vanish_at_lam_only() {
    std::mt19937_64 rng(5);
    const std::size_t m = 64, n_in = 3;
    Shape shape{{n_in, 8, 2}, Activation::Tanh, Loss::Softmax};
    auto X = randn(m * n_in, rng);
    std::vector<std::int64_t> y(m);
    for (std::size_t i = 0; i < m; ++i) y[i] = X[i * n_in] + X[i * n_in + 1] > 0;
    auto W0 = randn(8 * n_in, rng, 0.5), W1 = randn(2 * 8, rng, 0.5);
    std::vector<double> b0(8, 0.0), b1(2, 0.0);
    Params<double> params{{W0.data(), W1.data()}, {b0.data(), b1.data()}};
    Dataset<double> data{X.data(), m, nullptr, y.data()};
    const double before = evaluate(shape, params, data).loss_sum;
    for (int epoch = 0; epoch < 50; ++epoch) {
        const EpochResult r = train_epoch(shape, params, data, nullptr, m, 16, 0.5, 0.0);
        CHECK(r.steps == 4 && !r.stopped);
    }
    const LossStats after = evaluate(shape, params, data);
    CHECK(after.loss_sum < 0.3 * before);
    CHECK(after.correct >= std::int64_t(m * 9 / 10));

    // With all-zero weights the data gradient of W0 vanishes, so dJ/dW0 is exactly (lam/m) W0 = 0.
    std::vector<double> dW0(W0.size()), dW1(W1.size()), db0(8), db1(2);
    Params<double> grads{{dW0.data(), dW1.data()}, {db0.data(), db1.data()}};
    std::fill(W1.begin(), W1.end(), 0.0);
    gradients(shape, params, data, 0.25, grads);
    for (std::size_t k = 0; k < W0.size(); ++k) CHECK(std::abs(dW0[k] - 0.25 * W0[k]) < 1e-15);
}

// Ends the test run as failed, rather than let it hang, when the scope it guards has not ended within a minute.
class Watchdog {
public:
    explicit Watchdog(const char* what)
        : thread_([this, what] {
              const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
              while (!finished_.load() && std::chrono::steady_clock::now() < deadline)
                  std::this_thread::sleep_for(std::chrono::milliseconds(10));
              if (!finished_.load()) {
                  std::printf("FAILED: %s did not finish in 60 s\n", what);
                  std::fflush(stdout);
                  std::_Exit(1);
              }
          }) {}
    ~Watchdog() {
        finished_.store(true);
        thread_.join();
    }
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

private:
    std::atomic<bool> finished_{false};
    std::thread thread_;  // after finished_, which it reads
};

// OpenBLAS's threaded products run their jobs on l2fast's pool (serve_openblas_threads, called by main): a product on
// two threads gives the bits of one thread's (k at most blas::kMaxInner), and the jobs ran on a helper of the pool,
// not on OpenBLAS's own server, whose threads stay idle. From inside a job of the pool (where the pool is taken) the
// same product runs its jobs on threads of their own, with the same bits, rather than waiting forever for the pool.
static void test_openblas_jobs_run_on_the_pool() {
    CHECK(openblas_threads_served());
    std::mt19937_64 rng(21);
    const int m = 384, n = 512, k = 256;
    auto floats = [&](std::size_t count) {
        const std::vector<double> v = randn(count, rng);
        return std::vector<float>(v.begin(), v.end());
    };
    const std::vector<float> A = floats(std::size_t(m) * k), B = floats(std::size_t(k) * n);
    auto product = [&](int threads) {
        blas::set_num_threads(threads);
        std::vector<float> C(std::size_t(m) * n);
        blas::gemm(blas::Op::N, blas::Op::N, m, n, k, 1.0f, A.data(), k, B.data(), n, 0.0f, C.data(), n);
        return C;
    };
    const int before = blas::num_threads();
    const std::vector<float> one = product(1);
    double worst = 0.0;
    for (int i = 0; i < m; i += 37)
        for (int j = 0; j < n; j += 41) {
            double plain = 0.0;
            for (int p = 0; p < k; ++p) plain += double(A[std::size_t(i) * k + p]) * B[std::size_t(p) * n + j];
            worst = std::max(worst, std::abs(plain - one[std::size_t(i) * n + j]));
        }
    CHECK(worst < 1e-3);
    const std::size_t served = openblas_calls_served();
    (void)product(1);
    CHECK(openblas_calls_served() == served);  // one thread: OpenBLAS calls no server
    for (int round = 0; round < 20; ++round) CHECK(product(2) == one);
    CHECK(product(3) == one);
    CHECK(openblas_calls_served() >= served + 21);
    // A batch of products on two threads: half the products each (OpenBLAS on one thread meanwhile, its count put
    // back after), each product's bits those of the same product alone on one thread.
    {
        constexpr std::size_t kCount = 5;
        std::vector<std::vector<float>> Cs(kCount, std::vector<float>(std::size_t(m) * n));
        std::vector<const float*> As(kCount, A.data()), Bs(kCount, B.data());
        std::vector<float*> Cp;
        std::vector<float> alphas, betas(kCount, 0.0f);
        for (std::size_t i = 0; i < kCount; ++i) {
            Cp.push_back(Cs[i].data());
            alphas.push_back(float(i + 1));
        }
        blas::Batch<float> batch(kCount);
        blas::set_num_threads(2);
        batch.gemm(blas::Op::N, blas::Op::N, m, n, k, alphas.data(), As.data(), k, Bs.data(), n, betas.data(),
                   Cp.data(), n, kCount);
        CHECK(blas::num_threads() == 2);
        blas::set_num_threads(1);
        for (std::size_t i = 0; i < kCount; ++i) {
            std::vector<float> alone(std::size_t(m) * n);
            blas::gemm(blas::Op::N, blas::Op::N, m, n, k, alphas[i], A.data(), k, B.data(), n, 0.0f, alone.data(), n);
            CHECK(Cs[i] == alone);
        }
    }
    std::optional<Watchdog> watchdog(std::in_place, "an OpenBLAS product inside a job of the pool");
    std::vector<std::vector<float>> inside(2);
    parallel_for(2, 2, 1, [&](std::size_t begin, std::size_t end) {
        for (std::size_t s = begin; s < end; ++s) {
            CHECK(in_parallel_job());
            std::vector<float> C(std::size_t(m) * n);
            blas::gemm(blas::Op::N, blas::Op::N, m, n, k, 1.0f, A.data(), k, B.data(), n, 0.0f, C.data(), n);
            inside[s] = std::move(C);
        }
    });
    watchdog.reset();
    CHECK(inside[0] == one && inside[1] == one);
    CHECK(!in_parallel_job());
    blas::set_num_threads(before);
}

// A parallel_for inside a job of the pool runs its shares on the calling thread, one after another, with the bounds
// they have on several threads (parallel_sum's total included), and passes on a share's exception.
static void test_parallel_for_inside_a_job_runs_its_shares_in_order() {
    std::vector<std::vector<std::pair<std::size_t, std::size_t>>> seen(2);
    std::vector<double> sums(2, 0.0);
    std::vector<int> threw(2, 0);
    const double alone = parallel_sum(1000, 3, 100, [](std::size_t b, std::size_t e) {
        double s = 0.0;
        for (std::size_t i = b; i < e; ++i) s += 1.0 / double(i + 1);
        return s;
    });
    parallel_for(2, 2, 1, [&](std::size_t begin, std::size_t end) {
        for (std::size_t s = begin; s < end; ++s) {
            const std::thread::id me = std::this_thread::get_id();
            bool same_thread = true;
            parallel_for(1000, 3, 100, [&](std::size_t b, std::size_t e) {
                same_thread = same_thread && std::this_thread::get_id() == me;
                seen[s].emplace_back(b, e);
            });
            CHECK(same_thread);
            sums[s] = parallel_sum(1000, 3, 100, [](std::size_t b, std::size_t e) {
                double t = 0.0;
                for (std::size_t i = b; i < e; ++i) t += 1.0 / double(i + 1);
                return t;
            });
            try {
                parallel_for(1000, 3, 100, [](std::size_t b, std::size_t) {
                    if (b > 0) throw std::runtime_error("share");
                });
            } catch (const std::runtime_error&) {
                threw[s] = 1;
            }
        }
    });
    const std::vector<std::pair<std::size_t, std::size_t>> shares = {{0, 333}, {333, 666}, {666, 1000}};
    CHECK(seen[0] == shares && seen[1] == shares);
    CHECK(sums[0] == alone && sums[1] == alone);
    CHECK(threw[0] == 1 && threw[1] == 1);
}

// The passes shared between threads (parallel_pass): bias and activation, activation derivative and bias sums give
// the bits of one thread on two and three, on a pass above kMinPassValues and one below it, in both precisions.
template <class T>
static void check_passes_on_threads() {
    std::mt19937_64 rng(22);
    const int before = blas::num_threads();
    for (std::size_t rows : {std::size_t(7), std::size_t(300)}) {
        const std::size_t cols = 600;  // 300 x 600 = 180 000 values, shared; 7 x 600 not
        std::vector<T> Z0(rows * cols), b(cols), dA0(rows * cols);
        for (auto& z : Z0) z = T(std::normal_distribution<double>()(rng));
        for (auto& v : b) v = T(std::normal_distribution<double>()(rng));
        for (auto& v : dA0) v = T(std::normal_distribution<double>()(rng));
        for (Activation act : {Activation::Relu, Activation::Tanh, Activation::Sigmoid}) {
            std::vector<std::vector<T>> Z, dA, sums;
            for (int threads : {1, 2, 3}) {
                blas::set_num_threads(threads);
                std::vector<T> z = Z0, d = dA0, y(cols, T(0.5));
                inplace_bias_activation(z.data(), b.data(), rows, cols, act);
                inplace_activation_backward(d.data(), z.data(), rows * cols, act);
                blas::sum_rows(int(rows), int(cols), T(0.25), d.data(), int(cols), T(1), y.data());
                Z.push_back(z);
                dA.push_back(d);
                sums.push_back(y);
            }
            CHECK(Z[1] == Z[0] && Z[2] == Z[0] && dA[1] == dA[0] && dA[2] == dA[0]);
            CHECK(sums[1] == sums[0] && sums[2] == sums[0]);
            // against the plain loops
            double worst = 0.0;
            for (std::size_t j = 0; j < cols; ++j) {
                double s = 0.0;
                for (std::size_t r = 0; r < rows; ++r) s += double(dA[0][r * cols + j]);
                worst = std::max(worst, std::abs(0.5 + 0.25 * s - double(sums[0][j])));
            }
            CHECK(worst < (std::is_same_v<T, float> ? 1e-3 : 1e-10));
            const T z = Z0[5] + b[5];
            const T expected = act == Activation::Relu ? (z > T(0) ? z : T(0))
                               : act == Activation::Tanh ? std::tanh(z)
                                                         : T(1) / (T(1) + std::exp(-z));
            CHECK(std::abs(double(Z[0][5] - expected)) < 1e-6);
        }
    }
    blas::set_num_threads(before);
}

static void test_parallel_for_covers_every_index_once() {
    for (std::size_t n : {std::size_t(0), std::size_t(5), std::size_t(1000), std::size_t(1001)}) {
        for (std::size_t threads : {1, 2, 3}) {
            for (int round = 0; round < 3; ++round) {  // the pool is reused across calls
                std::vector<int> hits(n, 0);
                parallel_for(n, threads, 100, [&](std::size_t begin, std::size_t end) {
                    for (std::size_t i = begin; i < end; ++i) ++hits[i];
                });
                CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
            }
        }
    }
}

// parallel_sum adds the shares' sums in share order: the same total on every call with a given share count.
static void test_parallel_sum_adds_the_shares_in_order() {
    for (std::size_t n : {std::size_t(0), std::size_t(7), std::size_t(1000), std::size_t(1001)}) {
        for (std::size_t threads : {1, 2, 3}) {
            double first = -1.0;
            for (int round = 0; round < 3; ++round) {
                const double total = parallel_sum(n, threads, 100, [&](std::size_t begin, std::size_t end) {
                    double s = 0.0;
                    for (std::size_t i = begin; i < end; ++i) s += 1.0 / double(i + 1);
                    return s;
                });
                double plain = 0.0;
                for (std::size_t i = 0; i < n; ++i) plain += 1.0 / double(i + 1);
                CHECK(std::abs(total - plain) <= 1e-14 * std::max(plain, 1.0));
                CHECK(round == 0 || total == first);
                first = total;
            }
        }
    }
}

// Each optimizer's step with sum_squares: the same P and state as without, and the sum of P's squares before the
// step added on; on one share and, at 600K entries, on several.
static void test_optimizer_steps_sum_the_old_squares() {
    std::mt19937_64 rng(11);
    for (std::size_t n : {std::size_t(1000), std::size_t(600000)}) {
        const std::vector<double> P0 = randn(n, rng), G = randn(n, rng, 0.1), V0 = randn(n, rng, 0.01);
        double expected = 0.0;
        for (double p : P0) expected += p * p;
        for (Method method : {Method::Sgd, Method::Momentum, Method::Adam}) {
            Optimizer opt;
            opt.method = method;
            opt.nesterov = true;
            std::vector<double> P = P0, M = V0, V = V0, P_sum = P0, M_sum = V0, V_sum = V0;
            for (auto& v : V) v = std::abs(v);
            for (auto& v : V_sum) v = std::abs(v);
            double sum = 1.5;  // added to, not overwritten
            inplace_optimizer_step(opt, 3, P.data(), G.data(), M.data(), V.data(), n, 0.01, 0.001);
            inplace_optimizer_step(opt, 3, P_sum.data(), G.data(), M_sum.data(), V_sum.data(), n, 0.01, 0.001, &sum);
            CHECK(P == P_sum && M == M_sum && V == V_sum);
            CHECK(std::abs(sum - 1.5 - expected) <= 1e-12 * expected);
        }
        CHECK(sum_squares(P0.data(), n) == sum_squares(P0.data(), n));
        CHECK(std::abs(sum_squares(P0.data(), n) - expected) <= 1e-12 * expected);
    }
}

// Thousands of jobs back to back, with helpers that take part or sit out, some caught spinning and
// some asleep: every job still covers each index exactly once.
static void test_parallel_for_back_to_back_jobs() {
    std::mt19937_64 rng(3);
    std::vector<int> hits(4096);
    for (int job = 0; job < 3000; ++job) {
        const std::size_t n = 100 + rng() % 3997, threads = 2 + rng() % 3;
        std::fill(hits.begin(), hits.end(), 0);
        parallel_for(n, threads, 50, [&](std::size_t begin, std::size_t end) {
            for (std::size_t i = begin; i < end; ++i) ++hits[i];
        });
        bool once = true;
        for (std::size_t i = 0; i < hits.size(); ++i) once = once && hits[i] == (i < n ? 1 : 0);
        CHECK(once);
        if (job % 500 == 499) std::this_thread::sleep_for(std::chrono::microseconds(200));  // let helpers sleep
    }
}

// Jobs of two shares and of four, one after the other, many times: a helper that read the state of a finished job of
// two shares while its caller was setting up the next job of four once took part 2 of the old job, ran it with the
// new job's fields and counted it as done for the new one, so the new job's count passed its share count and its
// caller waited forever (or returned before a part was done). Every index is done once per job, no part runs after
// parallel_for returns, and a watchdog fails the test, rather than hang it, when a job never finishes.
static void test_parallel_for_jobs_of_changing_share_counts() {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    constexpr int kJobs = 20000;  // the sanitizers find the race itself; the release build runs into its effects
#else
    constexpr int kJobs = 400000;  // before the fix: a hang or a miscount in about two runs of three of 200000 jobs
#endif
    std::optional<Watchdog> watchdog(std::in_place, "parallel_for jobs of changing share counts");
    std::vector<int> hits(400);
    std::atomic<int> running{0};
    int wrong = 0;
    for (int job = 0; job < kJobs; ++job) {
        const std::size_t n = job % 2 ? 400 : 100, threads = job % 2 ? 4 : 2;  // shares of 100 records
        std::fill(hits.begin(), hits.end(), 0);
        parallel_for(n, threads, 50, [&](std::size_t begin, std::size_t end) {
            running.fetch_add(1);
            for (std::size_t i = begin; i < end; ++i) ++hits[i];
            running.fetch_sub(1);
        });
        wrong += running.load() != 0;
        for (std::size_t i = 0; i < hits.size(); ++i) wrong += hits[i] != (i < n ? 1 : 0);
    }
    watchdog.reset();
    CHECK(wrong == 0);
}

// A share that throws, on the caller's thread or a helper's: the other shares still run, parallel_for rethrows the
// exception to its caller once every share is over (a helper's never ends the process), and the next job runs whole.
static void test_parallel_for_passes_a_shares_exception_to_the_caller() {
    std::vector<int> hits(400);
    int caught = 0, whole = 0;
    for (int job = 0; job < 400; ++job) {
        const std::size_t thrower = std::size_t(job) % 4;  // shares of 100: the share that throws, whoever runs it
        std::fill(hits.begin(), hits.end(), 0);
        try {
            parallel_for(400, 4, 50, [&](std::size_t begin, std::size_t end) {
                if (begin / 100 == thrower) throw std::runtime_error("share " + std::to_string(thrower));
                for (std::size_t i = begin; i < end; ++i) ++hits[i];
            });
        } catch (const std::runtime_error& e) {
            caught += std::string(e.what()) == "share " + std::to_string(thrower);
        }
        bool others = true;
        for (std::size_t i = 0; i < hits.size(); ++i) others = others && hits[i] == (i / 100 == thrower ? 0 : 1);
        whole += others;
        std::fill(hits.begin(), hits.end(), 0);
        parallel_for(400, 4, 50, [&](std::size_t begin, std::size_t end) {
            for (std::size_t i = begin; i < end; ++i) ++hits[i];
        });
        whole += std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; });
    }
    CHECK(caught == 400);
    CHECK(whole == 800);
}

// parallel_steps on one to four threads, with steps of one to eight parts: every part of every step runs once, a
// step's parts only after every part of the step before and after() for it, after() is not asked after the last step,
// and the run returns the step count. Runs with parts that sleep longer than the threads poll (so the waits block and
// are woken), runs after a pause (helpers asleep, joining late), and runs of two or three threads on a pool of three
// helpers (which may take every part of the job, the caller none: a first version, whose caller alone closed the
// steps, then hung under the sanitizers) are among them; a watchdog fails the test, rather than hang it.
static void test_parallel_steps_run_each_part_once_in_step_order() {
    std::optional<Watchdog> watchdog(std::in_place, "parallel_steps runs");
    int wrong = 0, runs = 0;
    for (std::size_t threads : {4, 2, 3, 1}) {  // four first: the pool then has three helpers for two and three
        for (std::size_t steps : {std::size_t(1), std::size_t(5), std::size_t(300)}) {
            for (int round = 0; round < 4; ++round) {
                const bool slow = round == 1, after_pause = round == 2;
                if (after_pause) std::this_thread::sleep_for(std::chrono::milliseconds(2));
                const auto parts = [&](std::size_t t) { return 1 + (t * 7 + std::size_t(round)) % kMaxStepParts; };
                std::vector<std::atomic<int>> hits(steps * kMaxStepParts);
                std::atomic<std::size_t> closed{0};  // steps whose after() has returned
                std::atomic<int> bad{0};
                const std::size_t ran = parallel_steps(
                    steps, threads, parts,
                    [&](std::size_t t, std::size_t p) {
                        if (closed.load() != t || p >= parts(t)) ++bad;
                        if (slow && t < 3) std::this_thread::sleep_for(std::chrono::microseconds(200));
                        ++hits[t * kMaxStepParts + p];
                    },
                    [&](std::size_t t) {
                        int done = 0;
                        for (std::size_t p = 0; p < kMaxStepParts; ++p) done += hits[t * kMaxStepParts + p].load();
                        if (t + 1 >= steps || closed.load() != t || done != int(parts(t))) ++bad;
                        closed.store(t + 1);
                        return true;
                    });
                wrong += ran != steps || bad.load() != 0 || closed.load() != steps - 1;
                for (std::size_t t = 0; t < steps; ++t)
                    for (std::size_t p = 0; p < kMaxStepParts; ++p)
                        wrong += hits[t * kMaxStepParts + p].load() != (p < parts(t) ? 1 : 0);
                ++runs;
            }
        }
    }
    watchdog.reset();
    CHECK(runs == 48);
    CHECK(wrong == 0);
}

// parallel_steps ends after the step whose after() says false, and a part that throws (on whichever thread runs it)
// or an after() that throws ends the run after its step, every other part of that step still run, the exception
// passed to the caller; the next run is whole. Part counts outside 1..kMaxStepParts are refused before any part runs.
static void test_parallel_steps_end_early_and_pass_exceptions() {
    for (std::size_t threads : {1, 2, 3}) {
        for (int round = 0; round < 50; ++round) {
            const std::size_t stop_at = std::size_t(round) % 7;
            std::vector<std::atomic<int>> hits(20 * 2);
            const std::size_t ran = parallel_steps(
                20, threads, [](std::size_t) { return std::size_t(2); },
                [&](std::size_t t, std::size_t p) { ++hits[2 * t + p]; }, [&](std::size_t t) { return t != stop_at; });
            CHECK(ran == stop_at + 1);
            for (std::size_t i = 0; i < hits.size(); ++i) CHECK(hits[i].load() == (i / 2 <= stop_at ? 1 : 0));

            for (int thrower : {0, 1, 2}) {  // part 0 of step 3, part 1 of step 3, after() of step 3
                for (auto& h : hits) h.store(0);
                bool caught = false;
                try {
                    parallel_steps(
                        20, threads, [](std::size_t) { return std::size_t(2); },
                        [&](std::size_t t, std::size_t p) {
                            if (t == 3 && int(p) == thrower) throw std::runtime_error("part");
                            ++hits[2 * t + p];
                        },
                        [&](std::size_t t) {
                            if (t == 3 && thrower == 2) throw std::runtime_error("after");
                            return true;
                        });
                } catch (const std::runtime_error& e) {
                    caught = std::string(e.what()) == (thrower == 2 ? "after" : "part");
                }
                CHECK(caught);
                for (std::size_t i = 0; i < hits.size(); ++i) {
                    const std::size_t t = i / 2;
                    const bool thrown = t == 3 && int(i % 2) == thrower;
                    CHECK(hits[i].load() == (t <= 3 && !thrown ? 1 : 0));
                }
            }
        }
    }
    for (std::size_t bad_count : {std::size_t(0), kMaxStepParts + 1}) {
        int ran_parts = 0;
        bool refused = false;
        try {
            parallel_steps(
                4, 2, [&](std::size_t t) { return t == 2 ? bad_count : std::size_t(1); },
                [&](std::size_t, std::size_t) { ++ran_parts; }, [](std::size_t) { return true; });
        } catch (const std::invalid_argument& e) {
            refused = std::string(e.what()).find("step 2 has") != std::string::npos;
        }
        CHECK(refused && ran_parts == 0);
    }
}

// The floors' reads (bench A): rows read once, or gathered by batch and read twice, for batches of one row, of
// several, of every row and of more rows than there are (the buffer then holds every row, never more): each takes
// some time and reads inside X and its buffer (the sanitizer builds check the second).
static void test_floor_reads_for_every_batch_size() {
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal;
    const std::size_t m = 301, n_in = 19;
    std::vector<float> X(m * n_in);
    for (float& v : X) v = normal(rng);
    for (std::size_t batch : {std::size_t(0), std::size_t(1), std::size_t(7), m, m + 5}) {
        const double seconds = shuffled_read_seconds(X.data(), m, n_in, 2, batch);
        CHECK(seconds > 0 && seconds < 10);
    }
}

// leave_cpu moves the calling thread off the CPU it names when the thread runs there and may run elsewhere, and
// leaves its CPU mask as it was; a CPU it does not run on, or one outside the mask, changes nothing.
static void test_leave_cpu_moves_off_and_keeps_the_mask() {
#if defined(__linux__)
    cpu_set_t before;
    CHECK(sched_getaffinity(0, sizeof before, &before) == 0);
    const int here = current_cpu();
    CHECK(here >= 0 && CPU_ISSET(here, &before));
    CHECK(!leave_cpu(-1) && !leave_cpu(CPU_SETSIZE));
    if (CPU_COUNT(&before) < 2) {
        CHECK(!leave_cpu(here));  // nowhere else to go
        std::printf("leave_cpu: one CPU allowed, the move itself not exercised\n");
        return;
    }
    CHECK(leave_cpu(here));
    cpu_set_t after;
    CHECK(sched_getaffinity(0, sizeof after, &after) == 0);
    CHECK(CPU_EQUAL(&before, &after));
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)  // a CPU outside the mask: nothing to leave
        if (!CPU_ISSET(cpu, &before)) {
            CHECK(!leave_cpu(cpu));
            break;
        }
#endif
}

// The caller and the helpers claim a job's shares as they come: right after the helpers have gone to sleep, a job of
// two tiny shares is done by the caller alone (it takes the second share before a helper wakes) rather than waiting
// for a helper to start, and every share still runs exactly once.
static void test_parallel_for_caller_takes_the_shares_a_late_helper_leaves() {
    int caller_took_both = 0;
    const std::thread::id me = std::this_thread::get_id();
    for (int job = 0; job < 50; ++job) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the helpers poll 50 us, then sleep
        int runs[2] = {0, 0}, by_caller = 0;
        parallel_for(2, 2, 1, [&](std::size_t begin, std::size_t end) {
            for (std::size_t i = begin; i < end; ++i) ++runs[i];
            if (std::this_thread::get_id() == me) by_caller += int(end - begin);
        });
        CHECK(runs[0] == 1 && runs[1] == 1);
        if (by_caller == 2) ++caller_took_both;
    }
    CHECK(caller_took_both > 0);
}

// An epoch of 40000 one-record steps (well over 10 ms of work) asking should_stop between them; W0 of
// the network after it.
static EpochResult train_long_epoch(const std::function<bool()>& should_stop, std::vector<double>& W0,
                                    std::size_t m = 40000) {
    std::mt19937_64 rng(7);
    const std::size_t n_in = 8;
    Shape shape{{n_in, 32, 3}, Activation::Relu, Loss::Softmax};
    auto X = randn(m * n_in, rng);
    std::vector<std::int64_t> y(m, 1);
    W0 = randn(32 * n_in, rng, 0.3);
    auto W1 = randn(3 * 32, rng, 0.3);
    std::vector<double> b0(32, 0.0), b1(3, 0.0);
    Params<double> params{{W0.data(), W1.data()}, {b0.data(), b1.data()}};
    Dataset<double> data{X.data(), m, nullptr, y.data()};
    return train_epoch<double>(shape, params, data, nullptr, m, 1, 0.01, 0.1, should_stop);
}

static void test_training_stops_when_asked() {
    int asked = 0;
    std::vector<double> W0;
    const EpochResult r = train_long_epoch([&] {  // the first answer is yes
        ++asked;
        return true;
    }, W0);
    CHECK(r.stopped && asked == 1);
    CHECK(r.steps >= 1 && r.steps < 40000);
}

// Three models with their own lambda (one past the scale path's threshold) trained stacked, against
// each trained alone on the same order: equal up to the rounding of the products.
static void test_stacked_training_equals_separate_runs() {
    std::mt19937_64 rng(8);
    const std::size_t m = 37, n_in = 5;
    for (Loss loss : {Loss::Softmax, Loss::Logistic}) {
        const std::size_t n_out = loss == Loss::Softmax ? 3 : 1;
        Shape shape{{n_in, 6, 4, n_out}, Activation::Tanh, loss};
        auto X = randn(m * n_in, rng);
        std::vector<std::int64_t> labels(m), order(m);
        std::vector<double> binary(m);
        for (std::size_t i = 0; i < m; ++i) {
            labels[i] = std::int64_t(i % n_out);
            binary[i] = double(i % 2);
            order[i] = std::int64_t((i * 7) % m);
        }
        Dataset<double> data{X.data(), m, loss == Loss::Logistic ? binary.data() : nullptr, labels.data()};
        const std::vector<double> lams = {0.0, 0.05, 2.5};
        std::vector<std::vector<double>> stacked_store, alone_store;
        std::vector<Params<double>> stacked, alone;
        const auto start = randn(6 * n_in + 4 * 6 + n_out * 4 + 6 + 4 + n_out, rng, 0.5);
        for (std::size_t k = 0; k < lams.size(); ++k) {
            for (auto* store : {&stacked_store, &alone_store}) store->push_back(start);
        }
        auto carve = [&](std::vector<double>& v) {
            double* p = v.data();
            Params<double> params;
            for (std::size_t l = 0; l < 3; ++l) {
                params.W.push_back(p);
                p += shape.sizes[l + 1] * shape.sizes[l];
            }
            for (std::size_t l = 0; l < 3; ++l) {
                params.b.push_back(p);
                p += shape.sizes[l + 1];
            }
            return params;
        };
        for (std::size_t k = 0; k < lams.size(); ++k) {
            stacked.push_back(carve(stacked_store[k]));
            alone.push_back(carve(alone_store[k]));
        }
        for (int epoch = 0; epoch < 3; ++epoch) {
            const StackedEpochResult r = train_epoch_stacked<double>(shape, stacked, data, order.data(), m, 8, 0.2, lams);
            CHECK(r.steps == 5 && r.stats.size() == lams.size());
            for (std::size_t k = 0; k < lams.size(); ++k) {
                const EpochResult one = train_epoch<double>(shape, alone[k], data, order.data(), m, 8, 0.2, lams[k]);
                CHECK(std::abs(one.stats.loss_sum - r.stats[k].loss_sum) < 1e-10 * std::abs(one.stats.loss_sum));
                CHECK(one.stats.correct == r.stats[k].correct);
            }
        }
        for (std::size_t k = 0; k < lams.size(); ++k) CHECK(max_abs_diff(stacked_store[k], alone_store[k]) < 1e-12);
        CHECK(max_abs_diff(stacked_store[0], stacked_store[2]) > 1e-3);  // lambda made a difference
    }
}

// A one-layer network's SGD epoch (linear_sgd_epoch: rows copied a block at a time, padded to whole vectors)
// equals the step written out plainly: softmax probabilities, w (p - onehot), W <- (1 - lr lam/m) W - (lr/b) G, and
// its weights' sum of squares is that of W before each step, added up. A shuffled order, batches of 12 over 50 records
// (partial groups, blocks and batch); 13 inputs (padded to 16) and 3 outputs, and the shapes that take each of the
// AVX-512 kernels' tiles (outputs four at a time and a last tile of one to three; a row's vectors in tiles of up to
// eight, the last narrower). With m = 700, batch = 200: steps of two shares, each applying the step before to its own
// copy of W, and a short last step of one share. single: the epoch in float32 (the plain formula in double on the
// same float32 inputs; loose tolerances), whose AVX-512 forward stores a tile's logits as runs of records.
static void test_linear_step_equals_the_plain_formula(std::size_t n_in, std::size_t n_out, std::size_t m = 50,
                                                      std::size_t batch = 12, bool single = false) {
    std::mt19937_64 rng(7 + n_in * 100 + n_out);
    Shape shape{{n_in, n_out}, Activation::Relu, Loss::Softmax};
    auto X = randn(m * n_in, rng), W = randn(n_out * n_in, rng, 0.3), b = randn(n_out, rng, 0.1);
    if (single)
        for (std::vector<double>* v : {&X, &W, &b})
            for (double& x : *v) x = double(float(x));
    std::vector<std::int64_t> y(m), order(m);
    std::vector<double> weight(m);
    for (std::size_t i = 0; i < m; ++i) {
        y[i] = std::int64_t(rng() % n_out);
        weight[i] = 0.5 + double(rng() % 4) / 4;
        order[i] = std::int64_t(i);
    }
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<double> W_plain = W, b_plain = b;
    const double lr = 0.3, lam_over_m = 0.02;
    EpochResult r;
    if (single) {
        std::vector<float> Xf(X.begin(), X.end()), Wf(W.begin(), W.end()), bf(b.begin(), b.end()),
            weight_f(weight.begin(), weight.end());
        Params<float> params{{Wf.data()}, {bf.data()}};
        Dataset<float> data{Xf.data(), m, nullptr, y.data(), weight_f.data()};
        r = train_epoch<float>(shape, params, data, order.data(), m, batch, float(lr), float(lam_over_m), {}, nullptr,
                               true);
        W.assign(Wf.begin(), Wf.end());
        b.assign(bf.begin(), bf.end());
    } else {
        Params<double> params{{W.data()}, {b.data()}};
        Dataset<double> data{X.data(), m, nullptr, y.data(), weight.data()};
        r = train_epoch<double>(shape, params, data, order.data(), m, batch, lr, lam_over_m, {}, nullptr, true);
    }
    CHECK(r.steps == (m + batch - 1) / batch && !r.stopped);
    double loss_sum = 0.0, norms = 0.0;
    for (std::size_t start = 0; start < m; start += batch) {
        const std::size_t rows = std::min(batch, m - start);
        for (double w : W_plain) norms += w * w;
        std::vector<double> G(n_out * n_in, 0.0), db(n_out, 0.0);
        for (std::size_t i = start; i < start + rows; ++i) {
            const std::size_t rec = std::size_t(order[i]);
            const double* x = X.data() + rec * n_in;
            std::vector<double> z(n_out);
            double total = 0.0, top = -1e300;
            for (std::size_t k = 0; k < n_out; ++k) {
                z[k] = b_plain[k];
                for (std::size_t j = 0; j < n_in; ++j) z[k] += W_plain[k * n_in + j] * x[j];
                top = std::max(top, z[k]);
            }
            for (std::size_t k = 0; k < n_out; ++k) total += std::exp(z[k] - top);
            loss_sum += weight[rec] * (std::log(total) + top - z[y[rec]]);
            for (std::size_t k = 0; k < n_out; ++k) {
                const double d = weight[rec] * (std::exp(z[k] - top) / total - (std::int64_t(k) == y[rec]));
                db[k] += d;
                for (std::size_t j = 0; j < n_in; ++j) G[k * n_in + j] += d * x[j];
            }
        }
        for (std::size_t q = 0; q < n_out * n_in; ++q)
            W_plain[q] = (1 - lr * lam_over_m) * W_plain[q] - lr / double(rows) * G[q];
        for (std::size_t k = 0; k < n_out; ++k) b_plain[k] -= lr / double(rows) * db[k];
    }
    const double tol = single ? 1e-4 : 1e-12;
    CHECK(max_abs_diff(W, W_plain) < tol);
    CHECK(max_abs_diff(b, b_plain) < tol);
    CHECK(std::abs(r.stats.loss_sum - loss_sum) <= tol * loss_sum);
    CHECK(std::abs(r.weight_norms - norms) <= tol * norms);
}

// Callers on several threads at once (networks trained side by side in Python threads): every job
// still covers its own indexes exactly once. tests/test_cpp_kernels.py runs this under ThreadSanitizer.
static void test_parallel_for_from_several_threads_at_once() {
    std::atomic<int> bad{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 3; ++t) {
        callers.emplace_back([&bad, t] {
            std::vector<int> hits(2000);
            for (int job = 0; job < 200; ++job) {
                const std::size_t n = 1000 + std::size_t(t * 300 + job);
                std::fill(hits.begin(), hits.end(), 0);
                parallel_for(n, 3, 100, [&](std::size_t begin, std::size_t end) {
                    for (std::size_t i = begin; i < end; ++i) ++hits[i];
                });
                for (std::size_t i = 0; i < hits.size(); ++i)
                    if (hits[i] != (i < n ? 1 : 0)) ++bad;
            }
        });
    }
    for (std::thread& c : callers) c.join();
    CHECK(bad.load() == 0);
}

// The stop check reads a flag another thread raises (in the bindings: the GIL and Python's signal
// state); the epoch ends soon after, with W whole.
static void test_training_stops_when_another_thread_asks() {
    // The asker raises the flag once the epoch has asked at least once (so the epoch is surely running,
    // however fast the machine), and gives up after 5 s so that a broken stop check fails, not hangs.
    std::atomic<bool> stop{false}, asked{false};
    std::thread asker([&stop, &asked] {
        for (int i = 0; i < 5000 && !asked.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        stop.store(true);
    });
    std::vector<double> W0;
    const EpochResult r = train_long_epoch([&stop, &asked] {
        asked.store(true);
        return stop.load();
    }, W0, 400000);
    asker.join();
    CHECK(r.stopped && r.steps >= 1 && r.steps < 400000);
    CHECK(std::all_of(W0.begin(), W0.end(), [](double w) { return std::isfinite(w); }));
}

// Two networks trained with Adam in two threads at once, their steps large enough for the helper pool:
// each ends where it ends trained alone.
static void test_two_adam_trainings_in_two_threads_match_one_after_the_other() {
    std::mt19937_64 rng(10);
    const std::size_t m = 64, n_in = 600, n_hidden = 512;  // W0: 307200 entries, past the pool's threshold
    Shape shape{{n_in, n_hidden, 3}, Activation::Tanh, Loss::Softmax};
    const auto X = randn(m * n_in, rng);
    std::vector<std::int64_t> y(m);
    for (std::size_t i = 0; i < m; ++i) y[i] = std::int64_t(i % 3);
    const auto W0 = randn(n_hidden * n_in, rng, 0.05), W1 = randn(3 * n_hidden, rng, 0.05);
    struct Model {
        std::vector<double> W0, W1, b0, b1;
        std::vector<std::vector<double>> state;
    };
    auto fresh = [&] {
        Model model{W0, W1, std::vector<double>(n_hidden), std::vector<double>(3), {}};
        for (std::size_t s = 0; s < 2; ++s)
            for (std::size_t size : {n_hidden * n_in, 3 * n_hidden, n_hidden, std::size_t(3)})
                model.state.emplace_back(size, 0.0);
        return model;
    };
    auto train = [&](Model& model) {
        Params<double> params{{model.W0.data(), model.W1.data()}, {model.b0.data(), model.b1.data()}};
        OptimizerRun<double> run;
        run.opt.method = Method::Adam;
        for (std::size_t s = 0; s < 2; ++s)
            run.slots.push_back({{model.state[4 * s].data(), model.state[4 * s + 1].data()},
                                 {model.state[4 * s + 2].data(), model.state[4 * s + 3].data()}});
        Dataset<double> data{X.data(), m, nullptr, y.data()};
        train_epoch<double>(shape, params, data, nullptr, m, 16, 0.001, 0.01, {}, &run);
    };
    Model alone = fresh(), first = fresh(), second = fresh();
    train(alone);
    std::thread other([&] { train(second); });
    train(first);
    other.join();
    CHECK(max_abs_diff(first.W0, alone.W0) < 1e-12 && max_abs_diff(second.W0, alone.W0) < 1e-12);
    CHECK(max_abs_diff(first.state[0], alone.state[0]) < 1e-12);
}

// A random CSR matrix (sorted, no duplicates, every fifth row empty) and the same matrix dense.
template <class I>
struct RandomCsr {
    std::vector<double> data, dense;
    std::vector<I> indices, indptr{0};
    Csr<double> view;

    RandomCsr(std::size_t rows, std::size_t cols, double density, std::mt19937_64& rng) : dense(rows * cols, 0.0) {
        std::uniform_real_distribution<double> u(0.0, 1.0);
        for (std::size_t i = 0; i < rows; ++i) {
            for (std::size_t j = 0; i % 5 != 4 && j < cols; ++j)
                if (u(rng) < density) {
                    const double v = u(rng) * 2 - 1;
                    data.push_back(v);
                    indices.push_back(I(j));
                    dense[i * cols + j] = v;
                }
            indptr.push_back(I(data.size()));
        }
        view.data = data.data();
        if constexpr (sizeof(I) == 8) {
            view.indices64 = reinterpret_cast<const std::int64_t*>(indices.data());
            view.indptr64 = reinterpret_cast<const std::int64_t*>(indptr.data());
        } else {
            view.indices32 = reinterpret_cast<const std::int32_t*>(indices.data());
            view.indptr32 = reinterpret_cast<const std::int32_t*>(indptr.data());
        }
        view.rows = rows;
        view.cols = cols;
        view.nnz = data.size();
    }
};

template <class I>
static void sparse_products_equal_dense() {
    std::mt19937_64 rng(21);
    const std::size_t rows = 300, cols = 3000, n_out = 7;  // big enough for the threaded paths
    RandomCsr<I> X(rows, cols, 0.01, rng);
    check_csr(X.view, "X");
    std::vector<std::int64_t> picked(120);
    for (std::size_t r = 0; r < picked.size(); ++r) picked[r] = std::int64_t((r * 37) % rows);
    const std::int64_t* in_turn = nullptr;
    for (const std::int64_t* order : {in_turn, static_cast<const std::int64_t*>(picked.data())}) {
        const std::size_t n = order ? picked.size() : rows;
        SparseRows<double> block;
        gather_sparse_rows(X.view, order, 0, n, block);
        std::vector<double> A(n * cols);
        for (std::size_t r = 0; r < n; ++r)
            std::copy_n(X.dense.begin() + std::ptrdiff_t((order ? std::size_t(order[r]) : r) * cols), cols,
                        A.begin() + std::ptrdiff_t(r * cols));
        auto W = randn(n_out * cols, rng), b = randn(n_out, rng), dZ = randn(n * n_out, rng);
        std::vector<double> out(n * n_out), want(n * n_out);
        sparse_dense_forward(block, W.data(), WeightLayout::Rows, 0.75, b.data(), n_out, Activation::Tanh, out.data());
        dense_forward(A.data(), n, cols, W.data(), 0.75, b.data(), n_out, Activation::Tanh, want.data());
        CHECK(max_abs_diff(out, want) < 1e-12);
        auto transpose = [&](const std::vector<double>& M, std::size_t r, std::size_t c) {
            std::vector<double> M_t(M.size());
            for (std::size_t i = 0; i < r; ++i)
                for (std::size_t j = 0; j < c; ++j) M_t[j * r + i] = M[i * c + j];
            return M_t;
        };
        const std::vector<double> W_t = transpose(W, n_out, cols);
        sparse_dense_forward(block, W_t.data(), WeightLayout::Transposed, 0.75, b.data(), n_out, Activation::Tanh,
                             out.data());
        CHECK(max_abs_diff(out, want) < 1e-12);
        for (double beta : {1.0, 0.6, 0.0}) {
            std::vector<double> dW = randn(n_out * cols, rng), expect = dW, dW_t = transpose(dW, n_out, cols);
            for (std::size_t o = 0; o < n_out; ++o)
                for (std::size_t j = 0; j < cols; ++j) {
                    double sum = 0;
                    for (std::size_t r = 0; r < n; ++r) sum += dZ[r * n_out + o] * A[r * cols + j];
                    expect[o * cols + j] = beta * expect[o * cols + j] - 0.3 * sum;
                }
            sparse_gradient_product(dW.data(), WeightLayout::Rows, dZ.data(), block, n_out, -0.3, beta);
            CHECK(max_abs_diff(dW, expect) < 1e-12);
            sparse_gradient_product(dW_t.data(), WeightLayout::Transposed, dZ.data(), block, n_out, -0.3, beta);
            CHECK(max_abs_diff(transpose(dW_t, cols, n_out), expect) < 1e-12);
        }
    }
}

static void test_sparse_products_equal_dense() {
    sparse_products_equal_dense<std::int32_t>();
    sparse_products_equal_dense<std::int64_t>();
}

static void test_check_csr_refuses_malformed_matrices() {
    std::mt19937_64 rng(22);
    RandomCsr<std::int32_t> good(10, 20, 0.3, rng);
    check_csr(good.view, "X");
    auto bad = [&](auto spoil, const char* what) {
        RandomCsr<std::int32_t> X = good;
        X.view.data = X.data.data();
        X.view.indices32 = X.indices.data();
        X.view.indptr32 = X.indptr.data();
        spoil(X);
        expect_throws([&] { check_csr(X.view, "X"); }, what);
    };
    bad([](auto& X) { X.indptr[0] = 1; }, "indptr[0] = 1");
    bad([](auto& X) { X.indptr[3] = X.indptr[2] - 1; }, "a decreasing indptr");
    bad([](auto& X) { X.indptr.back() += 1; }, "indptr beyond nnz");
    bad([](auto& X) { X.indices[0] = 20; }, "a column index = cols");
    bad([](auto& X) { X.indices[0] = -1; }, "a negative column index");
    bad([](auto& X) { X.indices[1] = X.indices[0]; }, "a repeated column index");
}

// Training, gradients, evaluation and prediction on sparse X equal those on the same X dense.
static void test_network_on_sparse_x_equals_dense() {
    std::mt19937_64 rng(23);
    const std::size_t m = 60, cols = 40;
    RandomCsr<std::int64_t> X(m, cols, 0.1, rng);
    Shape shape{{cols, 5, 3}, Activation::Relu, Loss::Softmax};
    std::vector<std::int64_t> labels(m), order(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t(i % 3), order[i] = std::int64_t((i * 7) % m);
    Dataset<double> dense{X.dense.data(), m, nullptr, labels.data()};
    Dataset<double> sparse{nullptr, m, nullptr, labels.data()};
    sparse.X_csr = X.view;
    sparse.sparse = true;
    const auto start = randn(5 * cols + 15 + 5 + 3, rng, 0.3);
    std::vector<std::vector<double>> stores(4, start);
    auto carve = [&](std::vector<double>& v) {
        return Params<double>{{v.data(), v.data() + 5 * cols}, {v.data() + 5 * cols + 15, v.data() + 5 * cols + 20}};
    };
    Params<double> p_dense = carve(stores[0]), p_sparse = carve(stores[1]);
    std::vector<Params<double>> stacked{carve(stores[2]), carve(stores[3])};
    for (int epoch = 0; epoch < 3; ++epoch) {
        const EpochResult a = train_epoch<double>(shape, p_dense, dense, order.data(), m, 8, 0.3, 0.05);
        const EpochResult b = train_epoch<double>(shape, p_sparse, sparse, order.data(), m, 8, 0.3, 0.05);
        CHECK(std::abs(a.stats.loss_sum - b.stats.loss_sum) < 1e-12 * a.stats.loss_sum);
        train_epoch_stacked<double>(shape, stacked, sparse, order.data(), m, 8, 0.3, {0.05, 0.05});
    }
    CHECK(max_abs_diff(stores[0], stores[1]) < 1e-12);
    CHECK(max_abs_diff(stores[0], stores[2]) < 1e-12 && max_abs_diff(stores[0], stores[3]) < 1e-12);
    CHECK(max_abs_diff(stores[0], start) > 1e-3);  // it trained
    std::vector<double> g[2];
    for (auto& gs : g) gs.resize(start.size());
    auto grads = [&](std::vector<double>& v) { return carve(v); };
    Params<double> g_dense = grads(g[0]), g_sparse = grads(g[1]);
    const double l_dense = gradients(shape, p_dense, dense, 0.1, g_dense).loss_sum;
    const double l_sparse = gradients(shape, p_dense, sparse, 0.1, g_sparse).loss_sum;
    CHECK(std::abs(l_dense - l_sparse) < 1e-12 * l_dense && max_abs_diff(g[0], g[1]) < 1e-12);
    CHECK(evaluate(shape, p_dense, dense).correct == evaluate(shape, p_dense, sparse).correct);
    std::vector<double> out_dense(m * 3), out_sparse(m * 3);
    predict(shape, p_dense, dense, out_dense.data());
    predict(shape, p_dense, sparse, out_sparse.data());
    CHECK(max_abs_diff(out_dense, out_sparse) < 1e-12);
}

// The Newton passes of a linear model: dense and CSR X give the same answers, the gradient is gradients()'s, and
// the Hessian-vector product is the central difference of the gradient (threaded: rows x n_out big enough), for
// output counts that take each of the passes' row layouts (newton.cpp's widths 1, 2, 4, 8, 12, 16 and any).
template <class I>
static void newton_passes_agree(std::size_t n_out) {
    std::mt19937_64 rng(29 + n_out);
    const std::size_t m = 400, cols = 2000;
    RandomCsr<I> X(m, cols, 0.02, rng);
    std::vector<std::int64_t> labels(m);
    std::vector<double> weights(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t(i % n_out), weights[i] = 0.5 + double(i % 3);
    Dataset<double> dense{X.dense.data(), m, nullptr, labels.data(), weights.data()};
    Dataset<double> sparse{nullptr, m, nullptr, labels.data(), weights.data()};
    sparse.X_csr = X.view;
    sparse.sparse = true;
    auto W = randn(n_out * cols, rng), b = randn(n_out, rng), V = randn(n_out * cols, rng), v_b = randn(n_out, rng);
    const double lam_over_m = 0.01;
    auto pass = [&](const Dataset<double>& data, const std::vector<double>& at, std::vector<double>& dW,
                    std::vector<double>& c, std::vector<double>& P) {
        dW.assign(n_out * cols + n_out, 0.0);
        c.assign(m, 0.0);
        P.assign(m * n_out, 0.0);
        return linear_gradient_curvature(data, Loss::Softmax, cols, n_out, at.data(), b.data(), lam_over_m, dW.data(),
                                         dW.data() + n_out * cols, c.data(), P.data());
    };
    std::vector<double> g_dense, g_sparse, c, P, c_s, P_s;
    const double l_dense = pass(dense, W, g_dense, c, P), l_sparse = pass(sparse, W, g_sparse, c_s, P_s);
    CHECK(std::abs(l_dense - l_sparse) < 1e-12 * l_dense && max_abs_diff(g_dense, g_sparse) < 1e-12);
    CHECK(max_abs_diff(P, P_s) < 1e-12 && max_abs_diff(c, c_s) == 0.0);
    Shape shape{{cols, n_out}, Activation::Identity, Loss::Softmax};
    std::vector<double> g(n_out * cols + n_out);
    Params<double> params{{W.data()}, {b.data()}}, grads{{g.data()}, {g.data() + n_out * cols}};
    const double l_net = gradients(shape, params, dense, lam_over_m, grads).loss_sum;
    CHECK(std::abs(l_net - l_dense) < 1e-10 * l_dense && max_abs_diff(g, g_dense) < 1e-12);
    const Curvature curvature{c.data(), P.data()};
    std::vector<double> Hv_dense(n_out * cols + n_out), Hv_sparse(n_out * cols + n_out);
    linear_hessian_product(dense, cols, n_out, curvature, V.data(), v_b.data(), lam_over_m, Hv_dense.data(),
                           Hv_dense.data() + n_out * cols);
    linear_hessian_product(sparse, cols, n_out, curvature, V.data(), v_b.data(), lam_over_m, Hv_sparse.data(),
                           Hv_sparse.data() + n_out * cols);
    CHECK(max_abs_diff(Hv_dense, Hv_sparse) < 1e-12);
    // The weights' part against a central difference of the gradient along (V, 0).
    const double eps = 1e-5;
    std::vector<double> W_plus(W), W_minus(W), g_plus, g_minus;
    for (std::size_t j = 0; j < W.size(); ++j) W_plus[j] += eps * V[j], W_minus[j] -= eps * V[j];
    const std::vector<double> zero_b(n_out, 0.0);
    std::vector<double> Hv_w(n_out * cols + n_out);
    linear_hessian_product(sparse, cols, n_out, curvature, V.data(), zero_b.data(), lam_over_m, Hv_w.data(),
                           Hv_w.data() + n_out * cols);
    pass(sparse, W_plus, g_plus, c_s, P_s);
    pass(sparse, W_minus, g_minus, c_s, P_s);
    double worst = 0.0, scale = 0.0;
    for (std::size_t j = 0; j < g_plus.size(); ++j) {
        worst = std::max(worst, std::abs((g_plus[j] - g_minus[j]) / (2 * eps) - Hv_w[j]));
        scale = std::max(scale, std::abs(Hv_w[j]));
    }
    CHECK(worst < 1e-6 * scale);
    // The Hessian's diagonal: dense and CSR agree, and each entry is e . H e for its unit vector e.
    std::vector<double> diag_dense(n_out * cols + n_out), diag_sparse(n_out * cols + n_out);
    linear_hessian_diagonal(dense, cols, n_out, curvature, diag_dense.data(), diag_dense.data() + n_out * cols);
    linear_hessian_diagonal(sparse, cols, n_out, curvature, diag_sparse.data(), diag_sparse.data() + n_out * cols);
    CHECK(max_abs_diff(diag_dense, diag_sparse) < 1e-12);
    for (std::size_t entry : {std::size_t(0), cols + 3, n_out * cols - 1}) {
        std::vector<double> e(n_out * cols, 0.0), He(n_out * cols + n_out);
        e[entry] = 1.0;
        linear_hessian_product(sparse, cols, n_out, curvature, e.data(), zero_b.data(), 0.0, He.data(),
                               He.data() + n_out * cols);
        CHECK(std::abs(He[entry] - diag_sparse[entry] / double(m)) < 1e-12 * (1 + std::abs(He[entry])));
    }
}

static void test_newton_passes_agree() {
    for (std::size_t n_out : {2, 3, 4, 7, 10, 13, 17}) {
        newton_passes_agree<std::int32_t>(n_out);
        newton_passes_agree<std::int64_t>(n_out);
    }
}

// The layers a float32 SGD epoch trains on a transposed copy of W are those whose forward product OpenBLAS's
// small-matrix kernels would take only in that layout (network.hpp); tests/test_small_networks.py checks the training.
static void test_small_layers_train_transposed_where_openblas_would_pack() {
    CHECK(train_transposed(32, 64, 64));     // C = 32 x 64 > 1200 entries
    CHECK(train_transposed(8, 20, 16));      // inner dimension 20 < 32
    CHECK(train_transposed(32, 784, 64));    // k cut in slices of at most 256: 32 x 64 x 196 each
    CHECK(!train_transposed(32, 64, 10));    // 320 entries, k = 64: taken as A W^T already
    CHECK(!train_transposed(128, 784, 256)); // past 100^3 multiply-adds: OpenBLAS packs in either layout
}

// A float64 epoch with an optimizer runs a small layer's forward product on a transposed copy of W where OpenBLAS
// would pack A W^T (network.hpp); its steps are those taken on W itself, one at a time: gradients() on the step's
// records (the plain products) and the optimizer's update, the sum of squares before each step included.
static void test_optimizer_epochs_read_forward_copies_and_step_as_on_w() {
    CHECK(forward_on_copy(200, 64, 64));     // C = 200 x 64: the drop-in's 64-64-10 at batch 200
    CHECK(forward_on_copy(200, 64, 10));     // and its output layer, 2000 entries
    CHECK(forward_on_copy(20, 6, 7));        // inner dimension 6 < 32
    CHECK(!forward_on_copy(32, 64, 10));     // 320 entries, k = 64: A W^T's own small kernel
    CHECK(!forward_on_copy(200, 784, 64));   // W_t's 784 rows: more than one L1-sized slice
    CHECK(!forward_on_copy(200, 100, 100));  // past 100^3 multiply-adds: packed in either layout
    CHECK(!forward_on_copy(200, 64, 1));     // one output: a GEMV either way
    std::mt19937_64 rng(41);
    const std::size_t m = 450, batch = 200, n_in = 64, n_hidden = 64, n_out = 10;  // steps of 200, 200 and 50
    const Shape shape{{n_in, n_hidden, n_out}, Activation::Relu, Loss::Softmax};
    const auto X = randn(m * n_in, rng);
    std::vector<std::int64_t> labels(m), order(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t((i * 7) % n_out), order[i] = std::int64_t(i);
    std::shuffle(order.begin(), order.end(), rng);
    const std::vector<std::size_t> sizes{n_hidden * n_in, n_out * n_hidden, n_hidden, n_out};  // W0, W1, b0, b1
    std::vector<std::vector<double>> start;
    for (std::size_t size : sizes) start.push_back(randn(size, rng, 0.1));
    const double lr = 0.01, lam_over_m = 0.003;
    for (const Method method : {Method::Adam, Method::Momentum}) {
        Optimizer opt;
        opt.method = method;
        opt.nesterov = true;
        opt.eps_on_v = true;
        struct Model {
            std::vector<std::vector<double>> p;  // W0, W1, b0, b1, then the state: slot s's four at 4 (s + 1)
            Params<double> params;
            OptimizerRun<double> run;
        };
        auto fresh = [&](Model& model) {
            model.p = start;
            for (std::size_t s = 0; s < opt.n_slots(); ++s)
                for (std::size_t size : sizes) model.p.emplace_back(size, 0.0);
            auto at = [&](std::size_t k) { return model.p[k].data(); };
            model.params = {{at(0), at(1)}, {at(2), at(3)}};
            model.run.opt = opt;
            for (std::size_t s = 0; s < opt.n_slots(); ++s)
                model.run.slots.push_back({{at(4 * s + 4), at(4 * s + 5)}, {at(4 * s + 6), at(4 * s + 7)}});
        };
        Model epoch, steps;
        fresh(epoch);
        fresh(steps);
        const Dataset<double> data{X.data(), m, nullptr, labels.data()};
        const EpochResult result = train_epoch(shape, epoch.params, data, order.data(), m, batch, lr, lam_over_m, {},
                                               &epoch.run, true);
        double loss_sum = 0, norms = 0;
        std::vector<double> gW0(sizes[0]), gW1(sizes[1]), gb0(sizes[2]), gb1(sizes[3]);
        Params<double> grads{{gW0.data(), gW1.data()}, {gb0.data(), gb1.data()}};
        for (std::size_t start_row = 0; start_row < m; start_row += batch) {
            const std::size_t rows = std::min(batch, m - start_row);
            std::vector<double> Xb(rows * n_in);
            std::vector<std::int64_t> yb(rows);
            for (std::size_t i = 0; i < rows; ++i) {
                const std::size_t r = std::size_t(order[start_row + i]);
                std::copy(X.begin() + long(r * n_in), X.begin() + long((r + 1) * n_in), Xb.begin() + long(i * n_in));
                yb[i] = labels[r];
            }
            loss_sum += gradients(shape, steps.params, Dataset<double>{Xb.data(), rows, nullptr, yb.data()}, 0.0,
                                  grads).loss_sum;
            ++steps.run.step;
            for (std::size_t l = 0; l < 2; ++l) {
                const std::size_t n_w = sizes[l], n_b = sizes[l + 2];
                for (std::size_t k = 0; k < n_w; ++k) norms += steps.params.W[l][k] * steps.params.W[l][k];
                auto slot = [&](std::size_t s, bool weights) -> double* {
                    return s < opt.n_slots() ? (weights ? steps.run.slots[s].W[l] : steps.run.slots[s].b[l]) : nullptr;
                };
                inplace_optimizer_step(opt, steps.run.step, steps.params.W[l], grads.W[l], slot(0, true),
                                       slot(1, true), n_w, lr, lam_over_m);
                inplace_optimizer_step(opt, steps.run.step, steps.params.b[l], grads.b[l], slot(0, false),
                                       slot(1, false), n_b, lr, 0.0);
            }
        }
        CHECK(epoch.run.step == 3 && steps.run.step == 3);
        for (std::size_t k = 0; k < epoch.p.size(); ++k) CHECK(max_abs_diff(epoch.p[k], steps.p[k]) < 1e-13);
        CHECK(std::abs(result.stats.loss_sum - loss_sum) <= 1e-13 * loss_sum);
        CHECK(std::abs(result.weight_norms - norms) <= 1e-13 * norms);
    }
}

// A network's parameters (`start`: W per layer, then b per layer), then the optimizer's state arrays (zeros: each
// array s's W per layer, then b per layer) in p, with params and run pointing into them. p may grow: its arrays stay.
template <class T>
struct OptimizerModel {
    std::vector<std::vector<T>> p;
    Params<T> params;
    OptimizerRun<T> run;

    OptimizerModel(const std::vector<std::vector<T>>& start, std::size_t L, const Optimizer& opt) : p(start) {
        for (std::size_t s = 0; s < opt.n_slots(); ++s)
            for (std::size_t k = 0; k < 2 * L; ++k) p.emplace_back(start[k].size(), T(0));
        for (std::size_t l = 0; l < L; ++l) params.W.push_back(p[l].data()), params.b.push_back(p[L + l].data());
        run.opt = opt;
        for (std::size_t s = 0; s < opt.n_slots(); ++s) {
            run.slots.emplace_back();
            for (std::size_t l = 0; l < L; ++l)
                run.slots.back().W.push_back(p[2 * L * (s + 1) + l].data()),
                    run.slots.back().b.push_back(p[2 * L * (s + 1) + L + l].data());
        }
    }
};

// An epoch with an optimizer takes the buffers its thread kept from the last call (network.cpp's StepBuffers): the same
// bits as on fresh ones after calls of other shapes and batches and after a diverged call (NaN and infinities left in
// the buffers: every product writes with beta = 0, which never reads them), and a call made from inside another's
// should_stop (the kept buffers in use) runs on buffers of its own, leaving the outer epoch's as they were.
static void test_optimizer_epochs_on_kept_buffers_give_the_same_bits() {
    std::mt19937_64 rng(43);
    struct Net {
        Shape shape;
        std::size_t m, batch;
        std::vector<double> X;
        std::vector<std::int64_t> labels;
        std::vector<std::vector<double>> start;  // W per layer, then b per layer
    };
    auto make = [&](std::vector<std::size_t> sizes, std::size_t m, std::size_t batch, Activation act) {
        Net net{Shape{sizes, act, Loss::Softmax}, m, batch, randn(m * sizes.front(), rng), {}, {}};
        for (std::size_t i = 0; i < m; ++i) net.labels.push_back(std::int64_t((i * 5) % sizes.back()));
        for (std::size_t l = 0; l + 1 < sizes.size(); ++l) net.start.push_back(randn(sizes[l] * sizes[l + 1], rng, 0.2));
        for (std::size_t l = 0; l + 1 < sizes.size(); ++l) net.start.push_back(randn(sizes[l + 1], rng, 0.1));
        return net;
    };
    // the drop-ins' 64-64-10 (steps of 200 and a short one of 97), long enough for should_stop to be asked (on two
    // threads, its steps in two shares, 20000 records took 8-12 ms an epoch here: 40097 left only 2x over 10 ms); a
    // narrower network with edges off the 4 x 4 blocks of transpose_doubles; the first at another batch
    const Net big = make({64, 64, 10}, 80097, 200, Activation::Relu), odd = make({13, 9, 7, 3}, 203, 20, Activation::Tanh);
    Net big_other_batch = big;
    big_other_batch.batch = 400;
    auto train = [&](const Net& net, Method method, const std::function<bool()>& should_stop, double lr = 0.01) {
        Optimizer opt;
        opt.method = method;
        opt.nesterov = true;
        opt.eps_on_v = true;
        OptimizerModel model(net.start, net.shape.n_layers(), opt);
        std::vector<std::vector<double>>& p = model.p;
        Params<double>& params = model.params;
        OptimizerRun<double>& run = model.run;
        const Dataset<double> data{net.X.data(), net.m, nullptr, net.labels.data()};
        std::vector<std::int64_t> order(net.m);
        for (std::size_t i = 0; i < net.m; ++i) order[i] = std::int64_t((i * 7919) % net.m);
        const EpochResult result = train_epoch<double>(net.shape, params, data, order.data(), net.m, net.batch, lr,
                                                       0.002, should_stop, &run, true, 0.004);
        p.push_back({result.stats.loss_sum, result.weight_norms});
        return p;
    };
    for (const Method method : {Method::Adam, Method::Momentum}) {
        const auto big_first = train(big, method, {}), odd_first = train(odd, method, {});
        train(big_other_batch, method, {});
        CHECK(train(big, method, {}) == big_first);
        CHECK(train(odd, method, {}) == odd_first);
        CHECK(!std::isfinite(train(odd, method, {}, 1e200).back()[0]));  // diverged: a loss sum of NaN or infinity
        CHECK(train(odd, method, {}) == odd_first);
        std::vector<std::vector<double>> inner;
        const auto outer = train(big, method, [&] {
            if (inner.empty()) inner = train(odd, method, {});
            return false;
        });
        CHECK(!inner.empty());  // asked at least once: the epoch takes more than 10 ms
        CHECK(outer == big_first && inner == odd_first);
    }
}

// An epoch with an optimizer whose steps optimizer_step_shares cuts in two shares of records: the same bits on one
// thread and on two (the shares' sums added in order, the update's two parts each on its own rows; one hidden layer
// with the threads given: cut by units instead, PartialOutputEpoch), for the drop-ins'
// 64-64-10 (steps of 200 and a short one of 37, with a decay of its own), a narrow network whose steps of 70 cut
// in 35 + 35, whose W rows split 4 + 5 and 3 + 4, and whose short last step (61) is one share, and 64-128-10, whose
// shares' products OpenBLAS would thread itself: with OpenBLAS on one thread and the shares' threads given
// (share_threads, as the cpu backend runs them), and with OpenBLAS on two and none given, where the shares of
// 64-128-10 run one after the other.
static void test_optimizer_steps_of_two_shares_on_one_and_two_threads() {
    CHECK(optimizer_step_shares({64, 64, 10}, 200));
    CHECK(optimizer_step_shares({64, 64, 10}, 64));    // 32 + 32
    CHECK(!optimizer_step_shares({64, 64, 10}, 63));   // too few records to cut
    CHECK(optimizer_step_shares({64, 64, 10}, 100));   // a share's 63 rows (a short step's)
    CHECK(optimizer_step_shares({64, 128, 10}, 200));  // 100 x 64 x 128 multiply-adds <= 2^21
    CHECK(optimizer_step_shares({64, 256, 10}, 200));
    CHECK(!optimizer_step_shares({64, 512, 10}, 200)); // 100 x 64 x 512 > 2^21
    CHECK(optimizer_step_shares({784, 128, 10}, 200)); // 100 x 784 x 128 <= 2^24, a layer of 128 units
    CHECK(!optimizer_step_shares({784, 129, 10}, 200));
    CHECK(!optimizer_step_shares({784, 256, 10}, 200));
    CHECK(!optimizer_step_shares({2000, 100, 10}, 200)); // 100 x 2000 x 100 > 2^24
    CHECK(optimizer_step_shares({100, 1}, 200));
    CHECK(sgd_step_shares({64, 64, 10}, 200, false) && !sgd_step_shares({64, 64, 10}, 200, true));
    CHECK(!sgd_step_shares({100, 1}, 200, false));     // a linear model: linear_step.cpp's own step
    std::mt19937_64 rng(47);
    struct Case {
        std::vector<std::size_t> sizes;
        std::size_t m, batch;
        Activation act;
    };
    const int before = blas::num_threads();
    for (const Case& c : {Case{{64, 64, 10}, 1037, 200, Activation::Relu}, Case{{13, 9, 7, 3}, 271, 70, Activation::Tanh},
                          Case{{64, 128, 10}, 437, 200, Activation::Relu}}) {
        CHECK(optimizer_step_shares(c.sizes, c.batch));
        const Shape shape{c.sizes, c.act, Loss::Softmax};
        const std::size_t L = shape.n_layers();
        const auto X = randn(c.m * c.sizes.front(), rng);
        std::vector<std::int64_t> labels(c.m), order(c.m);
        for (std::size_t i = 0; i < c.m; ++i) labels[i] = std::int64_t((i * 5) % c.sizes.back()), order[i] = std::int64_t(i);
        std::shuffle(order.begin(), order.end(), rng);
        std::vector<std::vector<double>> start;
        for (std::size_t l = 0; l < L; ++l) start.push_back(randn(c.sizes[l] * c.sizes[l + 1], rng, 0.2));
        for (std::size_t l = 0; l < L; ++l) start.push_back(randn(c.sizes[l + 1], rng, 0.1));
        for (const Method method : {Method::Adam, Method::Momentum}) {
            std::vector<std::vector<double>> first;
            // (OpenBLAS's threads, the shares' threads): the cpu backend's way, then OpenBLAS's count alone
            const std::pair<int, std::size_t> runs[] = {{1, 1}, {1, 2}, {1, 1}, {1, 2}, {1, 0}, {2, 0}};
            for (const auto& [blas_threads, share_threads] : runs) {
                blas::set_num_threads(blas_threads);
                Optimizer opt;
                opt.method = method;
                opt.nesterov = true;
                OptimizerModel model(start, L, opt);
                std::vector<std::vector<double>>& p = model.p;
                Params<double>& params = model.params;
                OptimizerRun<double>& run = model.run;
                const Dataset<double> data{X.data(), c.m, nullptr, labels.data()};
                for (int epoch = 0; epoch < 2; ++epoch) {
                    const EpochResult result = train_epoch<double>(shape, params, data, order.data(), c.m, c.batch, 0.01,
                                                                   0.002, {}, &run, true, 0.005, share_threads);
                    p.push_back({result.stats.loss_sum, result.weight_norms, double(result.stats.correct)});
                }
                CHECK(run.step == std::int64_t(2 * ((c.m + c.batch - 1) / c.batch)));
                if (first.empty()) first = p;
                // one hidden layer with the shares' threads given: cut by units instead (PartialOutputEpoch), whose
                // bits are their own
                const bool partial = partial_output_fits(c.sizes, c.batch);
                if (share_threads > 0 || (!partial && (blas_threads == 1 || c.sizes[1] <= 64))) {
                    CHECK(p == first);
                } else {  // 64-128-10's products on OpenBLAS's two threads: other last bits, the same training
                    CHECK(p.size() == first.size());
                    for (std::size_t i = 0; i < p.size(); ++i)
                        for (std::size_t j = 0; j < p[i].size(); ++j)
                            CHECK(std::abs(p[i][j] - first[i][j]) <= 1e-9 * (1.0 + std::abs(first[i][j])));
                }
            }
        }
    }
    blas::set_num_threads(before);
}

// One run's results against the first's: the same when exact, else each value within bound(i, j, the first's value).
template <class Bound>
static void check_runs(const std::vector<std::vector<double>>& seen, const std::vector<std::vector<double>>& first,
                       bool exact, Bound bound) {
    if (exact) {
        CHECK(seen == first);
        return;
    }
    CHECK(seen.size() == first.size());
    for (std::size_t i = 0; i < seen.size() && i < first.size(); ++i)
        for (std::size_t j = 0; j < seen[i].size(); ++j)
            CHECK(std::abs(seen[i][j] - first[i][j]) <= bound(i, j, first[i][j]));
}

// A network and its data for the tests of epochs cut in parts: layer sizes, records, batch, units, loss, and whether
// the records come shuffled (the tests that take both ignore it).
struct EpochCase {
    std::vector<std::size_t> sizes;
    std::size_t m, batch;
    Activation act;
    Loss loss;
    bool shuffled = true;
};

// An epoch that partial_output_fits cuts by its hidden units, each part with its partial of the output layer
// (PartialOutputEpoch: share_threads given, OpenBLAS on one thread): Adam, Nesterov momentum and plain SGD (an
// optimizer run without state, as sgd_step_shares' epochs), shuffled and in turn, with sample weights and a short last
// step of its own decay. The same bits on one thread and on two (loss, norms, correct count, parameters and state);
// OptimizerStep's training (share_threads not given) to float64 rounding; an epoch stopped between its runs of steps
// leaves the bits of an epoch over the steps it took; and a call made from inside another's should_stop (the kept
// buffers in use) runs on buffers of its own.
static void test_partial_output_epochs_on_one_and_two_threads() {
    CHECK(partial_output_fits({64, 64, 10}, 200) && partial_output_fits({20, 33, 1}, 64));
    CHECK(!partial_output_fits({64, 64, 10}, 63));      // optimizer_step_shares: too few records to cut
    CHECK(!partial_output_fits({64, 64, 64, 10}, 200)); // one hidden layer only
    CHECK(!partial_output_fits({64, 16, 10}, 200));     // fewer than 32 hidden units
    CHECK(!partial_output_fits({784, 64, 10}, 200));    // more than 128 inputs
    CHECK(!partial_output_fits({64, 10}, 200));
    std::mt19937_64 rng(59);
    const int before = blas::num_threads();
    blas::set_num_threads(1);
    for (const EpochCase& c : {EpochCase{{64, 64, 10}, 1037, 200, Activation::Relu, Loss::Softmax, true},
                               EpochCase{{20, 33, 1}, 301, 64, Activation::Tanh, Loss::Logistic, false},
                               EpochCase{{30, 40, 3}, 250, 100, Activation::Identity, Loss::SquaredError, true}}) {
        CHECK(partial_output_fits(c.sizes, c.batch));
        const Shape shape{c.sizes, c.act, c.loss};
        const std::size_t n_out = c.sizes.back();
        const auto X = randn(c.m * c.sizes.front(), rng);
        auto values = randn(c.m * n_out, rng, 0.5);
        if (c.loss == Loss::Logistic)  // 0/1 targets
            for (double& v : values) v = v > 0.0 ? 1.0 : 0.0;
        std::vector<double> weights(c.m);
        std::vector<std::int64_t> labels(c.m), order(c.m);
        for (std::size_t i = 0; i < c.m; ++i) {
            labels[i] = std::int64_t((i * 7) % n_out);
            order[i] = std::int64_t(i);
            weights[i] = 0.5 + double(i % 3) / 2;
        }
        std::shuffle(order.begin(), order.end(), rng);
        std::vector<std::vector<double>> start;
        for (std::size_t l = 0; l < 2; ++l) start.push_back(randn(c.sizes[l] * c.sizes[l + 1], rng, 0.2));
        for (std::size_t l = 0; l < 2; ++l) start.push_back(randn(c.sizes[l + 1], rng, 0.1));
        Dataset<double> data{X.data(), c.m};
        if (c.loss == Loss::Softmax) data.y_labels = labels.data(); else data.y_values = values.data();
        data.weights = weights.data();
        for (const Method method : {Method::Adam, Method::Momentum, Method::Sgd}) {
            std::vector<std::vector<double>> first;
            for (const std::size_t share_threads : {1, 2, 1, 2, 0}) {  // 0: OptimizerStep's steps
                Optimizer opt;
                opt.method = method;
                opt.nesterov = true;
                OptimizerModel model(start, 2, opt);
                std::vector<std::vector<double>> seen;
                for (int epoch = 0; epoch < 2; ++epoch) {
                    const EpochResult result = train_epoch<double>(shape, model.params, data,
                                                                   c.shuffled ? order.data() : nullptr, c.m, c.batch,
                                                                   0.01, 0.002, {}, &model.run, true, 0.005,
                                                                   share_threads);
                    CHECK(result.steps == (c.m + c.batch - 1) / c.batch && !result.stopped);
                    seen.push_back({result.stats.loss_sum, result.weight_norms, double(result.stats.correct)});
                }
                CHECK(model.run.step == std::int64_t(2 * ((c.m + c.batch - 1) / c.batch)));
                for (const auto& a : model.p) seen.push_back(a);
                if (first.empty()) first = seen;
                check_runs(seen, first, share_threads > 0,
                           [](std::size_t, std::size_t, double value) { return 1e-9 * (1.0 + std::abs(value)); });
            }
        }
    }
    // stopped between runs: 64-64-10 over 60000 records, 300 steps (tens of ms), should_stop true when first asked
    const std::size_t m = 60000, batch = 200;
    const Shape shape{{64, 64, 10}, Activation::Relu, Loss::Softmax};
    const auto X = randn(m * 64, rng);
    std::vector<std::int64_t> labels(m), order(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t((i * 3) % 10), order[i] = std::int64_t((i * 7919) % m);
    std::vector<std::vector<double>> start{randn(64 * 64, rng, 0.2), randn(10 * 64, rng, 0.2), randn(64, rng, 0.1),
                                           randn(10, rng, 0.1)};
    const Dataset<double> data{X.data(), m, nullptr, labels.data()};
    Optimizer adam;
    adam.method = Method::Adam;
    for (const std::size_t share_threads : {1, 2}) {
        OptimizerModel stopped(start, 2, adam);
        std::vector<std::vector<double>> nested;  // a fit of the same shape inside should_stop: the kept buffers in use
        const EpochResult result = train_epoch<double>(shape, stopped.params, data, order.data(), m, batch, 0.01,
                                                       0.002, [&] {
            OptimizerModel inner(start, 2, adam);
            train_epoch<double>(shape, inner.params, data, order.data(), 4000, batch, 0.01, 0.002, {}, &inner.run,
                                true, std::nullopt, share_threads);
            nested = inner.p;
            return true;
        }, &stopped.run, true, std::nullopt, share_threads);
        CHECK(result.stopped && result.steps >= 1 && result.steps < m / batch);
        CHECK(stopped.run.step == std::int64_t(result.steps));
        OptimizerModel whole(start, 2, adam);  // an epoch over the steps the stopped one took
        const EpochResult again = train_epoch<double>(shape, whole.params, data, order.data(), result.steps * batch,
                                                      batch, 0.01, 0.002, {}, &whole.run, true, std::nullopt,
                                                      share_threads);
        CHECK(again.steps == result.steps && again.stats.loss_sum == result.stats.loss_sum &&
              again.weight_norms == result.weight_norms);
        CHECK(whole.p == stopped.p);
        OptimizerModel fresh(start, 2, adam);
        train_epoch<double>(shape, fresh.params, data, order.data(), 4000, batch, 0.01, 0.002, {}, &fresh.run, true,
                            std::nullopt, share_threads);
        CHECK(!nested.empty() && nested == fresh.p);
    }
    blas::set_num_threads(before);
}

// An epoch that split_step_fits cuts by its hidden units (UnitSplitEpoch, share_threads given with OpenBLAS on one
// thread), float32 plain SGD, Adam and Nesterov momentum: the same bits on one thread and on two, in loss, norms, correct
// count, parameters and optimizer state, shuffled and in turn, with a short last step of its own decay (one record for
// 300-256-10) and sample weights; and the general step's training (share_threads not given, OpenBLAS on one thread
// and on two) to float32 rounding. With plain SGD, 300-256-10 keeps W[1] as it is, 200-300-12 (identity units,
// squared error) trains it transposed.
static void test_unit_split_epochs_on_one_and_two_threads() {
    CHECK(split_step_fits({300, 256, 10}, 64, Activation::Relu));
    CHECK(split_step_fits({200, 300, 12}, 120, Activation::Identity));
    CHECK(!split_step_fits({300, 256, 10}, 64, Activation::Tanh));      // exp-based units: not exact by parts
    CHECK(!split_step_fits({300, 256, 256, 10}, 64, Activation::Relu)); // one hidden layer only
    CHECK(!split_step_fits({300, 256, 1}, 64, Activation::Relu));       // a single output: GEMV
    CHECK(!split_step_fits({300, 256, 10}, 8, Activation::Relu));       // 8 x 300 x 256 < 2^20
    CHECK(!split_step_fits({100, 256, 10}, 128, Activation::Relu));     // the output layer over a sixteenth
    CHECK(!split_step_fits({784, 1024, 10}, 256, Activation::Relu));    // over 2^27
    CHECK(train_transposed(120, 300, 12) && !train_transposed(64, 256, 10));
    std::mt19937_64 rng(53);
    const int before = blas::num_threads();
    for (const EpochCase& c : {EpochCase{{300, 256, 10}, 321, 64, Activation::Relu, Loss::Softmax},
                               EpochCase{{200, 300, 12}, 299, 120, Activation::Identity, Loss::SquaredError}}) {
        CHECK(split_step_fits(c.sizes, c.batch, c.act));
        const Shape shape{c.sizes, c.act, c.loss};
        const std::size_t n_out = c.sizes.back();
        const auto X = to_float(randn(c.m * c.sizes.front(), rng));
        const auto values = to_float(randn(c.m * n_out, rng, 0.5));
        std::vector<float> weights(c.m);
        std::vector<std::int64_t> labels(c.m), order(c.m);
        for (std::size_t i = 0; i < c.m; ++i) {
            labels[i] = std::int64_t((i * 7) % n_out);
            order[i] = std::int64_t(i);
            weights[i] = float(0.5 + double(i % 3) / 2);
        }
        std::shuffle(order.begin(), order.end(), rng);
        std::vector<std::vector<float>> start;
        for (std::size_t l = 0; l < 2; ++l) start.push_back(to_float(randn(c.sizes[l] * c.sizes[l + 1], rng, 0.05)));
        for (std::size_t l = 0; l < 2; ++l) start.push_back(to_float(randn(c.sizes[l + 1], rng, 0.1)));
        Dataset<float> data{X.data(), c.m};
        if (c.loss == Loss::Softmax) data.y_labels = labels.data(); else data.y_values = values.data();
        data.weights = weights.data();
        for (const auto& [shuffled, method] : {std::pair{true, Method::Sgd}, std::pair{false, Method::Sgd},
                                                std::pair{true, Method::Adam}, std::pair{false, Method::Momentum}}) {
            std::vector<std::vector<double>> first;
            // (OpenBLAS's threads, share_threads): cut by units on one thread and on two; the general step (an
            // optimizer's: OptimizerStep's whole steps)
            const std::pair<int, std::size_t> runs[] = {{1, 1}, {1, 2}, {1, 1}, {1, 2}, {1, 0}, {2, 0}};
            for (const auto& [blas_threads, share_threads] : runs) {
                blas::set_num_threads(blas_threads);
                Optimizer opt;  // plain SGD: no run, the L2 step fused into the products
                opt.method = method;
                opt.nesterov = true;
                OptimizerModel model(start, 2, opt);
                std::vector<std::vector<float>>& p = model.p;
                OptimizerRun<float>* run = method == Method::Sgd ? nullptr : &model.run;
                std::vector<std::vector<double>> seen;
                for (int epoch = 0; epoch < 2; ++epoch) {
                    const EpochResult result =
                        train_epoch<float>(shape, model.params, data, shuffled ? order.data() : nullptr, c.m, c.batch,
                                           0.01f, 0.002f, {}, run, true, 0.005f, share_threads);
                    CHECK(result.steps == (c.m + c.batch - 1) / c.batch && !result.stopped);
                    seen.push_back({result.stats.loss_sum, result.weight_norms, double(result.stats.correct)});
                }
                CHECK(method == Method::Sgd || model.run.step == std::int64_t(2 * ((c.m + c.batch - 1) / c.batch)));
                for (const auto& a : p) seen.emplace_back(a.begin(), a.end());
                if (first.empty()) first = seen;
                check_runs(seen, first, share_threads > 0, [](std::size_t i, std::size_t j, double value) {
                    return i < 2 && j == 2 ? 2.0 : 1e-4 * (1.0 + std::abs(value));  // a correct count may move by one
                });
            }
        }
    }
    blas::set_num_threads(before);
}

// linear_objective (L-BFGS's evaluation at flat parameters): its gradient is gradients()' bit for bit, J is the loss
// sum over m plus lam / 2m ||W||^2, and a kept scratch gives the same bits on every later call, one thread or two.
static void test_linear_objective_is_the_gradients_pass_at_flat_parameters() {
    std::mt19937_64 rng(31);
    const std::size_t m = 9000, n_in = 37, n_out = 3;  // past 4096 records a thread: two threads take part
    auto X = randn(m * n_in, rng), x = randn(n_out * n_in + n_out, rng, 0.2);
    std::vector<std::int64_t> labels(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t((i * 7) % n_out);
    Dataset<double> data{X.data(), m, nullptr, labels.data(), nullptr};
    Shape shape;
    shape.sizes = {n_in, n_out};
    shape.act = Activation::Identity;
    shape.loss = Loss::Softmax;
    const double lam = 2.5;
    std::vector<double> dW(n_out * n_in), db(n_out);
    Params<double> params{{x.data()}, {x.data() + n_out * n_in}}, grads{{dW.data()}, {db.data()}};
    const LossStats stats = gradients(shape, params, data, lam / double(m), grads);
    double squares = 0;
    for (std::size_t k = 0; k < n_out * n_in; ++k) squares += x[k] * x[k];
    LinearScratch<double> scratch;
    std::vector<double> g(x.size()), first;
    double loss_sum = 0, J_first = 0;
    for (int threads : {2, 1, 2}) {
        blas::set_num_threads(threads);
        const double J = linear_objective(shape, x.data(), data, lam, g.data(), scratch, &loss_sum);
        CHECK(loss_sum == stats.loss_sum);
        CHECK(std::equal(dW.begin(), dW.end(), g.begin()) && std::equal(db.begin(), db.end(), g.begin() + dW.size()));
        CHECK(std::abs(J - (stats.loss_sum / double(m) + lam / (2.0 * double(m)) * squares)) <= 1e-14 * std::abs(J));
        if (first.empty()) first = g, J_first = J;
        CHECK(J == J_first && g == first);
    }
}

// The one-read pass (linear_gradients) gives a record the same z, to the bit, wherever it sits: in a group of
// records whose products are summed together (the AVX-512 kernels transpose eight records' partial sums, and read
// their rows' last values a vector at a time when X goes on that far), in the group that ends X (whose last values
// are read one by one), or left over after the groups (dot()). X holds one row m times and each pass weighs one
// record only (the others weigh 0, adding exact zeros), so every pass must return the same gradients and loss.
// (The squared error's: the logistic and softmax losses take exp and log1p four or eight records at a time from
// libmvec and the last few of a block one by one from libm, which may differ in the last bit.)
// m = 128: slices of eight records, the last ending X; m = 136: slices of nine, a record left over in each. The
// AVX2 kernels must give the same bits as the AVX-512 ones.
template <class T>
static void test_linear_pass_gives_a_record_the_same_z_wherever_it_sits() {
    std::mt19937_64 rng(41);
    for (std::size_t n_in : {1, 3, 5, 7, 8, 9, 13, 15, 16, 17, 20, 23, 33, 64})
        for (std::size_t n_out : {1, 3})
            for (std::size_t m : {128, 136}) {
                const auto row = randn(n_in, rng), x = randn(n_out * n_in + n_out, rng, 0.3);
                std::vector<T> X(m * n_in), params(x.begin(), x.end()), y(m * n_out, T(0.5)), weights(m);
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t j = 0; j < n_in; ++j) X[i * n_in + j] = T(row[j]);
                Dataset<T> data{X.data(), m, y.data(), nullptr, weights.data()};
                Shape shape;
                shape.sizes = {n_in, n_out};
                shape.act = Activation::Identity;
                shape.loss = Loss::SquaredError;  // exact arithmetic after z (exp and log differ by a bit in libmvec)
                Params<T> p{{params.data()}, {params.data() + n_out * n_in}};
                std::vector<double> first;
                double first_loss = 0;
                for (bool wide : {true, false}) {
                    set_linear_wide_kernels(wide);
                    for (std::size_t i = 0; i < m; ++i) {
                        std::fill(weights.begin(), weights.end(), T(0));
                        weights[i] = T(1);
                        std::vector<double> g(x.size());
                        Params<double> grads{{g.data()}, {g.data() + n_out * n_in}};
                        const double loss = linear_gradients(shape, p, data, 0.01, grads).loss_sum;
                        if (first.empty()) first = g, first_loss = loss;
                        CHECK(g == first && loss == first_loss);
                    }
                }
            }
    set_linear_wide_kernels(true);
}

// gradients() with share_threads, where gradients_shares allows it: two halves of the records, each with its own
// workspace and sums (under TSAN: no two threads write one buffer), added in a fixed order: the same bits on one
// thread and on two, the one pass's values to the rounding of the other order, and layer_done from the last layer
// down once both halves are in.
template <class T>
static void test_gradients_in_two_halves() {
    std::mt19937_64 rng(43);
    const std::size_t m = 2601, n_in = 21, hidden = 30, n_out = 4;  // halves of 1301 and 1300 records
    Shape shape;
    shape.sizes = {n_in, hidden, n_out};
    shape.act = Activation::Tanh;
    shape.loss = Loss::Softmax;
    CHECK(gradients_shares(shape.sizes, m) && !gradients_shares({n_in, n_out}, m));
    const auto X64 = randn(m * n_in, rng), W64 = randn(hidden * n_in + n_out * hidden, rng, 0.3),
               w64 = randn(m, rng);
    std::vector<T> X(X64.begin(), X64.end()), W(W64.begin(), W64.end()), b(hidden + n_out, T(0.05)), weights(m);
    for (std::size_t i = 0; i < m; ++i) weights[i] = T(std::abs(w64[i]));
    std::vector<std::int64_t> labels(m);
    for (std::size_t i = 0; i < m; ++i) labels[i] = std::int64_t((i * 5) % n_out);
    Dataset<T> data{X.data(), m, nullptr, labels.data(), weights.data()};
    Params<T> params{{W.data(), W.data() + hidden * n_in}, {b.data(), b.data() + hidden}};
    const auto run = [&](std::size_t share_threads, std::vector<std::size_t>* order) {
        std::vector<double> g(W.size() + b.size());
        Params<double> grads{{g.data(), g.data() + hidden * n_in},
                             {g.data() + W.size(), g.data() + W.size() + hidden}};
        std::function<void(std::size_t)> done;
        if (order) done = [order](std::size_t l) { order->push_back(l); };
        const double loss = gradients<T>(shape, params, data, 0.01, grads, nullptr, done, share_threads).loss_sum;
        g.push_back(loss);
        return g;
    };
    const int before = blas::num_threads();
    blas::set_num_threads(1);  // as the cpu backend holds OpenBLAS for the call
    std::vector<std::size_t> order;
    const auto one = run(1, nullptr), two = run(2, &order), whole = run(0, nullptr);
    CHECK(one == two);
    CHECK((order == std::vector<std::size_t>{1, 0}));
    const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
    double largest = 0;
    for (double v : whole) largest = std::max(largest, std::abs(v));
    for (std::size_t i = 0; i < whole.size(); ++i) CHECK(std::abs(one[i] - whole[i]) <= tol * largest);
    CHECK(one != whole);  // another order of the sums: not the one pass's bits
    blas::set_num_threads(before);
}

// |got - want| within tol times the sum of |terms| that made want (tol: the small kernels' tests' 1e-13 or 2e-6).
static bool near_sum(double got, long double want, long double size, double tol) {
    return std::abs(got - double(want)) <= tol * double(size) + 1e-30;
}

// dA (rows x n_in) against (alpha dZ . W) * act'(A_prev) summed in long double, dZ (rows x n_out) with its rows ld
// apart, W (n_out x n_in); ReLU's zeros exact.
template <class T>
static void check_input_gradient(const std::vector<T>& dA, const std::vector<T>& dZ, std::size_t ld,
                                 const std::vector<T>& W, const std::vector<T>& A_prev, std::size_t rows,
                                 std::size_t n_in, std::size_t n_out, T alpha, Activation act, double tol) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t k = 0; k < n_in; ++k) {
            long double d = 0, size = 0;
            for (std::size_t o = 0; o < n_out; ++o) {
                d += (long double)dZ[r * ld + o] * W[o * n_in + k];
                size += std::abs((long double)dZ[r * ld + o] * W[o * n_in + k]);
            }
            if (act == Activation::Relu && !(A_prev[r * n_in + k] > 0)) CHECK(dA[r * n_in + k] == T(0));
            else CHECK(near_sum(dA[r * n_in + k], alpha * d, size, tol));
        }
}

// A weight step against beta W + alpha A^T dZ and b - 0.5 sum_rows dZ in long double: w_new(o, k) and w_old(o, k) the
// weights after and before, a(r, k) row r of A, dZ (rows x n_out) with its rows ld apart.
template <class T, class After, class Before, class Left>
static void check_weight_step(After w_new, Before w_old, Left a, const std::vector<T>& b_new, const std::vector<T>& b,
                              const std::vector<T>& dZ, std::size_t ld, std::size_t rows, std::size_t n_in,
                              std::size_t n_out, T alpha, T beta, double tol) {
    for (std::size_t o = 0; o < n_out; ++o) {
        for (std::size_t k = 0; k < n_in; ++k) {
            long double g = 0, size = std::abs(beta * w_old(o, k));
            for (std::size_t r = 0; r < rows; ++r) {
                g += (long double)a(r, k) * dZ[r * ld + o];
                size += std::abs((long double)a(r, k) * dZ[r * ld + o]);
            }
            CHECK(near_sum(w_new(o, k), (long double)beta * w_old(o, k) + alpha * g, size, tol));
        }
        long double sum = 0, size = std::abs(b[o]);
        for (std::size_t r = 0; r < rows; ++r) {
            sum += dZ[r * ld + o];
            size += std::abs(0.5L * dZ[r * ld + o]);
        }
        CHECK(near_sum(b_new[o], b[o] - 0.5L * sum, size, tol));
    }
}

// The small-layer kernels against plain loops of their formulas (summed in long double), float64 tightly and float32
// loosely (to its rounding of sums of |terms|), at and around their register widths (16 floats, 8 doubles) and row
// blocks, with the batch's rows given in a shuffled order; ReLU's zeros exact.
template <class T>
static void small_kernels_match_plain_loops(std::size_t rows, std::size_t n_in, std::size_t n_out, std::mt19937_64& rng) {
    const double tol = std::is_same_v<T, double> ? 1e-13 : 2e-6;
    auto draw = [&](std::size_t n) {
        const std::vector<double> v = randn(n, rng);
        return std::vector<T>(v.begin(), v.end());
    };
    auto near = [&](double got, long double want, long double size) { return near_sum(got, want, size, tol); };
    const std::vector<T> X = draw(3 * rows * n_in), W_t = draw(n_in * n_out), b = draw(n_out), dZ = draw(rows * n_out);
    std::vector<const T*> A_rows(rows);
    for (std::size_t r = 0; r < rows; ++r) A_rows[r] = X.data() + ((r * 7 + 2) % (3 * rows)) * n_in;  // scattered
    const T alpha = T(0.75);
    for (Activation act : {Activation::Identity, Activation::Relu}) {
        std::vector<T> Z(rows * n_out, T(-9));
        small_forward(A_rows.data(), rows, n_in, W_t.data(), n_out, alpha, b.data(), act, Z.data());
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t o = 0; o < n_out; ++o) {
                long double z = 0, size = std::abs(b[o]);
                for (std::size_t k = 0; k < n_in; ++k) {
                    z += (long double)A_rows[r][k] * W_t[k * n_out + o];
                    size += std::abs((long double)A_rows[r][k] * W_t[k * n_out + o]);
                }
                z = alpha * z + b[o];
                if (act == Activation::Relu && !(z > 0)) CHECK(Z[r * n_out + o] == T(0));
                else CHECK(near(Z[r * n_out + o], z, size));
            }
    }
    // the input gradient: W (n_out x n_in) from W_t, A_prev with about half its entries zero (ReLU's outputs)
    std::vector<T> W(n_out * n_in), A_prev = draw(rows * n_in), dA(rows * n_in, T(-9));
    for (std::size_t k = 0; k < n_in; ++k)
        for (std::size_t o = 0; o < n_out; ++o) W[o * n_in + k] = W_t[k * n_out + o];
    for (T& a : A_prev) a = std::max(a, T(0));
    for (Activation act : {Activation::Identity, Activation::Relu}) {
        small_backward_input(dZ.data(), rows, n_out, W.data(), n_in, alpha, A_prev.data(), act, dA.data());
        check_input_gradient(dA, dZ, n_out, W, A_prev, rows, n_in, n_out, alpha, act, tol);
    }
    // the weight step, with beta = 1 (the scale path) and beta < 1, and the next rows asked for meanwhile
    for (T beta : {T(1), T(0.4)}) {
        std::vector<T> W_new = W_t, b_new = b;
        std::vector<const void*> next(A_rows.begin(), A_rows.end());
        small_weight_step(A_rows.data(), dZ.data(), rows, n_in, n_out, alpha, beta, T(-0.5), W_new.data(),
                          b_new.data(), RowsAhead{next.data(), next.size(), n_in * sizeof(T)});
        check_weight_step([&](std::size_t o, std::size_t k) { return W_new[k * n_out + o]; },
                          [&](std::size_t o, std::size_t k) { return W_t[k * n_out + o]; },
                          [&](std::size_t r, std::size_t k) { return A_rows[r][k]; }, b_new, b, dZ, n_out, rows, n_in,
                          n_out, alpha, beta, tol);
    }
}

// The narrow output layer's kernels (n_out <= a register's lanes, W kept as it is, the input and dL/dZ transposed)
// against plain loops in long double: the transposed copy exactly, the forward product with the softmax loss fused
// in (with and without sample weights, records in a shuffled order), the input gradient and the weight step.
template <class T>
static void small_narrow_kernels_match_plain_loops(std::size_t rows, std::size_t n_in, std::size_t n_out,
                                                   std::mt19937_64& rng) {
    const std::size_t ld = rows + 3;  // the transposed arrays' rows longer than the batch, their ends never touched
    const double tol = std::is_same_v<T, double> ? 1e-13 : 2e-6;
    auto draw = [&](std::size_t n) {
        const std::vector<double> v = randn(n, rng);
        return std::vector<T>(v.begin(), v.end());
    };
    auto near = [&](double got, long double want, long double size) { return near_sum(got, want, size, tol); };
    const std::vector<T> A = draw(rows * n_in), W = draw(n_out * n_in), b = draw(n_out);
    std::vector<T> A_t(n_in * ld, T(-9));
    small_transpose(A.data(), rows, n_in, ld, A_t.data());
    for (std::size_t k = 0; k < n_in; ++k)
        for (std::size_t r = 0; r < ld; ++r) CHECK(A_t[k * ld + r] == (r < rows ? A[r * n_in + k] : T(-9)));
    // the loss over records 3 * rows .. 4 * rows - 1 of a larger set, given in a shuffled order
    const std::size_t m = 4 * rows;
    std::vector<std::int64_t> labels(m), order(rows);
    for (std::int64_t& label : labels) label = std::int64_t(rng() % n_out);
    for (std::size_t r = 0; r < rows; ++r) order[r] = std::int64_t(3 * rows + (r * 5 + 1) % rows);
    std::vector<T> weights(m);
    for (T& w : weights) w = T(0.25 + double(rng() % 8) / 4);
    const T alpha = T(0.75);
    for (bool weighted : {false, true}) {
        Targets<T> y;
        y.labels = labels.data();
        y.rows = order.data();
        y.weights = weighted ? weights.data() : nullptr;
        std::vector<T> dZ_t(n_out * ld, T(-9));
        const LossStats stats = small_forward_softmax(A_t.data(), rows, ld, n_in, W.data(), n_out, alpha, b.data(),
                                                      y, dZ_t.data());
        for (std::size_t o = 0; o < n_out; ++o)
            for (std::size_t r = rows; r < ld; ++r) CHECK(dZ_t[o * ld + r] == T(-9));
        long double loss_sum = 0;
        std::int64_t correct = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            std::vector<long double> z(n_out);
            long double size = 0;  // the logits' rounding: their sums of |terms|
            for (std::size_t o = 0; o < n_out; ++o) {
                long double zo = 0, so = std::abs(b[o]);
                for (std::size_t k = 0; k < n_in; ++k) {
                    zo += (long double)A[r * n_in + k] * W[o * n_in + k];
                    so += std::abs((long double)A[r * n_in + k] * W[o * n_in + k]);
                }
                z[o] = alpha * zo + b[o];
                size = std::max(size, so);
            }
            const std::size_t record = std::size_t(order[r]), label = std::size_t(labels[record]);
            const std::size_t best = std::size_t(std::max_element(z.begin(), z.end()) - z.begin());
            correct += best == label;
            const long double top = z[best];
            long double total = 0;
            for (long double zo : z) total += std::exp(zo - top);
            const long double w = weighted ? weights[record] : 1;
            loss_sum += w * (std::log(total) + top - z[label]);
            for (std::size_t o = 0; o < n_out; ++o) {
                const long double p = std::exp(z[o] - top) / total - (o == label ? 1 : 0);
                CHECK(near(dZ_t[o * ld + r], w * p, 4 * size + 1));  // 4 size: each p moves with every logit
            }
        }
        CHECK(stats.correct == correct);
        CHECK(std::abs(stats.loss_sum - double(loss_sum)) <= 50 * tol * double(rows) * double(1 + n_in));
    }
    // the input gradient and the weight step, from dL/dZ transposed (the entries past the batch's never read)
    std::vector<T> dZ(rows * n_out), dZ_t(n_out * ld, std::numeric_limits<T>::quiet_NaN());
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t o = 0; o < n_out; ++o) dZ_t[o * ld + r] = dZ[r * n_out + o] = T(randn(1, rng)[0]);
    std::vector<T> A_prev = A, dA(rows * n_in, T(-9));
    for (T& a : A_prev) a = std::max(a, T(0));
    for (Activation act : {Activation::Identity, Activation::Relu}) {
        small_backward_input_narrow(dZ_t.data(), ld, rows, n_out, W.data(), n_in, alpha, A_prev.data(), act,
                                    dA.data());
        check_input_gradient(dA, dZ, n_out, W, A_prev, rows, n_in, n_out, alpha, act, tol);
    }
    for (T beta : {T(1), T(0.4)}) {
        std::vector<T> W_new = W, b_new = b;
        small_weight_step_narrow(dZ_t.data(), ld, A.data(), rows, n_in, n_out, alpha, beta, T(-0.5), W_new.data(),
                                 b_new.data());
        check_weight_step([&](std::size_t o, std::size_t k) { return W_new[o * n_in + k]; },
                          [&](std::size_t o, std::size_t k) { return W[o * n_in + k]; },
                          [&](std::size_t r, std::size_t k) { return A[r * n_in + k]; }, b_new, b, dZ, n_out, rows,
                          n_in, n_out, alpha, beta, tol);
    }
}

static void test_small_kernels_match_plain_loops() {
    if (!small_kernels_available()) {
        std::printf("small-layer kernels: not on this machine (no AVX-512F); their tests not run\n");
        return;
    }
    std::mt19937_64 rng(41);
    for (std::size_t rows : {1, 2, 3, 4, 5, 9, 32, 33})
        for (std::size_t n_in : {1, 7, 16, 64, 100})
            for (std::size_t n_out : {1, 7, 8, 9, 15, 16, 17, 48, 63, 64, 65, 100, 128}) {
                small_kernels_match_plain_loops<double>(rows, n_in, n_out, rng);
                small_kernels_match_plain_loops<float>(rows, n_in, n_out, rng);
            }
    for (std::size_t rows : {1, 2, 3, 4, 5, 9, 32, 33, 70})  // 70: two chunks of the loss's records
        for (std::size_t n_in : {1, 7, 16, 17, 64, 100})
            for (std::size_t n_out : {2, 3, 7, 8, 9, 10, 15, 16}) {
                if (n_out <= small_lanes<double>) small_narrow_kernels_match_plain_loops<double>(rows, n_in, n_out, rng);
                small_narrow_kernels_match_plain_loops<float>(rows, n_in, n_out, rng);
            }
}

// The narrow softmax's e^x (float: a polynomial of l2fast's own) at the ends of its range: logits whose
// differences run from 0 to far below e^x's underflow (-300) and near float's largest, against long double; a NaN
// logit makes its own record's dL/dZ NaN and no other's.
static void test_small_softmax_at_extreme_logits() {
    if (!small_kernels_available()) return;
    constexpr std::size_t rows = 20, n_out = 10, ld = 32;
    const float spread[n_out] = {0.0f, -1e-3f, -0.35f, -5.0f, -40.0f, -87.0f, -88.5f, -103.0f, -104.5f, -300.0f};
    std::vector<float> Z_t(n_out * ld, 0.0f);
    std::vector<std::int64_t> labels(rows);
    for (std::size_t r = 0; r < rows; ++r) {
        const float shift = r % 3 == 0 ? 0.0f : r % 3 == 1 ? 1e4f : -2e4f;
        for (std::size_t o = 0; o < n_out; ++o) Z_t[o * ld + r] = shift + spread[(o + r) % n_out];
        labels[r] = std::int64_t(r % n_out);
    }
    Z_t[4 * ld + 7] = std::numeric_limits<float>::quiet_NaN();  // record 7's class 4
    Targets<float> y;
    y.labels = labels.data();
    const std::vector<float> z = Z_t;
    small_softmax_transposed(Z_t.data(), ld, rows, n_out, y);
    for (std::size_t r = 0; r < rows; ++r) {
        if (r == 7) {
            for (std::size_t o = 0; o < n_out; ++o) CHECK(std::isnan(Z_t[o * ld + r]));
            continue;
        }
        long double top = z[r], total = 0;
        for (std::size_t o = 0; o < n_out; ++o) top = std::max(top, (long double)z[o * ld + r]);
        for (std::size_t o = 0; o < n_out; ++o) total += std::exp((long double)z[o * ld + r] - top);
        for (std::size_t o = 0; o < n_out; ++o) {
            const long double p = std::exp((long double)z[o * ld + r] - top) / total - (std::int64_t(o) == labels[r]);
            CHECK(std::abs(Z_t[o * ld + r] - p) <= 4e-7L * (std::abs(p) + 1e-30L) + 1e-44L);
        }
    }
}

static void test_shuffled_order_is_a_permutation_and_asks_for_spare_words() {
    std::mt19937_64 gen(17);
    for (std::size_t m : {std::size_t(0), std::size_t(1), std::size_t(2), std::size_t(7), std::size_t(1000)}) {
        std::vector<std::uint64_t> raw(m + 2);
        for (auto& w : raw) w = gen();
        std::vector<std::int64_t> order(m, -1);
        const std::ptrdiff_t used = shuffled_order(raw.data(), raw.size(), order.data(), m);
        CHECK(used == std::ptrdiff_t(m > 1 ? m - 1 : 0));
        std::vector<std::int64_t> sorted(order);
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t i = 0; i < m; ++i) CHECK(sorted[i] == std::int64_t(i));
    }
    // a zero word is rejected for a bound that is not a power of two (5): the spare after the m-1 words is used,
    // and without one the call asks for more
    std::vector<std::uint64_t> raw = {0, gen(), gen(), gen(), gen()};
    std::vector<std::int64_t> order(5);
    CHECK(shuffled_order(raw.data(), raw.size(), order.data(), 5) == 5);
    CHECK(shuffled_order(raw.data(), 4, order.data(), 5) == -1);
    CHECK(shuffled_order(raw.data(), 3, order.data(), 5) == -1);
}

// shuffled_order_drawn, its words from a generator, gives shuffled_order's order on the same words and draws the
// spare words after them; a rejected word (it would need a spare from the end) makes it return false.
struct WordsInTurn {
    const std::uint64_t* words;
    std::size_t next = 0;
    static std::uint64_t draw(void* self) {
        auto* w = static_cast<WordsInTurn*>(self);
        return w->words[w->next++];
    }
};

static void test_shuffled_order_drawn_is_the_order_of_the_drawn_words() {
    std::mt19937_64 gen(23);
    for (std::size_t m : {std::size_t(2), std::size_t(3), std::size_t(50), std::size_t(1000)}) {
        std::vector<std::uint64_t> raw(m - 1 + 4);
        for (auto& w : raw) w = gen();
        std::vector<std::int64_t> expected(m), order(m, -1);
        CHECK(shuffled_order(raw.data(), raw.size(), expected.data(), m) == std::ptrdiff_t(m - 1));
        WordsInTurn words{raw.data()};
        CHECK(shuffled_order_drawn(WordsInTurn::draw, &words, order.data(), m, 4));
        CHECK(order == expected && words.next == raw.size());
    }
    std::vector<std::uint64_t> raw = {0, gen(), gen(), gen(), gen(), gen(), gen(), gen()};  // bound 5 rejects 0
    std::vector<std::int64_t> order(5);
    WordsInTurn words{raw.data()};
    CHECK(!shuffled_order_drawn(WordsInTurn::draw, &words, order.data(), 5, 4));
    WordsInTurn none{raw.data()};
    CHECK(!shuffled_order_drawn(WordsInTurn::draw, &none, order.data(), 1, 4) && none.next == 0);
}

// The linear step (linear_sgd_epoch in runs of one step, so asked to stop after every step) with steps of two shares
// (batch >= 128) on one thread and on two: the same bits, and asked to stop after the third step, both stop there with
// the W, b, loss and weights' norms of the same epoch over just those three steps' records. Run under ThreadSanitizer
// by tests/test_cpp_kernels.py.
static void test_linear_steps_of_two_shares_on_one_and_two_threads() {
    std::mt19937_64 rng(29);
    const std::size_t m = 700, n_in = 21, n_out = 3, batch = 200;  // steps of 200, 200, 200 and a short 100
    Shape shape{{n_in, n_out}, Activation::Relu, Loss::Softmax};
    const auto X = randn(m * n_in, rng), W0 = randn(n_out * n_in, rng, 0.3), b0 = randn(n_out, rng, 0.1);
    std::vector<std::int64_t> y(m), order(m);
    for (std::size_t i = 0; i < m; ++i) {
        y[i] = std::int64_t(rng() % n_out);
        order[i] = std::int64_t(i);
    }
    std::shuffle(order.begin(), order.end(), rng);
    Dataset<double> data{X.data(), m, nullptr, y.data(), nullptr};
    const int before = blas::num_threads();
    std::vector<double> W_of[2][2], b_of[2][2];
    for (int threads : {1, 2}) {
        blas::set_num_threads(threads);
        for (int stopping : {0, 1}) {
            std::vector<double> W = W0, b = b0;
            Params<double> params{{W.data()}, {b.data()}};
            int asked = 0;
            const EpochResult r = linear_sgd_epoch<double>(shape, params, data, order.data(), m, batch, 0.2, 0.01,
                                                           [&] { return stopping && ++asked == 3; }, true,
                                                           std::chrono::microseconds(0));
            CHECK(stopping ? (r.stopped && r.steps == 3) : (!r.stopped && r.steps == 4));
            W_of[threads - 1][stopping] = W;
            b_of[threads - 1][stopping] = b;
            if (stopping) {
                std::vector<double> W_three = W0, b_three = b0;
                Params<double> three{{W_three.data()}, {b_three.data()}};
                const EpochResult r3 = linear_sgd_epoch<double>(shape, three, data, order.data(), 3 * batch, batch,
                                                                0.2, 0.01, {}, true);
                CHECK(!r3.stopped && r3.steps == 3 && W_three == W && b_three == b);
                CHECK(r3.stats.loss_sum == r.stats.loss_sum && r3.weight_norms == r.weight_norms);
            }
        }
    }
    blas::set_num_threads(before);
    for (int stopping : {0, 1}) {
        CHECK(W_of[0][stopping] == W_of[1][stopping] && b_of[0][stopping] == b_of[1][stopping]);
        CHECK(W_of[0][stopping] != W0);
    }
    CHECK(W_of[0][0] != W_of[0][1]);
}

int main() {
    serve_openblas_threads();  // as the module's import does
    test_small_kernels_match_plain_loops();
    test_small_softmax_at_extreme_logits();
    test_small_layers_train_transposed_where_openblas_would_pack();
    test_optimizer_epochs_read_forward_copies_and_step_as_on_w();
    test_optimizer_epochs_on_kept_buffers_give_the_same_bits();
    test_optimizer_steps_of_two_shares_on_one_and_two_threads();
    test_unit_split_epochs_on_one_and_two_threads();
    test_partial_output_epochs_on_one_and_two_threads();
    test_dense_forward();
    test_activation_backward_is_the_derivative();
    test_fused_step_equals_the_unfused_formula();
    test_gemm_takes_the_gemv_path_for_single_rows_and_columns_correctly();
    test_loss_gradient_is_the_derivative_of_the_loss();
    test_checks_refuse_bad_input();
    test_parallel_for_covers_every_index_once();
    test_openblas_jobs_run_on_the_pool();
    test_parallel_for_inside_a_job_runs_its_shares_in_order();
    check_passes_on_threads<float>();
    check_passes_on_threads<double>();
    test_parallel_for_back_to_back_jobs();
    test_parallel_for_jobs_of_changing_share_counts();
    test_parallel_for_passes_a_shares_exception_to_the_caller();
    test_parallel_for_caller_takes_the_shares_a_late_helper_leaves();
    test_parallel_steps_run_each_part_once_in_step_order();
    test_parallel_steps_end_early_and_pass_exceptions();
    test_leave_cpu_moves_off_and_keeps_the_mask();
    test_parallel_sum_adds_the_shares_in_order();
    test_optimizer_steps_sum_the_old_squares();
    test_training_stops_when_asked();
    test_parallel_for_from_several_threads_at_once();
    test_training_stops_when_another_thread_asks();
    test_two_adam_trainings_in_two_threads_match_one_after_the_other();
    test_stacked_training_equals_separate_runs();
    for (bool wide : {true, false}) {  // the AVX-512 kernels (where the machine has them) and the AVX2 ones
        set_linear_wide_kernels(wide);
        for (const auto& [n_in, n_out] : std::vector<std::pair<std::size_t, std::size_t>>{
                 {13, 3}, {9, 2}, {100, 5}, {37, 6}, {70, 7}, {21, 10}, {130, 4}, {100, 1}})
            test_linear_step_equals_the_plain_formula(n_in, n_out);
        test_linear_step_equals_the_plain_formula(21, 10, 700, 200);
        test_linear_step_equals_the_plain_formula(100, 1, 700, 200);
        for (const auto& [n_in, n_out] : std::vector<std::pair<std::size_t, std::size_t>>{
                 {13, 3}, {100, 10}, {37, 6}, {70, 7}, {21, 16}, {100, 1}})
            test_linear_step_equals_the_plain_formula(n_in, n_out, 700, 200, true);
    }
    set_linear_wide_kernels(true);
    test_training_lowers_the_cost_and_gradients_vanish_at_lam_only();
    test_sample_weights_scale_each_record();
    test_float_gradients_are_summed_in_double();
    test_sparse_products_equal_dense();
    test_check_csr_refuses_malformed_matrices();
    test_network_on_sparse_x_equals_dense();
    test_newton_passes_agree();
    test_linear_objective_is_the_gradients_pass_at_flat_parameters();
    test_linear_pass_gives_a_record_the_same_z_wherever_it_sits<double>();
    test_linear_pass_gives_a_record_the_same_z_wherever_it_sits<float>();
    test_gradients_in_two_halves<double>();
    test_gradients_in_two_halves<float>();
    test_shuffled_order_is_a_permutation_and_asks_for_spare_words();
    test_shuffled_order_drawn_is_the_order_of_the_drawn_words();
    test_floor_reads_for_every_batch_size();
    test_linear_steps_of_two_shares_on_one_and_two_threads();
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
