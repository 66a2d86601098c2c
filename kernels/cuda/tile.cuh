// tile.cuh — the small set of tile helpers every tensor-core kernel here is written with (sm_80+ mma.sync).
//
// Fragment layouts of mma.sync.m16n8k16 (16-bit inputs, fp32 accumulators), with g = lane / 4, t = lane % 4:
//   A (16x16, row-major) 4 regs of 2 halves: a0 (row g,   k 2t..2t+1)  a1 (row g+8, k 2t..2t+1)
//                                            a2 (row g,   k 2t+8..+9)  a3 (row g+8, k 2t+8..+9)
//   B (16x8, k x n)      2 regs:             b0 (k 2t..2t+1, col g)    b1 (k 2t+8..+9, col g)
//   C (16x8, fp32)       4 floats:           c0,c1 (row g, cols 2t, 2t+1)   c2,c3 (row g+8, cols 2t, 2t+1)
// ldmatrix.x4 hands lane L the (row L/4, cols 2(L%4)..+1) pair of each of four 8x8 matrices whose row addresses
// come from lanes 0-7, 8-15, 16-23, 24-31; .trans hands the transposed pair instead.
//
// Shared-memory tiles are row-major, in one of two layouts (L::at(row, col) is the element offset):
//   StridedRows<LD>  rows LD elements apart; with LD = width + kPad (rows padded by 16 bytes) consecutive rows start
//                    4 banks apart, so the 8 row reads of one ldmatrix phase hit 8 distinct 16-byte bank groups (no
//                    conflicts), at any head dim;
//   SwizzledRows<W>  unpadded rows of W elements (a multiple of 64: whole 128-byte lines) whose 16-byte chunks are
//                    XOR-swizzled by row % 8: also conflict-free, and each 128-byte line of a global row lands in one
//                    128-byte line of shared memory, which cp.async needs to move it in whole sectors (a padded row
//                    straddles lines: 1.5x the L2 sector requests, measured by ncu on the decode kernel).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../gpu/gpu_compat.hpp"

namespace fa::tc {

constexpr int kPad = 8;  // elements of padding per shared-memory row
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T> struct MmaType;
template <> struct MmaType<half_t> { static constexpr const char* ptx = "f16"; };
template <> struct MmaType<bf16_t> { static constexpr const char* ptx = "bf16"; };

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- global -> shared (cp.async, 16 bytes, zero-filled when `valid` is false) ----------------------------------------

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  // src-size 0 reads nothing and writes 16 zero bytes: masked rows/columns of ragged tiles come in as zeros.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}
// ... always 16 bytes (a chunk known to be inside the tensor).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
// ... with an L2 cache policy (createpolicy) attached to the lines it brings in.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid, uint64_t l2_policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0), "l"(l2_policy));
}
// The policy that makes every line a copy brings in the first to be evicted: for a stream read once.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// 4-byte variant (e.g. per-row statistics), so the copy joins the same commit groups instead of stalling the thread.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
// ... zero-filled when `valid` is false (gmem must still be a mapped address).
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// A strided view of one (sequence, head) slice: row r, dim d at base[r * row_stride + d].
template <typename T>
struct RowView {
  const T* base;
  int64_t row_stride;
  int rows;      // valid rows (the sequence length of this slice)
  int head_dim;  // valid columns
};

// Copies rows [row0, row0 + ROWS) x dims [0, D) of `src` into a padded smem tile (ROWS x (D + kPad)), zero-filling
// rows >= src.rows and dims >= src.head_dim. All NTHREADS threads take part; each moves 16-byte chunks.
template <int ROWS, int D, int NTHREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const RowView<T>& src, int row0) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % NTHREADS == 0 || kChunks < NTHREADS, "tile chunks must spread evenly over the threads");
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += NTHREADS) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int grow = row0 + r;
    const bool valid = grow < src.rows && col < src.head_dim;
    // An invalid chunk still needs a mapped address for the instruction; it reads 0 bytes from the base.
    const T* g = valid ? src.base + static_cast<int64_t>(grow) * src.row_stride + col : src.base;
    cp_async_16(smem + r * (D + kPad) + col, g, valid);
  }
}

// ---- shared -> registers (ldmatrix) ---------------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

