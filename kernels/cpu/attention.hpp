// attention.hpp — what the CPU attention drivers (forward.cpp, backward.cpp, naive.cpp, kvcache.cpp) share: where a row
// of a tensor lives, the per-sequence geometry of padded and varlen batches, the visible key range of a query, the
// kernel identities reported in fa_info / out_kernel, and the forward task of forward.cpp and kvcache.cpp.
//
// Layout (flash-attn BSHD): element (b, token t, head h, k) of a tensor sits at
//   data + b*batch_stride + t*row_stride + h*head_stride + k       (varlen: b*batch_stride dropped, t = global token)
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/fa_common.hpp"
#include "isa.hpp"
#include "memory.hpp"

namespace fa::cpu {

// Kernel ids (stable: fa_info lists them, out_kernel reports them, fa_plan names them).
enum KernelId : int32_t {
  kFlashForwardAvx2 = 1,
  kFlashForwardPortable = 2,
  kFlashBackwardAvx2 = 3,
  kFlashBackwardPortable = 4,
  kNaiveForwardAvx2 = 5,
  kNaiveForwardPortable = 6,
};

const char* kernel_name(int32_t id);

// Tile sizes. Forward: a task has kForwardBlockQ (query head, query) columns (forward.cpp); K/V stream through in blocks of
// kForwardBlockK keys. Per task the working set is Q^T (d x Bq) + S^T (Bk x Bq) + O (Bq x d) + K, V (Bk x d) floats:
// 216 KiB for d = 64 and 664 KiB for d = 256, inside a 1 MiB L2. A large Bq amortises the per-block K/V copy (its
// cost is 1/Bq of the block's FLOPs); Bk bounds the S^T tile. All are multiples of 16 (query columns of S^T are
// 16-float strips) and of 6 (the AVX2 micro-tile height).
constexpr int32_t kForwardBlockQ = 192;
constexpr int32_t kForwardBlockK = 96;
constexpr int32_t kBackwardBlockQ = 96;
constexpr int32_t kBackwardBlockK = 96;

inline int32_t round_up(int32_t x, int32_t multiple) { return (x + multiple - 1) / multiple * multiple; }

struct Sequence {
  int64_t q_start, k_start;  // first token (varlen: global index into the packed tensors; padded: 0)
  int32_t len_q, len_k;
};

struct Geometry {
  const fa_attn_params& p;
  Resolved r;
  bool varlen;
  int32_t d, d_pad;  // head_dim, and rounded up to the 8-float vector

  explicit Geometry(const fa_attn_params& params)
      : p(params), r(resolve(params)), varlen(is_varlen(params)), d(params.head_dim), d_pad(round_up(params.head_dim, 8)) {}

