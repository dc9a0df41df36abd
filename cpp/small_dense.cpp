// The small-layer kernels (small_dense.hpp): register-blocked products in AVX-512, their passes fused in.
#include "small_dense.hpp"

#include <cstdint>
#include <stdexcept>
#include <type_traits>

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
                                    T*, T*, const RowsAhead&);                                               \
    template LossStats small_forward_softmax(const T*, std::size_t, std::size_t, std::size_t, const T*,          \
                                             std::size_t, T, const T*, const Targets<T>&, T*);               \
    template LossStats small_softmax_transposed(T*, std::size_t, std::size_t, std::size_t, const Targets<T>&);    \
    template void small_backward_input_narrow(const T*, std::size_t, std::size_t, std::size_t, const T*,        \
                                              std::size_t, T, const T*, Activation, T*);                     \
    template void small_weight_step_narrow(const T*, std::size_t, const T*, std::size_t, std::size_t,           \
                                           std::size_t, T, T, T, T*, T*);                                    \
    template void small_transpose(const T*, std::size_t, std::size_t, std::size_t, T*);

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

#ifdef L2FAST_HAVE_LIBMVEC
// glibc's vector exp and log1p on one AVX-512 register (libmvec's "e" variants, within its 4 ulp), called by their
// vector-ABI names: the softmax works a register at a time, not in a loop the compiler would vectorise.
extern "C" {
__m512d _ZGVeN8v_exp(__m512d);
__m512 _ZGVeN16v_log1pf(__m512);
__m512d _ZGVeN8v_log1p(__m512d);
}
#endif

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
    static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
    static R blend(M m, R a, R b) { return _mm512_mask_blend_ps(m, a, b); }  // b where m, else a
    static M greater(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
    static R div(R a, R b) { return _mm512_div_ps(a, b); }
    static R mask_sub(R a, M m, R b) { return _mm512_mask_sub_ps(a, m, a, b); }  // a - b where m
    // a register of whole numbers (labels, class indices), one a lane
    using Index = std::int32_t;
    static __m512i load_index(M m, const Index* p) { return _mm512_maskz_loadu_epi32(m, p); }
    static __m512i set_index(Index v) { return _mm512_set1_epi32(v); }
    static __m512i blend_index(M m, __m512i a, __m512i b) { return _mm512_mask_blend_epi32(m, a, b); }
    static M same(M m, __m512i a, __m512i b) { return _mm512_mask_cmpeq_epi32_mask(m, a, b); }
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
    static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
    static R blend(M m, R a, R b) { return _mm512_mask_blend_pd(m, a, b); }
    static M greater(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
    static R div(R a, R b) { return _mm512_div_pd(a, b); }
    static R mask_sub(R a, M m, R b) { return _mm512_mask_sub_pd(a, m, a, b); }
    using Index = std::int64_t;
    static __m512i load_index(M m, const Index* p) { return _mm512_maskz_loadu_epi64(m, p); }
    static __m512i set_index(Index v) { return _mm512_set1_epi64(v); }
    static __m512i blend_index(M m, __m512i a, __m512i b) { return _mm512_mask_blend_epi64(m, a, b); }
    static M same(M m, __m512i a, __m512i b) { return _mm512_mask_cmpeq_epi64_mask(m, a, b); }
};

// e^x of each float lane, inline (no call, so the softmax's registers stay live across it): x = n ln 2 + r with n
// the nearest whole number to x / ln 2 and |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact to float's
// precision), e^r by its Taylor polynomial to degree 7 (truncation below 6e-9 relative), times 2^n by scalef (0
// below e^-104, +inf above float's range; NaN stays NaN). Within 1 ulp of the exact value (0.9 at worst, checked
// over [-87.3, 88.7]).
__attribute__((always_inline)) inline __m512 exp_of(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // NaN in x passes (max returns its second operand)
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2's first 11 bits: n * it exact
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);      // the rest of ln 2
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// double's e^x and log1p(x) of each lane, and float's log1p: libmvec's, or (no libmvec) the scalar functions a lane at
// a time.
#ifdef L2FAST_HAVE_LIBMVEC
__m512d exp_of(__m512d x) { return _ZGVeN8v_exp(x); }
__m512 log1p_of(__m512 x) { return _ZGVeN16v_log1pf(x); }
__m512d log1p_of(__m512d x) { return _ZGVeN8v_log1p(x); }
#else
template <class T>
typename Vec<T>::R each_lane(typename Vec<T>::R x, T (*f)(T)) {
    alignas(64) T v[Vec<T>::n];
    Vec<T>::store(v, Vec<T>::lanes(Vec<T>::n), x);
    for (T& e : v) e = f(e);
    return Vec<T>::load(v);
}
__m512d exp_of(__m512d x) { return each_lane<double>(x, [](double v) { return __builtin_exp(v); }); }
__m512 log1p_of(__m512 x) { return each_lane<float>(x, [](float v) { return __builtin_log1pf(v); }); }
__m512d log1p_of(__m512d x) { return each_lane<double>(x, [](double v) { return __builtin_log1p(v); }); }
#endif

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
struct StridedColumns {  // element (i, p) at A[p * ld + i]: a row-major matrix read transposed
    static constexpr bool kByRows = false;
    const T* A;
    std::size_t ld;
    const T* column(std::size_t p) const { return A + p * ld; }
};

template <class T>
struct Strided {
    static constexpr bool kByRows = true;
    const T* A;
    std::size_t ld;
    const T* row(std::size_t i) const { return A + i * ld; }
};

// Strided, for a left operand of about 10 rows (a narrow layer's W): a panel of two registers of columns takes them
// in one block of 10 rows instead of one of 8 and a slow one of 2 (whose few accumulators wait on each other).
template <class T>
struct FewRows : Strided<T> {};

// Rows a block takes at once, by the panel's registers of columns (NV): as many accumulators as the registers hold
// beside B's.
template <class Left, int NV>
constexpr int block_rows() {
    if constexpr (std::is_same_v<Left, FewRows<float>> || std::is_same_v<Left, FewRows<double>>)
        if (NV <= 2) return 10;
    return NV <= 2 ? 8 : 6;
}

// acc[r][v] = sum_p a(i0 + r, p) B[p, c0 + v n ...] (a(i, p) the left operand's element), p = 0 .. depth - 1 in turn: R rows by NV registers of
// columns, the last register's lanes masked to the columns that exist; then finish(i, c, mask, acc) for each.
template <class T, int NV, int R, bool kTail, class Left, class Finish>
__attribute__((always_inline)) inline void block_product(const Left& a, std::size_t i0, std::size_t depth, const T* B,
                                                         std::size_t ldb, std::size_t c0, typename Vec<T>::M last,
                                                         const Finish& finish) {
    using V = Vec<T>;
    typename V::R acc[R][NV];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    const T* rows[R] = {};  // the left operand's rows, when it is read by rows: their addresses loaded once
    if constexpr (Left::kByRows) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) rows[r] = a.row(i0 + r);
    }
    for (std::size_t p = 0; p < depth; ++p) {
        const T* Bp = B + p * ldb + c0;
        typename V::R b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = v + 1 == NV && kTail ? V::load(Bp + v * V::n, last) : V::load(Bp + v * V::n);
        const T* column = nullptr;
        if constexpr (!Left::kByRows) column = a.column(p) + i0;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const typename V::R x = V::set1(Left::kByRows ? rows[r][p] : column[r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(x, b[v], acc[r][v]);
        }
    }
    // The finish's fields copied into a local whose address never escapes: the masked stores (may_alias) would
    // otherwise make the compiler reload every field of the caller's Finish after each store.
    const Finish done = finish;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            done(i0 + r, c0 + v * V::n, v + 1 == NV ? last : V::lanes(V::n), acc[r][v]);
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
    constexpr int R = block_rows<Left, NV>();
    const std::size_t blocks = rows / R, share = blocks ? (ahead.left() + blocks - 1) / blocks : 0;
    std::size_t i = 0;
    for (; i + R <= rows; i += R) {
        block_product<T, NV, R, kTail>(a, i, depth, B, ldb, c0, last, finish);
        ahead.next(share);
    }
    for (; i + 4 <= rows; i += 4) block_product<T, NV, 4, kTail>(a, i, depth, B, ldb, c0, last, finish);
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
struct TransposedForwardFinish {  // Z_t = alpha acc + b, a bias per row (Z_t: the logits transposed, a class a row)
    T* Z_t;
    std::size_t ld;
    T alpha;
    const T* b;
    void operator()(std::size_t i, std::size_t c, typename Vec<T>::M m, typename Vec<T>::R acc) const {
        using V = Vec<T>;
        V::store(Z_t + i * ld + c, m, V::fma(acc, V::set1(alpha), V::set1(b[i])));
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

// b (n_out) <- b + bias_alpha sum_rows dZ, dZ (rows x n_out) with its rows ld apart: the column sums in row order,
// four registers of columns side by side (four chains of additions instead of one after the other).
template <class T>
void add_column_sums(const T* dZ, std::size_t rows, std::size_t n_out, std::size_t ld, T bias_alpha, T* b) {
    using V = Vec<T>;
    constexpr std::size_t kAcross = 4;
    for (std::size_t c0 = 0; c0 < n_out; c0 += kAcross * V::n) {
        typename V::M m[kAcross];
        typename V::R sum[kAcross];
        for (std::size_t v = 0; v < kAcross; ++v) {
            const std::size_t c = c0 + v * V::n;
            m[v] = c < n_out ? V::lanes(n_out - c) : typename V::M(0);
            sum[v] = V::zero();
        }
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t v = 0; v < kAcross; ++v) sum[v] = V::add(sum[v], V::load(dZ + r * ld + c0 + v * V::n, m[v]));
        for (std::size_t v = 0; v < kAcross; ++v) {
            T* bv = b + c0 + v * V::n;
            V::store(bv, m[v], V::fma(sum[v], V::set1(bias_alpha), V::load(bv, m[v])));
        }
    }
}

// The 16 x 16 block r (r[i]: row i) transposed in place, in four rounds of shuffles (pairs of floats, of doubles,
// then 128-bit blocks twice); the maskz forms, as in Vec.
__attribute__((always_inline)) inline void transpose_16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_maskz_unpacklo_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_maskz_unpackhi_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]),
                      c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, b, d));
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) {
            t[8 * i + j] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[8 * i + j], r[8 * i + 4 + j], 0xDD);
        }
    for (int j = 0; j < 8; ++j) {
        r[j] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[j], t[j + 8], 0xDD);
    }
}

}  // namespace

