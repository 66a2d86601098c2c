// attn.cuh — what the tensor-core forward and backward kernels share: the kernel argument block, per-sequence
// geometry (padded batch or varlen), the visibility mask and the score transform (softcap, ALiBi) of docs/DESIGN.md.
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

// fp8 descale factors (flashattn.h, fa_descale): the factor of sequence b, kv head h is data[b * batch_stride + h *
// head_stride]; data null = 1.
struct DevDescale {
  const float* data;
  int batch_stride, head_stride;
};

__device__ __forceinline__ float descale_factor(const DevDescale& f, int b, int h) {
  return f.data != nullptr ? f.data[static_cast<int64_t>(b) * f.batch_stride + static_cast<int64_t>(h) * f.head_stride] : 1.f;
}

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
  // persistent forward (fwd_sm90.cuh): tiles past the first CTA of each SM are taken from *tile_counter (zeroed
  // before the launch) by persistent_ctas CTAs; null = one CTA per tile.
  int* tile_counter;
  int persistent_ctas;
  // backward workspaces (lse-row indexed like lse): lse2 = lse * log2(e) (+inf for empty rows, so P = 0),
  // dsum = rowsum(dO * O), dq_accum: [dq_slices][lse row][head_dim] fp32.
  float* lse2;
  float* dsum;
  float* dq_accum;
  // Deterministic mode: each CTA owns dq_accum slice blockIdx.x and adds to it in step order, or, where dq_turns is set
  // (Hopper, head dim >= 128), one dq_accum whose row blocks take their additions in a fixed key-block order:
  // dq_turns (one int per lse row, zeroed) counts the key blocks that have added to the row block starting at that
  // row; the persistent grid (bwd_sm90.cuh, Sm90BwdWalk) has dq_slots x dq_lanes CTAs.
  int deterministic;
  int* dq_turns;
  int dq_slots, dq_lanes;
  int64_t lse_rows;              // batch * heads_q * seqlen_q (padded) or heads_q * total_q (varlen)
  // fp8 forward: q, k, v are fp8 numbers times these factors, and o is written in fp16 (out_fp16) or bf16
  DevDescale q_descale, k_descale, v_descale;
  int out_fp16;
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

// Raises `kernel`'s dynamic shared-memory limit to `smem` bytes and launches it on `grid` x `threads` with `params`
// (the AttnArgs, and whatever else a kernel takes by value).
template <typename Kernel, typename... Params>
gpuError_t launch_attention_kernel(Kernel kernel, dim3 grid, int threads, size_t smem, gpuStream_t stream, const Params&... params) {
  gpuError_t err = gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != gpuSuccess) return err;
  kernel<<<grid, threads, smem, stream>>>(params...);
  return gpuGetLastError();
}

// ---- what both forward kernels (mma.sync and wgmma) do the same way ---------------------------------------------

// The key blocks [lo, hi) of BN keys that split `split` of the row block at m0 (bm rows) walks: the visible blocks
// shared out evenly (each split floor or ceil of all / num_splits), since the longest split sets the kernel's time.
// (Whole shares of ceil(all / num_splits) left the last splits short or empty: 512 blocks over 30 splits ran as 28
// of 18 blocks, one of 8 and one of none.)
struct KeyBlocks {
  int lo, hi;
};
__device__ __forceinline__ KeyBlocks split_key_blocks(const AttnArgs& a, const SeqInfo& s, int m0, int bm, int bn, int split) {
  int key_begin, key_end;
  visible_keys(a, s, m0, bm, key_begin, key_end);
  const int first = key_begin / bn;
  const int64_t all = key_end > key_begin ? ceil_div(key_end, bn) - first : 0;
  return KeyBlocks{first + static_cast<int>(all * split / a.num_splits), first + static_cast<int>(all * (split + 1) / a.num_splits)};
}

// The query and ALiBi slope (log2 units) of one accumulator row. A plain kernel's row is a query of one head; the
// decode kernel packs a KV head's query heads into the rows, so each row has its own query and head.
struct ScoreRow {
  int query;
  float slope;
};

