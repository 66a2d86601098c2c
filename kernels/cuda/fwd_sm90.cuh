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
// It is warp-specialised (FA3's schedule):
//   warpgroup 0, the producer: fetches the next tile index and publishes it in a two-slot ring, copies each tile's Q
//     (a Q ring of kQSlots) and K / V into a ring of kStages 128B-swizzled tiles (wgmma.cuh) that runs on across
//     tiles; every slot is guarded by full / empty mbarriers, so no math warp issues a copy or waits at a CTA barrier.
//     The copies are the TMA engine's (tma.cuh: one thread issues a tile as a few boxes) for the tiles with kTma
//     whose tensors can be mapped, else cp.async by the producer's 128 threads (varlen batches, see Sm90FwdMaps);
//   warpgroups 1.., the consumers, 64 query rows each. Per key block n:
//     S_n  = Q K_n^T                    SS wgmma, m64 x BN, fp32 accumulators
//     O   += P_{n-1} V_{n-1}            RS wgmma, P from registers, V read N-major; issued right after S_n, meant to
//                                       run while this warpgroup computes the softmax of S_n (ptxas still waits for
//                                       it first: fwd_sm90_mainloop says why)
//     m', l, P_n = exp2(S_n c - m' c)   the online softmax of fwd.cuh (shared helper), base 2, scale folded in
//     O   *= exp2((m - m') c)           before the next P V product is issued
//   and finally O += P_last V_last, O / l, LSE. The consumers take turns to issue their products (ping-pong over
//   named barriers): while one warpgroup's exp2s run on the MUFU, the tensor cores work for the other.
// Work per block and consumer: 4 x 64 BN D flops in two products; exp2 for 64 BN scores.
//
// FP8 (T = fp8_e4m3_t / fp8_e5m2_t; flashattn.h's semantics): the same kernel with k32 products, whose operands must
// both be K-major. Q and K are; V is not, so the producer copies each V block into a staging tile and transposes it
// into the V ring (V^T: D rows of BN keys), permuting the keys of every 32-key step so that a consumer can feed P to
// the product from the registers it holds the scores in (the fp8 A fragment takes columns 4t..4t+3 where the
// accumulator has 2t, 2t + 1, 2t + 8, 2t + 9: sm90_pack_p / fp8_transposed_key). P is rounded to E4M3 there; the
// row sums use the fp32 P. The descale factors of the tile's (sequence, kv head) fold into the softmax multiplier
// (q x k) and the epilogue (v); o is written in a.out_dtype. One CTA per tile (no persistent grid).
#pragma once

#include "attn.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fa::tc {

template <typename T, int D_, int BN_, bool kPersistent_, int kStages_ = 2, int kVStaging_ = 0, bool kTma_ = false>
struct Sm90FwdTile {
  using Element = Sm90Element<T>;
  static constexpr bool kFp8 = Element::kFp8;
  static constexpr int D = D_, BN = BN_, kConsumers = 2, BM = 64 * kConsumers;
  static constexpr int kStages = kStages_;  // slots of the K / V ring (16-bit: 2; 3 at hdim 64: -2%, docs/perf-cuda.md v6)
  static constexpr int kHeadGroup = 16;     // a persistent grid's tile order (fwd_sm90_kernel's work_of)
  static constexpr bool kPersistent = kPersistent_;
  // The producer copies with the TMA engine when the tensors can be mapped (Sm90FwdMaps), else with cp.async.
  static constexpr bool kTma = kTma_;
  static constexpr int kThreads = 128 * (kConsumers + 1);  // the producer warpgroup + the consumers
  static constexpr int kConsumerThreads = 128 * kConsumers;
  // setmaxnreg budgets, multiples of 8: the consumers can only take what the producer gives back from the launch
  // allocation (65536 / 384 threads, rounded down to 8: 168 each), or setmaxnreg.inc waits forever.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegs = 56, kConsumerRegs = 224;
  static_assert(128 * kProducerRegs + kConsumerThreads * kConsumerRegs <= kThreads * kLaunchRegs, "register budget");
  static constexpr int kTileQ = BM * D * sizeof(T), kTileKV = BN * D * sizeof(T);  // bytes
  // fp8: V blocks land in raw staging tiles, which the producer transposes into the V ring (fwd_sm90_producer).
  static constexpr int kVStaging = kVStaging_;
  static constexpr int kPSteps = BN / Element::kStepK;  // k-steps of the P V product: P's A fragments
  // P_{n-1} V_{n-1} runs while the softmax of S_n is computed, which keeps O, P_{n-1} and S_n live together: at fp8
  // head dim 256 that is 128 + 16 + 64 registers, and ptxas spilled and serialised the wgmmas (C7512). There the two
  // products of a block run one after the other, and the other consumer's turn fills the gap.
  static constexpr bool kOverlapPV = !(kFp8 && D == 256);
  // The online softmax's lazy reference max (attn.cuh, kMaxSlackLog2) where it measured faster: 16-bit hdim 256, whose
  // O rescale is 128 multiplies a thread (H100, same call: +2-6%; hdim 64 -4 to -12%, hdim 128 -1 to -3%, decode -2 to
  // -5% at b8, where the extra compares cost more than the skipped rescales saved; fp8: see kMaxSlackLog2).
  static constexpr bool kLazyMax = !kFp8 && D == 256;
  // A persistent CTA keeps two Q slots (the next tile's Q lands during this one) and stages its output in rows of its
  // own (the next tile's copies may be landing in Q and K); a one-tile CTA stages over Q and the K slots at the end.
  static constexpr int kQSlots = kPersistent ? 2 : 1;
  static constexpr int kStage = kPersistent ? BM * (D + kPad) * 2 : 0;
  // Q and tile-index full / empty, two of each, K and V full / empty, kStages of each; then the two published tile
  // indices.
  static constexpr int kBarriers = 8 + 4 * kStages;
  static constexpr size_t smem_bytes() {
    return kSwizzleAlign + kQSlots * kTileQ + (2 * kStages + kVStaging) * static_cast<size_t>(kTileKV) + kStage +
           kBarriers * sizeof(uint64_t) + 2 * sizeof(int);
  }
  static_assert(smem_bytes() <= 227 * 1024, "fits an H100's shared memory per block");
  static_assert(D % Element::kSwizzleCols == 0 && BN % 16 == 0 && BN <= 256 && D <= 256,
                "wgmma shapes: N <= 256, whole swizzle rows");
  static_assert(!kFp8 || (BN == 128 && !kPersistent), "fp8: V^T rows of BN keys are one 128-byte swizzle row; one tile per CTA");
  static_assert(kFp8 ? (kVStaging == 2 || kVStaging == 3) : kVStaging == 0, "fp8 stages V in two or three tiles");
  static_assert(BM * (D + kPad) * 2 <= kTileQ + 2 * kTileKV, "the output staging (16-bit o) fits over Q and the K slots");
};

