// gpu_compat.hpp — the small portability layer that lets one kernel source build with nvcc (CUDA) and hipcc (HIP).
// Runtime calls are spelled gpu*; element types are fa::half_t / fa::bf16_t with to_float/from_float helpers.
#pragma once

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#define FA_GPU_HIP 1
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include <hip/hip_bfloat16.h>
using gpuError_t = hipError_t;
using gpuStream_t = hipStream_t;
using gpuEvent_t = hipEvent_t;
#define gpuSuccess hipSuccess
#define gpuGetErrorString hipGetErrorString
#define gpuGetErrorName hipGetErrorName
#define gpuGetLastError hipGetLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuSetDevice hipSetDevice
#define gpuGetDevice hipGetDevice
#define gpuDeviceGetAttribute hipDeviceGetAttribute
#define gpuDriverGetVersion hipDriverGetVersion
#define gpuRuntimeGetVersion hipRuntimeGetVersion
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMemcpy hipMemcpy
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemset hipMemset
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuEventCreate hipEventCreate
#define gpuEventDestroy hipEventDestroy
#define gpuEventRecord hipEventRecord
#define gpuEventSynchronize hipEventSynchronize
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuFuncSetAttribute(f, a, v) hipFuncSetAttribute(reinterpret_cast<const void*>(f), a, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define gpuErrorMemoryAllocation hipErrorOutOfMemory
#define gpuErrorNoDevice hipErrorNoDevice
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuErrorNoKernelImageForDevice hipErrorNoBinaryForGpu
namespace fa {
using half_t = __half;
using bf16_t = hip_bfloat16;
__host__ __device__ inline float to_float(half_t x) { return __half2float(x); }
__host__ __device__ inline float to_float(bf16_t x) { return static_cast<float>(x); }
__host__ __device__ inline float to_float(float x) { return x; }
template <typename T> __host__ __device__ inline T from_float(float x);
template <> __host__ __device__ inline half_t from_float<half_t>(float x) { return __float2half(x); }
template <> __host__ __device__ inline bf16_t from_float<bf16_t>(float x) { return bf16_t(x); }
template <> __host__ __device__ inline float from_float<float>(float x) { return x; }
}  // namespace fa
#else
#define FA_GPU_CUDA 1
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
using gpuError_t = cudaError_t;
using gpuStream_t = cudaStream_t;
using gpuEvent_t = cudaEvent_t;
#define gpuSuccess cudaSuccess
#define gpuGetErrorString cudaGetErrorString
#define gpuGetErrorName cudaGetErrorName
#define gpuGetLastError cudaGetLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuSetDevice cudaSetDevice
#define gpuGetDevice cudaGetDevice
#define gpuDeviceGetAttribute cudaDeviceGetAttribute
#define gpuDriverGetVersion cudaDriverGetVersion
#define gpuRuntimeGetVersion cudaRuntimeGetVersion
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMemcpy cudaMemcpy
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemset cudaMemset
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuEventCreate cudaEventCreate
#define gpuEventDestroy cudaEventDestroy
#define gpuEventRecord cudaEventRecord
#define gpuEventSynchronize cudaEventSynchronize
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuFuncSetAttribute(f, a, v) cudaFuncSetAttribute(f, a, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define gpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define gpuErrorNoDevice cudaErrorNoDevice
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuErrorNoKernelImageForDevice cudaErrorNoKernelImageForDevice
namespace fa {
using half_t = __half;
using bf16_t = __nv_bfloat16;
__host__ __device__ inline float to_float(half_t x) { return __half2float(x); }
__host__ __device__ inline float to_float(bf16_t x) { return __bfloat162float(x); }
__host__ __device__ inline float to_float(float x) { return x; }
template <typename T> __host__ __device__ inline T from_float(float x);
template <> __host__ __device__ inline half_t from_float<half_t>(float x) { return __float2half_rn(x); }
template <> __host__ __device__ inline bf16_t from_float<bf16_t>(float x) { return __float2bfloat16_rn(x); }
template <> __host__ __device__ inline float from_float<float>(float x) { return x; }
}  // namespace fa
#endif

namespace fa {
// griddepcontrol (sm_90): a programmatic dependent launch may start before the grid it follows has finished;
// wait_for_previous_grid marks where a grid needs that grid's writes, allow_next_grid lets the next grid start early.
// Both are no-ops on an ordinary launch, on older GPUs and under HIP.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
}  // namespace fa
