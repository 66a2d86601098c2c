// backward.cpp — FlashAttention backward on the CPU: dQ, dK, dV from dO, O, LSE, Q, K, V.
//
// P is recomputed from the forward's LSE instead of stored. With Qs = scale * Q (so S = Qs.K^T) and, per query i,
// D_i = rowsum(dO_i * O_i):
//   P  = exp(S - LSE)                 dV = P^T . dO             dP = dO . V^T
//   dS = P * (dP - D) [* (1 - tanh^2) under softcap]            dK = dS^T . Qs        dQ = scale * dS . K
// For GQA the dK/dV of a kv head sum over the heads_q/heads_kv query heads that share it.
//
// Work split, race-free and deterministic: a task owns (sequence, kv head, chunk of key blocks). It accumulates the
// dK/dV rows of its keys in fp32 and writes them once; its dQ contributions go to the dQ partial buffer of its chunk
// (fp32, one per chunk index), which a final pass sums in chunk order. The chunk count depends on the problem shape
// only (never on the thread count), so results are bitwise reproducible run to run and across machines' core counts.
// Per (key block of Bk keys, query block of Bq queries): S^T, P^T, dP^T and dS^T are Bk x Bq tiles; the five
// products are 5 * 2 * Bk * Bq * d FLOPs (2.5x the forward's 4 * Bk * Bq * d).
#include <cmath>
#include <vector>

#include "attention.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

namespace {

// Below this many (sequence, kv head) pairs, key blocks are split into chunks so that the pool has work for
// every thread (a shape-only rule: see the file comment).
constexpr int64_t kMinBackwardTasks = 16;

struct BackwardScratch {
  float *qt, *qs, *dot, *dorow, *st, *pt, *dpt, *grad, *k, *v, *dk, *dv, *lse, *delta, *q_pos, *slope, *row_a, *row_b, *dq_sum,
      *dq_scale;
  int32_t *lo, *hi;

  BackwardScratch(Carver& c, int32_t d_pad) {
    const int32_t bq = kBackwardBlockQ, bk = kBackwardBlockK;
    qt = c.take<float>(int64_t{d_pad} * bq);
    qs = c.take<float>(int64_t{bq} * d_pad);
    dot = c.take<float>(int64_t{d_pad} * bq);
    dorow = c.take<float>(int64_t{bq} * d_pad);
    st = c.take<float>(int64_t{bk} * bq);
    pt = c.take<float>(int64_t{bk} * bq);
    dpt = c.take<float>(int64_t{bk} * bq);
    grad = c.take<float>(int64_t{bk} * bq);
    k = c.take<float>(int64_t{bk} * d_pad);
    v = c.take<float>(int64_t{bk} * d_pad);
    dk = c.take<float>(int64_t{bk} * d_pad);
    dv = c.take<float>(int64_t{bk} * d_pad);
    lse = c.take<float>(bq);
    delta = c.take<float>(bq);
    q_pos = c.take<float>(bq);
    slope = c.take<float>(bq);
    row_a = c.take<float>(d_pad);
    row_b = c.take<float>(d_pad);
    dq_sum = c.take<float>(int64_t{bq} * d_pad);
    dq_scale = c.take<float>(bq);
    lo = c.take<int32_t>(bq);
    hi = c.take<int32_t>(bq);
  }
};

struct BackwardPlan {
  const Geometry& g;
  int32_t chunk_blocks;   // key blocks per chunk
  int32_t chunks;         // chunk slots per sequence (the largest sequence's count)
  int64_t q_rows;         // query tokens of the whole batch (padded: batch * seqlen_q)
  float* dq_partial;      // [chunks][q_rows][heads_q][d_pad]
  float* delta;           // D, in the LSE layout

