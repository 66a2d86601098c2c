// fa_attn_params as the TypeScript side lays it out. The offsets mirror flashattn.h; on load they are compared
// with what the library reports through fa_params_layout, so a header change that forgot this file (or a stale
// library) is refused with a clear message instead of corrupting memory.
import { ABI_VERSION } from "./symbols.ts";

export type DType = "fp32" | "fp16" | "bf16";
export const dtypeCode: Record<DType, number> = { fp32: 0, fp16: 1, bf16: 2 };
export const dtypeBytes: Record<DType, number> = { fp32: 4, fp16: 2, bf16: 2 };

/** A strided (batch, row, head, dim) view of a device tensor; dim is contiguous. Strides count elements. */
export interface TensorView {
  data: bigint;
  batchStride: number;
  rowStride: number;
  headStride: number;
}

export interface AttnParams {
  dtype: DType;
  batch: number;
  seqlenQ: number;
  seqlenK: number;
  headsQ: number;
  headsKv: number;
  headDim: number;
  causal: boolean;
  windowLeft: number;
  windowRight: number;
  /** 0 = 1/sqrt(headDim) */
  scale: number;
  softcap: number;
  alibiMode: "none" | "per-head" | "per-batch-head";
  numSplits: number;
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

export const PARAMS_SIZE = 384;
export const TENSOR_SIZE = 32;

/** Field order of FA_PARAMS_LAYOUT_FIELDS in flashattn.h, with the offsets this file writes at. */
export const layoutFields: ReadonlyArray<readonly [string, number]> = [
  ["struct_size", 0], ["abi_version", 4], ["dtype", 8], ["batch", 12], ["seqlen_q", 16], ["seqlen_k", 20],
  ["heads_q", 24], ["heads_kv", 28], ["head_dim", 32], ["is_causal", 36], ["window_left", 40], ["window_right", 44],
  ["scale", 48], ["softcap", 52], ["alibi_mode", 56], ["num_splits", 60], ["deterministic", 64], ["total_q", 68],
  ["total_k", 72], ["algorithm", 76], ["alibi_slopes", 80], ["cu_seqlens_q", 88], ["cu_seqlens_k", 96],
  ["stream", 104], ["q", 112], ["k", 144], ["v", 176], ["o", 208], ["lse", 240], ["dout", 248], ["dq", 280],
  ["dk", 312], ["dv", 344], ["out_kernel", 376], ["out_num_splits", 380],
  ["tensor.data", 0], ["tensor.batch_stride", 8], ["tensor.row_stride", 16], ["tensor.head_stride", 24],
];

/** The numbers fa_params_layout must report: [sizeof params, sizeof tensor, ...offsets]. */
export function expectedLayout(): number[] {
  return [PARAMS_SIZE, TENSOR_SIZE, ...layoutFields.map(([, off]) => off)];
}

/** Differences between the library's layout report and ours, as sentences (empty when they agree). */
export function compareLayout(reported: ArrayLike<number | bigint>): string[] {
  const expected = expectedLayout();
  const problems: string[] = [];
  const names = ["sizeof(fa_attn_params)", "sizeof(fa_tensor)", ...layoutFields.map(([n]) => n)];
  if (reported.length !== expected.length) {
    problems.push(`the library reports ${reported.length} layout entries, this flashattn expects ${expected.length}`);
  }
  for (let i = 0; i < Math.min(reported.length, expected.length); i++) {
    const got = Number(reported[i]);
    if (got !== expected[i]) problems.push(`${names[i]} is at ${got} in the library but at ${expected[i]} here`);
  }
  return problems;
}

const alibiCodes = { "none": 0, "per-head": 1, "per-batch-head": 2 } as const;

export const emptyView: TensorView = { data: 0n, batchStride: 0, rowStride: 0, headStride: 0 };

/** Parameters with every field at its neutral value; callers fill in shapes and tensors. */
export function defaultParams(): AttnParams {
  return {
    dtype: "fp32", batch: 1, seqlenQ: 1, seqlenK: 1, headsQ: 1, headsKv: 1, headDim: 64, causal: false,
    windowLeft: -1, windowRight: -1, scale: 0, softcap: 0, alibiMode: "none", numSplits: 0, deterministic: false,
    totalQ: 0, totalK: 0, algorithm: "flash", alibiSlopes: 0n, cuSeqlensQ: 0n, cuSeqlensK: 0n, stream: 0n,
    q: emptyView, k: emptyView, v: emptyView, o: emptyView, lse: 0n, dout: emptyView, dq: emptyView,
    dk: emptyView, dv: emptyView,
  };
}

function writeView(dv: DataView, offset: number, t: TensorView) {
  dv.setBigUint64(offset, t.data, true);
  dv.setBigInt64(offset + 8, BigInt(t.batchStride), true);
  dv.setBigInt64(offset + 16, BigInt(t.rowStride), true);
  dv.setBigInt64(offset + 24, BigInt(t.headStride), true);
}

/** The bytes of fa_attn_params for `p` (struct_size and abi_version set). */
export function encodeParams(p: AttnParams): Uint8Array {
  const bytes = new Uint8Array(PARAMS_SIZE);
  const dv = new DataView(bytes.buffer);
  const i32 = (off: number, v: number) => dv.setInt32(off, v, true);
  dv.setUint32(0, PARAMS_SIZE, true);
  dv.setUint32(4, ABI_VERSION, true);
  i32(8, dtypeCode[p.dtype]);
  i32(12, p.batch);
  i32(16, p.seqlenQ);
  i32(20, p.seqlenK);
  i32(24, p.headsQ);
  i32(28, p.headsKv);
  i32(32, p.headDim);
  i32(36, p.causal ? 1 : 0);
  i32(40, p.windowLeft);
  i32(44, p.windowRight);
  dv.setFloat32(48, p.scale, true);
  dv.setFloat32(52, p.softcap, true);
  i32(56, alibiCodes[p.alibiMode]);
  i32(60, p.numSplits);
  i32(64, p.deterministic ? 1 : 0);
  i32(68, p.totalQ);
  i32(72, p.totalK);
  i32(76, p.algorithm === "naive" ? 1 : 0);
  dv.setBigUint64(80, p.alibiSlopes, true);
  dv.setBigUint64(88, p.cuSeqlensQ, true);
  dv.setBigUint64(96, p.cuSeqlensK, true);
  dv.setBigUint64(104, p.stream, true);
  writeView(dv, 112, p.q);
  writeView(dv, 144, p.k);
  writeView(dv, 176, p.v);
  writeView(dv, 208, p.o);
  dv.setBigUint64(240, p.lse, true);
  writeView(dv, 248, p.dout);
  writeView(dv, 280, p.dq);
  writeView(dv, 312, p.dk);
  writeView(dv, 344, p.dv);
  return bytes;
}

/** The fields the library fills in: the kernel path id and the split-KV count used. */
export function decodeOutputs(bytes: Uint8Array): { kernelId: number; numSplits: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { kernelId: dv.getInt32(376, true), numSplits: dv.getInt32(380, true) };
}
