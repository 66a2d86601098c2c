// decode.cuh — attention of a few query rows over a long key sequence (decode, speculative decoding, KV-cache
// requests) on mma.sync tensor cores (sm_80+), one instantiation per (dtype, head dim).
//
// Decode is bound by reading K and V once: one query token per head does 4 FLOPs per key element, so the work per
// byte is tiny and the kernel must keep the memory system busy rather than the tensor cores. Three choices follow.
//   - GQA packing: the `group` query heads that share KV head hk become the rows of one tile (row r = query
//     r / group of head hk * group + r % group), so each key block is read once per KV head instead of once per
//     query head. 32 / 8 heads: 4 rows of the 16-row mma fragment carry work; the others are free compute.
//   - Warps split the keys, not the rows: the NW warps of a CTA share the same MF x 16 rows and each takes its own
//     16 keys of every key block; the partial (max, sum, O) of the warps merge through shared memory at the end
//     (the same log-sum-exp merge as split-KV, done in the CTA).
//   - A STAGES-deep cp.async ring of K and V blocks (BN = 16 NW keys each) keeps several blocks in flight per CTA;
//     split-KV spreads a sequence over enough CTAs to fill the GPU, each split an even share of the key blocks
//     (combine_kernel of combine.cuh merges them, launched so that it waits for this grid on the GPU rather than
//     behind it in the stream; on sm_90 this grid is launched the same way after the previous one).
//     (One bulk copy per key row, issued by a producer warp on the TMA engine, was measured at 0.6x of this ring:
//     docs/perf-cuda.md.)
// The tiles are swizzled whole 128-byte lines where the head dim allows (tile.cuh SwizzledRows), so each cp.async
// line of a key row lands in one shared-memory line.
// Keys are addressed through KvCacheView: a paged cache (block table, any page size), a contiguous cache (with
// cache_batch_idx and leftpad) or a plain K / V tensor (cache_seqlens NULL, fixed_len = seqlen_k) all look alike.
//
// FP8 (T = fp8_e4m3_t / fp8_e5m2_t, flashattn.h's semantics, no fp8 tensor cores needed): reading half the bytes is
// the whole gain, the products stay fp16. K and V blocks land as bytes in a deeper staging ring (the same 16-byte
// cp.async chunks, 16 values each), and each warp converts its own 16 keys of K and V into one fp16 stage of the
// tiles the ldmatrix code reads (only that warp reads those rows, so __syncwarp orders it); Q is converted once.
// The q x k descale factors of (b, hk) fold into the softmax multiplier, P is rounded to E4M3 on its way into the A
// fragments (the row sums keep the fp32 P) and O is multiplied by the v factor before the warps merge; o is written in
// the output type O (fp16 or bf16).
//
// The kernel's parts: DecodeCta (what a CTA works out once), load_packed_q, DecodeWarpState and decode_block (a
// warp's share of one key block), decode_merge_store (the warps' merge and the store).
// Per CTA (row block, KV head hk, batch b x split):
//   S_w  = Q K_w^T          (MF*16 x 16, warp w's 16 keys of the block)
//   online softmax of S_w    per warp, base 2, masks and the score transform as in the forward
//   O_w += P_w V_w          (MF*16 x D)
// then  M = max_w m_w,  L = sum_w l_w 2^(m_w - M),  O = sum_w 2^(m_w - M) O_w / L,  LSE = (M + log2 L) ln 2.
#pragma once

#include "../gpu/kvcache_view.cuh"
#include "attn.cuh"
#include "combine.cuh"
#include "fp8.cuh"

