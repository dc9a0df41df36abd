// A parallel loop for memory-bound passes outside the GEMM loop (the standalone update), and for OpenBLAS's own
// threaded jobs (blas_threads.hpp). Helpers sleep soon between jobs; a fork waits for the job in progress, and the
// child makes helpers of its own.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>

// Compiles a memory-bound loop twice, for AVX2 and for any x86-64, the best picked at load time: the wheel
// stays portable and the machines that have AVX2 get 8-wide float arithmetic (sqrt and division included).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define L2FAST_VECTOR_CLONES
#endif

namespace l2fast {

// How long helpers poll for the next job after one before they sleep, unless the job asks for longer (linger): a
// wake-up from sleep takes tens of microseconds, and polling longer would take a core from other work.
constexpr std::chrono::microseconds kHelperPoll{50};

// The linger of the passes L-BFGS calls once per evaluation (linear_gradients, gradients() in two halves): SciPy's
// L-BFGS-B and the objective's Python take 0.1-0.15 ms between two for a linear model, 0.4-0.6 ms for 64-100-10
// (7 510 parameters), after which a helper woken from sleep took a further ~0.13 ms to start (a 20000 x 20
// LogisticRegression fit: 0.43 ms an evaluation, 0.29 ms with a linger). Newton-CG's passes showed no gain.
constexpr std::chrono::microseconds kSolverPoll{1000};

// Whether the calling thread runs a part of a job of the pool now (a helper, or a caller of parallel_for or
// parallel_steps until it returns). A parallel_for called there runs its shares one after another on the calling
// thread, in the order and with the bounds it would give them on several.
bool in_parallel_job();

// The CPU the calling thread runs on now, or -1 where that cannot be told.
int current_cpu();

// Moves the calling thread off `cpu` when it runs there and its CPU mask allows another: the mask without `cpu` for a
// moment (the kernel moves a thread off a CPU its mask no longer holds before the call returns), then the mask as it
// was, so the thread may run on every CPU it could before. Returns whether it moved. The pool's helpers call it when
// they find themselves on the caller's CPU: a helper woken after the machine idled a while is often put on its
// waker's CPU, beside the caller, while the other core stays idle, and the two then take turns on one core until the
// scheduler moves one (digits fits after 0.25 s of sleep: the helper on the caller's CPU at the start of 31-63 % of
// the jobs, running 15-33 % of the parts instead of half; benchmarks/README.md, R, session 13).
bool leave_cpu(int cpu);

// Runs body(begin, end) over [0, n) split in up to `threads` contiguous shares (their bounds fixed by n and their
// count): the calling thread takes the first, and it and sleeping helper threads claim the others one at a time, so a
// helper that starts late takes fewer or none and the caller does the rest. Runs inline when n < 2 * min_share or
// threads < 2. Returns when every share is done; when a share throws, the others still run, and the first exception
// is rethrown to the caller once all are over (a helper's exception never ends the process). linger: how long the
// helpers then poll for the next job, for jobs that come back after a longer gap than the default's.
void parallel_for(std::size_t n, std::size_t threads, std::size_t min_share,
                  const std::function<void(std::size_t, std::size_t)>& body,
                  std::chrono::microseconds linger = kHelperPoll);

// Runs `steps` steps one after another as one job of the pool, on the calling thread and up to threads - 1 helpers:
// step t is cut in parts(t) parts (1 to kMaxStepParts; asked once, before any part runs), part p being part(t, p), and
// step t + 1 begins once every part of step t is done and after(t) has returned true (false ends the run after step t).
// after(t) runs on the thread that finished step t's last part, one step at a time, between the steps' parts. A step
// costs one hand-off between the threads instead of a job's posting, claiming and completion (parallel_for), so a
// loop of short dependent steps (a linear model's SGD steps of a few microseconds each) loses less to the hand-offs.
// Thread k takes part k of a step when it can (the caller part 0), then any part not yet taken: a helper that starts
// late, or never, leaves its parts to the others, and a thread waits only for parts already taken. Between steps the
// threads poll a moment (yielding between rounds), then sleep. part and after run while the job holds the pool: they
// must not call parallel_for or parallel_steps, nor Python. When a part (or after) throws, the run ends after its step
// and the first exception is rethrown once every part taken is over. Returns the steps run. linger: as parallel_for's,
// how long the helpers poll for the next job once the run is over.
constexpr std::size_t kMaxStepParts = 8;
std::size_t parallel_steps(std::size_t steps, std::size_t threads, const std::function<std::size_t(std::size_t)>& parts,
                           const std::function<void(std::size_t, std::size_t)>& part,
                           const std::function<bool(std::size_t)>& after,
                           std::chrono::microseconds linger = kHelperPoll);

// parallel_for for a body that returns a partial sum of its share: the shares' sums added in share order, so
// that the total depends on the share count alone, never on which thread finished first.
double parallel_sum(std::size_t n, std::size_t threads, std::size_t min_share,
                    const std::function<double(std::size_t, std::size_t)>& body);

}  // namespace l2fast
