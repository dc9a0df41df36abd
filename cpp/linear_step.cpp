// Minibatch SGD for linear models in one read of each step's records (see linear_step.hpp).
#include "linear_step.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <type_traits>
#include <vector>

#include "blas.hpp"
#include "linear.hpp"
#include "parallel.hpp"
#include "small_dense.hpp"
#include "vectors.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_WIDE_KERNELS 1
#include <immintrin.h>
#endif

namespace l2fast {

namespace {

constexpr std::size_t kMaxWeights = 1 << 13;  // W and G: 2 x 32 KiB of float32 at most, beside a block of rows
constexpr std::size_t kGroup = 8;             // records whose rows one pass over a weight row meets together
static_assert(kGroup == 8, "block_backward and sum_lanes are written for groups of eight records");
constexpr std::size_t kBlock = 32;            // the most records per block
constexpr std::size_t kBlockBytes = 24 << 10; // a block's rows stay in L1 beside W and G (32 rows of 100 float32)
constexpr std::size_t kAhead = 8;             // records whose rows are asked for before their block starts
constexpr std::size_t kLine = 64;
constexpr std::size_t kShares = 2;            // the parts a step of at least kShares x kShareRows records is cut in
constexpr std::size_t kShareRows = 64;

typedef std::int32_t IntVec __attribute__((vector_size(32)));  // shuffle masks of FloatVec and DoubleVec
typedef std::int64_t LongVec __attribute__((vector_size(32)));

// The kernels are compiled for x86-64-v3 (AVX2 with FMA) and for any x86-64, the best picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define L2FAST_FMA_CLONES
#endif

// out[r] = the sum of acc[r]'s lanes, r < 8, by pairwise shuffles (a transpose folded into the additions).
[[gnu::always_inline]] inline void sum_lanes(const FloatVec acc[kGroup], float out[kGroup]) {
    FloatVec pairs[4], quads[2];
    for (int i = 0; i < 4; ++i)
        pairs[i] = __builtin_shuffle(acc[2 * i], acc[2 * i + 1], IntVec{0, 8, 2, 10, 4, 12, 6, 14}) +
                   __builtin_shuffle(acc[2 * i], acc[2 * i + 1], IntVec{1, 9, 3, 11, 5, 13, 7, 15});
    for (int i = 0; i < 2; ++i)
        quads[i] = __builtin_shuffle(pairs[2 * i], pairs[2 * i + 1], IntVec{0, 1, 8, 9, 4, 5, 12, 13}) +
                   __builtin_shuffle(pairs[2 * i], pairs[2 * i + 1], IntVec{2, 3, 10, 11, 6, 7, 14, 15});
    const FloatVec all = __builtin_shuffle(quads[0], quads[1], IntVec{0, 1, 2, 3, 8, 9, 10, 11}) +
                         __builtin_shuffle(quads[0], quads[1], IntVec{4, 5, 6, 7, 12, 13, 14, 15});
    store(out, all);
}

[[gnu::always_inline]] inline void sum_lanes(const DoubleVec acc[kGroup], double out[kGroup]) {
    for (int half = 0; half < 2; ++half) {
        const DoubleVec* a = acc + 4 * half;
        const DoubleVec ab = __builtin_shuffle(a[0], a[1], LongVec{0, 4, 2, 6}) +
                             __builtin_shuffle(a[0], a[1], LongVec{1, 5, 3, 7});
        const DoubleVec cd = __builtin_shuffle(a[2], a[3], LongVec{0, 4, 2, 6}) +
                             __builtin_shuffle(a[2], a[3], LongVec{1, 5, 3, 7});
        store(out + 4 * half,
              __builtin_shuffle(ab, cd, LongVec{0, 1, 4, 5}) + __builtin_shuffle(ab, cd, LongVec{2, 3, 6, 7}));
    }
}

// z[r z_rec + k z_out] = W[k] . x[r] + b[k] for the block's records r < rows (a multiple of 8; x rows of width P, a
// multiple of the vector width, zero past n_in, as are W's rows): eight records meet each weight vector at once.
template <class T>
L2FAST_FMA_CLONES void block_forward(const T* W, const T* b, const T* x, std::size_t rows, std::size_t P,
                                     std::size_t n_out, T* z, std::size_t z_rec, std::size_t z_out) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    for (std::size_t g = 0; g < rows; g += kGroup) {
        const T* xg = x + g * P;
        for (std::size_t k = 0; k < n_out; ++k) {
            const T* w = W + k * P;
            V acc[kGroup] = {};
            for (std::size_t j = 0; j < P; j += L) {
                const V wj = load<V>(w + j);
                for (std::size_t r = 0; r < kGroup; ++r) acc[r] += wj * load<V>(xg + r * P + j);
            }
            T sums[kGroup];
            sum_lanes(acc, sums);
            for (std::size_t r = 0; r < kGroup; ++r) z[(g + r) * z_rec + k * z_out] = sums[r] + b[k];
        }
    }
}

// G[k] += sum_r d[r z_rec + k z_out] x[r] and db[k] += the same d's over the block's rows (as block_forward's;
// d is zero on the rows past the block's records): each vector of G is read and written once per eight records.
template <class T>
L2FAST_FMA_CLONES void block_backward(T* G, T* db, const T* d, const T* x, std::size_t rows, std::size_t P,
                                      std::size_t n_out, std::size_t z_rec, std::size_t z_out) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    for (std::size_t g = 0; g < rows; g += kGroup) {
        const T* xg = x + g * P;
        for (std::size_t k = 0; k < n_out; ++k) {
            T dk[kGroup];
            for (std::size_t r = 0; r < kGroup; ++r) dk[r] = d[(g + r) * z_rec + k * z_out];
            // the eight records' terms in two chains of four (even and odd records), added at the end: one chain of
            // eight dependent multiply-adds per vector of G kept the core waiting on each result in turn
            db[k] += ((dk[0] + dk[2]) + (dk[4] + dk[6])) + ((dk[1] + dk[3]) + (dk[5] + dk[7]));
            T* gk = G + k * P;
            for (std::size_t j = 0; j < P; j += L) {
                V even = load<V>(gk + j), odd = dk[1] * load<V>(xg + P + j);
                even += dk[0] * load<V>(xg + j);
                for (std::size_t r = 2; r < kGroup; r += 2) {
                    even += dk[r] * load<V>(xg + r * P + j);
                    odd += dk[r + 1] * load<V>(xg + (r + 1) * P + j);
                }
                store(gk + j, even + odd);
            }
        }
    }
}