// kLazyMax: how far (log2 units) a row's scores may rise above the max its P is taken against before that max moves.
// P and the running O and sum then grow by at most 2^8 (fp32 accumulators; P fits fp16 / bf16), and O is rescaled
// only when a block raises the max by more than this, which after the first block is rare; the result is the same
// (O / l and LSE do not depend on the reference max). Not for fp8 P: with the exact max a row's largest P is 1, which
// E4M3 holds exactly, and a peaked row's error is mostly that term's (a decode-shaped case on the fp8 Hopper path
// measured 2.9e-2 with the lazy max, over its bound of twice the naive fp8's 1.2e-2).
constexpr float kMaxSlackLog2 = 8.f;

// One 16-row fragment's share of key block n0 in the online softmax. `sc(j, e)` is C register e of n-tile j of S
// (row `row_at(e / 2)`, key n0 + 8j + 2t + e % 2; row_at(0) is the lane's row g, row_at(1) row g + 8). Softcap / ALiBi rewrite S into log2 units,
// masked pairs become -inf; then the reference max (the running max; with kLazyMax moved only when the block passes it
// by more than kMaxSlackLog2) and the (per-lane) sum are updated, S is replaced by P = exp2(S mult - max mult), and
// alpha[hf] = exp2((old max - new max) mult) is what O's rows must be scaled by (exactly 1 when the max stayed).
template <int NT, bool kLazyMax = false, typename Scores, typename RowAt>
__device__ __forceinline__ void online_softmax_block(const AttnArgs& a, const SeqInfo& s, Scores&& sc, RowAt&& row_at, int n0,
                                                     bool transform, bool masked, float mult,
                                                     float (&row_max)[2], float (&row_sum)[2], float (&alpha)[2]) {
  const int t = threadIdx.x % 4;
  if (transform || masked) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const ScoreRow row = row_at(hf);
      const int i = row.query;
      const float slope = row.slope;
      int lo = INT_MIN, hi = INT_MAX;
      if (masked) visible_key_range(a, s, i, lo, hi);
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = n0 + j * 8 + 2 * t + c;
          float x = sc(j, 2 * hf + c), unused_tanh;
          if (transform) x = transformed_logit(a, x, slope, i + s.diag - col, unused_tanh);
          sc(j, 2 * hf + c) = (col < lo || col > hi) ? -INFINITY : x;
        }
    }
  }
  // Each row lives in one quad (4 lanes). The row's max is a tree and its sum four partial sums: as chains of 2 NT
  // dependent instructions they were most of the Hopper consumers' fixed-latency ("wait") stalls (ncu, fp8 forward).
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float part[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) part[j] = fmaxf(sc(j, 2 * hf), sc(j, 2 * hf + 1));
#pragma unroll
    for (int stride = 1; stride < NT; stride *= 2)
#pragma unroll
      for (int j = 0; j + stride < NT; j += 2 * stride) part[j] = fmaxf(part[j], part[j + stride]);
    float mx;
    bool move = true;  // the reference max moves (always, unless kLazyMax)
    if constexpr (kLazyMax) {
      const float block_max = quad_max(part[0]);
      // -inf (no visible key yet) moves to any finite max (mult may be 0: no -inf * 0 here)
      move = row_max[hf] == -INFINITY ? block_max != -INFINITY : (block_max - row_max[hf]) * mult > kMaxSlackLog2;
      mx = move ? block_max : row_max[hf];
    } else {
      mx = quad_max(fmaxf(row_max[hf], part[0]));
    }
    // A row that has seen only masked keys keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
    const float m_scaled = mx == -INFINITY ? 0.f : mx * mult;
    alpha[hf] = move ? fast_exp2(row_max[hf] * mult - m_scaled) : 1.f;
    row_max[hf] = mx;
    float sums[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float p = fast_exp2(fmaf(sc(j, 2 * hf + c), mult, -m_scaled));
        sc(j, 2 * hf + c) = p;
        sums[(2 * j + c) % 4] += p;
      }
    const float sum = (sums[0] + sums[1]) + (sums[2] + sums[3]);
    row_sum[hf] = row_sum[hf] * alpha[hf] + sum;  // per-lane partial; reduced over the quad at the end
  }
}

