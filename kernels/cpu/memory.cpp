// memory.cpp — counted, aligned host memory (see memory.hpp).
#include "memory.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "../common/fa_common.hpp"

namespace fa::cpu {

namespace {

struct Counters {
  std::mutex mutex;
  std::unordered_map<const void*, uint64_t> live;  // fa_malloc blocks: pointer -> requested bytes
  int64_t current = 0;
  int64_t peak = 0;
};

Counters& counters() {
  static Counters instance;
  return instance;
}

void count_alloc(uint64_t bytes) {
  Counters& c = counters();
  c.current += static_cast<int64_t>(bytes);
  if (c.current > c.peak) c.peak = c.current;
}

// Rounds up to a multiple of the alignment (aligned_alloc wants that); 0 bytes still gets one line so that every
// allocation has a unique address.
uint64_t padded_size(uint64_t bytes) { return bytes == 0 ? kAlignment : (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

uint64_t physical_memory_bytes() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

uint64_t available_memory_bytes() {
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f)) found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
    std::fclose(f);
    if (found) return static_cast<uint64_t>(kib) * 1024;
  }
  return physical_memory_bytes();
}

int32_t registry_alloc(void** out, uint64_t bytes) {
  if (out == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "fa_malloc: the output pointer is NULL");
  *out = nullptr;
  const uint64_t physical = physical_memory_bytes(), limit = physical > kAlignment ? physical : UINT64_MAX / 2;
  if (bytes > limit - kAlignment)
    return fail(FA_ERR_OUT_OF_MEMORY, format("fa_malloc: %llu bytes is more than this machine's %llu bytes of memory",
                                             static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(limit)));
  void* block = std::aligned_alloc(kAlignment, padded_size(bytes));
  if (block == nullptr)
    return fail(FA_ERR_OUT_OF_MEMORY, format("fa_malloc: could not allocate %llu bytes of host memory",
                                             static_cast<unsigned long long>(bytes)));
  Counters& c = counters();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.live.emplace(block, bytes);
  count_alloc(bytes);
  *out = block;
  return FA_OK;
}

int32_t registry_free(void* ptr) {
  if (ptr == nullptr) return FA_OK;
  Counters& c = counters();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.live.find(ptr);
    if (it == c.live.end())
      return fail(FA_ERR_INVALID_ARGUMENT, "fa_free: this pointer was not returned by fa_malloc (or was already freed)");
    c.current -= static_cast<int64_t>(it->second);
    c.live.erase(it);
  }
  std::free(ptr);
  return FA_OK;
}

bool registry_contains(const void* ptr, uint64_t bytes) {
  Counters& c = counters();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  for (const auto& [block, size] : c.live) {
    const auto start = reinterpret_cast<uintptr_t>(block);
    if (address >= start && address - start <= size && bytes <= size - (address - start)) return true;
  }
  return false;
}

void memory_stats(int64_t* current, int64_t* peak) {
  Counters& c = counters();
  std::lock_guard<std::mutex> lock(c.mutex);
  *current = c.current;
  *peak = c.peak;
}

void reset_peak_memory() {
  Counters& c = counters();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.peak = c.current;
}

uint64_t checked_bytes(const char* what, std::initializer_list<uint64_t> factors) {
  uint64_t total = 1;
  for (uint64_t f : factors)
    if (__builtin_mul_overflow(total, f, &total))
      throw WorkspaceError(format("%s would need more than 2^64 bytes", what));
  return total;
}

Workspace::Workspace(uint64_t bytes, const char* what) {
  const uint64_t available = available_memory_bytes();
  if (bytes > available)
    throw WorkspaceError(format("%s: %.2f GiB needed, but only %.2f GiB of memory is available", what,
                                static_cast<double>(bytes) / (1ull << 30), static_cast<double>(available) / (1ull << 30)));
  data_ = std::aligned_alloc(kAlignment, padded_size(bytes));
  if (data_ == nullptr) throw WorkspaceError(format("%s: could not allocate %llu bytes", what, static_cast<unsigned long long>(bytes)));
  std::memset(data_, 0, padded_size(bytes));
  bytes_ = bytes;
  std::lock_guard<std::mutex> lock(counters().mutex);
  count_alloc(bytes);
}

Workspace::~Workspace() {
  if (data_ == nullptr) return;
  std::free(data_);
  std::lock_guard<std::mutex> lock(counters().mutex);
  counters().current -= static_cast<int64_t>(bytes_);
}

Workspace::Workspace(Workspace&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

Workspace& Workspace::operator=(Workspace&& other) noexcept {
  if (this != &other) {
    this->~Workspace();
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

}  // namespace fa::cpu
