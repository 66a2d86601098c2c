// KV-cache attention (flash-attn 2.x flash_attn_with_kvcache; docs/DESIGN.md "KV cache"): the problem a set of host
// tensors and options describes (shapes checked here, once; the values of cache_seqlens, block_table,
// cache_batch_idx and cache_leftpad are checked by the library, which reads them where they live), the
// fa_kvcache_params of a problem over device buffers, and attentionWithKvCache() on host tensors.
//
// Device use (a decode loop): describe once, keep q / k_new / the caches / the int32 arrays in device buffers, and
// per step call backend.forwardKvcache(kvCacheParamsFor(problem, buffers)): the cache is updated where it lives.
import { emptyView, type KvCacheParams } from "../ffi/layout.ts";
import type { Backend, DeviceBuffer } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import { describeAttempts, openBackend } from "./backend.ts";
import { type AttentionSemantics, checkShape, describeProblem, type TensorShape } from "./problem.ts";
import { type BackendChoice, contiguous, requestedBackend } from "./select.ts";
import { type Tensor, tensor } from "./tensor.ts";
import type { DType, KvCacheShape } from "./vocabulary.ts";

/** The options of flash_attn_with_kvcache beyond q and the caches (semantics in kernels/include/flashattn.h). */
export interface KvCacheSemantics extends Omit<AttentionSemantics, "cuSeqlensQ" | "cuSeqlensK"> {
  /** (batch, seqlen_new, heads_kv, d): written into the cache at cacheSeqlens[b].. (rotated), then attended to. */
  kNew?: TensorShape;
  vNew?: TensorShape;
  /** (batch,) tokens already in each sequence's cache, counting its leftpad rows. */
  cacheSeqlens: Int32Array;
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
  if (!(opts.cacheSeqlens instanceof Int32Array)) throw bad("cache_seqlens must be given as an Int32Array of one length per sequence");
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
  }

  // The scalar semantics (scale, softcap, window, ALiBi slopes) follow the plain forward's rules, read once there.
  const plain = describeProblem(q, { dtype: q.dtype, shape: [batch, 1, headsKv, headDim] },
    { dtype: q.dtype, shape: [batch, 1, headsKv, headDim] }, opts);
  return {
    dtype: q.dtype, batch, seqlenQ, seqlenNew, headsQ, headsKv, headDim, paged, cacheBatch, cacheRows, maxBlocks,
    rotaryDim, seqlenRotary, rotaryInterleaved: !!opts.rotaryInterleaved, causal: plain.causal, window: plain.window,
    scale: plain.scale, softcap: plain.softcap,
    alibi: opts.alibiSlopes ? (opts.alibiPerBatch ? "per-batch-head" : "per-head") : "none",
  };
}

/** Device addresses of one call; the optional ones are 0n / absent when unused. */
export interface KvCacheDeviceTensors {
  q: bigint;
  kCache: bigint;
  vCache: bigint;
  o: bigint;
  lse: bigint;
  cacheSeqlens: bigint;
  kNew?: bigint;
  vNew?: bigint;
  blockTable?: bigint;
  cacheBatchIdx?: bigint;
  cacheLeftpad?: bigint;
  rotaryCos?: bigint;
  rotarySin?: bigint;
  alibiSlopes?: bigint;
}

