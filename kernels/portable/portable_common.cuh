// portable_common.cuh — device helpers shared by the portable forward and backward kernels (and the HIP MFMA path):
// the kernel argument block, sequence/offset arithmetic for padded and varlen layouts, the score modifier
// (scale, softcap, ALiBi, causal/window mask), 16-byte tile loads into shared memory, and lane reductions.
// Everything here builds with nvcc and hipcc through gpu_compat.hpp; nothing uses matrix instructions.
#pragma once

#include <cstdint>

#include "../gpu/paths.hpp"

namespace fa {
namespace portable {

// Everything a kernel reads, resolved on the host (scale defaulted, causal folded into the window).
struct Args {
  fa_tensor q, k, v, o, dout, dq, dk, dv;
  float* lse;                  // forward: may be null; backward: read
  float* dsum;                 // backward: D = rowsum(dO * O), same layout as lse (library workspace)
  const float* alibi_slopes;   // null when ALiBi is off
  int alibi_per_batch;         // slopes indexed [b * heads_q + h] instead of [h]
  const int32_t* cu_seqlens_q; // null = padded batch
  const int32_t* cu_seqlens_k;
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, group;
  int total_q;                 // varlen: rows of the lse layout (heads_q, total_q)
  float scale, softcap;
  int win_left, win_right;     // -1 = unbounded
  int vec16;                   // every tensor base and stride allows 16-byte accesses
};

Args make_args(const fa_attn_params& p);

// One sequence of the batch: its lengths and the token index of its first row in the packed (varlen) layout.
struct Seq {
  int len_q, len_k;
  int64_t q_token0, k_token0;
  bool varlen;
};

__device__ inline Seq sequence(const Args& a, int b) {
  Seq s;
  s.varlen = a.cu_seqlens_q != nullptr;
  if (s.varlen) {
    s.q_token0 = a.cu_seqlens_q[b];
    s.k_token0 = a.cu_seqlens_k[b];
    s.len_q = a.cu_seqlens_q[b + 1] - a.cu_seqlens_q[b];
    s.len_k = a.cu_seqlens_k[b + 1] - a.cu_seqlens_k[b];
  } else {
    s.q_token0 = s.k_token0 = 0;
    s.len_q = a.seqlen_q;
    s.len_k = a.seqlen_k;
  }
  return s;
}

// Element offset of row 0 of (batch b, head h) in a strided view; rows follow at t.row_stride.
__device__ inline int64_t head_base(const fa_tensor& t, const Seq& s, int b, int64_t token0, int h) {
  return (s.varlen ? token0 * t.row_stride : static_cast<int64_t>(b) * t.batch_stride) +
         static_cast<int64_t>(h) * t.head_stride;
}

// Index into the fp32 per-row arrays (lse, dsum): padded (batch, heads_q, seqlen_q), varlen (heads_q, total_q).
__device__ inline int64_t row_stat_index(const Args& a, const Seq& s, int b, int h, int i) {
  if (s.varlen) return static_cast<int64_t>(h) * a.total_q + s.q_token0 + i;
  return (static_cast<int64_t>(b) * a.heads_q + h) * a.seqlen_q + i;
}

// The score of query i against key j (both relative to their sequence), flash-attn 2.x semantics:
//   c = i + len_k - len_q (bottom-right alignment); visible iff j < len_k, c - left <= j <= c + right
//   s = scale * q.k;  softcap > 0: s = softcap * tanh(s / softcap);  ALiBi: s -= slope * |c - j|
struct ScoreMod {
  float scale, softcap, slope;
  int shift;  // len_k - len_q
  int len_k, win_left, win_right;

