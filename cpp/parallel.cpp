// A small pool of helper threads that sleep on a condition variable between jobs, after spinning a
// moment in case another job follows at once; the caller and the helpers claim a job's parts as they come.
#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

namespace l2fast {

namespace {

// Whether this thread takes part in a job of the pool now: a helper always, a caller while its job runs. A job's part
// that asks for threads of its own (a nested parallel_for, or OpenBLAS's threaded call, blas_threads.cpp) runs them
// on its own thread instead of waiting for the pool it holds.
thread_local bool in_job = false;

// Marks the calling thread as in a job of the pool until the scope ends.
class InJob {
public:
    InJob() : was_(std::exchange(in_job, true)) {}
    ~InJob() { in_job = was_; }
    InJob(const InJob&) = delete;
    InJob& operator=(const InJob&) = delete;

private:
    bool was_;
};

// How long a helper waiting for work, or a caller waiting for its helpers, polls before it sleeps:
// back-to-back jobs then start without a wake-up (tens of microseconds on a busy machine), and an
// idle pool still leaves the cores to other work after 50 us. Between rounds of polling it
// yields: when the scheduler has put a helper on the caller's core (the other one busy elsewhere),
// the caller's share then runs instead of waiting out the spin (U at 1M: 0.2 ms a call -> 0.1).
constexpr std::chrono::microseconds kSpin = kHelperPoll;

template <class Ready>
bool spin_until(Ready ready, std::chrono::microseconds spin = kSpin) {
    const auto deadline = std::chrono::steady_clock::now() + spin;
    do {
        for (int i = 0; i < 64; ++i) {
            if (ready()) return true;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        std::this_thread::yield();
    } while (std::chrono::steady_clock::now() < deadline);
    return ready();
}

// A job is cut in `shares` contiguous parts of [0, n), fixed by n and shares alone; part 0 is the caller's, and the
// caller and the helpers claim the others one at a time, so a helper that wakes late (or shares its core with another
// process) takes fewer parts or none, and the caller never waits for a helper that has not started: it does the parts
// left itself, and waits only for the parts already taken. The job's state is one word, its number, its share count
// and the next part to take: a claim is a compare-and-swap on it, which fails once the job has moved on.
class Pool {
public:
    explicit Pool(std::size_t helpers) {
        for (std::size_t i = 0; i < helpers; ++i) workers_.emplace_back([this] { work(); });
    }

    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_.store(true, std::memory_order_release);
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    std::size_t helpers() const { return workers_.size(); }

    void run(std::size_t n, std::size_t shares, const std::function<void(std::size_t, std::size_t)>& body,
             std::chrono::microseconds linger) {
        linger_.store(linger.count(), std::memory_order_relaxed);
        caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
        body_.store(&body, std::memory_order_relaxed);
        n_.store(n, std::memory_order_relaxed);
        done_.store(0, std::memory_order_relaxed);
        const std::uint64_t job = (job_of(state_.load(std::memory_order_relaxed)) + 1) & kJobMask;  // wraps after 2^40
        // part 0 is the caller's, claimed as the job opens: a pass's first rows, or OpenBLAS's first job, stay on the
        // caller's core job after job (and the second on the helper's), so that the data a part wrote is in its own
        // core's cache when the next pass or product reads it
        state_.store(state_of(job, shares, 1), std::memory_order_seq_cst);
        // A helper counts itself in sleepers_ under mutex_ before its last look at the state, and the state is stored
        // before sleepers_ is read (all sequentially consistent): either the helper sees the job, or it is seen here
        // and woken under the mutex, which is not free until it sleeps. Helpers that poll cost no lock nor call.
        if (sleepers_.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(mutex_); }
            wake_.notify_all();
        }
        run_part(0, shares, n, body);
        take_parts(job);
        const auto finished = [this, shares] { return done_.load(std::memory_order_seq_cst) == shares; };
        // the same handshake the other way: the thread that finishes the last part wakes a sleeping caller
        if (!spin_until(finished)) {
            std::unique_lock<std::mutex> lock(mutex_);
            caller_sleeps_.store(true, std::memory_order_seq_cst);
            done_cv_.wait(lock, finished);
            caller_sleeps_.store(false, std::memory_order_relaxed);
        }
        // every part is done (or has thrown), so no thread touches the job any more: its first exception, if any,
        // goes to the caller, and the pool is ready for the next job
        if (failed_.load(std::memory_order_acquire)) {
            std::exception_ptr error;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                error = std::exchange(error_, nullptr);
                failed_.store(false, std::memory_order_relaxed);
            }
            std::rethrow_exception(error);
        }
    }

