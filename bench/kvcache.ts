// The KV-cache cases of a bench run (BenchCase.kvcache): the cache a case lays out, the tensors of its call, and the
// call itself through Backend.forwardKvcache on device buffers (the cache stays where it lives; no copy per call).
//
// The layout: every sequence holds cache_seqlens = seqlenK - append tokens and appends `append` more, so the call
// attends to seqlenK keys. The cache holds exactly seqlenK tokens per sequence: contiguous (batch, seqlenK, ...), or
// ceil(seqlenK / page) pages per sequence in a shuffled block table (pages scattered over the pool, as a serving
// cache has them). cache_seqlens is the same every call, so each timed call appends into the same slot and every call
// is a valid decode step. Rotary tables cover every position the call rotates.
import type { Backend, DeviceBuffer } from "../lib/backend.ts";
import { describeKvCache, type KvCacheOptions, type KvCacheProblem, kvCacheParamsFor } from "../lib/kvcache.ts";
import { rng, type Tensor } from "../lib/tensor.ts";
import { defaultOutDtype, dtypeBytes } from "../lib/vocabulary.ts";
import type { BenchCase, KvCacheLayout } from "./sweep.ts";
import type { KvCacheParams } from "../ffi/layout.ts";

/** A case of the KV-cache entry. */
export type KvCacheCase = BenchCase & { kvcache: KvCacheLayout };

export const isKvCacheCase = (c: BenchCase): c is KvCacheCase => c.kvcache !== undefined;

/**
 * Pages 0..pages-1 in a seeded random order, never the identity where there are two pages or more (an identity table
 * would make a paged cache one contiguous run and hide the cost of scattered pages).
 */
export function shuffledBlockTable(pages: number, seed: number): Int32Array {
  const next = rng(seed);
  const keys = Float64Array.from({ length: pages }, () => next());
  const order = Int32Array.from({ length: pages }, (_, i) => i).sort((a, b) => keys[a] - keys[b]);
  if (pages > 1 && order.every((page, i) => page === i)) order.reverse();
  return order;
}

/** The shapes and int32 arrays of a case's call. The block table is row-major (batch, maxBlocks). */
export interface KvCacheShapes {
  q: number[];
  cache: number[];
  /** k_new / v_new, when the case appends */
  kNew?: number[];
  /** rotary_cos / rotary_sin, when the case rotates */
  rotary?: number[];
  cacheSeqlens: Int32Array;
  blockTable?: Int32Array;
}

export function kvcacheShapes(c: KvCacheCase): KvCacheShapes {
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim } = c;
  const { pageSize, append, rotary } = c.kvcache;
  const cached = seqlenK - append;
  const pagesPerSequence = pageSize ? Math.ceil(seqlenK / pageSize) : 0;
  return {
    q: [batch, seqlenQ, headsQ, headDim],
    cache: pageSize ? [batch * pagesPerSequence, pageSize, headsKv, headDim] : [batch, seqlenK, headsKv, headDim],
    ...(append > 0 ? { kNew: [batch, append, headsKv, headDim] } : {}),
    // q row i rotates to position cached + i (causal) and k_new row j to cached + j: one table row for each.
    ...(rotary ? { rotary: [cached + Math.max(seqlenQ, append), Math.floor(headDim / 2)] } : {}),
    cacheSeqlens: new Int32Array(batch).fill(cached),
    ...(pageSize ? { blockTable: shuffledBlockTable(batch * pagesPerSequence, 0xb10c + batch) } : {}),
  };
}

const shaped = (dtype: BenchCase["dtype"], shape: number[]) => ({ dtype, shape });

/** The options of a case's call, over tensors `make` gives for each shape (host tensors, or shapes alone). */
export function kvcacheOptions<T extends { dtype: BenchCase["dtype"]; shape: number[] }>(
  c: KvCacheCase,
  t: KvCacheShapes,
  make: (name: "kNew" | "vNew" | "rotaryCos" | "rotarySin", shape: number[]) => T,
) {
  return {
    causal: c.causal,
    cacheSeqlens: t.cacheSeqlens,
    ...(t.blockTable ? { blockTable: t.blockTable } : {}),
    ...(t.kNew ? { kNew: make("kNew", t.kNew), vNew: make("vNew", t.kNew) } : {}),
    ...(t.rotary ? { rotaryCos: make("rotaryCos", t.rotary), rotarySin: make("rotarySin", t.rotary) } : {}),
  };
}