namespace fa::tc {

// The kernel arguments: the forward's (masks, scale, softcap, ALiBi, split partials; q / o / lse as in the plain
// forward; k / v are the cache tensors whose rows KvCacheView maps) plus the cache map.
struct DecodeArgs {
  AttnArgs a;
  KvCacheView kv;
  int rows;            // packed rows per (sequence, KV head): seqlen_q x group
  bool kv_evict_first;  // K / V lines enter the L2 as the first to evict (tc_paths.cu decides; KvCopy, 16-bit only)
  // The previous grid on the stream is the KV-cache append / rotary kernel (kvcache_prepare), an ordinary launch that
  // writes only the appended cache rows and the rotated q: every earlier write on the stream is complete, so key
  // blocks that hold no appended row may be read before griddepcontrol.wait (16-bit; tc_paths.cu sets it).
  bool old_keys_before_wait;
};

// How a 16-byte chunk of K or V is copied: plainly, or with the L2 evict-first policy. The K / V of a decode step are
// read once, so a stream about the L2's size need not displace (and force the write-back of) what the L2 holds.
// kMayEvict: whether the kernel has the second form at all (the 16-bit kernels; fp8 streams are not measured with it,
// and each form costs every decode unit compile time).
template <bool kMayEvict>
struct KvCopy {
  bool evict_first;
  uint64_t policy;
  __device__ __forceinline__ explicit KvCopy(bool evict)
      : evict_first(kMayEvict && evict), policy(kMayEvict && evict ? l2_evict_first_policy() : 0) {}
  __device__ __forceinline__ void operator()(void* smem, const void* gmem, bool valid) const {
    if (kMayEvict && evict_first) cp_async_16(smem, gmem, valid, policy);
    else cp_async_16(smem, gmem, valid);
  }
};

// ELEM: bytes per input element (2, or 1 for fp8). An fp8 stage is half the bytes of a 16-bit one, so fp8 keeps one
// more block in flight at head dims up to 128 (still two CTAs per H100 SM at 128: 109,056 bytes each) and as many at
// 256 (141,568 bytes: within an A100's 166,912 per block).
template <int D_, int MF_, int ELEM_ = 2, int KW_ = 16, int STAGES_ = (D_ <= 128 ? 3 : 2) + (ELEM_ == 1 && D_ <= 128), int NW_ = 4>
struct DecodeTile {
  static constexpr int D = D_, MF = MF_;
  static constexpr int NW = NW_;             // warps
  static constexpr int KW = KW_;             // keys of a block per warp
  static constexpr int BN = KW * NW;         // keys per block
  static constexpr int BM = 16 * MF;         // packed rows per CTA
  static constexpr int STAGES = STAGES_;
  // The tiles the tensor cores read (Q, K, V; fp8: their fp16 conversions): swizzled whole lines where D allows (head
  // dims 64, 128, 192, 256), else padded rows (tile.cuh). Measured on the H100 (bf16, hdim 128, b8 32k / 128k keys):
  // +3.3% / +4.0% over padded rows, whose cp.async copies asked L2 for 1.5x the sectors.
  static constexpr bool kSwizzled = D % 64 == 0;
  static constexpr int LD = kSwizzled ? D : D + kPad;
  using Layout = std::conditional_t<kSwizzled, SwizzledRows<D>, StridedRows<D + kPad>>;
  static_assert(KW % 8 == 0 && BN % 8 == 0, "warps' keys and V tiles start on a swizzle period");
  static constexpr int kThreads = NW * 32;
  static constexpr bool kFp8 = ELEM_ == 1;
  static constexpr size_t kTileElem = 2;     // bytes per element of the tiles the tensor cores read (fp8: fp16)
  // 16-bit: STAGES stages of K and V tiles. fp8: one stage of fp16 K and V tiles, then STAGES stages of unpadded bytes.
  static constexpr size_t staging_bytes() { return kFp8 ? static_cast<size_t>(STAGES) * 2 * BN * D : 0; }
  static constexpr size_t ring_bytes() { return static_cast<size_t>(kFp8 ? 1 : STAGES) * 2 * BN * LD * kTileElem + staging_bytes(); }
  // The epilogue reuses the ring for the warps' fp32 partial O (NW x BM x D) and their row max / sum.
  static constexpr size_t merge_bytes() { return static_cast<size_t>(NW) * BM * (D + 2) * sizeof(float); }
  static constexpr size_t smem_bytes() {
    return static_cast<size_t>(BM) * LD * kTileElem + (ring_bytes() > merge_bytes() ? ring_bytes() : merge_bytes());
  }
};

// Copies keys [n0, n0 + ROWS) of sequence b, KV head hk of both cache tensors into smem tiles of layout L (the 16-bit
// tiles, or fp8 staging rows of D bytes), through the cache map; keys at or past `keys` (and dims past
// head_dim) come in as zeros, so masked P = 0 never meets stale data.
// A key's place in the cache (page lookup, 64-bit offsets) costs more than its copy, so it is worked out once per
// key for K and V together, and once per tile when the tile lies in one page (every contiguous cache, and paged
// caches whose pages hold whole tiles); each thread then keeps one 16-byte column of rows a pass apart.
template <int ROWS, int D, typename L, int NTHREADS, typename T, typename Copy>
__device__ __forceinline__ void load_kv_block_async(T* sk, T* sv, const DevTensor& k, const DevTensor& v, const KvCacheView& kv,
                                                    int b, int hk, int n0, int keys, int head_dim, const Copy& copy) {
  constexpr int kChunk = 16 / sizeof(T);  // elements per 16-byte chunk
  constexpr int kChunksPerRow = D / kChunk;
  const T* kbase = static_cast<const T*>(k.data);
  const T* vbase = static_cast<const T*>(v.data);
  if constexpr (NTHREADS % kChunksPerRow == 0 && ROWS % (NTHREADS / kChunksPerRow) == 0) {
    constexpr int kRowsPerPass = NTHREADS / kChunksPerRow;
    const int col = (threadIdx.x % kChunksPerRow) * kChunk, r0 = threadIdx.x / kChunksPerRow;
    const bool col_ok = col < head_dim;
    const int first = kv.leftpad(b) + n0;  // cache token of the tile's first key (< 2^29: validated sizes)
    if (kv.block_table == nullptr || first / kv.page_size == (first + ROWS - 1) / kv.page_size) {
      const T* krow = kbase + kv.offset(k.batch_stride, k.row_stride, k.head_stride, b, n0, hk) + col;
      const T* vrow = vbase + kv.offset(v.batch_stride, v.row_stride, v.head_stride, b, n0, hk) + col;
#pragma unroll
      for (int r = r0; r < ROWS; r += kRowsPerPass) {
        const bool valid = col_ok && n0 + r < keys;
        copy(sk + L::at(r, col), valid ? krow + r * k.row_stride : kbase, valid);
        copy(sv + L::at(r, col), valid ? vrow + r * v.row_stride : vbase, valid);
      }
    } else {  // small pages: each key's page once for K and V, in 32-bit arithmetic
      const int32_t* pages = kv.block_table + static_cast<int64_t>(b) * kv.max_blocks;
#pragma unroll
      for (int r = r0; r < ROWS; r += kRowsPerPass) {
        const bool valid = col_ok && n0 + r < keys;  // only rows holding keys may read the block table
        const int token = first + r;
        const int64_t page = valid ? pages[token / kv.page_size] : 0, row = token % kv.page_size;
        const T* ksrc = kbase + page * k.batch_stride + row * k.row_stride + static_cast<int64_t>(hk) * k.head_stride + col;
        const T* vsrc = vbase + page * v.batch_stride + row * v.row_stride + static_cast<int64_t>(hk) * v.head_stride + col;
        copy(sk + L::at(r, col), valid ? ksrc : kbase, valid);
        copy(sv + L::at(r, col), valid ? vsrc : vbase, valid);
      }
    }
  } else {  // head dims whose 16-byte chunks do not divide the threads (96, 192): chunk by chunk
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += NTHREADS) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kChunk;
      const bool valid = n0 + r < keys && col < head_dim;
      const T* ksrc = valid ? kbase + kv.offset(k.batch_stride, k.row_stride, k.head_stride, b, n0 + r, hk) + col : kbase;
      const T* vsrc = valid ? vbase + kv.offset(v.batch_stride, v.row_stride, v.head_stride, b, n0 + r, hk) + col : vbase;
      copy(sk + L::at(r, col), ksrc, valid);
      copy(sv + L::at(r, col), vsrc, valid);
    }
  }
}