// A row copied into a block (n_in values; the padding past them stays as it is, zero).
template <class T>
void copy_row(T* dst, const T* src, std::size_t n_in) {
    std::memcpy(dst, src, n_in * sizeof(T));
}

#if L2FAST_WIDE_KERNELS
// The same three kernels in AVX-512 registers (defined below, run where small_kernels_available()): rows padded to
// 64 bytes, records 16 at a time, and register tiles of several records and outputs that load each vector of a
// row and of W once for all of them (the kernels above load one for each multiply-add, and wait on the loads).
template <class T>
void wide_copy_row(T* dst, const T* src, std::size_t n_in);
template <class T>
void wide_forward(const T* W, const T* b, const T* x, std::size_t rows, std::size_t P, std::size_t n_out, T* z,
                  std::size_t z_rec, std::size_t z_out);
template <class T>
void wide_backward(T* G, T* db, const T* d, const T* x, std::size_t rows, std::size_t P, std::size_t n_out,
                   std::size_t z_rec, std::size_t z_out);
#endif

// The block kernels of one instruction set. The logits z and dL/dz of a block are at z[r z_rec + k z_out]: record by
// record (z_rec = n_out, z_out = 1), or class by class (z_rec = 1, z_out = the block's rows) for the AVX-512
// softmax, which takes 16 records a register.
template <class T>
struct BlockKernels {
    std::size_t width;  // rows (and W's rows) are padded to a multiple of this many values
    std::size_t group;  // forward and backward take the block's records this many at a time
    bool softmax_by_class;  // the softmax loss on logits class by class (small_softmax_transposed)
    void (*copy_row)(T* dst, const T* src, std::size_t n_in);
    void (*forward)(const T* W, const T* b, const T* x, std::size_t rows, std::size_t P, std::size_t n_out, T* z,
                    std::size_t z_rec, std::size_t z_out);
    void (*backward)(T* G, T* db, const T* d, const T* x, std::size_t rows, std::size_t P, std::size_t n_out,
                     std::size_t z_rec, std::size_t z_out);
};

std::atomic<bool> wide_kernels_allowed{true};  // set_linear_wide_kernels

template <class T>
BlockKernels<T> block_kernels() {
#if L2FAST_WIDE_KERNELS
    if (small_kernels_available() && wide_kernels_allowed.load(std::memory_order_relaxed)) return {kLine / sizeof(T), 16, true, wide_copy_row<T>, wide_forward<T>, wide_backward<T>};
#endif
    return {kWidth<T>, kGroup, false, copy_row<T>, block_forward<T>, block_backward<T>};
}

}  // namespace

#if L2FAST_WIDE_KERNELS
// Everything from here to the pop is compiled for AVX-512 (fused multiply-adds included) and runs only where
// small_kernels_available(): nothing of the standard library is instantiated in it, so that no AVX-512 copy of a
// shared inline function can stand in for another file's (as in small_dense.cpp).
#pragma GCC push_options
#pragma GCC target("avx512f,fma")

