// api.cpp — the C ABI of libflashattn_cpu (kernels/include/flashattn.h). Every exported body runs inside
// fa::guard (no exception crosses the boundary); every attention call is validated here before a driver runs.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../common/fa_common.hpp"
#include "../common/fa_kvcache.hpp"
#include "attention.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

const char* kernel_name(int32_t id) {
  switch (id) {
    case kFlashForwardAvx2: return "cpu_flash_fwd_avx2";
    case kFlashForwardPortable: return "cpu_flash_fwd_portable";
    case kFlashBackwardAvx2: return "cpu_flash_bwd_avx2";
    case kFlashBackwardPortable: return "cpu_flash_bwd_portable";
    case kNaiveForwardAvx2: return "cpu_naive_fwd_avx2";
    case kNaiveForwardPortable: return "cpu_naive_fwd_portable";
    default: return "unknown";
  }
}

namespace {

constexpr const char* kVersion = "0.1.0";
constexpr BackendLimits kLimits{/*allow_f32=*/true, /*min_head_dim=*/1, /*max_head_dim=*/256, /*head_dim_multiple=*/1};

// The kernel a request would run, from the algorithm, the direction and the ISA of this CPU.
int32_t planned_kernel(const fa_attn_params& p, int32_t direction, const IsaKernels& isa) {
  const bool avx2 = is_avx2(isa);
  if (direction == FA_DIR_BACKWARD) return avx2 ? kFlashBackwardAvx2 : kFlashBackwardPortable;
  if (p.algorithm == FA_ALGO_NAIVE) return avx2 ? kNaiveForwardAvx2 : kNaiveForwardPortable;
  return avx2 ? kFlashForwardAvx2 : kFlashForwardPortable;
}

// The descale factors of either params struct, read where they live (host memory here): 4-byte aligned, and every
// factor the request uses finite, positive and normal.
template <typename Params>
void check_host_descales(const Params& p, std::vector<Problem>& out) {
  for (const NamedDescale& x : named_descales(p)) {
    if (x.view.data == nullptr) continue;
    if (reinterpret_cast<uintptr_t>(x.view.data) % 4 != 0)
      out.push_back({FA_ERR_INVALID_ARGUMENT, format("%s is not aligned to 4-byte floats", x.name)});
    else
      for (const Problem& pr : check_descale_values(p, x.name, x.view)) out.push_back(pr);
  }
}

// Checks that need the data (host memory on this backend): element alignment and the varlen offsets.
std::vector<Problem> check_host_data(const fa_attn_params& p, int32_t direction) {
  std::vector<Problem> out;
  const bool bwd = direction != FA_DIR_FORWARD;
  struct Named {
    const char* name;
    const fa_tensor& t;
    bool needed;
  };
  const Named tensors[] = {{"q", p.q, true},       {"k", p.k, true},     {"v", p.v, true},     {"o", p.o, true},
                           {"dout", p.dout, bwd}, {"dq", p.dq, bwd}, {"dk", p.dk, bwd}, {"dv", p.dv, bwd}};
  for (const Named& n : tensors) {
    const int32_t dtype = &n.t == &p.o ? output_dtype(p) : p.dtype;
    const size_t element = dtype_size(dtype);
    if (n.needed && reinterpret_cast<uintptr_t>(n.t.data) % element != 0)
      out.push_back({FA_ERR_INVALID_ARGUMENT, format("tensor %s is not aligned to its %zu-byte %s elements", n.name, element,
                                                     dtype_name(dtype))});
  }
  if (p.lse != nullptr && reinterpret_cast<uintptr_t>(p.lse) % 4 != 0)
    out.push_back({FA_ERR_INVALID_ARGUMENT, "lse is not aligned to 4-byte floats"});
  check_host_descales(p, out);
  if (!out.empty() || !is_varlen(p)) return out;
  for (auto problems : {check_cu_seqlens(p.cu_seqlens_q, p.batch, p.total_q, p.seqlen_q, "cu_seqlens_q"),
                        check_cu_seqlens(p.cu_seqlens_k, p.batch, p.total_k, p.seqlen_k, "cu_seqlens_k")})
    out.insert(out.end(), problems.begin(), problems.end());
  return out;
}

int32_t validate(const fa_attn_params* p, int32_t direction) {
  if (int32_t status = report_first(check_params(p, kLimits, direction))) return status;
  return report_first(check_host_data(*p, direction));
}

// Runs one direction; workspace shortfalls become FA_ERR_OUT_OF_MEMORY with the sentence that says which buffer.
int32_t run_direction(fa_attn_params& p, int32_t direction) {
  const IsaKernels& isa = select_isa();
  try {
    if (direction == FA_DIR_FORWARD || direction == FA_DIR_FORWARD_BACKWARD) {
      p.out_kernel = p.algorithm == FA_ALGO_NAIVE ? naive_forward(p, isa) : flash_forward(p, isa);
      p.out_num_splits = 1;
    }
    if (direction == FA_DIR_BACKWARD || direction == FA_DIR_FORWARD_BACKWARD) p.out_kernel = flash_backward(p, isa);
  } catch (const WorkspaceError& e) {
    return fail(FA_ERR_OUT_OF_MEMORY, e.what());
  }
  return FA_OK;
}

// fa_forward_kvcache's checks: the struct, then (host memory here) element alignment, the descale factors and the int32
// arrays' values.
int32_t validate_kvcache(const fa_kvcache_params* p) {
  if (int32_t status = report_first(check_kvcache_params(p, kLimits))) return status;
  const size_t element = dtype_size(p->dtype), out_element = dtype_size(output_dtype(*p));
  struct Named {
    const char* name;
    const void* data;
    size_t alignment;
  };
  const Named arrays[] = {{"q", p->q.data, element},           {"k_cache", p->k_cache.data, element},
                          {"v_cache", p->v_cache.data, element}, {"k_new", p->k_new.data, element},
                          {"v_new", p->v_new.data, element},     {"o", p->o.data, out_element},
                          {"rotary_cos", p->rotary_cos, element}, {"rotary_sin", p->rotary_sin, element},
                          {"lse", p->lse, 4},                    {"alibi_slopes", p->alibi_slopes, 4},
                          {"cache_seqlens", p->cache_seqlens, 4}, {"block_table", p->block_table, 4},
                          {"cache_batch_idx", p->cache_batch_idx, 4}, {"cache_leftpad", p->cache_leftpad, 4}};
  for (const Named& a : arrays)
    if (reinterpret_cast<uintptr_t>(a.data) % a.alignment != 0)
      return fail(FA_ERR_INVALID_ARGUMENT, format("%s is not aligned to its %zu-byte elements", a.name, a.alignment));
  std::vector<Problem> descales;
  check_host_descales(*p, descales);
  if (int32_t status = report_first(descales)) return status;
  return report_first(check_kvcache_values(*p, p->cache_seqlens, p->block_table, p->cache_batch_idx, p->cache_leftpad));
}

std::string read_cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t start = line.find_first_not_of(" \t", colon + 1);
        return start == std::string::npos ? "" : line.substr(start);
      }
    }
  return "unknown x86-64 CPU";
}