// ---- the kernels' parts --------------------------------------------------------------------------------------------

// Q rows -> smem tile `dst` of layout L by NTHREADS threads (t: this thread's index among them): packed row r is query
// r / group of head hk * group + r % group; zeros past the last row and past head_dim. kAsync: cp.async copies (one
// group, uncommitted); else plain loads and stores, visible to the CTA after its next barrier.
template <typename T, int BM, int D, typename L, int NTHREADS, bool kAsync = true>
__device__ __forceinline__ void load_packed_q(T* dst, const AttnArgs& a, int b, int hk, int r0, int rows, int t) {
  constexpr int kChunk = 16 / sizeof(T), kChunksPerRow = D / kChunk;
  const T* qbase = static_cast<const T*>(a.q.data) + static_cast<int64_t>(b) * a.q.batch_stride;
#pragma unroll
  for (int c = t; c < BM * kChunksPerRow; c += NTHREADS) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kChunk, row = r0 + r;
    const bool valid = r < rows && col < a.head_dim;
    const T* src = valid ? qbase + static_cast<int64_t>(row / a.group) * a.q.row_stride +
                               static_cast<int64_t>(hk * a.group + row % a.group) * a.q.head_stride + col
                         : qbase;
    if constexpr (kAsync) cp_async_16(dst + L::at(r, col), src, valid);
    else *reinterpret_cast<uint4*>(dst + L::at(r, col)) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
  }
}

