// forward.cpp — FlashAttention forward on the CPU (FA_ALGO_FLASH).
//
// One task = (kv head, the query heads of its GQA group (up to Bq of them), a block of queries of one sequence):
// the Bq = kForwardBlockQ columns of a task are (query head, query) pairs, column c = j * queries + i for head h0 + j
// and query q0 + i, so every K/V block is converted once for all the heads that share it (with one query token,
// decoding, the columns are the group's heads). Per task, with d = head_dim:
//   Q^T (d x Bq)  = (scale * Q_columns)^T, converted to fp32 once
//   m, l (Bq)     = running max and running sum of exp, per column;  O (Bq x d) = unnormalised output
//   for each key block K_j, V_j (Bk = kForwardBlockK keys) that some query of the block can see:
//     S^T (Bk x Bq) = K_j . Q^T                         (keys in rows: the softmax vectorises across queries)
//     S^T          <- softcap / ALiBi / mask            (mask only where the block is not fully visible)
//     m' = max(m, colmax S^T);  P^T = exp(S^T - m');  alpha = exp(m - m');  l = alpha l + colsum P^T
//     O  = diag(alpha) O + P . V_j                      (P read through P^T, no transpose copy; fp8: P rounded to E4M3)
//   O /= l, LSE = m + log l; a query with no visible key gets O = 0, LSE = +inf (flash-attn 2.x).
// Memory per task is O(Bq*d + Bk*Bq): seqlen_q x seqlen_k is never materialised. Key blocks outside every query's
// window are skipped (causal: the blocks above the diagonal). FLOPs: 4 * Bq * Bk * d per visited block pair.
#include <cmath>
#include <vector>

#include "attention.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

namespace {

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

// One task: the shared forward_task (attention.hpp) with K/V rows read in place from the strided tensors.
void forward_block(const Geometry& g, const IsaKernels& isa, ForwardScratch& w, const ForwardColumns& t) {
  const fa_attn_params& p = g.p;
  const Sequence s = g.sequence(t.b);
  // Every key block that some query of the task can see (causal: none above the diagonal).
  auto all_visible = [](const BlockVisibility& vis) {
    return vis.any() ? KeyRange{vis.key_lo / kForwardBlockK * kForwardBlockK, vis.key_hi + 1} : KeyRange{0, 0};
  };
  // K and V are copied to contiguous fp32 tiles even when they are fp32 already: rows of a BSHD tensor lie
  // heads * d floats apart, and with power-of-two strides they all fall into the same few L1 sets.
  // fp8: K and V are dequantised on their way into the tiles (their factors; 1 for other dtypes).
  const float k_descale = descale_at(p.k_descale, t.b, t.kvh), v_descale = descale_at(p.v_descale, t.b, t.kvh);
  auto load_kv = [&](int32_t k0, int32_t keys) {
    isa.load_rows(p.dtype, g.row(p.k, t.b, s.k_start, k0, t.kvh), p.k.row_stride, keys, g.d, k_descale, w.k, g.d_pad,
                  g.d_pad);
    isa.load_rows(p.dtype, g.row(p.v, t.b, s.k_start, k0, t.kvh), p.v.row_stride, keys, g.d, v_descale, w.v, g.d_pad,
                  g.d_pad);
  };
  forward_task(g, isa, w, t, s, all_visible, load_kv);
  store_forward_task(g, isa, w, t, s);
}

}  // namespace

int32_t flash_forward(const fa_attn_params& p, const IsaKernels& isa) {
  const Geometry g(p);
  // Columns per task: up to Bq heads of a group (a larger group is split), times as many queries as fit.
  const int32_t heads_per_task = std::min(g.r.group, kForwardBlockQ);
  const int32_t head_chunks = (g.r.group + heads_per_task - 1) / heads_per_task;
  const int32_t queries_per_task = std::max(1, kForwardBlockQ / heads_per_task);
  const QueryBlocks blocks(g, queries_per_task);
  PerWorker<ForwardScratch> slices("forward scratch", worker_count(), g.d_pad);
  // kv-head-major order: consecutive tasks share one head's K/V, which then stays in cache across query blocks.
  parallel_for(int64_t{p.heads_kv} * head_chunks * blocks.total(), [&](int64_t task, int worker) {
    ForwardColumns t;
    blocks.locate(task % blocks.total(), t.b, t.q0);
    const int64_t head_task = task / blocks.total();
    const int32_t chunk = static_cast<int32_t>(head_task % head_chunks);
    t.kvh = static_cast<int32_t>(head_task / head_chunks);
    t.h0 = t.kvh * g.r.group + chunk * heads_per_task;
    t.heads = std::min(heads_per_task, g.r.group - chunk * heads_per_task);
    t.queries = std::min(queries_per_task, g.sequence(t.b).len_q - t.q0);
    forward_block(g, isa, slices[worker], t);
  });
  return is_avx2(isa) ? kFlashForwardAvx2 : kFlashForwardPortable;
}

}  // namespace fa::cpu
