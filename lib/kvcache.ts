// KV-cache attention (flash-attn 2.x flash_attn_with_kvcache; docs/DESIGN.md "KV cache"): the problem a set of host
// tensors and options describes (shapes checked here, once; the values of cache_seqlens, block_table,
// cache_batch_idx and cache_leftpad are checked by the library, which reads them where they live), the
// fa_kvcache_params of a problem over device buffers, and attentionWithKvCache() on host tensors.
//
// Which backend serves KV-cache calls is decided once by planKvCache (chooseBackend with a judge that reads fa_info's
// "kvcache" kernels, fa_forward_kvcache having no fa_plan).
//
// Device use (a decode loop): describe once, keep q / k_new / the caches / the int32 arrays in device buffers, and
// per step call backend.forwardKvcache(kvCacheParamsFor(problem, buffers)): the cache is updated where it lives.
import { type DescaleView, emptyView, type KvCacheParams, noDescale } from "../ffi/layout.ts";
import type { Backend, DeviceBuffer, KernelInfo, LibraryInfo } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import { type AttentionSemantics, checkShape, describeProblem, type TensorShape } from "./problem.ts";
import { type BackendChoice, type BackendDecision, chooseBackend, contiguous, descaleView, noBackendError, type SelectOptions } from "./select.ts";
import { type Tensor, tensor } from "./tensor.ts";
import { type DType, dtypeBytes, isFp8, type KvCacheShape } from "./vocabulary.ts";

/**
 * The options of flash_attn_with_kvcache beyond q and the caches (semantics in kernels/include/flashattn.h). fp8 caches
 * take the plain forward's descale and outDtype: q, the caches and k_new / v_new share one fp8 dtype, and k_descale /
 * v_descale of sequence b apply to its cache rows and its new rows alike (k_new / v_new are fp8 numbers in the cache's
 * scale, appended bit for bit).
 */
export interface KvCacheSemantics extends Omit<AttentionSemantics, "cuSeqlensQ" | "cuSeqlensK"> {
  /** (batch, seqlen_new, heads_kv, d): written into the cache at cacheSeqlens[b].. (rotated), then attended to. */
  kNew?: TensorShape;
  vNew?: TensorShape;
  /** (batch,) tokens already in each sequence's cache, counting its leftpad rows. Absent: every cache is full (its
   *  capacity: the contiguous rows, or max_blocks x page_size), as flash-attn reads a call without cache_seqlens;
   *  an append (kNew) needs it. */
  cacheSeqlens?: Int32Array;
  /** (batch, maxBlocks) row-major: a paged cache (kCache is (num_blocks, page_size, heads_kv, d)). */
  blockTable?: Int32Array;
  /** (batch,) which cache sequence serves each batch entry (contiguous caches only). */
  cacheBatchIdx?: Int32Array;
  /** (batch,) the first cache token of each sequence. */
  cacheLeftpad?: Int32Array;
  /** (seqlen_rotary, rotary_dim / 2), the tensors' dtype. */
  rotaryCos?: TensorShape;
  rotarySin?: TensorShape;
  /** GPT-J pairs (x[2i], x[2i+1]) instead of GPT-NeoX halves. */
  rotaryInterleaved?: boolean;
}

/** A KV-cache call as describeKvCache reads it: its sizes, the cache's kind and the attention semantics. */
export interface KvCacheProblem extends KvCacheShape {
  dtype: DType;
  /** The dtype o is written in (fp16 or bf16 for fp8 caches; else dtype). */
  outDtype: DType;
  paged: boolean;
  rotaryInterleaved: boolean;
  causal: boolean;
  window: [number, number];
  scale: number;
  softcap: number;
  alibi: "none" | "per-head" | "per-batch-head";
}

function bad(message: string): FlashAttnError {
  return new FlashAttnError("BAD_INPUT", message);
}

const shapeText = (t: TensorShape) => `(${t.shape.join(", ")})`;

