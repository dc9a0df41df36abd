// The one BLAS wrapper: typed GEMM over scipy-openblas32's prefixed CBLAS, row-major throughout.
#pragma once

#include <cblas.h>

namespace l2fast::blas {

enum class Op { N, T };

inline CBLAS_TRANSPOSE cblas_op(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

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

inline void gemm_call(Op op_a, Op op_b, int m, int n, int k, float alpha, const float* A, int lda, const float* B,
                      int ldb, float beta, float* C, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm_call(Op op_a, Op op_b, int m, int n, int k, double alpha, const double* A, int lda,
                      const double* B, int ldb, double beta, double* C, int ldc) {
    scipy_cblas_dgemm(CblasRowMajor, cblas_op(op_a), cblas_op(op_b), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
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
    } else {
        gemm_call(op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
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