namespace {

template <class T>
struct Wide;

template <>
struct Wide<float> {
    using R = __m512;
    using M = __mmask16;
    static constexpr std::size_t n = 16;
    static R zero() { return _mm512_setzero_ps(); }
    static R set1(float x) { return _mm512_set1_ps(x); }
    static R load(const float* p) { return _mm512_loadu_ps(p); }
    static R load(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
    static void store(float* p, R x) { _mm512_storeu_ps(p, x); }
    static void store(float* p, M m, R x) { _mm512_mask_storeu_ps(p, m, x); }
    static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
    static R add(R a, R b) { return _mm512_add_ps(a, b); }
    static R blend(M m, R a, R b) { return _mm512_mask_blend_ps(m, a, b); }  // b where m, else a
    static M lanes(std::size_t left) { return left >= n ? M(0xFFFF) : M((1u << left) - 1); }
    // lane i of the result: lane from[i] of x
    static R gather_lanes(const std::int32_t* from, R x) { return _mm512_permutexvar_ps(_mm512_loadu_si512(from), x); }
    // the lanes whose index has bit `width` (a power of two) set; and x with lane i moved to lane i ^ width
    static constexpr M upper(int width) { return width == 1 ? 0xAAAA : width == 2 ? 0xCCCC : width == 4 ? 0xF0F0 : 0xFF00; }
    template <int width>
    static R swap(R x) {
        typedef std::int32_t Lanes __attribute__((vector_size(64)));
        constexpr int w = width;
        return __builtin_shuffle(x, Lanes{0 ^ w, 1 ^ w, 2 ^ w, 3 ^ w, 4 ^ w, 5 ^ w, 6 ^ w, 7 ^ w, 8 ^ w, 9 ^ w, 10 ^ w,
                                          11 ^ w, 12 ^ w, 13 ^ w, 14 ^ w, 15 ^ w});
    }
};

template <>
struct Wide<double> {
    using R = __m512d;
    using M = __mmask8;
    static constexpr std::size_t n = 8;
    static R zero() { return _mm512_setzero_pd(); }
    static R set1(double x) { return _mm512_set1_pd(x); }
    static R load(const double* p) { return _mm512_loadu_pd(p); }
    static R load(const double* p, M m) { return _mm512_maskz_loadu_pd(m, p); }
    static void store(double* p, R x) { _mm512_storeu_pd(p, x); }
    static void store(double* p, M m, R x) { _mm512_mask_storeu_pd(p, m, x); }
    static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
    static R add(R a, R b) { return _mm512_add_pd(a, b); }
    static R blend(M m, R a, R b) { return _mm512_mask_blend_pd(m, a, b); }
    static M lanes(std::size_t left) { return left >= n ? M(0xFF) : M((1u << left) - 1); }
    static constexpr M upper(int width) { return width == 1 ? 0xAA : width == 2 ? 0xCC : 0xF0; }
    template <int width>
    static R swap(R x) {
        typedef std::int64_t Lanes __attribute__((vector_size(64)));
        constexpr int w = width;
        return __builtin_shuffle(x, Lanes{0 ^ w, 1 ^ w, 2 ^ w, 3 ^ w, 4 ^ w, 5 ^ w, 6 ^ w, 7 ^ w});
    }
};

// Folds acc[0..2 pairs) into acc[0..pairs): register i takes acc[2i]'s partial sums in the lanes whose index has bit
// `width` clear and acc[2i+1]'s in the others, each lane adding its partner's (lane ^ width).
template <class T, int width>
[[gnu::always_inline]] inline void fold(typename Wide<T>::R* acc, std::size_t pairs) {
    using V = Wide<T>;
    for (std::size_t i = 0; i < pairs; ++i)
        acc[i] = V::add(V::blend(V::upper(width), acc[2 * i], acc[2 * i + 1]),
                        V::template swap<width>(V::blend(V::upper(width), acc[2 * i + 1], acc[2 * i])));
}

// Lane i of the result: the sum of acc[i]'s lanes, i < count <= n (acc holds n registers, those from count on zero).
template <class T>
[[gnu::always_inline]] inline typename Wide<T>::R lane_sums(typename Wide<T>::R* acc, std::size_t count) {
    fold<T, 1>(acc, (count + 1) / 2);
    fold<T, 2>(acc, (count + 3) / 4);
    fold<T, 4>(acc, (count + 7) / 8);
    if constexpr (Wide<T>::n == 16) fold<T, 8>(acc, 1);
    return acc[0];
}

// The row's last values go as the register that ends with the row (overlapping the one before it): a masked load of
// the tail would still read the cache line past the row, one more line from memory for most rows of a shuffled X.
template <class T>
void wide_copy_row(T* dst, const T* src, std::size_t n_in) {
    using V = Wide<T>;
    std::size_t j = 0;
    for (; j + V::n <= n_in; j += V::n) V::store(dst + j, V::load(src + j));
    if (j == n_in) return;
    if (n_in >= V::n) V::store(dst + n_in - V::n, V::load(src + n_in - V::n));
    else V::store(dst, V::lanes(n_in), V::load(src, V::lanes(n_in)));
}

// Where a tile's R x K sums (lane r K + k of one register) come from for output k's run of R records: from[k][r].
template <int R, int K>
struct ClassRuns {
    std::int32_t from[K][16];
};

template <int R, int K>
constexpr ClassRuns<R, K> class_runs() {
    ClassRuns<R, K> runs{};
    for (int k = 0; k < K; ++k)
        for (int r = 0; r < R; ++r) runs.from[k][r] = r * K + k;
    return runs;
}

// z[r z_rec + k z_out] = W[k] . x[r] + b[k] for records r < R and outputs k0 <= k < k0 + K: R x K sums in registers,
// each vector of the R rows and of the K rows of W loaded once for all of them. With z class by class (z_rec = 1) and
// the sums in one register, each output's R sums are stored as one run (instead of R K scalar stores).
template <class T, int R, int K>
[[gnu::always_inline]] inline void forward_tile(const T* W, const T* b, const T* x, std::size_t P, std::size_t k0,
                                                T* z, std::size_t z_rec, std::size_t z_out) {
    using V = Wide<T>;
    constexpr int A = R * K;
    typename V::R acc[A];
    for (int a = 0; a < A; ++a) acc[a] = V::zero();
    for (std::size_t j = 0; j < P; j += V::n) {
        typename V::R xr[R];
        for (int r = 0; r < R; ++r) xr[r] = V::load(x + r * P + j);
        for (int k = 0; k < K; ++k) {
            const typename V::R w = V::load(W + (k0 + k) * P + j);
            for (int r = 0; r < R; ++r) acc[r * K + k] = V::fma(w, xr[r], acc[r * K + k]);
        }
    }
    if constexpr (A <= int(V::n)) {
        if (z_rec == 1) {  // the tile's sums, lane r K + k, go out as K runs of R records: z class by class
            typename V::R chunk[V::n];
            for (int i = 0; i < int(V::n); ++i) chunk[i] = i < A ? acc[i] : V::zero();
            const typename V::R sums = lane_sums<T>(chunk, std::size_t(A));
            static constexpr ClassRuns<R, K> runs = class_runs<R, K>();
            for (int k = 0; k < K; ++k) {
                const typename V::R run = K == 1 ? sums : V::gather_lanes(runs.from[k], sums);
                V::store(z + (k0 + k) * z_out, V::lanes(R), V::add(run, V::set1(b[k0 + k])));
            }
            return;
        }
    }
    for (int c = 0; c < A; c += int(V::n)) {
        const int count = A - c < int(V::n) ? A - c : int(V::n);
        typename V::R chunk[V::n];
        for (int i = 0; i < int(V::n); ++i) chunk[i] = i < count ? acc[c + i] : V::zero();
        alignas(64) T sums[V::n];
        V::store(sums, lane_sums<T>(chunk, std::size_t(count)));
        for (int i = 0; i < count; ++i) {
            const int r = (c + i) / K, k = (c + i) % K;
            z[r * z_rec + (k0 + k) * z_out] = sums[i] + b[k0 + k];
        }
    }
}

constexpr std::size_t kWideGroup = 16;

// block_forward's z for rows a multiple of kWideGroup: outputs four at a time with four records, the last one to
// three outputs with more records (sixteen for one output), each tile's sums 16 to a register.
template <class T>
void wide_forward(const T* W, const T* b, const T* x, std::size_t rows, std::size_t P, std::size_t n_out, T* z,
                  std::size_t z_rec, std::size_t z_out) {
    for (std::size_t g = 0; g < rows; g += kWideGroup) {
        const T* xg = x + g * P;
        T* zg = z + g * z_rec;
        std::size_t k0 = 0;
        for (; k0 + 4 <= n_out; k0 += 4)
            for (std::size_t r = 0; r < kWideGroup; r += 4)
                forward_tile<T, 4, 4>(W, b, xg + r * P, P, k0, zg + r * z_rec, z_rec, z_out);
        if (n_out - k0 == 3)
            for (std::size_t r = 0; r < kWideGroup; r += 4)
                forward_tile<T, 4, 3>(W, b, xg + r * P, P, k0, zg + r * z_rec, z_rec, z_out);
        else if (n_out - k0 == 2)
            for (std::size_t r = 0; r < kWideGroup; r += 8)
                forward_tile<T, 8, 2>(W, b, xg + r * P, P, k0, zg + r * z_rec, z_rec, z_out);
        else if (n_out - k0 == 1)
            forward_tile<T, 16, 1>(W, b, xg, P, k0, zg, z_rec, z_out);
    }
}

// G[k][j0 + v n..] += sum_r d[r z_rec + k z_out] x[r][j0 + v n..] for k0 <= k < k0 + K and v < J: the K x J vectors
// of G stay in registers while the records go by, each row's vectors loaded once for the K outputs.
template <class T, int K, int J>
[[gnu::always_inline]] inline void backward_tile(T* G, const T* d, const T* x, std::size_t rows, std::size_t P,
                                                 std::size_t z_rec, std::size_t z_out, std::size_t k0, std::size_t j0) {
    using V = Wide<T>;
    typename V::R acc[K * J];
    for (int k = 0; k < K; ++k)
        for (int v = 0; v < J; ++v) acc[k * J + v] = V::load(G + (k0 + k) * P + j0 + v * V::n);
    for (std::size_t r = 0; r < rows; ++r) {
        typename V::R xr[J];
        for (int v = 0; v < J; ++v) xr[v] = V::load(x + r * P + j0 + v * V::n);
        for (int k = 0; k < K; ++k) {
            const typename V::R dk = V::set1(d[r * z_rec + (k0 + k) * z_out]);
            for (int v = 0; v < J; ++v) acc[k * J + v] = V::fma(dk, xr[v], acc[k * J + v]);
        }
    }
    for (int k = 0; k < K; ++k)
        for (int v = 0; v < J; ++v) V::store(G + (k0 + k) * P + j0 + v * V::n, acc[k * J + v]);
}

// backward_tile over a row's vectors from `first` to `vectors`, J at a time and the rest in one narrower tile.
template <class T, int K, int J>
void backward_columns(T* G, const T* d, const T* x, std::size_t rows, std::size_t P, std::size_t z_rec,
                      std::size_t z_out, std::size_t k0, std::size_t first, std::size_t vectors) {
    std::size_t v = first;
    for (; v + J <= vectors; v += J) backward_tile<T, K, J>(G, d, x, rows, P, z_rec, z_out, k0, v * Wide<T>::n);
    if constexpr (J > 1)
        if (v < vectors) backward_columns<T, K, J - 1>(G, d, x, rows, P, z_rec, z_out, k0, v, vectors);
}

// block_backward's sums, rows a multiple of kWideGroup: G in tiles of four outputs by four vectors (the last, of
// fewer outputs, by up to eight), each tile in registers through the rows.
template <class T>
void wide_backward(T* G, T* db, const T* d, const T* x, std::size_t rows, std::size_t P, std::size_t n_out,
                   std::size_t z_rec, std::size_t z_out) {
    const std::size_t vectors = P / Wide<T>::n;
    std::size_t k0 = 0;
    for (; k0 + 4 <= n_out; k0 += 4) backward_columns<T, 4, 4>(G, d, x, rows, P, z_rec, z_out, k0, 0, vectors);
    if (n_out - k0 == 3) backward_columns<T, 3, 5>(G, d, x, rows, P, z_rec, z_out, k0, 0, vectors);
    else if (n_out - k0 == 2) backward_columns<T, 2, 8>(G, d, x, rows, P, z_rec, z_out, k0, 0, vectors);
    else if (n_out - k0 == 1) backward_columns<T, 1, 8>(G, d, x, rows, P, z_rec, z_out, k0, 0, vectors);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t k = 0; k < n_out; ++k) db[k] += d[r * z_rec + k * z_out];
}

template void wide_copy_row(float*, const float*, std::size_t);
template void wide_copy_row(double*, const double*, std::size_t);
template void wide_forward(const float*, const float*, const float*, std::size_t, std::size_t, std::size_t, float*,
                           std::size_t, std::size_t);
template void wide_forward(const double*, const double*, const double*, std::size_t, std::size_t, std::size_t, double*,
                           std::size_t, std::size_t);
template void wide_backward(float*, float*, const float*, const float*, std::size_t, std::size_t, std::size_t,
                            std::size_t, std::size_t);
template void wide_backward(double*, double*, const double*, const double*, std::size_t, std::size_t, std::size_t,
                            std::size_t, std::size_t);

}  // namespace

