// wgmma.cuh — the Hopper (sm_90a) tile helpers the warpgroup kernels are written with: 128-byte-swizzled shared-memory
// tiles filled by cp.async, wgmma matrix descriptors over them, and the fence / commit / wait protocol.
//
// Swizzled tile (R rows x C columns, C x element size a multiple of 128 bytes): column blocks of 128 bytes (64 16-bit
// or 128 fp8 elements), each R rows of 128 bytes, one after the other. Inside a block, the 16-byte chunk c of row r
// is stored at chunk position c ^ (r % 8): the 8 rows of a core-matrix group then cover all 32 banks, and this is exactly the layout
// wgmma's 128B swizzle mode reads (it XORs byte-address bits [4:6] with bits [7:9], so tiles start 1024-aligned).
//
// One tile serves two roles:
//   K-major operand (rows = M or N, k = columns): Q and K in S = Q K^T, K and V in the backward's S^T and dP^T.
//     Descriptor per k-step kk (32 bytes of k: 16 columns of 16 bits, 32 of fp8): start = block kk/4, row0, + (kk % 4)
//     * 32 bytes; SBO = 1024 (next 8 rows). fp8 operands are always K-major: the fp8 forward stores V transposed.
//   MN-major operand (rows = k, columns = N or M, imm-trans = 1): V in O = P V, dO / Q in dV / dK, K in dQ = dS K,
//     and the stored dS^T as the (M-major) A of dQ. Per 16-row k-step: start + 16 * 128 bytes; SBO = 1024 (next 8
//     k rows), LBO = R * 128 (next 64-column block).
//
// Register layouts (per warp w of the warpgroup, g = lane / 4, t = lane % 4): the m64nN accumulator holds rows
// 16w + g (+8) exactly as mma.sync's C fragments, register 4j + e = column 8j + 2t + e % 2 of row g + 8 (e / 2);
// the register A operand is mma.sync's A fragment of rows 16w.., so tile.cuh's acc_to_a turns S into P unchanged.
// The fp8 A operand (k32) is four registers of four bytes: rows g / g + 8 (registers 0 / 1, then 2 / 3), k 4t..4t+3
// (registers 0, 1) and 16 + 4t.. (2, 3). A thread's accumulator columns of a 32-key block are 2t, 2t + 1 (+8, +16,
// +24) instead, so the fp8 forward packs P as it holds it and permutes V's keys to match (fwd_sm90.cuh).
#pragma once

#include <cstdint>

#include "fp8.cuh"
#include "tile.cuh"

namespace fa::tc {

// Wrappers generated into build/gen/cuda/wgmma_ops.inc by kernels/cuda/target.ts: m64nNk16 per (N, 16-bit element
// type), and m64nNk32 per (N, A and B fp8 formats). The fp8 forms take no transpose flags: both operands K-major.
template <int N, typename T> struct Wgmma;
template <int N, typename TA, typename TB> struct WgmmaFp8;
#include "wgmma_ops.inc"

// What the element type changes in a Hopper kernel: one k-step of wgmma covers 32 bytes of k (16 elements of 16 bits,
// k16, or 32 fp8 elements, k32), and swizzle rows hold 128 bytes.
template <typename T>
struct Sm90Element {
  static constexpr bool kFp8 = sizeof(T) == 1;
  static constexpr int kStepK = 32 / sizeof(T);            // elements of k per wgmma instruction
  static constexpr int kChunk = 16 / sizeof(T);            // elements per 16-byte chunk
  static constexpr int kSwizzleCols = 128 / sizeof(T);     // elements per 128-byte swizzle row
};

// Four floats -> one register of four E4M3 bytes (byte 0 = x0), rounded to nearest even, saturated to +-448.
__device__ __forceinline__ uint32_t pack4_e4m3(float x0, float x1, float x2, float x3) {
  uint32_t r;
  // cvt puts its first source in the upper byte of the pair.
  asm("{\n .reg .b16 lo, hi;\n cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      " mov.b32 %0, {lo, hi};\n}\n"
      : "=r"(r)
      : "f"(x0), "f"(x1), "f"(x2), "f"(x3));
  return r;
}