/** Reads a KV-cache problem from tensor shapes and options, refusing inconsistent input with one sentence. */
export function describeKvCache(q: TensorShape, kCache: TensorShape, vCache: TensorShape, opts: KvCacheSemantics): KvCacheProblem {
  for (const [name, t] of [["q", q], ["k_cache", kCache], ["v_cache", vCache], ["k_new", opts.kNew], ["v_new", opts.vNew],
    ["rotary_cos", opts.rotaryCos], ["rotary_sin", opts.rotarySin]] as const) {
    if (t && t.dtype !== q.dtype) throw bad(`${name} is ${t.dtype} but q is ${q.dtype}: every tensor of a KV-cache call shares one dtype`);
  }
  for (const [name, t] of [["q", q], ["k_cache", kCache], ["v_cache", vCache]] as const) {
    if (t.shape.length !== 4) throw bad(`${name} must be 4-D (batch or pages, rows, heads, head_dim), got shape ${shapeText(t)}`);
  }
  if (kCache.shape.join() !== vCache.shape.join()) throw bad(`k_cache and v_cache shapes differ: ${shapeText(kCache)} vs ${shapeText(vCache)}`);
  const [batch, seqlenQ, headsQ, headDim] = q.shape;
  const [cacheBatch, cacheRows, headsKv] = kCache.shape;
  if (kCache.shape[3] !== headDim) throw bad(`q has head_dim ${headDim} but the caches have ${kCache.shape[3]}`);
  if (batch < 1 || seqlenQ < 1) throw bad(`batch and seqlen_q must be at least 1, got q shape ${shapeText(q)}`);
  if (cacheBatch < 1 || cacheRows < 1) throw bad(`the caches need at least one sequence (or page) and one row, got shape ${shapeText(kCache)}`);
  if (headsQ < 1 || headsKv < 1) throw bad(`head counts must be at least 1, got ${headsQ} and ${headsKv}`);
  checkShape({ batch, seqlenQ, seqlenK: cacheRows, headsQ, headsKv, headDim });

  let seqlenNew = 0;
  if ((opts.kNew === undefined) !== (opts.vNew === undefined)) throw bad("k_new and v_new must be given together");
  if (opts.kNew && opts.vNew) {
    if (opts.kNew.shape.join() !== opts.vNew.shape.join()) throw bad(`k_new and v_new shapes differ: ${shapeText(opts.kNew)} vs ${shapeText(opts.vNew)}`);
    const [b, rows, h, d] = opts.kNew.shape.length === 4 ? opts.kNew.shape : [NaN, NaN, NaN, NaN];
    if (b !== batch || h !== headsKv || d !== headDim || !(rows >= 1)) {
      throw bad(`k_new must be (${batch}, seqlen_new >= 1, ${headsKv}, ${headDim}), got shape ${shapeText(opts.kNew)}`);
    }
    seqlenNew = rows;
  }

  const int32Arrays: Array<[string, Int32Array | undefined, number]> = [
    ["cache_seqlens", opts.cacheSeqlens, batch], ["cache_batch_idx", opts.cacheBatchIdx, batch],
    ["cache_leftpad", opts.cacheLeftpad, batch],
  ];
  if (opts.cacheSeqlens !== undefined && !(opts.cacheSeqlens instanceof Int32Array)) {
    throw bad("cache_seqlens must be given as an Int32Array of one length per sequence");
  }
  if (seqlenNew > 0 && !opts.cacheSeqlens) {
    throw bad("appending needs cache_seqlens: without it every sequence's cache counts as full, leaving no room for k_new");
  }
  for (const [name, a, length] of int32Arrays) {
    if (a && a.length !== length) throw bad(`${name} must hold ${length} int32 values (one per sequence), got ${a.length}`);
  }
  const paged = opts.blockTable !== undefined;
  let maxBlocks = 0;
  if (opts.blockTable) {
    maxBlocks = opts.blockTable.length / batch;
    if (!Number.isInteger(maxBlocks) || maxBlocks < 1) {
      throw bad(`block_table must be (batch, max_blocks) = ${batch} x max_blocks int32 values, got ${opts.blockTable.length}`);
    }
    if (opts.cacheBatchIdx) throw bad("cache_batch_idx applies to contiguous caches only: a paged cache maps sequences through block_table");
  }

  let rotaryDim = 0, seqlenRotary = 0;
  if ((opts.rotaryCos === undefined) !== (opts.rotarySin === undefined)) throw bad("rotary_cos and rotary_sin must be given together");
  if (opts.rotaryCos && opts.rotarySin) {
    if (opts.rotaryCos.shape.join() !== opts.rotarySin.shape.join() || opts.rotaryCos.shape.length !== 2) {
      throw bad(`rotary_cos and rotary_sin must both be (seqlen_rotary, rotary_dim / 2), got ${shapeText(opts.rotaryCos)} and ${shapeText(opts.rotarySin)}`);
    }
    [seqlenRotary, rotaryDim] = [opts.rotaryCos.shape[0], 2 * opts.rotaryCos.shape[1]];
    if (seqlenRotary < 1 || rotaryDim < 2) throw bad(`the rotary tables must not be empty, got shape ${shapeText(opts.rotaryCos)}`);
    if (rotaryDim > headDim) throw bad(`rotary_dim ${rotaryDim} (twice the tables' ${rotaryDim / 2} columns) exceeds head_dim ${headDim}`);
    if (isFp8(q.dtype)) {
      throw new FlashAttnError("UNSUPPORTED", `rotary embedding is not applied to ${q.dtype} tensors: rotate q and k_new before quantising them`,
        "pass the rotated fp8 tensors without rotary tables");
    }
  }

  // The scalar semantics (scale, softcap, window, ALiBi slopes) and the fp8 rules (output dtype, descale factors per
  // (sequence, kv head)) follow the plain forward's, read once there.
  const plain = describeProblem(q, { dtype: q.dtype, shape: [batch, 1, headsKv, headDim] },
    { dtype: q.dtype, shape: [batch, 1, headsKv, headDim] }, opts);
  return {
    dtype: q.dtype, outDtype: plain.outDtype, batch, seqlenQ, seqlenNew, headsQ, headsKv, headDim, paged, cacheBatch, cacheRows, maxBlocks,
    rotaryDim, seqlenRotary, rotaryInterleaved: !!opts.rotaryInterleaved, causal: plain.causal, window: plain.window,
    scale: plain.scale, softcap: plain.softcap,
    alibi: opts.alibiSlopes ? (opts.alibiPerBatch ? "per-batch-head" : "per-head") : "none",
  };
}