template <class T>
void small_transpose(const T* A, std::size_t rows, std::size_t cols, std::size_t ld, T* A_t) {
    constexpr std::size_t n = Vec<T>::n;
    if constexpr (std::is_same_v<T, float>) {  // blocks of 16 x 16, in registers
        for (std::size_t r0 = 0; r0 < rows; r0 += n) {
            const std::size_t height = rows - r0 < n ? rows - r0 : n;
            const __mmask16 down = Vec<float>::lanes(height);
            for (std::size_t c0 = 0; c0 < cols; c0 += n) {
                const __mmask16 across = Vec<float>::lanes(cols - c0);
                __m512 r[n];
                for (std::size_t i = 0; i < n; ++i)
                    r[i] = i < height ? _mm512_maskz_loadu_ps(across, A + (r0 + i) * cols + c0) : _mm512_setzero_ps();
                transpose_16x16(r);
                for (std::size_t j = 0; j < n && c0 + j < cols; ++j) _mm512_mask_storeu_ps(A_t + (c0 + j) * ld + r0, down, r[j]);
            }
        }
    } else {  // the float64 twin (not on a training path): a plain loop
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t c = 0; c < cols; ++c) A_t[c * ld + r] = A[r * cols + c];
    }
}

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
    product<T>(ColumnsOf<T>{A_rows}, n_in, rows, dZ, n_out, n_out, StepFinish<T>{W_t, n_out, alpha, beta}, ahead);
    add_column_sums(dZ, rows, n_out, n_out, bias_alpha, b);
}

