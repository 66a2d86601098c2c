// fa_attn_params as the TypeScript side lays it out. The offsets mirror flashattn.h; on load they are compared
// with what the library reports through fa_params_layout, so a header change that forgot this file (or a stale
// library) is refused with a clear message instead of corrupting memory.
//
// The writer is the last check before C: every number must fit its field exactly (see fitsInt32 / fitsFloat32), so a
// value that would wrap or flush to zero is refused here instead of silently becoming another problem.
import { FlashAttnError } from "../lib/errors.ts";
import type { DType, KvCacheShape, ProblemShape } from "../lib/vocabulary.ts";
import { ABI_VERSION } from "./symbols.ts";

export const dtypeCode: Record<DType, number> = { fp32: 0, fp16: 1, bf16: 2, fp8_e4m3: 3, fp8_e5m2: 4 };

export const INT32_MIN = -(2 ** 31);
export const INT32_MAX = 2 ** 31 - 1;
/** The smallest positive normal float32: below it a GPU flushes to zero (FTZ), so such a value is not kept. */
const FLOAT32_MIN_NORMAL = 2 ** -126;

/** Whether `x` is stored exactly in an int32 field (a whole number in range; a larger one would wrap). */
export function fitsInt32(x: number): boolean {
  return Number.isInteger(x) && x >= INT32_MIN && x <= INT32_MAX;
}

/**
 * Whether `x` keeps its meaning in a float32 field: finite after rounding to float32, and zero only when it was
 * zero (1e39 would become infinity, 1e-50 would become 0 = "off" or "default"; subnormals are flushed by GPUs).
 * Rounding to the nearest float32 is expected and harmless (the kernels compute in float32).
 */
export function fitsFloat32(x: number): boolean {
  if (x === 0) return true;
  const stored = Math.abs(Math.fround(x));
  return Number.isFinite(stored) && stored >= FLOAT32_MIN_NORMAL;
}

/** A strided (batch, row, head, dim) view of a device tensor; dim is contiguous. Strides count elements. */
export interface TensorView {
  data: bigint;
  batchStride: number;
  rowStride: number;
  headStride: number;
}

/**
 * fa_descale: fp8 descale factors in device memory, logically (batch, heads_kv); factor of (b, kv head h) at
 * data[b * batchStride + h * headStride]; a stride of 0 broadcasts (both 0: one scalar); data 0n = none (factor 1).
 */
export interface DescaleView {
  data: bigint;
  batchStride: number;
  headStride: number;
}

/**
 * The fields fa_attn_params and fa_kvcache_params share, at the same offsets (8..63) in both; the one field between
 * them that differs (offset 20: seqlen_k / seqlen_new) is each struct's own.
 */
export interface SharedParams extends Omit<ProblemShape, "seqlenK"> {
  dtype: DType;
  causal: boolean;
  windowLeft: number;
  windowRight: number;
  /** 0 = 1/sqrt(headDim) */
  scale: number;
  softcap: number;
  alibiMode: "none" | "per-head" | "per-batch-head";
  numSplits: number;
}

/** The fp8 fields both structs end with (out_dtype, reserved = 0, the three descale views), each at its own offset. */
export interface Fp8Fields {
  /** The dtype o is written in; undefined = the library's default (dtype itself, bf16 for fp8 inputs). */
  outDtype?: DType;
  qDescale: DescaleView;
  kDescale: DescaleView;
  vDescale: DescaleView;
}

/** fa_attn_params field for field (camelCase); the shape fields are the shared ProblemShape. */
export interface AttnParams extends ProblemShape, SharedParams, Fp8Fields {
  deterministic: boolean;
  totalQ: number;
  totalK: number;
  algorithm: "flash" | "naive";
  alibiSlopes: bigint;
  cuSeqlensQ: bigint;
  cuSeqlensK: bigint;
  stream: bigint;
  q: TensorView;
  k: TensorView;
  v: TensorView;
  o: TensorView;
  lse: bigint;
  dout: TensorView;
  dq: TensorView;
  dk: TensorView;
  dv: TensorView;
}

export const PARAMS_SIZE = 440;
export const TENSOR_SIZE = 32;
export const DESCALE_SIZE = 16;

/** The fields both structs open with (struct_size .. num_splits); offset 20 is named by each struct. */
function sharedLayoutFields(field20: string): Array<readonly [string, number]> {
  return [
    ["struct_size", 0], ["abi_version", 4], ["dtype", 8], ["batch", 12], ["seqlen_q", 16], [field20, 20],
    ["heads_q", 24], ["heads_kv", 28], ["head_dim", 32], ["is_causal", 36], ["window_left", 40], ["window_right", 44],
    ["scale", 48], ["softcap", 52], ["alibi_mode", 56], ["num_splits", 60],
  ];
}