#pragma GCC pop_options
#endif

namespace {

// Asks for the cache lines of n_bytes at p, into L2 (prefetcht1): the rows are copied out of it a block later. Into
// L1 (prefetcht0), each of a row's seven lines holds one of the core's few L1 miss buffers until it arrives, and an
// epoch on a shuffled X larger than L3 ran no faster than with no prefetching at all (AMD EPYC, 32 MB L3, A's 40 MB
// X: 100 -> 1 on one thread 7.1-9.1 ms either way, 3.7-4.2 ms into L2; benchmarks/README.md, A, session 12).
//
// Always inlined, as is Records::prefetch: GCC's interprocedural analysis takes a function whose only effect is a
// prefetch for one without side effects and deletes the calls to it: at 1c20ea9 (session 11's end) this file's object
// code held no prefetch at all, which is why prefetching or not had measured the same (sessions 8 and 11).
[[gnu::always_inline]] inline void prefetch_bytes(const void* p, std::size_t n_bytes) {
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(kLine - 1);
    const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + n_bytes;
    for (std::uintptr_t line = first; line < end; line += kLine)
        __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 2);
}

// The epoch's records in order: record i of the epoch is row order[i] of X (row i without an order).
template <class T>
struct Records {
    const Dataset<T>& data;
    const std::int64_t* order;
    std::size_t n, n_in, n_out;