/** Tokens each sequence's cache holds before the append: cacheSeqlens, or without it the capacity of a full cache. */
export function cachedTokens(p: KvCacheProblem, cacheSeqlens: Int32Array | undefined): number[] {
  const capacity = p.paged ? p.maxBlocks * p.cacheRows : p.cacheRows;
  return cacheSeqlens ? Array.from(cacheSeqlens) : new Array<number>(p.batch).fill(capacity);
}

/** Device addresses of one call; the optional ones are 0n / absent when unused. */
export interface KvCacheDeviceTensors {
  q: bigint;
  kCache: bigint;
  vCache: bigint;
  o: bigint;
  lse: bigint;
  /** Absent: every sequence's cache is full (no append). */
  cacheSeqlens?: bigint;
  kNew?: bigint;
  vNew?: bigint;
  blockTable?: bigint;
  cacheBatchIdx?: bigint;
  cacheLeftpad?: bigint;
  rotaryCos?: bigint;
  rotarySin?: bigint;
  alibiSlopes?: bigint;
  /** fp8 only (absent: factor 1). */
  qDescale?: DescaleView;
  kDescale?: DescaleView;
  vDescale?: DescaleView;
}

/** fa_kvcache_params for a problem over contiguous device tensors. */
export function kvCacheParamsFor(p: KvCacheProblem, t: KvCacheDeviceTensors, numSplits = 0): KvCacheParams {
  return {
    dtype: p.dtype, batch: p.batch, seqlenQ: p.seqlenQ, seqlenNew: p.seqlenNew, headsQ: p.headsQ, headsKv: p.headsKv,
    headDim: p.headDim, causal: p.causal, windowLeft: p.window[0], windowRight: p.window[1], scale: p.scale,
    softcap: p.softcap, alibiMode: p.alibi, numSplits, cacheBatch: p.cacheBatch, cacheRows: p.cacheRows,
    maxBlocks: p.maxBlocks, rotaryDim: p.rotaryDim, seqlenRotary: p.seqlenRotary, rotaryInterleaved: p.rotaryInterleaved,
    alibiSlopes: t.alibiSlopes ?? 0n, cacheSeqlens: t.cacheSeqlens ?? 0n, blockTable: t.blockTable ?? 0n,
    cacheBatchIdx: t.cacheBatchIdx ?? 0n, cacheLeftpad: t.cacheLeftpad ?? 0n, rotaryCos: t.rotaryCos ?? 0n,
    rotarySin: t.rotarySin ?? 0n, stream: 0n,
    q: contiguous(t.q, p.seqlenQ, p.headsQ, p.headDim),
    kCache: contiguous(t.kCache, p.cacheRows, p.headsKv, p.headDim),
    vCache: contiguous(t.vCache, p.cacheRows, p.headsKv, p.headDim),
    kNew: t.kNew ? contiguous(t.kNew, p.seqlenNew, p.headsKv, p.headDim) : emptyView,
    vNew: t.vNew ? contiguous(t.vNew, p.seqlenNew, p.headsKv, p.headDim) : emptyView,
    o: contiguous(t.o, p.seqlenQ, p.headsQ, p.headDim),
    lse: t.lse,
    outDtype: p.outDtype, qDescale: t.qDescale ?? noDescale, kDescale: t.kDescale ?? noDescale,
    vDescale: t.vDescale ?? noDescale,
  };
}

