// The words every layer shares, defined once: the element types, the backends, and the shape of an attention
// problem. Everything from the flags (commands/) through the library (lib/), the bench (bench/), the doctor
// (doctor/) and the FFI struct writer (ffi/layout.ts) to the build (kernels/target.ts) uses these names. No imports:
// any layer may depend on this file.

/**
 * Element types of q, k, v, o (and dO, dQ, dK, dV); the LSE is always fp32. The fp8 types (OCP E4M3 and E5M2) are
 * inputs of a forward pass only: q, k, v with descale factors, o written in fp16 or bf16.
 */
export type DType = "fp32" | "fp16" | "bf16" | "fp8_e4m3" | "fp8_e5m2";
export const dtypeBytes: Record<DType, number> = { fp32: 4, fp16: 2, bf16: 2, fp8_e4m3: 1, fp8_e5m2: 1 };
export const dtypeNames: readonly DType[] = ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"];

export type Fp8DType = "fp8_e4m3" | "fp8_e5m2";
export function isFp8(dtype: DType): dtype is Fp8DType {
  return dtype === "fp8_e4m3" || dtype === "fp8_e5m2";
}

/** The dtype o is written in when none is asked: bf16 for fp8 inputs (FlashAttention-3's convention), else the input's. */
export function defaultOutDtype(dtype: DType): DType {
  return isFp8(dtype) ? "bf16" : dtype;
}

/** Our native libraries, one per backend: libflashattn_<name>.so. */
export type BackendName = "cpu" | "cuda" | "hip";
/** The preference order of `--backend auto`: a GPU when one is usable, else the CPU. */
export const backendNames: readonly BackendName[] = ["cuda", "hip", "cpu"];

/**
 * The sizes of one attention problem (layout BSHD): q is (batch, seqlenQ, headsQ, headDim), k and v are
 * (batch, seqlenK, headsKv, headDim). For varlen problems the lengths are the longest sequence's.
 */
export interface ProblemShape {
  batch: number;
  seqlenQ: number;
  seqlenK: number;
  headsQ: number;
  headsKv: number;
  headDim: number;
}

/**
 * The sizes of one KV-cache call (flash_attn_with_kvcache): q is (batch, seqlenQ, headsQ, headDim), k_new and v_new
 * (batch, seqlenNew, headsKv, headDim; seqlenNew 0 = nothing appended), the caches (cacheBatch, cacheRows, headsKv,
 * headDim), rotary_cos / rotary_sin (seqlenRotary, rotaryDim / 2; rotaryDim 0 = no rotary).
 */
export interface KvCacheShape extends Omit<ProblemShape, "seqlenK"> {
  seqlenNew: number;
  /** Contiguous: sequences the cache holds; paged: pages. */
  cacheBatch: number;
  /** Contiguous: tokens per sequence; paged: page size. */
  cacheRows: number;
  /** Paged: block_table columns; 0 = contiguous. */
  maxBlocks: number;
  rotaryDim: number;
  seqlenRotary: number;
}