    std::size_t at(std::size_t i) const { return order ? std::size_t(order[i]) : i; }
    const T* row(std::size_t i) const { return data.X + at(i) * n_in; }

    // Asks for record i's row and target, when there is such a record.
    [[gnu::always_inline]] void prefetch(std::size_t i) const {
        if (i >= n) return;
        const std::size_t r = at(i);
        prefetch_bytes(data.X + r * n_in, n_in * sizeof(T));
        if (data.y_labels) __builtin_prefetch(data.y_labels + r);
        if (data.y_values) prefetch_bytes(data.y_values + r * n_out, n_out * sizeof(T));
        if (data.weights) __builtin_prefetch(data.weights + r);
    }
};

// W as rows of width P (a multiple of the kernels' width; zero past n_in), and the rows per block.
struct StepLayout {
    std::size_t P, block;

    template <class T>
    static StepLayout of(std::size_t n_in, const BlockKernels<T>& kernels) {
        const std::size_t P = (n_in + kernels.width - 1) / kernels.width * kernels.width, group = kernels.group;
        return {P, std::clamp<std::size_t>(kBlockBytes / (P * sizeof(T)) / group * group, group, kBlock)};
    }
};

// n values of T, zero, from the start of a cache line and on whole lines: a 64-byte vector of a row never spans two
// lines, and the two shares' buffers (written by two threads) share none.
template <class T>
class LineAligned {
public:
    explicit LineAligned(std::size_t n) : storage_((n * sizeof(T) + 2 * kLine - 1) / kLine * kLine / sizeof(T), T(0)) {
        void* start = storage_.data();
        std::size_t space = storage_.size() * sizeof(T);
        data_ = static_cast<T*>(std::align(kLine, n * sizeof(T), start, space));
        size_ = n;
    }
    LineAligned(const LineAligned&) = delete;
    LineAligned& operator=(const LineAligned&) = delete;
    LineAligned(LineAligned&&) = default;  // the storage moves with its pointer

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }
    T* begin() { return data_; }
    T* end() { return data_ + size_; }
    T& operator[](std::size_t i) { return data_[i]; }

private:
    std::vector<T> storage_;
    T* data_;
    std::size_t size_;
};

// What one share of a step works in: its block of rows copied out of X (rows of width P), the block's logits, its
// own copy of W (n_out x P) and b, the share's sums G = sum dL/dz x^T (n_out x P) and db = sum dL/dz of the last two
// steps (by the steps' parity: a step's sums are read by the next step's shares while this step's are written), and
// its loss sum.
template <class T>
struct ShareBuffers {
    LineAligned<T> x, z, W, b;
    LineAligned<T> G[2], db[2];
    alignas(kLine) LossStats stats;