constexpr int kSwizzleRowBytes = 128;  // one swizzle row: 64 elements of 16 bits
constexpr int kSwizzleAlign = 1024;    // the swizzle pattern repeats every 8 rows

// Byte offset of 16-byte chunk `chunk` (columns 8 chunk ..) of row `r` in a swizzled tile of R rows.
template <int R>
__device__ __forceinline__ uint32_t sw128_offset(int r, int chunk) {
  return (chunk / 8) * (R * kSwizzleRowBytes) + r * kSwizzleRowBytes + (((chunk % 8) ^ (r % 8)) * 16);
}

// Copies rows [row0, row0 + ROWS) x columns [0, C) of `src` into a swizzled tile, zero-filling rows >= src.rows and
// columns >= src.head_dim. All NTHREADS threads take part. Thread x always moves chunk x % 8 of rows x / 8 + k *
// (NTHREADS / 8) of every 64-column block: eight threads read one 128-byte row segment (coalesced), the swizzled
// position and both addresses are computed once, and each further chunk is a constant offset away.
template <int ROWS, int C, int NTHREADS, typename T>
__device__ __forceinline__ void load_tile_sw128_async(T* tile, const RowView<T>& src, int row0) {
  using E = Sm90Element<T>;
  constexpr int kRowsPerPass = NTHREADS / 8;
  static_assert(C % E::kSwizzleCols == 0, "swizzled tiles are whole 128-byte rows");
  static_assert(kRowsPerPass % 8 == 0 && ROWS % kRowsPerPass == 0, "every pass keeps the thread's swizzle phase");
  const int chunk = threadIdx.x % 8, r = threadIdx.x / 8;
  unsigned char* dst = reinterpret_cast<unsigned char*>(tile) + r * kSwizzleRowBytes + ((chunk ^ (r % 8)) * 16);
  const T* g = src.base + static_cast<int64_t>(row0 + r) * src.row_stride + chunk * E::kChunk;
  const int64_t pass_stride = static_cast<int64_t>(kRowsPerPass) * src.row_stride;
  const int rows_left = src.rows - row0 - r;  // passes p with p * kRowsPerPass < rows_left are inside the sequence
  const bool whole = row0 + ROWS <= src.rows && C <= src.head_dim;  // warp-uniform
  if constexpr (NTHREADS < 128) {
    // Fewer threads, more passes (the backward's 64-thread loader: 16 per key tile): one pointer walks the rows, as
    // a per-pass address each spilled in its 24 registers (ptxas: 564 -> 168 bytes at head dim 128). The 128-thread
    // producers keep the per-pass addresses: walking measured 1-5% slower on the forward (H100).
    if (whole) {
#pragma unroll
      for (int p = 0; p < ROWS / kRowsPerPass; ++p, g += pass_stride)
#pragma unroll
        for (int b = 0; b < C / E::kSwizzleCols; ++b)
          cp_async_16(dst + (b * ROWS + p * kRowsPerPass) * kSwizzleRowBytes, g + b * E::kSwizzleCols);
      return;
    }
#pragma unroll
    for (int p = 0; p < ROWS / kRowsPerPass; ++p, g += pass_stride) {
#pragma unroll
      for (int b = 0; b < C / E::kSwizzleCols; ++b) {
        const bool valid = b * E::kSwizzleCols + chunk * E::kChunk < src.head_dim && p * kRowsPerPass < rows_left;
        // An invalid chunk still needs a mapped address for the instruction; it reads 0 bytes from the base.
        cp_async_16(dst + (b * ROWS + p * kRowsPerPass) * kSwizzleRowBytes, valid ? g + b * E::kSwizzleCols : src.base, valid);
      }
    }
  } else {
    if (whole) {
      // No per-chunk bounds (ncu: the checks were 3 in 4 of the fp8 producer's load instructions).
#pragma unroll
      for (int b = 0; b < C / E::kSwizzleCols; ++b)
#pragma unroll
        for (int p = 0; p < ROWS / kRowsPerPass; ++p)
          cp_async_16(dst + (b * ROWS + p * kRowsPerPass) * kSwizzleRowBytes, g + b * E::kSwizzleCols + p * pass_stride);
      return;
    }
#pragma unroll
    for (int b = 0; b < C / E::kSwizzleCols; ++b) {
      const bool col_ok = b * E::kSwizzleCols + chunk * E::kChunk < src.head_dim;
#pragma unroll
      for (int p = 0; p < ROWS / kRowsPerPass; ++p) {
        const bool valid = col_ok && p * kRowsPerPass < rows_left;
        cp_async_16(dst + (b * ROWS + p * kRowsPerPass) * kSwizzleRowBytes,
                    valid ? g + b * E::kSwizzleCols + p * pass_stride : src.base, valid);
      }
    }
  }
}

