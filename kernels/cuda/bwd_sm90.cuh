// bwd_sm90.cuh — FlashAttention backward on Hopper's warpgroup tensor cores (wgmma, sm_90a), one instantiation per
// (dtype, head dim 64, 128, 192 or 256).
//
// Grid (key blocks, heads_kv, batch), as the mma.sync backward: a CTA owns a block of keys of one kv head and walks
// every (query head of the GQA group, query block of BM rows) that can see them, so dK / dV of the group are
// summed in registers and written once. Warp-specialised like the forward: warps 0-1 of warpgroup 0 (the loader) copy
// K and V of the key block and each step's Q, dO and row statistics into a two-slot ring of 128B-swizzled tiles
// (wgmma.cuh) guarded by full / empty mbarriers; warps 2-3 (the dQ writer) add each step's dQ tile from shared memory
// to dq_accum with bulk reductions, one row per thread, so the math warps issue no atomics; warpgroups 1 and 2 are the
// consumers.
//
// Head dim 64 / 128 (row tiles): BN = 128 keys, each consumer owns 64 of them; a step is BM = 128 queries at head dim
// 64, run as two passes of 64 (S^T and dP^T of all 128 at once, 128 fp32 a thread beside dK / dV, made ptxas spill and
// serialise the products), and 64 at head dim 128 (slots of 128 rows of Q and dO would not fit beside K and V). Per
// pass of 64 queries and consumer:
//   S^T  = K_w Q^T                 SS, m64n64                   P^T = exp2(S^T c - lse2[q])  (0 where masked)
//   dP^T = V_w dO^T                SS, issued with S^T          dS^T = P^T (dP^T - dsum[q])  (x (1 - tanh^2) softcap)
//   dV  += P^T dO                  RS, P^T from registers, dO N-major; runs while dS^T is computed
//   dK  += dS^T Q                  RS (times scale at the end)
// and once per step:
//   dQ  += dS K                    SS from the dS^T tile in smem (M-major, imm-trans-a) and K (N-major), over all
//                                  128 keys after a consumer barrier (both consumers' dS^T rows are in), fp32 into
//                                  the dQ tile in smem: head dim 128 splits dQ's columns between the consumers (64
//                                  each), head dim 64 its 128 queries (64 each, every column). dS^T is double-
//                                  buffered by ring slot, so that one barrier per step orders it. The dQ tile has one
//                                  slot: the writer has read it (dq_empty) long before the next step's dQ product ends.
// Head dim 256 (split D): dK and dV of 64 keys x 256 columns (2 x 128 fp32 per thread of one warpgroup) do not fit
// in registers, so BN = 64 keys shared by both consumers, consumer w owning columns [128 w, 128 w + 128) of dK, dV
// and dQ. Per step, consumer w:
//   S^T, dP^T for queries [32 w, 32 w + 32)      SS, m64n32, k over all 256 columns
//   P^T, dS^T of those queries into smem tiles    (double-buffered; one consumer barrier: both halves are in)
//   dV_w += P^T dO_w,  dK_w += dS^T Q_w          SS, m64n128: A the K-major P^T / dS^T tile, B its own column half
//   dQ_w  = dS K_w                                SS, m64n128 over the 64 keys
// and stages dQ_w (fp32) in the step's Q and dO slot, over the column blocks only its own dV / dK products read, so no
// second barrier, as four 128B-swizzled boxes of 64 rows x 32 floats that the writer adds to dq_accum with one TMA
// tensor reduction each before it releases the slot to the loader. The same 5 products of 2 BN BM D flops per step
// as the row tiles, none repeated. Head dim 192 splits the same way, 96 columns per consumer as an n64 and an n32
// product (Sm90BwdTile::kWideN), and stages dQ in a tile of its own (its tiles leave the room).
// Work per step: 5 products of 2 BN BM D flops; exp2 for BN BM scores; BM D fp32 dQ additions.
#pragma once

#include "attn.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <int D_>
struct Sm90BwdTile {
  // Split D (head dim 256): both consumers share the block's 64 keys and split the columns (header comment).
  static constexpr bool kSplitD = D_ > 128;
  static constexpr int D = D_, BN = kSplitD ? 64 : 128, BM = D == 64 ? 128 : 64;
  static constexpr int DH = kSplitD ? D / 2 : D;  // columns of dK / dV per consumer
  // Split D's columns per consumer as one wide product (n128 at 256, n64 at 192) and, at 192, a narrow n32 one: consumer
  // 0 owns [0, 64) + [64, 96), consumer 1 [96, 128) + [128, 192), so the narrow one of consumer 1 starts 64 bytes into
  // a swizzle row of column block 1 (the two consumers share that block).
  static constexpr int kWideN = DH >= 128 ? 128 : 64, kNarrowN = kSplitD ? DH - kWideN : 0;
  // Where split D stages dQ: in the step's Q / dO slot at 256 (shared memory is full), in a tile of its own at 192.
  static constexpr bool kDqInSlot = kSplitD && D == 256;
  static constexpr int kThreads = 384, kConsumerThreads = 256;  // the producer warpgroup + two consumers
  static constexpr int kLoaderThreads = 64, kDqWriterThreads = 64;  // the producer warpgroup's two roles
  // setmaxnreg budgets: the consumers can only take what the producer gives back of the launch's registers, so
  // 128 x producer + 256 x consumer <= 384 x 168 (one more register blocks the consumers' setmaxnreg for ever). Head
  // dim 128's consumers hold dK, dV (128 fp32) beside S^T, dP^T and the operands in flight, so its producer gets the
  // minimum (ptxas: 188 bytes spilled, about 20 of them the consumers'; head dim 64 48 bytes, none the consumers').
  // Split D's consumers (dK, dV and dQ of a column half, 64 fp32 each) compile without spills at 232 (ptxas); its
  // producer copies 256-column tiles with 40.
  static constexpr int kProducerRegs = D == 128 ? 24 : 40, kConsumerRegs = D == 128 ? 240 : 232;
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;  // per thread, as __launch_bounds__(kThreads, 1) gets
  static_assert(128 * kProducerRegs + kConsumerThreads * kConsumerRegs <= kThreads * kLaunchRegs,
                "the consumers' registers come from the producer's");
  static_assert(2 * kThreads * kLaunchRegs > 65536, "one CTA per SM (the deterministic turns' persistent grid counts on it)");
  // Consumer w's share of dQ: queries [64w, 64w + 64) x every column (head dim 64, BM = 128), else columns [64w, 64w + 64).
  static constexpr bool kDqByQueries = BM == 128;
  // Deterministic mode adds dQ in turns (Sm90BwdWalk) from head dim 128 on; head dim 64 keeps one slice per CTA (its
  // steps are half as long, so a wait weighs twice as much: with turns 0.66-0.77 of the normal backward against the
  // slices' 0.88-0.95, H100, thirteenth session).
  static constexpr bool kDqTurns = D >= 128;
  static constexpr int kTileKV = BN * D * 2, kTileQ = BM * D * 2, kTileDs = BN * BM * 2;  // bytes
  static constexpr int kTilePt = kSplitD ? kTileDs : 0;  // split D: the P^T tile beside dS^T
  // The fp32 dQ tile [BM rows][kDqLd]: rows padded by 8 floats for the consumers' float2 stores (a half-warp's hit 32
  // distinct banks); each row is one bulk reduction of head_dim floats (16-byte aligned: kDqLd is a multiple of 4).
  // Split D stages dQ in the Q / dO slot instead (bwd_sm90_split_dq_box).
  static constexpr int kDqLd = D + 8;
  static constexpr size_t kDqBytes = kDqInSlot ? 0
                                     : kSplitD  ? static_cast<size_t>(BM) * D * sizeof(float)  // D / 32 TMA boxes
                                                : static_cast<size_t>(BM) * kDqLd * sizeof(float);
  static constexpr int kBarriers = 9;  // K/V full, empty; Q/dO full, empty per slot; dQ full per slot, dQ empty
  static constexpr size_t smem_bytes() {
    return kSwizzleAlign + 2 * static_cast<size_t>(kTileKV) + 4 * kTileQ + 2 * (kTileDs + kTilePt) + 4 * BM * sizeof(float) +
           kDqBytes + kBarriers * sizeof(uint64_t);
  }
  static_assert(BM % kDqWriterThreads == 0, "the dQ writer adds whole rows, BM / 64 per thread");
  static_assert(D == 64 || D == 128 || D == 192 || D == 256, "row tiles up to head dim 128, split D at 192 and 256");
  static_assert(!kDqInSlot || (DH == 128 && BN == 64), "dQ in the slot: its half is 64 rows x 128 fp32 (2 x 16 KB)");
  static_assert(!kSplitD || kNarrowN == 0 || kNarrowN == 32, "split D: one wide and at most one n32 product per consumer");
};