  Sequence sequence(int32_t b) const {
    if (!varlen) return {0, 0, p.seqlen_q, p.seqlen_k};
    return {p.cu_seqlens_q[b], p.cu_seqlens_k[b], p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b],
            p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]};
  }

  // The dtype of one of p's tensors: o is in the output dtype (fp8 inputs write fp16 / bf16), every other in p.dtype.
  int32_t dtype_of(const fa_tensor& t) const { return &t == &p.o ? output_dtype(p) : p.dtype; }

  // Address of row `token` (relative to the sequence start) of head h in tensor t, one of p's tensors.
  void* row(const fa_tensor& t, int32_t b, int64_t seq_start, int64_t token, int32_t h) const {
    const int64_t offset = (varlen ? 0 : b * t.batch_stride) + (seq_start + token) * t.row_stride + h * t.head_stride;
    return static_cast<char*>(t.data) + offset * static_cast<int64_t>(dtype_size(dtype_of(t)));
  }

  // Index of (b, h, query i) in the fp32 LSE array: (batch, heads_q, seqlen_q), varlen (heads_q, total_q).
  int64_t lse_index(int32_t b, int32_t h, const Sequence& s, int32_t i) const {
    return varlen ? static_cast<int64_t>(h) * p.total_q + s.q_start + i
                  : (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
  }

  float alibi_slope(int32_t b, int32_t h) const {
    if (p.alibi_mode == FA_ALIBI_PER_HEAD) return p.alibi_slopes[h];
    if (p.alibi_mode == FA_ALIBI_PER_BATCH_HEAD) return p.alibi_slopes[static_cast<int64_t>(b) * p.heads_q + h];
    return 0.0f;
  }

  // Keys visible from query i of sequence s: [lo, hi], empty when lo > hi. With offset = len_k - len_q (bottom-right
  // alignment): lo = i + offset - window_left, hi = i + offset + window_right (causal folded into window_right).
  void visible_keys(const Sequence& s, int32_t i, int32_t& lo, int32_t& hi) const {
    const int64_t diagonal = static_cast<int64_t>(i) + s.len_k - s.len_q;
    const int64_t low = r.win_left < 0 ? 0 : std::max<int64_t>(0, diagonal - r.win_left);
    const int64_t high = r.win_right < 0 ? s.len_k - 1 : std::min<int64_t>(s.len_k - 1, diagonal + r.win_right);
    lo = static_cast<int32_t>(std::min<int64_t>(low, INT32_MAX));
    hi = static_cast<int32_t>(std::max<int64_t>(high, -1));
  }

  // Queries that see at least one key of [k0, k1]: the inverse of visible_keys, clamped to [0, len_q).
  void queries_seeing(const Sequence& s, int32_t k0, int32_t k1, int32_t& first, int32_t& last) const {
    const int64_t offset = static_cast<int64_t>(s.len_k) - s.len_q;
    const int64_t low = r.win_right < 0 ? 0 : std::max<int64_t>(0, k0 - offset - r.win_right);
    const int64_t high = r.win_left < 0 ? s.len_q - 1 : std::min<int64_t>(s.len_q - 1, k1 - offset + r.win_left);
    first = static_cast<int32_t>(std::min<int64_t>(low, INT32_MAX));
    last = static_cast<int32_t>(std::max<int64_t>(high, -1));
  }
};

// Visibility of one query block against the keys: per column lo/hi (padding columns get an empty range), the union
// [key_lo, key_hi] of the non-empty ranges, and the tightest common range [common_lo, common_hi] (a key tile inside
// it needs no mask).
struct BlockVisibility {
  int32_t key_lo = INT32_MAX, key_hi = -1;
  int32_t common_lo = 0, common_hi = INT32_MAX;
  bool any() const { return key_lo <= key_hi; }
  bool tile_fully_visible(int32_t k0, int32_t k1) const { return common_lo <= k0 && k1 <= common_hi; }
};

inline BlockVisibility block_visibility(const Geometry& g, const Sequence& s, int32_t q0, int32_t rows, int32_t cols_pad,
                                        int32_t* lo, int32_t* hi) {
  BlockVisibility v;
  for (int32_t c = 0; c < cols_pad; ++c) {
    if (c >= rows) {
      lo[c] = INT32_MAX;
      hi[c] = -1;
      continue;
    }
    g.visible_keys(s, q0 + c, lo[c], hi[c]);
    v.common_lo = std::max(v.common_lo, lo[c]);
    v.common_hi = std::min(v.common_hi, hi[c]);
    if (lo[c] > hi[c]) continue;
    v.key_lo = std::min(v.key_lo, lo[c]);
    v.key_hi = std::max(v.key_hi, hi[c]);
  }
  return v;
}

// The drivers. Each runs over the thread pool and returns the kernel id it used; the caller has validated p.
int32_t flash_forward(const fa_attn_params& p, const IsaKernels& isa);
int32_t flash_backward(const fa_attn_params& p, const IsaKernels& isa);
int32_t naive_forward(const fa_attn_params& p, const IsaKernels& isa);
// KV-cache attention (kvcache.cpp); the caller has validated p and its int32 arrays. Sets p.out_num_splits.
int32_t kvcache_forward(fa_kvcache_params& p, const IsaKernels& isa);