/** fa_kvcache_params for a problem over contiguous device tensors. */
export function kvCacheParamsFor(p: KvCacheProblem, t: KvCacheDeviceTensors, numSplits = 0): KvCacheParams {
  return {
    dtype: p.dtype, batch: p.batch, seqlenQ: p.seqlenQ, seqlenNew: p.seqlenNew, headsQ: p.headsQ, headsKv: p.headsKv,
    headDim: p.headDim, causal: p.causal, windowLeft: p.window[0], windowRight: p.window[1], scale: p.scale,
    softcap: p.softcap, alibiMode: p.alibi, numSplits, cacheBatch: p.cacheBatch, cacheRows: p.cacheRows,
    maxBlocks: p.maxBlocks, rotaryDim: p.rotaryDim, seqlenRotary: p.seqlenRotary, rotaryInterleaved: p.rotaryInterleaved,
    alibiSlopes: t.alibiSlopes ?? 0n, cacheSeqlens: t.cacheSeqlens, blockTable: t.blockTable ?? 0n,
    cacheBatchIdx: t.cacheBatchIdx ?? 0n, cacheLeftpad: t.cacheLeftpad ?? 0n, rotaryCos: t.rotaryCos ?? 0n,
    rotarySin: t.rotarySin ?? 0n, stream: 0n,
    q: contiguous(t.q, p.seqlenQ, p.headsQ, p.headDim),
    kCache: contiguous(t.kCache, p.cacheRows, p.headsKv, p.headDim),
    vCache: contiguous(t.vCache, p.cacheRows, p.headsKv, p.headDim),
    kNew: t.kNew ? contiguous(t.kNew, p.seqlenNew, p.headsKv, p.headDim) : emptyView,
    vNew: t.vNew ? contiguous(t.vNew, p.seqlenNew, p.headsKv, p.headDim) : emptyView,
    o: contiguous(t.o, p.seqlenQ, p.headsQ, p.headDim),
    lse: t.lse,
  };
}

export interface KvCacheOptions extends KvCacheSemantics {
  kNew?: Tensor;
  vNew?: Tensor;
  rotaryCos?: Tensor;
  rotarySin?: Tensor;
  /** Only the cpu backend implements KV-cache attention so far; "auto" means cpu. */
  backend?: BackendChoice;
  libPath?: string;
  /** Split-KV count; 0 = the library's heuristic. */
  numSplits?: number;
  env?: Record<string, string | undefined>;
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

/** The backend a KV-cache call runs on: the one asked for, where "auto" is cpu (the GPU kernels are a later step). */
function kvCacheBackend(opts: KvCacheOptions): Backend {
  const { choice } = requestedBackend({ backend: opts.backend, env: opts.env });
  const name = choice === "auto" ? "cpu" : choice;
  const { backend, attempts } = openBackend(name, { libPath: opts.libPath, env: opts.env });
  if (!backend) throw new FlashAttnError("NO_BACKEND", `no ${name} library could be loaded: ${describeAttempts(attempts)}`);
  return backend;
}

/**
 * flash_attn_with_kvcache on host tensors: appends kNew / vNew into (copies of) the caches, attends q to them, and
 * returns O, LSE and the updated caches. Every device buffer is freed whatever happens.
 */
export async function attentionWithKvCache(q: Tensor, kCache: Tensor, vCache: Tensor, opts: KvCacheOptions): Promise<KvCacheResult> {
  const problem = describeKvCache(q, kCache, vCache, opts);
  const backend = kvCacheBackend(opts);
  const buffers: DeviceBuffer[] = [];
  const upload = (host: ArrayBufferView) => {
    const b = backend.upload(host);
    buffers.push(b);
    return b;
  };
  const optional = (host: ArrayBufferView | undefined) => (host ? upload(host).address : undefined);
  try {
    const out = tensor(q.dtype, q.shape);
    const lse = new Float32Array(problem.batch * problem.headsQ * problem.seqlenQ);
    const o = upload(out.data), l = upload(lse), kc = upload(kCache.data), vc = upload(vCache.data);
    const params = kvCacheParamsFor(problem, {
      q: upload(q.data).address, kCache: kc.address, vCache: vc.address, o: o.address, lse: l.address,
      cacheSeqlens: upload(opts.cacheSeqlens).address, kNew: optional(opts.kNew?.data), vNew: optional(opts.vNew?.data),
      blockTable: optional(opts.blockTable), cacheBatchIdx: optional(opts.cacheBatchIdx),
      cacheLeftpad: optional(opts.cacheLeftpad), rotaryCos: optional(opts.rotaryCos?.data),
      rotarySin: optional(opts.rotarySin?.data), alibiSlopes: optional(opts.alibiSlopes),
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
