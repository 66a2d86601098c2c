// fwd_sm90.cuh — FlashAttention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a), one instantiation per
// (dtype, head dim).
//
// A tile is BM = 64 x kConsumers query rows of one head; its visible key blocks of BN keys are walked from last to
// first (the masked diagonal blocks first). The grid is either one CTA per tile, tiles numbered (row block, head,
// batch x split) with the row block fastest and heaviest first, so the CTAs running together share a head's K / V in
// L2; or (kPersistent, when there are more tiles than SMs) one CTA per SM that takes tile after tile from a global
// counter: each SM then starts its next tile while the current one drains (its Q and first K / V are already in
// flight); with a causal or window mask the tiles come nearly longest first over the whole grid (row blocks
// heaviest first within groups of kHeadGroup heads), so that the work ends level on every SM.
// It is warp-specialised (FA3's schedule, with cp.async where FA3 has TMA):
//   warpgroup 0, the producer: fetches the next tile index and publishes it in a two-slot ring, copies each tile's Q
//     (a Q ring of kQSlots) and K / V into a ring of kStages 128B-swizzled tiles (wgmma.cuh) that runs on across
//     tiles; every slot is guarded by full / empty mbarriers, so no math warp issues a copy or waits at a CTA barrier;
//   warpgroups 1.., the consumers, 64 query rows each. Per key block n:
//     S_n  = Q K_n^T                    SS wgmma, m64 x BN, fp32 accumulators
//     O   += P_{n-1} V_{n-1}            RS wgmma, P from registers, V read N-major; issued right after S_n, so the
//                                       tensor cores work on it while this warpgroup computes the softmax of S_n
//     m', l, P_n = exp2(S_n c - m' c)   the online softmax of fwd.cuh (shared helper), base 2, scale folded in
//     O   *= exp2((m - m') c)           once the P V product has landed
//   and finally O += P_last V_last, O / l, LSE. The consumers take turns to issue their products (ping-pong over
//   named barriers): while one warpgroup's exp2s run on the MUFU, the tensor cores work for the other.
// Work per block and consumer: 4 x 64 BN D flops in two products; exp2 for 64 BN scores.
#pragma once

#include "attn.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <int D_, int BN_, bool kPersistent_>
struct Sm90FwdTile {
  static constexpr int D = D_, BN = BN_, kConsumers = 2, BM = 64 * kConsumers;
  static constexpr int kStages = 2;         // slots of the K / V ring (3 at hdim 64: -2%, docs/perf-cuda.md v6)
  static constexpr int kHeadGroup = 16;     // a persistent grid's tile order (fwd_sm90_kernel's work_of)
  static constexpr bool kPersistent = kPersistent_;
  static constexpr int kThreads = 128 * (kConsumers + 1);  // the producer warpgroup + the consumers
  static constexpr int kConsumerThreads = 128 * kConsumers;
  // setmaxnreg budgets, multiples of 8: the consumers can only take what the producer gives back from the launch
  // allocation (65536 / 384 threads, rounded down to 8: 168 each), or setmaxnreg.inc waits forever.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegs = 56, kConsumerRegs = 224;
  static_assert(128 * kProducerRegs + kConsumerThreads * kConsumerRegs <= kThreads * kLaunchRegs, "register budget");
  static constexpr int kTileQ = BM * D * 2, kTileKV = BN * D * 2;  // bytes (16-bit elements)
  // A persistent CTA keeps two Q slots (the next tile's Q lands during this one) and stages its output in rows of its
  // own (the next tile's copies may be landing in Q and K); a one-tile CTA stages over Q and the K slots at the end.
  static constexpr int kQSlots = kPersistent ? 2 : 1;
  static constexpr int kStage = kPersistent ? BM * (D + kPad) * 2 : 0;
  // Q and tile-index full / empty, two of each, K and V full / empty, kStages of each; then the two published tile
  // indices.
  static constexpr int kBarriers = 8 + 4 * kStages;
  static constexpr size_t smem_bytes() {
    return kSwizzleAlign + kQSlots * kTileQ + 2 * kStages * static_cast<size_t>(kTileKV) + kStage +
           kBarriers * sizeof(uint64_t) + 2 * sizeof(int);
  }
  static_assert(smem_bytes() <= 227 * 1024, "fits an H100's shared memory per block");
  static_assert(D % 64 == 0 && BN % 16 == 0 && BN <= 256 && D <= 256, "wgmma shapes: N <= 256, whole swizzle rows");
  static_assert(BM * (D + kPad) * 2 <= kTileQ + 2 * kTileKV, "the output staging fits over Q and the K slots");
};

