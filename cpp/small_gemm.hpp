// Products of small dense layers without OpenBLAS: register-blocked AVX-512 kernels that read their rows where they
// lie (the picked records of X too, so a shuffled minibatch needs no gathered copy) and have no per-call set-up.
#pragma once

#include <cstddef>
#include <cstdint>

namespace l2fast {

// Rows of a row-major matrix: row q is base + idx[q] * ld, or base + q * ld without idx.
template <class T>
struct RowsOf {
    const T* base = nullptr;
    std::size_t ld = 0;
    const std::int64_t* idx = nullptr;

    const T* row(std::size_t q) const { return base + std::size_t(idx ? idx[q] : std::int64_t(q)) * ld; }
};

// Lines of memory a product asks for while it computes, one every `every` steps of q: the next minibatch's
// records, which a shuffled order reads at random. Spread this way, the requests never queue for the core's few
// line-fill buffers (asked for all at once, they hold up the instructions behind them).
struct LineQueue {
    const char* base = nullptr;
    std::size_t row_bytes = 0;        // bytes of one record
    const std::int64_t* idx = nullptr;
    std::size_t rows = 0;             // records to ask for
    std::size_t every = 1;            // steps of q per line, a power of 2
    std::size_t row = 0, offset = 0;  // the next line: its record and its offset in it

    bool done() const { return row >= rows; }
    void ask_one() {
        __builtin_prefetch(base + std::size_t(idx[row]) * row_bytes + offset);
        offset += 64;
        if (offset >= row_bytes) {
            offset = 0;
            ++row;
        }
    }
};

// How the left factor X(p, q) is read from its rows: x.row(p)[q] (N) or x.row(q)[p] (T).
enum class XForm { N, T };

// C (m x n, row stride ldc) <- alpha * sum_q X(p, q) * y.row(q)[j] + beta * C, for p < m, j < n, q < k.
// Each entry's sum runs over q in order, one fused multiply-add per term, then alpha * sum, then beta * C added
// by one more fused multiply-add (C is not read when beta is 0): the same bits on any machine with AVX-512 and
// any thread count, and the same as small_gemm_reference.
// queue, when given, is asked for its lines as the product goes (none of them changes a result).
template <class T>
void small_gemm(XForm form, std::size_t m, std::size_t n, std::size_t k, T alpha, const RowsOf<T>& x,
                const RowsOf<T>& y, T beta, T* C, std::size_t ldc, LineQueue* queue = nullptr);

// The plain loop of the same formula, in the same order (std::fma): the kernel's specification.
template <class T>
void small_gemm_reference(XForm form, std::size_t m, std::size_t n, std::size_t k, T alpha, const RowsOf<T>& x,
                          const RowsOf<T>& y, T beta, T* C, std::size_t ldc);

// Whether this CPU runs small_gemm (AVX-512F); without it, callers take the BLAS path.
bool small_gemm_available();

}  // namespace l2fast