// ---- shared memory ------------------------------------------------------------------------------------------------

// The CTA's shared memory, in allocation order: K and V of the key block, the two-slot ring of Q, dO, lse2 and dsum,
// the double-buffered dS^T tile, the dQ tile, and the mbarriers.
template <typename T, typename Tile>
struct Sm90BwdShared {
  static constexpr int D = Tile::D, BN = Tile::BN, BM = Tile::BM;
  T* sK;         // [BN x D]
  T* sV;         // [BN x D]
  T* sQ;         // [2][BM x D]
  T* sdO;        // [2][BM x D]
  T* sdS;        // [2][BN keys x BM queries]: dS^T, read as the M-major A of dQ = dS K (split D: also the K-major A of dK)
  T* sPt;        // split D: [2][BN keys x BM queries]: P^T, the K-major A of dV
  float* sLse2;  // [2][BM]
  float* sDsum;  // [2][BM]
  float* sdQ;    // [BM][kDqLd]
  uint64_t *kv_full, *kv_empty;
  uint64_t *qdo_full, *qdo_empty;  // [2] each
  uint64_t *dq_full;  // [2]: the dQ tile of ring slot ring & 1 is stored (row tiles use [0] only)
  uint64_t *dq_empty;

  __device__ __forceinline__ explicit Sm90BwdShared(unsigned char* smem) {
    sK = reinterpret_cast<T*>(smem);
    sV = sK + BN * D;
    sQ = sV + BN * D;
    sdO = sQ + 2 * BM * D;
    sdS = sdO + 2 * BM * D;
    sPt = sdS + 2 * BN * BM;
    sLse2 = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(sPt) + 2 * Tile::kTilePt);
    sDsum = sLse2 + 2 * BM;
    sdQ = sDsum + 2 * BM;
    kv_full = reinterpret_cast<uint64_t*>(reinterpret_cast<unsigned char*>(sdQ) + Tile::kDqBytes);
    kv_empty = kv_full + 1;
    qdo_full = kv_full + 2;
    qdo_empty = kv_full + 4;
    dq_full = kv_full + 6;
    dq_empty = kv_full + 8;
  }

  // Thread 0 only; the CTA synchronises before anyone waits on them.
  __device__ __forceinline__ void init_barriers() const {
    mbarrier_init(kv_full, Tile::kLoaderThreads), mbarrier_init(kv_empty, Tile::kConsumerThreads);
    // Split D: the slot holds the staged dQ, so the writer releases it, not the consumers.
    const int qdo_readers = Tile::kDqInSlot ? Tile::kDqWriterThreads : Tile::kConsumerThreads;
    for (int slot = 0; slot < 2; ++slot) {
      mbarrier_init(qdo_full + slot, Tile::kLoaderThreads), mbarrier_init(qdo_empty + slot, qdo_readers);
      mbarrier_init(dq_full + slot, Tile::kConsumerThreads);
    }
    mbarrier_init(dq_empty, Tile::kDqWriterThreads);
    mbarrier_init_fence();
  }
};

// ---- schedule -----------------------------------------------------------------------------------------------------

// The work items of a CTA, (batch, KV head, key block nb), in the order every role walks them (`ring` counts the steps
// over all of them: slot ring & 1). Three grids:
// - normal: (key blocks, heads_kv, batch), one item per CTA;
// - deterministic slices: (P, heads_kv, batch), CTA x taking key blocks x, x + P, ... of its (batch, KV head) and
//   adding to dq_accum slice x;
// - deterministic turns (a.dq_turns): a persistent grid of S slots x P lanes, launched cooperatively so that every CTA
//   is resident. Slot c / P takes the (batch, KV head) pairs c / P, + S, ... (numbered batch-major); within a pair,
//   lane c % P takes the key blocks congruent to (lane + pair) mod P (the offset turns with the pair so that, under a
//   causal mask, heavy and light key blocks even out over a lane's pairs), highest first. A row block of dq_accum
//   takes its additions from the key blocks that see it in descending order (bwd_sm90_dq_writer). Under a causal or
//   windowed mask a higher key block reaches any row in fewer steps than a lower one, so in lock step no lane waits;
//   and no deadlock: an item waits only for items of its pair with higher key blocks, which every lane walks first,
//   so the first unfinished item in (pair ascending, key block descending) order never waits.
// kTurns: the turns' kernel (a second instantiation from head dim 128 on, Sm90BwdTile::kDqTurns), so that the other
// grids run the code they ran before the turns. Each role runs its key-block loop as a body that Sm90BwdWalk calls
// once per (batch, KV head) pair, so (sequence, batch, KV head) stay loop invariants of the loop: a walk that moved
// between pairs inside the roles' loops cost the normal hdim-128 backward 10-14% on the H100 (its 24-register producer
// spilled 2.5x as much).
template <int BN, bool kTurns>
struct Sm90BwdWalk;