/** The fp8 fields both structs end with, from `at` (out_dtype) on: out_dtype, reserved, q/k/v_descale. */
function fp8LayoutFields(at: number): Array<readonly [string, number]> {
  return [["out_dtype", at], ["reserved", at + 4], ["q_descale", at + 8], ["k_descale", at + 24], ["v_descale", at + 40]];
}

/** The members of the nested structs, as fa_params_layout reports them (and the writers name them in errors). */
const memberFields: ReadonlyArray<readonly [string, number]> = [
  ["tensor.data", 0], ["tensor.batch_stride", 8], ["tensor.row_stride", 16], ["tensor.head_stride", 24],
  ["descale.data", 0], ["descale.batch_stride", 8], ["descale.head_stride", 12],
];

/** Field order of FA_PARAMS_LAYOUT_FIELDS in flashattn.h, with the offsets this file writes at. */
export const layoutFields: ReadonlyArray<readonly [string, number]> = [
  ...sharedLayoutFields("seqlen_k"), ["deterministic", 64], ["total_q", 68],
  ["total_k", 72], ["algorithm", 76], ["alibi_slopes", 80], ["cu_seqlens_q", 88], ["cu_seqlens_k", 96],
  ["stream", 104], ["q", 112], ["k", 144], ["v", 176], ["o", 208], ["lse", 240], ["dout", 248], ["dq", 280],
  ["dk", 312], ["dv", 344], ["out_kernel", 376], ["out_num_splits", 380], ...fp8LayoutFields(384), ...memberFields,
];

/**
 * What a layout query (fa_params_layout, fa_kvcache_layout) must report: the struct sizes, then every field's
 * offset in `fields` order; `compare` turns a report into sentences naming each entry that differs (empty = agree).
 */
function structLayout(sizes: ReadonlyArray<readonly [string, number]>, fields: ReadonlyArray<readonly [string, number]>) {
  const expected = () => [...sizes.map(([, size]) => size), ...fields.map(([, off]) => off)];
  const names = [...sizes.map(([name]) => name), ...fields.map(([name]) => name)];
  const compare = (reported: ArrayLike<number | bigint>): string[] => {
    const want = expected();
    const problems: string[] = [];
    if (reported.length !== want.length) {
      problems.push(`the library reports ${reported.length} layout entries, this flashattn expects ${want.length}`);
    }
    for (let i = 0; i < Math.min(reported.length, want.length); i++) {
      const got = Number(reported[i]);
      if (got !== want[i]) problems.push(`${names[i]} is at ${got} in the library but at ${want[i]} here`);
    }
    return problems;
  };
  return { expected, compare };
}

const attnLayout = structLayout(
  [["sizeof(fa_attn_params)", PARAMS_SIZE], ["sizeof(fa_tensor)", TENSOR_SIZE], ["sizeof(fa_descale)", DESCALE_SIZE]],
  layoutFields,
);
/** The numbers fa_params_layout must report: [sizeof params, sizeof tensor, ...offsets]. */
export const expectedLayout = attnLayout.expected;
/** Differences between the library's layout report and ours, as sentences (empty when they agree). */
export const compareLayout = attnLayout.compare;

const alibiCodes = { "none": 0, "per-head": 1, "per-batch-head": 2 } as const;

export const emptyView: TensorView = { data: 0n, batchStride: 0, rowStride: 0, headStride: 0 };
export const noDescale: DescaleView = { data: 0n, batchStride: 0, headStride: 0 };

/** Parameters with every field at its neutral value; callers fill in shapes and tensors. */
export function defaultParams(): AttnParams {
  return {
    dtype: "fp32", batch: 1, seqlenQ: 1, seqlenK: 1, headsQ: 1, headsKv: 1, headDim: 64, causal: false,
    windowLeft: -1, windowRight: -1, scale: 0, softcap: 0, alibiMode: "none", numSplits: 0, deterministic: false,
    totalQ: 0, totalK: 0, algorithm: "flash", alibiSlopes: 0n, cuSeqlensQ: 0n, cuSeqlensK: 0n, stream: 0n,
    q: emptyView, k: emptyView, v: emptyView, o: emptyView, lse: 0n, dout: emptyView, dq: emptyView,
    dk: emptyView, dv: emptyView, qDescale: noDescale, kDescale: noDescale, vDescale: noDescale,
  };
}