template <class T>
LossStats small_forward_softmax(const T* A_t, std::size_t rows, std::size_t ld, std::size_t n_in, const T* W,
                                std::size_t n_out, T alpha, const T* b, const Targets<T>& y, T* dZ_t) {
    // the logits class by class, along the records: Z_t = alpha W . A_t + b, into dZ_t
    product<T>(FewRows<T>{{W, n_in}}, n_out, n_in, A_t, ld, rows, TransposedForwardFinish<T>{dZ_t, ld, alpha, b});
    return small_softmax_transposed(dZ_t, ld, rows, n_out, y);
}

template <class T>
LossStats small_softmax_transposed(T* dZ_t, std::size_t ld, std::size_t rows, std::size_t n_out, const Targets<T>& y) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr std::size_t n = V::n;
    // The softmax n records at a time, across registers: register o holds class o's logit of each record. The
    // largest logit, the sum of the exponentials (added class by class, first to last, as inplace_loss_gradient
    // does), the loss and dL/dZ are operations on whole registers, and the exp and log1p a call per class and per
    // block, instead of per record.
    LossStats stats;
    for (std::size_t start = 0; start < rows; start += n) {
        const std::size_t count = rows - start < n ? rows - start : n;
        const typename V::M records = V::lanes(count);
        std::size_t record[n];
        typename V::Index label[n] = {};
        T weight[n] = {}, loss[n];
        // the block's labels first, in a loop of their own: a shuffled order's records have theirs far apart in
        // memory, and asked for together they arrive together
        for (std::size_t i = 0; i < count; ++i) record[i] = y.record(start + i);
        for (std::size_t i = 0; i < count; ++i) label[i] = typename V::Index(y.labels[record[i]]);
        if (y.weights)
            for (std::size_t i = 0; i < count; ++i) weight[i] = y.weights[record[i]];
        const __m512i labels = V::load_index(records, label);
        R z[n];
        for (std::size_t o = 0; o < n_out; ++o) z[o] = V::load(dZ_t + o * ld + start, records);
        // the first largest logit (a later one only when strictly larger): the prediction
        R top = z[0];
        __m512i best = V::set_index(0);
        for (std::size_t o = 1; o < n_out; ++o) {
            const typename V::M larger = V::greater(z[o], top);
            top = V::blend(larger, top, z[o]);
            best = V::blend_index(larger, best, V::set_index(typename V::Index(o)));
        }
        stats.correct += __builtin_popcount(unsigned(V::same(records, best, labels)));
        R total = V::zero(), at_label = V::zero();
        for (std::size_t o = 0; o < n_out; ++o) {
            at_label = V::blend(V::same(records, labels, V::set_index(typename V::Index(o))), at_label, z[o]);
            z[o] = exp_of(V::sub(z[o], top));
            total = V::add(total, z[o]);
        }
        // dL/dZ = w (e / total - onehot(label)), e / total as e times 1/total (one division a block)
        const R inverse = V::div(V::set1(T(1)), total), w = V::load(weight, records);
        for (std::size_t o = 0; o < n_out; ++o) {
            const R p = V::mask_sub(V::mul(z[o], inverse), V::same(records, labels, V::set_index(typename V::Index(o))),
                                    V::set1(T(1)));
            V::store(dZ_t + o * ld + start, records, y.weights ? V::mul(p, w) : p);
        }
        // each record's loss, log(total) + top - z[label], with log(total) = log1p(total - 1) (total - 1 exact: total
        // >= 1, e^0 is in it), added in record order
        V::store(loss, records, V::sub(V::add(log1p_of(V::sub(total, V::set1(T(1)))), top), at_label));
        for (std::size_t i = 0; i < count; ++i)
            stats.loss_sum += y.weights ? double(loss[i]) * double(weight[i]) : double(loss[i]);
    }
    return stats;
}