// The online softmax's starting state for MF 16-row fragments: O = 0, running max -inf, running sum 0.
template <int MF, int NJ>
__device__ __forceinline__ void clear_accumulators(float (&o_acc)[MF][NJ][4], float (&row_max)[MF][2], float (&row_sum)[MF][2]) {
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mf][j][e] = 0.f;
    row_max[mf][0] = row_max[mf][1] = -INFINITY;
    row_sum[mf][0] = row_sum[mf][1] = 0.f;
  }
}

// S = Q K^T for MF 16-row fragments of Q (smem rows row0.., layout L) against the N keys of a K tile stored
// [key][dim] (rows 0..N), over D in k-steps of 16: sc[mf][j] is n-tile j of fragment mf, fp32, overwritten.
template <typename T, typename L, int D, int N, int MF>
__device__ __forceinline__ void scores_QKt(float (&sc)[MF][N / 8][4], const T* sQ, int row0, const T* sK) {
#pragma unroll
  for (int mf = 0; mf < MF; ++mf)
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[mf][j][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t qa[MF][4];
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) load_a<L>(qa[mf], sQ, row0 + mf * 16, kk * 16);
    mm_ABt<T, L, N, MF>([&](int mf, int j) -> float(&)[4] { return sc[mf][j]; },
                         [&](int mf) -> const uint32_t(&)[4] { return qa[mf]; }, sK, kk * 16);
  }
}

// A row's LSE (natural log) from its max in log2 units and its sum. A row with no visible key (l = 0) gets +inf in
// the output (flash-attn 2.x) and -inf in a split's partial (weight 0 in the combine).
__device__ __forceinline__ float row_lse(float max_log2, float l, bool direct) {
  return l > 0.f ? (max_log2 + __log2f(l)) * kLn2 : direct ? INFINITY : -INFINITY;
}

// The forward epilogue of the 16 rows a warp owns (block rows row0 + g, row0 + g + 8; `acc(j, e)` is C register e
// of n-tile j of O): O / l and LSE (a row with no visible key, l = 0, gets O = 0 and LSE = +inf), written to o / lse,
// or as fp32 partials of split `split`. The direct path stages the rows in the warp's own rows of `stage` (row length
// D + kPad; no other warp touches them) and stores 16-byte chunks.
template <typename T, int D, typename Acc>
__device__ __forceinline__ void store_output_rows(const AttnArgs& a, const SeqInfo& s, int b, int h, int split, int m0,
                                                  int row0, Acc&& acc, const float (&row_max)[2],
                                                  const float (&row_sum)[2], float mult, T* stage) {
  constexpr int LD = D + kPad;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t lrow0 = lse_row0(a, s, b, h);
  const bool direct = a.num_splits == 1;
  float* lse_out = direct ? a.lse : a.lse_part + static_cast<int64_t>(split) * a.lse_rows;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(row_sum[hf]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int r = row0 + g + hf * 8, i = m0 + r;
    if (lse_out != nullptr && t == 0 && i < s.sq) lse_out[lrow0 + i] = row_lse(row_max[hf] * mult, l, direct);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const float x0 = acc(j, 2 * hf) * inv, x1 = acc(j, 2 * hf + 1) * inv;
      const int col = j * 8 + 2 * t;
      if (direct) {
        *reinterpret_cast<uint32_t*>(stage + r * LD + col) = pack2<T>(x0, x1);
      } else if (i < s.sq && col < a.head_dim) {
        float* dst = a.o_part + (static_cast<int64_t>(split) * a.lse_rows + lrow0 + i) * a.head_dim + col;
        *reinterpret_cast<float2*>(dst) = make_float2(x0, x1);
      }
    }
  }
  if (!direct) return;
  __syncwarp();
  T* o = static_cast<T*>(a.o.data) + (a.cu_q != nullptr ? static_cast<int64_t>(s.q_start) * a.o.row_stride
                                                        : static_cast<int64_t>(b) * a.o.batch_stride) +
         static_cast<int64_t>(h) * a.o.head_stride;
  constexpr int kChunks = 16 * (D / 8);