  __device__ bool visible(int i, int j) const {
    if (j >= len_k) return false;
    const int64_t c = static_cast<int64_t>(i) + shift;
    if (win_left >= 0 && j < c - win_left) return false;
    if (win_right >= 0 && j > c + win_right) return false;
    return true;
  }
  // Final score from the raw dot product; *dscore_ddot receives d(score)/d(q.k) for the backward pass.
  __device__ float apply(float dot, int i, int j, float* dscore_ddot) const {
    float s = dot * scale, grad = scale;
    if (softcap > 0.f) {
      const float t = tanhf(s / softcap);
      s = softcap * t;
      grad = scale * (1.f - t * t);
    }
    if (slope != 0.f) s -= slope * fabsf(static_cast<float>(static_cast<int64_t>(i) + shift - j));
    *dscore_ddot = grad;
    return s;
  }
};

// A: Args, or any argument block with the same score fields (the KV-cache kernel's KvArgs).
template <typename A>
__device__ inline ScoreMod score_mod(const A& a, const Seq& s, int b, int h) {
  ScoreMod m;
  m.scale = a.scale;
  m.softcap = a.softcap;
  m.slope = a.alibi_slopes ? a.alibi_slopes[a.alibi_per_batch ? b * a.heads_q + h : h] : 0.f;
  m.shift = s.len_k - s.len_q;
  m.len_k = s.len_k;
  m.win_left = a.win_left;
  m.win_right = a.win_right;
  return m;
}

// Keys [*begin, *end) that queries [i0, i1] of one sequence can see under the window (ragged ends clipped).
__device__ inline void key_range(const ScoreMod& m, int i0, int i1, int* begin, int* end) {
  int64_t lo = 0, hi = m.len_k;
  if (m.win_left >= 0) lo = static_cast<int64_t>(i0) + m.shift - m.win_left;
  if (m.win_right >= 0) hi = static_cast<int64_t>(i1) + m.shift + m.win_right + 1;
  lo = lo < 0 ? 0 : lo;
  hi = hi > m.len_k ? m.len_k : hi;
  *begin = static_cast<int>(lo);
  *end = static_cast<int>(hi < lo ? lo : hi);
}

// Queries [*begin, *end) of a sequence of len_q rows that can see some key in [j0, j1].
__device__ inline void query_range(const ScoreMod& m, int len_q, int j0, int j1, int* begin, int* end) {
  int64_t lo = 0, hi = len_q;
  if (m.win_right >= 0) lo = static_cast<int64_t>(j0) - m.shift - m.win_right;  // j0 <= i + shift + right
  if (m.win_left >= 0) hi = static_cast<int64_t>(j1) - m.shift + m.win_left + 1;  // j1 >= i + shift - left
  lo = lo < 0 ? 0 : lo;
  hi = hi > len_q ? len_q : hi;
  *begin = static_cast<int>(lo);
  *end = static_cast<int>(hi < lo ? lo : hi);
}

// ---- 8-element (16-byte) vectors --------------------------------------------------------------------------------

template <typename T>
__device__ inline void unpack8(const uint4& raw, float (&out)[8]) {
  T e[8];
  __builtin_memcpy(e, &raw, sizeof raw);
#pragma unroll
  for (int x = 0; x < 8; ++x) out[x] = to_float(e[x]);
}

template <typename T>
__device__ inline uint4 pack8(const float (&in)[8]) {
  T e[8];
#pragma unroll
  for (int x = 0; x < 8; ++x) e[x] = from_float<T>(in[x]);
  uint4 raw;
  __builtin_memcpy(&raw, e, sizeof raw);
  return raw;
}

// 8 consecutive elements from global memory; `vec16` says the address is 16-byte aligned.
template <typename T>
__device__ inline uint4 load8_global(const T* src, bool vec16) {
  if (vec16) return *reinterpret_cast<const uint4*>(src);
  T e[8];
#pragma unroll
  for (int x = 0; x < 8; ++x) e[x] = src[x];
  uint4 raw;
  __builtin_memcpy(&raw, e, sizeof raw);
  return raw;
}

template <typename T>
__device__ inline void store8_global(T* dst, const float (&in)[8], bool vec16) {
  if (vec16) {
    *reinterpret_cast<uint4*>(dst) = pack8<T>(in);
    return;
  }
#pragma unroll
  for (int x = 0; x < 8; ++x) dst[x] = from_float<T>(in[x]);
}

// Shared-memory tiles hold ROWS x D elements with rows padded to D + 8 (keeps 16-byte alignment and spreads rows
// over banks). Columns at or beyond head_dim and rows at or beyond rows_valid are zero-filled so that the compute
// loops can run over the full compile-time D and tile without masks (a zero V row times p = 0 stays 0, never NaN).
template <int D>
struct TileShape {
  static constexpr int stride = D + 8;
  static constexpr int chunks = D / 8;
};

// A tile whose rows lie anywhere: row_at(r) is the address of row r (a paged KV cache, GQA-packed queries).
template <typename T, int D, int ROWS, int THREADS, typename RowAt>
__device__ inline void load_tile_rows(T* tile, RowAt row_at, int rows_valid, int head_dim, bool vec16) {
  constexpr int chunks = TileShape<D>::chunks;
  const int live_chunks = head_dim / 8;
  for (int idx = threadIdx.x; idx < ROWS * chunks; idx += THREADS) {
    const int r = idx / chunks, c = idx % chunks;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (r < rows_valid && c < live_chunks) raw = load8_global(row_at(r) + c * 8, vec16);
    *reinterpret_cast<uint4*>(tile + r * TileShape<D>::stride + c * 8) = raw;
  }
}

template <typename T, int D, int ROWS, int THREADS>
__device__ inline void load_tile(T* tile, const T* base, int64_t row_stride, int rows_valid, int head_dim, bool vec16) {
  load_tile_rows<T, D, ROWS, THREADS>(tile, [&](int r) { return base + r * row_stride; }, rows_valid, head_dim, vec16);
}

template <typename T>
__device__ inline float dot8(const uint4& a_raw, const uint4& b_raw) {
  float a[8], b[8];
  unpack8<T>(a_raw, a);
  unpack8<T>(b_raw, b);
  float acc = 0.f;
#pragma unroll
  for (int x = 0; x < 8; ++x) acc = fmaf(a[x], b[x], acc);
  return acc;
}

// ---- reductions over the LANES adjacent threads that share one row (LANES divides the warp/wavefront) --------------

__device__ inline float shfl_xor(float v, int mask) {
#if defined(FA_GPU_HIP)
  return __shfl_xor(v, mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, mask);
#endif
}

template <int LANES>
__device__ inline float lanes_max(float v) {
#pragma unroll
  for (int m = 1; m < LANES; m <<= 1) v = fmaxf(v, shfl_xor(v, m));
  return v;
}

template <int LANES>
__device__ inline float lanes_sum(float v) {
#pragma unroll
  for (int m = 1; m < LANES; m <<= 1) v += shfl_xor(v, m);
  return v;
}

// ---- host side ----------------------------------------------------------------------------------------------------

// Reasons a portable kernel cannot take a validated request (dtype, head dim, grid limits); empty when it can.
bool supports_common(const fa_attn_params& p, std::vector<std::string>& reasons);

}  // namespace portable
}  // namespace fa