    static constexpr std::size_t kMaxShares = (std::size_t(1) << 12) - 1;

private:
    // The job's state is one word: its number, its share count and the next part to take. The share count is in the
    // word, not beside it, so that a claim is checked against the very job it claims: a thread that read the state of
    // a finished job while its caller was setting up the next one (new share count and all) must fail its claim, not
    // take part `shares` of the old job, run it with the new job's fields and count it as done for the new job (a
    // hang in 1 run of 25-80 of test_parallel_for_back_to_back_jobs, the new job's count past its shares).
    static constexpr unsigned kPartBits = 12, kShareBits = 12;  // then 40 bits of job number
    static constexpr std::uint64_t kPartMask = (std::uint64_t(1) << kPartBits) - 1;
    static constexpr std::uint64_t kJobMask = (std::uint64_t(1) << (64 - kShareBits - kPartBits)) - 1;
    static std::uint64_t state_of(std::uint64_t job, std::size_t shares, std::size_t part) {
        return job << (kShareBits + kPartBits) | std::uint64_t(shares) << kPartBits | part;
    }
    static std::uint64_t job_of(std::uint64_t state) { return state >> (kShareBits + kPartBits); }
    static std::size_t shares_of(std::uint64_t state) { return std::size_t(state >> kPartBits & kPartMask); }
    static std::size_t part_of(std::uint64_t state) { return std::size_t(state & kPartMask); }