export interface KvCacheOptions extends KvCacheSemantics {
  kNew?: Tensor;
  vNew?: Tensor;
  rotaryCos?: Tensor;
  rotarySin?: Tensor;
  /** "auto": the first of cuda, hip, cpu whose library has a KV-cache kernel for the dtype and head_dim (planKvCache). */
  backend?: BackendChoice;
  libPath?: string;
  /** The decision made before (run plans the dtype of a random step with it), used as it is. */
  plan?: KvCachePlan;
  /** Split-KV count; 0 = the library's heuristic. */
  numSplits?: number;
  /** Fill O and LSE with NaN before the call, so an element the kernel never wrote cannot pass a check. */
  poison?: boolean;
  env?: Record<string, string | undefined>;
}

/** What a KV-cache decision depends on: the library's kernels must take this dtype and head_dim. */
export type KvCacheNeed = Pick<KvCacheProblem, "dtype" | "headDim">;

/** The decision for KV-cache calls of one dtype and head_dim: the backend, with every backend's verdict. */
export interface KvCachePlan extends KvCacheNeed {
  backend: Backend;
  decisions: BackendDecision[];
}

/** The kernels fa_info marks as serving fa_forward_kvcache ("kvcache" among their directions or features). */
export function kvCacheKernels(info: Pick<LibraryInfo, "kernels">): KernelInfo[] {
  return info.kernels.filter((k) => k.directions?.includes("kvcache") || k.features?.includes("kvcache"));
}

/** Whether a kernel's fa_info head_dims ([max] or a list of sizes) take head_dim d. */
function takesHeadDim(k: KernelInfo, d: number): boolean {
  const dims = Array.isArray(k.head_dims) ? k.head_dims.filter((x): x is number => typeof x === "number") : [];
  if (dims.length === 0) return true;
  return dims.length === 1 ? d <= dims[0] : dims.includes(d);
}

/** Whether a kernel's rows (fa_info row_bytes_multiple, absent = any) take head_dim elements of this dtype. */
function takesRowBytes(k: KernelInfo, need: KvCacheNeed): boolean {
  const multiple = k.row_bytes_multiple;
  return typeof multiple !== "number" || multiple <= 0 || (need.headDim * dtypeBytes[need.dtype]) % multiple === 0;
}

/**
 * Why a library cannot serve KV-cache calls of this dtype and head_dim, from its fa_info alone (fa_forward_kvcache
 * has no fa_plan; the library still refuses at call time what its paths do not cover): empty when one of its
 * KV-cache kernels takes both.
 */
export function kvCacheRefusals(info: Pick<LibraryInfo, "kernels">, need: KvCacheNeed): string[] {
  const kernels = kvCacheKernels(info);
  if (kernels.length === 0) return ["this library has no KV-cache kernel (fa_info marks none \"kvcache\")"];
  const reasons: string[] = [];
  for (const k of kernels) {
    if (k.dtypes && !k.dtypes.includes(need.dtype)) reasons.push(`${k.name}: no ${need.dtype} (it takes ${k.dtypes.join(", ")})`);
    else if (!takesHeadDim(k, need.headDim)) reasons.push(`${k.name}: head_dim ${need.headDim} is not among ${JSON.stringify(k.head_dims)}`);
    else if (!takesRowBytes(k, need)) {
      reasons.push(`${k.name}: rows of head_dim ${need.headDim} ${need.dtype} are ${need.headDim * dtypeBytes[need.dtype]} bytes, not a multiple of ${k.row_bytes_multiple}`);
    } else return [];
  }
  return reasons;
}