// What one CTA works out once: its sequence, rows, key blocks and score parameters, and (per consumer lane) the rows'
// queries and ALiBi slopes. fp8: the q and k factors of (b, hk) scale every score of the CTA; 1 otherwise.
template <typename Tile>
struct DecodeCta {
  int hk, b, split, r0, rows, q_first, q_count;
  SeqInfo s;
  KeyBlocks blocks;
  bool transform;
  float qk_descale, mult;  // mult: from S to log2 units inside exp2
  __device__ __forceinline__ DecodeCta(const DecodeArgs& args) {
    const AttnArgs& a = args.a;
    hk = blockIdx.y, b = blockIdx.z / a.num_splits, split = blockIdx.z % a.num_splits;
    r0 = blockIdx.x * Tile::BM;
    // This sequence: seqlen_q queries over `keys` keys, bottom-right aligned.
    s.q_start = s.k_start = 0;
    s.sq = a.seqlen_q;
    s.sk = args.kv.keys(b);
    s.diag = s.sk - s.sq;
    rows = min(Tile::BM, args.rows - r0);
    q_first = r0 / a.group, q_count = (r0 + rows - 1) / a.group - q_first + 1;
    blocks = split_key_blocks(a, s, q_first, q_count, Tile::BN, split);
    transform = a.softcap > 0.f || a.alibi != nullptr;
    qk_descale = Tile::kFp8 ? descale_factor(a.q_descale, b, hk) * descale_factor(a.k_descale, b, hk) : 1.f;
    mult = transform ? 1.f : a.scale_log2 * qk_descale;
  }
};

// A consumer warp's running state over the CTA's rows: O_w, its rows' max (log2 units) and per-lane sum, and each
// row's (fragment mf, half hf) query and slope.
template <typename Tile>
struct DecodeWarpState {
  float o[Tile::MF][Tile::D / 8][4];
  float row_max[Tile::MF][2], row_sum[Tile::MF][2];
  ScoreRow row_info[Tile::MF][2];
  __device__ __forceinline__ DecodeWarpState(const AttnArgs& a, const DecodeCta<Tile>& cta, int g) {
#pragma unroll
    for (int mf = 0; mf < Tile::MF; ++mf)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = cta.r0 + mf * 16 + hf * 8 + g;
        row_info[mf][hf] = ScoreRow{row / a.group, alibi_slope_log2(a, cta.b, cta.hk * a.group + row % a.group)};
      }
    clear_accumulators(o, row_max, row_sum);
  }
};

