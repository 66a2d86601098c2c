// device_hip.cpp — the HIP side of device.hpp: AMD device discovery with sentences a user can act on, device facts for
// the dispatcher and fa_device_info, the build description of fa_info, and HIP errors turned into status codes.
//
// The library links libamdhip64.so.5 (ROCm 5.x) dynamically. Where that file is missing, dlopen of
// libflashattn_hip.so itself fails with "libamdhip64.so.5: cannot open shared object file" — a load error, never a
// crash — and doctor reports it as "ROCm 5.x HIP runtime not installed". Where it is present but there is no AMD
// GPU (or no /dev/kfd), the library loads and fa_device_count answers FA_ERR_NO_DEVICE with the reason.
#include <hip/hip_version.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../gpu/device.hpp"

namespace fa {
namespace {

std::string hip_version_text(int v) {  // HIP_VERSION encoding: major * 10000000 + minor * 100000 + patch
  return format("%d.%d.%d", v / 10000000, (v / 100000) % 100, v % 100000);
}

// The base target of a gcnArchName such as "gfx90a:sramecc+:xnack-" ("gfx90a").
std::string base_arch(const char* gcn_arch_name) {
  std::string name(gcn_arch_name);
  return name.substr(0, name.find(':'));
}

// "gfx90a" -> 0x90a, "gfx1100" -> 0x1100 (DeviceCaps::arch); 0 when the name is not gfx + hex digits.
int arch_number(const std::string& arch) {
  if (arch.compare(0, 3, "gfx") != 0 || arch.size() == 3) return 0;
  char* end = nullptr;
  const long n = std::strtol(arch.c_str() + 3, &end, 16);
  return *end == '\0' ? static_cast<int>(n) : 0;
}

// "hipErrorNoDevice" or "hipErrorX: description" (HIP 5.2's hipGetErrorString returns the name: say it once).
std::string error_text(hipError_t err) {
  const std::string name = hipGetErrorName(err), text = hipGetErrorString(err);
  return text == name ? name : name + ": " + text;
}

// Why the HIP runtime sees no device, from what the system shows: the amdgpu kernel driver exposes /dev/kfd.
std::string no_device_reason(hipError_t err) {
  const std::string detail = error_text(err);
  if (access("/dev/kfd", F_OK) != 0)
    return format("no AMD GPU / ROCm runtime found (/dev/kfd does not exist: the amdgpu kernel driver is not loaded or the "
                  "GPU is not passed into this container; HIP says %s)",
                  detail.c_str());
  if (access("/dev/kfd", R_OK | W_OK) != 0)
    return format("no AMD GPU / ROCm runtime found (/dev/kfd exists but this user cannot open it: add the user to the "
                  "'render' and 'video' groups; HIP says %s)",
                  detail.c_str());
  return format("no AMD GPU / ROCm runtime found (/dev/kfd is present but HIP %d.%d lists no usable GPU: check "
                "HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES and that this ROCm supports the GPU; HIP says %s)",
                HIP_VERSION_MAJOR, HIP_VERSION_MINOR, detail.c_str());
}

}  // namespace

int32_t vendor_device_count(int32_t* count) {
  *count = 0;
  int n = 0;
  const hipError_t err = hipGetDeviceCount(&n);
  if (err == hipSuccess && n > 0) {
    *count = n;
    return FA_OK;
  }
  if (err == hipErrorInsufficientDriver)
    return fail(FA_ERR_NO_DEVICE, format("no AMD GPU / ROCm runtime found (the amdgpu kernel driver is too old for the HIP %d.%d "
                                         "runtime this library was built with: update the driver or ROCm)",
                                         HIP_VERSION_MAJOR, HIP_VERSION_MINOR));
  return fail(FA_ERR_NO_DEVICE, no_device_reason(err == hipSuccess ? hipErrorNoDevice : err));
}

int32_t vendor_device_caps(int device, DeviceCaps* caps) {
  hipDeviceProp_t prop;
  const hipError_t err = hipGetDeviceProperties(&prop, device);
  if (err != hipSuccess) return vendor_fail(err, "reading the device properties");
  caps->device = device;
  caps->arch = arch_number(base_arch(prop.gcnArchName));
  caps->multiprocessors = prop.multiProcessorCount;
  // HIP has no opt-in above the per-block limit: a block gets sharedMemPerBlock (64 KiB LDS on CDNA and RDNA).
  caps->smem_per_block_optin = prop.sharedMemPerBlock;
  caps->l2_bytes = prop.l2CacheSize > 0 ? static_cast<size_t>(prop.l2CacheSize) : 0;
  caps->is_hip = true;
  return FA_OK;
}

int32_t vendor_device_info_json(int device, std::string* json) {
  hipDeviceProp_t prop;
  const hipError_t err = hipGetDeviceProperties(&prop, device);
  if (err != hipSuccess) return vendor_fail(err, "reading the device properties");
  int runtime = 0, driver = 0;
  if (hipRuntimeGetVersion(&runtime) != hipSuccess) runtime = 0;
  if (hipDriverGetVersion(&driver) != hipSuccess) driver = 0;
  *json = format("{\"index\":%d,\"name\":%s,\"arch\":%s,\"gcn_arch_name\":%s,\"multiprocessors\":%d,\"warp_size\":%d,"
                 "\"memory_bytes\":%zu,\"shared_memory_optin_bytes\":%zu,\"l2_bytes\":%d,\"driver_version\":\"%d\","
                 "\"runtime_version\":\"%s\",\"pci_bus_id\":\"%04x:%02x:%02x\"}",
                 device, json_quote(prop.name).c_str(), json_quote(base_arch(prop.gcnArchName)).c_str(),
                 json_quote(prop.gcnArchName).c_str(), prop.multiProcessorCount, prop.warpSize, prop.totalGlobalMem,
                 prop.sharedMemPerBlock, prop.l2CacheSize, driver, hip_version_text(runtime).c_str(), prop.pciDomainID,
                 prop.pciBusID, prop.pciDeviceID);
  return FA_OK;
}

// FA_HIP_ARCHS is set by kernels/hip/target.ts to the --offload-arch list it compiles, as bare tokens
// (-DFA_HIP_ARCHS=gfx90a,gfx942): hipcc passes its arguments through a shell, which would strip quotes.
#define FA_STRINGIFY_LIST(...) #__VA_ARGS__
#define FA_STRINGIFY(...) FA_STRINGIFY_LIST(__VA_ARGS__)

std::string vendor_build_info_fragment() {
  std::vector<std::string> archs;
  const std::string list = FA_STRINGIFY(FA_HIP_ARCHS);  // target.ts checked each is gfx + hex digits
  size_t start = 0;
  for (size_t comma; (comma = list.find(',', start)) != std::string::npos; start = comma + 1)
    archs.push_back(list.substr(start, comma - start));
  archs.push_back(list.substr(start));
  return format("\"backend\":\"hip\",\"compiler\":\"hipcc (clang %d.%d) HIP %d.%d\",\"built_with\":{\"hip\":\"%d.%d\"},"
                "\"archs\":%s",
                __clang_major__, __clang_minor__, HIP_VERSION_MAJOR, HIP_VERSION_MINOR, HIP_VERSION_MAJOR, HIP_VERSION_MINOR,
                json_strings(archs).c_str());
}

int32_t vendor_fail(gpuError_t err, const char* what) {
  const std::string detail = error_text(err);
  switch (err) {
    case hipErrorOutOfMemory:
      return fail(FA_ERR_OUT_OF_MEMORY, format("out of GPU memory while %s: free memory or use smaller inputs", what));
    case hipErrorNoDevice:
    case hipErrorInsufficientDriver: {
      int32_t count = 0;
      vendor_device_count(&count);  // sets the precise sentence
      return fail(FA_ERR_NO_DEVICE, format("while %s: %s", what, last_error_slot().c_str()));
    }
    case hipErrorNoBinaryForGpu:
    case hipErrorInvalidDeviceFunction:
      return fail(FA_ERR_UNSUPPORTED, format("while %s: %s: this library has no code for this GPU's architecture; build one "
                                             "from source with FLASHATTN_HIP_ARCHS naming this GPU's gfx target (bun kernels/build.ts hip)",
                                             what, detail.c_str()));
    case hipErrorIllegalAddress:
    case hipErrorLaunchFailure:
    case hipErrorAssert:
      // Sticky errors: the HIP context is lost and every later HIP call in this process fails too.
      return fail(FA_ERR_DEVICE, format("the GPU failed while %s: %s; the HIP context is now unusable and the process must "
                                        "be restarted",
                                        what, detail.c_str()));
    default:
      return fail(FA_ERR_DEVICE, format("HIP failed while %s: %s", what, detail.c_str()));
  }
}

}  // namespace fa