// The normal and sliced grids: the (batch, KV head) of blockIdx.z / y, key blocks blockIdx.x, + gridDim.x, ...
template <int BN>
struct Sm90BwdWalk<BN, false> {
  template <typename Body>  // body(sequence, batch, KV head, first key block, key block step)
  __device__ __forceinline__ static void run(const AttnArgs&, const SeqInfo& s, Body&& body) {
    body(s, static_cast<int>(blockIdx.z), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x));
  }
  __device__ __forceinline__ static bool more(int nb, const SeqInfo& s) { return nb * BN < s.sk; }
};

// The turns' persistent grid: a.dq_slots slots x a.dq_lanes lanes (above); each pair's key blocks highest first.
template <int BN>
struct Sm90BwdWalk<BN, true> {
  template <typename Body>
  __device__ __forceinline__ static void run(const AttnArgs& a, const SeqInfo&, Body&& body) {
    const int lanes = a.dq_lanes;
    for (int pair = static_cast<int>(blockIdx.x) / lanes; pair < a.batch * a.heads_kv; pair += a.dq_slots) {
      const int b = pair / a.heads_kv;
      const SeqInfo s = seq_info(a, b);
      const int blocks = (s.sk + BN - 1) / BN, first = (static_cast<int>(blockIdx.x) % lanes + pair) % lanes;  // this pair's residue
      if (blocks > first) body(s, b, pair % a.heads_kv, first + (blocks - 1 - first) / lanes * lanes, -lanes);
    }
  }
  __device__ __forceinline__ static bool more(int nb, const SeqInfo&) { return nb >= 0; }
};

// Per key block, the steps are the (query head of the GQA group, query block) pairs that can see it, heads slowest.
struct Sm90BwdSteps {
  QueryBlocks qb;
  int count;  // qb.count x group
  __device__ __forceinline__ Sm90BwdSteps(const AttnArgs& a, const SeqInfo& s, int n0, int bn, int bm)
      : qb(visible_query_blocks(a, s, n0, bn, bm)), count(qb.count * a.group) {}
  __device__ __forceinline__ int head(const AttnArgs& a, int hk, int step) const { return hk * a.group + step / qb.count; }
  __device__ __forceinline__ int row0(int step, int bm) const { return (qb.first + step % qb.count) * bm; }
};

// ---- producer -----------------------------------------------------------------------------------------------------

// Warps 0-1 of warpgroup 0: K and V of each key block, then each step's Q, dO and row statistics into the two-slot
// ring.
template <typename T, typename Tile, bool kTurns>
__device__ __forceinline__ void bwd_sm90_loader(const AttnArgs& a, const Sm90BwdShared<T, Tile>& sh, const SeqInfo& s0) {
  constexpr int D = Tile::D, BN = Tile::BN, BM = Tile::BM, NT = Tile::kLoaderThreads;
  int ring = 0, kb = 0;
  Sm90BwdWalk<BN, kTurns>::run(a, s0, [&](const SeqInfo& s, int b, int hk, int nb0, int nb_step) {
    for (int nb = nb0; Sm90BwdWalk<BN, kTurns>::more(nb, s); nb += nb_step, ++kb) {
      const int n0 = nb * BN;
      const RowView<T> k = row_view<T>(a.k, a, b, hk, s.k_start, s.sk);
      const RowView<T> v = row_view<T>(a.v, a, b, hk, s.k_start, s.sk);
      if (kb > 0) mbarrier_wait(sh.kv_empty, (kb - 1) & 1);
      load_tile_sw128_async<BN, D, NT>(sh.sK, k, n0);
      load_tile_sw128_async<BN, D, NT>(sh.sV, v, n0);
      cp_async_arrive(sh.kv_full);
      const Sm90BwdSteps steps(a, s, n0, BN, BM);
      for (int step = 0; step < steps.count; ++step, ++ring) {
        const int slot = ring & 1, h = steps.head(a, hk, step), m0 = steps.row0(step, BM);
        if (ring >= 2) mbarrier_wait(sh.qdo_empty + slot, ((ring >> 1) & 1) ^ 1);
        load_tile_sw128_async<BM, D, NT>(sh.sQ + slot * BM * D, row_view<T>(a.q, a, b, h, s.q_start, s.sq), m0);
        load_tile_sw128_async<BM, D, NT>(sh.sdO + slot * BM * D, row_view<T>(a.dout, a, b, h, s.q_start, s.sq), m0);
        // Rows past the end come in as zeros: their Q and dO rows are zero too, so they add nothing to dK / dV.
        const int64_t lrow0 = lse_row0(a, s, b, h);
#pragma unroll
        for (int k = 0; k < ceil_div(BM, NT); ++k) {
          const int r = threadIdx.x + k * NT;
          if (r >= BM) break;
          const bool inside = m0 + r < s.sq;
          cp_async_4(sh.sLse2 + slot * BM + r, inside ? a.lse2 + lrow0 + m0 + r : a.lse2, inside);
          cp_async_4(sh.sDsum + slot * BM + r, inside ? a.dsum + lrow0 + m0 + r : a.dsum, inside);
        }
        cp_async_arrive(sh.qdo_full + slot);
      }
    }
  });
}

// The tensor map of dq_accum (split D; tma.cuh): rows of head_dim floats, boxes of 32 floats x BM rows.
struct Sm90BwdMaps {
  CUtensorMap dq;
};

// Split D: consumer cw's dQ of a step, columns [128 cw + 32 box, + 32), staged as a TMA box (64 rows x 32 floats,
// 128-byte swizzle: 16-byte chunk c of row r at c ^ r % 8) over one 64-column block of the step's Q (boxes 0, 1) or
// dO (2, 3) tile: blocks 2 cw, 2 cw + 1, which only consumer cw's own dV / dK products read.
template <typename T, typename Tile>
__device__ __forceinline__ float* bwd_sm90_split_dq_box(const Sm90BwdShared<T, Tile>& sh, int slot, int cw, int box) {
  constexpr int BM = Tile::BM, D = Tile::D;
  static_assert(BM * 64 * sizeof(T) == BM * 32 * sizeof(float), "a 64-column block of Q holds one box of dQ");
  return reinterpret_cast<float*>((box < 2 ? sh.sQ : sh.sdO) + slot * BM * D + (2 * cw + box % 2) * BM * 64);
}