/** The library's reading of a case (its rules, once: lib/kvcache.ts describeKvCache). */
export function kvcacheProblem(c: KvCacheCase, t = kvcacheShapes(c)): KvCacheProblem {
  const cache = shaped(c.dtype, t.cache);
  return describeKvCache(shaped(c.dtype, t.q), cache, cache, kvcacheOptions(c, t, (_, shape) => shaped(c.dtype, shape)));
}

const elements = (shape: number[] | undefined) => (shape ? shape.reduce((a, b) => a * b, 1) : 0);

/**
 * Bytes of every buffer of a case's call: q, o (in the output dtype: bf16 for fp8 caches), both caches, k_new / v_new,
 * the rotary tables, LSE, int32 arrays.
 */
export function kvcacheBufferBytes(c: KvCacheCase): number {
  const t = kvcacheShapes(c);
  const e = dtypeBytes[c.dtype];
  const inputs = elements(t.q) + 2 * elements(t.cache) + 2 * elements(t.kNew) + 2 * elements(t.rotary);
  const ints = 4 * (t.cacheSeqlens.length + (t.blockTable?.length ?? 0));
  return inputs * e + elements(t.q) * dtypeBytes[defaultOutDtype(c.dtype)] + 4 * c.batch * c.headsQ * c.seqlenQ + ints;
}

/** The device buffers of one call and its parameters. */
export interface KvCacheCall {
  params: KvCacheParams;
  q: DeviceBuffer;
  kCache: DeviceBuffer;
  vCache: DeviceBuffer;
  o: DeviceBuffer;
  lse: DeviceBuffer;
}

/**
 * Allocates a case's call on `backend` through `alloc` (the caller frees what it returns), its floating-point inputs
 * made by `input` (a random fill on the device for timing, an upload of host tensors for the check); the int32 arrays
 * are uploaded.
 */
export function prepareKvcache(
  backend: Backend,
  c: KvCacheCase,
  track: (b: DeviceBuffer) => DeviceBuffer,
  input: (name: "q" | "kCache" | "vCache" | "kNew" | "vNew" | "rotaryCos" | "rotarySin", shape: number[]) => DeviceBuffer,
): KvCacheCall {
  const t = kvcacheShapes(c);
  const problem = kvcacheProblem(c, t);
  const q = input("q", t.q), kCache = input("kCache", t.cache), vCache = input("vCache", t.cache);
  const o = track(backend.alloc(elements(t.q) * dtypeBytes[problem.outDtype]));
  const lse = track(backend.alloc(4 * c.batch * c.headsQ * c.seqlenQ));
  const upload = (a: Int32Array | undefined) => (a ? track(backend.upload(a)).address : undefined);
  const optional = (name: "kNew" | "vNew" | "rotaryCos" | "rotarySin", shape: number[] | undefined) =>
    shape ? input(name, shape).address : undefined;
  const params = kvCacheParamsFor(problem, {
    q: q.address,
    kCache: kCache.address,
    vCache: vCache.address,
    o: o.address,
    lse: lse.address,
    cacheSeqlens: upload(t.cacheSeqlens)!,
    blockTable: upload(t.blockTable),
    kNew: optional("kNew", t.kNew),
    vNew: optional("vNew", t.kNew),
    rotaryCos: optional("rotaryCos", t.rotary),
    rotarySin: optional("rotarySin", t.rotary),
  });
  return { params, q, kCache, vCache, o, lse };
}

/** The host tensors of a check: q and the caches, and the options (k_new, v_new, rotary tables, arrays) over tensors. */
export function kvcacheHostInputs(c: KvCacheCase, random: (shape: number[], seed: number) => Tensor) {
  const t = kvcacheShapes(c);
  const seeds = { kNew: 24, vNew: 25, rotaryCos: 26, rotarySin: 27 };
  const options: KvCacheOptions = kvcacheOptions(c, t, (name, shape) => random(shape, seeds[name]));
  return { q: random(t.q, 21), kCache: random(t.cache, 22), vCache: random(t.cache, 23), options };
}

