// Vectors whose storage starts on a cache line: the buffers that OpenBLAS's GEMM kernels read and write.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace l2fast {

// std::allocator with 64-byte aligned blocks (a cache line, one AVX-512 vector). OpenBLAS's small-matrix kernels
// load their operands a vector at a time, and rows that start off a line boundary split many of those loads over
// two lines: malloc's 16-byte alignment made the steps of a 64-64-10 float64 network (batch 200) 5-15 % slower,
// depending on where each buffer happened to land.
template <class T>
struct LineAllocator {
    using value_type = T;
    static constexpr std::align_val_t kLine{64};

    LineAllocator() = default;
    template <class U>
    LineAllocator(const LineAllocator<U>&) noexcept {}

    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kLine)); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, kLine); }

    template <class U>
    bool operator==(const LineAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const LineAllocator<U>&) const noexcept { return false; }
};

template <class T>
using LineVector = std::vector<T, LineAllocator<T>>;

}  // namespace l2fast