// One key block for one warp: S_w = Q K_w^T over its KW keys (sK: their rows, n0: the first), the online softmax,
// O_w += P_w V_w (sV: the block's V tile; the warp's rows start at warp * KW). C: the tiles' element type.
template <typename C, typename Tile>
__device__ __forceinline__ void decode_block(DecodeWarpState<Tile>& st, const AttnArgs& a, const DecodeCta<Tile>& cta,
                                             const C* sQ, const C* sK, const C* sV, int n0, int warp) {
  constexpr int D = Tile::D, MF = Tile::MF, KW = Tile::KW;
  using L = typename Tile::Layout;
  float sc[MF][KW / 8][4];
  scores_QKt<C, L, D, KW, MF>(sc, sQ, 0, sK);
  if (Tile::kFp8 && cta.transform) scale_acc(sc, cta.qk_descale);  // the factors are in mult, except where softcap / ALiBi read the scores

  const bool masked = tile_needs_mask(a, cta.s, cta.q_first, cta.q_count, n0, KW);
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
    float alpha[2];
    online_softmax_block<KW / 8>(a, cta.s, [&](int j, int e) -> float& { return sc[mf][j][e]; },
                            [&](int hf) { return st.row_info[mf][hf]; }, n0, cta.transform, masked, cta.mult, st.row_max[mf],
                            st.row_sum[mf], alpha);
    // Past the first blocks a row's max rarely moves: skip the D / 2 multiplies when no row of the warp's changed.
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) st.o[mf][j][e] *= alpha[e / 2];
    }
  }

  // O_w += P_w V_w (BM x D += BM x KW . KW x D): P straight from the accumulators (fp8: rounded to E4M3).
#pragma unroll
  for (int kk = 0; kk < KW / 16; ++kk) {
    uint32_t pa[MF][4];
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
      if constexpr (Tile::kFp8) probs_to_a_e4m3(pa[mf], sc[mf][2 * kk], sc[mf][2 * kk + 1]);
      else acc_to_a<C>(pa[mf], sc[mf][2 * kk], sc[mf][2 * kk + 1]);
    }
    mm_AB<C, L, D, MF>([&](int mf, int j) -> float(&)[4] { return st.o[mf][j]; },
                       [&](int mf) -> const uint32_t(&)[4] { return pa[mf]; }, sV, 0, warp * KW + kk * 16);
  }
}

