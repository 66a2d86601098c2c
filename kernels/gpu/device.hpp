// device.hpp — what the shared GPU glue (kernels/gpu/api.cpp) needs from the vendor-specific side. Implemented once
// for CUDA (kernels/cuda/device_cuda.cu) and once for HIP (kernels/hip/device_hip.cpp); nothing else in the glue
// may call vendor-only APIs.
#pragma once

#include <string>

#include "paths.hpp"

namespace fa {

// Number of usable devices; on failure returns FA_ERR_NO_DEVICE with a sentence a user understands
// ("no NVIDIA driver found (libcuda.so.1 could not be loaded)", "CUDA driver 12.2 is older than the runtime 13.0
// this library was built with: update the driver to 580.65 or newer", "no AMD GPU / ROCm runtime found").
int32_t vendor_device_count(int32_t* count);

// Capabilities of `device` for the dispatcher (arch, SMs, shared memory, L2).
int32_t vendor_device_caps(int device, DeviceCaps* caps);

// fa_device_info's JSON object for `device` (see flashattn.h).
int32_t vendor_device_info_json(int device, std::string* json);

// The build half of fa_info: {"backend": ..., "built_with": {...}, "archs": [...], "compiler": ...} members, as a
// JSON fragment without braces, e.g. "\"backend\":\"cuda\",\"built_with\":{\"cuda\":\"13.0\"},...".
std::string vendor_build_info_fragment();

// Turns a runtime error into a status + sentence (out of memory, illegal address, no kernel image for this GPU,
// insufficient driver, ...). `what` names the operation ("launching the forward kernel").
int32_t vendor_fail(gpuError_t err, const char* what);

}  // namespace fa
