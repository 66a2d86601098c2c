// api.cpp — every function of flashattn.h for the GPU libraries (CUDA and HIP builds share this file).
// Validation (fa::check_params with GPU limits, cu_seqlens checked on a host copy), devices, tracked device memory
// and workspaces, the kernel-path dispatcher (with FLASHATTN_KERNEL to force a path), fa_plan and fa_bench.
// Only gpu* names of gpu_compat.hpp and the hooks of device.hpp may appear here.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

#include "../common/fa_kvcache.hpp"
#include "device.hpp"

namespace fa {

// Weak defaults so each build links without the registries of the other vendor; the real definitions (in their
// own translation units) take precedence.
__attribute__((weak)) const std::vector<KernelPath>& cuda_tensor_core_paths() {
  static const std::vector<KernelPath> none;
  return none;
}
__attribute__((weak)) const std::vector<KernelPath>& hip_matrix_core_paths() {
  static const std::vector<KernelPath> none;
  return none;
}

namespace {

constexpr BackendLimits kGpuLimits{false, 8, 256, 8};
// cu_seqlens and the KV cache's block_table are copied to the host: bound the copies (64 MiB of int32 at most).
constexpr int32_t kMaxVarlenBatch = 1 << 24;

// ---- device memory accounting -------------------------------------------------------------------------------------

struct MemoryBook {
  std::mutex mutex;
  std::unordered_map<void*, size_t> sizes;
  int64_t current = 0, peak = 0;

