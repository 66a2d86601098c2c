// The KV-cache cases as the CPU suite (test/kvcache.test.ts) and the GPU suite (test/gpu.test.ts) run them: a case
// built into real tensors (a shuffled block table with spare pages, real rotary tables), checked against the fp64
// reference (lib/kvcache_reference.ts) with O and LSE poisoned first; a decode loop on device buffers; and a call
// through the C ABI with one field or array changed, which must be refused with one sentence and write nothing; a step
// file for the CLI.
import { expect } from "bun:test";
import fs from "node:fs";
import type { KvCacheParams } from "../../ffi/layout.ts";
import type { Backend, DeviceBuffer } from "../../lib/backend.ts";
import { FlashAttnError } from "../../lib/errors.ts";
import { attentionWithKvCache, describeKvCache, type KvCacheOptions, type KvCacheResult, kvCacheParamsFor } from "../../lib/kvcache.ts";
import { referenceKvCache } from "../../lib/kvcache_reference.ts";
import { naiveFp8Forward, relativeError, withinTolerance } from "../../lib/reference.ts";
import { plainKvCacheProblem } from "../../lib/kvcache_reference.ts";
import { isFp8 } from "../../lib/vocabulary.ts";
import { type DType, fromFloat32, randomTensor, rng, type Tensor, tensor, toFloat32 } from "../../lib/tensor.ts";
import { freshSeed } from "./grid.ts";

export interface KvCase {
  name: string;
  dtype?: DType;
  b: number;
  sq: number;
  hq: number;
  hkv: number;
  d: number;
  /** Tokens already cached per sequence. */
  seqlens: number[];
  /** No cache_seqlens: every sequence's cache counts as full (seqlens is then ignored; no append). */
  full?: boolean;
  append?: number;
  /** Contiguous capacity, or (paged) the tokens each sequence's block table row covers. */
  capacity: number;
  pageSize?: number;
  leftpad?: number[];
  batchIdx?: number[];
  /** Extra cache sequences (contiguous) so cache_batch_idx has somewhere else to point. */
  cacheBatch?: number;
  rotary?: { dim: number; interleaved: boolean };
  numSplits?: number;
  opts?: Pick<KvCacheOptions, "causal" | "window" | "softcap" | "alibiSlopes" | "alibiPerBatch" | "outDtype">;
  /** fp8: descale factors per tensor (one each) or per (sequence, kv head) (distinct values); absent = none (1). */
  descale?: "tensor" | "head";
}

/** Real rotary tables (theta_i = 10000^(-2i / dim)) for positions 0 .. rows - 1. */
export function rotaryTables(dtype: DType, rows: number, dim: number): { cos: Tensor; sin: Tensor } {
  const half = dim / 2, c = new Float32Array(rows * half), s = new Float32Array(rows * half);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * 10000 ** (-2 * i / dim);
      c[t * half + i] = Math.cos(angle);
      s[t * half + i] = Math.sin(angle);
    }
  }
  return { cos: fromFloat32(dtype, [rows, half], c), sin: fromFloat32(dtype, [rows, half], s) };
}