/** Writers of one struct's fields that refuse any value the field cannot hold exactly (named `struct.field`). */
function fieldWriter(dv: DataView, struct: string, fields: ReadonlyArray<readonly [string, number]>) {
  // A struct field by offset, or a member of the nested struct at that offset ("q_descale.head_stride").
  const own = fields.filter(([name]) => !name.includes("."));
  const field = (off: number) => {
    const base = own.filter(([, o]) => o <= off).reduce((a, b) => (b[1] > a[1] ? b : a));
    if (base[1] === off) return base[0];
    const member = fields.find(([name, o]) => name.includes(".") && o === off - base[1]);
    return `${base[0]}.${member ? member[0].split(".")[1] : `+${off - base[1]}`}`;
  };
  const refuse = (off: number, v: number | bigint, type: string) =>
    new FlashAttnError("INVALID_ARGUMENT", `${struct}.${field(off)} cannot hold ${v} (${type})`);
  const pointer = (off: number, v: bigint) => {
    if (v < 0n || v >= 2n ** 64n) throw refuse(off, v, "pointer");
    dv.setBigUint64(off, v, true);
  };
  return {
    i32(off: number, v: number) {
      if (!fitsInt32(v)) throw refuse(off, v, "int32");
      dv.setInt32(off, v, true);
    },
    f32(off: number, v: number) {
      if (!fitsFloat32(v)) throw refuse(off, v, "float32");
      dv.setFloat32(off, v, true);
    },
    pointer,
    view(off: number, t: TensorView) {
      if (t.data < 0n || t.data >= 2n ** 64n) {
        throw new FlashAttnError("INVALID_ARGUMENT", `${struct}.${field(off)}.data cannot hold ${t.data} (pointer)`);
      }
      dv.setBigUint64(off, t.data, true);
      for (const [at, stride] of [[8, t.batchStride], [16, t.rowStride], [24, t.headStride]]) {
        if (!Number.isSafeInteger(stride)) {
          throw new FlashAttnError("INVALID_ARGUMENT", `${struct}.${field(off)} has a stride that is not a whole number: ${stride}`);
        }
        dv.setBigInt64(off + at, BigInt(stride), true);
      }
    },
  };
}

/**
 * Writes struct_size, abi_version and the shared fields (offsets 0..63) of either struct, with `field20` (seqlen_k or
 * seqlen_new) at 20; returns the field writers for the rest.
 */
function writeShared(bytes: Uint8Array, struct: string, fields: ReadonlyArray<readonly [string, number]>, p: SharedParams, field20: number) {
  const dv = new DataView(bytes.buffer);
  const writer = fieldWriter(dv, struct, fields);
  const { i32, f32 } = writer;
  dv.setUint32(0, bytes.byteLength, true);
  dv.setUint32(4, ABI_VERSION, true);
  i32(8, dtypeCode[p.dtype]);
  i32(12, p.batch);
  i32(16, p.seqlenQ);
  i32(20, field20);
  i32(24, p.headsQ);
  i32(28, p.headsKv);
  i32(32, p.headDim);
  i32(36, p.causal ? 1 : 0);
  i32(40, p.windowLeft);
  i32(44, p.windowRight);
  f32(48, p.scale);
  f32(52, p.softcap);
  i32(56, alibiCodes[p.alibiMode]);
  i32(60, p.numSplits);
  return writer;
}

/** Writes the fp8 fields (Fp8Fields) from offset `at` (out_dtype; reserved stays 0). */
function writeFp8Fields(writer: ReturnType<typeof fieldWriter>, at: number, p: Fp8Fields): void {
  writer.i32(at, p.outDtype === undefined ? 0 : dtypeCode[p.outDtype]);
  const descales: Array<[number, DescaleView]> = [[at + 8, p.qDescale], [at + 24, p.kDescale], [at + 40, p.vDescale]];
  for (const [off, f] of descales) {
    writer.pointer(off, f.data);
    writer.i32(off + 8, f.batchStride);
    writer.i32(off + 12, f.headStride);
  }
}

/** The bytes of fa_attn_params for `p` (struct_size and abi_version set). */
export function encodeParams(p: AttnParams): Uint8Array {
  const bytes = new Uint8Array(PARAMS_SIZE);
  const writer = writeShared(bytes, "fa_attn_params", layoutFields, p, p.seqlenK);
  const { i32, pointer, view } = writer;
  i32(64, p.deterministic ? 1 : 0);
  i32(68, p.totalQ);
  i32(72, p.totalK);
  i32(76, p.algorithm === "naive" ? 1 : 0);
  pointer(80, p.alibiSlopes);
  pointer(88, p.cuSeqlensQ);
  pointer(96, p.cuSeqlensK);
  pointer(104, p.stream);
  view(112, p.q);
  view(144, p.k);
  view(176, p.v);
  view(208, p.o);
  pointer(240, p.lse);
  view(248, p.dout);
  view(280, p.dq);
  view(312, p.dk);
  view(344, p.dv);
  writeFp8Fields(writer, 384, p);
  return bytes;
}