    ShareBuffers(const StepLayout& layout, std::size_t n_out)
        : x(layout.block * layout.P), z(layout.block * n_out), W(n_out * layout.P), b(n_out),
          G{LineAligned<T>(n_out * layout.P), LineAligned<T>(n_out * layout.P)},
          db{LineAligned<T>(n_out), LineAligned<T>(n_out)} {}
};

// One share of a step, records start..start+rows-1: its sums and loss sum into buf. Its last block asks for the rows
// that follow from `successor` on: the next records in turn (successor = start + rows) when this thread takes the
// step's next share too, else the first ones of the next step's share that this thread will most likely take.
template <class T>
void share_sums(const Shape& shape, const StepLayout& layout, const BlockKernels<T>& kernels, const T* W, const T* b,
                const Records<T>& records, std::size_t start, std::size_t rows, std::size_t successor,
                ShareBuffers<T>& buf, std::size_t parity) {
    const std::size_t n_in = records.n_in, n_out = records.n_out, P = layout.P, block = layout.block;
    const std::size_t end = start + rows;
    const auto prefetch = [&](std::size_t i) { records.prefetch(i < end ? i : successor + (i - end)); };
    const std::size_t group = kernels.group;
    // the softmax's logits class by class where the kernels take them so (a class's logits a row of `block`)
    const bool by_class = kernels.softmax_by_class && shape.loss == Loss::Softmax && n_out <= small_lanes<T>;
    const std::size_t z_rec = by_class ? 1 : n_out, z_out = by_class ? block : 1;
    LossStats stats;
    LineAligned<T>& G = buf.G[parity];
    LineAligned<T>& db = buf.db[parity];
    std::fill(G.begin(), G.end(), T(0));
    std::fill(db.begin(), db.end(), T(0));
    for (std::size_t first = start; first < start + rows; first += block) {
        const std::size_t count = std::min(block, start + rows - first);
        const std::size_t padded = (count + group - 1) / group * group;
        for (std::size_t r = 0; r < count; ++r) {
            if (r < kAhead) prefetch(first + count + r);
            kernels.copy_row(buf.x.data() + r * P, records.row(first + r), n_in);
        }
        // the next block's rows are asked for a few at a time while this one computes (all at once, they would
        // queue for the core's few line-fill buffers and hold up the instructions behind them)
        std::size_t next = std::min(kAhead, block);
        const std::size_t per_group = (block - next + 2 * padded / group - 1) / (2 * padded / group);
        for (std::size_t g = 0; g < padded; g += group) {
            for (std::size_t q = 0; q < per_group && next < block; ++q) prefetch(first + count + next++);
            kernels.forward(W, b, buf.x.data() + g * P, group, P, n_out, buf.z.data() + g * z_rec, z_rec, z_out);
        }
        const std::int64_t* picked = records.order ? records.order + first : nullptr;
        const Targets<T> targets = targets_of(records.data, picked, first);
        stats += by_class ? small_softmax_transposed(buf.z.data(), block, count, n_out, targets)
                          : inplace_loss_gradient(buf.z.data(), count, n_out, shape.loss, targets);
        for (std::size_t k = 0; k < (by_class ? n_out : 1); ++k)  // dL/dz zero on the padding rows
            std::fill(buf.z.begin() + k * z_out + count * z_rec, buf.z.begin() + k * z_out + padded * z_rec, T(0));
        for (std::size_t g = 0; g < padded; g += group) {
            for (std::size_t q = 0; q < per_group && next < block; ++q) prefetch(first + count + next++);
            kernels.backward(G.data(), db.data(), buf.z.data() + g * z_rec, buf.x.data() + g * P, group, P, n_out,
                             z_rec, z_out);
        }
    }
    buf.stats = stats;
}

}  // namespace

void set_linear_wide_kernels(bool on) { wide_kernels_allowed.store(on, std::memory_order_relaxed); }
bool linear_wide_kernels_allowed() { return wide_kernels_allowed.load(std::memory_order_relaxed); }

bool linear_step_fits(const Shape& shape) {
    return shape.n_layers() == 1 && shape.n_out() * shape.n_in() <= kMaxWeights;
}

namespace {

// The parts a step of `rows` records is cut in, whatever the threads.
std::size_t parts_of(std::size_t rows) { return rows >= kShareRows * kShares ? kShares : 1; }

// A step's update, waiting to be applied: its shares' sums (parts of them, in the buffers of its parity) and its
// step size -lr/b. parts = 0: none.
template <class T>
struct PendingUpdate {
    std::size_t parts = 0, parity = 0;
    T step = T(0);
};

// Each share keeps its own W and b and, before its sums, applies the step before to them itself: W <- decay W + step
// (G_0 + G_1), b <- b + step (db_0 + db_1), the same operations in the same order on every copy, so the copies stay
// equal bit for bit (and equal to one W updated once). On two threads the update then runs on both at once, between
// the steps no thread waits for the other to update, and W never moves between the cores' caches (only the sums do).
// A share never misses an update it later needs: a step's parts follow from its rows alone, and only an epoch's last
// step can be shorter (one share), whose update share 0 applies at the end. norms, when given: the sum of squares of
// W as the step will find it, added in.
template <class T>
void apply_update(const PendingUpdate<T>& pending, std::vector<ShareBuffers<T>>& shares, T decay, ShareBuffers<T>& own,
                  double* norms) {
    T* W = own.W.data();
    T* b = own.b.data();
    const std::size_t n_w = own.W.size(), n_out = own.b.size();
    if (pending.parts == 1) {
        const T* G = shares[0].G[pending.parity].data();
        const T* db = shares[0].db[pending.parity].data();
        for (std::size_t i = 0; i < n_w; ++i) W[i] = decay * W[i] + pending.step * G[i];
        for (std::size_t k = 0; k < n_out; ++k) b[k] += pending.step * db[k];
    } else if (pending.parts == 2) {
        static_assert(kShares == 2, "apply_update adds two shares' sums");
        const T* G0 = shares[0].G[pending.parity].data();
        const T* G1 = shares[1].G[pending.parity].data();
        const T* db0 = shares[0].db[pending.parity].data();
        const T* db1 = shares[1].db[pending.parity].data();
        for (std::size_t i = 0; i < n_w; ++i) W[i] = decay * W[i] + pending.step * (G0[i] + G1[i]);
        for (std::size_t k = 0; k < n_out; ++k) b[k] += pending.step * (db0[k] + db1[k]);
    }
    if (norms) *norms += sum_squares(W, n_w);  // zero past n_in
}

}  // namespace

