// forward.cpp — FlashAttention forward on the CPU (FA_ALGO_FLASH).
//
// One task = (head h, query block of Bq = kForwardBlockQ rows of one sequence). Per task, with d = head_dim:
//   Q^T (d x Bq)  = (scale * Q_block)^T, converted to fp32 once
//   m, l (Bq)     = running max and running sum of exp, per query;  O (Bq x d) = unnormalised output
//   for each key block K_j, V_j (Bk = kForwardBlockK keys) that some query of the block can see:
//     S^T (Bk x Bq) = K_j . Q^T                         (keys in rows: the softmax vectorises across queries)
//     S^T          <- softcap / ALiBi / mask            (mask only where the block is not fully visible)
//     m' = max(m, colmax S^T);  P^T = exp(S^T - m');  alpha = exp(m - m');  l = alpha l + colsum P^T
//     O  = diag(alpha) O + P . V_j                      (P read through P^T, no transpose copy)
//   O /= l, LSE = m + log l; a query with no visible key gets O = 0, LSE = -inf.
// Memory per task is O(Bq*d + Bk*Bq): seqlen_q x seqlen_k is never materialised. Key blocks outside every query's
// window are skipped (causal: the blocks above the diagonal). FLOPs: 4 * Bq * Bk * d per visited block pair.
#include <cmath>
#include <vector>

#include "attention.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

namespace {

struct ForwardScratch {
  float *qt, *st, *o, *k, *v, *m, *l, *alpha, *q_pos, *inv_l;
  int32_t *lo, *hi;

  ForwardScratch(Carver& c, int32_t d_pad) {
    const int32_t bq = kForwardBlockQ, bk = kForwardBlockK;
    qt = c.take<float>(int64_t{d_pad} * bq);
    st = c.take<float>(int64_t{bk} * bq);
    o = c.take<float>(int64_t{bq} * d_pad);
    k = c.take<float>(int64_t{bk} * d_pad);
    v = c.take<float>(int64_t{bk} * d_pad);
    m = c.take<float>(bq);
    l = c.take<float>(bq);
    alpha = c.take<float>(bq);
    q_pos = c.take<float>(bq);
    inv_l = c.take<float>(bq);
    lo = c.take<int32_t>(bq);
    hi = c.take<int32_t>(bq);
  }
};

// The query blocks of all sequences, numbered consecutively: padded batches by arithmetic, varlen by a prefix sum
// over sequences (its size is the caller's cu_seqlens length, not a size read from memory).
class QueryBlocks {
 public:
  QueryBlocks(const Geometry& g, int32_t block) : g_(g), block_(block) {
    if (!g.varlen) {
      per_sequence_ = (g.p.seqlen_q + block - 1) / block;
      total_ = int64_t{g.p.batch} * per_sequence_;
      return;
    }
    prefix_.resize(static_cast<size_t>(g.p.batch) + 1, 0);
    for (int32_t b = 0; b < g.p.batch; ++b)
      prefix_[b + 1] = prefix_[b] + (g.sequence(b).len_q + block - 1) / block;
    total_ = prefix_.back();
  }
  int64_t total() const { return total_; }
  // Block index -> (sequence, first query of the block).
  void locate(int64_t index, int32_t& b, int32_t& q0) const {
    if (!g_.varlen) {
      b = static_cast<int32_t>(index / per_sequence_);
      q0 = static_cast<int32_t>(index % per_sequence_) * block_;
      return;
    }
    b = static_cast<int32_t>(std::upper_bound(prefix_.begin(), prefix_.end(), index) - prefix_.begin() - 1);
    q0 = static_cast<int32_t>(index - prefix_[b]) * block_;
  }

