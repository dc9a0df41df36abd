// OpenBLAS's threads are l2fast's: its threaded calls run their jobs on the pool of parallel.hpp, and the element-wise
// passes between the products run on the same threads (parallel_pass). One set of threads, two on two cores, where
// OpenBLAS's own server would keep a third spinning beside l2fast's helpers.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>

namespace l2fast {

// How long the pool's helpers poll for the next job after an OpenBLAS call: a step's products follow each other with
// passes of 20-100 us between them (C: 784-1024-1024-10 at batch 256), and a helper woken from sleep for each would
// cost tens of microseconds a product. OpenBLAS's own server polls up to 2^28 cycles (about 0.1 s).
constexpr std::chrono::microseconds kBlasPoll{1000};

// Hands OpenBLAS's threaded jobs to l2fast's pool from now on (openblas_set_threads_callback_function). Call it once,
// before any BLAS call runs: the module's import does. OpenBLAS still decides how many jobs a call has (its thread
// count, which l2fast's policy sets per call); each job runs on a thread of its own, as OpenBLAS's level-3 jobs need,
// which wait for each other's packed panels.
void serve_openblas_threads();

// Whether OpenBLAS's jobs run on l2fast's pool (serve_openblas_threads was called).
bool openblas_threads_served();

// How many threaded OpenBLAS calls have handed their jobs to l2fast so far (the tests' witness).
std::size_t openblas_calls_served();

// The fewest values a pass over a batch takes for its rows to be shared between threads: 64K (256 KB of float32,
// about 20 us on one core). Below it one thread runs the whole pass.
constexpr std::size_t kMinPassValues = std::size_t(1) << 16;

// Runs body(begin, end) over the rows [0, rows) of a pass over rows x width values, in shares on the threads OpenBLAS
// is set to use now (the thread count l2fast's policy gave this call), when OpenBLAS's jobs run on the pool too, there
// are two threads or more, the pass has kMinPassValues values or more and the caller is not itself in a job of the
// pool; on the calling thread otherwise (OpenBLAS's own server would spin a third thread beside the pool's).
// A share is whole rows, so a pass whose rows are independent gives the same bits on any thread count.
void parallel_pass(std::size_t rows, std::size_t width, const std::function<void(std::size_t, std::size_t)>& body);

}  // namespace l2fast
