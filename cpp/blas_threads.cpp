// OpenBLAS's threaded jobs on l2fast's pool (blas_threads.hpp).
#include "blas_threads.hpp"

#include <atomic>
#include <chrono>
#include <exception>
#include <thread>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"

namespace l2fast {

namespace {

std::atomic<bool> served{false};
std::atomic<std::size_t> calls{0};

// OpenBLAS's callback: runs jobs 0..count-1 (each `size` bytes from `jobs`) at once, one thread each, and returns when
// all are done. Inside a job of the pool (a part of a step that calls a threaded BLAS routine), the pool is taken:
// the jobs then run on threads started for them, since they may wait for each other and cannot run one by one.
void run_openblas_jobs(int, openblas_dojob_callback dojob, int count, std::size_t size, void* jobs, int data) {
    auto job = [&](std::size_t i) { dojob(int(i), static_cast<char*>(jobs) + i * size, data); };
    if (count < 1) return;
    calls.fetch_add(1, std::memory_order_relaxed);
    if (!in_parallel_job()) {
        parallel_for(std::size_t(count), std::size_t(count), 1, [&](std::size_t begin, std::size_t end) {
            for (std::size_t i = begin; i < end; ++i) job(i);
        }, kBlasPoll);
        return;
    }
    std::vector<std::thread> others;
    for (std::size_t i = 1; i < std::size_t(count); ++i) others.emplace_back(job, i);
    job(0);
    for (std::thread& t : others) t.join();
}

}  // namespace

void serve_openblas_threads() {
    if (served.exchange(true)) return;
    scipy_openblas_set_threads_callback_function(run_openblas_jobs);
}

bool openblas_threads_served() { return served.load(); }

std::size_t openblas_calls_served() { return calls.load(std::memory_order_relaxed); }

void parallel_pass(std::size_t rows, std::size_t width, const std::function<void(std::size_t, std::size_t)>& body) {
    if (rows == 0) return;
    const int threads = blas::num_threads();
    if (!served.load(std::memory_order_relaxed) || threads < 2 || rows < 2 || rows * width < kMinPassValues ||
        in_parallel_job())
        return body(0, rows);
    parallel_for(rows, std::size_t(threads), 1, body, kBlasPoll);
}

}  // namespace l2fast