// Stores a 32-bit pair of 16-bit elements (columns col, col + 1; col even) of row r of a swizzled tile of R rows.
template <int R>
__device__ __forceinline__ void sw128_store_pair(void* tile, int r, int col, uint32_t pair) {
  *reinterpret_cast<uint32_t*>(static_cast<unsigned char*>(tile) + sw128_offset<R>(r, col / 8) + (col % 8) * 2) = pair;
}

// ---- descriptors --------------------------------------------------------------------------------------------------
// A tile's descriptor is built once (tile_desc_*); the descriptor of each k-step adds the step's byte offset to the
// start-address field (>> 4). Shared memory ends below 256 KB, so the 14-bit field never carries into its neighbour.

__device__ __forceinline__ uint64_t sw128_desc(const void* start, uint32_t lbo_bytes) {
  const uint32_t addr = smem_addr(start);
  uint64_t d = static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>(kSwizzleAlign >> 4) << 32;  // SBO: the next group of 8 rows
  d |= 1ull << 62;                                        // 128-byte swizzle
  return d;
}
// The tile as a K-major operand (LBO unused for swizzled K-major layouts).
__device__ __forceinline__ uint64_t tile_desc_k_major(const void* tile) { return sw128_desc(tile, 16); }
// The tile (R rows) as an MN-major operand: LBO = the distance between 64-column blocks.
template <int R>
__device__ __forceinline__ uint64_t tile_desc_mn_major(const void* tile) { return sw128_desc(tile, R * kSwizzleRowBytes); }

// K-major operand: rows [row0, row0 + 64 or N) of a swizzled tile of R rows, k-step kk (bytes 32 kk .. of each row).
template <int R>
__device__ __forceinline__ uint64_t desc_k_major(uint64_t tile_desc, int row0, int kk) {
  return tile_desc + (static_cast<uint32_t>((kk / 4) * (R * kSwizzleRowBytes) + row0 * kSwizzleRowBytes + (kk % 4) * 32) >> 4);
}

// MN-major operand: k rows [16 kk, 16 kk + 16) of a swizzled tile of R rows, columns from 64-column block `block0`.
template <int R>
__device__ __forceinline__ uint64_t desc_mn_major(uint64_t tile_desc, int kk, int block0 = 0) {
  return tile_desc + (static_cast<uint32_t>(block0 * (R * kSwizzleRowBytes) + kk * 16 * kSwizzleRowBytes) >> 4);
}

// MN-major operand from column `col` (a multiple of 8; from the middle of a 64-column block, the operand must end in
// that block: n32 from 64 bytes into its swizzle rows): the swizzle is a function of the absolute address, as for the
// 32-byte k-steps of a K-major operand.
template <int R>
__device__ __forceinline__ uint64_t desc_mn_major_at(uint64_t tile_desc, int kk, int col) {
  return desc_mn_major<R>(tile_desc, kk, col / 64) + static_cast<uint32_t>((col % 64) * 2 >> 4);
}

