// kvcache_view.cuh — where the keys of a KV-cache request live, for every GPU kernel that attends over a cache (the
// portable path and the CUDA decode kernel; nvcc and hipcc through gpu_compat.hpp). Token t of sequence b, counted
// from the sequence's first attended key (its leftpad), is cache token leftpad + t: row (leftpad + t) % page_size of
// page block_table[b][(leftpad + t) / page_size] when paged, else row leftpad + t of cache sequence
// cache_batch_idx[b] (b when NULL). The host proved every page, row and index in range (check_kvcache_values).
#pragma once

#include <cstdint>

#include "paths.hpp"

namespace fa {

struct KvCacheView {
  const int32_t* cache_seqlens;    // tokens cached before the append; NULL: every sequence holds fixed_len tokens
  const int32_t* block_table;      // (batch, max_blocks); NULL = contiguous
  const int32_t* cache_batch_idx;  // contiguous only; NULL = identity
  const int32_t* cache_leftpad;    // NULL = none
  int fixed_len;                   // used when cache_seqlens is NULL (a plain forward served by a cache kernel)
  int seqlen_new;                  // tokens appended this call (already written)
  int page_size;                   // paged: tokens per page; contiguous: the cache's rows per sequence
  int max_blocks;

  __device__ __forceinline__ int leftpad(int b) const { return cache_leftpad != nullptr ? cache_leftpad[b] : 0; }
  // Keys sequence b attends to: its cached tokens plus the appended ones, less the left padding.
  __device__ __forceinline__ int keys(int b) const {
    return (cache_seqlens != nullptr ? cache_seqlens[b] : fixed_len) + seqlen_new - leftpad(b);
  }
  // Element offset of key t (from the leftpad) of sequence b, head h, in a cache tensor with these strides.
  __device__ __forceinline__ int64_t offset(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int b, int t,
                                            int h) const {
    const int64_t token = static_cast<int64_t>(leftpad(b)) + t;
    int64_t page, row;
    if (block_table != nullptr) {
      page = block_table[static_cast<int64_t>(b) * max_blocks + token / page_size];
      row = token % page_size;
    } else {
      page = cache_batch_idx != nullptr ? cache_batch_idx[b] : b;
      row = token;
    }
    return page * batch_stride + row * row_stride + static_cast<int64_t>(h) * head_stride;
  }
};

inline KvCacheView kvcache_view(const fa_kvcache_params& p) {
  // NULL cache_seqlens: every sequence's cache is full (kvcache_cached).
  return KvCacheView{p.cache_seqlens, p.block_table, p.cache_batch_idx, p.cache_leftpad, static_cast<int>(kvcache_capacity(p)),
                     p.seqlen_new, p.cache_rows, p.max_blocks};
}

}  // namespace fa