// The last key block (of bn keys) whose steps include query block m (of bm rows), given that key block nb's do. Key
// block n sees the block (visible_query_blocks) iff max(0, n bn - diag - win_right) / bm <= m and its query range
// reaches row m bm, which holds from nb on; so the last is the largest n < R / bn, R = (m + 1) bm + diag + win_right
// (R > nb bn, as nb sees the block), or the last key block without a right window bound.
__device__ __forceinline__ int last_key_block_seeing(const AttnArgs& a, const SeqInfo& s, int m, int nb, int bn, int bm) {
  const int last = (s.sk + bn - 1) / bn - 1;
  if (a.win_right < 0) return last;
  return max(nb, min(last, ((m + 1) * bm + s.diag + a.win_right - 1) / bn));
}

// Warps 2-3 of warpgroup 0: per step, once the consumers have stored the step's dQ, add it to dq_accum and release
// what held it when the reductions have read it (deterministic mode: when they have completed, so the CTA's slice
// sees its rows' additions in step order). Row tiles: thread r adds tile rows r, r + 64, ... with one bulk reduction
// each and releases the dQ tile. Split D: thread 0 adds the eight boxes with TMA tensor reductions (rows past the sequence hold exact
// zeros: their Q, dO and so dS are zero) and all release the Q / dO slot.
// Turns (a.dq_turns, one counter per dq_accum row block, zeroed): a step's row block takes its additions from the key
// blocks that see it in descending order: the counter counts the key blocks that have added, so key block nb waits
// for (last key block seeing the row block) - nb, adds, and passes the turn on once its reductions have landed.
template <typename T, typename Tile, bool kTurns>
__device__ __forceinline__ void bwd_sm90_dq_writer(const AttnArgs& a, const Sm90BwdMaps& maps, const Sm90BwdShared<T, Tile>& sh, const SeqInfo& s0) {
  constexpr int BN = Tile::BN, BM = Tile::BM;
  constexpr int kWriterBarrier = 4;  // named barrier of the writer's two warps (1-3: the consumers')
  const int r = threadIdx.x - Tile::kLoaderThreads;
  const bool sliced = a.deterministic && !kTurns;
  const int64_t slice_row0 = sliced ? static_cast<int64_t>(blockIdx.x) * a.lse_rows : 0;  // the CTA's slice
  int ring = 0;
  Sm90BwdWalk<BN, kTurns>::run(a, s0, [&](const SeqInfo& s, int b, int hk, int nb0, int nb_step) {
    for (int nb = nb0; Sm90BwdWalk<BN, kTurns>::more(nb, s); nb += nb_step) {
      const Sm90BwdSteps steps(a, s, nb * BN, BN, BM);
      for (int step = 0; step < steps.count; ++step, ++ring) {
        const int slot = ring & 1, m0 = steps.row0(step, BM);
        const int64_t row0 = slice_row0 + lse_row0(a, s, b, steps.head(a, hk, step)) + m0;  // of dq_accum
        int* turn = kTurns ? a.dq_turns + row0 : nullptr;
        if constexpr (kTurns) {
          if (r == 0) wait_for_turn(turn, last_key_block_seeing(a, s, m0 / BM, nb, BN, BM) - nb);
          named_barrier_sync(kWriterBarrier, Tile::kDqWriterThreads);
          fence_proxy_async_global();  // this thread's reductions come after the turn's acquire
        }
        bool issued = false;
        if constexpr (Tile::kDqInSlot) {
          mbarrier_wait(sh.dq_full + slot, (ring >> 1) & 1);
          if (r == 0) {
#pragma unroll
            for (int cw = 0; cw < 2; ++cw)
#pragma unroll
              for (int box = 0; box < 4; ++box)
                if (128 * cw + 32 * box < a.head_dim)  // a head dim padded to 256: its last boxes are outside
                  tma_reduce_add_box(&maps.dq, 128 * cw + 32 * box, static_cast<int>(row0), bwd_sm90_split_dq_box(sh, slot, cw, box));
            issued = true;
          }
        } else if constexpr (Tile::kSplitD) {
          mbarrier_wait(sh.dq_full, ring & 1);
          if (r == 0) {
#pragma unroll
            for (int box = 0; box < Tile::D / 32; ++box)
              if (32 * box < a.head_dim)
                tma_reduce_add_box(&maps.dq, 32 * box, static_cast<int>(row0), sh.sdQ + box * BM * 32);
            issued = true;
          }
        } else {
          mbarrier_wait(sh.dq_full, ring & 1);
#pragma unroll
          for (int k = 0; k < BM / Tile::kDqWriterThreads; ++k)
            if (const int rr = r + k * Tile::kDqWriterThreads; m0 + rr < s.sq) {
              bulk_reduce_add_f32(a.dq_accum + (row0 + rr) * a.head_dim, sh.sdQ + rr * Tile::kDqLd,
                                  static_cast<uint32_t>(a.head_dim) * sizeof(float));
              issued = true;
            }
        }
        if (issued) {
          bulk_commit_group();
          if (a.deterministic) bulk_wait_group<0>();
          else bulk_wait_group_read<0>();
        }
        if constexpr (kTurns) {
          fence_proxy_async_global();  // the landed reductions before the release
          named_barrier_sync(kWriterBarrier, Tile::kDqWriterThreads);
          if (r == 0) pass_turn(turn);
        }
        mbarrier_arrive(Tile::kDqInSlot ? sh.qdo_empty + slot : sh.dq_empty);
      }
    }
  });
  bulk_wait_group<0>();  // every reduction has landed before the thread exits
}

// ---- consumers ----------------------------------------------------------------------------------------------------

// The consumers' wgmma descriptors of the CTA's tiles (K, V, Q, dO and dS^T serve as K-major and as MN-major operands;
// split D also reads P^T), built once: a ring slot's tiles lie a constant distance after slot 0's, so a step's
// descriptors are these plus an offset (at(buf)), not ten more 64-bit registers. What a consumer does not read, the
// compiler drops.
template <typename T, typename Tile>
struct Sm90BwdDescs {
  uint64_t k_kmaj, v_kmaj, k_nmaj, q_kmaj, q_nmaj, do_kmaj, do_nmaj, ds_kmaj, ds_mmaj, pt_kmaj;
  __device__ __forceinline__ explicit Sm90BwdDescs(const Sm90BwdShared<T, Tile>& sh)
      : k_kmaj(tile_desc_k_major(sh.sK)), v_kmaj(tile_desc_k_major(sh.sV)), k_nmaj(tile_desc_mn_major<Tile::BN>(sh.sK)),
        q_kmaj(tile_desc_k_major(sh.sQ)), q_nmaj(tile_desc_mn_major<Tile::BM>(sh.sQ)), do_kmaj(tile_desc_k_major(sh.sdO)),
        do_nmaj(tile_desc_mn_major<Tile::BM>(sh.sdO)), ds_kmaj(tile_desc_k_major(sh.sdS)),
        ds_mmaj(tile_desc_mn_major<Tile::BN>(sh.sdS)), pt_kmaj(tile_desc_k_major(sh.sPt)) {}
  // The descriptors of ring slot buf's Q, dO, dS^T and P^T tiles (descriptor units: 16 bytes).
  __device__ __forceinline__ Sm90BwdDescs at(int buf) const {
    Sm90BwdDescs d = *this;
    const uint32_t q_slot = buf * (Tile::kTileQ >> 4), ds_slot = buf * (Tile::kTileDs >> 4);
    d.q_kmaj += q_slot, d.q_nmaj += q_slot, d.do_kmaj += q_slot, d.do_nmaj += q_slot;
    d.ds_kmaj += ds_slot, d.ds_mmaj += ds_slot, d.pt_kmaj += ds_slot;
    return d;
  }
};

