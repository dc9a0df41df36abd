// A small pool of helper threads that sleep on a condition variable between jobs, after spinning a
// moment in case another job follows at once.
#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

namespace l2fast {

namespace {

// How long a helper waiting for work, or a caller waiting for its helpers, polls before it sleeps:
// back-to-back jobs then start without a wake-up (tens of microseconds on a busy machine), and an
// idle pool still leaves the cores to OpenBLAS's threads after 50 us. Between rounds of polling it
// yields: when the scheduler has put a helper on the caller's core (the other one busy elsewhere),
// the caller's share then runs instead of waiting out the spin (U at 1M: 0.2 ms a call -> 0.1).
constexpr auto kSpin = std::chrono::microseconds(50);

template <class Ready>
bool spin_until(Ready ready) {
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
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

class Pool {
public:
    explicit Pool(std::size_t helpers) {
        for (std::size_t i = 0; i < helpers; ++i) workers_.emplace_back([this, i] { work(i + 1); });
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

    // Share 0 runs on the caller; shares 1..shares-1 on helpers 1..shares-1.
    void run(std::size_t n, std::size_t shares, const std::function<void(std::size_t, std::size_t)>& body) {
        {
            // The job's description changes only under the mutex; helpers read it there too.
            std::lock_guard<std::mutex> lock(mutex_);
            body_ = &body;
            n_ = n;
            shares_ = shares;
            pending_.store(shares - 1, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        share(0, n, shares, body);
        const auto finished = [this] { return pending_.load(std::memory_order_acquire) == 0; };
        if (!spin_until(finished)) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, finished);
        }
    }

private:
    static void share(std::size_t index, std::size_t n, std::size_t shares,
                      const std::function<void(std::size_t, std::size_t)>& body) {
        const std::size_t begin = n * index / shares, end = n * (index + 1) / shares;
        if (begin < end) body(begin, end);
    }

    void work(std::size_t index) {
        std::size_t seen = 0;
        for (;;) {
            const auto changed = [&] {
                return stopping_.load(std::memory_order_acquire) ||
                       generation_.load(std::memory_order_acquire) != seen;
            };
            std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
            if (spin_until(changed)) {
                lock.lock();
            } else {
                lock.lock();
                wake_.wait(lock, changed);
            }
            if (stopping_.load(std::memory_order_acquire)) return;
            seen = generation_.load(std::memory_order_relaxed);
            if (index >= shares_) continue;
            const auto* body = body_;
            const std::size_t n = n_, shares = shares_;
            lock.unlock();
            share(index, n, shares, *body);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> done_lock(mutex_);  // the caller cannot miss the notify
                done_.notify_one();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(std::size_t, std::size_t)>* body_ = nullptr;
    std::size_t n_ = 0, shares_ = 1;
    std::atomic<std::size_t> pending_{0}, generation_{0};
    std::atomic<bool> stopping_{false};
};

// One pool per process, made on first use and remade after a fork (a child has no helper threads).
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

void parallel_for(std::size_t n, std::size_t threads, std::size_t min_share,
                  const std::function<void(std::size_t, std::size_t)>& body) {
    const std::size_t shares = std::min(threads, n / std::max<std::size_t>(min_share, 1));
    if (shares < 2) {
        if (n) body(0, n);
        return;
    }
    // One job at a time: a second caller waits here rather than sharing the helpers.
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (!pool || pool_pid != getpid() || pool->helpers() + 1 < shares) {
        if (pool && pool_pid != getpid()) (void)pool.release();  // the parent's threads are not ours to join
        (void)fork_handlers;
        pool = std::make_unique<Pool>(shares - 1);
        pool_pid = getpid();
    }
    pool->run(n, shares, body);
}

double parallel_sum(std::size_t n, std::size_t threads, std::size_t min_share,
                    const std::function<double(std::size_t, std::size_t)>& body) {
    const std::size_t shares = std::min(threads, n / std::max<std::size_t>(min_share, 1));
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

}  // namespace l2fast