  void add(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    sizes[p] = bytes;
    current += static_cast<int64_t>(bytes);
    peak = std::max(peak, current);
  }
  // Returns false when p was not allocated here.
  bool remove(void* p) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = sizes.find(p);
    if (it == sizes.end()) return false;
    current -= static_cast<int64_t>(it->second);
    sizes.erase(it);
    return true;
  }
};

MemoryBook& book() {
  static MemoryBook* b = new MemoryBook();  // never destroyed: frees at unload must not touch a dead map
  return *b;
}

int32_t tracked_malloc(void** out, size_t bytes, const char* what) {
  void* p = nullptr;
  // Zero bytes still yields a unique pointer: allocate the smallest granule.
  gpuError_t err = gpuMalloc(&p, bytes == 0 ? 1 : bytes);
  if (err != gpuSuccess) {
    gpuGetLastError();  // clear the non-sticky allocation error
    return vendor_fail(err, what);
  }
  book().add(p, bytes);
  *out = p;
  return FA_OK;
}

void tracked_free(void* p) {
  if (p != nullptr && book().remove(p)) gpuFree(p);
}

// Library workspaces: one growing buffer per slot and device, counted in the memory statistics. A process that drives
// several GPUs (context parallelism, lib/ring.ts) keeps each device's buffers: switching devices frees nothing.
struct WorkspaceSlot {
  void* ptr = nullptr;
  size_t bytes = 0;
};
constexpr int kWorkspaceSlots = 5;  // 0..3 for kernels (paths.hpp), 4 = the bench's L2 flush buffer
std::map<int, std::array<WorkspaceSlot, kWorkspaceSlots>> g_slots;  // by device
std::mutex g_slots_mutex;

void* workspace_slot(int slot, size_t bytes) {
  if (slot < 0 || slot >= kWorkspaceSlots) {
    fail(FA_ERR_INTERNAL, format("workspace slot %d does not exist (0..3)", slot));
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(g_slots_mutex);
  int device = 0;
  gpuGetDevice(&device);
  WorkspaceSlot& s = g_slots[device][slot];
  if (s.ptr != nullptr && s.bytes >= bytes) return s.ptr;
  if (s.ptr != nullptr) {
    gpuDeviceSynchronize();  // a queued kernel may still use the old buffer (it is on this device)
    tracked_free(s.ptr);
    s = WorkspaceSlot{};
  }
  void* p = nullptr;
  if (tracked_malloc(&p, bytes, "allocating a kernel workspace") != FA_OK) return nullptr;
  s = WorkspaceSlot{p, bytes};
  return p;
}

// Frees every cached workspace of every device (after that device is idle, so no queued kernel still uses one), then
// makes the caller's device current again. fa_reset_peak_memory calls it so that the next measurement counts the
// workspaces its own calls need.
void release_workspaces() {
  std::lock_guard<std::mutex> lock(g_slots_mutex);
  if (g_slots.empty()) return;
  int current = 0;
  gpuGetDevice(&current);
  for (auto& [device, slots] : g_slots) {
    gpuSetDevice(device);
    gpuDeviceSynchronize();
    for (WorkspaceSlot& s : slots)
      if (s.ptr != nullptr) tracked_free(s.ptr);
  }
  g_slots.clear();
  gpuSetDevice(current);
}

void* kernel_workspace(int slot, size_t bytes) {
  if (slot > 3) {
    fail(FA_ERR_INTERNAL, format("workspace slot %d does not exist (0..3)", slot));
    return nullptr;
  }
  return workspace_slot(slot, bytes);
}

// ---- devices --------------------------------------------------------------------------------------------------------

int32_t device_range_check(int32_t device) {
  int32_t count = 0;
  if (int32_t st = vendor_device_count(&count); st != FA_OK) return st;
  if (device < 0 || device >= count)
    return fail(FA_ERR_INVALID_ARGUMENT, format("device %d does not exist: this machine has %d device%s (0..%d)", device, count,
                                                count == 1 ? "" : "s", count - 1));
  return FA_OK;
}

// Capabilities of the calling thread's current device (cached per device).
int32_t current_caps(DeviceCaps* caps) {
  int32_t count = 0;
  if (int32_t st = vendor_device_count(&count); st != FA_OK) return st;
  int device = 0;
  if (gpuError_t err = gpuGetDevice(&device); err != gpuSuccess) return vendor_fail(err, "reading the current device");
  static std::mutex mutex;
  static std::map<int, DeviceCaps> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it == cache.end()) {
    DeviceCaps c{};
    if (int32_t st = vendor_device_caps(device, &c); st != FA_OK) return st;
    it = cache.emplace(device, c).first;
  }
  *caps = it->second;
  return FA_OK;
}

// ---- kernel paths and the dispatcher --------------------------------------------------------------------------------

std::vector<const KernelPath*> all_paths() {
  std::vector<const KernelPath*> out;
#if defined(FA_GPU_HIP)
  for (const auto& k : hip_matrix_core_paths()) out.push_back(&k);
#else
  for (const auto& k : cuda_tensor_core_paths()) out.push_back(&k);
#endif
  for (const auto& k : portable_paths()) out.push_back(&k);
  for (const auto& k : naive_paths()) out.push_back(&k);
  return out;
}

bool is_naive_path(const KernelPath* k) {
  for (const auto& n : naive_paths())
    if (&n == k) return true;
  return false;
}

// Whether `k` implements `direction` at all; appends a reason when not.
bool has_direction(const KernelPath* k, int32_t direction, std::vector<std::string>& reasons) {
  const bool fwd = direction != FA_DIR_BACKWARD, bwd = direction != FA_DIR_FORWARD;
  if (fwd && k->forward == nullptr) reasons.push_back("implements no forward pass");
  if (bwd && k->backward == nullptr) reasons.push_back("implements no backward pass");
  return !((fwd && k->forward == nullptr) || (bwd && k->backward == nullptr));
}

// Runs one path's own test and prefixes its reasons with its name ("portable: needs head_dim ...").
template <typename Accepts>
bool path_accepts(const KernelPath* k, Accepts accepts, std::vector<std::string>& reasons) {
  std::vector<std::string> own;
  const bool ok = accepts(k, own);
  for (const auto& r : own) reasons.push_back(std::string(k->name) + ": " + r);
  return ok;
}

// The walk every request shares: the paths `in_walk` admits, in priority order, the first that `accepts` (a
// (path, reasons) -> bool test) takes the request; FLASHATTN_KERNEL=<name> restricts the choice to that path. Returns
// nullptr with every rejected path's reasons in `reasons`.
template <typename InWalk, typename Accepts>
const KernelPath* walk_paths(const DeviceCaps& caps, InWalk in_walk, Accepts accepts, std::vector<std::string>& reasons) {
#if defined(FA_GPU_CUDA)
  // The oldest machine code in the library is sm_75 (portable and naive units; see kernels/cuda/target.ts), and its
  // PTX is compute_90: an older GPU has nothing it can run, so every path would fail at launch with "no kernel image".
  if (caps.arch < 75) {
    reasons.push_back(format("this library carries code for sm_75 (portable path only), sm_80, sm_86, sm_89, sm_90 and "
                             "compute_90 PTX; this GPU is sm_%d, which none of it can run on",
                             caps.arch));
    return nullptr;
  }
#else
  (void)caps;
#endif
  const char* forced = std::getenv("FLASHATTN_KERNEL");
  const std::vector<const KernelPath*> paths = all_paths();
  if (forced != nullptr && *forced != '\0') {
    std::vector<std::string> names;
    for (const KernelPath* k : paths) {
      if (std::string(k->name) == forced) {
        if (path_accepts(k, accepts, reasons)) return k;
        reasons.push_back(format("FLASHATTN_KERNEL=%s forces this path, so no other is tried", forced));
        return nullptr;
      }
      names.push_back(k->name);
    }
    std::string known;
    for (size_t i = 0; i < names.size(); ++i) known += (i ? ", " : "") + names[i];
    reasons.push_back(format("FLASHATTN_KERNEL=%s names no kernel path of this library (it has: %s)", forced, known.c_str()));
    return nullptr;
  }
  for (const KernelPath* k : paths) {
    if (!in_walk(k)) continue;
    if (path_accepts(k, accepts, reasons)) return k;
  }
  if (reasons.empty()) reasons.push_back("this library has no kernel path for this request");
  return nullptr;
}

// The path that serves the validated attention request; algorithm = naive restricts the walk to the naive paths.
const KernelPath* select_path(const fa_attn_params& p, const DeviceCaps& caps, int32_t direction,
                              std::vector<std::string>& reasons) {
  const bool want_naive = p.algorithm == FA_ALGO_NAIVE;
  return walk_paths(
      caps, [&](const KernelPath* k) { return is_naive_path(k) == want_naive; },
      [&](const KernelPath* k, std::vector<std::string>& own) {
        return has_direction(k, direction, own) && k->supports(p, caps, direction, own);
      },
      reasons);
}

// The path that serves the validated KV-cache request: every path is asked, in priority order.
const KernelPath* select_kvcache_path(const fa_kvcache_params& p, const DeviceCaps& caps, std::vector<std::string>& reasons) {
  return walk_paths(
      caps, [](const KernelPath*) { return true; },
      [&](const KernelPath* k, std::vector<std::string>& own) {
        if (k->supports_kvcache == nullptr || k->forward_kvcache == nullptr) {
          own.push_back("implements no KV-cache attention");
          return false;
        }
        return k->supports_kvcache(p, caps, own);
      },
      reasons);
}

int32_t refuse(const std::vector<std::string>& reasons) {
  std::string text = "no kernel can run this request: ";
  for (size_t i = 0; i < reasons.size(); ++i) text += (i ? "; " : "") + reasons[i];
  return fail(FA_ERR_UNSUPPORTED, text);
}

// Copies `count` int32 values from device memory into `host` (resized); an unreadable pointer is the caller's error.
int32_t read_device_int32(const int32_t* device, int64_t count, const char* name, std::vector<int32_t>& host) {
  host.resize(static_cast<size_t>(count));
  if (count == 0) return FA_OK;
  gpuError_t err = gpuMemcpy(host.data(), device, host.size() * sizeof(int32_t), gpuMemcpyDeviceToHost);
  if (err == gpuSuccess) return FA_OK;
  gpuGetLastError();
  return fail(FA_ERR_INVALID_ARGUMENT, format("%s could not be read as %lld int32 values in device memory (%s)", name,
                                              static_cast<long long>(count), gpuGetErrorString(err)));
}

// Reads every fp8 descale factor the request uses from device memory and checks it (check_descale_values): finite,
// positive, normal. The view's reach, (batch - 1) batch_stride + (heads_kv - 1) head_stride + 1 floats, is read whole,
// so it is bounded first (strides are the caller's; a real descale tensor holds batch x heads_kv factors).
constexpr int64_t kMaxDescaleReach = int64_t{1} << 22;  // 16 MB of host copy
int32_t check_descales(const fa_attn_params& p) {
  for (const NamedDescale& x : named_descales(p)) {
    if (x.view.data == nullptr) continue;
    const int64_t reach = int64_t{p.batch - 1} * x.view.batch_stride + int64_t{p.heads_kv - 1} * x.view.head_stride + 1;
    if (reach > kMaxDescaleReach)
      return fail(FA_ERR_UNSUPPORTED, format("%s spans %lld floats with strides (%d, %d), more than the supported maximum %lld",
                                             x.name, static_cast<long long>(reach), x.view.batch_stride,
                                             x.view.head_stride, static_cast<long long>(kMaxDescaleReach)));
    std::vector<float> host(static_cast<size_t>(reach));
    if (gpuError_t err = gpuMemcpy(host.data(), x.view.data, host.size() * sizeof(float), gpuMemcpyDeviceToHost);
        err != gpuSuccess) {
      gpuGetLastError();
      return fail(FA_ERR_INVALID_ARGUMENT, format("%s could not be read as %lld floats in device memory (%s)", x.name,
                                                  static_cast<long long>(reach), gpuGetErrorString(err)));
    }
    const fa_descale copy{host.data(), x.view.batch_stride, x.view.head_stride};
    if (int32_t st = report_first(check_descale_values(p, x.name, copy)); st != FA_OK) return st;
  }
  return FA_OK;
}

// Reads cu_seqlens from device memory and checks them (the kernels trust them afterwards).
int32_t check_varlen(const fa_attn_params& p) {
  if (!is_varlen(p)) return FA_OK;
  if (p.batch > kMaxVarlenBatch)
    return fail(FA_ERR_INVALID_ARGUMENT, format("varlen batch %d exceeds the supported maximum %d", p.batch, kMaxVarlenBatch));
  std::vector<int32_t> host;
  const struct { const int32_t* dev; int32_t total, max_len; const char* name; } lists[] = {
      {p.cu_seqlens_q, p.total_q, p.seqlen_q, "cu_seqlens_q"}, {p.cu_seqlens_k, p.total_k, p.seqlen_k, "cu_seqlens_k"}};
  for (const auto& l : lists) {
    if (int32_t st = read_device_int32(l.dev, int64_t{p.batch} + 1, l.name, host); st != FA_OK) return st;
    if (int32_t st = report_first(check_cu_seqlens(host.data(), p.batch, l.total, l.max_len, l.name)); st != FA_OK) return st;
  }
  return FA_OK;
}

// Reads the KV-cache request's int32 arrays from device memory and checks their values (check_kvcache_values): the
// kernels trust every page, row and rotary position afterwards. The block table is copied whole, so its size is bounded
// first (the struct's checks bound batch and max_blocks separately, not their product).
int32_t check_kvcache_arrays(const fa_kvcache_params& p) {
  const int64_t table_entries = kvcache_paged(p) ? int64_t{p.batch} * p.max_blocks : 0;
  if (table_entries > kMaxVarlenBatch)
    return fail(FA_ERR_UNSUPPORTED, format("block_table has %lld entries (batch %d x max_blocks %d), more than the supported "
                                           "maximum %d",
                                           static_cast<long long>(table_entries), p.batch, p.max_blocks, kMaxVarlenBatch));
  std::vector<int32_t> seqlens, table, batch_idx, leftpad;
  const struct { const int32_t* dev; int64_t count; const char* name; std::vector<int32_t>& host; } arrays[] = {
      {p.cache_seqlens, p.batch, "cache_seqlens", seqlens}, {p.block_table, table_entries, "block_table", table},
      {p.cache_batch_idx, p.batch, "cache_batch_idx", batch_idx}, {p.cache_leftpad, p.batch, "cache_leftpad", leftpad}};
  for (const auto& a : arrays)
    if (a.dev != nullptr)
      if (int32_t st = read_device_int32(a.dev, a.count, a.name, a.host); st != FA_OK) return st;
  auto host = [](const int32_t* dev, const std::vector<int32_t>& copy) { return dev != nullptr ? copy.data() : nullptr; };
  return report_first(check_kvcache_values(p, host(p.cache_seqlens, seqlens), host(p.block_table, table),
                                           host(p.cache_batch_idx, batch_idx), host(p.cache_leftpad, leftpad)));
}

template <typename Params>
LaunchContext make_context(const Params& p, const DeviceCaps* caps) {
  return LaunchContext{static_cast<gpuStream_t>(p.stream), caps, Workspace{kernel_workspace}};
}

// Runs `direction` of `path` once (forward+backward = forward then backward).
int32_t run_path(const KernelPath* path, fa_attn_params& p, const LaunchContext& ctx, int32_t direction) {
  p.out_kernel = path->id;
  if (direction != FA_DIR_BACKWARD) {
    p.out_num_splits = 1;
    if (int32_t st = path->forward(p, ctx); st != FA_OK) return st;
  }
  if (direction != FA_DIR_FORWARD) return path->backward(p, ctx);
  return FA_OK;
}

// Validation, device, path selection: the common front of forward, backward and bench.
int32_t prepare(fa_attn_params* p, int32_t direction, DeviceCaps* caps, const KernelPath** path) {
  if (int32_t st = report_first(check_params(p, kGpuLimits, direction)); st != FA_OK) return st;
  if (int32_t st = current_caps(caps); st != FA_OK) return st;
  if (int32_t st = check_varlen(*p); st != FA_OK) return st;
  if (int32_t st = check_descales(*p); st != FA_OK) return st;
  std::vector<std::string> reasons;
  *path = select_path(*p, *caps, direction, reasons);
  return *path != nullptr ? FA_OK : refuse(reasons);
}

int32_t attention(fa_attn_params* p, int32_t direction) {
  DeviceCaps caps;
  const KernelPath* path = nullptr;
  if (int32_t st = prepare(p, direction, &caps, &path); st != FA_OK) return st;
  return run_path(path, *p, make_context(*p, &caps), direction);
}

// fa_forward_kvcache's front: the struct, the device, the path (from the struct alone: a request no path serves, such
// as fp8 caches, is refused with each path's reason before any device memory is read), then the int32 arrays read back
// from the device and the descale factors (read only where a path takes fp8 caches) — all before anything is written,
// so a refused request leaves the cache as it was.
int32_t prepare_kvcache(fa_kvcache_params* p, DeviceCaps* caps, const KernelPath** path) {
  if (int32_t st = report_first(check_kvcache_params(p, kGpuLimits)); st != FA_OK) return st;
  if (int32_t st = current_caps(caps); st != FA_OK) return st;
  std::vector<std::string> reasons;
  *path = select_kvcache_path(*p, *caps, reasons);
  if (*path == nullptr) return refuse(reasons);
  if (int32_t st = check_kvcache_arrays(*p); st != FA_OK) return st;
  return check_descales(kvcache_attention_params(*p));
}

// The validated request's work on p->stream: the shared preparation (append, rotary), then the path's attention.
// p->q points at the rotated queries while the kernels are queued and is restored before returning: the caller's
// struct changes only in its out_* fields.
int32_t run_kvcache(const KernelPath* path, fa_kvcache_params* p, const LaunchContext& ctx) {
  struct RestoreQ {
    fa_kvcache_params* p;
    fa_tensor q;
    ~RestoreQ() { p->q = q; }
  } restore{p, p->q};
  p->out_kernel = path->id;
  p->out_num_splits = 1;
  if (int32_t st = kvcache_prepare(*p, ctx); st != FA_OK) return st;
  return path->forward_kvcache(*p, ctx);
}

// fa_bench's loop: before every run the last-level cache is flushed (a write over twice its size, outside the timed
// region), then `run` is timed between two events on the request's stream.
template <typename Run>
int32_t timed_runs(const LaunchContext& ctx, const DeviceCaps& caps, int32_t warmup, int32_t iters, float* times_ms, Run&& run) {
  const size_t flush_bytes = std::max<size_t>(2 * caps.l2_bytes, 1 << 20);
  void* flush = workspace_slot(4, flush_bytes);
  if (flush == nullptr) return FA_ERR_OUT_OF_MEMORY;
  gpuEvent_t start, stop;
  if (gpuError_t err = gpuEventCreate(&start); err != gpuSuccess) return vendor_fail(err, "creating a timing event");
  if (gpuError_t err = gpuEventCreate(&stop); err != gpuSuccess) {
    gpuEventDestroy(start);
    return vendor_fail(err, "creating a timing event");
  }
  int32_t status = FA_OK;
  for (int32_t i = 0; i < warmup + iters && status == FA_OK; ++i) {
    gpuError_t err = gpuMemsetAsync(flush, i & 0xff, flush_bytes, ctx.stream);
    if (err == gpuSuccess) err = gpuEventRecord(start, ctx.stream);
    if (err != gpuSuccess) {
      status = vendor_fail(err, "flushing the cache before a timed run");
      break;
    }
    status = run();
    if (status != FA_OK) break;
    err = gpuEventRecord(stop, ctx.stream);
    if (err == gpuSuccess) err = gpuEventSynchronize(stop);
    float ms = 0.f;
    if (err == gpuSuccess) err = gpuEventElapsedTime(&ms, start, stop);
    if (err != gpuSuccess) status = vendor_fail(err, "timing a run");
    else if (i >= warmup) times_ms[i - warmup] = ms;
  }
  gpuEventDestroy(start);
  gpuEventDestroy(stop);
  return status;
}

std::string kernels_json() {
  std::vector<std::string> items;
  for (const KernelPath* k : all_paths()) {
    std::vector<std::string> dirs;
    if (k->forward) dirs.push_back("fwd");
    if (k->backward) dirs.push_back("bwd");
    if (k->forward_kvcache) dirs.push_back("kvcache");
    const std::string row_bytes = k->row_bytes_multiple > 0 ? format(",\"row_bytes_multiple\":%d", k->row_bytes_multiple) : "";
    items.push_back(format("{\"id\":%d,\"name\":%s,\"directions\":%s,\"dtypes\":%s,\"head_dims\":[%d],\"features\":%s%s}", k->id,
                           json_quote(k->name).c_str(), json_strings(dirs).c_str(), k->dtypes, k->max_head_dim, k->features,
                           row_bytes.c_str()));
  }
  return json_list(items);
}

}  // namespace
}  // namespace fa