/** The tensors and options of a case (fresh random data from `seed`), for the backend `run` names. */
export function buildKvCase(c: KvCase, seed: number, run: Pick<KvCacheOptions, "backend"> = { backend: "cpu" }) {
  const dtype = c.dtype ?? "fp32";
  const next = rng(seed ^ 0x5eed);
  const q = randomTensor(dtype, [c.b, c.sq, c.hq, c.d], seed);
  const opts: KvCacheOptions = { ...run, numSplits: c.numSplits, ...c.opts };
  if (!c.full) opts.cacheSeqlens = Int32Array.from(c.seqlens);
  let cacheShape: number[];
  if (c.pageSize) {
    const maxBlocks = Math.ceil(c.capacity / c.pageSize);
    const pages = c.b * maxBlocks + 3; // spare pages no sequence names
    const order = Array.from({ length: pages }, (_, i) => i);
    for (let i = pages - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    opts.blockTable = Int32Array.from(order.slice(0, c.b * maxBlocks));
    cacheShape = [pages, c.pageSize, c.hkv, c.d];
  } else {
    cacheShape = [c.cacheBatch ?? c.b, c.capacity, c.hkv, c.d];
  }
  const kCache = randomTensor(dtype, cacheShape, seed + 1), vCache = randomTensor(dtype, cacheShape, seed + 2);
  if (c.append) {
    opts.kNew = randomTensor(dtype, [c.b, c.append, c.hkv, c.d], seed + 3);
    opts.vNew = randomTensor(dtype, [c.b, c.append, c.hkv, c.d], seed + 4);
  }
  if (c.descale) {
    // Scales of a few powers of two around 1/16 and 3/8: each (sequence, kv head) its own with "head".
    const count = c.descale === "head" ? c.b * c.hkv : 1;
    const factors = (base: number) => Float32Array.from({ length: count }, (_, i) => base * 2 ** ((i % 3) - 1));
    opts.descale = { q: factors(0.375), k: factors(0.0625), v: factors(1.5) };
  }
  if (c.leftpad) opts.cacheLeftpad = Int32Array.from(c.leftpad);
  if (c.batchIdx) opts.cacheBatchIdx = Int32Array.from(c.batchIdx);
  if (c.rotary) {
    // A position for every cache token, and the q rows past a full cache.
    const { cos, sin } = rotaryTables(dtype, c.capacity + (c.full ? c.sq : 0), c.rotary.dim);
    Object.assign(opts, { rotaryCos: cos, rotarySin: sin, rotaryInterleaved: c.rotary.interleaved });
  }
  return { q, kCache, vCache, opts };
}

/** Runs `body` with an upload function; every buffer it uploaded is freed afterwards, whatever happens. */
export function withBuffers<T>(backend: Backend, body: (up: (a: ArrayBufferView) => DeviceBuffer) => T): T {
  const buffers: DeviceBuffer[] = [];
  try {
    return body((a) => {
      const b = backend.upload(a);
      buffers.push(b);
      return b;
    });
  } finally {
    for (const b of buffers) backend.free(b);
  }
}

export const bitsOf = (t: Tensor | ArrayBufferView) => {
  const a = "shape" in t ? t.data : t;
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
};

/** The tolerance of a dtype (docs/DESIGN.md): fp32 1e-5, fp16/bf16 1e-2. */
const limitOf = (dtype: DType) => withinTolerance(dtype, 0).limit;

/**
 * Runs a case on the backend `run` names, outputs poisoned, and checks it against the fp64 reference: O and LSE
 * within the dtype's tolerance (+inf exactly where a row has no key; fp8: O no worse than twice a naive fp8 attention
 * of the same inputs, o in the output dtype, the LSE within 1e-5 as fp32 sums of exact fp8 products give: the CPU's,
 * and cuda-decode's fp16 tensor cores'), v_cache bit for bit (the append is a copy), k_cache bit for bit without rotary
 * and within a tenth of the tolerance with it, the caller's caches untouched, a forced split count honoured. Returns
 * the result (its kernel says which path ran).
 */
export async function checkKvCase(c: KvCase, run: Pick<KvCacheOptions, "backend"> = { backend: "cpu" }): Promise<KvCacheResult> {
  const seed = freshSeed();
  const { q, kCache, vCache, opts } = buildKvCase(c, seed, run);
  const before = [Buffer.from(bitsOf(kCache)), Buffer.from(bitsOf(vCache))];
  const got = await attentionWithKvCache(q, kCache, vCache, { ...opts, poison: true });
  const ref = referenceKvCache(q, kCache, vCache, opts);
  const where = `${c.name} (seed ${seed}, ${got.backend} ${got.kernel})`;
  const fp8 = isFp8(q.dtype);
  let limit: number, lseLimit: number;
  if (fp8) {
    expect([where, got.out.dtype]).toEqual([where, c.opts?.outDtype ?? "bf16"]);
    const plain = plainKvCacheProblem(q, ref.kCache, ref.vCache, opts);
    const naiveError = relativeError(naiveFp8Forward(plain.q, plain.k, plain.v, plain.semantics), ref.out);
    expect([where, naiveError > 0]).toEqual([where, true]);
    [limit, lseLimit] = [2 * naiveError, 1e-5];
  } else {
    limit = lseLimit = limitOf(q.dtype);
  }
  const outError = relativeError(toFloat32(got.out), ref.out);
  expect([where, `O error ${outError}`, outError <= limit]).toEqual([where, `O error ${outError}`, true]);
  const lseGot = Array.from(got.lse), lseRef = Array.from(ref.lse);
  expect([where, lseGot.map((x) => x === Infinity)]).toEqual([where, lseRef.map((x) => x === Infinity)]);
  expect([where, relativeError(lseGot.map((x) => (x === Infinity ? 0 : x)), lseRef.map((x) => (x === Infinity ? 0 : x))) <= lseLimit])
    .toEqual([where, true]);
  if (!c.rotary) expect([where, bitsOf(got.kCache).equals(bitsOf(ref.kCache))]).toEqual([where, true]);
  else expect([where, relativeError(toFloat32(got.kCache), toFloat32(ref.kCache)) <= limit / 10]).toEqual([where, true]);
  expect([where, bitsOf(got.vCache).equals(bitsOf(ref.vCache))]).toEqual([where, true]);
  // The host API returns updated copies; the caller's caches are untouched.
  expect(bitsOf(kCache).equals(before[0]) && bitsOf(vCache).equals(before[1])).toBe(true);
  if (c.numSplits) expect([where, got.numSplits]).toEqual([where, c.numSplits]);
  return got;
}

/**
 * A decode loop on device buffers: `steps` calls each append one token per sequence into the same cache buffers
 * (cache_seqlens advanced on the device by a device-to-device copy; the cache never comes back to the host between
 * steps); each step's O matches the reference step, and the cache read back at the end matches the reference's
 * (v bit for bit; k within a tenth of the tolerance, being rotated). Returns the kernels that ran.
 */
export function checkDecodeLoop(backend: Backend, c: KvCase, steps: number, seed: number): string[] {
  const dtype = c.dtype ?? "fp32", limit = limitOf(dtype);
  const first = buildKvCase(c, seed, { backend: backend.name });
  const kernels: string[] = [];
  withBuffers(backend, (up) => {
    const kc = up(first.kCache.data), vc = up(first.vCache.data);
    const seqlens = up(first.opts.cacheSeqlens!);
    const table = first.opts.blockTable ? up(first.opts.blockTable).address : undefined;
    const cos = first.opts.rotaryCos ? up(first.opts.rotaryCos.data).address : undefined;
    const sin = first.opts.rotarySin ? up(first.opts.rotarySin.data).address : undefined;
    let kHost = first.kCache, vHost = first.vCache;
    const lens = Int32Array.from(c.seqlens);
    for (let step = 0; step < steps; step++) {
      const q = randomTensor(dtype, [c.b, 1, c.hq, c.d], seed + 10 * step);
      const kNew = randomTensor(dtype, [c.b, 1, c.hkv, c.d], seed + 10 * step + 1);
      const vNew = randomTensor(dtype, [c.b, 1, c.hkv, c.d], seed + 10 * step + 2);
      const opts: KvCacheOptions = { ...first.opts, cacheSeqlens: Int32Array.from(lens), kNew, vNew };
      const problem = describeKvCache(q, kHost, vHost, opts);
      const o = up(new Uint8Array(q.data.byteLength)), lse = up(new Float32Array(c.b * c.hq));
      backend.copy(seqlens, up(opts.cacheSeqlens!), 4 * c.b);
      const { kernelId } = backend.forwardKvcache(kvCacheParamsFor(problem, {
        q: up(q.data).address, kCache: kc.address, vCache: vc.address, o: o.address, lse: lse.address,
        cacheSeqlens: seqlens.address, kNew: up(kNew.data).address, vNew: up(vNew.data).address,
        blockTable: table, rotaryCos: cos, rotarySin: sin,
      }));
      kernels.push(backend.kernelName(kernelId));
      const ref = referenceKvCache(q, kHost, vHost, opts);
      const out = tensor(dtype, q.shape);
      backend.download(o, out.data);
      expect([`step ${step}`, relativeError(toFloat32(out), ref.out) <= limit]).toEqual([`step ${step}`, true]);
      [kHost, vHost] = [ref.kCache, ref.vCache];
      for (let b = 0; b < c.b; b++) lens[b]++;
    }
    const kDevice = tensor(dtype, kHost.shape), vDevice = tensor(dtype, vHost.shape);
    backend.download(kc, kDevice.data);
    backend.download(vc, vDevice.data);
    expect(relativeError(toFloat32(kDevice), toFloat32(kHost))).toBeLessThanOrEqual(limit / 10);
    expect(bitsOf(vDevice).equals(bitsOf(vHost))).toBe(true);
  });
  return kernels;
}

/** The int32 arrays of a refusal test, changed by its mutation before they are uploaded. */
export interface KvArrays {
  seqlens: Int32Array;
  table: Int32Array;
  leftpad: Int32Array;
  batchIdx: Int32Array;
}

/**
 * Calls fa_forward_kvcache on `backend` with a valid paged problem with an append and rotary (2 sequences, pages of 4,
 * 3 blocks each, 9 pages, head_dim `d`; fp8: without rotary, which fp8 refuses) after `mutate` changed the params or
 * the arrays. A mutation sets a pointer to 1n to have its array uploaded, to -1n to have it NULL; cache_seqlens and
 * block_table are uploaded unless set to -1n; `up` uploads anything else it needs (descale factors). Returns
 * "accepted", or the refusal's message after checking the cache was left as it was (nothing appended). `call` is the
 * entry under test (fa_forward_kvcache; fa_bench_kvcache validates the same way).
 */
export function kvCallWith(backend: Backend, dtype: DType,
  mutate: (p: KvCacheParams, arrays: KvArrays, up: (a: ArrayBufferView) => DeviceBuffer) => void, d = 8,
  call: (backend: Backend, p: KvCacheParams) => void = (b, p) => void b.forwardKvcache(p)): string {
  const rotary = isFp8(dtype) ? undefined : { dim: 4, interleaved: false };
  const base: KvCase = { name: "bad", dtype, b: 2, sq: 2, hq: 4, hkv: 2, d, seqlens: [5, 2], append: 2, capacity: 12, pageSize: 4, rotary, opts: { causal: true } };
  const { q, kCache, vCache, opts } = buildKvCase(base, 99, { backend: backend.name });
  const problem = describeKvCache(q, kCache, vCache, opts);
  const arrays = { seqlens: Int32Array.from(opts.cacheSeqlens!), table: Int32Array.from(opts.blockTable!), leftpad: new Int32Array(2), batchIdx: new Int32Array(2) };
  return withBuffers(backend, (up) => {
    const kc = up(kCache.data);
    const params = kvCacheParamsFor(problem, {
      // o: room for 4-byte elements whatever out_dtype a mutation asks
      q: up(q.data).address, kCache: kc.address, vCache: up(vCache.data).address, o: up(new Float32Array(q.data.length)).address,
      lse: up(new Float32Array(16)).address, kNew: up(opts.kNew!.data).address, vNew: up(opts.vNew!.data).address,
      rotaryCos: opts.rotaryCos && up(opts.rotaryCos.data).address, rotarySin: opts.rotarySin && up(opts.rotarySin.data).address,
    });
    mutate(params, arrays, up);
    const fill = (field: "cacheSeqlens" | "blockTable" | "cacheLeftpad" | "cacheBatchIdx", a: Int32Array, always: boolean) => {
      if (params[field] === -1n) params[field] = 0n;
      else if (params[field] === 1n || (always && params[field] === 0n)) params[field] = up(a).address;
    };
    fill("cacheSeqlens", arrays.seqlens, true);
    fill("blockTable", arrays.table, true);
    fill("cacheLeftpad", arrays.leftpad, false);
    fill("cacheBatchIdx", arrays.batchIdx, false);
    try {
      call(backend, params);
      backend.synchronize();
    } catch (e) {
      expect(e).toBeInstanceOf(FlashAttnError);
      const after = new Uint8Array(kCache.data.byteLength);
      backend.download(kc, after);
      expect(Buffer.from(after).equals(bitsOf(kCache))).toBe(true);
      return (e as Error).message;
    }
    return "accepted";
  });
}

/** A .safetensors file of float tensors and I32 arrays, written by hand (flashattn itself never writes I32). */
export function writeStep(file: string, floats: Record<string, Tensor>, ints: Record<string, { shape: number[]; data: Int32Array }>) {
  const names = [...Object.keys(floats), ...Object.keys(ints)];
  const header: Record<string, unknown> = {};
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const f = floats[name], i = ints[name];
    const data = f ? f.data : i.data;
    const dtype = f ? { fp32: "F32", fp16: "F16", bf16: "BF16", fp8_e4m3: "F8_E4M3", fp8_e5m2: "F8_E5M2" }[f.dtype] : "I32";
    header[name] = { dtype, shape: f ? f.shape : i.shape, data_offsets: [offset, offset + data.byteLength] };
    chunks.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    offset += data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  head.set(json, 8);
  fs.writeFileSync(file, Buffer.concat([head, ...chunks]));
}
