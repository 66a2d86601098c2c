// portable.hpp — entry points of the portable kernels (kernels/portable/*.cu), used by the registry in portable.cu.
#pragma once

#include "portable_common.cuh"

namespace fa {
namespace portable {

// Launchers: the request has passed check_params and the path's supports(). Return an fa_status.
int32_t forward(fa_attn_params& p, const LaunchContext& ctx);
int32_t backward(fa_attn_params& p, const LaunchContext& ctx);
// KV-cache attention (portable_kvcache.cu): the request has passed the glue's checks and kvcache_prepare.
bool supports_kvcache(const fa_kvcache_params& p, const DeviceCaps& caps, std::vector<std::string>& reasons);
int32_t forward_kvcache(fa_kvcache_params& p, const LaunchContext& ctx);

// Workspace slot of the backward's D = rowsum(dO * O) buffer (fp32, lse layout).
constexpr int kWorkspaceSlotDsum = 0;
// Workspace slot of the KV-cache attention's split-KV partials (fp32 LSE, then O).
constexpr int kWorkspaceSlotSplitPartials = 0;

// Whether a tensor allows 16-byte vector accesses (aligned base, strides multiples of 8 elements); a tensor that is
// not used (data NULL) does not matter. `varlen`: the batch stride is ignored.
bool allows_vec16(const fa_tensor& t, bool varlen);

// FA_OK after a launch, or the vendor's sentence for the launch error (bad configuration, no kernel image, ...).
int32_t check_launch(const char* what);

}  // namespace portable
}  // namespace fa