// Tile table (H100/H200: 227 KB of smem per block). hdim 64/128: 128-key blocks (160 KB at 128); 192/256: 64-key
// blocks keep Q + 2 K + 2 V under the limit and O (D/2 registers per thread) beside S and P. Persistent at hdim 64,
// where a second Q slot and the staging rows fit (115 KB) and a tile is short enough for its start and drain to weigh;
// at 128 they would need 227 KB + 200 bytes. (Tried at hdim 64: three consumers of 192 rows with 96-key blocks: +6% at
// 8k, -7% at 2k; one consumer and two CTAs per SM: -7 to -30%; see docs/perf-cuda.md.)
template <int D> struct Sm90FwdTileFor;
template <> struct Sm90FwdTileFor<64> { using type = Sm90FwdTile<64, 128, true>; };
template <> struct Sm90FwdTileFor<128> { using type = Sm90FwdTile<128, 128, false>; };
template <> struct Sm90FwdTileFor<192> { using type = Sm90FwdTile<192, 64, false>; };
template <> struct Sm90FwdTileFor<256> { using type = Sm90FwdTile<256, 64, false>; };

// kTransform: softcap or ALiBi rewrite the scores (a.softcap > 0 or a.alibi set). A separate instantiation, because
// their unrolled code is two thirds of the kernel's, and a causal tile's instruction working set with it in
// overflowed the instruction cache (ncu: "no instruction" stalls 12% of samples, 2.5% without the mask).
template <typename T, typename Tile, bool kTransform>
__global__ void __launch_bounds__(Tile::kThreads, 1) fwd_sm90_kernel(const __grid_constant__ AttnArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, NT = BN / 8, NC = Tile::kConsumers, QS = Tile::kQSlots,
                S = Tile::kStages;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = swizzle_aligned_smem(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem);                        // [QS][BM x D], swizzled
  T* sK = reinterpret_cast<T*>(smem + QS * Tile::kTileQ);    // [S][BN x D], swizzled
  T* sV = sK + S * BN * D;                                   // [S][BN x D], swizzled
  T* sStage = sV + S * BN * D;                               // [BM x (D + kPad)] when persistent
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + QS * Tile::kTileQ + 2 * S * Tile::kTileKV + Tile::kStage);
  uint64_t* q_empty = q_full + 2;
  uint64_t* tile_full = q_full + 4;
  uint64_t* tile_empty = q_full + 6;
  uint64_t* k_full = q_full + 8;
  uint64_t* v_full = k_full + S;
  uint64_t* k_empty = k_full + 2 * S;
  uint64_t* v_empty = k_full + 3 * S;
  int* tile_slot = reinterpret_cast<int*>(q_full + Tile::kBarriers);  // [2] published tile indices
  // K / V ring iteration gi uses slot gi % S and is that slot's (gi / S)-th filling (the parity its barriers wait for).
  auto slot_of = [](int gi) { return static_cast<int>(static_cast<unsigned>(gi) % S); };
  auto parity_of = [](int gi) { return static_cast<uint32_t>(static_cast<unsigned>(gi) / S) & 1; };
  auto q_buf = [&](int qi) { return sQ + (qi % QS) * BM * D; };
  auto k_buf = [&](int gi) { return sK + slot_of(gi) * BN * D; };
  auto v_buf = [&](int gi) { return sV + slot_of(gi) * BN * D; };

  // Tile index space: row blocks x heads x (batch x split), in the order work_of decodes.
  const int m_count = ceil_div(a.seqlen_q, BM);
  const int total = m_count * a.heads_q * a.batch * a.num_splits;
  const bool dynamic = Tile::kPersistent && a.tile_counter != nullptr;  // else one tile per CTA
  const bool masked_grid = a.win_left >= 0 || a.win_right >= 0;          // a tile's key range depends on its rows
  struct Work {
    int m0, h, b, split;
    SeqInfo s;
    KeyBlocks blocks;
    bool run;  // false: a row block past this (varlen) sequence's end
  };
  auto work_of = [&](int tile) {
    Work w;
    int x, hz;  // row block from the heaviest, and head + heads x (batch x split + ...)
    if (dynamic && masked_grid) {
      // Tiles of different lengths (causal / window): heads in groups of kHeadGroup; in a group, row blocks heaviest
      // first with the heads fastest. The CTAs running together still share the K / V of a few heads in L2, and over
      // the whole grid the tiles come nearly longest first, so the CTAs' last tiles are short ones and they finish
      // together. (Tiles of one length keep the row block fastest: fewer heads at a time in L2.)
      constexpr int W = Tile::kHeadGroup;
      const int group = tile / (m_count * W), in = tile - group * (m_count * W);
      const int width = min(W, a.heads_q * a.batch * a.num_splits - group * W);
      x = in / width, hz = group * W + in % width;
    } else {
      x = tile % m_count, hz = tile / m_count;
    }
    const int z = hz / a.heads_q;
    w.m0 = (m_count - 1 - x) * BM, w.h = hz % a.heads_q, w.b = z / a.num_splits, w.split = z % a.num_splits;
    w.s = seq_info(a, w.b);
    w.run = w.m0 < w.s.sq;
    w.blocks = w.run ? split_key_blocks(a, w.s, w.m0, BM, BN, w.split) : KeyBlocks{0, 0};
    return w;
  };
  // Tile k of this CTA: the first is its own (linear) block index; a persistent CTA reads the rest from the ring the
  // producer's thread 0 fills (every thread of the CTA reads slot k & 1, then releases it).
  auto read_tile = [&](int k) {
    mbarrier_wait(tile_full + (k & 1), (k >> 1) & 1);
    const int tile = tile_slot[k & 1];
    mbarrier_arrive(tile_empty + (k & 1));
    return tile;
  };
  const int first_tile = blockIdx.x;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4;

  if (threadIdx.x == 0) {
    for (int slot = 0; slot < 2; ++slot) {
      mbarrier_init(q_full + slot, 128), mbarrier_init(q_empty + slot, Tile::kConsumerThreads);
      mbarrier_init(tile_full + slot, 1), mbarrier_init(tile_empty + slot, Tile::kThreads);
    }
    for (int slot = 0; slot < S; ++slot) {
      mbarrier_init(k_full + slot, 128), mbarrier_init(v_full + slot, 128);
      mbarrier_init(k_empty + slot, Tile::kConsumerThreads), mbarrier_init(v_empty + slot, Tile::kConsumerThreads);
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  // Ring counters, the same on every warpgroup: qi counts Q slot fillings, gi K / V iterations (both only of tiles
  // that run).
  int qi = 0, gi = 0;
  if (wg == 0) {  // the producer
    warpgroup_release_registers<Tile::kProducerRegs>();
    int tile = first_tile;
    for (int k = 0;; ++k) {
      if (dynamic) {
        if (threadIdx.x == 0) {
          if (k >= 2) mbarrier_wait(tile_empty + (k & 1), ((k >> 1) & 1) ^ 1);
          tile_slot[k & 1] = tile;
          mbarrier_arrive(tile_full + (k & 1));
        }
        tile = read_tile(k);
      }
      if (tile >= total) break;
      int next = total;
      if (dynamic && threadIdx.x == 0) next = gridDim.x + atomicAdd(a.tile_counter, 1);  // lands while we copy
      const Work w = work_of(tile);
      if (w.run) {
        if (qi >= QS) mbarrier_wait(q_empty + qi % QS, ((qi / QS) & 1) ^ 1);
        load_tile_sw128_async<BM, D, 128>(q_buf(qi), row_view<T>(a.q, a, w.b, w.h, w.s.q_start, w.s.sq), w.m0);
        cp_async_arrive(q_full + qi % QS);
        ++qi;
        const int hk = w.h / a.group;
        const RowView<T> k_rows = row_view<T>(a.k, a, w.b, hk, w.s.k_start, w.s.sk);
        const RowView<T> v_rows = row_view<T>(a.v, a, w.b, hk, w.s.k_start, w.s.sk);
        for (int n = w.blocks.hi - 1; n >= w.blocks.lo; --n, ++gi) {  // last key block first
          const int slot = slot_of(gi);
          const uint32_t reuse_parity = parity_of(gi) ^ 1;  // completion gi / S - 1 of the empty barrier
          if (gi >= S) mbarrier_wait(k_empty + slot, reuse_parity);
          load_tile_sw128_async<BN, D, 128>(k_buf(gi), k_rows, n * BN);
          cp_async_arrive(k_full + slot);
          if (gi >= S) mbarrier_wait(v_empty + slot, reuse_parity);
          load_tile_sw128_async<BN, D, 128>(v_buf(gi), v_rows, n * BN);
          cp_async_arrive(v_full + slot);
        }
      }
      tile = next;
    }
    return;
  }

  warpgroup_claim_registers<Tile::kConsumerRegs>();
  const int cw = wg - 1;  // consumer index
  const int wg_row0 = cw * 64, warp_row0 = wg_row0 + warp * 16;
  constexpr bool transform = kTransform;
  const float mult = transform ? 1.f : a.scale_log2;  // multiplier from S to log2 units inside exp2

  float o[D / 2];         // O, 64 x D per warpgroup
  float sc[BN / 2];       // S_n, then P_n in fp32
  uint32_t p[BN / 16][4];  // P_{n-1} as the A operand of the P V product
  float row_max[2], row_sum[2];
  auto scores = [&](int j, int e) -> float& { return sc[j * 4 + e]; };

  // K / V descriptors of ring iteration gi: slot 0's, moved on by whole slots (descriptors count 16-byte units).
  const uint64_t k_desc0 = tile_desc_k_major(sK), v_desc0 = tile_desc_mn_major<BN>(sV);
  auto slot_desc = [&](uint64_t desc0, int gi) { return desc0 + static_cast<uint32_t>(slot_of(gi) * (Tile::kTileKV >> 4)); };
  // O += P V for ring iteration gi (RS: P from registers, V N-major).
  auto issue_pv = [&](int gi) {
    const uint64_t vd = slot_desc(v_desc0, gi);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) Wgmma<D, T>::template rs<1>(o, p[kk], desc_mn_major<BN>(vd, kk), 1);
    wgmma_commit();
  };
  // Waits for ring iteration gi's copies to land, then orders the async proxy's reads after them.
  auto wait_full = [&](uint64_t* full, int gi) {
    mbarrier_wait(full + slot_of(gi), parity_of(gi));
    fence_async_smem();
  };
  auto release = [&](uint64_t* empty, int gi) { mbarrier_arrive(empty + slot_of(gi)); };
  // Ping-pong: consumer cw issues when the previous one (cyclically) has issued the same round. Consumer NC - 1 hands
  // the first turn to consumer 0 and every consumer passes the turn on after each round, across tiles (so one's
  // epilogue overlaps the other's products); consumer 0 takes the turn left over at the end, which keeps every
  // barrier's arrivals matched.
  auto begin_turn = [&]() { named_barrier_sync(1 + cw, 256); };
  auto end_turn = [&]() { named_barrier_arrive(1 + (cw + 1) % NC, 256); };
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      p[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
      p[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
      p[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
      p[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };
  if (cw == NC - 1) named_barrier_arrive(1, 256);

  int tile = first_tile;
  for (int k = 0;; ++k) {
    if (dynamic) tile = read_tile(k);
    if (tile >= total) break;
    const Work w = work_of(tile);
    tile = total;  // one tile per CTA unless the ring brings more
    if (!w.run) continue;
    const SeqInfo& s = w.s;
    const int m0 = w.m0, hi = w.blocks.hi, n = w.blocks.hi - w.blocks.lo, base = gi, qs = qi % QS;
    const float slope = alibi_slope_log2(a, w.b, w.h);
    // S = Q K^T for tile iteration it (SS: both operands K-major over the head dim).
    const uint64_t q_desc = tile_desc_k_major(q_buf(qi));
    auto issue_qk = [&](int it) {
      const uint64_t kd = slot_desc(k_desc0, base + it);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<BN, T>::template ss<0, 0>(sc, desc_k_major<BM>(q_desc, wg_row0, kk), desc_k_major<BN>(kd, 0, kk), kk > 0);
      wgmma_commit();
    };
    auto softmax = [&](int it, float (&alpha)[2]) {
      const int n0 = (hi - 1 - it) * BN;
      const bool masked = tile_needs_mask(a, s, m0 + wg_row0, 64, n0, BN);
      online_softmax_block<NT>(a, s, scores, m0 + warp_row0 + g, n0, transform, masked, slope, mult, row_max, row_sum, alpha);
    };
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY, row_sum[0] = row_sum[1] = 0.f;

    mbarrier_wait(q_full + qs, (qi / QS) & 1);
    fence_async_smem();
    ++qi;
    if (n == 0) mbarrier_arrive(q_empty + qs);
    if (n > 0) {
      float alpha[2];
      wait_full(k_full, base);
      begin_turn();
      wgmma_fence();
      issue_qk(0);
      end_turn();
      wgmma_wait<0>();
      reg_fence(sc);
      release(k_empty, base);
      if (n == 1) mbarrier_arrive(q_empty + qs);  // the tile's last product from Q has landed
      softmax(0, alpha);  // O is still zero: nothing to rescale
      pack_p();
    }
    for (int it = 1; it < n; ++it) {
      gi = base + it;
      wait_full(k_full, gi);
      wait_full(v_full, gi - 1);
      begin_turn();
      wgmma_fence();
      issue_qk(it);
      issue_pv(gi - 1);
      end_turn();
      float alpha[2];
      wgmma_wait<1>();  // S(it) landed; P(it - 1) V(it - 1) still runs
      reg_fence(sc);
      release(k_empty, gi);
      if (it == n - 1) mbarrier_arrive(q_empty + qs);
      softmax(it, alpha);
      wgmma_wait<0>();
      reg_fence(o);
      reg_fence(p);
      release(v_empty, gi - 1);
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i / 2) % 2];
      pack_p();
    }
    gi = base + n;
    if (n > 0) {
      wait_full(v_full, gi - 1);
      begin_turn();
      wgmma_fence();
      issue_pv(gi - 1);
      end_turn();
      wgmma_wait<0>();
      reg_fence(o);
      release(v_empty, gi - 1);
    }

    // Epilogue. A persistent CTA stages O in rows of its own (each warp its rows; its reads of the previous tile's
    // rows must be done). A one-tile CTA stages over Q and the K slots, which no product reads any more once every
    // consumer is past this barrier (the producer's copies have all landed: every slot was waited for).
    T* stage = sStage;
    if constexpr (Tile::kPersistent) {
      __syncwarp();
    } else {
      named_barrier_sync(NC + 1, Tile::kConsumerThreads);
      stage = sQ;
    }
    store_output_rows<T, D>(a, s, w.b, w.h, w.split, m0, warp_row0, [&](int j, int e) { return o[j * 4 + e]; }, row_max,
                            row_sum, mult, stage);
  }
  if (cw == 0) named_barrier_sync(1, 256);  // the turn consumer NC - 1 passed on after the last round
#endif
}

// Launches the Hopper forward for head dim D (the caller picked D >= head_dim): one CTA per tile, or a.persistent_ctas
// of them when a.tile_counter (zeroed) is set. Returns the CUDA error of the launch.
template <typename T, int D>
gpuError_t launch_fwd_sm90(const AttnArgs& a, int m_blocks, gpuStream_t stream) {
  using Tile = typename Sm90FwdTileFor<D>::type;
  const int64_t tiles = static_cast<int64_t>(m_blocks) * a.heads_q * a.batch * a.num_splits;
  if (tiles > INT_MAX / 2) return cudaErrorInvalidConfiguration;  // the kernel counts tiles in int
  const bool persistent = Tile::kPersistent && a.tile_counter != nullptr;
  const int64_t ctas = persistent ? std::min<int64_t>(tiles, a.persistent_ctas) : tiles;
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  return launch_attention_kernel(transform ? fwd_sm90_kernel<T, Tile, true> : fwd_sm90_kernel<T, Tile, false>,
                                 dim3(static_cast<unsigned>(ctas)), Tile::kThreads, Tile::smem_bytes(), stream, a);
}

}  // namespace fa::tc