inline bool is_avx2(const IsaKernels& isa) { return std::strcmp(isa.name, "avx2") == 0; }

// Carves 64-byte-aligned typed buffers out of one block. A Carver over nullptr only measures: the drivers run their
// layout once to size a Workspace, then again over each worker's slice of it.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    T* out = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (count * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
    return out;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// One counted Workspace holding a Scratch (a struct of buffers carved by its constructor from a Carver) for every
// pool worker; scratch[worker] is that worker's. Scratch is constructed from (Carver&, args...).
template <typename Scratch>
class PerWorker {
 public:
  template <typename... Args>
  PerWorker(const char* what, int workers, const Args&... args) {
    Carver sizer(nullptr);
    Scratch{sizer, args...};
    const int64_t per_worker = sizer.used();
    block_ = Workspace(checked_bytes(what, {static_cast<uint64_t>(per_worker), static_cast<uint64_t>(workers)}), what);
    for (int w = 0; w < workers; ++w) {
      Carver carve(block_.as<char>() + w * per_worker);
      slices_.emplace_back(carve, args...);
    }
  }
  Scratch& operator[](int worker) { return slices_[worker]; }

 private:
  Workspace block_;
  std::vector<Scratch> slices_;
};

// One forward task's fp32 tiles (forward.cpp, kvcache.cpp): Q^T, S^T, O, K, V and the per-column softmax state.
struct ForwardScratch {
  float *qt, *st, *o, *k, *v, *m, *l, *alpha, *q_pos, *slope, *inv_l;
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
    slope = c.take<float>(bq);
    inv_l = c.take<float>(bq);
    lo = c.take<int32_t>(bq);
    hi = c.take<int32_t>(bq);
  }
};

// The columns of one forward task (forward.cpp, kvcache.cpp): `heads` query heads from h0 (all sharing kv head kvh) x
// `queries` queries from q0 of sequence b; column c = j * queries + i is head h0 + j, query q0 + i.
struct ForwardColumns {
  int32_t b, kvh, h0, heads, q0, queries;
  int32_t count() const { return heads * queries; }
};

// Keys [begin, end) a forward task visits: begin is a key-block start; empty when begin >= end.
struct KeyRange {
  int32_t begin, end;
};

