// portable_kvcache.cu — the KV-cache step every GPU path shares (kvcache_prepare: append k_new / v_new into the cache,
// rotary on k_new and q) and the portable KV-cache attention (nvcc and hipcc through gpu_compat.hpp).
//
// Attention: the portable forward's sweep (portable_fwd.cuh) with the keys gathered through KvCacheView. A block holds
// BM rows of one (sequence b, KV head hk): the (query i, query head of hk's group) pairs, query-major, so a KV head's
// keys are read once for its whole group (GQA packing; a decode step of group 8 fills 8 rows). Grid: x = row tiles x
// splits, y = heads_kv, z = batch. Split s of a block sweeps the s-th share of the block's visible key tiles; with more
// than one split each writes its normalised O and LSE as fp32 partials (workspace slot kWorkspaceSlotSplitPartials)
// and a merge kernel, one block per (b, query head, query), combines them: LSE = log sum exp(LSE_s),
// O = sum exp(LSE_s - LSE) O_s.
#include <algorithm>

#include "../gpu/kvcache_view.cuh"
#include "portable_fwd.cuh"

namespace fa {

// ---- kvcache_prepare ------------------------------------------------------------------------------------------------

namespace {

struct PrepareArgs {
  KvCacheView cache;
  fa_tensor k_new, v_new, k_cache, v_cache, q;
  void* q_rotated;                // contiguous (batch, seqlen_q, heads_q, head_dim); null without rotary
  const void *rotary_cos, *rotary_sin;
  int seqlen_new, seqlen_q, heads_kv, heads_q, head_dim, rotary_dim, interleaved, consecutive;
  int64_t append_elements;        // batch x seqlen_new x heads_kv x head_dim: of k_new, and as many of v_new
  int64_t q_elements;             // batch x seqlen_q x heads_q x head_dim with rotary, else 0
};

// Element x of the row `src` rotated to `position` (flash-attn's apply_rotary, the CPU's rotate_row): GPT-NeoX pairs
// (x[i], x[i + rotary_dim/2]), GPT-J pairs (x[2i], x[2i+1]); out = (x1 cos - x2 sin, x1 sin + x2 cos) in fp32, every
// product and sum rounded on its own (no fused multiply-add), then rounded to the dtype by the caller. Elements past
// rotary_dim are returned as they are.
template <typename T>
__device__ inline float rotated_element(const PrepareArgs& a, const T* src, int64_t position, int x) {
  if (x >= a.rotary_dim) return to_float(src[x]);
  const int half = a.rotary_dim / 2;
  const bool first = a.interleaved ? x % 2 == 0 : x < half;
  const int pair = a.interleaved ? x / 2 : (first ? x : x - half);
  const int partner = a.interleaved ? (first ? x + 1 : x - 1) : (first ? x + half : x - half);
  const float c = to_float(static_cast<const T*>(a.rotary_cos)[position * half + pair]);
  const float s = to_float(static_cast<const T*>(a.rotary_sin)[position * half + pair]);
  const float x1 = to_float(src[first ? x : partner]), x2 = to_float(src[first ? partner : x]);
  return first ? __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)) : __fadd_rn(__fmul_rn(x1, s), __fmul_rn(x2, c));
}

// Tokens sequence b held before this call's append (the view counts its keys from the leftpad, appended ones included).
__device__ inline int64_t cached_tokens(const KvCacheView& v, int b) {
  return static_cast<int64_t>(v.keys(b)) + v.leftpad(b) - v.seqlen_new;
}

__device__ inline int64_t row_offset(const fa_tensor& t, int64_t b, int64_t row, int64_t h) {
  return b * t.batch_stride + row * t.row_stride + h * t.head_stride;
}

