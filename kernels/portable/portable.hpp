// portable.hpp — entry points of the portable kernels (kernels/portable/*.cu), used by the registry in portable.cu.
#pragma once

#include "portable_common.cuh"

namespace fa {
namespace portable {

// Launchers: the request has passed check_params and the path's supports(). Return an fa_status.
int32_t forward(fa_attn_params& p, const LaunchContext& ctx);
int32_t backward(fa_attn_params& p, const LaunchContext& ctx);

// Workspace slot of the backward's D = rowsum(dO * O) buffer (fp32, lse layout).
constexpr int kWorkspaceSlotDsum = 0;

// FA_OK after a launch, or the vendor's sentence for the launch error (bad configuration, no kernel image, ...).
int32_t check_launch(const char* what);

}  // namespace portable
}  // namespace fa
