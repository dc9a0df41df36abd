// A small pool of helper threads that sleep on a condition variable between jobs.
#include "parallel.hpp"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace l2fast {

namespace {

class Pool {
public:
    explicit Pool(std::size_t helpers) {
        for (std::size_t i = 0; i < helpers; ++i) workers_.emplace_back([this, i] { work(i + 1); });
    }

    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    std::size_t helpers() const { return workers_.size(); }

    // Share 0 runs on the caller; shares 1..shares-1 on helpers 1..shares-1.
    void run(std::size_t n, std::size_t shares, const std::function<void(std::size_t, std::size_t)>& body) {
        std::unique_lock<std::mutex> lock(mutex_);
        body_ = &body;
        n_ = n;
        shares_ = shares;
        pending_ = shares - 1;
        ++generation_;
        lock.unlock();
        wake_.notify_all();
        share(0, body);
        lock.lock();
        done_.wait(lock, [this] { return pending_ == 0; });
        body_ = nullptr;
    }

private:
    void share(std::size_t index, const std::function<void(std::size_t, std::size_t)>& body) const {
        const std::size_t begin = n_ * index / shares_, end = n_ * (index + 1) / shares_;
        if (begin < end) body(begin, end);
    }

    void work(std::size_t index) {
        std::size_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            if (index >= shares_) continue;
            const auto* body = body_;
            lock.unlock();
            share(index, *body);
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(std::size_t, std::size_t)>* body_ = nullptr;
    std::size_t n_ = 0, shares_ = 1, pending_ = 0, generation_ = 0;
    bool stopping_ = false;
};

// One pool per process, made on first use and remade after a fork (a child has no helper threads).
std::mutex pool_mutex;
std::unique_ptr<Pool> pool;
pid_t pool_pid = 0;

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
        pool = std::make_unique<Pool>(shares - 1);
        pool_pid = getpid();
    }
    pool->run(n, shares, body);
}

}  // namespace l2fast