// Tile table (H100/H200: 227 KB of smem per block). hdim 64/128: 128-key blocks (160 KB at 128); 192/256: 64-key
// blocks keep Q + 2 K + 2 V under the limit and O (D/2 registers per thread) beside S and P. Persistent at hdim 64,
// where a second Q slot and the staging rows fit (115 KB) and a tile is short enough for its start and drain to weigh;
// at 128 they would need 227 KB + 200 bytes. (Tried at hdim 64: three consumers of 192 rows with 96-key blocks: +6% at
// 8k, -7% at 2k; one consumer and two CTAs per SM: -7 to -30%; see docs/perf-cuda.md.)
// fp8 (half the bytes per element): 128-key blocks at both head dims. Hdim 128: a ring of 4 and 3 staging tiles (192
// KB), so that the copies run 3 blocks ahead; hdim 256: Q + 2 K + 2 V^T + 2 staging tiles fill the 224 KB.
// TMA copies at 16-bit hdim 128, 192 and 256, where they measured +4-6% at 8k and level at 2k (128), +0-4% (192 /
// 256); the persistent hdim-64 kernel lost 4-5% with them and the fp8 hdim-128 one 1-2% (docs/perf-cuda.md).
template <typename T, int D, bool kFp8 = Sm90Element<T>::kFp8> struct Sm90FwdTileFor;
template <typename T> struct Sm90FwdTileFor<T, 64, false> { using type = Sm90FwdTile<T, 64, 128, true>; };
template <typename T> struct Sm90FwdTileFor<T, 128, false> { using type = Sm90FwdTile<T, 128, 128, false, 2, 0, true>; };
template <typename T> struct Sm90FwdTileFor<T, 192, false> { using type = Sm90FwdTile<T, 192, 64, false, 2, 0, true>; };
template <typename T> struct Sm90FwdTileFor<T, 256, false> { using type = Sm90FwdTile<T, 256, 64, false, 2, 0, true>; };
template <typename T> struct Sm90FwdTileFor<T, 128, true> { using type = Sm90FwdTile<T, 128, 128, false, 4, 3>; };
template <typename T> struct Sm90FwdTileFor<T, 256, true> { using type = Sm90FwdTile<T, 256, 128, false, 2, 2>; };

// ---- shared memory ------------------------------------------------------------------------------------------------

// The CTA's shared memory, in allocation order: the Q slots, the K and V rings, the persistent CTA's output staging
// rows, fp8's raw V staging tiles, the mbarriers (Q and tile-index full / empty, two of each; K and V full / empty, kStages of each) and the two
// published tile indices.
template <typename T, typename Tile>
struct Sm90FwdShared {
  static constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, QS = Tile::kQSlots, S = Tile::kStages;
  T* sQ;      // [QS][BM x D], swizzled
  T* sK;      // [S][BN x D], swizzled
  T* sV;      // [S][BN x D], swizzled
  T* sStage;  // [BM x (D + kPad)] when persistent
  T* sVraw;   // fp8: [2][BN x D], swizzled, V blocks as they arrive
  uint64_t *q_full, *q_empty, *tile_full, *tile_empty, *k_full, *v_full, *k_empty, *v_empty;
  int* tile_slot;  // [2] published tile indices

  __device__ __forceinline__ explicit Sm90FwdShared(unsigned char* smem) {
    sQ = reinterpret_cast<T*>(smem);
    sK = reinterpret_cast<T*>(smem + QS * Tile::kTileQ);
    sV = sK + S * BN * D;
    sStage = sV + S * BN * D;
    sVraw = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(sStage) + Tile::kStage);
    q_full = reinterpret_cast<uint64_t*>(reinterpret_cast<unsigned char*>(sVraw) + Tile::kVStaging * Tile::kTileKV);
    q_empty = q_full + 2;
    tile_full = q_full + 4;
    tile_empty = q_full + 6;
    k_full = q_full + 8;
    v_full = k_full + S;
    k_empty = k_full + 2 * S;
    v_empty = k_full + 3 * S;
    tile_slot = reinterpret_cast<int*>(q_full + Tile::kBarriers);
  }

  // Thread 0 only; the CTA synchronises before anyone waits on them. A full barrier waits for one arrival per
  // copying thread: the TMA issuer's (which also brings the byte count), or each of the producer's 128 threads'
  // (cp.async; fp8's V, which every producer thread transposes).
  __device__ __forceinline__ void init_barriers(bool tma) const {
    const int copiers = tma ? 1 : 128, v_copiers = tma && !Tile::kFp8 ? 1 : 128;
    for (int slot = 0; slot < 2; ++slot) {
      mbarrier_init(q_full + slot, copiers), mbarrier_init(q_empty + slot, Tile::kConsumerThreads);
      mbarrier_init(tile_full + slot, 1), mbarrier_init(tile_empty + slot, Tile::kThreads);
    }
    for (int slot = 0; slot < S; ++slot) {
      mbarrier_init(k_full + slot, copiers), mbarrier_init(v_full + slot, v_copiers);
      mbarrier_init(k_empty + slot, Tile::kConsumerThreads), mbarrier_init(v_empty + slot, Tile::kConsumerThreads);
    }
    mbarrier_init_fence();
  }

  // K / V ring iteration gi uses slot gi % S and is that slot's (gi / S)-th filling (the parity its barriers wait for).
  static __device__ __forceinline__ int slot_of(int gi) { return static_cast<int>(static_cast<unsigned>(gi) % S); }
  static __device__ __forceinline__ uint32_t parity_of(int gi) { return static_cast<uint32_t>(static_cast<unsigned>(gi) / S) & 1; }
  __device__ __forceinline__ T* q_buf(int qi) const { return sQ + (qi % QS) * BM * D; }
  __device__ __forceinline__ T* k_buf(int gi) const { return sK + slot_of(gi) * BN * D; }
  __device__ __forceinline__ T* v_buf(int gi) const { return sV + slot_of(gi) * BN * D; }
  __device__ __forceinline__ T* v_raw(int gi) const { return sVraw + (gi % Tile::kVStaging) * BN * D; }
};