// One thread per element, over [k_new | v_new | q]: the append copies (k rotated to its cache position when rotary is
// on) and the rotated queries. Elements of one row are independent: a rotated element reads its pair partner from the
// source, never from the destination. T = uint8_t: fp8 elements, copied byte for byte (rotary is refused with fp8).
template <typename T>
__global__ void prepare_kernel(const PrepareArgs a) {
  allow_next_grid();  // the attention kernel may be scheduled now (sm_90); it waits for these writes
  const int64_t total = 2 * a.append_elements + a.q_elements;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (e < 2 * a.append_elements) {
      const bool is_v = e >= a.append_elements;
      const int64_t rest = is_v ? e - a.append_elements : e;
      const int x = static_cast<int>(rest % a.head_dim);
      const int64_t row = rest / a.head_dim;
      const int h = static_cast<int>(row % a.heads_kv), j = static_cast<int>(row / a.heads_kv % a.seqlen_new);
      const int b = static_cast<int>(row / a.heads_kv / a.seqlen_new);
      const int64_t token = cached_tokens(a.cache, b) + j;
      const fa_tensor& src_t = is_v ? a.v_new : a.k_new;
      const fa_tensor& dst_t = is_v ? a.v_cache : a.k_cache;
      const T* src = static_cast<const T*>(src_t.data) + row_offset(src_t, b, j, h);
      T* dst = static_cast<T*>(dst_t.data) +
               a.cache.offset(dst_t.batch_stride, dst_t.row_stride, dst_t.head_stride, b,
                              static_cast<int>(token - a.cache.leftpad(b)), h);
      if constexpr (sizeof(T) == 1) dst[x] = src[x];
      else dst[x] = !is_v && a.rotary_dim > 0 ? from_float<T>(rotated_element(a, src, token, x)) : src[x];
    } else if constexpr (sizeof(T) == 2) {
      const int64_t rest = e - 2 * a.append_elements;  // also the element's index in the contiguous rotated q
      const int x = static_cast<int>(rest % a.head_dim);
      const int64_t row = rest / a.head_dim;
      const int h = static_cast<int>(row % a.heads_q), i = static_cast<int>(row / a.heads_q % a.seqlen_q);
      const int b = static_cast<int>(row / a.heads_q / a.seqlen_q);
      const int64_t position = cached_tokens(a.cache, b) + (a.consecutive ? i : 0);
      const T* src = static_cast<const T*>(a.q.data) + row_offset(a.q, b, i, h);
      static_cast<T*>(a.q_rotated)[rest] = from_float<T>(rotated_element(a, src, position, x));
    }
  }
}

}  // namespace

int32_t kvcache_prepare(fa_kvcache_params& p, const LaunchContext& ctx) {
  if (!kvcache_has_prepare_step(p)) return FA_OK;
  PrepareArgs a{};
  a.cache = kvcache_view(p);
  a.k_new = p.k_new, a.v_new = p.v_new, a.k_cache = p.k_cache, a.v_cache = p.v_cache, a.q = p.q;
  a.rotary_cos = p.rotary_cos, a.rotary_sin = p.rotary_sin;
  a.seqlen_new = p.seqlen_new, a.seqlen_q = p.seqlen_q, a.heads_kv = p.heads_kv, a.heads_q = p.heads_q;
  a.head_dim = p.head_dim, a.rotary_dim = p.rotary_dim, a.interleaved = p.rotary_interleaved;
  a.consecutive = kvcache_rotary_consecutive(p);
  // Validated sizes: batch, heads <= 65535, seqlen_q x heads_q x batch < 2^31, head_dim <= 256, seqlen_new <= 2^28.
  a.append_elements = int64_t{p.batch} * p.seqlen_new * p.heads_kv * p.head_dim;
  if (p.rotary_dim > 0) {
    a.q_elements = int64_t{p.batch} * p.seqlen_q * p.heads_q * p.head_dim;
    a.q_rotated = ctx.workspace.get(kWorkspaceSlotRotatedQ, static_cast<size_t>(a.q_elements) * dtype_size(p.dtype));
    if (a.q_rotated == nullptr) return FA_ERR_OUT_OF_MEMORY;  // the workspace has set the message
  }
  const int64_t total = 2 * a.append_elements + a.q_elements;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20));
  if (p.dtype == FA_DTYPE_F16) prepare_kernel<half_t><<<blocks, kThreads, 0, ctx.stream>>>(a);
  else if (p.dtype == FA_DTYPE_BF16) prepare_kernel<bf16_t><<<blocks, kThreads, 0, ctx.stream>>>(a);
  else prepare_kernel<uint8_t><<<blocks, kThreads, 0, ctx.stream>>>(a);  // fp8: bytes
  if (int32_t st = portable::check_launch("launching the KV-cache append and rotary kernel"); st != FA_OK) return st;
  if (p.rotary_dim > 0)
    p.q = fa_tensor{a.q_rotated, int64_t{p.seqlen_q} * p.heads_q * p.head_dim, int64_t{p.heads_q} * p.head_dim, p.head_dim};
  return FA_OK;
}

