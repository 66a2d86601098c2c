// attn.cuh — what the tensor-core forward and backward kernels share: the kernel argument block, per-sequence
// geometry (padded batch or varlen), the visibility mask and the score transform (softcap, ALiBi) of DESIGN.md.
#pragma once

#include <climits>
#include <cstdint>

#include "tile.cuh"

namespace fa::tc {

// One strided BSHD tensor as the kernels see it (strides in elements; batch_stride unused in varlen mode).
struct DevTensor {
  void* data;
  int64_t batch_stride, row_stride, head_stride;
};

// Everything a kernel launch needs, passed by value (__grid_constant__-sized, well under 4 KiB).
struct AttnArgs {
  DevTensor q, k, v, o;          // forward inputs / output
  DevTensor dout, dq, dk, dv;    // backward
  float* lse;                    // (batch, heads_q, seqlen_q) or varlen (heads_q, total_q); may be null in forward
  const int32_t* cu_q;           // null = padded batch
  const int32_t* cu_k;
  const float* alibi;            // null = no ALiBi
  int alibi_per_batch;           // slopes indexed [b * heads_q + h] instead of [h]
  int batch, heads_q, heads_kv, group;
  int seqlen_q, seqlen_k;        // varlen: the maxima
  int total_q;                   // varlen: rows of q (the lse row count per head)
  int head_dim;                  // true head dim (the kernel's D may be larger: extra columns are zero-filled)
  float scale;                   // softmax scale
  float scale_log2;              // scale * log2(e)
  float softcap;                 // 0 = off
  int win_left, win_right;       // -1 = unbounded, causal folded into win_right = 0
  // forward split-KV: split s writes normalised fp32 partials (o_part: [split][lse row][head_dim], lse_part:
  // [split][lse row]) that the combine kernel merges; num_splits == 1 writes o / lse directly.
  int num_splits;
  float* o_part;
  float* lse_part;
  // backward workspaces (lse-row indexed like lse): lse2 = lse * log2(e) (+inf for empty rows, so P = 0),
  // dsum = rowsum(dO * O), dq_accum: [dq_slices][lse row][head_dim] fp32.
  float* lse2;
  float* dsum;
  float* dq_accum;
  int deterministic;             // 1: each CTA owns dq_accum slice blockIdx.x and adds without atomics
  int64_t lse_rows;              // batch * heads_q * seqlen_q (padded) or heads_q * total_q (varlen)
};

// The geometry of one sequence b.
struct SeqInfo {
  int q_start, k_start;  // first row in the packed varlen tensors (0 when padded)
  int sq, sk;            // this sequence's lengths
  int diag;              // sk - sq: the bottom-right alignment offset of causal / window / ALiBi
};

__device__ __forceinline__ SeqInfo seq_info(const AttnArgs& a, int b) {
  SeqInfo s;
  if (a.cu_q != nullptr) {
    s.q_start = a.cu_q[b];
    s.k_start = a.cu_k[b];
    s.sq = a.cu_q[b + 1] - s.q_start;
    s.sk = a.cu_k[b + 1] - s.k_start;
  } else {
    s.q_start = s.k_start = 0;
    s.sq = a.seqlen_q;
    s.sk = a.seqlen_k;
  }
  s.diag = s.sk - s.sq;
  return s;
}

// Rows of head h of sequence b: element (row r, dim d) at base[r * row_stride + d].
template <typename T>
__device__ __forceinline__ RowView<T> row_view(const DevTensor& t, const AttnArgs& a, int b, int h, int start, int rows) {
  const int64_t offset = a.cu_q != nullptr ? static_cast<int64_t>(start) * t.row_stride : static_cast<int64_t>(b) * t.batch_stride;
  return RowView<T>{static_cast<const T*>(t.data) + offset + static_cast<int64_t>(h) * t.head_stride, t.row_stride, rows,
                    a.head_dim};
}

// Index of (sequence b, head h, row 0) in every lse-shaped array: padded (b, h, i), varlen (h, q_start + i).
__device__ __forceinline__ int64_t lse_row0(const AttnArgs& a, const SeqInfo& s, int b, int h) {
  return a.cu_q != nullptr ? static_cast<int64_t>(h) * a.total_q + s.q_start
                           : (static_cast<int64_t>(b) * a.heads_q + h) * a.seqlen_q;
}

// Key j is visible from query i iff j < sk and i + diag - left <= j <= i + diag + right (a negative bound is
// unbounded). Row form for query i: keys [lo, hi] are visible (empty when hi < lo); hoisted out of the per-element
// loops so a masked tile costs two compares per score.
__device__ __forceinline__ void visible_key_range(const AttnArgs& a, const SeqInfo& s, int i, int& lo, int& hi) {
  lo = a.win_left >= 0 ? i + s.diag - a.win_left : 0;
  hi = a.win_right >= 0 ? min(s.sk - 1, i + s.diag + a.win_right) : s.sk - 1;
}

// Column form for key j: queries [lo, hi] see it (empty when hi < lo, e.g. j past the end of the keys).
__device__ __forceinline__ void visible_query_range(const AttnArgs& a, const SeqInfo& s, int j, int& lo, int& hi) {
  lo = a.win_right >= 0 ? j - s.diag - a.win_right : INT_MIN;
  hi = a.win_left >= 0 ? j - s.diag + a.win_left : INT_MAX;
  if (j >= s.sk) lo = INT_MAX;
}

// Whether any pair of the (rows m0.., keys n0..) tile can be masked, i.e. the mask must be applied element-wise.
__device__ __forceinline__ bool tile_needs_mask(const AttnArgs& a, const SeqInfo& s, int m0, int bm, int n0, int bn) {
  if (n0 + bn > s.sk) return true;
  if (a.win_right >= 0 && n0 + bn - 1 > m0 + s.diag + a.win_right) return true;
  if (a.win_left >= 0 && n0 < m0 + bm - 1 + s.diag - a.win_left) return true;
  return false;
}

// Keys [begin, end) some query of rows [m0, m0 + bm) can see (end <= begin: none).
__device__ __forceinline__ void visible_keys(const AttnArgs& a, const SeqInfo& s, int m0, int bm, int& begin, int& end) {
  begin = a.win_left >= 0 ? max(0, m0 + s.diag - a.win_left) : 0;
  end = a.win_right >= 0 ? min(s.sk, m0 + bm - 1 + s.diag + a.win_right + 1) : s.sk;
}

// Queries [begin, end) that can see some key of [n0, n0 + bn).
__device__ __forceinline__ void visible_queries(const AttnArgs& a, const SeqInfo& s, int n0, int bn, int& begin, int& end) {
  begin = a.win_right >= 0 ? max(0, n0 - s.diag - a.win_right) : 0;
  end = a.win_left >= 0 ? min(s.sq, n0 + bn - 1 - s.diag + a.win_left + 1) : s.sq;
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ALiBi slope of (b, h) already multiplied by log2(e), or 0.
__device__ __forceinline__ float alibi_slope_log2(const AttnArgs& a, int b, int h) {
  if (a.alibi == nullptr) return 0.f;
  return a.alibi[a.alibi_per_batch ? b * a.heads_q + h : h] * kLog2e;
}

// The logit of raw dot product `qk` in log2 units when softcap or ALiBi is on:
//   x = log2(e) * (softcap ? c * tanh(scale * qk / c) : scale * qk) - slope * log2(e) * |i + diag - j|.
// `tanh_out` receives tanh(.) (0 without softcap) for the backward's derivative factor 1 - tanh^2.
__device__ __forceinline__ float transformed_logit(const AttnArgs& a, float qk, float slope_log2, int rel, float& tanh_out) {
  float x;
  if (a.softcap > 0.f) {
    tanh_out = tanhf(qk * a.scale / a.softcap);
    x = a.softcap * tanh_out * kLog2e;
  } else {
    tanh_out = 0.f;
    x = qk * a.scale_log2;
  }
  return x - slope_log2 * fabsf(static_cast<float>(rel));
}

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace fa::tc