// What a consumer step reads of its ring slot besides the tiles: the row statistics, and where dS^T (and P^T) go.
template <typename T, typename Tile>
struct Sm90BwdSlot {
  const float* lse2;  // [BM]
  const float* dsum;  // [BM]
  T* ds_tile;         // [BN keys x BM queries]
  T* pt_tile;         // split D
  __device__ __forceinline__ Sm90BwdSlot(const Sm90BwdShared<T, Tile>& sh, int buf)
      : lse2(sh.sLse2 + buf * Tile::BM), dsum(sh.sDsum + buf * Tile::BM), ds_tile(sh.sdS + buf * Tile::BN * Tile::BM),
        pt_tile(sh.sPt + buf * Tile::BN * Tile::BM) {}
};

// Stores a consumer's dQ of one step (64 queries x 64 columns, C layout in dq) into its part of the dQ tile (rows
// [64 cw, + 64) at head dim 64, columns [64 cw, + 64) at 128) and hands the tile to the writer once it has released
// the previous step's (ring > 0).
template <typename T, typename Tile>
__device__ __forceinline__ void bwd_sm90_store_dq(const Sm90BwdShared<T, Tile>& sh, int ring, int cw, const float (&dq)[32]) {
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = Tile::kDqByQueries ? 64 * cw : 0, col0 = Tile::kDqByQueries ? 0 : 64 * cw;
  if (ring > 0) mbarrier_wait(sh.dq_empty, (ring - 1) & 1);
  // Thread (warp, g, t) holds rows 16 warp + g (+ 8) and columns 8j + 2t, +1 of its n-tiles j.
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
#pragma unroll
    for (int j = 0; j < 8; ++j)
      *reinterpret_cast<float2*>(sh.sdQ + (row0 + warp * 16 + g + 8 * hf) * Tile::kDqLd + col0 + 8 * j + 2 * t) =
          make_float2(dq[j * 4 + 2 * hf], dq[j * 4 + 2 * hf + 1]);
  fence_async_smem();
  mbarrier_arrive(sh.dq_full);
}

// The epilogue of a key block: dK (times scale) and dV of this warp's 16 keys from key0.
template <typename T, typename Tile>
__device__ __forceinline__ void bwd_sm90_epilogue(const AttnArgs& a, const SeqInfo& s, int b, int hk, int key0,
                                                  const float (&dk)[Tile::D / 2], const float (&dv)[Tile::D / 2]) {
  store_key_rows<T, Tile::D / 8>(a.dk, a, s, b, hk, key0, 0, [&](int j, int e) { return dk[j * 4 + e]; }, a.scale);
  store_key_rows<T, Tile::D / 8>(a.dv, a, s, b, hk, key0, 0, [&](int j, int e) { return dv[j * 4 + e]; }, 1.f);
}

// A step's first two products, for this warpgroup's 64 keys from key0 of the block and N queries from q0 of the step:
//   S^T = K Q^T, then dP^T = V dO^T (both SS, k over the head dim), committed as two groups; returns once S^T has
// landed, dP^T still running (the caller waits for it with wgmma_wait<0>).
template <int N, typename T, typename Tile>
__device__ __forceinline__ void bwd_sm90_scores(float (&st)[N / 2], float (&dpt)[N / 2], const Sm90BwdDescs<T, Tile>& d, int key0, int q0) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < Tile::D / 16; ++kk)
    Wgmma<N, T>::template ss<0, 0>(st, desc_k_major<Tile::BN>(d.k_kmaj, key0, kk), desc_k_major<Tile::BM>(d.q_kmaj, q0, kk), kk > 0);
  wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < Tile::D / 16; ++kk)
    Wgmma<N, T>::template ss<0, 0>(dpt, desc_k_major<Tile::BN>(d.v_kmaj, key0, kk), desc_k_major<Tile::BM>(d.do_kmaj, q0, kk), kk > 0);
  wgmma_commit();
  wgmma_wait<1>();  // S^T landed; dP^T still runs
  reg_fence(st);
}