template <class T>
EpochResult linear_sgd_epoch(const Shape& shape, Params<T>& params, const Dataset<T>& data, const std::int64_t* order,
                             std::size_t n, std::size_t batch, T lr, T lam_over_m, const std::function<bool()>& stop,
                             bool with_norms, std::chrono::microseconds run_length) {
    EpochResult result;
    if (n == 0) return result;
    batch = std::min(batch, n);
    const std::size_t n_in = shape.n_in(), n_out = shape.n_out();
    const Records<T> records{data, order, n, n_in, n_out};
    const BlockKernels<T> kernels = block_kernels<T>();
    const StepLayout layout = StepLayout::of<T>(n_in, kernels);
    const std::size_t P = layout.P;
    std::vector<ShareBuffers<T>> shares;
    shares.reserve(kShares);
    for (std::size_t s = 0; s < kShares; ++s) {
        shares.emplace_back(layout, n_out);
        for (std::size_t k = 0; k < n_out; ++k)
            std::copy_n(params.W[0] + k * n_in, n_in, shares[s].W.data() + k * P);
        std::copy_n(params.b[0], n_out, shares[s].b.data());
    }
    const std::size_t threads = std::min<std::size_t>(std::max(blas::num_threads(), 1), kShares);
    const T decay = T(1) - lr * lam_over_m;
    // What the steps add up as they go, on cache lines of their own: the thread that closes a step writes them, and a
    // line they shared with what both threads read every step (the functions parallel_steps calls) would move between
    // the cores each step (100 -> 10: 3 % of an epoch).
    struct alignas(kLine) Tally {
        LossStats stats;
        std::size_t closed = 0;  // the steps whose loss is in stats
        double norms = 0.0;  // the weights' sum of squares as each step found them, added up by share 0
    } tally;
    const std::size_t n_steps = (n + batch - 1) / batch;
    const auto rows_of = [&](std::size_t step) { return std::min(batch, n - step * batch); };
    // Step t's update, which each share of step t + 1 applies to its own W and b before its sums (see apply_update):
    // none before an epoch's first step. Set out before the steps, so that no thread writes them while others read.
    std::vector<PendingUpdate<T>> pending(n_steps + 1);
    for (std::size_t t = 0; t < n_steps; ++t) pending[t + 1] = {parts_of(rows_of(t)), t % 2, -lr / T(rows_of(t))};
    // A step of many records is cut in kShares parts, whatever the threads, so that its sums do not depend on them;
    // on two threads the parts read X side by side, twice the rows in flight from memory.
    const auto share = [&](std::size_t step, std::size_t s) {
        const std::size_t start = step * batch, rows = rows_of(step);
        const std::size_t parts = parts_of(rows), per_part = (rows + parts - 1) / parts;
        // On two threads share s asks for the first rows of the next step's share s, which the same thread most often
        // takes (the caller the first, the helper the second): the rows after its own are the other thread's, and
        // asked for here they would arrive in the wrong core's caches, leaving each share's first block to wait on
        // memory row by row. On one thread the rows in turn.
        const std::size_t next_start = start + rows, next_rows = std::min(batch, n - std::min(n, next_start));
        const std::size_t next_parts = next_rows ? parts_of(next_rows) : 0;
        const std::size_t next_per_part = next_parts ? (next_rows + next_parts - 1) / next_parts : 0;
        const bool side_by_side = parts > 1 && threads > 1;
        ShareBuffers<T>& own = shares[s];
        apply_update(pending[step], shares, decay, own, s == 0 && with_norms ? &tally.norms : nullptr);
        const std::size_t begin = start + s * per_part, end = std::min(start + rows, begin + per_part);
        const std::size_t successor = !side_by_side ? end : s < next_parts ? next_start + s * next_per_part : n;
        share_sums(shape, layout, kernels, own.W.data(), own.b.data(), records, begin, end - begin, successor, own,
                   step % 2);
    };
    // A step's loss into the epoch's, once its shares are done (before the next opens).
    const auto close = [&](std::size_t step) {
        for (std::size_t s = 0; s < pending[step + 1].parts; ++s) tally.stats += shares[s].stats;
        tally.closed = step + 1;
    };
    // The steps go in runs of about run_length, each one job of the pool (parallel_steps: one hand-off a step, where a
    // job for each step cost 100 -> 1 about a tenth of its epoch), and between the runs, outside the pool, stop() is
    // asked (train_epoch's asks Python at most every 10 ms, whose signal handlers may call back into l2fast).
    for (std::size_t done = 0; done < n_steps;) {
        const auto run_start = std::chrono::steady_clock::now();
        const std::size_t ran = parallel_steps(
            n_steps - done, threads, [&](std::size_t t) { return parts_of(rows_of(done + t)); },
            [&](std::size_t t, std::size_t s) { share(done + t, s); },
            [&](std::size_t t) {
                close(done + t);
                return std::chrono::steady_clock::now() - run_start < run_length;
            });
        done += ran;
        if (tally.closed < done) close(done - 1);
        if (stop && stop()) {
            result.stopped = true;
            break;
        }
    }
    // the last step's update, on share 0's copy (a share that skipped steps, the short last one's, is behind)
    apply_update(pending[tally.closed], shares, decay, shares[0], nullptr);
    result.stats += tally.stats;
    result.steps += tally.closed;
    result.weight_norms += tally.norms;
    for (std::size_t k = 0; k < n_out; ++k) std::copy_n(shares[0].W.data() + k * P, n_in, params.W[0] + k * n_in);
    std::copy_n(shares[0].b.data(), n_out, params.b[0]);
    return result;
}

