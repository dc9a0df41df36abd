// Register-blocked AVX-512 products for small layers (see small_gemm.hpp), and their plain-loop specification.
#include "small_gemm.hpp"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

namespace l2fast {

namespace {

#define L2FAST_AVX512 __attribute__((target("avx512f")))

template <class T>
struct Vec;

template <>
struct Vec<float> {
    using type = __m512;
    static constexpr std::size_t lanes = 16;
    L2FAST_AVX512 static type zero() { return _mm512_setzero_ps(); }
    L2FAST_AVX512 static type set1(float a) { return _mm512_set1_ps(a); }
    L2FAST_AVX512 static type load(const float* p) { return _mm512_loadu_ps(p); }
    L2FAST_AVX512 static type load(const float* p, unsigned mask) { return _mm512_maskz_loadu_ps(__mmask16(mask), p); }
    L2FAST_AVX512 static void store(float* p, type v, unsigned mask) { _mm512_mask_storeu_ps(p, __mmask16(mask), v); }
    L2FAST_AVX512 static type fma(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
    L2FAST_AVX512 static type mul(type a, type b) { return _mm512_mul_ps(a, b); }
};

template <>
struct Vec<double> {
    using type = __m512d;
    static constexpr std::size_t lanes = 8;
    L2FAST_AVX512 static type zero() { return _mm512_setzero_pd(); }
    L2FAST_AVX512 static type set1(double a) { return _mm512_set1_pd(a); }
    L2FAST_AVX512 static type load(const double* p) { return _mm512_loadu_pd(p); }
    L2FAST_AVX512 static type load(const double* p, unsigned mask) { return _mm512_maskz_loadu_pd(__mmask8(mask), p); }
    L2FAST_AVX512 static void store(double* p, type v, unsigned mask) { _mm512_mask_storeu_pd(p, __mmask8(mask), v); }
    L2FAST_AVX512 static type fma(type a, type b, type c) { return _mm512_fmadd_pd(a, b, c); }
    L2FAST_AVX512 static type mul(type a, type b) { return _mm512_mul_pd(a, b); }
};

// Vectors of columns per block, and rows of C per block for each count of vectors: MR * NV accumulators, NV loads
// of Y's row and one broadcast fit the 32 vector registers, and each accumulator's chain of dependent multiply-adds
// leaves room for the others (at least 12 multiply-adds per step of q, three times the four cycles of one).
constexpr int kMaxVectors = 4, kMaxRows = 12;
constexpr int rows_for(int vectors) { return vectors == 1 ? 12 : vectors == 4 ? 6 : 8; }

// One block: rows p0..p0+MR-1 of C, columns j0.. in NV vectors, the last NV-th holding `tail` lanes (mask).
template <class T, XForm F, int MR, int NV>
L2FAST_AVX512 void block(std::size_t p0, std::size_t j0, std::size_t k, T alpha, const RowsOf<T>& x,
                         const RowsOf<T>& y, T beta, T* C, std::size_t ldc, unsigned tail, LineQueue* queue) {
    using V = Vec<T>;
    constexpr std::size_t L = V::lanes;
    typename V::type acc[MR][NV];
    _Pragma("GCC unroll 12")
    for (int p = 0; p < MR; ++p)
        _Pragma("GCC unroll 12")
        for (int v = 0; v < NV; ++v) acc[p][v] = V::zero();
    const T* x_rows[MR] = {};
    if constexpr (F == XForm::N) {
        _Pragma("GCC unroll 12")
        for (int p = 0; p < MR; ++p) x_rows[p] = x.row(p0 + p);
    }
    const bool asks = queue && !queue->done();
    const std::size_t spacing = asks ? queue->every - 1 : 0;  // every is a power of 2
    for (std::size_t q = 0; q < k; ++q) {
        if (asks && (q & spacing) == 0 && !queue->done()) queue->ask_one();
        const T* y_q = y.row(q) + j0;
        typename V::type y_v[NV];
        _Pragma("GCC unroll 12")
        for (int v = 0; v + 1 < NV; ++v) y_v[v] = V::load(y_q + v * L);
        y_v[NV - 1] = V::load(y_q + (NV - 1) * L, tail);
        const T* x_q = F == XForm::T ? x.row(q) + p0 : nullptr;
        _Pragma("GCC unroll 12")
        for (int p = 0; p < MR; ++p) {
            const typename V::type a = V::set1(F == XForm::N ? x_rows[p][q] : x_q[p]);
            _Pragma("GCC unroll 12")
            for (int v = 0; v < NV; ++v) acc[p][v] = V::fma(a, y_v[v], acc[p][v]);
        }
    }
    const typename V::type va = V::set1(alpha), vb = V::set1(beta);
    const unsigned full = (1u << L) - 1;
    _Pragma("GCC unroll 12")
    for (int p = 0; p < MR; ++p) {
        T* c = C + (p0 + p) * ldc + j0;
        _Pragma("GCC unroll 12")
        for (int v = 0; v < NV; ++v) {
            const unsigned mask = v + 1 < NV ? full : tail;
            typename V::type r = V::mul(va, acc[p][v]);
            if (beta != T(0)) r = V::fma(vb, V::load(c + v * L, mask), r);
            V::store(c + v * L, r, mask);
        }
    }
}

template <class T, XForm F>
using BlockFn = void (*)(std::size_t, std::size_t, std::size_t, T, const RowsOf<T>&, const RowsOf<T>&, T, T*,
                         std::size_t, unsigned, LineQueue*);

template <class T, XForm F, int NV, int... MR>
constexpr auto column_of_blocks(std::integer_sequence<int, MR...>) {
    return std::array<BlockFn<T, F>, sizeof...(MR)>{&block<T, F, MR + 1, NV>...};
}

template <class T, XForm F, int... NV>
constexpr auto table_of_blocks(std::integer_sequence<int, NV...>) {
    return std::array<std::array<BlockFn<T, F>, kMaxRows>, sizeof...(NV)>{
        column_of_blocks<T, F, NV + 1>(std::make_integer_sequence<int, kMaxRows>())...};
}

template <class T, XForm F>
void small_gemm_avx512(std::size_t m, std::size_t n, std::size_t k, T alpha, const RowsOf<T>& x, const RowsOf<T>& y,
                       T beta, T* C, std::size_t ldc, LineQueue* queue) {
    static constexpr auto blocks = table_of_blocks<T, F>(std::make_integer_sequence<int, kMaxVectors>());
    constexpr std::size_t L = Vec<T>::lanes, width = L * kMaxVectors;
    for (std::size_t j0 = 0; j0 < n; j0 += width) {
        const std::size_t cols = std::min(width, n - j0), vectors = (cols + L - 1) / L;
        const unsigned tail = (1u << (cols - (vectors - 1) * L)) - 1;
        const std::size_t step = std::size_t(rows_for(int(vectors)));
        for (std::size_t p0 = 0; p0 < m; p0 += step) {
            const std::size_t rows = std::min(step, m - p0);
            blocks[vectors - 1][rows - 1](p0, j0, k, alpha, x, y, beta, C, ldc, tail, queue);
        }
    }
}

}  // namespace

bool small_gemm_available() {
    static const bool available = __builtin_cpu_supports("avx512f");
    return available;
}

template <class T>
void small_gemm_reference(XForm form, std::size_t m, std::size_t n, std::size_t k, T alpha, const RowsOf<T>& x,
                          const RowsOf<T>& y, T beta, T* C, std::size_t ldc) {
    for (std::size_t p = 0; p < m; ++p)
        for (std::size_t j = 0; j < n; ++j) {
            T sum = T(0);
            for (std::size_t q = 0; q < k; ++q)
                sum = std::fma(form == XForm::N ? x.row(p)[q] : x.row(q)[p], y.row(q)[j], sum);
            T& c = C[p * ldc + j];
            c = beta != T(0) ? std::fma(beta, c, alpha * sum) : alpha * sum;
        }
}

template <class T>
void small_gemm(XForm form, std::size_t m, std::size_t n, std::size_t k, T alpha, const RowsOf<T>& x,
                const RowsOf<T>& y, T beta, T* C, std::size_t ldc, LineQueue* queue) {
    if (m == 0 || n == 0) return;
    if (!small_gemm_available())
        small_gemm_reference(form, m, n, k, alpha, x, y, beta, C, ldc);
    else if (form == XForm::N)
        small_gemm_avx512<T, XForm::N>(m, n, k, alpha, x, y, beta, C, ldc, queue);
    else
        small_gemm_avx512<T, XForm::T>(m, n, k, alpha, x, y, beta, C, ldc, queue);
}

#define L2FAST_INSTANTIATE(T)                                                                                 \
    template void small_gemm(XForm, std::size_t, std::size_t, std::size_t, T, const RowsOf<T>&,               \
                             const RowsOf<T>&, T, T*, std::size_t, LineQueue*);                               \
    template void small_gemm_reference(XForm, std::size_t, std::size_t, std::size_t, T, const RowsOf<T>&,     \
                                       const RowsOf<T>&, T, T*, std::size_t);
L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

}  // namespace l2fast
