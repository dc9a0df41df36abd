// The one BLAS wrapper: typed GEMM over scipy-openblas32's prefixed CBLAS, row-major throughout.
#pragma once

#include <cblas.h>

#include <cstddef>
#include <vector>

#include "blas_threads.hpp"
#include "parallel.hpp"

namespace l2fast::blas {

enum class Op { N, T };

inline CBLAS_TRANSPOSE cblas_op(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

inline int num_threads() { return scipy_openblas_get_num_threads(); }
inline void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
inline const char* config() { return scipy_openblas_get_config(); }

// GEMV for the products with a single output row or column, where GEMM's packing costs several
// times the arithmetic (logistic regression's n_out = 1). All matrices row-major.
inline void gemv(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, int incx,
                 float beta, float* y, int incy) {
    scipy_cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, beta,
                      y, incy);
}

inline void gemv(bool trans, int rows, int cols, double alpha, const double* A, int lda, const double* x, int incx,
                 double beta, double* y, int incy) {
    scipy_cblas_dgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, incx, beta,
                      y, incy);
}

// y <- beta y + alpha sum_r A[r] (A rows x cols, row-major with leading dimension lda; beta = 0 overwrites y): a
// bias's gradient, dZ^T 1, with each column's rows added in row order, the same bits on any thread count. OpenBLAS's
// GEMV split such a sum's columns over its threads at places that depend on their count, and its kernels add a
// column's rows in another order near those places (float32 10 000-class softmax: other last bits on one thread than
// on two), while l2fast chooses the thread count by the load of the machine.
template <class T>
void sum_rows(int rows, int cols, T alpha, const T* A, int lda, T beta, T* y);