template <class T>
void small_backward_input_narrow(const T* dZ_t, std::size_t ld, std::size_t rows, std::size_t n_out, const T* W,
                                 std::size_t n_in, T alpha, const T* A_prev, Activation act, T* dA_prev) {
    product<T>(StridedColumns<T>{dZ_t, ld}, rows, n_out, W, n_in, n_in,
               BackwardFinish<T>{dA_prev, A_prev, n_in, alpha, act == Activation::Relu});
}

template <class T>
void small_weight_step_narrow(const T* dZ_t, std::size_t ld, const T* A, std::size_t rows, std::size_t n_in,
                              std::size_t n_out, T alpha, T beta, T bias_alpha, T* W, T* b) {
    using V = Vec<T>;
    product<T>(Strided<T>{dZ_t, ld}, n_out, rows, A, n_in, n_in, StepFinish<T>{W, n_in, alpha, beta});
    // each class's sum in row order, as add_column_sums adds: 16 records at a time transposed back, a record a register
    const typename V::M m = V::lanes(n_out);
    typename V::R sum = V::zero();
    if constexpr (std::is_same_v<T, float>) {
        for (std::size_t r0 = 0; r0 < rows; r0 += V::n) {
            const std::size_t count = rows - r0 < V::n ? rows - r0 : V::n;
            __m512 z[V::n];
            for (std::size_t o = 0; o < V::n; ++o)
                z[o] = o < n_out ? V::load(dZ_t + o * ld + r0, V::lanes(count)) : V::zero();
            transpose_16x16(z);
            for (std::size_t i = 0; i < count; ++i) sum = V::add(sum, z[i]);
        }
    } else {  // the float64 twin (not on a training path): a lane at a time
        alignas(64) T total[V::n] = {};
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t o = 0; o < n_out; ++o) total[o] += dZ_t[o * ld + r];
        sum = V::load(total);
    }
    V::store(b, m, V::fma(sum, V::set1(bias_alpha), V::load(b, m)));
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