// Warpgroups 1 and 2: keys [64 cw, 64 cw + 64) of every key block of this CTA. dK and dV (64 x D each) stay in
// registers over the block's steps; each step runs the five products and stores its share of dQ into the dQ tile.
// The key-block and step loop is written out here and in bwd_sm90_consumer_split_d rather than shared: the same
// loop as one walk helper taking the block and step bodies as lambdas (same logic) made ptxas spill more in every
// instance (sm_90a, bytes of spill stores: hdim 64 52 -> 96, 128 152 -> 188 and turns 512 -> 544, 256 56 -> 84 and
// turns 204 -> 344; seventeenth session), and these loops are the backward's hot path.
template <typename T, typename Tile, bool kTurns>
__device__ __forceinline__ void bwd_sm90_consumer(const AttnArgs& a, unsigned char* smem, const SeqInfo& s0, int wg, int warp, int g, int t) {
  constexpr int D = Tile::D, BN = Tile::BN, BM = Tile::BM, kPasses = BM / 64;
  const Sm90BwdShared<T, Tile> sh(smem);
  warpgroup_claim_registers<Tile::kConsumerRegs>();
  const int cw = wg - 1;        // consumer index
  const int wg_key0 = cw * 64;  // this consumer's keys within the block
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;

  const Sm90BwdDescs<T, Tile> descs(sh);

  int ring = 0, kb = 0;
  Sm90BwdWalk<BN, kTurns>::run(a, s0, [&](const SeqInfo& s, int b, int hk, int nb0, int nb_step) {
    for (int nb = nb0; Sm90BwdWalk<BN, kTurns>::more(nb, s); nb += nb_step, ++kb) {
      const int n0 = nb * BN;
      const Sm90BwdSteps steps(a, s, n0, BN, BM);
      mbarrier_wait(sh.kv_full, kb & 1);
      fence_async_smem();

      float dk[D / 2], dv[D / 2];
#pragma unroll
      for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

      for (int step = 0; step < steps.count; ++step, ++ring) {
        const int buf = ring & 1, h = steps.head(a, hk, step), m0 = steps.row0(step, BM);
        mbarrier_wait(sh.qdo_full + buf, (ring >> 1) & 1);  // this step's Q, dO, lse2, dsum
        fence_async_smem();
        const Sm90BwdDescs<T, Tile> d = descs.at(buf);
        const Sm90BwdSlot<T, Tile> slot(sh, buf);

        // The step's queries in passes of 64 (S^T and dP^T of one pass are 64 fp32 a thread). dS^T of pass p is the
        // A operand of its dK product, still running when pass p + 1 starts: its registers live until then.
        uint32_t dsa[kPasses][4][4];
#pragma unroll
        for (int pass = 0; pass < kPasses; ++pass) {
          const int q0 = 64 * pass;  // the pass's first query of the step
          float st[32], dpt[32];
          bwd_sm90_scores<64>(st, dpt, d, wg_key0, q0);
          if (pass > 0) reg_fence(dsa[pass - 1]);  // the previous pass's dK product is done (S^T's wait covers it)

          // P^T (packed for the dV product) and P^T (1 - tanh^2) kept in st for dS. Thread columns (queries) are the
          // pairs 8j + 2t, +1, so their statistics come as float2.
          const bool masked = tile_needs_mask(a, s, m0 + q0, 64, n0 + wg_key0, 64);
          const float2* lse2_pairs = reinterpret_cast<const float2*>(slot.lse2 + q0) + t;  // [4 j] = queries 8j + 2t, +1
          uint32_t pa[4][4];
          if (!transform && !masked) {  // the common interior tile: one FFMA and one exp2 per score
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              const float2 l2 = lse2_pairs[4 * j];
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int e = j * 4 + 2 * hf;
                st[e] = fast_exp2(fmaf(st[e], a.scale_log2, -l2.x));
                st[e + 1] = fast_exp2(fmaf(st[e + 1], a.scale_log2, -l2.y));
                pa[j / 2][(j % 2) * 2 + hf] = pack2<T>(st[e], st[e + 1]);
              }
            }
          } else {
            const float slope = alibi_slope_log2(a, b, h);
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int key = n0 + wg_key0 + warp * 16 + g + hf * 8;
                int lo = INT_MIN, hi = INT_MAX;
                if (masked) visible_query_range(a, s, key, lo, hi);
                float p[2];
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  const int e = j * 4 + 2 * hf + c;
                  const int qr = q0 + j * 8 + 2 * t + c, i = m0 + qr;
                  float th = 0.f;
                  const float x = transform ? transformed_logit(a, st[e], slope, i + s.diag - key, th) : st[e] * a.scale_log2;
                  p[c] = (i < lo || i > hi) ? 0.f : fast_exp2(x - slot.lse2[qr]);
                  st[e] = p[c] * (1.f - th * th);
                }
                pa[j / 2][(j % 2) * 2 + hf] = pack2<T>(p[0], p[1]);
              }
          }
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) Wgmma<D, T>::template rs<1>(dv, pa[kk], desc_mn_major<BM>(d.do_nmaj, q0 / 16 + kk), 1);
          wgmma_commit();
          wgmma_wait<1>();  // dP^T landed; dV still runs
          reg_fence(dpt);

          // dS^T = P^T (dP^T - dsum): A fragments for dK, and the smem tile dQ reads.
          const float2* dsum_pairs = reinterpret_cast<const float2*>(slot.dsum + q0) + t;
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int qr = q0 + j * 8 + 2 * t, e = j * 4 + 2 * hf;
              const float2 ds = dsum_pairs[4 * j];
              const uint32_t packed = pack2<T>(st[e] * (dpt[e] - ds.x), st[e + 1] * (dpt[e + 1] - ds.y));
              dsa[pass][j / 2][(j % 2) * 2 + hf] = packed;
              sw128_store_pair<BN>(slot.ds_tile, wg_key0 + warp * 16 + g + hf * 8, qr, packed);
            }
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) Wgmma<D, T>::template rs<1>(dk, dsa[pass][kk], desc_mn_major<BM>(d.q_nmaj, q0 / 16 + kk), 1);
          wgmma_commit();
          wgmma_wait<1>();  // dV is done: its P^T registers are free (for the next pass, or dQ's accumulators)
          reg_fence(dv);
          reg_fence(pa);
        }

        // dQ (64 queries x 64 columns per consumer) = dS K over all the block's keys: the queries of 64-column block
        // cw of dS^T and every column of K (head dim 64), or every query and column block cw of K (128).
        fence_async_smem();
        float dq[32];
        named_barrier_sync(1, Tile::kConsumerThreads);  // both consumers' dS^T rows are in smem
        wgmma_fence();
        const int ds_block = Tile::kDqByQueries ? cw : 0, k_block = Tile::kDqByQueries ? 0 : cw;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
          Wgmma<64, T>::template ss<1, 1>(dq, desc_mn_major<BN>(d.ds_mmaj, kk, ds_block), desc_mn_major<BN>(d.k_nmaj, kk, k_block), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(dq);
        reg_fence(dk);
        reg_fence(dsa[kPasses - 1]);
        mbarrier_arrive(sh.qdo_empty + buf);  // every product of this step has read its Q / dO slot
        bwd_sm90_store_dq<T, Tile>(sh, ring, cw, dq);
      }
      mbarrier_arrive(sh.kv_empty);  // the last dQ product has read K

      bwd_sm90_epilogue<T, Tile>(a, s, b, hk, n0 + wg_key0 + warp * 16, dk, dv);
    }
  });
}