// ---- the portable KV-cache attention --------------------------------------------------------------------------------

namespace portable {
namespace {

// Everything the attention kernels read; the score fields carry score_mod's names (portable_common.cuh).
struct KvArgs {
  fa_tensor q, k, v, o;
  float* lse;                 // (batch, heads_q, seqlen_q), may be null
  float* partial_lse;         // splits > 1: (splits, batch, heads_q, seqlen_q), -inf for a split that saw no key
  float* partial_o;           // splits > 1: the same rows x head_dim, normalised
  const float* alibi_slopes;  // null when ALiBi is off
  int alibi_per_batch;
  KvCacheView cache;
  int batch, seqlen_q, heads_q, heads_kv, head_dim, group;
  float scale, softcap;
  int win_left, win_right;    // -1 = unbounded, causal folded in
  int splits;
  int vec16;
};

KvArgs make_kv_args(const fa_kvcache_params& p) {
  const Resolved r = resolve(kvcache_attention_params(p));
  KvArgs a{};
  a.q = p.q, a.k = p.k_cache, a.v = p.v_cache, a.o = p.o;
  a.lse = p.lse;
  a.alibi_slopes = p.alibi_mode == FA_ALIBI_NONE ? nullptr : p.alibi_slopes;
  a.alibi_per_batch = p.alibi_mode == FA_ALIBI_PER_BATCH_HEAD;
  a.cache = kvcache_view(p);
  a.batch = p.batch, a.seqlen_q = p.seqlen_q, a.heads_q = p.heads_q, a.heads_kv = p.heads_kv;
  a.head_dim = p.head_dim, a.group = r.group;
  a.scale = r.scale;
  a.softcap = p.softcap;
  a.win_left = r.win_left;
  a.win_right = r.win_right;
  bool vec = true;
  for (const fa_tensor* t : {&p.q, &p.k_cache, &p.v_cache, &p.o}) vec = vec && allows_vec16(*t, false);
  a.vec16 = vec;
  return a;
}

// Grid x stays within 2^24 blocks (row tiles x splits, and the merge's grid-stride rows): HIP counts a launch's threads
// in 32 bits, and 2^24 blocks of 128 threads keep that count below 2^31. Hence at most 2^24 packed rows per KV head.
constexpr int64_t kMaxGridX = int64_t{1} << 24;
constexpr int64_t kMaxPackedRows = int64_t{1} << 24;

// Split-KV: forced counts as given; auto (0) splits only when the unsplit blocks leave multiprocessors idle (aiming at
// two blocks each), keeping at least kMinKeysPerSplit cache tokens per split. Either way row tiles x splits stays
// within kMaxGridX.
constexpr int64_t kMinKeysPerSplit = 256;
constexpr int64_t kMaxAutoSplits = 128;

int32_t choose_splits(const fa_kvcache_params& p, const DeviceCaps& caps, int64_t row_tiles) {
  int64_t splits = p.num_splits;
  if (splits == 0) {
    const int64_t blocks = row_tiles * p.heads_kv * p.batch;
    const int64_t wanted = (2 * int64_t{std::max(caps.multiprocessors, 1)} + blocks - 1) / blocks;
    const int64_t by_keys = (kvcache_capacity(p) + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
    splits = std::clamp<int64_t>(std::min(wanted, by_keys), 1, kMaxAutoSplits);
  }
  return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>(splits, kMaxGridX / row_tiles)));
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS) kvcache_kernel(const KvArgs a) {
  __shared__ FwdShared<T, C> sm;

  const int split = blockIdx.x % a.splits, r0 = blockIdx.x / a.splits * C::BM;
  const int hk = blockIdx.y, b = blockIdx.z;
  const int rows = a.seqlen_q * a.group, rows_here = min(C::BM, rows - r0);
  // This thread's row: query i, query head h (rows past `rows` compute on zeros and write nothing).
  const int r = r0 + static_cast<int>(threadIdx.x) / C::LANES;
  const int i = r / a.group, h = hk * a.group + r % a.group;
  const bool vec = a.vec16 != 0;
  const Seq seq{a.seqlen_q, a.cache.keys(b), 0, 0, false};
  const ScoreMod mod = score_mod(a, seq, b, h);

  const T* q = static_cast<const T*>(a.q.data) + static_cast<int64_t>(b) * a.q.batch_stride;
  load_tile_rows<T, C::D, C::BM, C::THREADS>(
      sm.q,
      [&](int row) {
        const int rr = r0 + row;
        return q + static_cast<int64_t>(rr / a.group) * a.q.row_stride +
               static_cast<int64_t>(hk * a.group + rr % a.group) * a.q.head_stride;
      },
      rows_here, a.head_dim, vec);

  // The block's visible keys, and this split's share of their tiles.
  int n_begin, n_end;
  key_range(mod, r0 / a.group, (r0 + rows_here - 1) / a.group, &n_begin, &n_end);
  const int tiles = (n_end - n_begin + C::BN - 1) / C::BN, per_split = (tiles + a.splits - 1) / a.splits;
  const int s_begin = min(n_end, n_begin + split * per_split * C::BN);
  const int s_end = min(n_end, s_begin + per_split * C::BN);

  // Key n0 + row of sequence b, KV head hk, in cache tensor t.
  auto key_row = [&](const fa_tensor& t, int n0, int row) {
    return static_cast<const T*>(t.data) + a.cache.offset(t.batch_stride, t.row_stride, t.head_stride, b, n0 + row, hk);
  };
  RowState<C> st;
  sweep_keys<T, C>(sm, mod, i, s_begin, s_end,
                   [&](int n0, int rows_k) {
                     load_tile_rows<T, C::D, C::BN, C::THREADS>(
                         sm.k, [&](int row) { return key_row(a.k, n0, row); }, rows_k, a.head_dim, vec);
                     load_tile_rows<T, C::D, C::BN, C::THREADS>(
                         sm.v, [&](int row) { return key_row(a.v, n0, row); }, rows_k, a.head_dim, vec);
                   },
                   st);

  const float l = row_sum(st);
  if (r >= rows) return;
  const int64_t stat = (static_cast<int64_t>(b) * a.heads_q + h) * a.seqlen_q + i;  // lse layout
  const bool lane0 = threadIdx.x % C::LANES == 0;
  if (a.splits == 1) {
    T* out = static_cast<T*>(a.o.data) + static_cast<int64_t>(b) * a.o.batch_stride + static_cast<int64_t>(i) * a.o.row_stride +
             static_cast<int64_t>(h) * a.o.head_stride;
    store_row(st, l, out, a.head_dim, vec);
    if (a.lse != nullptr && lane0) a.lse[stat] = row_lse(st, l, INFINITY);
    return;
  }
  const int64_t partial = static_cast<int64_t>(split) * a.batch * a.heads_q * a.seqlen_q + stat;
  store_row(st, l, a.partial_o + partial * a.head_dim, a.head_dim, false);
  if (lane0) a.partial_lse[partial] = row_lse(st, l, -INFINITY);
}

// One block per row of the lse layout (b, query head, query): the splits' partials merged into O (dtype) and LSE.
constexpr int kMergeThreads = 64;

template <typename T>
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(const KvArgs a) {
  __shared__ float weight[256];  // num_splits <= 256 (validated)
  const int64_t rows = static_cast<int64_t>(a.batch) * a.heads_q * a.seqlen_q;
  for (int64_t stat = blockIdx.x; stat < rows; stat += gridDim.x) {
    const int i = static_cast<int>(stat % a.seqlen_q), h = static_cast<int>(stat / a.seqlen_q % a.heads_q);
    const int b = static_cast<int>(stat / a.seqlen_q / a.heads_q);
    float m = -INFINITY;
    for (int s = 0; s < a.splits; ++s) m = fmaxf(m, a.partial_lse[s * rows + stat]);
    __syncthreads();  // the previous row's readers are done with weight[]
    for (int s = threadIdx.x; s < a.splits; s += kMergeThreads)
      weight[s] = m == -INFINITY ? 0.f : expf(a.partial_lse[s * rows + stat] - m);
    __syncthreads();
    float total = 0.f;
    for (int s = 0; s < a.splits; ++s) total += weight[s];
    const float inv = total > 0.f ? 1.f / total : 0.f;
    T* out = static_cast<T*>(a.o.data) + static_cast<int64_t>(b) * a.o.batch_stride +
             static_cast<int64_t>(i) * a.o.row_stride + static_cast<int64_t>(h) * a.o.head_stride;
    for (int x = threadIdx.x; x < a.head_dim; x += kMergeThreads) {
      float acc = 0.f;
      for (int s = 0; s < a.splits; ++s)
        if (weight[s] > 0.f) acc = fmaf(weight[s], a.partial_o[(s * rows + stat) * a.head_dim + x], acc);
      out[x] = from_float<T>(acc * inv);
    }
    if (a.lse != nullptr && threadIdx.x == 0) a.lse[stat] = total > 0.f ? m + logf(total) : INFINITY;
  }
}

}  // namespace