// ---- tile scheduler -----------------------------------------------------------------------------------------------

// One tile: row block m0 of head h of sequence b, key blocks of split `split`.
struct Sm90FwdWork {
  int m0, h, b, split;
  SeqInfo s;
  KeyBlocks blocks;
  bool run;  // false: a row block past this (varlen) sequence's end
};

// The tile index space, row blocks x heads x (batch x split), and the order tiles are handed out in: one tile per CTA
// (its block index), or, when persistent, the first by block index and the rest from the global counter, published
// by the producer's thread 0 in a two-slot ring that every thread of the CTA reads.
template <typename Tile>
struct Sm90FwdScheduler {
  static constexpr int BM = Tile::BM, BN = Tile::BN;
  const int m_count, total;
  const bool dynamic;      // tiles come from a.tile_counter, else one tile per CTA
  const bool masked_grid;  // a tile's key range depends on its rows
  const int first_tile;    // this CTA's own tile: its block index

  __device__ __forceinline__ explicit Sm90FwdScheduler(const AttnArgs& a)
      : m_count(ceil_div(a.seqlen_q, BM)),
        total(m_count * a.heads_q * a.batch * a.num_splits),
        dynamic(Tile::kPersistent && a.tile_counter != nullptr),
        masked_grid((a.win_left >= 0) | (a.win_right >= 0)),
        first_tile(blockIdx.x) {}

  __device__ __forceinline__ Sm90FwdWork work_of(const AttnArgs& a, int tile) const {
    Sm90FwdWork w;
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
  }

  // The producer's thread 0 publishes tile k of this CTA.
  template <typename Shared>
  __device__ __forceinline__ void publish_tile(const Shared& sh, int k, int tile) const {
    if (k >= 2) mbarrier_wait(sh.tile_empty + (k & 1), ((k >> 1) & 1) ^ 1);
    sh.tile_slot[k & 1] = tile;
    mbarrier_arrive(sh.tile_full + (k & 1));
  }

  // Tile k of this CTA as published (every thread of the CTA reads slot k & 1, then releases it).
  template <typename Shared>
  __device__ __forceinline__ int read_tile(const Shared& sh, int k) const {
    mbarrier_wait(sh.tile_full + (k & 1), (k >> 1) & 1);
    const int tile = sh.tile_slot[k & 1];
    mbarrier_arrive(sh.tile_empty + (k & 1));
    return tile;
  }
};

// ---- fp8: V transposed on its way into the ring --------------------------------------------------------------------

// The producer warpgroup's own named barrier (1..kConsumers: the consumers' turns, kConsumers + 1: their epilogue).
template <typename Tile>
constexpr int kProducerBarrier = Tile::kConsumers + 2;
// Named barriers kConsumerStoreBarrier + cw: consumer cw's 128 threads before its TMA store (fwd_sm90_store_tma).
template <typename Tile>
constexpr int kConsumerStoreBarrier = Tile::kConsumers + 3;

// The key at k-slot s of the fp8 P V product's V^T tile. A consumer packs P from its accumulators as it holds them
// (sm90_pack_p): A-fragment byte i of thread t's register for slots 16 hf + 4t.. of a 32-key step is the score of key
// 16 hf + 8 (i / 2) + 2t + i % 2, so V^T's slots hold those keys (the product sums over slots, so any permutation
// applied to both operands gives the same O).
__device__ __forceinline__ constexpr int fp8_transposed_key(int s) {
  const int step = s / 32, hf = s % 32 / 16, t = s % 16 / 4, i = s % 4;
  return 32 * step + 16 * hf + 8 * (i / 2) + 2 * t + i % 2;
}

// Transposes a staged V block (`raw`: BN keys x D, swizzled as load_tile_sw128_async stores it) into a V^T ring tile
// (`vt`: D rows of BN key slots, swizzled; slot s holds key fp8_transposed_key(s)). The 128 producer threads take
// jobs (4-slot word w, 16-column chunk c): lane = w, warp and pass give c. A job reads four 16-byte row pieces (keys k,
// k + 1, k + 8, k + 9 of columns 16c..16c + 15), transposes the 4 x 16 bytes with byte permutes and writes sixteen
// 4-byte words, one per column; a warp's stores cover one whole 128-byte V^T row (no bank conflicts).
// Addressing is most of the cost of such a loop (ncu: 260 instructions per job in its first form, 200 of them integer),
// so it is done on 32-bit shared addresses with every swizzle term that can be a constant made one: V^T row 16c + j
// has swizzle phase j % 8 whatever c is, so a lane's chunk there is (w / 4) ^ (j % 8), one xor with a constant; the
// staged rows k and k + 8 share a phase, as do k + 1 and k + 9.
template <typename Tile, typename T>
__device__ __forceinline__ void transpose_v_fp8(T* vt, const T* raw) {
  constexpr int D = Tile::D, BN = Tile::BN, kWords = BN / 4, kPasses = kWords * (D / 16) / 128;
  static_assert(kWords == 32 && BN == kSwizzleRowBytes, "one lane per 4-key word of a V^T row of BN one-byte keys");
  const int w = threadIdx.x % 32, warp = threadIdx.x / 32, k = fp8_transposed_key(4 * w);
  const uint32_t src = smem_addr(raw) + k * kSwizzleRowBytes, dst = smem_addr(vt) + (w % 4) * 4;
  const uint32_t word = (w / 4) * 16;  // this lane's 16-byte chunk of a V^T row of swizzle phase 0
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int c = warp + 4 * pass;  // 16-column chunk: staged column block c / 8, chunk c % 8 of its rows
    const uint32_t block = (c / 8) * (BN * kSwizzleRowBytes), chunk = c % 8;
    const uint32_t at0 = src + block + ((chunk ^ (k % 8)) * 16), at1 = src + block + ((chunk ^ ((k + 1) % 8)) * 16);
    uint32_t x[4][4];  // rows k, k + 1, k + 8, k + 9
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(x[0][0]), "=r"(x[0][1]), "=r"(x[0][2]), "=r"(x[0][3]) : "r"(at0));
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(x[1][0]), "=r"(x[1][1]), "=r"(x[1][2]), "=r"(x[1][3]) : "r"(at1 + kSwizzleRowBytes));
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(x[2][0]), "=r"(x[2][1]), "=r"(x[2][2]), "=r"(x[2][3]) : "r"(at0 + 8 * kSwizzleRowBytes));
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(x[3][0]), "=r"(x[3][1]), "=r"(x[3][2]), "=r"(x[3][3]) : "r"(at1 + 9 * kSwizzleRowBytes));
    const uint32_t row0 = dst + 16 * c * kSwizzleRowBytes;  // V^T row 16c
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // columns 16c + 4q .. + 3
      // pairs of rows interleaved (bytes 0-1 / 2-3 of the four rows), then the pairs merged: word m = column 4q + m
      const uint32_t lo01 = __byte_perm(x[0][q], x[1][q], 0x5140), hi01 = __byte_perm(x[0][q], x[1][q], 0x7362);
      const uint32_t lo23 = __byte_perm(x[2][q], x[3][q], 0x5140), hi23 = __byte_perm(x[2][q], x[3][q], 0x7362);
      const uint32_t col[4] = {__byte_perm(lo01, lo23, 0x5410), __byte_perm(lo01, lo23, 0x7632),
                               __byte_perm(hi01, hi23, 0x5410), __byte_perm(hi01, hi23, 0x7632)};
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int j = 4 * q + m;  // V^T row 16c + j, swizzle phase j % 8
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(row0 + j * kSwizzleRowBytes + (word ^ ((j % 8) * 16))), "r"(col[m]) : "memory");
      }
    }
  }
}