// Cache size in bytes of the given level from sysfs (e.g. "32768K"), or 0 when unknown.
int64_t cache_bytes(int level) {
  for (int index = 0; index < 8; ++index) {
    std::ifstream lvl("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/level");
    int found = 0;
    if (!(lvl >> found)) break;
    if (found != level) continue;
    std::ifstream size("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    long long value = 0;
    char unit = 0;
    if (!(size >> value)) return 0;
    size >> unit;
    return unit == 'K' ? value * 1024 : unit == 'M' ? value * 1024 * 1024 : value;
  }
  return 0;
}

std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

std::string kernel_json(int32_t id) {
  const bool bwd = id == kFlashBackwardAvx2 || id == kFlashBackwardPortable;
  const bool naive = id == kNaiveForwardAvx2 || id == kNaiveForwardPortable;
  const bool avx2 = id == kFlashForwardAvx2 || id == kFlashBackwardAvx2 || id == kNaiveForwardAvx2;
  std::vector<std::string> features = {"causal", "window", "softcap", "alibi", "gqa", "varlen", "strides", "lse"};
  if (naive) features.push_back("materialised_scores");
  if (!bwd && !naive) features.push_back("kvcache");  // fa_forward_kvcache runs the flash forward's tiles (kvcache.cpp)
  if (bwd) features.push_back("deterministic");
  // fp8 inputs are forward only (flashattn.h, "FP8").
  const char* dtypes = bwd ? "[\"fp32\",\"fp16\",\"bf16\"]" : "[\"fp32\",\"fp16\",\"bf16\",\"fp8_e4m3\",\"fp8_e5m2\"]";
  std::string out = format("{\"id\":%d,\"name\":%s,\"directions\":%s,\"dtypes\":%s,"
                           "\"head_dims\":[%d],\"features\":%s",
                           id, json_quote(kernel_name(id)).c_str(), bwd ? "[\"bwd\"]" : "[\"fwd\"]", dtypes, kLimits.max_head_dim,
                           json_strings(features).c_str());
  if (avx2) out += ",\"min_arch\":\"x86_64-avx2\"";
  return out + "}";
}

// The validated KV-cache request's work (kvcache.cpp).
int32_t run_kvcache(fa_kvcache_params& p) {
  try {
    p.out_kernel = kvcache_forward(p, select_isa());
  } catch (const WorkspaceError& e) {
    return fail(FA_ERR_OUT_OF_MEMORY, e.what());
  }
  return static_cast<int32_t>(FA_OK);
}

// fa_bench's loop: writing over twice the last-level cache before each run evicts the inputs, so every run starts
// cold; `run` is timed with a monotonic clock.
template <typename Run>
int32_t timed_runs(int32_t warmup, int32_t iters, float* times_ms, Run&& run) {
  if (int32_t status = check_bench_counts(warmup, iters, times_ms)) return status;
  const int64_t llc = std::max<int64_t>({cache_bytes(3), cache_bytes(2), int64_t{8} << 20});
  std::unique_ptr<Workspace> flush;
  try {
    flush = std::make_unique<Workspace>(static_cast<uint64_t>(2 * llc), "the cache-flush buffer of fa_bench");
  } catch (const WorkspaceError& e) {
    return fail(FA_ERR_OUT_OF_MEMORY, e.what());
  }
  volatile char* lines = flush->as<char>();
  for (int32_t i = 0; i < warmup + iters; ++i) {
    for (int64_t at = 0; at < 2 * llc; at += 64) lines[at] = static_cast<char>(i);
    const auto start = std::chrono::steady_clock::now();
    if (int32_t status = run()) return status;
    const auto stop = std::chrono::steady_clock::now();
    if (i >= warmup) times_ms[i - warmup] = std::chrono::duration<float, std::milli>(stop - start).count();
  }
  return static_cast<int32_t>(FA_OK);
}

}  // namespace
}  // namespace fa::cpu