inline void gemm_call(Op op_a, Op op_b, int m, int n, int k, float alpha, const float* A, int lda, const float* B,
                      int ldb, float beta, float* C, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm_call(Op op_a, Op op_b, int m, int n, int k, double alpha, const double* A, int lda,
                      const double* B, int ldb, double beta, double* C, int ldc) {
    scipy_cblas_dgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// OpenBLAS cuts an inner dimension k longer than its GEMM_Q (384 to 512 on x86) into blocks whose sizes
// depend on its thread count, and with them the last bits of C (measured: k = 513, 600, 777 in float32,
// 385 in float64, one thread against two). l2fast changes the thread count with the load of the machine,
// so a longer k is cut here instead, into near-equal slices of at most kMaxInner, each a product of its
// own accumulated into C: the same bits on any thread count, for about the price of OpenBLAS's own cut.
constexpr int kMaxInner = 256;

template <class T>
void gemm_sliced(Op op_a, Op op_b, int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
                 T* C, int ldc) {
    const int slices = (k + kMaxInner - 1) / kMaxInner;
    for (int s = 0; s < slices; ++s) {
        const int k0 = int(std::size_t(k) * s / slices), k1 = int(std::size_t(k) * (s + 1) / slices);
        // Columns k0..k1 of op(A) and rows k0..k1 of op(B), wherever they lie in memory.
        const T* A_s = op_a == Op::N ? A + k0 : A + std::size_t(k0) * lda;
        const T* B_s = op_b == Op::N ? B + std::size_t(k0) * ldb : B + k0;
        gemm_call(op_a, op_b, m, n, k1 - k0, alpha, A_s, lda, B_s, ldb, s == 0 ? beta : T(1), C, ldc);
    }
}

// C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all row-major.
template <class T>
void gemm(Op op_a, Op op_b, int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
          int ldc) {
    if (n == 1) {
        // C's column = op(A) . (B's only column), which is strided by ldb when B is stored k x 1.
        if (op_a == Op::N)
            gemv(false, m, k, alpha, A, lda, B, op_b == Op::N ? ldb : 1, beta, C, ldc);
        else
            gemv(true, k, m, alpha, A, lda, B, op_b == Op::N ? ldb : 1, beta, C, ldc);
    } else if (m == 1) {
        // C's row^T = op(B)^T . (A's only row)^T.
        if (op_b == Op::N)
            gemv(true, k, n, alpha, B, ldb, A, op_a == Op::N ? 1 : lda, beta, C, 1);
        else
            gemv(false, n, k, alpha, B, ldb, A, op_a == Op::N ? 1 : lda, beta, C, 1);
    } else if (k > kMaxInner) {
        gemm_sliced(op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        gemm_call(op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

inline void gemm_batch_call(const CBLAS_TRANSPOSE* ta, const CBLAS_TRANSPOSE* tb, const int* m, const int* n,
                            const int* k, const float* alpha, const float** A, const int* lda, const float** B,
                            const int* ldb, const float* beta, float** C, const int* ldc, int count,
                            const int* sizes) {
    scipy_cblas_sgemm_batch(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, count, sizes);
}

inline void gemm_batch_call(const CBLAS_TRANSPOSE* ta, const CBLAS_TRANSPOSE* tb, const int* m, const int* n,
                            const int* k, const double* alpha, const double** A, const int* lda, const double** B,
                            const int* ldb, const double* beta, double** C, const int* ldc, int count,
                            const int* sizes) {
    scipy_cblas_dgemm_batch(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, count, sizes);
}

// Several GEMMs of one shape with their own alpha and beta, handed to OpenBLAS as one batch: it runs
// them side by side, each on one thread, where one small GEMM alone would keep a single core busy.
// The per-GEMM argument arrays are sized once, for up to `capacity` products.
template <class T>
class Batch {
public:
    explicit Batch(std::size_t capacity)
        : ta_(capacity), tb_(capacity), m_(capacity), n_(capacity), k_(capacity), lda_(capacity), ldb_(capacity),
          ldc_(capacity), sizes_(capacity, 1) {}

    // C[i] (m x n) = alpha[i] op(A[i]) op(B[i]) + beta[i] C[i] for i < count.
    void gemm(Op op_a, Op op_b, int m, int n, int k, const T* alpha, const T* const* A, int lda,
              const T* const* B, int ldb, const T* beta, T* const* C, int ldc, std::size_t count) {
        if (m == 1 || n == 1) {  // GEMV territory: the one-by-one path is faster there
            for (std::size_t i = 0; i < count; ++i)
                blas::gemm(op_a, op_b, m, n, k, alpha[i], A[i], lda, B[i], ldb, beta[i], C[i], ldc);
            return;
        }
        if (count >= 2 && openblas_threads_served() && num_threads() >= 2) {
            // OpenBLAS would hand its threads the products a pair at a time, one hand-off per pair (64-64-10 models
            // eight at once: 4 a call); l2fast's threads take half the batch each instead, one hand-off a call, with
            // OpenBLAS on one thread meanwhile (inside a job of the pool, the halves one after the other, as
            // parallel_for runs them there). Each product still runs whole on one thread: the same bits.
            const int threads = num_threads();
            set_num_threads(1);
            parallel_for(count, std::size_t(threads), 1, [&](std::size_t first, std::size_t last) {
                gemm_range(op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, first, last);
            }, kBlasPoll);
            set_num_threads(threads);
            return;
        }
        gemm_range(op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, 0, count);
    }

private:
    // Products first..last-1 of the batch, handed to OpenBLAS as one batch.
    void gemm_range(Op op_a, Op op_b, int m, int n, int k, const T* alpha, const T* const* A, int lda,
                    const T* const* B, int ldb, const T* beta, T* const* C, int ldc, std::size_t first,
                    std::size_t last) {
        for (std::size_t i = first; i < last; ++i) {
            ta_[i] = cblas_op(op_a);
            tb_[i] = cblas_op(op_b);
            m_[i] = m;
            n_[i] = n;
            k_[i] = k;
            lda_[i] = lda;
            ldb_[i] = ldb;
            ldc_[i] = ldc;
        }
        gemm_batch_call(ta_.data() + first, tb_.data() + first, m_.data() + first, n_.data() + first,
                        k_.data() + first, alpha + first, const_cast<const T**>(A) + first, lda_.data() + first,
                        const_cast<const T**>(B) + first, ldb_.data() + first, beta + first,
                        const_cast<T**>(C) + first, ldc_.data() + first, int(last - first), sizes_.data() + first);
    }

    std::vector<CBLAS_TRANSPOSE> ta_, tb_;
    std::vector<int> m_, n_, k_, lda_, ldb_, ldc_, sizes_;
};

// y (n) = alpha * x + beta * y.
inline void axpby(int n, float alpha, const float* x, float beta, float* y) {
    scipy_cblas_saxpby(n, alpha, x, 1, beta, y, 1);
}

inline void axpby(int n, double alpha, const double* x, double beta, double* y) {
    scipy_cblas_daxpby(n, alpha, x, 1, beta, y, 1);
}

// y (n) += alpha * x.
inline void axpy(int n, float alpha, const float* x, float* y) { scipy_cblas_saxpy(n, alpha, x, 1, y, 1); }
inline void axpy(int n, double alpha, const double* x, double* y) { scipy_cblas_daxpy(n, alpha, x, 1, y, 1); }

}  // namespace l2fast::blas