// Ring iteration g's V block, staged by this producer earlier, into the V ring: waits until the consumers have released
// the slot, transposes, and publishes the slot to wgmma (the generic-proxy stores fenced before the arrival).
template <typename T, typename Tile>
__device__ __forceinline__ void fp8_publish_v(const Sm90FwdShared<T, Tile>& sh, int g) {
  using Shared = Sm90FwdShared<T, Tile>;
  if (g >= Tile::kStages) mbarrier_wait(sh.v_empty + Shared::slot_of(g), Shared::parity_of(g) ^ 1);
  transpose_v_fp8<Tile>(sh.v_buf(g), sh.v_raw(g));
  fence_async_smem();
  mbarrier_arrive(sh.v_full + Shared::slot_of(g));
}

// Every producer thread's copies but the last N groups have landed (this thread's, then the barrier), and every
// producer thread is done with what it transposed before.
template <typename Tile, int N>
__device__ __forceinline__ void fp8_staging_sync() {
  cp_async_wait<N>();
  named_barrier_sync(kProducerBarrier<Tile>, 128);
}

// ---- producer -----------------------------------------------------------------------------------------------------

// The tensor maps of q, k and v (tma.cuh; boxes of a Q tile's and of a key block's rows) when the producer copies with
// the TMA engine. enabled = 0: cp.async by the producer's threads — varlen batches (a sequence's last tile would run
// into the next sequence's rows, where cp.async and a per-sequence map give zeros) and tensors the driver will not map.
struct Sm90FwdMaps {
  CUtensorMap q, k, v;
  CUtensorMap o;  // boxes of one consumer's 64 rows, for the epilogue's TMA stores (o_enabled)
  int enabled, o_enabled;
};

// A tile of R rows x D columns from row row0 of `rows` (head `head` of sequence `seq` in `map`) into `dst`, completing
// on `full`: by the TMA engine (map set: the one issuing thread) or by the producer's 128 threads with cp.async.
template <int R, int D, typename T>
__device__ __forceinline__ void producer_copy(T* dst, uint64_t* full, const CUtensorMap* map, const RowView<T>& rows, int head,
                                              int row0, int seq) {
  if (map != nullptr) {
    mbarrier_arrive_expect_bytes(full, R * D * sizeof(T));  // zero-filled bytes count too: a box lands whole
    tma_load_tile_sw128<R, D, sizeof(T)>(dst, map, head, row0, seq, full);
  } else {
    load_tile_sw128_async<R, D, 128>(dst, rows, row0);
    cp_async_arrive(full);
  }
}

// Warpgroup 0: fetches the next tile index (persistent grids) while it copies the current tile's Q into the Q ring
// and its key blocks, last first, into the K / V ring. Ring counters qi (Q slot fillings) and gi (K / V iterations)
// count only tiles that run, exactly as the consumers count them.
template <typename T, typename Tile>
__device__ __forceinline__ void fwd_sm90_producer(const AttnArgs& a, const Sm90FwdMaps& maps, const Sm90FwdShared<T, Tile>& sh,
                                                  const Sm90FwdScheduler<Tile>& sched) {
  constexpr int D = Tile::D, BM = Tile::BM, BN = Tile::BN, QS = Tile::kQSlots, S = Tile::kStages;
  using Shared = Sm90FwdShared<T, Tile>;
  warpgroup_release_registers<Tile::kProducerRegs>();
  // With TMA one thread waits for the slots and issues every copy (fp8's V staging aside); the others only follow
  // the tiles.
  const bool tma = Tile::kTma && maps.enabled, issuer = !tma || threadIdx.x == 0;
  int qi = 0, gi = 0;
  int tile = sched.first_tile;
  for (int k = 0;; ++k) {
    if (sched.dynamic) {
      if (threadIdx.x == 0) sched.publish_tile(sh, k, tile);
      tile = sched.read_tile(sh, k);
    }
    if (tile >= sched.total) break;
    int next = sched.total;
    if (sched.dynamic && threadIdx.x == 0) next = gridDim.x + atomicAdd(a.tile_counter, 1);  // lands while we copy
    const Sm90FwdWork w = sched.work_of(a, tile);
    if (w.run) {
      if (issuer) {
        if (qi >= QS) mbarrier_wait(sh.q_empty + qi % QS, ((qi / QS) & 1) ^ 1);
        producer_copy<BM, D>(sh.q_buf(qi), sh.q_full + qi % QS, tma ? &maps.q : nullptr,
                             row_view<T>(a.q, a, w.b, w.h, w.s.q_start, w.s.sq), w.h, w.m0, w.b);
      }
      ++qi;
      const int hk = w.h / a.group;
      const RowView<T> k_rows = row_view<T>(a.k, a, w.b, hk, w.s.k_start, w.s.sk);
      const RowView<T> v_rows = row_view<T>(a.v, a, w.b, hk, w.s.k_start, w.s.sk);
      for (int n = w.blocks.hi - 1; n >= w.blocks.lo; --n, ++gi) {  // last key block first
        const int slot = Shared::slot_of(gi);
        const uint32_t reuse_parity = Shared::parity_of(gi) ^ 1;  // completion gi / S - 1 of the empty barrier
        // fp8 with two staging tiles: this block's reuses the one block gi - 2 was transposed from, so every copy so
        // far (block gi - 1's too) must land and every thread be done with gi - 2 before it is issued.
        if constexpr (Tile::kVStaging == 2) fp8_staging_sync<Tile, 0>();
        if (issuer) {
          if (gi >= S) mbarrier_wait(sh.k_empty + slot, reuse_parity);
          producer_copy<BN, D>(sh.k_buf(gi), sh.k_full + slot, tma ? &maps.k : nullptr, k_rows, hk, n * BN, w.b);
        }
        if constexpr (Tile::kFp8) {
          // fp8: this block's V lands in a staging tile while the previous block's is transposed into the ring. With
          // three tiles, the one this block takes was last read (block gi - 3) before the previous iteration's
          // barrier, so only block gi - 1's copies are waited for.
          load_tile_sw128_async<BN, D, 128>(sh.v_raw(gi), v_rows, n * BN);
          cp_async_commit();
          if (n < w.blocks.hi - 1) {
            if constexpr (Tile::kVStaging == 3) fp8_staging_sync<Tile, 1>();
            fp8_publish_v(sh, gi - 1);
          }
        } else if (issuer) {
          if (gi >= S) mbarrier_wait(sh.v_empty + slot, reuse_parity);
          producer_copy<BN, D>(sh.v_buf(gi), sh.v_full + slot, tma ? &maps.v : nullptr, v_rows, hk, n * BN, w.b);
        }
      }
      if constexpr (Tile::kFp8) {
        if (w.blocks.hi > w.blocks.lo) {
          fp8_staging_sync<Tile, 0>();
          fp8_publish_v(sh, gi - 1);
        }
      }
    }
    tile = next;
  }
}

