// fa_combine.hpp — fa_merge_partial and fa_convert (context parallelism, lib/ring.ts), shared by every backend: the
// argument checks (host) and the log-sum-exp merge of one row (host and device), written once.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "fa_common.hpp"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FA_COMBINE_FN __host__ __device__ inline
#else
#define FA_COMBINE_FN inline
#endif

namespace fa {

// The weights that merge a running row (lse a) with a partial one (lse b): out = acc * keep + part * take, and the
// merged lse. Both -inf (no key seen by either): nothing changes.
struct MergeWeights {
  float keep, take, lse;
};

FA_COMBINE_FN MergeWeights merge_weights(float a, float b) {
  const float m = a > b ? a : b;
  if (m == -INFINITY) return MergeWeights{1.f, 0.f, a};
  const float ea = expf(a - m), eb = expf(b - m), sum = ea + eb;
  return MergeWeights{ea / sum, eb / sum, m + logf(sum)};
}

// The largest tensor either call takes (2^40 elements): sizes from a caller can never drive a loop past memory.
constexpr int64_t kMaxCombineElements = int64_t{1} << 40;

inline bool combine_dtype(int32_t dtype) { return dtype == FA_DTYPE_F32 || dtype == FA_DTYPE_F16 || dtype == FA_DTYPE_BF16; }

// fa_merge_partial's arguments; `elements` receives batch * rows * heads * head_dim.
inline int32_t check_merge(int32_t dtype, int32_t batch, int32_t rows, int32_t heads, int32_t head_dim, const void* acc,
                           const void* acc_lse, const void* part, const void* part_lse, int64_t* elements) {
  if (!combine_dtype(dtype)) return fail(FA_ERR_INVALID_ARGUMENT, format("fa_merge_partial: dtype %d is not fp32, fp16 or bf16", dtype));
  if (batch < 0 || rows < 0 || heads < 0 || head_dim < 0)
    return fail(FA_ERR_INVALID_ARGUMENT, format("fa_merge_partial: a size is negative (batch %d, rows %d, heads %d, head_dim %d)",
                                                batch, rows, heads, head_dim));
  int64_t n = 1;  // multiplied one factor at a time, each product checked (four int32 factors overflow int64)
  for (int32_t factor : {batch, rows, heads, head_dim}) {
    n *= factor;
    if (n > kMaxCombineElements) return fail(FA_ERR_INVALID_ARGUMENT, "fa_merge_partial: the tensors are larger than 2^40 elements");
  }
  if (n > 0 && (acc == nullptr || acc_lse == nullptr || part == nullptr || part_lse == nullptr))
    return fail(FA_ERR_INVALID_ARGUMENT, "fa_merge_partial: a pointer is NULL");
  *elements = n;
  return FA_OK;
}

inline int32_t check_convert(int32_t dst_dtype, const void* dst, int32_t src_dtype, const void* src, uint64_t count) {
  if (!combine_dtype(dst_dtype) || !combine_dtype(src_dtype))
    return fail(FA_ERR_INVALID_ARGUMENT, format("fa_convert: dtypes %d and %d must be fp32, fp16 or bf16", dst_dtype, src_dtype));
  if (count > static_cast<uint64_t>(kMaxCombineElements)) return fail(FA_ERR_INVALID_ARGUMENT, "fa_convert: count is larger than 2^40");
  if (count > 0 && (dst == nullptr || src == nullptr)) return fail(FA_ERR_INVALID_ARGUMENT, "fa_convert: a pointer is NULL");
  return FA_OK;
}

}  // namespace fa