  int64_t token(int32_t b, const Sequence& s, int32_t i) const {
    return g.varlen ? s.q_start + i : int64_t{b} * g.p.seqlen_q + i;
  }
  float* dq_row(int32_t chunk, int64_t token_index, int32_t h) const {
    return dq_partial + ((chunk * q_rows + token_index) * g.p.heads_q + h) * g.d_pad;
  }
};

// D_i = sum_k dO[i][k] * O[i][k] for every query of (b, h).
void compute_delta(const BackwardPlan& plan, const IsaKernels& isa, BackwardScratch& w, int32_t b, int32_t h) {
  const Geometry& g = plan.g;
  const fa_attn_params& p = g.p;
  const Sequence s = g.sequence(b);
  for (int32_t i = 0; i < s.len_q; ++i) {
    isa.load_rows(p.dtype, g.row(p.dout, b, s.q_start, i, h), 0, 1, g.d, 1.0f, w.row_a, g.d_pad, g.d_pad);
    isa.load_rows(p.dtype, g.row(p.o, b, s.q_start, i, h), 0, 1, g.d, 1.0f, w.row_b, g.d_pad, g.d_pad);
    float sum = 0.0f;
    for (int32_t k = 0; k < g.d; ++k) sum += w.row_a[k] * w.row_b[k];
    plan.delta[g.lse_index(b, h, s, i)] = sum;
  }
}

// One query block of head h against the key block [k0, k0 + keys) whose K/V tiles are in w.k / w.v.
void backward_pair(const BackwardPlan& plan, const IsaKernels& isa, BackwardScratch& w, int32_t b, int32_t h, int32_t chunk,
                   const Sequence& s, int32_t q0, int32_t k0, int32_t keys) {
  const Geometry& g = plan.g;
  const fa_attn_params& p = g.p;
  const int32_t bq = kBackwardBlockQ, d = g.d, d_pad = g.d_pad;
  const int32_t rows = std::min(bq, s.len_q - q0), cols = round_up(rows, 8);
  const BlockVisibility vis = block_visibility(g, s, q0, rows, cols, w.lo, w.hi);
  if (!vis.any() || vis.key_hi < k0 || vis.key_lo > k0 + keys - 1) return;
  const bool full = vis.tile_fully_visible(k0, k0 + keys - 1);

  const void* q_rows = g.row(p.q, b, s.q_start, q0, h);
  const void* do_rows = g.row(p.dout, b, s.q_start, q0, h);
  isa.load_rows_transposed(p.dtype, q_rows, p.q.row_stride, rows, d, g.r.scale, w.qt, bq, cols);
  isa.load_rows(p.dtype, q_rows, p.q.row_stride, rows, d, g.r.scale, w.qs, d_pad, d_pad);
  isa.load_rows_transposed(p.dtype, do_rows, p.dout.row_stride, rows, d, 1.0f, w.dot, bq, cols);
  isa.load_rows(p.dtype, do_rows, p.dout.row_stride, rows, d, 1.0f, w.dorow, d_pad, d_pad);
  for (int32_t c = 0; c < cols; ++c) {
    const float lse = c < rows ? p.lse[g.lse_index(b, h, s, q0 + c)] : -INFINITY;
    w.lse[c] = std::isinf(lse) ? INFINITY : lse;  // no visible key (LSE +inf) or a padding column: P = exp(s - inf) = 0
    w.delta[c] = c < rows ? plan.delta[g.lse_index(b, h, s, q0 + c)] : 0.0f;
    w.q_pos[c] = static_cast<float>(q0 + c + s.len_k - s.len_q);
    w.slope[c] = g.alibi_slope(b, h);
  }
  const bool softcap = p.softcap > 0.0f;
  const ScoreMods mods{p.softcap, p.alibi_mode != FA_ALIBI_NONE ? w.slope : nullptr, w.q_pos, full ? nullptr : w.lo, full ? nullptr : w.hi,
                       softcap ? w.grad : nullptr};

  isa.gemm({keys, cols, d, w.k, d_pad, 1, w.qt, bq, w.st, bq, GemmMode::kOverwrite, nullptr});        // S^T = K.Qs^T
  isa.transform_scores(w.st, bq, keys, cols, k0, mods);
  isa.probs_from_lse(w.st, w.pt, bq, keys, cols, w.lse);                                            // P^T
  isa.gemm({keys, d_pad, rows, w.pt, bq, 1, w.dorow, d_pad, w.dv, d_pad, GemmMode::kAccumulate, nullptr});  // dV += P^T.dO
  isa.gemm({keys, cols, d, w.v, d_pad, 1, w.dot, bq, w.dpt, bq, GemmMode::kOverwrite, nullptr});       // dP^T = V.dO^T
  isa.score_grads(w.dpt, w.pt, softcap ? w.grad : nullptr, bq, keys, cols, w.delta);                // dS^T
  isa.gemm({keys, d_pad, rows, w.dpt, bq, 1, w.qs, d_pad, w.dk, d_pad, GemmMode::kAccumulate, nullptr});  // dK += dS^T.Qs
  isa.gemm({rows, d_pad, keys, w.dpt, 1, bq, w.k, d_pad, plan.dq_row(chunk, plan.token(b, s, q0), h),        // dQ += dS.K
            int64_t{p.heads_q} * d_pad, GemmMode::kAccumulate, nullptr});
}

void backward_chunk(const BackwardPlan& plan, const IsaKernels& isa, BackwardScratch& w, int32_t b, int32_t kvh, int32_t chunk) {
  const Geometry& g = plan.g;
  const fa_attn_params& p = g.p;
  const int32_t bq = kBackwardBlockQ, bk = kBackwardBlockK, d = g.d, d_pad = g.d_pad;
  const Sequence s = g.sequence(b);
  const int32_t key_blocks = (s.len_k + bk - 1) / bk;
  const int32_t first = chunk * plan.chunk_blocks, last = std::min(key_blocks, first + plan.chunk_blocks);
  for (int32_t kb = first; kb < last; ++kb) {
    const int32_t k0 = kb * bk, keys = std::min(bk, s.len_k - k0);
    // Contiguous fp32 copies even of fp32 inputs: strided BSHD rows crowd a few L1 sets (see forward.cpp).
    isa.load_rows(p.dtype, g.row(p.k, b, s.k_start, k0, kvh), p.k.row_stride, keys, d, 1.0f, w.k, d_pad, d_pad);
    isa.load_rows(p.dtype, g.row(p.v, b, s.k_start, k0, kvh), p.v.row_stride, keys, d, 1.0f, w.v, d_pad, d_pad);
    std::fill(w.dk, w.dk + int64_t{keys} * d_pad, 0.0f);
    std::fill(w.dv, w.dv + int64_t{keys} * d_pad, 0.0f);
    int32_t q_first, q_last;
    g.queries_seeing(s, k0, k0 + keys - 1, q_first, q_last);
    for (int32_t h = kvh * g.r.group; h < (kvh + 1) * g.r.group; ++h)
      for (int32_t q0 = q_first / bq * bq; q0 <= q_last; q0 += bq)
        backward_pair(plan, isa, w, b, h, chunk, s, q0, k0, keys);
    isa.store_rows(p.dtype, w.dk, d_pad, keys, d, nullptr, g.row(p.dk, b, s.k_start, k0, kvh), p.dk.row_stride);
    isa.store_rows(p.dtype, w.dv, d_pad, keys, d, nullptr, g.row(p.dv, b, s.k_start, k0, kvh), p.dv.row_stride);
  }
}

// dQ of one query block of (b, h) = scale * (sum of the chunk partials, in chunk order), converted and stored.
void reduce_dq(const BackwardPlan& plan, const IsaKernels& isa, BackwardScratch& w, int32_t b, int32_t h, int32_t q0) {
  const Geometry& g = plan.g;
  const fa_attn_params& p = g.p;
  const Sequence s = g.sequence(b);
  const int32_t rows = std::min(kBackwardBlockQ, s.len_q - q0), d_pad = g.d_pad;
  for (int32_t r = 0; r < rows; ++r) {
    float* sum = w.dq_sum + int64_t{r} * d_pad;
    const int64_t token = plan.token(b, s, q0 + r);
    std::copy(plan.dq_row(0, token, h), plan.dq_row(0, token, h) + d_pad, sum);
    for (int32_t chunk = 1; chunk < plan.chunks; ++chunk) {
      const float* part = plan.dq_row(chunk, token, h);
      for (int32_t k = 0; k < d_pad; ++k) sum[k] += part[k];
    }
    w.dq_scale[r] = g.r.scale;
  }
  isa.store_rows(p.dtype, w.dq_sum, d_pad, rows, g.d, w.dq_scale, g.row(p.dq, b, s.q_start, q0, h), p.dq.row_stride);
}

}  // namespace