template <int LD>
struct StridedRows {
  __device__ static constexpr int at(int row, int col) { return row * LD + col; }
};
template <int W>
struct SwizzledRows {
  static_assert(W % 64 == 0, "swizzled rows are whole 128-byte lines of 16-bit elements");
  // col is a multiple of 8 wherever a 16-byte chunk is addressed (ldmatrix rows, cp.async chunks)
  __device__ static constexpr int at(int row, int col) { return row * W + ((col >> 3) ^ (row & 7)) * 8 + (col & 7); }
};

// A fragment (16 rows x 16 k) of a row-major smem tile (layout L), at (row0, k0).
template <typename L, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, tile + L::at(row0 + lane % 16, k0 + (lane / 16) * 8));
}

// A fragment (16 rows x 16 k) whose smem tile is stored transposed: tile[k][row].
template <typename L, typename T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* tile, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(a, tile + L::at(k0 + (lane / 16) * 8 + lane % 8, row0 + ((lane / 8) % 2) * 8));
}

// B fragments for two adjacent n-tiles (n0..n0+7, n0+8..n0+15) over k0..k0+15, when the smem tile is stored [n][k]
// (e.g. K for S = Q K^T): b[0..1] serve n-tile 0, b[2..3] n-tile 1.
template <typename L, typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, tile + L::at(n0 + (lane / 16) * 8 + lane % 8, k0 + ((lane / 8) % 2) * 8));
}

// The same two B fragments when the smem tile is stored [k][n] (e.g. V for O = P V).
template <typename L, typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, tile + L::at(k0 + ((lane / 8) % 2) * 8 + lane % 8, n0 + (lane / 16) * 8));
}

// ---- tensor-core product ---------------------------------------------------------------------------------------------

// c (16x8 fp32) += a (16x16) * b (16x8)
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, half_t>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// One 16-deep k-step of a warp's product, named for the maths. MF 16-row A fragments `a(f)` (registers) times a B
// tile in shared memory (layout L) into C `c(f, j)`: fragment f, n-tile j (8 columns), fp32.
// C (MF*16 x N) += A (MF*16 x 16) . B^T, B stored [n][k]: rows 0..N of the tile, columns k0..k0+15 (S = Q K^T).
template <typename T, typename L, int N, int MF, typename AccC, typename FragA>
__device__ __forceinline__ void mm_ABt(AccC&& c, FragA&& a, const T* b_tile, int k0) {
#pragma unroll
  for (int np = 0; np < N / 16; ++np) {
    uint32_t b[4];
    load_b_nk<L>(b, b_tile, np * 16, k0);
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      mma<T>(c(f, 2 * np), a(f), b[0], b[1]);
      mma<T>(c(f, 2 * np + 1), a(f), b[2], b[3]);
    }
  }
}
// C (MF*16 x N) += A (MF*16 x 16) . B, B stored [k][n]: rows k0..k0+15, columns n0..n0+N of the tile (O += P V).
template <typename T, typename L, int N, int MF, typename AccC, typename FragA>
__device__ __forceinline__ void mm_AB(AccC&& c, FragA&& a, const T* b_tile, int n0, int k0) {
#pragma unroll
  for (int np = 0; np < N / 16; ++np) {
    uint32_t b[4];
    load_b_kn<L>(b, b_tile, n0 + np * 16, k0);
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      mma<T>(c(f, 2 * np), a(f), b[0], b[1]);
      mma<T>(c(f, 2 * np + 1), a(f), b[2], b[3]);
    }
  }
}

// Every fp32 accumulator of M x N fragments times f (a descale factor).
template <int M, int N>
__device__ __forceinline__ void scale_acc(float (&x)[M][N][4], float f) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) x[m][n][e] *= f;
}

// Two floats -> one register of two 16-bit values (low half = first).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, half_t>::value) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// The A fragment for k-step kk of a product whose left operand is held as C accumulators (16 rows x 16 cols = n-tiles
// 2kk and 2kk+1), e.g. P in O = P V: the C layout of two adjacent n-tiles is exactly the A layout of one k-step.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// Max / sum over the 4 lanes of a quad (the 4 threads that share one accumulator row).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace fa::tc