// Split D (head dim 256): warpgroups 1 and 2 share the block's 64 keys; consumer cw computes S^T and dP^T for queries
// [32 cw, 32 cw + 32) of each step, and dK, dV, dQ for columns [128 cw, 128 cw + 128) (header comment).
template <typename T, typename Tile, bool kTurns>
__device__ __forceinline__ void bwd_sm90_consumer_split_d(const AttnArgs& a, unsigned char* smem, const SeqInfo& s0, int wg, int warp, int g, int t) {
  constexpr int D = Tile::D, BN = Tile::BN, BM = Tile::BM;
  constexpr int QW = BM / 2;  // queries of S^T / dP^T per consumer
  const Sm90BwdShared<T, Tile> sh(smem);
  warpgroup_claim_registers<Tile::kConsumerRegs>();
  const int cw = wg - 1;
  constexpr int WN = Tile::kWideN, NN = Tile::kNarrowN;
  const int q0 = cw * QW;                                    // this consumer's first query of S^T
  // Its columns (Sm90BwdTile::kWideN): the wide part starts a 64-column block, the narrow one (192) may not.
  const int wide_block = cw * ((D - WN) / 64), wide_col = 64 * wide_block, narrow_col = cw == 0 ? WN : D / 2;
  const int key_row = warp * 16 + g;                     // this thread's key rows of S^T: key_row, key_row + 8
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;

  const Sm90BwdDescs<T, Tile> descs(sh);

  int ring = 0, kb = 0;
  Sm90BwdWalk<BN, kTurns>::run(a, s0, [&](const SeqInfo& s, int b, int hk, int nb0, int nb_step) {
    for (int nb = nb0; Sm90BwdWalk<BN, kTurns>::more(nb, s); nb += nb_step, ++kb) {
      const int n0 = nb * BN;
      const Sm90BwdSteps steps(a, s, n0, BN, BM);
      mbarrier_wait(sh.kv_full, kb & 1);
      fence_async_smem();

      // dK and dV of the wide and (head dim 192) narrow column parts
      float dk[WN / 2], dv[WN / 2], dk_n[NN > 0 ? NN / 2 : 1], dv_n[NN > 0 ? NN / 2 : 1];
#pragma unroll
      for (int i = 0; i < WN / 2; ++i) dk[i] = dv[i] = 0.f;
#pragma unroll
      for (int i = 0; i < (NN > 0 ? NN / 2 : 1); ++i) dk_n[i] = dv_n[i] = 0.f;

      for (int step = 0; step < steps.count; ++step, ++ring) {
        const int buf = ring & 1, h = steps.head(a, hk, step), m0 = steps.row0(step, BM);
        mbarrier_wait(sh.qdo_full + buf, (ring >> 1) & 1);  // this step's Q, dO, lse2, dsum
        fence_async_smem();
        const Sm90BwdDescs<T, Tile> d = descs.at(buf);
        const Sm90BwdSlot<T, Tile> slot(sh, buf);

        // S^T = K Q_w^T and dP^T = V dO_w^T: 64 keys x 32 queries, k over every column.
        float st[QW / 2], dpt[QW / 2];
        bwd_sm90_scores<QW>(st, dpt, d, 0, q0);

        // P^T into its tile; st keeps P^T (1 - tanh^2) for dS. Thread columns (queries q0 + 8j + 2t, +1) come as pairs.
        const bool masked = tile_needs_mask(a, s, m0 + q0, QW, n0, BN);
        const float2* lse2_pairs = reinterpret_cast<const float2*>(slot.lse2 + q0) + t;  // [4 j] = queries q0 + 8j + 2t, +1
        if (!transform && !masked) {
#pragma unroll
          for (int j = 0; j < QW / 8; ++j) {
            const float2 l2 = lse2_pairs[4 * j];
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int e = j * 4 + 2 * hf;
              st[e] = fast_exp2(fmaf(st[e], a.scale_log2, -l2.x));
              st[e + 1] = fast_exp2(fmaf(st[e + 1], a.scale_log2, -l2.y));
              sw128_store_pair<BN>(slot.pt_tile, key_row + 8 * hf, q0 + 8 * j + 2 * t, pack2<T>(st[e], st[e + 1]));
            }
          }
        } else {
          const float slope = alibi_slope_log2(a, b, h);
#pragma unroll
          for (int j = 0; j < QW / 8; ++j)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int key = n0 + key_row + hf * 8;
              int lo = INT_MIN, hi = INT_MAX;
              if (masked) visible_query_range(a, s, key, lo, hi);
              float p[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int e = j * 4 + 2 * hf + c;
                const int qr = q0 + j * 8 + 2 * t + c, i = m0 + qr;
                float th = 0.f;
                const float x = transform ? transformed_logit(a, st[e], slope, i + s.diag - key, th) : st[e] * a.scale_log2;
                p[c] = (i < lo || i > hi) ? 0.f : fast_exp2(x - slot.lse2[qr]);
                st[e] = p[c] * (1.f - th * th);
              }
              sw128_store_pair<BN>(slot.pt_tile, key_row + 8 * hf, q0 + 8 * j + 2 * t, pack2<T>(p[0], p[1]));
            }
        }
        wgmma_wait<0>();  // dP^T landed
        reg_fence(dpt);

        // dS^T = P^T (dP^T - dsum) into its tile.
        const float2* dsum_pairs = reinterpret_cast<const float2*>(slot.dsum + q0) + t;
#pragma unroll
        for (int j = 0; j < QW / 8; ++j)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int e = j * 4 + 2 * hf;
            const float2 ds = dsum_pairs[4 * j];
            sw128_store_pair<BN>(slot.ds_tile, key_row + 8 * hf, q0 + 8 * j + 2 * t,
                                 pack2<T>(st[e] * (dpt[e] - ds.x), st[e + 1] * (dpt[e + 1] - ds.y)));
          }
        fence_async_smem();
        named_barrier_sync(1, Tile::kConsumerThreads);  // both consumers' queries of P^T and dS^T are in smem

        // dV_w += P^T dO_w, dK_w += dS^T Q_w (k over the 64 queries), dQ_w = dS K_w (k over the 64 keys), per column part.
        float dq[WN / 2], dq_n[NN > 0 ? NN / 2 : 1];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
          Wgmma<WN, T>::template ss<0, 1>(dv, desc_k_major<BN>(d.pt_kmaj, 0, kk), desc_mn_major<BM>(d.do_nmaj, kk, wide_block), 1);
          if constexpr (NN > 0)
            Wgmma<NN, T>::template ss<0, 1>(dv_n, desc_k_major<BN>(d.pt_kmaj, 0, kk), desc_mn_major_at<BM>(d.do_nmaj, kk, narrow_col), 1);
        }
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
          Wgmma<WN, T>::template ss<0, 1>(dk, desc_k_major<BN>(d.ds_kmaj, 0, kk), desc_mn_major<BM>(d.q_nmaj, kk, wide_block), 1);
          if constexpr (NN > 0)
            Wgmma<NN, T>::template ss<0, 1>(dk_n, desc_k_major<BN>(d.ds_kmaj, 0, kk), desc_mn_major_at<BM>(d.q_nmaj, kk, narrow_col), 1);
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          Wgmma<WN, T>::template ss<1, 1>(dq, desc_mn_major<BN>(d.ds_mmaj, kk), desc_mn_major<BN>(d.k_nmaj, kk, wide_block), kk > 0);
          if constexpr (NN > 0)
            Wgmma<NN, T>::template ss<1, 1>(dq_n, desc_mn_major<BN>(d.ds_mmaj, kk), desc_mn_major_at<BN>(d.k_nmaj, kk, narrow_col), kk > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(dq);
        reg_fence(dk);
        reg_fence(dv);
        if constexpr (NN > 0) {
          reg_fence(dq_n);
          reg_fence(dk_n);
          reg_fence(dv_n);
        }

        // Stage dQ_w as swizzled boxes: at 256 over this consumer's column blocks of the slot (its own dV / dK products,
        // the last readers, are done), at 192 in the dQ tile once the writer has released the previous step's (the slot
        // goes back to the loader first). Thread (warp, g, t) holds rows 16 warp + g (+8) and columns 8j + 2t, +1 of
        // n-tiles j: the eight rows of a store instruction land in eight different chunks, two wavefronts for 256 bytes.
        if constexpr (Tile::kDqInSlot) {
#pragma unroll
          for (int box = 0; box < WN / 32; ++box) {
            float* tile = bwd_sm90_split_dq_box(sh, buf, cw, box);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int r = warp * 16 + g + 8 * hf;
#pragma unroll
              for (int jj = 0; jj < 4; ++jj) {
                const int col = 8 * jj + 2 * t, e = (box * 4 + jj) * 4 + 2 * hf;
                *reinterpret_cast<float2*>(tile + sw128_f32_offset(r, col)) = make_float2(dq[e], dq[e + 1]);
              }
            }
          }
        } else {
          mbarrier_arrive(sh.qdo_empty + buf);
          if (ring > 0) mbarrier_wait(sh.dq_empty, (ring - 1) & 1);
          auto stage = [&](int col0, int n_tiles, const float* acc) {
#pragma unroll
            for (int j = 0; j < n_tiles; ++j) {
              const int col = col0 + 8 * j;  // a multiple of 8: the n-tile stays in one box
              float* box = sh.sdQ + (col / 32) * BM * 32;
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int r = warp * 16 + g + 8 * hf;
                *reinterpret_cast<float2*>(box + sw128_f32_offset(r, col % 32 + 2 * t)) =
                    make_float2(acc[j * 4 + 2 * hf], acc[j * 4 + 2 * hf + 1]);
              }
            }
          };
          stage(wide_col, WN / 8, dq);
          stage(narrow_col, NN / 8, dq_n);
        }
        fence_async_smem();
        mbarrier_arrive(Tile::kDqInSlot ? sh.dq_full + buf : sh.dq_full);
      }
      mbarrier_arrive(sh.kv_empty);  // the last dQ product has read K

      const int key0 = n0 + warp * 16;
      store_key_rows<T, WN / 8>(a.dk, a, s, b, hk, key0, wide_col, [&](int j, int e) { return dk[j * 4 + e]; }, a.scale);
      store_key_rows<T, WN / 8>(a.dv, a, s, b, hk, key0, wide_col, [&](int j, int e) { return dv[j * 4 + e]; }, 1.f);
      if constexpr (NN > 0) {
        store_key_rows<T, NN / 8>(a.dk, a, s, b, hk, key0, narrow_col, [&](int j, int e) { return dk_n[j * 4 + e]; }, a.scale);
        store_key_rows<T, NN / 8>(a.dv, a, s, b, hk, key0, narrow_col, [&](int j, int e) { return dv_n[j * 4 + e]; }, 1.f);
      }
    }
  });
}

