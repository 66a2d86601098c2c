// tma.cuh — tiles copied by the TMA engine (sm_90). A tensor map (CUtensorMap: 128 bytes, encoded on the host) describes
// a global tensor and a box; one instruction, issued by one thread, copies a box into shared memory, zero-fills what
// lies outside the tensor and completes on an mbarrier with the box's byte count. With the 128-byte swizzle and a box
// 128 bytes wide, a box of R rows lands exactly as one column block of wgmma.cuh's swizzled tile (chunk c of row r at
// c ^ r % 8), so a tile of C columns is C / 64 boxes (16-bit elements) at column-block offsets R x 128 bytes apart.
//
// The encoder is the driver's cuTensorMapEncodeTiled. The runtime is linked static and loads the driver itself, so the
// library reaches the function through cudart's entry-point query instead of linking libcuda.
//
// The tensors are BSHD-shaped (batch or page, rows, heads, head dim): a 4-D map with dims (innermost first) head dim,
// heads, rows, batch and a box of (one swizzle row of columns, 1 head, R rows, 1 sequence). Rows past the tensor's
// `rows` and columns past its head dim come in as zeros, which is what load_tile_sw128_async does by hand.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "wgmma.cuh"

namespace fa::tc {

// ---- host --------------------------------------------------------------------------------------------------------

// cuTensorMapEncodeTiled from the driver, or null (why says which step failed) when the driver predates it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(std::string* why) {
  static const struct Found {
    PFN_cuTensorMapEncodeTiled_v12000 fn;
    cudaError_t err;
    cudaDriverEntryPointQueryResult query;
  } found = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &query);
    return Found{err == cudaSuccess && query == cudaDriverEntryPointSuccess ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn) : nullptr,
                 err, query};
  }();
  if (found.fn == nullptr && why != nullptr)
    *why = found.err != cudaSuccess ? std::string("the CUDA runtime could not query the driver: ") + cudaGetErrorString(found.err)
                                    : "the NVIDIA driver has no cuTensorMapEncodeTiled (it needs CUDA 12.0 or newer)";
  return found.fn;
}

// A global BSHD tensor as a TMA source: element type, base, sizes and element strides (the head dim's stride is 1).
struct TmaTensor {
  CUtensorMapDataType type;  // CU_TENSOR_MAP_DATA_TYPE_FLOAT16 / BFLOAT16 (16-bit) or UINT8 (fp8 bytes)
  int element_bytes;
  const void* base;
  int64_t batch, rows, heads, head_dim;
  int64_t batch_stride, row_stride, head_stride;  // elements
};

// The map's element type for T (fp8 moves as bytes).
template <typename T>
constexpr CUtensorMapDataType tma_data_type() {
  if constexpr (sizeof(T) == 1) return CU_TENSOR_MAP_DATA_TYPE_UINT8;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  else return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// Encodes `map` (rank dims, innermost first; strides in bytes of every dim but the innermost; a box of `box` elements
// per dim) with the 128-byte swizzle every map here uses. Returns false with `why` set when the driver refuses (a base
// not 16-byte aligned, a stride not a multiple of 16 bytes, a box over 256 rows) or has no encoder.
inline bool encode_swizzled_map(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, const void* base, const cuuint64_t* dims,
                                const cuuint64_t* strides, const cuuint32_t* box, std::string* why) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder(why);
  if (encode == nullptr) return false;
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUresult r = encode(map, type, rank, const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS && why != nullptr) *why = "cuTensorMapEncodeTiled refused the map (CUresult " + std::to_string(static_cast<int>(r)) + ")";
  return r == CUDA_SUCCESS;
}

// A BSHD tensor for boxes of one swizzle row (128 bytes of columns) x 1 head x box_rows rows x 1 sequence.
inline bool encode_tile_map(CUtensorMap* map, const TmaTensor& t, int box_rows, std::string* why) {
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(t.head_dim), static_cast<cuuint64_t>(t.heads), static_cast<cuuint64_t>(t.rows),
                              static_cast<cuuint64_t>(t.batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(t.head_stride * t.element_bytes), static_cast<cuuint64_t>(t.row_stride * t.element_bytes),
                                 static_cast<cuuint64_t>(t.batch_stride * t.element_bytes)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kSwizzleRowBytes / t.element_bytes), 1, static_cast<cuuint32_t>(box_rows), 1};
  return encode_swizzled_map(map, t.type, 4, t.base, dims, strides, box, why);
}

