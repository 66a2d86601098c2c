// memory.hpp — host memory of the CPU backend: fa_malloc's registry and the library's own workspaces, both counted
// in fa_memory_stats (current and peak bytes), both 64-byte aligned (one cache line, one AVX-512 vector).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fa::cpu {

constexpr size_t kAlignment = 64;

// Physical memory of the machine, and what the kernel says is available now (MemAvailable), in bytes.
uint64_t physical_memory_bytes();
uint64_t available_memory_bytes();

// fa_malloc / fa_free: the registry knows every live pointer, so a foreign or double free is an error, not a crash.
// Returns FA_OK or a status with the last error set.
int32_t registry_alloc(void** out, uint64_t bytes);
int32_t registry_free(void* ptr);
// True when [ptr, ptr + bytes) lies inside one live fa_malloc block (memcpy/memset checks).
bool registry_contains(const void* ptr, uint64_t bytes);

void memory_stats(int64_t* current, int64_t* peak);
void reset_peak_memory();

// A counted, aligned, zero-initialised scratch buffer owned by one call. Throws WorkspaceError (turned into
// FA_ERR_OUT_OF_MEMORY at the boundary) when the size is more than the machine can give.
class WorkspaceError : public std::exception {
 public:
  explicit WorkspaceError(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

class Workspace {
 public:
  Workspace() = default;
  // `what` names the buffer in the error message ("naive scores S and P").
  Workspace(uint64_t bytes, const char* what);
  ~Workspace();
  Workspace(Workspace&& other) noexcept;
  Workspace& operator=(Workspace&& other) noexcept;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  uint64_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  uint64_t bytes_ = 0;
};

// a * b * ... in 64-bit bytes, or throws WorkspaceError naming `what` on overflow.
uint64_t checked_bytes(const char* what, std::initializer_list<uint64_t> factors);

}  // namespace fa::cpu