 private:
  const Geometry& g_;
  int32_t block_;
  int64_t per_sequence_ = 0, total_ = 0;
  std::vector<int64_t> prefix_;
};

void forward_block(const Geometry& g, const IsaKernels& isa, ForwardScratch& w, int32_t b, int32_t h, int32_t q0) {
  const fa_attn_params& p = g.p;
  const int32_t bq = kForwardBlockQ, bk = kForwardBlockK, d = g.d, d_pad = g.d_pad;
  const Sequence s = g.sequence(b);
  const int32_t rows = std::min(bq, s.len_q - q0), cols = round_up(rows, 16);
  const int32_t kvh = h / g.r.group;
  const BlockVisibility vis = block_visibility(g, s, q0, rows, cols, w.lo, w.hi);

  std::fill(w.o, w.o + int64_t{rows} * d_pad, 0.0f);
  std::fill(w.m, w.m + cols, -INFINITY);
  std::fill(w.l, w.l + cols, 0.0f);
  if (vis.any()) {
    isa.load_rows_transposed(p.dtype, g.row(p.q, b, s.q_start, q0, h), p.q.row_stride, rows, d, g.r.scale, w.qt, bq, cols);
    for (int32_t c = 0; c < cols; ++c) w.q_pos[c] = static_cast<float>(q0 + c + s.len_k - s.len_q);
    ScoreMods mods{p.softcap, g.alibi_slope(b, h), w.q_pos, nullptr, nullptr, nullptr};
    for (int32_t k0 = vis.key_lo / bk * bk; k0 <= vis.key_hi; k0 += bk) {
      const int32_t keys = std::min(bk, s.len_k - k0);
      const bool full = vis.tile_fully_visible(k0, k0 + keys - 1);
      mods.visible_lo = full ? nullptr : w.lo;
      mods.visible_hi = full ? nullptr : w.hi;
      // K and V are copied to contiguous fp32 tiles even when they are fp32 already: rows of a BSHD tensor lie
      // heads * d floats apart, and with power-of-two strides they all fall into the same few L1 sets.
      isa.load_rows(p.dtype, g.row(p.k, b, s.k_start, k0, kvh), p.k.row_stride, keys, d, 1.0f, w.k, d_pad, d_pad);
      isa.load_rows(p.dtype, g.row(p.v, b, s.k_start, k0, kvh), p.v.row_stride, keys, d, 1.0f, w.v, d_pad, d_pad);
      isa.gemm({keys, cols, d, w.k, d_pad, 1, w.qt, bq, w.st, bq, GemmMode::kOverwrite, nullptr});
      isa.transform_scores(w.st, bq, keys, cols, k0, mods);
      isa.softmax_step(w.st, w.st, bq, keys, cols, w.m, w.l, w.alpha);
      isa.gemm({rows, d_pad, keys, w.st, 1, bq, w.v, d_pad, w.o, d_pad, GemmMode::kRowScale, w.alpha});
    }
  }
  for (int32_t c = 0; c < rows; ++c) w.inv_l[c] = w.l[c] > 0.0f ? 1.0f / w.l[c] : 0.0f;
  isa.store_rows(p.dtype, w.o, d_pad, rows, d, w.inv_l, g.row(p.o, b, s.q_start, q0, h), p.o.row_stride);
  if (p.lse != nullptr)
    for (int32_t c = 0; c < rows; ++c)
      p.lse[g.lse_index(b, h, s, q0 + c)] = w.l[c] > 0.0f ? w.m[c] + std::log(w.l[c]) : -INFINITY;
}

}  // namespace

int32_t flash_forward(const fa_attn_params& p, const IsaKernels& isa) {
  const Geometry g(p);
  const QueryBlocks blocks(g, kForwardBlockQ);
  const int workers = worker_count();
  Carver sizer(nullptr);
  ForwardScratch{sizer, g.d_pad};
  const int64_t per_worker = sizer.used();
  Workspace scratch(checked_bytes("forward scratch", {static_cast<uint64_t>(per_worker), static_cast<uint64_t>(workers)}),
                    "forward scratch");
  std::vector<ForwardScratch> slices;
  for (int w = 0; w < workers; ++w) {
    Carver carve(scratch.as<char>() + w * per_worker);
    slices.emplace_back(carve, g.d_pad);
  }
  // Head-major order: consecutive tasks share one head's K/V, which then stays in cache across query blocks.
  parallel_for(int64_t{p.heads_q} * blocks.total(), [&](int64_t task, int worker) {
    int32_t b, q0;
    blocks.locate(task % blocks.total(), b, q0);
    forward_block(g, isa, slices[worker], b, static_cast<int32_t>(task / blocks.total()), q0);
  });
  return is_avx2(isa) ? kFlashForwardAvx2 : kFlashForwardPortable;
}

}  // namespace fa::cpu
