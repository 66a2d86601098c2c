// thread_pool.hpp — a small persistent pool of std::threads (no OpenMP runtime: the library is dlopen'ed by Bun and
// Deno, and a second OpenMP runtime in a process is a classic source of hangs).
#pragma once

#include <cstdint>
#include <functional>

namespace fa::cpu {

// Threads used for one call, the calling thread included: FLASHATTN_NUM_THREADS (1..1024) if set and valid, else
// std::thread::hardware_concurrency(). Read once, when the pool is first used.
int worker_count();

// Runs body(task, worker) for task in [0, tasks), spread over the pool; worker is in [0, worker_count()) and is
// unique among the bodies running at one time, so it can index per-worker scratch. Tasks are handed out in order
// from a shared counter. The first exception thrown by a body stops the hand-out and is rethrown here. Calls from
// different threads are serialised.
void parallel_for(int64_t tasks, const std::function<void(int64_t task, int worker)>& body);

}  // namespace fa::cpu