// A row-major fp32 matrix (rows x cols, rows `cols` floats apart) for boxes of 32 floats (one swizzle row) x box_rows
// rows: the backward's dq_accum as a TMA reduction target.
inline bool encode_rows_map_f32(CUtensorMap* map, float* base, int64_t cols, int64_t rows, int box_rows, std::string* why) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * sizeof(float))};
  const cuuint32_t box[2] = {kSwizzleRowBytes / sizeof(float), static_cast<cuuint32_t>(box_rows)};
  return encode_swizzled_map(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, base, dims, strides, box, why);
}

// ---- device ------------------------------------------------------------------------------------------------------

// Float index of (row, col) in an fp32 TMA box of rows of 32 floats, 128-byte swizzled as the box lands (16-byte
// chunk c of row r at c ^ r % 8; the box 1024-byte aligned). A float2 at an even col stays in its chunk; the eight rows
// of an accumulator fragment's store hit eight different chunks.
__device__ __forceinline__ int sw128_f32_offset(int row, int col) {
  return row * 32 + (((col / 4) ^ (row % 8)) * 4) + col % 4;
}

// Adds the swizzled box at `src` (1024-byte aligned smem, written by the generic proxy and fenced) to the box at
// (col, row) of `map` element by element (atomically, as red.global.add.f32), skipping what lies outside the tensor;
// tracked by this thread's bulk groups (bulk_commit_group / bulk_wait_group*).
__device__ __forceinline__ void tma_reduce_add_box(const CUtensorMap* map, int col, int row, const void* src) {
  asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(map), "r"(col),
               "r"(row), "r"(smem_addr(src))
               : "memory");
}

// One arrival on `bar` that also expects `bytes` more bytes of TMA copies in the current phase.
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

// Copies the box at (column, head, row, sequence) of `map` (a __grid_constant__ kernel parameter) into the 1024-byte
// aligned smem at `dst`; its bytes count towards `bar`'s expected bytes when they land.
__device__ __forceinline__ void tma_load_box(void* dst, const CUtensorMap* map, int col, int head, int row, int seq, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(
          smem_addr(dst)),
      "l"(map), "r"(col), "r"(head), "r"(row), "r"(seq), "r"(smem_addr(bar))
      : "memory");
}

// Stores the 1024-byte aligned swizzled box at `src` (written by the generic proxy and fenced) to the box at (column,
// head, row, sequence) of `map`, skipping what lies outside the tensor; tracked by this thread's bulk groups.
__device__ __forceinline__ void tma_store_box(const CUtensorMap* map, int col, int head, int row, int seq, const void* src) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(map), "r"(col),
               "r"(head), "r"(row), "r"(seq), "r"(smem_addr(src))
               : "memory");
}

// Rows [row0, row0 + R) x columns [0, C) of head `head` of sequence `seq` into a swizzled tile of R rows (C / 64
// 16-bit column blocks, or C / 128 fp8 ones): C x R x element bytes in all, expected on `bar` by the caller.
template <int R, int C, int ELEMENT_BYTES>
__device__ __forceinline__ void tma_load_tile_sw128(void* tile, const CUtensorMap* map, int head, int row0, int seq, uint64_t* bar) {
  constexpr int kBlockCols = kSwizzleRowBytes / ELEMENT_BYTES;
  static_assert(C % kBlockCols == 0, "swizzled tiles are whole 128-byte rows");
#pragma unroll
  for (int b = 0; b < C / kBlockCols; ++b)
    tma_load_box(static_cast<unsigned char*>(tile) + b * R * kSwizzleRowBytes, map, b * kBlockCols, head, row0, seq, bar);
}

}  // namespace fa::tc