// The warps' merge and the store, by NTHREADS threads (t: this thread's index) after the ring's last read: each warp
// publishes its rows' max (log2 units), sum and unnormalised O in fp32 over `scratch` (the ring), then
//   M = max_w m_w,  L = sum_w l_w 2^(m_w - M),  O = sum_w 2^(m_w - M) O_w / L,  LSE = (M + log2 L) ln 2,
// written to o / lse, or to the split's fp32 partials. sync(): a barrier over the NTHREADS threads.
template <typename O, typename Tile, int NTHREADS, typename Sync>
__device__ __forceinline__ void decode_merge_store(const DecodeWarpState<Tile>& st, const AttnArgs& a, const DecodeCta<Tile>& cta,
                                                   void* scratch, int warp, int lane, int t, Sync&& sync) {
  constexpr int D = Tile::D, BM = Tile::BM, MF = Tile::MF, NW = Tile::NW;
  float* m_part = static_cast<float*>(scratch);  // [NW][BM]
  float* l_part = m_part + NW * BM;              // [NW][BM]
  float* o_part = l_part + NW * BM;              // [NW][BM][D]
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = mf * 16 + hf * 8 + g;
      const float l = quad_sum(st.row_sum[mf][hf]);
      if (t4 == 0) {
        m_part[warp * BM + r] = st.row_max[mf][hf] == -INFINITY ? -INFINITY : st.row_max[mf][hf] * cta.mult;
        l_part[warp * BM + r] = l;
      }
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<float2*>(o_part + (warp * BM + r) * D + j * 8 + 2 * t4) =
            make_float2(st.o[mf][j][2 * hf], st.o[mf][j][2 * hf + 1]);
    }
  sync();

  // Thread t takes 8 adjacent columns of one row per pass.
  const bool direct = a.num_splits == 1;
  constexpr int kChunksPerRow = D / 8;
  for (int c = t; c < BM * kChunksPerRow; c += NTHREADS) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (r >= cta.rows) continue;
    const int row = cta.r0 + r, i = row / a.group, h = cta.hk * a.group + row % a.group;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mx = fmaxf(mx, m_part[w * BM + r]);
    float weight[NW], l = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      weight[w] = mx == -INFINITY ? 0.f : fast_exp2(m_part[w * BM + r] - mx);
      l += weight[w] * l_part[w * BM + r];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float out[8];
#pragma unroll
    for (int x = 0; x < 8; ++x) {
      float acc = 0.f;
#pragma unroll
      for (int w = 0; w < NW; ++w) acc += weight[w] * o_part[(w * BM + r) * D + col + x];
      out[x] = acc * inv;
    }
    const int64_t lrow = (static_cast<int64_t>(cta.b) * a.heads_q + h) * a.seqlen_q + i;
    if (col == 0) {
      float* lse_out = direct ? a.lse : a.lse_part + static_cast<int64_t>(cta.split) * a.lse_rows;
      if (lse_out != nullptr) lse_out[lrow] = row_lse(mx, l, direct);
    }
    if (col >= a.head_dim) continue;
    if (direct) {
      uint4 packed;
      packed.x = pack2<O>(out[0], out[1]), packed.y = pack2<O>(out[2], out[3]);
      packed.z = pack2<O>(out[4], out[5]), packed.w = pack2<O>(out[6], out[7]);
      O* o = static_cast<O*>(a.o.data) + static_cast<int64_t>(cta.b) * a.o.batch_stride + static_cast<int64_t>(i) * a.o.row_stride +
             static_cast<int64_t>(h) * a.o.head_stride + col;
      *reinterpret_cast<uint4*>(o) = packed;
    } else {
      float4* dst = reinterpret_cast<float4*>(a.o_part + (static_cast<int64_t>(cta.split) * a.lse_rows + lrow) * a.head_dim + col);
      dst[0] = make_float4(out[0], out[1], out[2], out[3]);
      dst[1] = make_float4(out[4], out[5], out[6], out[7]);
    }
  }
}

// ---- the kernel ------------------------------------------------------------------------------------------------------