/** Decides once which backend serves KV-cache calls of this dtype and head_dim (lib/select.ts chooseBackend's rules). */
export function planKvCache(need: KvCacheNeed, opts: SelectOptions = {}): KvCachePlan {
  const decision = chooseBackend((backend) => ({ reasons: kvCacheRefusals(backend.info(), need) }), opts);
  if (!decision.chosen) throw noBackendError(decision.decisions);
  return { dtype: need.dtype, headDim: need.headDim, backend: decision.chosen, decisions: decision.decisions };
}

export interface KvCacheResult {
  out: Tensor;
  /** (batch, heads_q, seqlen_q), natural log, +inf for a row with no key. */
  lse: Float32Array;
  /** The caches after the append (copies: the caller's tensors are not modified). */
  kCache: Tensor;
  vCache: Tensor;
  backend: string;
  kernel: string;
  numSplits: number;
  /** Wall time of the native call, in ms. */
  ms: number;
}

/** The backend a KV-cache call runs on: the plan passed in (made for this dtype and head_dim), or a new decision. */
function kvCacheBackend(problem: KvCacheProblem, opts: KvCacheOptions): Backend {
  if (!opts.plan) return planKvCache(problem, opts).backend;
  if (opts.plan.dtype !== problem.dtype || opts.plan.headDim !== problem.headDim) {
    throw new FlashAttnError("INTERNAL", `a KV-cache plan for ${opts.plan.dtype} head_dim ${opts.plan.headDim} was passed to a ${problem.dtype} head_dim ${problem.headDim} call`);
  }
  return opts.plan.backend;
}

/**
 * flash_attn_with_kvcache on host tensors: appends kNew / vNew into (copies of) the caches, attends q to them, and
 * returns O, LSE and the updated caches. Every device buffer is freed whatever happens.
 */
export async function attentionWithKvCache(q: Tensor, kCache: Tensor, vCache: Tensor, opts: KvCacheOptions): Promise<KvCacheResult> {
  const problem = describeKvCache(q, kCache, vCache, opts);
  const backend = kvCacheBackend(problem, opts);
  const buffers: DeviceBuffer[] = [];
  const upload = (host: ArrayBufferView) => {
    const b = backend.upload(host);
    buffers.push(b);
    return b;
  };
  const optional = (host: ArrayBufferView | undefined) => (host ? upload(host).address : undefined);
  const descale = (factors: Float32Array | undefined) =>
    factors && descaleView(upload(factors).address, factors, problem.headsKv);
  try {
    const out = tensor(problem.outDtype, q.shape);
    const lse = new Float32Array(problem.batch * problem.headsQ * problem.seqlenQ);
    const o = upload(out.data), l = upload(lse), kc = upload(kCache.data), vc = upload(vCache.data);
    if (opts.poison) for (const b of [o, l]) backend.fill(b, 0xff);
    const params = kvCacheParamsFor(problem, {
      q: upload(q.data).address, kCache: kc.address, vCache: vc.address, o: o.address, lse: l.address,
      cacheSeqlens: optional(opts.cacheSeqlens), kNew: optional(opts.kNew?.data), vNew: optional(opts.vNew?.data),
      blockTable: optional(opts.blockTable), cacheBatchIdx: optional(opts.cacheBatchIdx),
      cacheLeftpad: optional(opts.cacheLeftpad), rotaryCos: optional(opts.rotaryCos?.data),
      rotarySin: optional(opts.rotarySin?.data), alibiSlopes: optional(opts.alibiSlopes),
      qDescale: descale(opts.descale?.q), kDescale: descale(opts.descale?.k), vDescale: descale(opts.descale?.v),
    }, opts.numSplits ?? 0);
    const t0 = performance.now();
    const { kernelId, numSplits } = backend.forwardKvcache(params);
    backend.synchronize();
    const ms = performance.now() - t0;
    const kOut = tensor(kCache.dtype, kCache.shape), vOut = tensor(vCache.dtype, vCache.shape);
    backend.download(o, out.data);
    backend.download(l, lse);
    backend.download(kc, kOut.data);
    backend.download(vc, vOut.data);
    return { out, lse, kCache: kOut, vCache: vOut, backend: backend.name, kernel: backend.kernelName(kernelId), numSplits, ms };
  } finally {
    for (const b of buffers) backend.free(b);
  }
}