bool supports_kvcache(const fa_kvcache_params& p, const DeviceCaps&, std::vector<std::string>& reasons) {
  const bool common = supports_common(kvcache_attention_params(p), reasons);
  const int64_t packed_rows = int64_t{p.seqlen_q} * (p.heads_q / p.heads_kv);
  if (packed_rows > kMaxPackedRows)
    reasons.push_back(format("packs seqlen_q x (heads_q / heads_kv) query rows per KV head, at most 2^24, got %lld",
                             static_cast<long long>(packed_rows)));
  return common && packed_rows <= kMaxPackedRows;
}

int32_t forward_kvcache(fa_kvcache_params& p, const LaunchContext& ctx) {
  KvArgs a = make_kv_args(p);
  return with_fwd_config(p.dtype, p.head_dim, [&](auto element, auto config) -> int32_t {
    using T = typename decltype(element)::type;
    using C = typename decltype(config)::type;
    const int64_t row_tiles = (int64_t{p.seqlen_q} * a.group + C::BM - 1) / C::BM;
    a.splits = choose_splits(p, *ctx.caps, row_tiles);
    const int64_t stat_rows = int64_t{p.batch} * p.heads_q * p.seqlen_q;
    if (a.splits > 1) {
      // At most 256 x (2^31 - 1) rows x 257 floats: no 64-bit overflow.
      const uint64_t rows = static_cast<uint64_t>(a.splits) * static_cast<uint64_t>(stat_rows);
      float* partials = static_cast<float*>(
          ctx.workspace.get(kWorkspaceSlotSplitPartials, rows * (static_cast<uint64_t>(p.head_dim) + 1) * sizeof(float)));
      if (partials == nullptr) return FA_ERR_OUT_OF_MEMORY;  // the workspace has set the message
      a.partial_lse = partials;
      a.partial_o = partials + rows;
    }
    p.out_num_splits = a.splits;
    const dim3 grid(static_cast<unsigned>(row_tiles * a.splits), p.heads_kv, p.batch);
    kvcache_kernel<T, C><<<grid, C::THREADS, 0, ctx.stream>>>(a);
    if (int32_t st = check_launch("launching the portable KV-cache attention kernel"); st != FA_OK) return st;
    if (a.splits == 1) return FA_OK;
    merge_kernel<T><<<static_cast<unsigned>(std::min(stat_rows, kMaxGridX)), kMergeThreads, 0, ctx.stream>>>(a);
    return check_launch("launching the portable split-KV merge kernel");
  });
}

}  // namespace portable
}  // namespace fa
