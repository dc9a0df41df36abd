// The one BLAS wrapper: typed GEMM over scipy-openblas32's prefixed CBLAS, row-major throughout.
#pragma once

#include <cblas.h>

namespace l2fast::blas {

enum class Op { N, T };

inline CBLAS_TRANSPOSE cblas_op(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

// C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all row-major.
inline void gemm(Op op_a, Op op_b, int m, int n, int k, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb,
                      beta, C, ldc);
}

inline void gemm(Op op_a, Op op_b, int m, int n, int k, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
    scipy_cblas_dgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb,
                      beta, C, ldc);
}

// y (n) = alpha * A^T x + beta * y, with A (m x n) row-major: the column sums of A when x is all ones.
inline void gemv_t(int m, int n, float alpha, const float* A, const float* x, float beta, float* y) {
    scipy_cblas_sgemv(CblasRowMajor, CblasTrans, m, n, alpha, A, n, x, 1, beta, y, 1);
}

inline void gemv_t(int m, int n, double alpha, const double* A, const double* x, double beta, double* y) {
    scipy_cblas_dgemv(CblasRowMajor, CblasTrans, m, n, alpha, A, n, x, 1, beta, y, 1);
}

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

inline int num_threads() { return scipy_openblas_get_num_threads(); }
inline void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
inline const char* config() { return scipy_openblas_get_config(); }

}  // namespace l2fast::blas