using namespace fa;

extern "C" {

FA_API int32_t fa_abi_version(void) { return FA_ABI_VERSION; }

FA_API int32_t fa_params_layout(int64_t* out, int32_t capacity) { return params_layout(out, capacity); }

FA_API int32_t fa_kvcache_layout(int64_t* out, int32_t capacity) { return kvcache_layout(out, capacity); }

FA_API int32_t fa_forward_kvcache(fa_kvcache_params* p) {
  return guard([&]() -> int32_t {
    DeviceCaps caps;
    const KernelPath* path = nullptr;
    if (int32_t st = prepare_kvcache(p, &caps, &path); st != FA_OK) return st;
    return run_kvcache(path, p, make_context(*p, &caps));
  });
}

FA_API int32_t fa_last_error(char* buf, int64_t len) {
  const std::string& m = last_error_slot();
  if (buf != nullptr && len > 0) {
    const size_t n = std::min(m.size(), static_cast<size_t>(len - 1));
    std::memcpy(buf, m.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int32_t>(m.size());
}

FA_API int32_t fa_info(char* buf, int64_t len) {
  return guard([&]() -> int32_t {
    const std::string json = "{" + vendor_build_info_fragment() + format(",\"version\":\"0.1.0\",\"abi\":%d,\"kernels\":", FA_ABI_VERSION) +
                             kernels_json() + "}";
    return copy_out(json, buf, len);
  });
}

FA_API int32_t fa_device_count(int32_t* count) {
  return guard([&]() -> int32_t {
    if (count == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "count pointer is NULL");
    return vendor_device_count(count);
  });
}

FA_API int32_t fa_device_info(int32_t device, char* buf, int64_t len) {
  return guard([&]() -> int32_t {
    if (int32_t st = device_range_check(device); st != FA_OK) return st;
    std::string json;
    if (int32_t st = vendor_device_info_json(device, &json); st != FA_OK) return st;
    return copy_out(json, buf, len);
  });
}

FA_API int32_t fa_set_device(int32_t device) {
  return guard([&]() -> int32_t {
    if (int32_t st = device_range_check(device); st != FA_OK) return st;
    if (gpuError_t err = gpuSetDevice(device); err != gpuSuccess) return vendor_fail(err, "selecting the device");
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_malloc(void** out, uint64_t bytes) {
  return guard([&]() -> int32_t {
    if (out == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "output pointer is NULL");
    *out = nullptr;
    int32_t count = 0;
    if (int32_t st = vendor_device_count(&count); st != FA_OK) return st;
    return tracked_malloc(out, static_cast<size_t>(bytes), format("allocating %llu bytes", static_cast<unsigned long long>(bytes)).c_str());
  });
}

FA_API int32_t fa_free(void* ptr) {
  return guard([&]() -> int32_t {
    if (ptr == nullptr) return static_cast<int32_t>(FA_OK);
    if (!book().remove(ptr))
      return fail(FA_ERR_INVALID_ARGUMENT, "fa_free: the pointer was not allocated by fa_malloc or was already freed");
    if (gpuError_t err = gpuFree(ptr); err != gpuSuccess) return vendor_fail(err, "freeing device memory");
    return static_cast<int32_t>(FA_OK);
  });
}

namespace {
int32_t copy(void* dst, const void* src, uint64_t bytes, decltype(gpuMemcpyHostToDevice) kind, const char* what) {
  if (bytes == 0) return FA_OK;
  if (dst == nullptr || src == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, format("%s: a pointer is NULL", what));
  gpuError_t err = gpuMemcpy(dst, src, static_cast<size_t>(bytes), kind);
  if (err != gpuSuccess) return vendor_fail(err, what);
  return FA_OK;
}
}  // namespace

FA_API int32_t fa_memcpy_h2d(void* dst, const void* src, uint64_t bytes) {
  return guard([&]() -> int32_t { return copy(dst, src, bytes, gpuMemcpyHostToDevice, "copying host to device"); });
}
FA_API int32_t fa_memcpy_d2h(void* dst, const void* src, uint64_t bytes) {
  return guard([&]() -> int32_t { return copy(dst, src, bytes, gpuMemcpyDeviceToHost, "copying device to host"); });
}
FA_API int32_t fa_memcpy_d2d(void* dst, const void* src, uint64_t bytes) {
  return guard([&]() -> int32_t { return copy(dst, src, bytes, gpuMemcpyDeviceToDevice, "copying device to device"); });
}

FA_API int32_t fa_memset(void* dst, int32_t value, uint64_t bytes) {
  return guard([&]() -> int32_t {
    if (bytes == 0) return static_cast<int32_t>(FA_OK);
    if (dst == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "fa_memset: the pointer is NULL");
    if (gpuError_t err = gpuMemset(dst, value, static_cast<size_t>(bytes)); err != gpuSuccess) return vendor_fail(err, "setting device memory");
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_synchronize(void) {
  return guard([&]() -> int32_t {
    int32_t count = 0;
    if (int32_t st = vendor_device_count(&count); st != FA_OK) return st;
    if (gpuError_t err = gpuDeviceSynchronize(); err != gpuSuccess) return vendor_fail(err, "waiting for the device");
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_memory_stats(int64_t* out2) {
  return guard([&]() -> int32_t {
    if (out2 == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "output pointer is NULL");
    std::lock_guard<std::mutex> lock(book().mutex);
    out2[0] = book().current;
    out2[1] = book().peak;
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_reset_peak_memory(void) {
  return guard([&]() -> int32_t {
    release_workspaces();
    std::lock_guard<std::mutex> lock(book().mutex);
    book().peak = book().current;
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_forward(fa_attn_params* p) { return guard([&]() -> int32_t { return attention(p, FA_DIR_FORWARD); }); }

FA_API int32_t fa_backward(fa_attn_params* p) { return guard([&]() -> int32_t { return attention(p, FA_DIR_BACKWARD); }); }

FA_API int32_t fa_plan(const fa_attn_params* p, int32_t direction, char* buf, int64_t len) {
  return guard([&]() -> int32_t {
    std::vector<Problem> problems = check_params(p, kGpuLimits, direction);
    if (!problems.empty()) return copy_out(plan_refusal_json(problems), buf, len);
    DeviceCaps caps;
    if (current_caps(&caps) != FA_OK) return copy_out(plan_refusal_json({{FA_ERR_NO_DEVICE, last_error_slot()}}), buf, len);
    std::vector<std::string> reasons;
    const KernelPath* path = select_path(*p, caps, direction, reasons);
    if (path == nullptr) {
      std::vector<std::string> quoted;
      for (const auto& r : reasons) quoted.push_back(json_quote(r));
      return copy_out("{\"ok\":false,\"reasons\":" + json_list(quoted) + "}", buf, len);
    }
    const int32_t splits = direction != FA_DIR_BACKWARD && path->plan_num_splits ? path->plan_num_splits(*p, caps) : 1;
    std::vector<std::string> quoted;
    for (const auto& r : reasons) quoted.push_back(json_quote(r));
    return copy_out(format("{\"ok\":true,\"kernel\":{\"id\":%d,\"name\":%s},\"num_splits\":%d,\"rejected\":%s}", path->id,
                           json_quote(path->name).c_str(), splits, json_list(quoted).c_str()),
                    buf, len);
  });
}

FA_API int32_t fa_bench(fa_attn_params* p, int32_t direction, int32_t warmup, int32_t iters, float* times_ms) {
  return guard([&]() -> int32_t {
    if (int32_t st = check_bench_counts(warmup, iters, times_ms); st != FA_OK) return st;
    DeviceCaps caps;
    const KernelPath* path = nullptr;
    if (int32_t st = prepare(p, direction, &caps, &path); st != FA_OK) return st;
    const LaunchContext ctx = make_context(*p, &caps);
    return timed_runs(ctx, caps, warmup, iters, times_ms, [&] { return run_path(path, *p, ctx, direction); });
  });
}

FA_API int32_t fa_bench_kvcache(fa_kvcache_params* p, int32_t warmup, int32_t iters, float* times_ms) {
  return guard([&]() -> int32_t {
    if (int32_t st = check_bench_counts(warmup, iters, times_ms); st != FA_OK) return st;
    DeviceCaps caps;
    const KernelPath* path = nullptr;
    if (int32_t st = prepare_kvcache(p, &caps, &path); st != FA_OK) return st;
    const LaunchContext ctx = make_context(*p, &caps);
    return timed_runs(ctx, caps, warmup, iters, times_ms, [&] { return run_kvcache(path, p, ctx); });
  });
}

}  // extern "C"
