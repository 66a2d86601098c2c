// combine.cpp — fa_merge_partial and fa_convert on the CPU backend (context parallelism, lib/ring.ts): the checks and
// the merge formula of fa_combine.hpp, every range checked to lie inside one fa_malloc block.
#include "../common/fa_combine.hpp"
#include "half.hpp"
#include "memory.hpp"

namespace fa::cpu {
namespace {

float load(int32_t dtype, const void* p, int64_t i) {
  if (dtype == FA_DTYPE_F32) return static_cast<const float*>(p)[i];
  const uint16_t bits = static_cast<const uint16_t*>(p)[i];
  return dtype == FA_DTYPE_F16 ? half_to_float(bits) : bf16_to_float(bits);
}

void store(int32_t dtype, void* p, int64_t i, float x) {
  if (dtype == FA_DTYPE_F32) static_cast<float*>(p)[i] = x;
  else static_cast<uint16_t*>(p)[i] = dtype == FA_DTYPE_F16 ? float_to_half(x) : float_to_bf16(x);
}

int32_t check_inside(const char* call, const char* name, const void* p, int64_t bytes) {
  if (bytes > 0 && !registry_contains(p, static_cast<uint64_t>(bytes)))
    return fail(FA_ERR_INVALID_ARGUMENT, format("%s: %s (%lld bytes) is not inside one fa_malloc block", call, name, static_cast<long long>(bytes)));
  return FA_OK;
}

}  // namespace
}  // namespace fa::cpu

using namespace fa;
using namespace fa::cpu;

extern "C" {

FA_API int32_t fa_merge_partial(int32_t dtype, int32_t batch, int32_t rows, int32_t heads, int32_t head_dim, float* acc,
                                float* acc_lse, const void* part, const float* part_lse) {
  return guard([&] {
    int64_t n = 0;
    if (int32_t st = check_merge(dtype, batch, rows, heads, head_dim, acc, acc_lse, part, part_lse, &n)) return st;
    const int64_t lse_bytes = n == 0 ? 0 : int64_t{batch} * heads * rows * 4;
    const struct { const char* name; const void* p; int64_t bytes; } ranges[] = {
        {"acc", acc, n * 4}, {"acc_lse", acc_lse, lse_bytes}, {"part", part, n * static_cast<int64_t>(dtype_size(dtype))},
        {"part_lse", part_lse, lse_bytes}};
    for (const auto& r : ranges)
      if (int32_t st = check_inside("fa_merge_partial", r.name, r.p, r.bytes)) return st;
    for (int64_t b = 0; b < batch && n > 0; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t l = (b * heads + h) * rows + i;
          const MergeWeights w = merge_weights(acc_lse[l], part_lse[l]);
          acc_lse[l] = w.lse;
          const int64_t base = ((b * rows + i) * heads + h) * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) acc[base + d] = acc[base + d] * w.keep + load(dtype, part, base + d) * w.take;
        }
    return static_cast<int32_t>(FA_OK);
  });
}

FA_API int32_t fa_convert(int32_t dst_dtype, void* dst, int32_t src_dtype, const void* src, uint64_t count, int32_t accumulate) {
  return guard([&] {
    if (int32_t st = check_convert(dst_dtype, dst, src_dtype, src, count)) return st;
    const int64_t n = static_cast<int64_t>(count);
    if (int32_t st = check_inside("fa_convert", "dst", dst, n * static_cast<int64_t>(dtype_size(dst_dtype)))) return st;
    if (int32_t st = check_inside("fa_convert", "src", src, n * static_cast<int64_t>(dtype_size(src_dtype)))) return st;
    for (int64_t i = 0; i < n; ++i) store(dst_dtype, dst, i, (accumulate ? load(dst_dtype, dst, i) : 0.f) + load(src_dtype, src, i));
    return static_cast<int32_t>(FA_OK);
  });
}

}  // extern "C"