// One forward task's online softmax (forward.cpp's file comment has the algorithm), written once for the plain and the
// KV-cache forward: the columns' visibility, O = 0, m = -inf, l = 0; if the keys picked are not empty, Q^T and per key
// block S^T = K.Q^T, the score mods, the softmax step and O = diag(alpha) O + P.V; finally inv_l = 1 / l (0 where no
// key was seen). pick_keys(vis) -> KeyRange chooses the keys from the visibility (split-KV: one split's share);
// load_kv(k0, keys) fills w.k and w.v with keys [k0, k0 + keys) in fp32. Force-inlined so that each driver's loop,
// with its loader, is compiled as if written in place.
template <typename PickKeys, typename LoadKv>
inline __attribute__((always_inline)) void forward_task(const Geometry& g, const IsaKernels& isa, ForwardScratch& w,
                                                        const ForwardColumns& t, const Sequence& s, PickKeys pick_keys,
                                                        LoadKv load_kv) {
  const fa_attn_params& p = g.p;
  const int32_t bq = kForwardBlockQ, bk = kForwardBlockK, d = g.d, d_pad = g.d_pad;
  const int32_t n = t.count(), cols = round_up(n, 8);
  // Visibility depends on the query only: computed for the first head's columns, copied to the others.
  const BlockVisibility vis = block_visibility(g, s, t.q0, t.queries, t.queries, w.lo, w.hi);
  for (int32_t c = t.queries; c < cols; ++c) {
    w.lo[c] = c < n ? w.lo[c % t.queries] : INT32_MAX;
    w.hi[c] = c < n ? w.hi[c % t.queries] : -1;
  }

  std::fill(w.o, w.o + int64_t{n} * d_pad, 0.0f);
  std::fill(w.m, w.m + cols, -INFINITY);
  std::fill(w.l, w.l + cols, 0.0f);
  const KeyRange keys_seen = pick_keys(vis);
  if (keys_seen.begin < keys_seen.end) {
    // fp8: q is dequantised with its factor, folded into the softmax scale
    const float q_scale = g.r.scale * descale_at(p.q_descale, t.b, t.kvh);
    for (int32_t j = 0; j < t.heads; ++j)  // the last head's call also zeroes the padding columns
      isa.load_rows_transposed(p.dtype, g.row(p.q, t.b, s.q_start, t.q0, t.h0 + j), p.q.row_stride, t.queries, d,
                               q_scale, w.qt + j * t.queries, bq, j + 1 < t.heads ? t.queries : cols - j * t.queries);
    const bool alibi = p.alibi_mode != FA_ALIBI_NONE;
    for (int32_t c = 0; c < cols; ++c) {
      w.q_pos[c] = static_cast<float>(t.q0 + c % t.queries + s.len_k - s.len_q);
      if (alibi) w.slope[c] = c < n ? g.alibi_slope(t.b, t.h0 + c / t.queries) : 0.0f;
    }
    ScoreMods mods{p.softcap, alibi ? w.slope : nullptr, w.q_pos, nullptr, nullptr, nullptr};
    for (int32_t k0 = keys_seen.begin; k0 < keys_seen.end; k0 += bk) {
      const int32_t keys = std::min(bk, s.len_k - k0);
      const bool full = vis.tile_fully_visible(k0, k0 + keys - 1);
      mods.visible_lo = full ? nullptr : w.lo;
      mods.visible_hi = full ? nullptr : w.hi;
      load_kv(k0, keys);
      isa.gemm({keys, cols, d, w.k, d_pad, 1, w.qt, bq, w.st, bq, GemmMode::kOverwrite, nullptr});
      isa.transform_scores(w.st, bq, keys, cols, k0, mods);
      isa.softmax_step(w.st, w.st, bq, keys, cols, w.m, w.l, w.alpha);
      if (is_fp8(p.dtype)) isa.round_probs_e4m3(w.st, bq, keys, cols);
      isa.gemm({n, d_pad, keys, w.st, 1, bq, w.v, d_pad, w.o, d_pad, GemmMode::kRowScale, w.alpha});
    }
  }
  for (int32_t c = 0; c < n; ++c) w.inv_l[c] = w.l[c] > 0.0f ? 1.0f / w.l[c] : 0.0f;
}

// The log-sum-exp of column c after forward_task: m + log l, or `empty` where the column saw no key.
inline float forward_column_lse(const ForwardScratch& w, int32_t c, float empty) {
  return w.l[c] > 0.0f ? w.m[c] + std::log(w.l[c]) : empty;
}

// Writes a finished task's O rows (O / l) into p.o and, where p.lse is given, its LSE (+inf for a query without a
// visible key, flash-attn 2.x).
inline void store_forward_task(const Geometry& g, const IsaKernels& isa, const ForwardScratch& w, const ForwardColumns& t,
                               const Sequence& s) {
  const fa_attn_params& p = g.p;
  for (int32_t j = 0; j < t.heads; ++j)
    isa.store_rows(g.dtype_of(p.o), w.o + int64_t{j} * t.queries * g.d_pad, g.d_pad, t.queries, g.d, w.inv_l + j * t.queries,
                   g.row(p.o, t.b, s.q_start, t.q0, t.h0 + j), p.o.row_stride);
  if (p.lse != nullptr)
    for (int32_t c = 0; c < t.count(); ++c)
      p.lse[g.lse_index(t.b, t.h0 + c / t.queries, s, t.q0 + c % t.queries)] = forward_column_lse(w, c, INFINITY);
}

}  // namespace fa::cpu
