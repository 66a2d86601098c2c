// paths.hpp — the contract between the GPU runtime glue (kernels/gpu/api.cpp, shared by the CUDA and HIP builds)
// and the kernels. Each kernel family registers one or more KernelPath entries; the dispatcher walks them in
// priority order, asks each whether it supports the (validated) request on this device, records the reasons of
// every path it rejects (fa_plan and doctor show them), and launches the first that accepts.
#pragma once

#include <string>
#include <vector>

#include "../common/fa_kvcache.hpp"
#include "gpu_compat.hpp"

namespace fa {

// What the dispatcher knows about the current device.
struct DeviceCaps {
  int device;
  int arch;                 // CUDA: 10*major + minor (80, 86, 89, 90, 120); HIP: gfx number as hex digits, e.g. 0x90a
  int multiprocessors;
  size_t smem_per_block_optin;
  size_t l2_bytes;
  bool is_hip;
};

// Library-managed device scratch memory (split-KV partials, fp32 dQ accumulators, naive scores). Counted in
// fa_memory_stats. Grows on demand; freed when the library is unloaded.
struct Workspace {
  // Returns a device pointer of at least `bytes` bytes for slot `slot` (0..3), or nullptr with the last error set.
  void* (*get)(int slot, size_t bytes);
};

struct LaunchContext {
  gpuStream_t stream;
  const DeviceCaps* caps;
  Workspace workspace;
};

struct KernelPath {
  int id;                 // stable id reported in out_kernel and fa_info
  const char* name;       // e.g. "cuda-mma-sm80-fwd", "portable-fwd"
  const char* features;   // JSON array text, e.g. "[\"causal\",\"window\",\"softcap\",\"alibi\",\"gqa\",\"varlen\",\"lse\"]"
  const char* dtypes;     // JSON array text, e.g. "[\"fp16\",\"bf16\"]"
  int max_head_dim;
  // Appends the reasons it cannot serve this validated request to `reasons`; returns true when it can.
  bool (*supports)(const fa_attn_params& p, const DeviceCaps& caps, int32_t direction, std::vector<std::string>& reasons);
  // Launch on ctx.stream. The request has passed check_params and supports(); returns an fa_status (set the last
  // error through fa::fail on failure). Forward fills p.out_num_splits. Either pointer may be null when the path
  // implements only one direction.
  int32_t (*forward)(fa_attn_params& p, const LaunchContext& ctx);
  int32_t (*backward)(fa_attn_params& p, const LaunchContext& ctx);
  // Optional (null = 1): the split-KV count forward would choose, for fa_plan's "num_splits". Never reads device
  // memory. Last member, so registries that list only the members above still compile.
  int32_t (*plan_num_splits)(const fa_attn_params& p, const DeviceCaps& caps);
  // Optional (both null = no KV-cache attention): fa_forward_kvcache. The glue has validated the request (struct and
  // the int32 arrays), written k_new / v_new into the cache and, with rotary, pointed p.q at the rotated queries
  // (kvcache_prepare); the path only attends. forward_kvcache fills p.out_num_splits. FLASHATTN_KERNEL forces KV-cache
  // requests by the same names.
  bool (*supports_kvcache)(const fa_kvcache_params& p, const DeviceCaps& caps, std::vector<std::string>& reasons);
  int32_t (*forward_kvcache)(fa_kvcache_params& p, const LaunchContext& ctx);
  // Optional (0 = any): the path copies q / k / v rows in chunks of this many bytes, so head_dim x element size must
  // be a multiple of it (fp8 rows on the tensor-core paths: head_dim % 16). fa_info reports it, so a caller deciding
  // from fa_info alone (KV-cache requests have no fa_plan) does not pick a path that refuses the request.
  int row_bytes_multiple = 0;
};

// Workspace slot of the rotated queries (kvcache_prepare); attention paths use slots 0..2.
constexpr int kWorkspaceSlotRotatedQ = 3;

// The KV-cache step every path shares (kernels/portable/portable_kvcache.cu, both builds): appends k_new (rotated when
// rotary_dim > 0) and v_new into the cache at tokens cache_seqlens[b].., in place, and with rotary writes the rotated
// queries, contiguous (batch, seqlen_q, heads_q, head_dim), into workspace slot kWorkspaceSlotRotatedQ and points
// p.q at them. Queued on ctx.stream before the attention.
int32_t kvcache_prepare(fa_kvcache_params& p, const LaunchContext& ctx);

// Registries each kernel family defines (in its own translation unit). The dispatcher concatenates them in this
// order: tensor-core paths first, then the portable fallback.
const std::vector<KernelPath>& cuda_tensor_core_paths();  // kernels/cuda/ (CUDA build only)
const std::vector<KernelPath>& hip_matrix_core_paths();   // kernels/hip/  (HIP build only)
const std::vector<KernelPath>& portable_paths();          // kernels/portable/ (both builds)
const std::vector<KernelPath>& naive_paths();             // the materialised-scores baseline (both builds)

}  // namespace fa
