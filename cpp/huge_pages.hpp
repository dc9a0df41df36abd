// Zeroed arrays of doubles whose rows are read and written in random order (the rows of W met by a sparse X's
// columns): on transparent huge pages where the kernel gives them on request (madvise), so that rows scattered over
// a few megabytes do not each miss the TLB.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace l2fast {

struct FreeHugeArray {
    void operator()(double* p) const { std::free(p); }
};
using HugeArray = std::unique_ptr<double[], FreeHugeArray>;

// n zeroed doubles, 2 MiB-aligned and advised as huge pages when they fill at least one such page.
inline HugeArray huge_zeroed(std::size_t n) {
    constexpr std::size_t kHugePage = std::size_t(2) << 20;
    const std::size_t bytes = std::max<std::size_t>(n * sizeof(double), 64);
    const bool huge = bytes >= kHugePage;
    const std::size_t alignment = huge ? kHugePage : 64;
    const std::size_t size = (bytes + alignment - 1) / alignment * alignment;
    HugeArray array(static_cast<double*>(std::aligned_alloc(alignment, size)));
    if (!array) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(array.get(), size, MADV_HUGEPAGE);  // advice only: no huge pages is no error
#endif
    std::memset(array.get(), 0, n * sizeof(double));
    return array;
}

}  // namespace l2fast