template <class T>
void small_transpose(const T*, std::size_t, std::size_t, std::size_t, T*) {
    throw std::logic_error("small_transpose: no small-layer kernels in this build");
}

template <class T>
LossStats small_forward_softmax(const T*, std::size_t, std::size_t, std::size_t, const T*, std::size_t, T, const T*,
                                const Targets<T>&, T*) {
    throw std::logic_error("small_forward_softmax: no small-layer kernels in this build");
}

template <class T>
LossStats small_softmax_transposed(T*, std::size_t, std::size_t, std::size_t, const Targets<T>&) {
    throw std::logic_error("small_softmax_transposed: no small-layer kernels in this build");
}

template <class T>
void small_backward_input_narrow(const T*, std::size_t, std::size_t, std::size_t, const T*, std::size_t, T, const T*,
                                 Activation, T*) {
    throw std::logic_error("small_backward_input_narrow: no small-layer kernels in this build");
}

template <class T>
void small_weight_step_narrow(const T*, std::size_t, const T*, std::size_t, std::size_t, std::size_t, T, T, T, T*,
                              T*) {
    throw std::logic_error("small_weight_step_narrow: no small-layer kernels in this build");
}

L2FAST_INSTANTIATE(float)
L2FAST_INSTANTIATE(double)

#endif

}  // namespace l2fast
