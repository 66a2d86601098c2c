// combine.cu — fa_merge_partial and fa_convert on the GPU libraries (context parallelism, lib/ring.ts): the checks and
// the merge formula of fa_combine.hpp, one thread per row (merge) or element (convert), queued on the default stream of
// the current device. Builds with nvcc and hipcc (gpu* names only).
#include "../common/fa_combine.hpp"
#include <algorithm>

#include "device.hpp"

namespace fa {
namespace {

template <typename T>
__global__ void merge_rows(int32_t batch, int32_t rows, int32_t heads, int32_t head_dim, float* acc, float* acc_lse,
                           const T* part, const float* part_lse) {
  const int64_t row_count = int64_t{batch} * heads * rows;
  // row: (b, h, i) in the LSE's order
  for (int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; row < row_count; row += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = row % rows, bh = row / rows, h = bh % heads, b = bh / heads;
    const MergeWeights w = merge_weights(acc_lse[row], part_lse[row]);
    acc_lse[row] = w.lse;
    const int64_t base = ((b * rows + i) * heads + h) * head_dim;
    for (int32_t d = 0; d < head_dim; ++d) acc[base + d] = acc[base + d] * w.keep + to_float(part[base + d]) * w.take;
  }
}

template <typename D, typename S>
__global__ void convert_elements(D* dst, const S* src, int64_t count, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = from_float<D>((accumulate ? to_float(dst[i]) : 0.f) + to_float(src[i]));
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // the loops stride over the rest

dim3 grid_for(int64_t items) { return dim3(static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, kMaxBlocks))); }

template <typename F>
int32_t launched(F&& launch, const char* what) {
  launch();
  if (gpuError_t err = gpuGetLastError(); err != gpuSuccess) return vendor_fail(err, what);
  return FA_OK;
}

template <typename S>
int32_t convert_from(int32_t dst_dtype, void* dst, const S* src, int64_t n, bool accumulate) {
  const dim3 grid = grid_for(n);
  return launched([&] {
    if (dst_dtype == FA_DTYPE_F32) convert_elements<<<grid, kThreads>>>(static_cast<float*>(dst), src, n, accumulate);
    else if (dst_dtype == FA_DTYPE_F16) convert_elements<<<grid, kThreads>>>(static_cast<half_t*>(dst), src, n, accumulate);
    else convert_elements<<<grid, kThreads>>>(static_cast<bf16_t*>(dst), src, n, accumulate);
  }, "launching the conversion kernel");
}

}  // namespace
}  // namespace fa

using namespace fa;

extern "C" {

FA_API int32_t fa_merge_partial(int32_t dtype, int32_t batch, int32_t rows, int32_t heads, int32_t head_dim, float* acc,
                                float* acc_lse, const void* part, const float* part_lse) {
  return guard([&]() -> int32_t {
    int64_t n = 0;
    if (int32_t st = check_merge(dtype, batch, rows, heads, head_dim, acc, acc_lse, part, part_lse, &n)) return st;
    if (n == 0) return FA_OK;
    const dim3 grid = grid_for(int64_t{batch} * heads * rows);
    return launched([&] {
      if (dtype == FA_DTYPE_F32) merge_rows<<<grid, kThreads>>>(batch, rows, heads, head_dim, acc, acc_lse, static_cast<const float*>(part), part_lse);
      else if (dtype == FA_DTYPE_F16) merge_rows<<<grid, kThreads>>>(batch, rows, heads, head_dim, acc, acc_lse, static_cast<const half_t*>(part), part_lse);
      else merge_rows<<<grid, kThreads>>>(batch, rows, heads, head_dim, acc, acc_lse, static_cast<const bf16_t*>(part), part_lse);
    }, "launching the merge kernel");
  });
}

FA_API int32_t fa_convert(int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src, uint64_t count, int32_t accumulate) {
  return guard([&]() -> int32_t {
    if (int32_t st = check_convert(dst_dtype, dst, src_dtype, src, count)) return st;
    const int64_t n = static_cast<int64_t>(count);
    if (n == 0) return FA_OK;
    if (src_dtype == FA_DTYPE_F32) return convert_from(dst_dtype, dst, static_cast<const float*>(src), n, accumulate != 0);
    if (src_dtype == FA_DTYPE_F16) return convert_from(dst_dtype, dst, static_cast<const half_t*>(src), n, accumulate != 0);
    return convert_from(dst_dtype, dst, static_cast<const bf16_t*>(src), n, accumulate != 0);
  });
}

}  // extern "C"