// ---- consumers ----------------------------------------------------------------------------------------------------

// What a consumer warpgroup keeps in registers for its 64 rows of a tile: references to the consumer's own arrays (a
// struct holding the arrays made the compiler number and schedule them differently from the lambda-based kernel).
template <typename Tile>
struct Sm90FwdRegisters {
  float (&o)[Tile::D / 2];          // O, 64 x D
  float (&sc)[Tile::BN / 2];        // S_n, then P_n in fp32 (64 x BN)
  uint32_t (&p)[Tile::kPSteps][4];  // P_{n-1} as the A operand of the P V product
  float (&row_max)[2];              // the online softmax's running max and (per-lane) sum of this thread's two rows
  float (&row_sum)[2];
};

// S = Q K^T (64 x BN = 64 x D . (BN x D)^T) of this warpgroup's rows: SS, both operands K-major over the head dim.
template <typename T, typename Tile>
__device__ __forceinline__ void sm90_issue_qk(float (&sc)[Tile::BN / 2], uint64_t q_desc, uint64_t k_desc, int wg_row0) {
#pragma unroll
  for (int kk = 0; kk < Tile::D / Tile::Element::kStepK; ++kk) {
    const uint64_t a = desc_k_major<Tile::BM>(q_desc, wg_row0, kk), b = desc_k_major<Tile::BN>(k_desc, 0, kk);
    if constexpr (Tile::kFp8) WgmmaFp8<Tile::BN, T, T>::ss(sc, a, b, kk > 0);
    else Wgmma<Tile::BN, T>::template ss<0, 0>(sc, a, b, kk > 0);
  }
  wgmma_commit();
}

// O += P V (64 x D += 64 x BN . BN x D): RS, P from registers; V N-major, or for fp8 V^T K-major (keys permuted).
template <typename T, typename Tile>
__device__ __forceinline__ void sm90_issue_pv(float (&o)[Tile::D / 2], const uint32_t (&p)[Tile::kPSteps][4], uint64_t v_desc) {
#pragma unroll
  for (int kk = 0; kk < Tile::kPSteps; ++kk) {
    if constexpr (Tile::kFp8) WgmmaFp8<Tile::D, fp8_e4m3_t, T>::rs(o, p[kk], desc_k_major<Tile::D>(v_desc, 0, kk), 1);
    else Wgmma<Tile::D, T>::template rs<1>(o, p[kk], desc_mn_major<Tile::BN>(v_desc, kk), 1);
  }
  wgmma_commit();
}

