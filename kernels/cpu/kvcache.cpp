// kvcache.cpp — KV-cache attention on the CPU (fa_forward_kvcache; semantics in flashattn.h, design in docs/DESIGN.md
// "KV cache"). Three phases, each over the thread pool:
//   1. append: k_new (rotated when rotary is on) and v_new are written into the cache at tokens cache_seqlens[b]..;
//   2. with rotary, q is rotated once into a workspace of its dtype (rounded like flash-attn's in-kernel rotary);
//   3. attention: the forward's tiles (forward.cpp) with the keys gathered through the cache map. A task is (kv head,
//      up to Bq query-head x query columns of one sequence, one split of its key blocks); with one split the task
//      writes O and LSE, with more each split writes a normalised partial O and its LSE, merged by a last pass.
// The caller (api.cpp) has proven every cache row, page and rotary row in range (check_kvcache_values).
#include <cmath>
#include <vector>

#include "../common/fa_kvcache.hpp"
#include "attention.hpp"
#include "half.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace fa::cpu {

namespace {

float load_element(int32_t dtype, const void* base, int64_t index) {
  switch (dtype) {
    case FA_DTYPE_F16: return half_to_float(static_cast<const uint16_t*>(base)[index]);
    case FA_DTYPE_BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

void store_element(int32_t dtype, void* base, int64_t index, float x) {
  switch (dtype) {
    case FA_DTYPE_F16: static_cast<uint16_t*>(base)[index] = float_to_half(x); break;
    case FA_DTYPE_BF16: static_cast<uint16_t*>(base)[index] = float_to_bf16(x); break;
    default: static_cast<float*>(base)[index] = x;
  }
}

// Where token t of sequence b lives: page block_table[b][t / P] row t % P (paged), or cache sequence
// cache_batch_idx[b] (or b) row t (contiguous, one "page" of cache_rows tokens).
struct CacheMap {
  const fa_kvcache_params& p;

  int64_t page_of(int32_t b, int64_t token) const {
    if (p.block_table) return p.block_table[int64_t{b} * p.max_blocks + token / p.cache_rows];
    return p.cache_batch_idx ? p.cache_batch_idx[b] : b;
  }
  char* row(const fa_tensor& t, int32_t b, int64_t token, int32_t h) const {
    const int64_t in_page = p.block_table ? token % p.cache_rows : token;
    const int64_t offset = page_of(b, token) * t.batch_stride + in_page * t.row_stride + h * t.head_stride;
    return static_cast<char*>(t.data) + offset * static_cast<int64_t>(dtype_size(p.dtype));
  }
  // Tokens from `token` on that share its page (rows row_stride apart in memory).
  int64_t rows_in_page(int64_t token) const { return p.cache_rows - (p.block_table ? token % p.cache_rows : token); }
  int32_t leftpad(int32_t b) const { return p.cache_leftpad ? p.cache_leftpad[b] : 0; }
  // Keys sequence b attends to after the append.
  int32_t keys(int32_t b) const { return static_cast<int32_t>(kvcache_cached(p, p.cache_seqlens, b) + p.seqlen_new - leftpad(b)); }

  // Loads keys [k0, k0 + rows) of sequence b (counted from its leftpad) into a (rows x d_pad) fp32 tile, a page
  // segment at a time, times `descale` (fp8: the factor of (b, h); 1 otherwise).
  void load(const IsaKernels& isa, const fa_tensor& t, int32_t b, int32_t h, int32_t k0, int32_t rows, float descale,
            float* dst, int32_t d_pad) const {
    for (int32_t r = 0; r < rows;) {
      const int64_t token = int64_t{leftpad(b)} + k0 + r;
      const int32_t segment = static_cast<int32_t>(std::min<int64_t>(rows - r, rows_in_page(token)));
      isa.load_rows(p.dtype, row(t, b, token, h), t.row_stride, segment, p.head_dim, descale, dst + int64_t{r} * d_pad,
                    d_pad, d_pad);
      r += segment;
    }
  }
};

// dst = src with its first rotary_dim features rotated to `position` (flash-attn's apply_rotary: GPT-NeoX pairs
// (x[i], x[i + rotary_dim/2]), GPT-J pairs (x[2i], x[2i+1]); out = (x1 cos - x2 sin, x1 sin + x2 cos)), computed in
// fp32 and rounded to the dtype. src and dst are rows of head_dim elements; they may not alias.
void rotate_row(const fa_kvcache_params& p, const void* src, void* dst, int64_t position) {
  const int32_t half = p.rotary_dim / 2;
  for (int32_t x = p.rotary_dim; x < p.head_dim; ++x) store_element(p.dtype, dst, x, load_element(p.dtype, src, x));
  for (int32_t i = 0; i < half; ++i) {
    const int32_t a = p.rotary_interleaved ? 2 * i : i, b = p.rotary_interleaved ? 2 * i + 1 : i + half;
    const float c = load_element(p.dtype, p.rotary_cos, position * half + i);
    const float s = load_element(p.dtype, p.rotary_sin, position * half + i);
    const float x1 = load_element(p.dtype, src, a), x2 = load_element(p.dtype, src, b);
    store_element(p.dtype, dst, a, x1 * c - x2 * s);
    store_element(p.dtype, dst, b, x1 * s + x2 * c);
  }
}

char* tensor_row(const fa_kvcache_params& p, const fa_tensor& t, int32_t b, int64_t token, int32_t h) {
  const int64_t offset = b * t.batch_stride + token * t.row_stride + h * t.head_stride;
  return static_cast<char*>(t.data) + offset * static_cast<int64_t>(dtype_size(p.dtype));
}

// Phase 1: the new keys and values go into the cache, rows cache_seqlens[b] + j (never NULL with an append); copied
// byte for byte (fp8 rows are already in the cache's scale), k_new rotated when rotary is on (never with fp8).
void append(const fa_kvcache_params& p, const CacheMap& cache) {
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * dtype_size(p.dtype);
  parallel_for(int64_t{p.batch} * p.seqlen_new, [&](int64_t task, int) {
    const int32_t b = static_cast<int32_t>(task / p.seqlen_new), j = static_cast<int32_t>(task % p.seqlen_new);
    const int64_t token = int64_t{p.cache_seqlens[b]} + j;
    for (int32_t h = 0; h < p.heads_kv; ++h) {
      const char* k_src = tensor_row(p, p.k_new, b, j, h);
      char* k_dst = cache.row(p.k_cache, b, token, h);
      if (p.rotary_dim > 0) rotate_row(p, k_src, k_dst, token);
      else std::memmove(k_dst, k_src, row_bytes);
      std::memmove(cache.row(p.v_cache, b, token, h), tensor_row(p, p.v_new, b, j, h), row_bytes);
    }
  });
}

// A forward task's columns, and which of the splits of its key blocks it attends to.
struct Task : ForwardColumns {
  int32_t split;
};

// The partial results of split-KV: per (split, b, head, query) a normalised O row and its LSE (-inf when empty).
struct Partials {
  float* o = nullptr;
  float* lse = nullptr;
  int64_t index(const fa_kvcache_params& p, int32_t split, int32_t b, int32_t h, int32_t i) const {
    return ((int64_t{split} * p.batch + b) * p.heads_q + h) * p.seqlen_q + i;
  }
};

void attend_block(const Geometry& g, const CacheMap& cache, const IsaKernels& isa, ForwardScratch& w, const Task& t,
                  int32_t splits, const Partials& partials) {
  const fa_kvcache_params& kp = cache.p;
  const int32_t bk = kForwardBlockK;
  const Sequence s{0, 0, kp.seqlen_q, cache.keys(t.b)};
  // This split's share of the visible key blocks.
  auto split_share = [&](const BlockVisibility& vis) {
    const int32_t first_block = vis.any() ? vis.key_lo / bk : 0, blocks = vis.any() ? vis.key_hi / bk - first_block + 1 : 0;
    const int32_t per_split = (blocks + splits - 1) / splits;
    return KeyRange{(first_block + t.split * per_split) * bk, std::min(vis.key_hi + 1, (first_block + (t.split + 1) * per_split) * bk)};
  };
  // fp8: the cache rows are dequantised with the factors of sequence b (the appended rows share them).
  const float k_descale = descale_at(kp.k_descale, t.b, t.kvh), v_descale = descale_at(kp.v_descale, t.b, t.kvh);
  auto load_kv = [&](int32_t k0, int32_t keys) {
    cache.load(isa, kp.k_cache, t.b, t.kvh, k0, keys, k_descale, w.k, g.d_pad);
    cache.load(isa, kp.v_cache, t.b, t.kvh, k0, keys, v_descale, w.v, g.d_pad);
  };
  forward_task(g, isa, w, t, s, split_share, load_kv);
  if (splits == 1) {
    store_forward_task(g, isa, w, t, s);
    return;
  }
  for (int32_t j = 0; j < t.heads; ++j)
    isa.store_rows(FA_DTYPE_F32, w.o + int64_t{j} * t.queries * g.d_pad, g.d_pad, t.queries, g.d, w.inv_l + j * t.queries,
                   partials.o + partials.index(kp, t.split, t.b, t.h0 + j, t.q0) * g.d, g.d);
  for (int32_t c = 0; c < t.count(); ++c)
    partials.lse[partials.index(kp, t.split, t.b, t.h0 + c / t.queries, t.q0 + c % t.queries)] = forward_column_lse(w, c, -INFINITY);
}

// Merges the splits of every (b, head, query) row: LSE = log sum exp(LSE_s), O = sum exp(LSE_s - LSE) O_s.
void merge_splits(const Geometry& g, const IsaKernels& isa, int32_t splits, const Partials& partials, const fa_kvcache_params& kp) {
  const fa_attn_params& p = g.p;
  const int32_t d = g.d;
  parallel_for(int64_t{p.batch} * p.heads_q * p.seqlen_q, [&](int64_t row, int) {
    const int32_t i = static_cast<int32_t>(row % p.seqlen_q), h = static_cast<int32_t>(row / p.seqlen_q % p.heads_q);
    const int32_t b = static_cast<int32_t>(row / p.seqlen_q / p.heads_q);
    float m = -INFINITY;
    for (int32_t sp = 0; sp < splits; ++sp) m = std::max(m, partials.lse[partials.index(kp, sp, b, h, i)]);
    std::vector<float> sum(static_cast<size_t>(g.d_pad), 0.0f);
    float total = 0.0f;
    if (m > -INFINITY)
      for (int32_t sp = 0; sp < splits; ++sp) {
        const int64_t at = partials.index(kp, sp, b, h, i);
        const float weight = std::exp(partials.lse[at] - m);
        if (weight == 0.0f) continue;
        total += weight;
        for (int32_t x = 0; x < d; ++x) sum[x] += weight * partials.o[at * d + x];
      }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const Sequence s{0, 0, p.seqlen_q, 0};
    isa.store_rows(g.dtype_of(p.o), sum.data(), d, 1, d, &inv, g.row(p.o, b, 0, i, h), p.o.row_stride);
    if (p.lse != nullptr) p.lse[g.lse_index(b, h, s, i)] = total > 0.0f ? m + std::log(total) : INFINITY;
  });
}

}  // namespace

int32_t kvcache_forward(fa_kvcache_params& kp, const IsaKernels& isa) {
  const CacheMap cache{kp};
  if (kp.seqlen_new > 0) append(kp, cache);

  // Phase 2: the rotated q, contiguous (batch, seqlen_q, heads_q, d) in the dtype.
  fa_tensor q = kp.q;
  Workspace rotated;
  if (kp.rotary_dim > 0) {
    const uint64_t elements = checked_bytes("the rotated queries", {static_cast<uint64_t>(kp.batch), static_cast<uint64_t>(kp.seqlen_q),
                                                                    static_cast<uint64_t>(kp.heads_q), static_cast<uint64_t>(kp.head_dim)});
    rotated = Workspace(checked_bytes("the rotated queries", {elements, dtype_size(kp.dtype)}), "the rotated queries");
    q = {rotated.as<void>(), int64_t{kp.seqlen_q} * kp.heads_q * kp.head_dim, int64_t{kp.heads_q} * kp.head_dim, kp.head_dim};
    const bool consecutive = kvcache_rotary_consecutive(kp);
    parallel_for(int64_t{kp.batch} * kp.seqlen_q, [&](int64_t task, int) {
      const int32_t b = static_cast<int32_t>(task / kp.seqlen_q), i = static_cast<int32_t>(task % kp.seqlen_q);
      const int64_t position = kvcache_cached(kp, kp.cache_seqlens, b) + (consecutive ? i : 0);
      for (int32_t h = 0; h < kp.heads_q; ++h) rotate_row(kp, tensor_row(kp, kp.q, b, i, h), tensor_row(kp, q, b, i, h), position);
    });
  }

  // Phase 3: attention over the cache.
  fa_attn_params p = kvcache_attention_params(kp);
  p.q = q;
  const Geometry g(p);
  const int32_t heads_per_task = std::min(g.r.group, kForwardBlockQ);
  const int32_t head_chunks = (g.r.group + heads_per_task - 1) / heads_per_task;
  const int32_t queries_per_task = std::max(1, kForwardBlockQ / heads_per_task);
  const int32_t query_blocks = (kp.seqlen_q + queries_per_task - 1) / queries_per_task;
  const int64_t unsplit_tasks = int64_t{kp.heads_kv} * head_chunks * kp.batch * query_blocks;
  // Auto: split only when the unsplit tasks leave workers idle, keeping at least 4 key blocks per split.
  const int64_t key_blocks = (kvcache_capacity(kp) + kForwardBlockK - 1) / kForwardBlockK;
  int32_t splits = kp.num_splits;
  if (splits == 0)
    splits = static_cast<int32_t>(std::clamp<int64_t>(std::min((worker_count() + unsplit_tasks - 1) / unsplit_tasks, key_blocks / 4), 1, 256));
  Workspace partial_block;
  Partials partials;
  if (splits > 1) {
    const uint64_t rows = checked_bytes("the split-KV partials", {static_cast<uint64_t>(splits), static_cast<uint64_t>(kp.batch),
                                                                  static_cast<uint64_t>(kp.heads_q), static_cast<uint64_t>(kp.seqlen_q)});
    partial_block = Workspace(checked_bytes("the split-KV partials", {rows, static_cast<uint64_t>(kp.head_dim) + 1, sizeof(float)}),
                              "the split-KV partials");
    partials.lse = partial_block.as<float>();
    partials.o = partials.lse + rows;
  }
  PerWorker<ForwardScratch> slices("forward scratch", worker_count(), g.d_pad);
  parallel_for(unsplit_tasks * splits, [&](int64_t task, int worker) {
    Task t;
    t.split = static_cast<int32_t>(task % splits);
    int64_t rest = task / splits;
    const int32_t block = static_cast<int32_t>(rest % query_blocks);
    rest /= query_blocks;
    t.b = static_cast<int32_t>(rest % kp.batch);
    rest /= kp.batch;
    const int32_t chunk = static_cast<int32_t>(rest % head_chunks);
    t.kvh = static_cast<int32_t>(rest / head_chunks);
    t.h0 = t.kvh * g.r.group + chunk * heads_per_task;
    t.heads = std::min(heads_per_task, g.r.group - chunk * heads_per_task);
    t.q0 = block * queries_per_task;
    t.queries = std::min(queries_per_task, kp.seqlen_q - t.q0);
    attend_block(g, cache, isa, slices[worker], t, splits, partials);
  });
  if (splits > 1) merge_splits(g, isa, splits, partials, kp);
  kp.out_num_splits = splits;
  return is_avx2(isa) ? kFlashForwardAvx2 : kFlashForwardPortable;
}

}  // namespace fa::cpu
