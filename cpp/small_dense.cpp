// The small-layer kernels (small_dense.hpp): register-blocked products in AVX-512, their passes fused in.
#include "small_dense.hpp"

#include <cstdint>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_SMALL_KERNELS 1
#include <immintrin.h>
#endif

namespace l2fast {

#define L2FAST_INSTANTIATE(T)                                                                                \
    template void small_forward(const T* const*, std::size_t, std::size_t, const T*, std::size_t, T, const T*,  \
                                Activation, T*);                                                             \
    template void small_backward_input(const T*, std::size_t, std::size_t, const T*, std::size_t, T, const T*,  \
                                       Activation, T*);                                                      \
    template void small_weight_step(const T* const*, const T*, std::size_t, std::size_t, std::size_t, T, T, T,  \
                                    T*, T*, const RowsAhead&);

#if L2FAST_SMALL_KERNELS

bool small_kernels_available() {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    return avx512;
}

// Everything from here to the pop is compiled for AVX-512 (fused multiply-adds included) and runs only where
// small_kernels_available(): nothing of the standard library is instantiated in it, so that no AVX-512 copy of
// a shared inline function can stand in for another file's.
#pragma GCC push_options
#pragma GCC target("avx512f,fma")

namespace {

// One register of T's lanes; every load and store masked, which lets a layer of any width go in whole registers
// (a masked-off lane is neither read nor written, past the end of an array included).
template <class T>
struct Vec;

template <>
struct Vec<float> {
    using R = __m512;
    using M = __mmask16;
    static constexpr std::size_t n = 16;
    static R zero() { return _mm512_setzero_ps(); }
    static R set1(float x) { return _mm512_set1_ps(x); }
    static R load(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
    static R load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, M m, R x) { _mm512_mask_storeu_ps(p, m, x); }
    static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
    static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
    static R add(R a, R b) { return _mm512_add_ps(a, b); }
    static R where_positive(R of, R x) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(of, zero(), _CMP_GT_OQ), x); }
    static M lanes(std::size_t left) { return left >= n ? M(0xFFFF) : M((1u << left) - 1); }
};

template <>
struct Vec<double> {
    using R = __m512d;
    using M = __mmask8;
    static constexpr std::size_t n = 8;
    static R zero() { return _mm512_setzero_pd(); }
    static R set1(double x) { return _mm512_set1_pd(x); }
    static R load(const double* p, M m) { return _mm512_maskz_loadu_pd(m, p); }
    static R load(const double* p) { return _mm512_loadu_pd(p); }
    static void store(double* p, M m, R x) { _mm512_mask_storeu_pd(p, m, x); }
    static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
    static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
    static R add(R a, R b) { return _mm512_add_pd(a, b); }
    static R where_positive(R of, R x) { return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(of, zero(), _CMP_GT_OQ), x); }
    static M lanes(std::size_t left) { return left >= n ? M(0xFF) : M((1u << left) - 1); }
};

// The left operand a of the three products: a matrix given by its rows' addresses (element (i, p) at rows[i][p]), the same transposed (the weight gradient's A^T: element (i, p)
// at rows[p][i]), or a plain row-major matrix.
template <class T>
struct RowsOf {
    static constexpr bool kByRows = true;
    const T* const* rows;
    const T* row(std::size_t i) const { return rows[i]; }
};

template <class T>
struct ColumnsOf {
    static constexpr bool kByRows = false;
    const T* const* rows;
    const T* column(std::size_t p) const { return rows[p]; }
};

template <class T>
struct Strided {
    static constexpr bool kByRows = true;
    const T* A;
    std::size_t ld;
    const T* row(std::size_t i) const { return A + i * ld; }
};