using namespace fa;
using namespace fa::cpu;

extern "C" {

FA_API int32_t fa_abi_version(void) { return FA_ABI_VERSION; }

FA_API int32_t fa_params_layout(int64_t* out, int32_t capacity) { return params_layout(out, capacity); }

FA_API int32_t fa_kvcache_layout(int64_t* out, int32_t capacity) { return kvcache_layout(out, capacity); }

FA_API int32_t fa_last_error(char* buf, int64_t len) {
  const std::string& message = last_error_slot();
  if (buf != nullptr && len > 0) {
    const size_t n = std::min(message.size(), static_cast<size_t>(len) - 1);
    std::memcpy(buf, message.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int32_t>(message.size());
}

FA_API int32_t fa_info(char* buf, int64_t len) {
  return guard([&] {
    std::vector<std::string> kernels;
    for (int32_t id = kFlashForwardAvx2; id <= kNaiveForwardPortable; ++id) kernels.push_back(kernel_json(id));
    const std::string json = format("{\"backend\":\"cpu\",\"version\":%s,\"abi\":%d,\"compiler\":%s,\"built_with\":{},"
                                    "\"archs\":[\"x86_64-avx2\",\"x86_64\"],\"selected_arch\":%s,\"threads\":%d,"
                                    "\"kernels\":%s}",
                                    json_quote(kVersion).c_str(), FA_ABI_VERSION, json_quote(compiler_string()).c_str(),
                                    json_quote(is_avx2(select_isa()) ? "x86_64-avx2" : "x86_64").c_str(), worker_count(),
                                    json_list(kernels).c_str());
    return copy_out(json, buf, len);
  });
}

FA_API int32_t fa_device_count(int32_t* count) {
  return guard([&] {
    if (count == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "fa_device_count: the output pointer is NULL");
    *count = 1;
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_device_info(int32_t device, char* buf, int64_t len) {
  return guard([&] {
    if (device != 0) return fail(FA_ERR_INVALID_ARGUMENT, format("device %d does not exist: the CPU backend has one device, 0", device));
    const unsigned cores = std::thread::hardware_concurrency();
    const std::string json =
        format("{\"name\":%s,\"arch\":%s,\"multiprocessors\":%u,\"cores\":%u,\"threads\":%d,\"memory_bytes\":%llu,"
               "\"available_memory_bytes\":%llu,\"shared_memory_optin_bytes\":0,\"l2_bytes\":%lld,\"l3_bytes\":%lld,"
               "\"driver_version\":null,\"runtime_version\":null}",
               json_quote(read_cpu_model()).c_str(), json_quote(cpu_has_avx2() ? "x86_64-avx2" : "x86_64").c_str(), cores,
               cores, worker_count(), static_cast<unsigned long long>(physical_memory_bytes()),
               static_cast<unsigned long long>(available_memory_bytes()), static_cast<long long>(cache_bytes(2)),
               static_cast<long long>(cache_bytes(3)));
    return copy_out(json, buf, len);
  });
}

FA_API int32_t fa_set_device(int32_t device) {
  return guard([&] {
    if (device != 0) return fail(FA_ERR_INVALID_ARGUMENT, format("device %d does not exist: the CPU backend has one device, 0", device));
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_malloc(void** out, uint64_t bytes) {
  return guard([&] { return registry_alloc(out, bytes); });
}

FA_API int32_t fa_free(void* ptr) {
  return guard([&] { return registry_free(ptr); });
}

namespace {

// "Device" pointers must lie inside one fa_malloc block; host pointers only have to be non-NULL.
int32_t check_copy(const char* call, const void* device_ptr, const void* host_ptr, uint64_t bytes) {
  if (bytes == 0) return FA_OK;
  if (device_ptr == nullptr || host_ptr == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, format("%s: a pointer is NULL", call));
  if (!registry_contains(device_ptr, bytes))
    return fail(FA_ERR_INVALID_ARGUMENT, format("%s: %llu bytes at this device pointer are not inside one fa_malloc block", call,
                                                static_cast<unsigned long long>(bytes)));
  return FA_OK;
}

}  // namespace

FA_API int32_t fa_memcpy_h2d(void* dst_device, const void* src_host, uint64_t bytes) {
  return guard([&] {
    if (int32_t status = check_copy("fa_memcpy_h2d", dst_device, src_host, bytes)) return status;
    if (bytes) std::memmove(dst_device, src_host, bytes);
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_memcpy_d2h(void* dst_host, const void* src_device, uint64_t bytes) {
  return guard([&] {
    if (int32_t status = check_copy("fa_memcpy_d2h", src_device, dst_host, bytes)) return status;
    if (bytes) std::memmove(dst_host, src_device, bytes);
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_memcpy_d2d(void* dst_device, const void* src_device, uint64_t bytes) {
  return guard([&] {
    if (int32_t status = check_copy("fa_memcpy_d2d", dst_device, src_device, bytes)) return status;
    if (int32_t status = check_copy("fa_memcpy_d2d", src_device, dst_device, bytes)) return status;
    if (bytes) std::memmove(dst_device, src_device, bytes);
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_memset(void* dst_device, int32_t byte_value, uint64_t bytes) {
  return guard([&] {
    if (byte_value < 0 || byte_value > 255)
      return fail(FA_ERR_INVALID_ARGUMENT, format("fa_memset: byte value %d is outside 0..255", byte_value));
    if (bytes == 0) return static_cast<int32_t>(FA_OK);
    if (dst_device == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "fa_memset: the pointer is NULL");
    if (!registry_contains(dst_device, bytes))
      return fail(FA_ERR_INVALID_ARGUMENT, "fa_memset: the range is not inside one fa_malloc block");
    std::memset(dst_device, byte_value, bytes);
    return static_cast<int32_t>(FA_OK);
  });
}

// Every call on this backend completes before it returns.
FA_API int32_t fa_synchronize(void) { return FA_OK; }

FA_API int32_t fa_memory_stats(int64_t* out2) {
  return guard([&] {
    if (out2 == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "fa_memory_stats: the output pointer is NULL");
    memory_stats(&out2[0], &out2[1]);
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_reset_peak_memory(void) {
  return guard([&] {
    reset_peak_memory();
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_forward(fa_attn_params* p) {
  return guard([&] {
    if (int32_t status = validate(p, FA_DIR_FORWARD)) return status;
    return run_direction(*p, FA_DIR_FORWARD);
  });
}

FA_API int32_t fa_backward(fa_attn_params* p) {
  return guard([&] {
    if (int32_t status = validate(p, FA_DIR_BACKWARD)) return status;
    return run_direction(*p, FA_DIR_BACKWARD);
  });
}

FA_API int32_t fa_forward_kvcache(fa_kvcache_params* p) {
  return guard([&] {
    if (int32_t status = validate_kvcache(p)) return status;
    return run_kvcache(*p);
  });
}

FA_API int32_t fa_plan(const fa_attn_params* p, int32_t direction, char* buf, int64_t len) {
  return guard([&] {
    const std::vector<Problem> problems = check_params(p, kLimits, direction);
    if (!problems.empty()) return copy_out(plan_refusal_json(problems), buf, len);
    const IsaKernels& isa = select_isa();
    auto kernel = [](int32_t id) { return format("{\"id\":%d,\"name\":%s}", id, json_quote(kernel_name(id)).c_str()); };
    const int32_t first = planned_kernel(*p, direction == FA_DIR_BACKWARD ? FA_DIR_BACKWARD : FA_DIR_FORWARD, isa);
    std::string json = "{\"ok\":true,\"kernel\":" + kernel(first) + ",\"num_splits\":1";
    if (direction == FA_DIR_FORWARD_BACKWARD) json += ",\"backward_kernel\":" + kernel(planned_kernel(*p, FA_DIR_BACKWARD, isa));
    return copy_out(json + "}", buf, len);
  });
}

FA_API int32_t fa_bench(fa_attn_params* p, int32_t direction, int32_t warmup, int32_t iters, float* times_ms) {
  return guard([&] {
    if (int32_t status = validate(p, direction)) return status;
    return timed_runs(warmup, iters, times_ms, [&] { return run_direction(*p, direction); });
  });
}

FA_API int32_t fa_bench_kvcache(fa_kvcache_params* p, int32_t warmup, int32_t iters, float* times_ms) {
  return guard([&] {
    if (int32_t status = validate_kvcache(p)) return status;
    return timed_runs(warmup, iters, times_ms, [&] { return run_kvcache(*p); });
  });
}

}  // extern "C"