template <typename T, typename Tile, bool kTurns>
__global__ void __launch_bounds__(Tile::kThreads, 1) bwd_sm90_kernel(const __grid_constant__ AttnArgs a,
                                                                    const __grid_constant__ Sm90BwdMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = swizzle_aligned_smem(smem_raw);  // each role takes its own Sm90BwdShared view of it
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // The normal and sliced grids' sequence (the turns' walk reads each pair's)
  const SeqInfo s0 = kTurns ? SeqInfo{} : seq_info(a, blockIdx.z);
  if (threadIdx.x == 0) Sm90BwdShared<T, Tile>(smem).init_barriers();
  __syncthreads();
  if (wg == 0) {
    warpgroup_release_registers<Tile::kProducerRegs>();
    if (warp < 2) bwd_sm90_loader<T, Tile, kTurns>(a, Sm90BwdShared<T, Tile>(smem), s0);
    else bwd_sm90_dq_writer<T, Tile, kTurns>(a, maps, Sm90BwdShared<T, Tile>(smem), s0);
    return;
  }
  if constexpr (Tile::kSplitD) bwd_sm90_consumer_split_d<T, Tile, kTurns>(a, smem, s0, wg, warp, g, t);
  else bwd_sm90_consumer<T, Tile, kTurns>(a, smem, s0, wg, warp, g, t);
#endif
}

// grid_ctas: the normal and sliced grids' CTAs per (batch, KV head); with turns (a.dq_turns), the persistent grid's
// CTAs (slots x a.dq_lanes, at most one per SM), launched cooperatively: the launch fails rather than leave one of
// them waiting for a place.
template <typename T, int D>
gpuError_t launch_bwd_sm90(const AttnArgs& a, int grid_ctas, gpuStream_t stream) {
  using Tile = Sm90BwdTile<D>;
  const bool turns = Tile::kDqTurns && a.dq_turns != nullptr;
  Sm90BwdMaps maps{};
  if constexpr (Tile::kSplitD) {
    // dq_accum (the library's own allocation: aligned, rows of head_dim floats, one slice per CTA when sliced) as a
    // TMA target; its rows are addressed in int by the instruction.
    const int64_t rows = a.lse_rows * (a.deterministic && !turns ? grid_ctas : 1);
    if (rows + Tile::BM > INT_MAX || !encode_rows_map_f32(&maps.dq, a.dq_accum, a.head_dim, rows, Tile::BM, nullptr))
      return cudaErrorNotSupported;
  }
  if constexpr (Tile::kDqTurns) {
    if (turns) {
      auto kernel = bwd_sm90_kernel<T, Tile, true>;
      gpuError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tile::smem_bytes()));
      if (err != cudaSuccess) return err;
      cudaLaunchAttribute cooperative{};
      cooperative.id = cudaLaunchAttributeCooperative;
      cooperative.val.cooperative = 1;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(grid_ctas), config.blockDim = dim3(Tile::kThreads), config.dynamicSmemBytes = Tile::smem_bytes();
      config.stream = stream, config.attrs = &cooperative, config.numAttrs = 1;
      return cudaLaunchKernelEx(&config, kernel, a, maps);
    }
  }
  return launch_attention_kernel(bwd_sm90_kernel<T, Tile, false>, dim3(grid_ctas, a.heads_kv, a.batch), Tile::kThreads,
                                 Tile::smem_bytes(), stream, a, maps);
}

}  // namespace fa::tc
