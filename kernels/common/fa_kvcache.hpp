// fa_kvcache.hpp — host-side validation and layout report of fa_kvcache_params (flashattn.h), shared by every backend:
// check_kvcache_params looks at the struct only (no pointer is followed); check_kvcache_values reads the int32 arrays
// once the backend has them in host memory. Both return the problems found, first one first.
#pragma once

#include "fa_common.hpp"

namespace fa {

inline int32_t kvcache_layout(int64_t* out, int32_t capacity) {
  const int64_t entries[FA_KVCACHE_LAYOUT_COUNT] = {
      sizeof(fa_kvcache_params),
      offsetof(fa_kvcache_params, struct_size),     offsetof(fa_kvcache_params, abi_version),
      offsetof(fa_kvcache_params, dtype),           offsetof(fa_kvcache_params, batch),
      offsetof(fa_kvcache_params, seqlen_q),        offsetof(fa_kvcache_params, seqlen_new),
      offsetof(fa_kvcache_params, heads_q),         offsetof(fa_kvcache_params, heads_kv),
      offsetof(fa_kvcache_params, head_dim),        offsetof(fa_kvcache_params, is_causal),
      offsetof(fa_kvcache_params, window_left),     offsetof(fa_kvcache_params, window_right),
      offsetof(fa_kvcache_params, scale),           offsetof(fa_kvcache_params, softcap),
      offsetof(fa_kvcache_params, alibi_mode),      offsetof(fa_kvcache_params, num_splits),
      offsetof(fa_kvcache_params, cache_batch),     offsetof(fa_kvcache_params, cache_rows),
      offsetof(fa_kvcache_params, max_blocks),      offsetof(fa_kvcache_params, rotary_dim),
      offsetof(fa_kvcache_params, seqlen_rotary),   offsetof(fa_kvcache_params, rotary_interleaved),
      offsetof(fa_kvcache_params, alibi_slopes),    offsetof(fa_kvcache_params, cache_seqlens),
      offsetof(fa_kvcache_params, block_table),     offsetof(fa_kvcache_params, cache_batch_idx),
      offsetof(fa_kvcache_params, cache_leftpad),   offsetof(fa_kvcache_params, rotary_cos),
      offsetof(fa_kvcache_params, rotary_sin),      offsetof(fa_kvcache_params, stream),
      offsetof(fa_kvcache_params, q),               offsetof(fa_kvcache_params, k_cache),
      offsetof(fa_kvcache_params, v_cache),         offsetof(fa_kvcache_params, k_new),
      offsetof(fa_kvcache_params, v_new),           offsetof(fa_kvcache_params, o),
      offsetof(fa_kvcache_params, lse),             offsetof(fa_kvcache_params, out_kernel),
      offsetof(fa_kvcache_params, out_num_splits),  offsetof(fa_kvcache_params, out_dtype),
      offsetof(fa_kvcache_params, reserved),        offsetof(fa_kvcache_params, q_descale),
      offsetof(fa_kvcache_params, k_descale),       offsetof(fa_kvcache_params, v_descale),
  };
  if (out != nullptr)
    for (int32_t i = 0; i < capacity && i < FA_KVCACHE_LAYOUT_COUNT; ++i) out[i] = entries[i];
  return FA_KVCACHE_LAYOUT_COUNT;
}

static_assert(sizeof(fa_kvcache_params) == 416, "fa_kvcache_params layout changed: bump FA_ABI_VERSION and ffi/layout.ts");
static_assert(offsetof(fa_kvcache_params, q) == 152 && offsetof(fa_kvcache_params, out_kernel) == 352 &&
                  offsetof(fa_kvcache_params, out_dtype) == 360 && offsetof(fa_kvcache_params, q_descale) == 368,
              "layout");

inline bool kvcache_paged(const fa_kvcache_params& p) { return p.block_table != nullptr; }

// Tokens one sequence's cache can hold: the contiguous rows, or every page its block table row names.
inline int64_t kvcache_capacity(const fa_kvcache_params& p) {
  return kvcache_paged(p) ? int64_t{p.max_blocks} * p.cache_rows : p.cache_rows;
}

// Tokens in sequence b's cache before the append: cache_seqlens[b], or the whole capacity when cache_seqlens is NULL
// (flash-attn: without cache_seqlens every sequence's cache is full; only allowed without an append).
inline int64_t kvcache_cached(const fa_kvcache_params& p, const int32_t* cache_seqlens, int32_t b) {
  return cache_seqlens != nullptr ? int64_t{cache_seqlens[b]} : kvcache_capacity(p);
}

// Whether the request has a preparation step (kvcache_prepare's kernel: the append, rotary on k_new and q) ahead of
// its attention.
inline bool kvcache_has_prepare_step(const fa_kvcache_params& p) { return p.seqlen_new > 0 || p.rotary_dim > 0; }

// Whether q rows take consecutive rotary positions (flash-attn: causal or local attention).
inline bool kvcache_rotary_consecutive(const fa_kvcache_params& p) {
  return p.is_causal != 0 || p.window_left >= 0 || p.window_right >= 0;
}

// The plain-forward parameters of the attention step (after the append and rotary): masks, scale, ALiBi, heads, the
// fp8 fields (out_dtype, descales) and q / o / lse as given, k / v the cache tensors, seqlen_k the cache capacity (at
// least every sequence's key count, so resolve()'s folding of far window bounds stays exact). Backends reuse their
// forward geometry with it; only the key addressing (through the cache map) differs.
inline fa_attn_params kvcache_attention_params(const fa_kvcache_params& p) {
  fa_attn_params a{};
  a.struct_size = sizeof a;
  a.abi_version = FA_ABI_VERSION;
  a.dtype = p.dtype;
  a.batch = p.batch;
  a.seqlen_q = p.seqlen_q;
  a.seqlen_k = static_cast<int32_t>(kvcache_capacity(p));
  a.heads_q = p.heads_q;
  a.heads_kv = p.heads_kv;
  a.head_dim = p.head_dim;
  a.is_causal = p.is_causal;
  a.window_left = p.window_left;
  a.window_right = p.window_right;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.alibi_mode = p.alibi_mode;
  a.alibi_slopes = p.alibi_slopes;
  a.num_splits = p.num_splits;
  a.stream = p.stream;
  a.q = p.q;
  a.k = p.k_cache;
  a.v = p.v_cache;
  a.o = p.o;
  a.lse = p.lse;
  a.out_dtype = p.out_dtype;
  a.q_descale = p.q_descale;
  a.k_descale = p.k_descale;
  a.v_descale = p.v_descale;
  return a;
}

inline std::vector<Problem> check_kvcache_params(const fa_kvcache_params* pp, const BackendLimits& lim) {
  std::vector<Problem> out;
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  auto unsupported = [&](const std::string& m) { out.push_back({FA_ERR_UNSUPPORTED, m}); };
  if (!check_struct_header(pp, "KV-cache params", out)) return out;
  const fa_kvcache_params& p = *pp;
  check_dtype_batch_queries(p, lim, out);
  check_fp8_fields(p, FA_DIR_FORWARD, out);
  if (p.seqlen_new < 0) invalid(format("seqlen_new must not be negative, got %d", p.seqlen_new));
  check_heads_and_semantics(p, lim, out);

  const bool paged = kvcache_paged(p);
  if (p.cache_batch < 1 || p.cache_rows < 1)
    invalid(format("the cache needs at least one %s and one row each, got %d and %d", paged ? "page" : "sequence",
                   p.cache_batch, p.cache_rows));
  if (paged && p.max_blocks < 1) invalid(format("a paged cache needs max_blocks of at least 1, got %d", p.max_blocks));
  if (!paged && p.max_blocks != 0)
    invalid(format("max_blocks is %d but block_table is NULL: a contiguous cache has max_blocks 0", p.max_blocks));
  if (paged && p.cache_batch_idx != nullptr)
    invalid("cache_batch_idx applies to contiguous caches only: a paged cache maps sequences through block_table");
  if (p.cache_batch >= 1 && p.cache_rows >= 1 && p.max_blocks >= 0 && kvcache_capacity(p) > kMaxSeqlen)
    unsupported(format("a cache of %lld tokens per sequence exceeds the supported maximum %d (2^28)",
                       static_cast<long long>(kvcache_capacity(p)), kMaxSeqlen));
  if ((p.k_new.data == nullptr) != (p.v_new.data == nullptr))
    invalid("k_new and v_new must be given together");
  else if ((p.k_new.data != nullptr) != (p.seqlen_new > 0))
    invalid(format("seqlen_new is %d but k_new / v_new are %s: give both with seqlen_new > 0, or neither with 0",
                   p.seqlen_new, p.k_new.data ? "given" : "NULL"));
  else if (p.seqlen_new > 0 && p.cache_seqlens == nullptr)
    invalid("appending needs cache_seqlens: without it every sequence's cache counts as full, leaving no room for k_new");

  if (p.rotary_dim < 0) invalid(format("rotary_dim must not be negative, got %d", p.rotary_dim));
  else if (p.rotary_dim > 0) {
    if (p.rotary_dim % 2 != 0) invalid(format("rotary_dim must be even, got %d", p.rotary_dim));
    else if (p.rotary_dim > p.head_dim)
      invalid(format("rotary_dim %d exceeds head_dim %d", p.rotary_dim, p.head_dim));
    if (p.rotary_cos == nullptr || p.rotary_sin == nullptr) invalid("rotary_dim is set but rotary_cos or rotary_sin is NULL");
    if (p.seqlen_rotary < 1) invalid(format("the rotary tables need at least one row, got seqlen_rotary %d", p.seqlen_rotary));
    if (p.rotary_interleaved != 0 && p.rotary_interleaved != 1)
      invalid(format("rotary_interleaved must be 0 or 1, got %d", p.rotary_interleaved));
    // Rotating fp8 numbers would round the rotated keys to fp8 a second time, in a scale chosen before the rotation.
    if (is_fp8(p.dtype))
      unsupported(format("rotary embedding is not applied to %s tensors: rotate q and k_new before quantising them, and "
                         "pass rotary_dim 0", dtype_name(p.dtype)));
  } else if (p.rotary_cos != nullptr || p.rotary_sin != nullptr) {
    invalid("rotary tables are given but rotary_dim is 0");
  }
  if (!out.empty()) return out;  // extents below rely on the scalars above

  if (int64_t{p.batch} * p.heads_q * p.seqlen_q > kMaxLseRows)
    unsupported(format("batch x heads_q x seqlen_q (%lld) exceeds the supported maximum 2^31 - 1",
                       static_cast<long long>(int64_t{p.batch} * p.heads_q * p.seqlen_q)));
  struct View {
    const char* name;
    const fa_tensor* t;
    int64_t batches, rows, heads;
    bool needed;
  };
  const View views[] = {
      {"q", &p.q, p.batch, p.seqlen_q, p.heads_q, true},
      {"k_cache", &p.k_cache, p.cache_batch, p.cache_rows, p.heads_kv, true},
      {"v_cache", &p.v_cache, p.cache_batch, p.cache_rows, p.heads_kv, true},
      {"k_new", &p.k_new, p.batch, p.seqlen_new, p.heads_kv, p.seqlen_new > 0},
      {"v_new", &p.v_new, p.batch, p.seqlen_new, p.heads_kv, p.seqlen_new > 0},
      {"o", &p.o, p.batch, p.seqlen_q, p.heads_q, true},
  };
  for (const View& v : views) {
    if (!v.needed) continue;
    if (v.t->data == nullptr) invalid(format("tensor %s is NULL", v.name));
    else if (view_extent(*v.t, v.batches, v.rows, v.heads, p.head_dim) < 0)
      invalid(format("tensor %s has a negative stride or its strides overflow 64-bit offsets", v.name));
  }
  return out;
}

// The checks that read the int32 arrays (host copies, each NULL where p's is; a NULL cache_seqlens means every cache is
// full). Every index the kernels form from them is proven in range here: cache rows, pages, rotary rows.
inline std::vector<Problem> check_kvcache_values(const fa_kvcache_params& p, const int32_t* cache_seqlens,
                                                 const int32_t* block_table, const int32_t* cache_batch_idx,
                                                 const int32_t* cache_leftpad) {
  std::vector<Problem> out;
  auto invalid = [&](const std::string& m) { out.push_back({FA_ERR_INVALID_ARGUMENT, m}); };
  const int64_t capacity = kvcache_capacity(p);
  const int64_t q_positions = p.rotary_dim > 0 && kvcache_rotary_consecutive(p) ? p.seqlen_q : 1;
  for (int32_t b = 0; b < p.batch && out.empty(); ++b) {
    const int64_t seqlen = kvcache_cached(p, cache_seqlens, b);
    const int64_t leftpad = cache_leftpad ? cache_leftpad[b] : 0;
    if (seqlen < 0) invalid(format("cache_seqlens[%d] is negative (%lld)", b, static_cast<long long>(seqlen)));
    else if (seqlen + p.seqlen_new > capacity)
      invalid(format("sequence %d holds %lld cached tokens plus %d new ones, more than the cache's %lld per sequence", b,
                     static_cast<long long>(seqlen), p.seqlen_new, static_cast<long long>(capacity)));
    else if (leftpad < 0 || leftpad > seqlen)
      invalid(format("cache_leftpad[%d] = %lld is outside 0..%s = %lld", b, static_cast<long long>(leftpad),
                     cache_seqlens ? format("cache_seqlens[%d]", b).c_str() : "the cache's capacity", static_cast<long long>(seqlen)));
    else if (cache_batch_idx && (cache_batch_idx[b] < 0 || cache_batch_idx[b] >= p.cache_batch))
      invalid(format("cache_batch_idx[%d] = %d is outside the cache's %d sequences", b, cache_batch_idx[b], p.cache_batch));
    else if (p.rotary_dim > 0 && seqlen + std::max<int64_t>(p.seqlen_new, q_positions) > p.seqlen_rotary)
      invalid(format("the rotary tables have %d rows, but sequence %d needs positions up to %lld", p.seqlen_rotary, b,
                     static_cast<long long>(seqlen + std::max<int64_t>(p.seqlen_new, q_positions) - 1)));
    else if (block_table) {
      // Only the pages holding the sequence's tokens [leftpad, seqlen + seqlen_new) are ever read or written.
      const int64_t end = seqlen + p.seqlen_new;
      for (int64_t page = leftpad / p.cache_rows; page * p.cache_rows < end && out.empty(); ++page) {
        const int32_t block = block_table[int64_t{b} * p.max_blocks + page];
        if (block < 0 || block >= p.cache_batch)
          invalid(format("block_table[%d][%lld] = %d is outside the cache's %d pages", b, static_cast<long long>(page), block,
                         p.cache_batch));
      }
    }
  }
  return out;
}

}  // namespace fa