// P_n (fp32, C layout) to the A fragments of the P V product. 16-bit: k-step kk is n-tiles 2kk, 2kk + 1 (acc_to_a's
// layout). fp8 (E4M3, k32): k-step kk is n-tiles 4kk..4kk + 3 (registers 16kk..), each A register two adjacent
// n-tiles' pairs of one row, in the key order fp8_transposed_key gives V^T.
template <typename T, typename Tile>
__device__ __forceinline__ void sm90_pack_p(uint32_t (&p)[Tile::kPSteps][4], const float (&sc)[Tile::BN / 2]) {
#pragma unroll
  for (int kk = 0; kk < Tile::kPSteps; ++kk) {
    if constexpr (Tile::kFp8) {
      const float* c = sc + 16 * kk;
      p[kk][0] = pack4_e4m3(c[0], c[1], c[4], c[5]);
      p[kk][1] = pack4_e4m3(c[2], c[3], c[6], c[7]);
      p[kk][2] = pack4_e4m3(c[8], c[9], c[12], c[13]);
      p[kk][3] = pack4_e4m3(c[10], c[11], c[14], c[15]);
    } else {
      p[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
      p[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
      p[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
      p[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  }
}

// O *= alpha (per row pair) once the running max has moved. When no row of the warp moved (alpha == 1 exactly: the
// same max gives exp2(0)), the D / 2 multiplies are skipped, warp-uniformly; past the first blocks most are.
template <typename Tile>
__device__ __forceinline__ void rescale_o(float (&o)[Tile::D / 2], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
  for (int i = 0; i < Tile::D / 2; ++i) o[i] *= alpha[(i / 2) % 2];
}

// A consumer's view of its role: its rows, the K / V ring's slot descriptors, the ring barriers and the ping-pong
// turns (consumer cw issues when the previous one, cyclically, has issued the same round; consumer NC - 1 hands the
// first turn to consumer 0 and every consumer passes the turn on after each round, across tiles, so one's epilogue
// overlaps the other's products; consumer 0 takes the turn left over at the end, which keeps every barrier's arrivals
// matched).
template <typename T, typename Tile>
struct Sm90FwdRole {
  using Shared = Sm90FwdShared<T, Tile>;
  static constexpr int NC = Tile::kConsumers;
  int cw, wg_row0, warp_row0, g;  // consumer index, its first tile row, this warp's first row, the lane's row
  // K / V descriptors of ring iteration gi: slot 0's, moved on by whole slots (descriptors count 16-byte units).
  uint64_t k_desc0, v_desc0;
  __device__ __forceinline__ uint64_t k_desc(int gi) const { return slot_desc(k_desc0, gi); }
  __device__ __forceinline__ uint64_t v_desc(int gi) const { return slot_desc(v_desc0, gi); }
  static __device__ __forceinline__ uint64_t slot_desc(uint64_t desc0, int gi) {
    return desc0 + static_cast<uint32_t>(Shared::slot_of(gi) * (Tile::kTileKV >> 4));
  }
  // Waits for ring iteration gi's copies to land, then orders the async proxy's reads after them.
  static __device__ __forceinline__ void wait_full(uint64_t* full, int gi) {
    mbarrier_wait(full + Shared::slot_of(gi), Shared::parity_of(gi));
    fence_async_smem();
  }
  static __device__ __forceinline__ void release(uint64_t* empty, int gi) { mbarrier_arrive(empty + Shared::slot_of(gi)); }
  __device__ __forceinline__ void begin_turn() const { named_barrier_sync(1 + cw, 256); }
  __device__ __forceinline__ void end_turn() const { named_barrier_arrive(1 + (cw + 1) % NC, 256); }
};

// The key-block loop of one tile: O, row_max and row_sum of this warpgroup's rows, unnormalised. Iteration it issues
// S_it = Q K_it^T and P_{it-1} V_{it-1} together, so the tensor cores work on the product while the warpgroup computes
// the softmax of S_it; O is rescaled once the product has landed. qi / gi: the Q and K / V ring counters. mult: S to
// log2 units inside exp2 (1 when kTransform rewrites the scores); qk_descale: fp8's q x k factor, which kTransform
// applies to the scores here (otherwise it is part of mult).
template <typename T, typename Tile, bool kTransform>
__device__ __forceinline__ void fwd_sm90_mainloop(const AttnArgs& a, const Sm90FwdShared<T, Tile>& sh, const Sm90FwdRole<T, Tile>& role,
                                                  const Sm90FwdWork& w, float mult, float qk_descale, int& qi, int& gi,
                                                  Sm90FwdRegisters<Tile> r) {
  constexpr int D = Tile::D, BN = Tile::BN, NT = BN / 8, QS = Tile::kQSlots;
  const SeqInfo& s = w.s;
  const int m0 = w.m0, hi = w.blocks.hi, n = w.blocks.hi - w.blocks.lo, base = gi, qs = qi % QS;
  const float slope = alibi_slope_log2(a, w.b, w.h);
  const uint64_t q_desc = tile_desc_k_major(sh.q_buf(qi));
  auto softmax = [&](int it, float (&alpha)[2]) {
    const int n0 = (hi - 1 - it) * BN;
    const bool masked = tile_needs_mask(a, s, m0 + role.wg_row0, 64, n0, BN);
    const int i0 = m0 + role.warp_row0 + role.g;
    if constexpr (Tile::kFp8 && kTransform) {
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) r.sc[i] *= qk_descale;
    }
    online_softmax_block<NT, Tile::kLazyMax>(a, s, [&](int j, int e) -> float& { return r.sc[j * 4 + e]; },
                             [&](int hf) { return ScoreRow{i0 + hf * 8, slope}; }, n0, kTransform, masked, mult, r.row_max,
                             r.row_sum, alpha);
  };
#pragma unroll
  for (int i = 0; i < D / 2; ++i) r.o[i] = 0.f;
  r.row_max[0] = r.row_max[1] = -INFINITY, r.row_sum[0] = r.row_sum[1] = 0.f;

  mbarrier_wait(sh.q_full + qs, (qi / QS) & 1);
  fence_async_smem();
  ++qi;
  if (n == 0) mbarrier_arrive(sh.q_empty + qs);
  if constexpr (!Tile::kOverlapPV) {
    for (int it = 0; it < n; ++it) {
      gi = base + it;
      float alpha[2];
      role.wait_full(sh.k_full, gi);
      role.begin_turn();
      wgmma_fence();
      sm90_issue_qk<T, Tile>(r.sc, q_desc, role.k_desc(gi), role.wg_row0);
      role.end_turn();
      wgmma_wait<0>();
      reg_fence(r.sc);
      role.release(sh.k_empty, gi);
      if (it == n - 1) mbarrier_arrive(sh.q_empty + qs);
      softmax(it, alpha);
      rescale_o<Tile>(r.o, alpha);
      sm90_pack_p<T, Tile>(r.p, r.sc);
      role.wait_full(sh.v_full, gi);
      role.begin_turn();
      wgmma_fence();
      sm90_issue_pv<T, Tile>(r.o, r.p, role.v_desc(gi));
      role.end_turn();
      wgmma_wait<0>();
      reg_fence(r.o);
      role.release(sh.v_empty, gi);
    }
    gi = base + n;
    return;
  }
  // alpha: O's factor from the last softmax, applied just before the next P V product is issued (O is not in flight
  // then; FA3's order) rather than right after the previous one lands: +2-12% on the H100 at every head dim. The
  // wait for that product still sits at the top of the softmax in the SASS, though: ptxas takes P_{n-1}'s registers
  // (dead to it once the product is issued) for the softmax's temporaries and the next P, so it must wait first, and
  // the product overlaps only the other consumer's work (docs/perf-cuda.md).
  float alpha[2] = {1.f, 1.f};
  if (n > 0) {
    role.wait_full(sh.k_full, base);
    role.begin_turn();
    wgmma_fence();
    sm90_issue_qk<T, Tile>(r.sc, q_desc, role.k_desc(base), role.wg_row0);
    role.end_turn();
    wgmma_wait<0>();
    reg_fence(r.sc);
    role.release(sh.k_empty, base);
    if (n == 1) mbarrier_arrive(sh.q_empty + qs);  // the tile's last product from Q has landed
    softmax(0, alpha);
    alpha[0] = alpha[1] = 1.f;  // O is still zero: nothing to rescale
    sm90_pack_p<T, Tile>(r.p, r.sc);
  }
  for (int it = 1; it < n; ++it) {
    gi = base + it;
    role.wait_full(sh.k_full, gi);
    role.wait_full(sh.v_full, gi - 1);
    rescale_o<Tile>(r.o, alpha);  // into the units of P(it - 1)'s max
    role.begin_turn();
    wgmma_fence();
    sm90_issue_qk<T, Tile>(r.sc, q_desc, role.k_desc(base + it), role.wg_row0);
    sm90_issue_pv<T, Tile>(r.o, r.p, role.v_desc(gi - 1));
    role.end_turn();
    wgmma_wait<1>();  // S(it) landed; P(it - 1) V(it - 1) still runs
    reg_fence(r.sc);
    role.release(sh.k_empty, gi);
    if (it == n - 1) mbarrier_arrive(sh.q_empty + qs);
    softmax(it, alpha);
    wgmma_wait<0>();
    reg_fence(r.o);
    reg_fence(r.p);
    role.release(sh.v_empty, gi - 1);
    sm90_pack_p<T, Tile>(r.p, r.sc);
  }
  gi = base + n;
  if (n > 0) {
    role.wait_full(sh.v_full, gi - 1);
    rescale_o<Tile>(r.o, alpha);
    role.begin_turn();
    wgmma_fence();
    sm90_issue_pv<T, Tile>(r.o, r.p, role.v_desc(gi - 1));
    role.end_turn();
    wgmma_wait<0>();
    reg_fence(r.o);
    role.release(sh.v_empty, gi - 1);
  }
}

// With the TMA engine (a one-tile CTA whose o can be mapped, no split): O / l of the consumer's 64 rows go into its own
// rows of the tile's Q slot in the Q tile's swizzled layout (its products are done with them, and no other
// warpgroup reads them), and one thread stores them as D / 64 boxes, so no consumer waits for the other and no thread
// works out a global address. The slot's smem must be read before the CTA exits: the issuing thread waits for that.
template <typename T, typename Tile>
__device__ __forceinline__ void fwd_sm90_store_tma(const AttnArgs& a, const Sm90FwdMaps& maps, const Sm90FwdShared<T, Tile>& sh,
                                                   const Sm90FwdRole<T, Tile>& role, const Sm90FwdWork& w, float mult,
                                                   const Sm90FwdRegisters<Tile> r) {
  constexpr int D = Tile::D, BM = Tile::BM;
  T* q_tile = sh.q_buf(0);
  const int t = threadIdx.x % 4;
  const int64_t lrow0 = lse_row0(a, w.s, w.b, w.h);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(r.row_sum[hf]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int row = role.warp_row0 + role.g + 8 * hf, i = w.m0 + row;
    if (a.lse != nullptr && t == 0 && i < w.s.sq) a.lse[lrow0 + i] = row_lse(r.row_max[hf] * mult, l, true);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      sw128_store_pair<BM>(q_tile, row, 8 * j + 2 * t, pack2<T>(r.o[j * 4 + 2 * hf] * inv, r.o[j * 4 + 2 * hf + 1] * inv));
  }
  fence_async_smem();
  named_barrier_sync(kConsumerStoreBarrier<Tile> + role.cw, 128);
  if (threadIdx.x % 128 == 0) {
#pragma unroll
    for (int b = 0; b < D / 64; ++b)
      tma_store_box(&maps.o, 64 * b, w.h, w.m0 + role.wg_row0, w.b, q_tile + (b * BM + role.wg_row0) * 64);
    bulk_commit_group();
    bulk_wait_group_read<0>();
  }
}

// O / l and LSE of the tile's rows, to o / lse or the split's partials. A persistent CTA stages O in rows of its own
// (each warp its rows; its reads of the previous tile's rows must be done). A one-tile CTA stores with the TMA engine
// where it can (fwd_sm90_store_tma), else stages over Q and the K slots, which no product reads any more once every
// consumer is past this barrier (the producer's copies have all landed: every slot was waited for).
// fp8: O times the tile's v descale factor, written in a.out_dtype (fp16 or bf16).
template <typename T, typename Tile>
__device__ __forceinline__ void fwd_sm90_epilogue(const AttnArgs& a, const Sm90FwdMaps& maps, const Sm90FwdShared<T, Tile>& sh,
                                                  const Sm90FwdRole<T, Tile>& role, const Sm90FwdWork& w, float mult, float v_descale,
                                                  const Sm90FwdRegisters<Tile> r) {
  if constexpr (Tile::kTma && !Tile::kPersistent && !Tile::kFp8) {
    if (maps.o_enabled && a.num_splits == 1) {
      fwd_sm90_store_tma<T, Tile>(a, maps, sh, role, w, mult, r);
      return;
    }
  }
  T* stage = sh.sStage;
  if constexpr (Tile::kPersistent) {
    __syncwarp();
  } else {
    named_barrier_sync(Tile::kConsumers + 1, Tile::kConsumerThreads);
    stage = sh.sQ;
  }
  if constexpr (Tile::kFp8) {
    auto store = [&](auto* out_stage) {
      using TOut = std::remove_pointer_t<decltype(out_stage)>;
      store_output_rows<TOut, Tile::D>(a, w.s, w.b, w.h, w.split, w.m0, role.warp_row0,
                                       [&](int j, int e) { return r.o[j * 4 + e] * v_descale; }, r.row_max, r.row_sum, mult,
                                       out_stage);
    };
    if (a.out_fp16) store(reinterpret_cast<half_t*>(stage));
    else store(reinterpret_cast<bf16_t*>(stage));
  } else {
    store_output_rows<T, Tile::D>(a, w.s, w.b, w.h, w.split, w.m0, role.warp_row0, [&](int j, int e) { return r.o[j * 4 + e]; },
                                  r.row_max, r.row_sum, mult, stage);
  }
}

// Warpgroups 1..: 64 query rows of every tile the scheduler gives this CTA, in the producer's order.
template <typename T, typename Tile, bool kTransform>
__device__ __forceinline__ void fwd_sm90_consumer(const AttnArgs& a, const Sm90FwdMaps& maps, const Sm90FwdShared<T, Tile>& sh,
                                                  const Sm90FwdScheduler<Tile>& sched, int wg, int warp, int g) {
  constexpr int NC = Tile::kConsumers;
  int qi = 0, gi = 0;  // ring counters, as the producer's
  warpgroup_claim_registers<Tile::kConsumerRegs>();
  const int cw = wg - 1;
  // V: N-major, or for fp8 the transposed tile, K-major
  const uint64_t v_desc0 = Tile::kFp8 ? tile_desc_k_major(sh.sV) : tile_desc_mn_major<Tile::BN>(sh.sV);
  const Sm90FwdRole<T, Tile> role{cw, cw * 64, cw * 64 + warp * 16, g, tile_desc_k_major(sh.sK), v_desc0};
  float o[Tile::D / 2], sc[Tile::BN / 2], row_max[2], row_sum[2];
  uint32_t p[Tile::kPSteps][4];
  const Sm90FwdRegisters<Tile> r{o, sc, p, row_max, row_sum};
  if (role.cw == NC - 1) named_barrier_arrive(1, 256);

  int tile = sched.first_tile;
  for (int k = 0;; ++k) {
    if (sched.dynamic) tile = sched.read_tile(sh, k);
    if (tile >= sched.total) break;
    const Sm90FwdWork w = sched.work_of(a, tile);
    tile = sched.total;  // one tile per CTA unless the ring brings more
    if (!w.run) continue;
    // fp8: the descale factors of this tile's (sequence, kv head); 1 otherwise
    const int hk = w.h / a.group;
    const float qk_descale = Tile::kFp8 ? descale_factor(a.q_descale, w.b, hk) * descale_factor(a.k_descale, w.b, hk) : 1.f;
    const float v_descale = Tile::kFp8 ? descale_factor(a.v_descale, w.b, hk) : 1.f;
    const float mult = kTransform ? 1.f : a.scale_log2 * qk_descale;  // multiplier from S to log2 units inside exp2
    fwd_sm90_mainloop<T, Tile, kTransform>(a, sh, role, w, mult, qk_descale, qi, gi, r);
    fwd_sm90_epilogue<T, Tile>(a, maps, sh, role, w, mult, v_descale, r);
  }
  if (role.cw == 0) named_barrier_sync(1, 256);  // the turn consumer NC - 1 passed on after the last round
}

// kTransform: softcap or ALiBi rewrite the scores (a.softcap > 0 or a.alibi set). A separate instantiation, because
// their unrolled code is two thirds of the kernel's, and a causal tile's instruction working set with it in
// overflowed the instruction cache (ncu: "no instruction" stalls 12% of samples, 2.5% without the mask).
template <typename T, typename Tile, bool kTransform>
__global__ void __launch_bounds__(Tile::kThreads, 1) fwd_sm90_kernel(const __grid_constant__ AttnArgs a,
                                                                             const __grid_constant__ Sm90FwdMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const Sm90FwdShared<T, Tile> sh(swizzle_aligned_smem(smem_raw));
  const Sm90FwdScheduler<Tile> sched(a);
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4;
  if (threadIdx.x == 0) sh.init_barriers(Tile::kTma && maps.enabled);
  __syncthreads();
  if (wg == 0) {
    fwd_sm90_producer<T, Tile>(a, maps, sh, sched);
    return;
  }
  fwd_sm90_consumer<T, Tile, kTransform>(a, maps, sh, sched, wg, warp, g);
#endif
}

// q, k and v as tensor maps for the producer's TMA copies, or false (a varlen batch, or a tensor the driver refuses:
// strides or a base not 16-byte aligned, an old driver); the producer then copies with cp.async.
template <typename T, typename Tile>
bool encode_fwd_maps(Sm90FwdMaps* maps, const AttnArgs& a) {
  if (a.cu_q != nullptr) return false;
  auto encode = [&](CUtensorMap* map, const DevTensor& t, int rows, int heads, int box_rows) {
    const TmaTensor tensor{tma_data_type<T>(), static_cast<int>(sizeof(T)), t.data, a.batch, rows, heads, a.head_dim,
                           t.batch_stride, t.row_stride, t.head_stride};
    return encode_tile_map(map, tensor, box_rows, nullptr);
  };
  return encode(&maps->q, a.q, a.seqlen_q, a.heads_q, Tile::BM) && encode(&maps->k, a.k, a.seqlen_k, a.heads_kv, Tile::BN) &&
         encode(&maps->v, a.v, a.seqlen_k, a.heads_kv, Tile::BN);
}

// o as boxes of one consumer's 64 rows (fwd_sm90_store_tma): false where the driver refuses it (the epilogue then
// stores through the threads).
template <typename T>
bool encode_fwd_o_map(Sm90FwdMaps* maps, const AttnArgs& a) {
  const TmaTensor o{tma_data_type<T>(), static_cast<int>(sizeof(T)), a.o.data, a.batch, a.seqlen_q, a.heads_q, a.head_dim,
                    a.o.batch_stride, a.o.row_stride, a.o.head_stride};
  return encode_tile_map(&maps->o, o, 64, nullptr);
}

// Launches the Hopper forward for head dim D (the caller picked D >= head_dim): one CTA per tile, or a.persistent_ctas
// of them when a.tile_counter (zeroed) is set. Returns the CUDA error of the launch.
template <typename T, int D>
gpuError_t launch_fwd_sm90(const AttnArgs& a, int m_blocks, gpuStream_t stream) {
  using Tile = typename Sm90FwdTileFor<T, D>::type;
  const int64_t tiles = static_cast<int64_t>(m_blocks) * a.heads_q * a.batch * a.num_splits;
  if (tiles > INT_MAX / 2) return cudaErrorInvalidConfiguration;  // the kernel counts tiles in int
  const bool persistent = Tile::kPersistent && a.tile_counter != nullptr;
  const int64_t ctas = persistent ? std::min<int64_t>(tiles, a.persistent_ctas) : tiles;
  const bool transform = a.softcap > 0.f || a.alibi != nullptr;
  Sm90FwdMaps maps{};
  maps.enabled = Tile::kTma && encode_fwd_maps<T, Tile>(&maps, a);
  maps.o_enabled = maps.enabled && !Tile::kPersistent && !Tile::kFp8 && a.num_splits == 1 && encode_fwd_o_map<T>(&maps, a);
  return launch_attention_kernel(transform ? fwd_sm90_kernel<T, Tile, true> : fwd_sm90_kernel<T, Tile, false>,
                                 dim3(static_cast<unsigned>(ctas)), Tile::kThreads, Tile::smem_bytes(), stream, a, maps);
}

}  // namespace fa::tc