#pragma unroll
  for (int c = lane; c < kChunks; c += 32) {
    const int r = row0 + c / (D / 8), col = (c % (D / 8)) * 8, i = m0 + r;
    if (i < s.sq && col < a.head_dim)
      *reinterpret_cast<uint4*>(o + static_cast<int64_t>(i) * a.o.row_stride + col) = *reinterpret_cast<const uint4*>(stage + r * LD + col);
  }
}

// ---- what both backward kernels do the same way -------------------------------------------------------------------

// The query blocks [first, first + count) of bm rows holding some query that sees a key of [n0, n0 + bn).
struct QueryBlocks {
  int first, count;
};
__device__ __forceinline__ QueryBlocks visible_query_blocks(const AttnArgs& a, const SeqInfo& s, int n0, int bn, int bm) {
  int q_begin, q_end;
  visible_queries(a, s, n0, bn, q_begin, q_end);
  const int first = q_begin / bm;
  return QueryBlocks{first, q_end > q_begin ? ceil_div(q_end, bm) - first : 0};
}

// Adds the C-layout dQ fragment a warp holds (queries i0 + g, i0 + g + 8 of the lse rows from lrow0; columns col0 + 8j
// + 2t ..) to dq_accum: vector atomics, or, in deterministic mode, a plain read-modify-write of the CTA's own slice.
template <int NJ, typename Acc>
__device__ __forceinline__ void accumulate_dq_rows(const AttnArgs& a, float* dq_accum, int64_t lrow0, int i0, int sq, int col0,
                                                   Acc&& acc) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int cols_left = a.head_dim - col0 - 2 * t;  // n-tile j is inside the head dim iff 8j < cols_left
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = i0 + g + hf * 8;
    if (i >= sq) continue;
    float* row = dq_accum + (lrow0 + i) * a.head_dim + col0 + 2 * t;
    if (a.deterministic) {  // this CTA owns the slice: a plain, ordered read-modify-write
#pragma unroll
      for (int j = 0; j < NJ; ++j)
        if (8 * j < cols_left) {
          row[8 * j] += acc(j, 2 * hf);
          row[8 * j + 1] += acc(j, 2 * hf + 1);
        }
      continue;
    }
#pragma unroll
    for (int j = 0; j < NJ; ++j)
      if (8 * j < cols_left) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // one vector reduction for the adjacent pair
        atomicAdd(reinterpret_cast<float2*>(row + 8 * j), make_float2(acc(j, 2 * hf), acc(j, 2 * hf + 1)));
#else
        atomicAdd(row + 8 * j, acc(j, 2 * hf));
        atomicAdd(row + 8 * j + 1, acc(j, 2 * hf + 1));
#endif
      }
  }
}

// Writes the C-layout dK or dV fragment a warp holds (keys key0 + g, key0 + g + 8 of sequence b, kv head hk; columns
// col0 + 8j + 2t ..) times `scale`; rows past the keys and columns past head_dim are not written.
template <typename T, int NJ, typename Acc>
__device__ __forceinline__ void store_key_rows(const DevTensor& dst, const AttnArgs& a, const SeqInfo& s, int b, int hk, int key0,
                                               int col0, Acc&& acc, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  T* base = static_cast<T*>(dst.data) +
            (a.cu_q != nullptr ? static_cast<int64_t>(s.k_start) * dst.row_stride : static_cast<int64_t>(b) * dst.batch_stride) +
            static_cast<int64_t>(hk) * dst.head_stride;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = key0 + g + hf * 8;
    if (key >= s.sk) continue;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int col = col0 + j * 8 + 2 * t;
      if (col >= a.head_dim) continue;
      *reinterpret_cast<uint32_t*>(base + static_cast<int64_t>(key) * dst.row_stride + col) =
          pack2<T>(acc(j, 2 * hf) * scale, acc(j, 2 * hf + 1) * scale);
    }
  }
}

}  // namespace fa::tc