    // Claims and runs parts of job `job` until none is left (or the job is over).
    void take_parts(std::uint64_t job) {
        std::uint64_t state = state_.load(std::memory_order_acquire);
        while (job_of(state) == job) {
            const std::size_t part = part_of(state), shares = shares_of(state);
            if (part >= shares) return;
            // n and body are read after a state of this job (acquire) and before the claim: if the claim succeeds, the
            // job still had this part to do, so its caller has not yet set up the next job over them
            const std::size_t n = n_.load(std::memory_order_relaxed);
            const auto* body = body_.load(std::memory_order_relaxed);
            if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel, std::memory_order_acquire))
                continue;
            run_part(part, shares, n, *body);
            state = state_.load(std::memory_order_acquire);
        }
    }

    // Runs part `part` of the job in hand, claimed already, and counts it done.
    void run_part(std::size_t part, std::size_t shares, std::size_t n,
                  const std::function<void(std::size_t, std::size_t)>& body) {
        const std::size_t begin = n * part / shares, end = n * (part + 1) / shares;
        if (begin < end) {
            try {
                body(begin, end);
            } catch (...) {  // counted as done all the same: the caller rethrows it once every part is over
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
                failed_.store(true, std::memory_order_release);
            }
        }
        const bool last = done_.fetch_add(1, std::memory_order_seq_cst) + 1 == shares;
        if (last && caller_sleeps_.load(std::memory_order_seq_cst)) {
            std::lock_guard<std::mutex> lock(mutex_);  // the caller cannot miss the notify
            done_cv_.notify_one();
        }
    }

    void work() {
        in_job = true;
#if defined(__linux__)
        pthread_setname_np(pthread_self(), "l2fast-helper");  // as `top -H` and /proc/<pid>/task/*/comm show it
#endif
        std::uint64_t seen = 0;
        for (;;) {
            const auto changed = [&] {
                return stopping_.load(std::memory_order_seq_cst) ||
                       job_of(state_.load(std::memory_order_seq_cst)) != seen;
            };
            if (!spin_until(changed, std::chrono::microseconds(linger_.load(std::memory_order_relaxed)))) {
                std::unique_lock<std::mutex> lock(mutex_);
                sleepers_.fetch_add(1, std::memory_order_seq_cst);
                wake_.wait(lock, changed);
                sleepers_.fetch_sub(1, std::memory_order_relaxed);
            }
            if (stopping_.load(std::memory_order_acquire)) return;
            seen = job_of(state_.load(std::memory_order_acquire));
            // the caller's CPU as of this job, or an earlier one's (read without the lock): a hint, never a fault
            const int caller = caller_cpu_.load(std::memory_order_relaxed);
            if (caller >= 0 && current_cpu() == caller) leave_cpu(caller);
            take_parts(seen);
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_cv_;
    std::atomic<const std::function<void(std::size_t, std::size_t)>*> body_{nullptr};
    std::atomic<std::size_t> n_{0}, done_{0};
    std::atomic<std::uint64_t> state_{0};  // state_of(the job's number, its shares, the next part to take)
    std::atomic<std::int64_t> linger_{kSpin.count()};  // how long the helpers poll after the last job, in us
    std::atomic<bool> stopping_{false};
    std::atomic<int> sleepers_{0};            // helpers asleep on wake_, or about to be (counted under mutex_)
    std::atomic<bool> caller_sleeps_{false};  // the caller sleeps on done_cv_, or is about to (set under mutex_)
    std::atomic<bool> failed_{false};  // a part of the job in hand threw: error_ holds the first exception
    std::exception_ptr error_;          // under mutex_
    std::atomic<int> caller_cpu_{-1};  // the CPU the caller of the latest job ran on when it posted it
};

std::mutex pool_mutex;
std::unique_ptr<Pool> pool;
pid_t pool_pid = 0;

// A fork waits for the job in progress to finish (its caller holds pool_mutex), so the child never
// inherits pool_mutex locked by a thread that does not exist there; the child drops the parent's pool
// (its threads, and its own mutex, which a helper may have held, are not the child's) and makes a new
// one on first use.
void before_fork() { pool_mutex.lock(); }
void after_fork_in_parent() { pool_mutex.unlock(); }
void after_fork_in_child() {
    (void)pool.release();
    pool_pid = 0;
    pool_mutex.unlock();
}
const int fork_handlers = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);

}  // namespace

bool in_parallel_job() { return in_job; }

int current_cpu() {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
}

bool leave_cpu(int cpu) {
#if defined(__linux__)
    if (cpu < 0 || cpu >= CPU_SETSIZE) return false;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || !CPU_ISSET(cpu, &allowed) || CPU_COUNT(&allowed) < 2)
        return false;
    cpu_set_t elsewhere = allowed;
    CPU_CLR(cpu, &elsewhere);
    if (sched_setaffinity(0, sizeof elsewhere, &elsewhere) != 0) return false;
    const bool moved = current_cpu() != cpu;  // the kernel moves the thread before the call returns
    (void)sched_setaffinity(0, sizeof allowed, &allowed);
    return moved;
#else
    (void)cpu;
    return false;
#endif
}

namespace {

std::size_t share_count(std::size_t n, std::size_t threads, std::size_t min_share) {
    return std::min({threads, n / std::max<std::size_t>(min_share, 1), Pool::kMaxShares});
}

}  // namespace

