// Status codes of the system libraries the doctor calls, by number (cuda.h CUresult, nvml.h nvmlReturn_t,
// hip_runtime_api.h hipError_t). Probes store the number and the name; rules give advice by name. We never read
// the libraries' own error strings: they come back as C string pointers, which we do not dereference.

export const cuResultNames: Record<number, string> = {
  0: "CUDA_SUCCESS",
  1: "CUDA_ERROR_INVALID_VALUE",
  2: "CUDA_ERROR_OUT_OF_MEMORY",
  3: "CUDA_ERROR_NOT_INITIALIZED",
  4: "CUDA_ERROR_DEINITIALIZED",
  34: "CUDA_ERROR_STUB_LIBRARY",
  35: "CUDA_ERROR_INSUFFICIENT_DRIVER",
  36: "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER",
  46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
  100: "CUDA_ERROR_NO_DEVICE",
  101: "CUDA_ERROR_INVALID_DEVICE",
  209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
  221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
  222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
  304: "CUDA_ERROR_OPERATING_SYSTEM",
  801: "CUDA_ERROR_NOT_SUPPORTED",
  802: "CUDA_ERROR_SYSTEM_NOT_READY",
  803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
  804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
  999: "CUDA_ERROR_UNKNOWN",
};

export const nvmlReturnNames: Record<number, string> = {
  0: "NVML_SUCCESS",
  1: "NVML_ERROR_UNINITIALIZED",
  2: "NVML_ERROR_INVALID_ARGUMENT",
  3: "NVML_ERROR_NOT_SUPPORTED",
  4: "NVML_ERROR_NO_PERMISSION",
  6: "NVML_ERROR_NOT_FOUND",
  7: "NVML_ERROR_INSUFFICIENT_SIZE",
  9: "NVML_ERROR_DRIVER_NOT_LOADED",
  12: "NVML_ERROR_LIBRARY_NOT_FOUND",
  13: "NVML_ERROR_FUNCTION_NOT_FOUND",
  15: "NVML_ERROR_GPU_IS_LOST",
  18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
  999: "NVML_ERROR_UNKNOWN",
};

export const hipErrorNames: Record<number, string> = {
  0: "hipSuccess",
  3: "hipErrorNotInitialized",
  35: "hipErrorInsufficientDriver",
  100: "hipErrorNoDevice",
  101: "hipErrorInvalidDevice",
  209: "hipErrorNoBinaryForGpu",
  999: "hipErrorUnknown",
};

export const codeName = (table: Record<number, string>, code: number) => table[code] ?? `code ${code}`;
