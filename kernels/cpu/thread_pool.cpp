// thread_pool.cpp — see thread_pool.hpp.
#include "thread_pool.hpp"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fa::cpu {

namespace {

int configured_threads() {
  if (const char* env = std::getenv("FLASHATTN_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 1024) return static_cast<int>(n);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

class Pool {
 public:
  explicit Pool(int threads) : size_(threads) {
    for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { worker_loop(w); });
  }

  // Wakes the workers and joins them, so no thread outlives the library's code.
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return size_; }

  void run(int64_t tasks, const std::function<void(int64_t, int)>& body) {
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      tasks_ = tasks;
      next_.store(0);
      error_ = nullptr;
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void worker_loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work(worker);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }

  void work(int worker) {
    for (;;) {
      int64_t task = next_.fetch_add(1);
      if (task >= tasks_) return;
      try {
        (*body_)(task, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(tasks_);  // stop handing out tasks
      }
    }
  }

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int)>* body_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

// The pool of this process, destroyed at exit or dlclose. A child created by fork() has none of its parent's
// threads: it builds its own pool and leaves the parent's alone (destroying it would wait on workers and condition
// variables that only exist in the parent).
struct PoolHolder {
  Pool* pool = nullptr;
  pid_t owner = 0;
  ~PoolHolder() {
    if (pool != nullptr && owner == getpid()) delete pool;
  }
};

Pool& pool() {
  static std::mutex mutex;
  static PoolHolder holder;
  static const int threads = configured_threads();
  std::lock_guard<std::mutex> lock(mutex);
  if (holder.pool == nullptr || holder.owner != getpid()) {
    holder.pool = new Pool(threads);
    holder.owner = getpid();
  }
  return *holder.pool;
}

}  // namespace

int worker_count() { return pool().size(); }

void parallel_for(int64_t tasks, const std::function<void(int64_t task, int worker)>& body) {
  if (tasks <= 0) return;
  pool().run(tasks, body);
}

}  // namespace fa::cpu