void parallel_for(std::size_t n, std::size_t threads, std::size_t min_share,
                  const std::function<void(std::size_t, std::size_t)>& body, std::chrono::microseconds linger) {
    const std::size_t shares = share_count(n, threads, min_share);
    if (shares < 2) {
        if (n) body(0, n);
        return;
    }
    if (in_job) {  // inside a job of the pool, which this thread or its caller holds: the same shares, one by one
        std::exception_ptr error;
        for (std::size_t s = 0; s < shares; ++s) {
            try {
                if (n * s / shares < n * (s + 1) / shares) body(n * s / shares, n * (s + 1) / shares);
            } catch (...) {
                if (!error) error = std::current_exception();
            }
        }
        if (error) std::rethrow_exception(error);
        return;
    }
    // One job at a time: a second caller waits here rather than sharing the helpers.
    std::lock_guard<std::mutex> lock(pool_mutex);
    const InJob marked;
    if (!pool || pool_pid != getpid() || pool->helpers() + 1 < shares) {
        if (pool && pool_pid != getpid()) (void)pool.release();  // the parent's threads are not ours to join
        (void)fork_handlers;
        pool = std::make_unique<Pool>(shares - 1);
        pool_pid = getpid();
    }
    pool->run(n, shares, body, linger);
}

double parallel_sum(std::size_t n, std::size_t threads, std::size_t min_share,
                    const std::function<double(std::size_t, std::size_t)>& body) {
    const std::size_t shares = share_count(n, threads, min_share);
    if (shares < 2) return n ? body(0, n) : 0.0;
    std::vector<double> sums(shares, 0.0);
    // share i begins at floor(n i / shares), and every share has at least min_share >= 1 entries, so i is
    // ceil(begin shares / n)
    parallel_for(n, shares, min_share, [&](std::size_t begin, std::size_t end) {
        sums[(begin * shares + n - 1) / n] = body(begin, end);
    });
    double total = 0.0;
    for (double s : sums) total += s;
    return total;
}

namespace {

// The shared state of a parallel_steps run. One word holds the open step, the parts of it taken (a bit each) and the
// parts done (a count), so that a claim is checked against the very step it claims; ended says the run is over. A
// thread waiting for a change polls a moment, then sleeps; whoever changes the state wakes the sleepers, if any.
class StepGate {
public:
    bool ended() const { return ended_.load(std::memory_order_seq_cst); }

    // Claims part p of step t: false when it is taken already, or step t is no longer the open one.
    bool claim(std::size_t t, std::size_t p) {
        std::uint64_t state = state_.load(std::memory_order_acquire);
        const std::uint64_t bit = std::uint64_t(1) << (kTakenShift + p);
        while (step_of(state) == t && !(state & bit))
            if (state_.compare_exchange_weak(state, state | bit, std::memory_order_acq_rel, std::memory_order_acquire))
                return true;
        return false;
    }

    // Counts a part of the open step done; returns the parts of it done now.
    std::size_t part_done() { return done_of(state_.fetch_add(1, std::memory_order_acq_rel) + 1); }

    // The step open to the threads that wait for it (on a cache line of its own, which only this writes: the waiting
    // threads poll it without taking state_'s line from the threads that claim and finish parts).
    std::size_t opened() const { return opened_.load(std::memory_order_seq_cst); }

    void open(std::size_t t) {
        state_.store(std::uint64_t(t) << kStepShift, std::memory_order_release);
        opened_.store(t, std::memory_order_seq_cst);
        wake();
    }

    void end() {
        ended_.store(true, std::memory_order_seq_cst);
        wake();
    }

    // Returns once ready() holds: polling first, then asleep.
    template <class Ready>
    void wait(Ready ready) {
        if (spin_until(ready)) return;
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, ready);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }

    // The first exception a part (or after) threw, kept for the caller.
    void failed(std::exception_ptr error) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = error;
        }
        failed_.store(true, std::memory_order_release);
    }
    bool has_failed() const { return failed_.load(std::memory_order_acquire); }
    std::exception_ptr error() {
        std::lock_guard<std::mutex> lock(mutex_);
        return error_;
    }