int32_t flash_backward(const fa_attn_params& p, const IsaKernels& isa) {
  const Geometry g(p);
  const int32_t bq = kBackwardBlockQ, bk = kBackwardBlockK;
  const int64_t pairs = int64_t{p.batch} * p.heads_kv;
  const int32_t max_key_blocks = std::max(1, (p.seqlen_k + bk - 1) / bk);
  const int64_t wanted_chunks = pairs >= kMinBackwardTasks ? 1 : (kMinBackwardTasks + pairs - 1) / pairs;
  const int32_t chunk_blocks = static_cast<int32_t>((max_key_blocks + wanted_chunks - 1) / wanted_chunks);
  const int32_t chunks = (max_key_blocks + chunk_blocks - 1) / chunk_blocks;
  const int64_t q_rows = g.varlen ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  const int64_t lse_count = q_rows * p.heads_q;

  Workspace dq_partial(checked_bytes("the backward's dQ accumulators",
                                     {static_cast<uint64_t>(chunks), static_cast<uint64_t>(lse_count),
                                      static_cast<uint64_t>(g.d_pad), sizeof(float)}),
                       "the backward's dQ accumulators");
  Workspace delta(checked_bytes("the backward's D = rowsum(dO*O)", {static_cast<uint64_t>(lse_count), sizeof(float)}),
                  "the backward's D = rowsum(dO*O)");
  const BackwardPlan plan{g, chunk_blocks, chunks, q_rows, dq_partial.as<float>(), delta.as<float>()};

  PerWorker<BackwardScratch> slices("backward scratch", worker_count(), g.d_pad);

  const int64_t heads = int64_t{p.batch} * p.heads_q;
  parallel_for(heads, [&](int64_t task, int worker) {
    compute_delta(plan, isa, slices[worker], static_cast<int32_t>(task / p.heads_q), static_cast<int32_t>(task % p.heads_q));
  });
  parallel_for(pairs * chunks, [&](int64_t task, int worker) {
    const int32_t chunk = static_cast<int32_t>(task % chunks);
    const int64_t pair = task / chunks;
    backward_chunk(plan, isa, slices[worker], static_cast<int32_t>(pair / p.heads_kv), static_cast<int32_t>(pair % p.heads_kv),
                   chunk);
  });
  const int64_t q_blocks = (p.seqlen_q + bq - 1) / bq;  // per sequence; varlen: of the longest
  parallel_for(heads * q_blocks, [&](int64_t task, int worker) {
    const int32_t b = static_cast<int32_t>(task / (p.heads_q * q_blocks));
    const int32_t h = static_cast<int32_t>(task / q_blocks % p.heads_q);
    const int32_t q0 = static_cast<int32_t>(task % q_blocks) * bq;
    if (q0 < g.sequence(b).len_q) reduce_dq(plan, isa, slices[worker], b, h, q0);
  });
  return is_avx2(isa) ? kFlashBackwardAvx2 : kFlashBackwardPortable;
}

}  // namespace fa::cpu