// T: the input element type; O: the output's (T, or fp16 / bf16 for fp8 inputs).
template <typename T, typename O, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads) decode_kernel(const DecodeArgs args) {
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, LD = Tile::LD, KW = Tile::KW;
  constexpr int STAGES = Tile::STAGES;
  constexpr bool kFp8 = sizeof(T) == 1;
  static_assert(kFp8 == Tile::kFp8, "the tile's element size is the input's");
  using C = std::conditional_t<kFp8, half_t, T>;  // the element type of the tiles the tensor cores read
  const AttnArgs& a = args.a;
  const KvCacheView& kv = args.kv;
  extern __shared__ __align__(128) unsigned char decode_smem[];  // swizzled tiles start on 128-byte lines
  C* sQ = reinterpret_cast<C*>(decode_smem);
  // 16-bit: stage s: K at ring + 2s BN LD, V right after. fp8: the fp16 K and V tiles (BN LD each), then the staging
  // ring, stage s: K at staging + 2s BN D bytes, V right after.
  C* ring = sQ + BM * LD;
  uint8_t* staging = reinterpret_cast<uint8_t*>(ring + (kFp8 ? 2 * BN * LD : 0));

  // The combine (split-KV) may be scheduled once every CTA of this grid has started: it waits for our partials in
  // griddepcontrol.wait, and starting it now hides its launch (a b1 decode is a few tens of microseconds).
  allow_next_grid();
  // On sm_90 this grid is itself a programmatic dependent of the previous one (the KV-cache append and rotary, or
  // whatever the caller ran before): its CTAs are resident before that grid ends, and every global access, the cache
  // lengths included, comes after griddepcontrol.wait — except, after the append / rotary kernel, the cache lengths
  // and the first key blocks that hold no appended row (old_keys_before_wait), whose copies then overlap that kernel.
  const bool old_keys_first = !kFp8 && args.old_keys_before_wait;
  if (!old_keys_first) wait_for_previous_grid();
  const DecodeCta<Tile> cta(args);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int n_blocks = cta.blocks.hi - cta.blocks.lo;
  const KvCopy<!kFp8> copy(args.kv_evict_first);
  auto stage_k = [&](int it) { return ring + (it % STAGES) * 2 * BN * LD; };                       // 16-bit
  auto stage_bytes = [&](int it) { return staging + static_cast<size_t>(it % STAGES) * 2 * BN * D; };  // fp8
  auto load_block = [&](int it) {
    if (it < n_blocks) {
      const int n0 = (cta.blocks.lo + it) * BN;
      if constexpr (kFp8) {
        T* sk = reinterpret_cast<T*>(stage_bytes(it));
        load_kv_block_async<BN, D, StridedRows<D>, Tile::kThreads>(sk, sk + BN * D, a.k, a.v, kv, cta.b, cta.hk, n0, cta.s.sk, a.head_dim, copy);
      } else {
        load_kv_block_async<BN, D, typename Tile::Layout, Tile::kThreads>(stage_k(it), stage_k(it) + BN * LD, a.k, a.v, kv, cta.b, cta.hk, n0,
                                                                          cta.s.sk, a.head_dim, copy);
      }
    }
    cp_async_commit();  // an empty group keeps the wait count uniform
  };
  // Q -> smem. fp8: the bytes land (rows of D) in the fp16 K / V tiles, unused until the main loop, in a group of their own.
  using QLayout = std::conditional_t<kFp8, StridedRows<D>, typename Tile::Layout>;  // fp8: rows of D bytes
  T* q_dst = reinterpret_cast<T*>(kFp8 ? static_cast<void*>(ring) : static_cast<void*>(sQ));
  int prologue = 0;  // ring stages loaded so far
  if (old_keys_first) {
    // Blocks before the first appended key (key sk - seqlen_new), up to the ring's prologue, then the wait; q (rotated
    // by that kernel) by plain loads, which the main loop's first barrier publishes.
    const int clean = (cta.s.sk - kv.seqlen_new) / BN - cta.blocks.lo;
    for (; prologue < min(clean, STAGES - 1); ++prologue) load_block(prologue);
    wait_for_previous_grid();
    load_packed_q<T, BM, D, QLayout, Tile::kThreads, false>(q_dst, a, cta.b, cta.hk, cta.r0, cta.rows, threadIdx.x);
  } else {
    load_packed_q<T, BM, D, QLayout, Tile::kThreads>(q_dst, a, cta.b, cta.hk, cta.r0, cta.rows, threadIdx.x);
    if constexpr (kFp8) cp_async_commit();
  }
  for (; prologue < STAGES - 1; ++prologue) load_block(prologue);  // 16-bit: Q's copies join the first stage's group
  if constexpr (kFp8) {  // Q's group (the oldest) landed: convert it once; the loop's first barrier orders the reads
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    fp8_rows_to_f16<T, BM, D, typename Tile::Layout, Tile::kThreads>(sQ, reinterpret_cast<const uint8_t*>(q_dst), threadIdx.x);
  }

  DecodeWarpState<Tile> st(a, cta, lane / 4);
  for (int it = 0; it < n_blocks; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // block `it` landed for every thread; every warp is done with the stage the next load reuses
    load_block(it + STAGES - 1);

    const C* sK = (kFp8 ? ring : stage_k(it)) + warp * KW * LD;  // this warp's KW keys
    const C* sV = kFp8 ? ring + BN * LD : stage_k(it) + BN * LD;
    if constexpr (kFp8) {
      // This warp's keys, K and V, from bytes into its own rows of the fp16 tiles: no other warp reads them, and this
      // warp's reads of the previous block are behind the barrier above.
      const uint8_t* bytes = stage_bytes(it) + warp * KW * D;
      fp8_rows_to_f16<T, KW, D, typename Tile::Layout, 32>(ring + warp * KW * LD, bytes, lane);
      fp8_rows_to_f16<T, KW, D, typename Tile::Layout, 32>(ring + (BN + warp * KW) * LD, bytes + BN * D, lane);
      __syncwarp();
    }
    decode_block<C, Tile>(st, a, cta, sQ, sK, sV, (cta.blocks.lo + it) * BN + warp * KW, warp);
  }
  // fp8: the v factor of (b, hk), the same for every warp of the CTA, applied before they merge.
  if constexpr (kFp8) scale_acc(st.o, descale_factor(a.v_descale, cta.b, cta.hk));

  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the ring the merge writes over
  decode_merge_store<O, Tile, Tile::kThreads>(st, a, cta, ring, warp, lane, threadIdx.x, [] { __syncthreads(); });
}