// ---- ordering -----------------------------------------------------------------------------------------------------

// Before the first wgmma of a batch, and whenever its accumulator or A registers were touched by other instructions.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of this warpgroup's committed groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// Keeps the compiler from moving accesses of registers an in-flight wgmma owns across the fence/wait that guards them.
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// Shared memory written by the generic proxy (cp.async, st.shared) becomes visible to wgmma's async-proxy reads;
// each writing thread fences, then a barrier orders the readers after every writer.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Named barriers (ids 1..15; 0 is __syncthreads) over `threads` threads, a multiple of 32: bar.sync waits for the
// count, bar.arrive adds this warp's threads without waiting (the producer side of a hand-off).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Barrier among the 128 threads of warpgroup wg (named barrier wg + 1).
__device__ __forceinline__ void warpgroup_sync(int wg) { named_barrier_sync(wg + 1, 128); }

// Bulk reductions (sm_90): one instruction, issued by one thread, adds `bytes` / 4 floats of shared memory into global
// memory element by element (each element's add is atomic, as red.global.add.f32), read by the async proxy (so the
// writers fence with fence_async_smem first). Addresses 16-byte aligned, `bytes` a multiple of 16.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, const float* src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(smem_addr(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until this thread's bulk groups but the newest N have read their shared memory (`.read`) or are complete.
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() { asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_group() { asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory"); }
// Orders this thread's generic-proxy accesses to global memory with its async-proxy ones (bulk copies, reductions).
__device__ __forceinline__ void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;\n" ::: "memory"); }

// A turn counter in global memory shared by the CTAs of a grid: wait until it reads `turn` (acquire, GPU scope), and
// pass the turn on (release, GPU scope).
__device__ __forceinline__ void wait_for_turn(const int* counter, int turn) {
  while (true) {
    int now;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(now) : "l"(counter) : "memory");
    if (now == turn) return;
    __nanosleep(64);
  }
}
__device__ __forceinline__ void pass_turn(int* counter) {
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(counter) : "memory");
}

// ---- warp specialisation ------------------------------------------------------------------------------------------
// A producer warpgroup copies tiles with cp.async while consumer warpgroups multiply. Each ring slot has a "full"
// mbarrier (completed by the producer threads' cp.async arrivals: count = producer threads) and an "empty" one
// (completed when every consumer thread is done reading the slot: count = consumer threads). A barrier's phases
// alternate parity 0, 1, 0, ...; the k-th completion (from 0) has parity k & 1.

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and the async proxy (then a __syncthreads).
__device__ __forceinline__ void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives on `bar` once every cp.async this thread issued so far has landed (the count was set for it: .noinc).
__device__ __forceinline__ void cp_async_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits until the phase of parity `parity` of `bar` has completed. (A suspend-time hint for try_wait, so that waiting
// warps leave their issue slots to the math warps, measured level or 1-4% slower: docs/perf-cuda.md, FP8 forward.)
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
// Hands registers between warpgroups (all four warps of a warpgroup execute it): the producer gives up what its copy
// loop does not need, the consumers take it for their accumulators.
template <int REGS>
__device__ __forceinline__ void warpgroup_release_registers() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS)); }
template <int REGS>
__device__ __forceinline__ void warpgroup_claim_registers() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS)); }

// The dynamic shared memory base rounded up to the swizzle period (the launcher requests kSwizzleAlign extra bytes).
__device__ __forceinline__ unsigned char* swizzle_aligned_smem(unsigned char* raw) {
  const uint32_t addr = smem_addr(raw);
  return raw + ((kSwizzleAlign - (addr % kSwizzleAlign)) % kSwizzleAlign);
}

}  // namespace fa::tc
