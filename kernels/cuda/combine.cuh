// combine.cuh — the split-KV merge of every tensor-core forward. Split s of lse row r leaves a normalised fp32 partial
// O_s = o_part[s][r][0, head_dim) and LSE_s = lse_part[s][r]; the row's result is
//   LSE = log sum_s exp(LSE_s),   O = sum_s exp(LSE_s - LSE) O_s
// (a split that saw no key has LSE_s = -inf and weight 0; a row that no split saw gets O = 0 and LSE = +inf).
//
// The merge moves little (a b1 decode merges 30 splits of 32 rows, 0.5 MB from L2) and is bound by round trips: a
// warp that walks the splits one dependent load at a time spends ~0.5 us per step (the first form took 17.5 us for
// that merge under ncu, cuDNN's 4.4 us). So the loads of a row are spread over W warps (warp g of them takes splits
// g, g + W, ...) with 8 in flight per lane, each lane holding 4 adjacent columns per 128-column pass (16-byte loads);
// the W partial sums meet in shared memory.
#pragma once

#include <utility>

#include "attn.cuh"

namespace fa::tc {

// Split counts of every path stay within this: a lane holds the LSEs of splits lane, lane + 32, ... in registers.
constexpr int kMaxSplits = 128;
// Loads a lane keeps in flight over the splits of one row.
constexpr int kMergeLoadsInFlight = 8;

// Warps per row (a power of two, at most `warps`): enough that each takes about kMergeLoadsInFlight splits.
__host__ __device__ constexpr int merge_warps_per_row(int num_splits, int warps) {
  int w = 1;
  while (w < warps && w * kMergeLoadsInFlight < num_splits) w *= 2;
  return w;
}

// Element offset of lse row `lrow` (see lse_row0) inside a BSHD tensor.
__device__ __forceinline__ int64_t tensor_offset(const DevTensor& t, const AttnArgs& a, int64_t lrow) {
  if (a.cu_q != nullptr) {  // lrow = h * total_q + token
    const int64_t h = lrow / a.total_q, token = lrow % a.total_q;
    return token * t.row_stride + h * t.head_stride;
  }
  const int64_t i = lrow % a.seqlen_q, bh = lrow / a.seqlen_q;
  return (bh / a.heads_q) * t.batch_stride + i * t.row_stride + (bh % a.heads_q) * t.head_stride;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when `programmatic`
// (sm_90: the kernel's CTAs may be scheduled before the previous grid on the stream has finished; the kernel must
// call wait_for_previous_grid before it touches memory that grid may write or read).
template <typename... Params, typename... Args>
gpuError_t launch_maybe_programmatic(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, gpuStream_t stream,
                                     bool programmatic, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute overlap[1];
  overlap[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap[0].val.programmaticStreamSerializationAllowed = 1;
  if (programmatic) config.attrs = overlap, config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// The stand-alone merge: W warps per row, 8 warps per CTA (256 threads), 8 / W consecutive lse rows per CTA.
constexpr int kCombineThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const AttnArgs a) {
  __shared__ float4 red[kCombineThreads];  // the W warps of a row hand their sums to its first
  wait_for_previous_grid();  // the partials
  constexpr int kWarps = kCombineThreads / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = a.num_splits, w = merge_warps_per_row(n, kWarps), g = warp % w;
  const int64_t lrow = static_cast<int64_t>(blockIdx.x) * (kWarps / w) + warp / w;
  const bool row_ok = lrow < a.lse_rows;  // the same for the whole warp; every warp stays for the barriers
  // LSE: lane l holds splits l, l + 32, l + 64, l + 96 (read once, through L2).
  float part[kMaxSplits / 32];
#pragma unroll
  for (int k = 0; k < kMaxSplits / 32; ++k) {
    const int s = lane + 32 * k;
    part[k] = row_ok && s < n ? __ldcg(a.lse_part + s * a.lse_rows + lrow) : -INFINITY;
  }
  // The first kMergeLoadsInFlight partials of this warp's splits (the first 128 columns), loaded before their
  // weights are known, so that their round trip overlaps the LSEs' instead of following it (a b1 decode's merge is
  // on its critical path: 16 splits over 2 warps per row are all loaded here). A split that saw no key may have left
  // its partial unwritten: it is loaded but never used (weight 0).
  float4 first[kMergeLoadsInFlight];
#pragma unroll
  for (int i = 0; i < kMergeLoadsInFlight; ++i) {
    const int s = g + i * w;
    first[i] = row_ok && s < n && lane * 4 < a.head_dim
                   ? __ldcg(reinterpret_cast<const float4*>(a.o_part + (s * a.lse_rows + lrow) * a.head_dim + lane * 4))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float mx = fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3]));
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxSplits / 32; ++k) {
    part[k] = mx == -INFINITY ? 0.f : fast_exp2((part[k] - mx) * kLog2e);  // from here on: the weights' numerators
    sum += part[k];
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  if (row_ok && g == 0 && lane == 0 && a.lse != nullptr)
    a.lse[lrow] = mx == -INFINITY ? INFINITY : mx + __logf(sum);  // no key in any split: +inf
  T* o = static_cast<T*>(a.o.data) + (row_ok ? tensor_offset(a.o, a, lrow) : 0);
  // head_dim is a multiple of 8 on GPUs: a lane's 4 columns are all in or all out, and 16-byte aligned in o_part.
  for (int col0 = 0; col0 < a.head_dim; col0 += 128) {
    const int col = col0 + lane * 4;
    const bool active = row_ok && col < a.head_dim;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    // The warp's first splits g + i w: on the first pass their partials were loaded beside the LSEs (first[i]).
#pragma unroll
    for (int i = 0; i < kMergeLoadsInFlight; ++i) {
      const int s = g + i * w;
      if (s >= n) break;  // warp-uniform
      const float held = s < 32 ? part[0] : s < 64 ? part[1] : s < 96 ? part[2] : part[3];
      const float weight = __shfl_sync(0xffffffffu, held, s % 32) * inv;
      if (active && weight > 0.f) {
        const float4 x = col0 == 0 ? first[i] : __ldcg(reinterpret_cast<const float4*>(a.o_part + (s * a.lse_rows + lrow) * a.head_dim + col));
        acc.x += weight * x.x, acc.y += weight * x.y, acc.z += weight * x.z, acc.w += weight * x.w;
      }
    }
#pragma unroll 8  // kMergeLoadsInFlight
    for (int s = g + kMergeLoadsInFlight * w; s < n; s += w) {
      const float held = s < 32 ? part[0] : s < 64 ? part[1] : s < 96 ? part[2] : part[3];
      const float weight = __shfl_sync(0xffffffffu, held, s % 32) * inv;
      if (active && weight > 0.f) {
        const float4 x = __ldcg(reinterpret_cast<const float4*>(a.o_part + (s * a.lse_rows + lrow) * a.head_dim + col));
        acc.x += weight * x.x, acc.y += weight * x.y, acc.z += weight * x.z, acc.w += weight * x.w;
      }
    }
    if (w > 1) {
      red[threadIdx.x] = acc;
      __syncthreads();
      if (g == 0)
        for (int k = 1; k < w; ++k) {
          const float4 x = red[threadIdx.x + 32 * k];
          acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
        }
      __syncthreads();  // red is free for the next pass
    }
    if (active && g == 0) *reinterpret_cast<uint2*>(o + col) = make_uint2(pack2<T>(acc.x, acc.y), pack2<T>(acc.z, acc.w));
  }
}

}  // namespace fa::tc