// Packed-row fragments per CTA: two when the rows need them and the O accumulators (MF x D / 2 registers per
// thread) still fit, else one.
constexpr int decode_max_mf(int d) { return d <= 128 ? 2 : 1; }

// How a decode launch is made (tc_paths.cu decides once): row fragments per CTA, and whether it is a programmatic
// dependent launch of the previous grid on the stream (sm_90).
struct DecodeLaunch {
  int mf;
  bool programmatic;
};

template <typename T, int D>
size_t decode_smem_bytes(const DecodeLaunch& l) {
  if constexpr (decode_max_mf(D) >= 2)
    if (l.mf == 2) return DecodeTile<D, 2, sizeof(T)>::smem_bytes();
  return DecodeTile<D, 1, sizeof(T)>::smem_bytes();
}

// The output type: the input's, or for fp8 inputs the one out_fp16 names.
template <typename T, typename Tile>
gpuError_t launch_decode_tile(const DecodeArgs& d, bool programmatic, gpuStream_t stream) {
  auto run = [&](auto kernel) {
    const size_t smem = Tile::smem_bytes();
    gpuError_t err = gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != gpuSuccess) return err;
    const dim3 grid(ceil_div(d.rows, Tile::BM), d.a.heads_kv, d.a.batch * d.a.num_splits);
    return launch_maybe_programmatic(kernel, grid, dim3(Tile::kThreads), smem, stream, programmatic, d);
  };
  if constexpr (sizeof(T) == 1) return d.a.out_fp16 ? run(decode_kernel<T, half_t, Tile>) : run(decode_kernel<T, bf16_t, Tile>);
  else return run(decode_kernel<T, T, Tile>);
}

// Launches the decode for head dim D (the caller picked D >= head_dim).
template <typename T, int D>
gpuError_t launch_decode(const DecodeArgs& d, const DecodeLaunch& l, gpuStream_t stream) {
  if constexpr (decode_max_mf(D) >= 2)
    if (l.mf == 2) return launch_decode_tile<T, DecodeTile<D, 2, sizeof(T)>>(d, l.programmatic, stream);
  return launch_decode_tile<T, DecodeTile<D, 1, sizeof(T)>>(d, l.programmatic, stream);
}

}  // namespace fa::tc
