// The GEMM-only yardstick for the training epoch.
#include "limits.hpp"

#include <algorithm>
#include <chrono>
#include <random>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "dense.hpp"

namespace l2fast {

template <class T>
double gemm_only_epoch_seconds(const Shape& shape, std::size_t m, std::size_t batch) {
    batch = std::min(batch, m);
    const std::size_t L = shape.n_layers();
    std::mt19937 rng(0);
    std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
    auto random = [&](std::size_t n) {
        std::vector<T> v(n);
        for (T& x : v) x = T(dist(rng));
        return v;
    };
    std::vector<std::vector<T>> W, A, dZ;
    A.push_back(random(batch * shape.sizes[0]));
    for (std::size_t l = 0; l < L; ++l) {
        W.push_back(random(shape.sizes[l + 1] * shape.sizes[l]));
        A.push_back(random(batch * shape.sizes[l + 1]));
        dZ.push_back(random(batch * shape.sizes[l + 1]));
    }
    // The layers an epoch trains on W^T (n_in x n_out, train_transposed) have their products in that layout here.
    std::vector<bool> transposed(L);
    for (std::size_t l = 0; l < L; ++l)
        transposed[l] = std::is_same_v<T, float> && train_transposed(batch, shape.sizes[l], shape.sizes[l + 1]);
    auto step = [&](int rows) {
        for (std::size_t l = 0; l < L; ++l) {
            const int n_in = int(shape.sizes[l]), n_out = int(shape.sizes[l + 1]);
            if (transposed[l])
                transposed_forward(A[l].data(), std::size_t(rows), std::size_t(n_in), W[l].data(),
                                   std::size_t(n_out), T(1), A[l + 1].data());
            else
                blas::gemm(blas::Op::N, blas::Op::T, rows, n_out, n_in, T(1), A[l].data(), n_in, W[l].data(), n_in,
                           T(0), A[l + 1].data(), n_out);
        }
        for (std::size_t l = L; l-- > 0;) {
            const int n_in = int(shape.sizes[l]), n_out = int(shape.sizes[l + 1]);
            if (l > 0 && transposed[l])
                blas::gemm(blas::Op::N, blas::Op::T, rows, n_in, n_out, T(1), dZ[l].data(), n_out, W[l].data(), n_out,
                           T(0), dZ[l - 1].data(), n_in);
            else if (l > 0)
                blas::gemm(blas::Op::N, blas::Op::N, rows, n_in, n_out, T(1), dZ[l].data(), n_out, W[l].data(), n_in,
                           T(0), dZ[l - 1].data(), n_in);
            // Tiny step so that W stays bounded over many repetitions.
            if (transposed[l])
                transposed_weight_product(A[l].data(), dZ[l].data(), std::size_t(rows), std::size_t(n_in),
                                          std::size_t(n_out), T(-1e-6), T(1), W[l].data());
            else
                blas::gemm(blas::Op::T, blas::Op::N, n_out, n_in, rows, T(-1e-6), dZ[l].data(), n_out, A[l].data(),
                           n_in, T(1), W[l].data(), n_in);
        }
    };
    step(int(batch));  // warm-up: thread start, page faults
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t done = 0; done < m; done += batch) step(int(std::min(batch, m - done)));
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template double gemm_only_epoch_seconds<float>(const Shape&, std::size_t, std::size_t);
template double gemm_only_epoch_seconds<double>(const Shape&, std::size_t, std::size_t);

}  // namespace l2fast