private:
    static constexpr unsigned kTakenShift = 8, kStepShift = 16;
    static constexpr std::uint64_t kPartsMask = 0xff;
    static_assert(kMaxStepParts <= 8, "a step's parts taken are 8 bits of StepGate's word");

    static std::size_t step_of(std::uint64_t state) { return std::size_t(state >> kStepShift); }
    static std::size_t done_of(std::uint64_t state) { return std::size_t(state & kPartsMask); }

    // A waiter counts itself in sleepers_ before its last look at the state, under mutex_, and a changer looks at
    // sleepers_ after its change (all sequentially consistent): either the waiter sees the change, or the changer
    // sees the sleeper and notifies it under the mutex, which it cannot take until the waiter sleeps.
    void wake() {
        if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
        { std::lock_guard<std::mutex> lock(mutex_); }
        wake_.notify_all();
    }

    alignas(64) std::atomic<std::uint64_t> state_{0};  // step 0 open, nothing taken
    alignas(64) std::atomic<std::size_t> opened_{0};
    alignas(64) std::atomic<bool> ended_{false};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> failed_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::exception_ptr error_;  // under mutex_
};

// One thread's share of a parallel_steps run: each step, part `me` first, then any left. The thread that finishes a
// step's last part closes the step: after(), then the next step's opening (or the run's end). No thread has a role of
// its own, so the run ends whichever threads take part (the pool's helpers may take every part of the job, and a
// helper that starts late, or never, leaves its parts to the others).
void take_steps(StepGate& gate, std::size_t me, const std::vector<std::uint8_t>& parts,
                const std::function<void(std::size_t, std::size_t)>& part, const std::function<bool(std::size_t)>& after) {
    const std::size_t steps = parts.size();
    for (std::size_t t = 0;; ++t) {
        gate.wait([&] { return gate.ended() || gate.opened() >= t; });
        if (gate.ended()) return;
        t = gate.opened();  // a thread that came late joins the open step
        const std::size_t n_parts = parts[t];
        for (std::size_t k = 0; k < n_parts; ++k) {
            const std::size_t p = (me + k) % n_parts;
            if (!gate.claim(t, p)) continue;
            try {
                part(t, p);
            } catch (...) {
                gate.failed(std::current_exception());
            }
            if (gate.part_done() < n_parts) continue;
            bool more = t + 1 < steps && !gate.has_failed();
            if (more) {
                try {
                    more = after(t);
                } catch (...) {
                    gate.failed(std::current_exception());
                    more = false;
                }
            }
            if (more)
                gate.open(t + 1);
            else
                gate.end();
        }
    }
}

}  // namespace

std::size_t parallel_steps(std::size_t steps, std::size_t threads, const std::function<std::size_t(std::size_t)>& parts,
                           const std::function<void(std::size_t, std::size_t)>& part,
                           const std::function<bool(std::size_t)>& after, std::chrono::microseconds linger) {
    if (steps == 0) return 0;
    std::vector<std::uint8_t> counts(steps);  // the part counts, checked before any part runs and asked once
    for (std::size_t t = 0; t < steps; ++t) {
        const std::size_t n = parts(t);
        if (n < 1 || n > kMaxStepParts)
            throw std::invalid_argument("parallel_steps: step " + std::to_string(t) + " has " + std::to_string(n) +
                                        " parts, not 1 to " + std::to_string(kMaxStepParts));
        counts[t] = std::uint8_t(n);
    }
    threads = std::min(threads, kMaxStepParts);
    if (threads < 2) {
        for (std::size_t t = 0;; ++t) {
            std::exception_ptr error;  // the step's other parts still run, as on several threads
            for (std::size_t p = 0; p < counts[t]; ++p) {
                try {
                    part(t, p);
                } catch (...) {
                    if (!error) error = std::current_exception();
                }
            }
            if (error) std::rethrow_exception(error);
            if (t + 1 == steps || !after(t)) return t + 1;
        }
    }
    StepGate gate;
    const std::thread::id caller = std::this_thread::get_id();
    parallel_for(threads, threads, 1, [&](std::size_t begin, std::size_t end) {
        for (std::size_t k = begin; k < end; ++k)  // the caller prefers part 0, a helper its job part's number
            take_steps(gate, std::this_thread::get_id() == caller ? 0 : std::max<std::size_t>(k, 1), counts, part,
                       after);
    }, linger);
    if (gate.has_failed()) std::rethrow_exception(gate.error());
    return gate.opened() + 1;  // the run ends after the step open last
}

}  // namespace l2fast
