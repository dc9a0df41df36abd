// A parallel loop for memory-bound passes outside the GEMM loop (the standalone update).
// Helpers sleep between jobs, so they never spin against OpenBLAS's own threads.
#pragma once

#include <cstddef>
#include <functional>

namespace l2fast {

// Runs body(begin, end) over [0, n) split in up to `threads` contiguous shares: the calling thread
// takes the first, sleeping helper threads the rest. Runs inline when n < 2 * min_share or
// threads < 2. Returns when every share is done; body must not throw.
void parallel_for(std::size_t n, std::size_t threads, std::size_t min_share,
                  const std::function<void(std::size_t, std::size_t)>& body);

}  // namespace l2fast