template EpochResult linear_sgd_epoch(const Shape&, Params<float>&, const Dataset<float>&, const std::int64_t*,
                                      std::size_t, std::size_t, float, float, const std::function<bool()>&, bool,
                                      std::chrono::microseconds);
template EpochResult linear_sgd_epoch(const Shape&, Params<double>&, const Dataset<double>&, const std::int64_t*,
                                      std::size_t, std::size_t, double, double, const std::function<bool()>&, bool,
                                      std::chrono::microseconds);

namespace {

// Adds the count values at x into four vectors and a scalar tail, four vectors at a time, then one, then singles: the
// floors' reads, kept in registers by their callers (a sum in memory would make the loop one store after another
// instead of a read).
template <class T>
[[gnu::always_inline]] inline void add_values(Vec<T> acc[4], T& tail, const T* x, std::size_t count) {
    using V = Vec<T>;
    constexpr std::size_t L = kWidth<T>;
    std::size_t j = 0;
    for (; j + 4 * L <= count; j += 4 * L)
        for (std::size_t h = 0; h < 4; ++h) acc[h] += load<V>(x + j + h * L);
    for (; j + L <= count; j += L) acc[0] += load<V>(x + j);
    for (; j < count; ++j) tail += x[j];
}

// The sum of what add_values added.
template <class T>
[[gnu::always_inline]] inline T total_of(const Vec<T> acc[4], T tail) {
    const Vec<T> all = acc[0] + acc[1] + acc[2] + acc[3];
    for (std::size_t l = 0; l < kWidth<T>; ++l) tail += all[l];
    return tail;
}

// Reads the epoch's records' rows in order, prefetched as the step does, summing them. Returns the sum.
template <class T>
L2FAST_FMA_CLONES T read_rows(const Records<T>& records) {
    Vec<T> acc[4] = {};
    T tail = T(0);
    for (std::size_t i = 0; i < records.n; ++i) {
        records.prefetch(i + kAhead);
        add_values(acc, tail, records.row(i), records.n_in);
    }
    return total_of(acc, tail);
}

// The sum of count contiguous values.
template <class T>
L2FAST_FMA_CLONES T sum_values(const T* x, std::size_t count) {
    Vec<T> acc[4] = {};
    T tail = T(0);
    add_values(acc, tail, x, count);
    return total_of(acc, tail);
}

// The floor for steps of `batch` records: each batch's rows gathered once out of X (copied, in the shuffled
// order, with the same prefetching) into a buffer, then the buffer read twice from cache, as a fused step's forward
// and gradient passes read it. Returns the sum of what it read.
template <class T>
T gather_and_read_twice(const Records<T>& records, std::size_t batch, T* buffer) {
    T total = T(0);
    for (std::size_t start = 0; start < records.n; start += batch) {
        const std::size_t rows = std::min(batch, records.n - start);
        for (std::size_t r = 0; r < rows; ++r) {
            records.prefetch(start + r + kAhead);
            std::memcpy(buffer + r * records.n_in, records.row(start + r), records.n_in * sizeof(T));
        }
        for (int pass = 0; pass < 2; ++pass) total += sum_values(buffer, rows * records.n_in);
    }
    return total;
}

}  // namespace

template <class T>
double shuffled_read_seconds(const T* X, std::size_t m, std::size_t n_in, int repeats, std::size_t batch) {
    std::vector<std::int64_t> order(m);
    for (std::size_t i = 0; i < m; ++i) order[i] = std::int64_t(i);
    std::mt19937_64 rng(0);
    Dataset<T> data;
    data.X = X;
    data.m = m;
    std::vector<T> buffer(batch ? std::min(batch, m) * n_in : 0);
    double best = 1e300;
    T total = T(0);
    for (int rep = 0; rep < std::max(repeats, 1); ++rep) {
        std::shuffle(order.begin(), order.end(), rng);
        const Records<T> records{data, order.data(), m, n_in, 0};
        const auto t0 = std::chrono::steady_clock::now();
        total += batch ? gather_and_read_twice(records, std::min(batch, m), buffer.data()) : read_rows(records);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    volatile T keep = total;  // the sums are used, so the reads stay
    (void)keep;
    return best;
}

template double shuffled_read_seconds(const float*, std::size_t, std::size_t, int, std::size_t);
template double shuffled_read_seconds(const double*, std::size_t, std::size_t, int, std::size_t);

}  // namespace l2fast
