// device_cuda.cu — the CUDA side of device.hpp: device discovery with sentences a user can act on, device facts for
// the dispatcher and fa_device_info, the build description of fa_info, and CUDA errors turned into status codes.
// The runtime is linked statically (nvcc's default -cudart static); it loads libcuda.so.1 itself on first use.
#include <string>

#include "../gpu/device.hpp"
#include "cuda_archs.inc"

namespace fa {
namespace {

std::string version_text(int v) { return format("%d.%d", v / 1000, (v % 1000) / 10); }

// The driver's CUDA version, or 0 when no driver (libcuda.so.1) could be loaded.
int driver_cuda_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace

int32_t vendor_device_count(int32_t* count) {
  *count = 0;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess) {
    if (n == 0) return fail(FA_ERR_NO_DEVICE, "the NVIDIA driver reports no CUDA device");
    *count = n;
    return FA_OK;
  }
  const int driver = driver_cuda_version();
  switch (err) {
    case cudaErrorInsufficientDriver:
      if (driver == 0)
        return fail(FA_ERR_NO_DEVICE, "no NVIDIA driver found (libcuda.so.1 could not be loaded): install the NVIDIA driver, "
                                      "or use the cpu backend");
      return fail(FA_ERR_NO_DEVICE,
                  format("the NVIDIA driver supports CUDA %s, older than the CUDA runtime %s this library was built with: "
                         "update the driver (CUDA 13.0 needs driver 580 or newer)",
                         version_text(driver).c_str(), version_text(CUDART_VERSION).c_str()));
    case cudaErrorStubLibrary:
      return fail(FA_ERR_NO_DEVICE, "libcuda.so.1 found is the CUDA toolkit's stub library, not a real driver: remove the "
                                    "stubs directory from LD_LIBRARY_PATH or install the NVIDIA driver");
    case cudaErrorNoDevice:
      return fail(FA_ERR_NO_DEVICE, "the NVIDIA driver is installed but no CUDA device is visible (check CUDA_VISIBLE_DEVICES "
                                    "and that the GPU is passed into this container)");
    case cudaErrorSystemDriverMismatch:
      return fail(FA_ERR_NO_DEVICE, "the NVIDIA kernel module and the user-space driver (libcuda.so.1) have different "
                                    "versions: reboot or reinstall the driver");
    case cudaErrorCompatNotSupportedOnDevice:
      return fail(FA_ERR_NO_DEVICE, "the CUDA forward-compatibility driver in use does not support this GPU: remove the "
                                    "compat libraries from LD_LIBRARY_PATH or update the driver");
    default:
      return fail(FA_ERR_NO_DEVICE, format("CUDA cannot list devices: %s (%s)", cudaGetErrorString(err), cudaGetErrorName(err)));
  }
}

int32_t vendor_device_caps(int device, DeviceCaps* caps) {
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return vendor_fail(err, "reading the device properties");
  caps->device = device;
  caps->arch = prop.major * 10 + prop.minor;
  caps->multiprocessors = prop.multiProcessorCount;
  caps->smem_per_block_optin = prop.sharedMemPerBlockOptin;
  caps->l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  caps->is_hip = false;
  return FA_OK;
}

int32_t vendor_device_info_json(int device, std::string* json) {
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return vendor_fail(err, "reading the device properties");
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  *json = format("{\"index\":%d,\"name\":%s,\"arch\":\"sm_%d%d\",\"multiprocessors\":%d,\"memory_bytes\":%zu,"
                 "\"shared_memory_optin_bytes\":%zu,\"l2_bytes\":%d,\"driver_version\":\"%s\",\"runtime_version\":\"%s\","
                 "\"pci_bus_id\":\"%04x:%02x:%02x\"}",
                 device, json_quote(prop.name).c_str(), prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem,
                 prop.sharedMemPerBlockOptin, prop.l2CacheSize, version_text(driver_cuda_version()).c_str(),
                 version_text(runtime).c_str(), prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
  return FA_OK;
}

std::string vendor_build_info_fragment() {
  // FA_CUDA_ARCHS comes from kernels/cuda/target.ts's -gencode list.
  return format("\"backend\":\"cuda\",\"compiler\":\"nvcc %d.%d\",\"built_with\":{\"cuda\":\"%d.%d\"},\"archs\":[%s]",
                __CUDACC_VER_MAJOR__, __CUDACC_VER_MINOR__, CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10,
                FA_CUDA_ARCHS);
}

int32_t vendor_fail(gpuError_t err, const char* what) {
  const std::string detail = format("%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
  switch (err) {
    case cudaErrorMemoryAllocation:
      return fail(FA_ERR_OUT_OF_MEMORY, format("out of GPU memory while %s: free memory or use smaller inputs", what));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary: {
      int32_t count = 0;
      vendor_device_count(&count);  // sets the precise sentence
      return fail(FA_ERR_NO_DEVICE, format("while %s: %s", what, last_error_slot().c_str()));
    }
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return fail(FA_ERR_UNSUPPORTED, format("while %s: %s: this library has no code for this GPU's architecture; build one "
                                             "from source with this GPU's sm_XY (sm_75 or newer) added to kernels/cuda/target.ts",
                                             what, detail.c_str()));
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
      // Sticky errors: the CUDA context is lost and every later CUDA call in this process fails too.
      return fail(FA_ERR_DEVICE, format("the GPU failed while %s: %s; the CUDA context is now unusable and the process must "
                                        "be restarted",
                                        what, detail.c_str()));
    default:
      return fail(FA_ERR_DEVICE, format("CUDA failed while %s: %s", what, detail.c_str()));
  }
}

}  // namespace fa