// acc[r][v] = sum_p a(i0 + r, p) B[p, c0 + v n ...] (a(i, p) the left operand's element), p = 0 .. depth - 1 in turn: R rows by NV registers of
// columns, the last register's lanes masked to the columns that exist; then finish(i, c, mask, acc) for each.
template <class T, int NV, int R, bool kTail, class Left, class Finish>
__attribute__((always_inline)) inline void block_product(const Left& a, std::size_t i0, std::size_t depth, const T* B,
                                                         std::size_t ldb, std::size_t c0, typename Vec<T>::M last,
                                                         const Finish& finish) {
    using V = Vec<T>;
    typename V::R acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    const T* rows[R] = {};  // the left operand's rows, when it is read by rows: their addresses loaded once
    if constexpr (Left::kByRows) {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) rows[r] = a.row(i0 + r);
    }
    for (std::size_t p = 0; p < depth; ++p) {
        const T* Bp = B + p * ldb + c0;
        typename V::R b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = v + 1 == NV && kTail ? V::load(Bp + v * V::n, last) : V::load(Bp + v * V::n);
        const T* column = nullptr;
        if constexpr (!Left::kByRows) column = a.column(p) + i0;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const typename V::R x = V::set1(Left::kByRows ? rows[r][p] : column[r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(x, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            finish(i0 + r, c0 + v * V::n, v + 1 == NV ? last : V::lanes(V::n), acc[r][v]);
}

// Rows in blocks of R (as many accumulators as the registers hold beside B's), the rest in blocks of 4, 2, 1.
// Asks for the rows of a RowsAhead in turn, a share at a time.
class Prefetcher {
public:
    explicit Prefetcher(const RowsAhead& ahead) : ahead_(ahead) {}

    // Asks for the next `share` rows (fewer at the end).
    void next(std::size_t share) {
        constexpr std::size_t kLine = 64;
        for (const std::size_t end = done_ + share < ahead_.count ? done_ + share : ahead_.count; done_ < end; ++done_) {
            const char* row = static_cast<const char*>(ahead_.rows[done_]);
            for (std::size_t off = 0; off < ahead_.bytes; off += kLine) __builtin_prefetch(row + off);
        }
    }

    std::size_t left() const { return ahead_.count - done_; }

private:
    const RowsAhead& ahead_;
    std::size_t done_ = 0;
};

template <class T, int NV, bool kTail, class Left, class Finish>
inline void panel_product(const Left& a, std::size_t rows, std::size_t depth, const T* B, std::size_t ldb,
                          std::size_t c0, typename Vec<T>::M last, const Finish& finish, Prefetcher& ahead) {
    constexpr int R = NV <= 2 ? 8 : NV == 3 ? 6 : 4;
    const std::size_t blocks = rows / R, share = blocks ? (ahead.left() + blocks - 1) / blocks : 0;
    std::size_t i = 0;
    for (; i + R <= rows; i += R) {
        block_product<T, NV, R, kTail>(a, i, depth, B, ldb, c0, last, finish);
        ahead.next(share);
    }
    if (i + 4 <= rows) {
        block_product<T, NV, 4, kTail>(a, i, depth, B, ldb, c0, last, finish);
        i += 4;
    }
    if (i + 2 <= rows) {
        block_product<T, NV, 2, kTail>(a, i, depth, B, ldb, c0, last, finish);
        i += 2;
    }
    if (i < rows) block_product<T, NV, 1, kTail>(a, i, depth, B, ldb, c0, last, finish);
    ahead.next(ahead.left());
}

// C (rows x cols) = finish(sum_p a(i, p) B[p, :]), B (depth x cols, row stride ldb): panels of at most four
// registers of columns, each over all the rows.
template <class T, class Left, class Finish>
void product(const Left& a, std::size_t rows, std::size_t depth, const T* B, std::size_t ldb, std::size_t cols,
             const Finish& finish, const RowsAhead& rows_ahead = {}) {
    using V = Vec<T>;
    Prefetcher ahead(rows_ahead);
    constexpr std::size_t kPanel = 4 * V::n;
    for (std::size_t c0 = 0; c0 < cols; c0 += kPanel) {
        const std::size_t width = cols - c0 < kPanel ? cols - c0 : kPanel;
        const std::size_t nv = (width + V::n - 1) / V::n;
        const typename V::M last = V::lanes(width - (nv - 1) * V::n);
        const bool tail = width % V::n != 0;  // a last register partly filled: its loads masked
        switch (nv + (tail ? 4 : 0)) {
            case 1: panel_product<T, 1, false>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 2: panel_product<T, 2, false>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 3: panel_product<T, 3, false>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 4: panel_product<T, 4, false>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 5: panel_product<T, 1, true>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 6: panel_product<T, 2, true>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            case 7: panel_product<T, 3, true>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
            default: panel_product<T, 4, true>(a, rows, depth, B, ldb, c0, last, finish, ahead); break;
        }
    }
}

template <class T>
struct ForwardFinish {  // Z = act(alpha acc + b)
    T* Z;
    std::size_t ld;
    T alpha;
    const T* b;
    bool relu;
    void operator()(std::size_t i, std::size_t c, typename Vec<T>::M m, typename Vec<T>::R acc) const {
        using V = Vec<T>;
        typename V::R z = V::fma(acc, V::set1(alpha), V::load(b + c, m));
        if (relu) z = V::where_positive(z, z);  // z > 0 ? z : 0, NaN and -0 to +0 as there
        V::store(Z + i * ld + c, m, z);
    }
};

template <class T>
struct BackwardFinish {  // dA = alpha acc * act'(A)
    T* dA;
    const T* A;
    std::size_t ld;
    T alpha;
    bool relu;
    void operator()(std::size_t i, std::size_t c, typename Vec<T>::M m, typename Vec<T>::R acc) const {
        using V = Vec<T>;
        typename V::R d = V::mul(acc, V::set1(alpha));
        if (relu) d = V::where_positive(V::load(A + i * ld + c, m), d);
        V::store(dA + i * ld + c, m, d);
    }
};

template <class T>
struct StepFinish {  // W = beta W + alpha acc
    T* W;
    std::size_t ld;
    T alpha, beta;
    void operator()(std::size_t i, std::size_t c, typename Vec<T>::M m, typename Vec<T>::R acc) const {
        using V = Vec<T>;
        T* w = W + i * ld + c;
        V::store(w, m, V::fma(acc, V::set1(alpha), V::mul(V::load(w, m), V::set1(beta))));
    }
};

}  // namespace

template <class T>
void small_forward(const T* const* A_rows, std::size_t rows, std::size_t n_in, const T* W_t, std::size_t n_out,
                   T alpha, const T* b, Activation act, T* Z) {
    product<T>(RowsOf<T>{A_rows}, rows, n_in, W_t, n_out, n_out,
               ForwardFinish<T>{Z, n_out, alpha, b, act == Activation::Relu});
}

template <class T>
void small_backward_input(const T* dZ, std::size_t rows, std::size_t n_out, const T* W, std::size_t n_in, T alpha,
                          const T* A_prev, Activation act, T* dA_prev) {
    product<T>(Strided<T>{dZ, n_out}, rows, n_out, W, n_in, n_in,
               BackwardFinish<T>{dA_prev, A_prev, n_in, alpha, act == Activation::Relu});
}

template <class T>
void small_weight_step(const T* const* A_rows, const T* dZ, std::size_t rows, std::size_t n_in, std::size_t n_out,
                       T alpha, T beta, T bias_alpha, T* W_t, T* b, const RowsAhead& ahead) {
    using V = Vec<T>;
    product<T>(ColumnsOf<T>{A_rows}, n_in, rows, dZ, n_out, n_out, StepFinish<T>{W_t, n_out, alpha, beta}, ahead);
    for (std::size_t c = 0; c < n_out; c += V::n) {  // the bias: dZ's column sums, in row order
        const typename V::M m = V::lanes(n_out - c);
        typename V::R sum = V::zero();
        for (std::size_t r = 0; r < rows; ++r) sum = V::add(sum, V::load(dZ + r * n_out + c, m));
        V::store(b + c, m, V::fma(sum, V::set1(bias_alpha), V::load(b + c, m)));
    }
}

L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

#pragma GCC pop_options

#else

// No kernels to run: the callers ask small_kernels_available() first.
bool small_kernels_available() { return false; }

template <class T>
void small_forward(const T* const*, std::size_t, std::size_t, const T*, std::size_t, T, const T*, Activation, T*) {
    throw std::logic_error("small_forward: no small-layer kernels in this build");
}

template <class T>
void small_backward_input(const T*, std::size_t, std::size_t, const T*, std::size_t, T, const T*, Activation, T*) {
    throw std::logic_error("small_backward_input: no small-layer kernels in this build");
}

template <class T>
void small_weight_step(const T* const*, const T*, std::size_t, std::size_t, std::size_t, T, T, T, T*, T*,
                       const RowsAhead&) {
    throw std::logic_error("small_weight_step: no small-layer kernels in this build");
}

L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

#endif

}  // namespace l2fast