/** The fields the library fills in: the kernel path id and the split-KV count used. */
export function decodeOutputs(bytes: Uint8Array): { kernelId: number; numSplits: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { kernelId: dv.getInt32(376, true), numSplits: dv.getInt32(380, true) };
}

// ---- fa_kvcache_params ------------------------------------------------------------------------------------------

/** fa_kvcache_params field for field (camelCase); unused arrays and tensors are 0n / emptyView, descales noDescale. */
export interface KvCacheParams extends SharedParams, KvCacheShape, Fp8Fields {
  rotaryInterleaved: boolean;
  alibiSlopes: bigint;
  cacheSeqlens: bigint;
  blockTable: bigint;
  cacheBatchIdx: bigint;
  cacheLeftpad: bigint;
  rotaryCos: bigint;
  rotarySin: bigint;
  stream: bigint;
  q: TensorView;
  kCache: TensorView;
  vCache: TensorView;
  kNew: TensorView;
  vNew: TensorView;
  o: TensorView;
  lse: bigint;
}

export const KVCACHE_PARAMS_SIZE = 416;

/** Field order of FA_KVCACHE_LAYOUT_FIELDS in flashattn.h, with the offsets this file writes at. */
export const kvcacheLayoutFields: ReadonlyArray<readonly [string, number]> = [
  ...sharedLayoutFields("seqlen_new"), ["cache_batch", 64], ["cache_rows", 68],
  ["max_blocks", 72], ["rotary_dim", 76], ["seqlen_rotary", 80], ["rotary_interleaved", 84], ["alibi_slopes", 88],
  ["cache_seqlens", 96], ["block_table", 104], ["cache_batch_idx", 112], ["cache_leftpad", 120], ["rotary_cos", 128],
  ["rotary_sin", 136], ["stream", 144], ["q", 152], ["k_cache", 184], ["v_cache", 216], ["k_new", 248],
  ["v_new", 280], ["o", 312], ["lse", 344], ["out_kernel", 352], ["out_num_splits", 356], ...fp8LayoutFields(360),
];

const kvcacheLayout = structLayout([["sizeof(fa_kvcache_params)", KVCACHE_PARAMS_SIZE]], kvcacheLayoutFields);
/** The numbers fa_kvcache_layout must report: [sizeof params, ...offsets]. */
export const expectedKvcacheLayout = kvcacheLayout.expected;
/** Differences between the library's KV-cache layout report and ours, as sentences (empty when they agree). */
export const compareKvcacheLayout = kvcacheLayout.compare;

/** The bytes of fa_kvcache_params for `p` (struct_size and abi_version set). */
export function encodeKvCacheParams(p: KvCacheParams): Uint8Array {
  const bytes = new Uint8Array(KVCACHE_PARAMS_SIZE);
  const writer = writeShared(bytes, "fa_kvcache_params", [...kvcacheLayoutFields, ...memberFields], p, p.seqlenNew);
  const { i32, pointer, view } = writer;
  const ints: Array<[number, number]> = [
    [64, p.cacheBatch], [68, p.cacheRows], [72, p.maxBlocks], [76, p.rotaryDim], [80, p.seqlenRotary],
    [84, p.rotaryInterleaved ? 1 : 0],
  ];
  for (const [off, v] of ints) i32(off, v);
  const pointers: Array<[number, bigint]> = [
    [88, p.alibiSlopes], [96, p.cacheSeqlens], [104, p.blockTable], [112, p.cacheBatchIdx], [120, p.cacheLeftpad],
    [128, p.rotaryCos], [136, p.rotarySin], [144, p.stream], [344, p.lse],
  ];
  for (const [off, v] of pointers) pointer(off, v);
  const views: Array<[number, TensorView]> = [[152, p.q], [184, p.kCache], [216, p.vCache], [248, p.kNew], [280, p.vNew], [312, p.o]];
  for (const [off, t] of views) view(off, t);
  writeFp8Fields(writer, 360, p);
  return bytes;
}

/** The fields fa_forward_kvcache fills in. */
export function decodeKvCacheOutputs(bytes: Uint8Array): { kernelId: number; numSplits: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { kernelId: dv.getInt32(352, true), numSplits: dv.getInt32(356, true) };
}
