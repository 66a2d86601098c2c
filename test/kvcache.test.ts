// KV-cache attention (fa_forward_kvcache) on libflashattn_cpu against the independent fp64 reference
// (lib/kvcache_reference.ts): contiguous and paged caches (pages of 1, 16, 256, a shuffled block table), appends that
// cross page boundaries, cache_batch_idx, leftpad, rotary both ways, causal / window with seqlen_q > 1, GQA / MQA,
// softcap, ALiBi, forced split-KV; then every validation sentence through the C ABI and through the API.
import { describe, expect, test } from "bun:test";
import { type KvCacheParams, compareKvcacheLayout, expectedKvcacheLayout } from "../ffi/layout.ts";
import { type Backend, type DeviceBuffer, openBackend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { attentionWithKvCache, describeKvCache, type KvCacheOptions, kvCacheParamsFor } from "../lib/kvcache.ts";
import { referenceKvCache } from "../lib/kvcache_reference.ts";
import { standardAlibiSlopes } from "../lib/problem.ts";
import { relativeError } from "../lib/reference.ts";
import { type DType, fromFloat32, randomTensor, rng, type Tensor, toFloat32 } from "../lib/tensor.ts";

interface Case {
  name: string;
  dtype?: DType;
  b: number;
  sq: number;
  hq: number;
  hkv: number;
  d: number;
  /** Tokens already cached per sequence. */
  seqlens: number[];
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
  opts?: Pick<KvCacheOptions, "causal" | "window" | "softcap" | "alibiSlopes">;
}

/** Real rotary tables (theta_i = 10000^(-2i / dim)) for positions 0 .. rows - 1. */
function rotaryTables(dtype: DType, rows: number, dim: number): { cos: Tensor; sin: Tensor } {
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

function build(c: Case, seed: number) {
  const dtype = c.dtype ?? "fp32";
  const next = rng(seed ^ 0x5eed);
  const q = randomTensor(dtype, [c.b, c.sq, c.hq, c.d], seed);
  const opts: KvCacheOptions = { backend: "cpu", cacheSeqlens: Int32Array.from(c.seqlens), numSplits: c.numSplits, ...c.opts };
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
  if (c.leftpad) opts.cacheLeftpad = Int32Array.from(c.leftpad);
  if (c.batchIdx) opts.cacheBatchIdx = Int32Array.from(c.batchIdx);
  if (c.rotary) {
    const { cos, sin } = rotaryTables(dtype, c.capacity, c.rotary.dim); // a position for every cache token
    Object.assign(opts, { rotaryCos: cos, rotarySin: sin, rotaryInterleaved: c.rotary.interleaved });
  }
  return { q, kCache, vCache, opts };
}

/** Runs `body` with an upload function; every buffer it uploaded is freed afterwards, whatever happens. */
function withBuffers<T>(backend: Backend, body: (up: (a: ArrayBufferView) => DeviceBuffer) => T): T {
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

const bitsOf = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);

async function check(c: Case) {
  const seed = (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;
  const { q, kCache, vCache, opts } = build(c, seed);
  const before = [Buffer.from(bitsOf(kCache)), Buffer.from(bitsOf(vCache))];
  const got = await attentionWithKvCache(q, kCache, vCache, opts);
  const ref = referenceKvCache(q, kCache, vCache, opts);
  const where = `${c.name} (seed ${seed})`;
  const limit = (c.dtype ?? "fp32") === "fp32" ? 1e-5 : 1e-2;
  expect([where, relativeError(toFloat32(got.out), ref.out) <= limit]).toEqual([where, true]);
  const lseGot = Array.from(got.lse), lseRef = Array.from(ref.lse);
  expect([where, lseGot.map((x) => x === Infinity)]).toEqual([where, lseRef.map((x) => x === Infinity)]);
  expect([where, relativeError(lseGot.map((x) => (x === Infinity ? 0 : x)), lseRef.map((x) => (x === Infinity ? 0 : x))) <= limit])
    .toEqual([where, true]);
  // Without rotary the append is a copy: the caches must match bit for bit (every row outside the append too).
  if (!c.rotary) expect([where, bitsOf(got.kCache).equals(bitsOf(ref.kCache))]).toEqual([where, true]);
  else expect([where, relativeError(toFloat32(got.kCache), toFloat32(ref.kCache)) <= limit / 10]).toEqual([where, true]);
  expect([where, bitsOf(got.vCache).equals(bitsOf(ref.vCache))]).toEqual([where, true]);
  // The host API returns updated copies; the caller's caches are untouched.
  expect(bitsOf(kCache).equals(before[0]) && bitsOf(vCache).equals(before[1])).toBe(true);
  if (c.numSplits) expect(got.numSplits).toBe(c.numSplits);
  return got;
}

const cases: Case[] = [
  { name: "decode, contiguous, MHA", b: 2, sq: 1, hq: 4, hkv: 4, d: 32, seqlens: [37, 100], capacity: 128 },
  { name: "decode, GQA 4:1, append 1", b: 3, sq: 1, hq: 8, hkv: 2, d: 64, seqlens: [0, 5, 250], append: 1, capacity: 256 },
  { name: "MQA, seqlen_q 5 causal, append 5", b: 2, sq: 5, hq: 6, hkv: 1, d: 40, seqlens: [20, 33], append: 5, capacity: 64, opts: { causal: true } },
  { name: "paged, page 1, shuffled", b: 2, sq: 1, hq: 2, hkv: 1, d: 16, seqlens: [7, 13], append: 2, capacity: 20, pageSize: 1 },
  { name: "paged, page 16, append crosses a page boundary", b: 2, sq: 3, hq: 4, hkv: 2, d: 32, seqlens: [14, 30], append: 5, capacity: 64, pageSize: 16, opts: { causal: true } },
  { name: "paged, page 256, shuffled", b: 2, sq: 2, hq: 4, hkv: 2, d: 24, seqlens: [300, 17], append: 3, capacity: 512, pageSize: 256 },
  { name: "paged, odd page 7, leftpad", b: 2, sq: 4, hq: 2, hkv: 2, d: 8, seqlens: [30, 19], append: 4, capacity: 42, pageSize: 7, leftpad: [9, 0], opts: { causal: true } },
  { name: "cache_batch_idx", b: 2, sq: 2, hq: 2, hkv: 1, d: 16, seqlens: [10, 40], append: 2, capacity: 48, cacheBatch: 4, batchIdx: [3, 1] },
  { name: "leftpad, contiguous", b: 3, sq: 3, hq: 2, hkv: 1, d: 16, seqlens: [12, 40, 5], append: 1, capacity: 48, leftpad: [4, 0, 5], opts: { causal: true } },
  { name: "rotary GPT-NeoX, causal", b: 2, sq: 3, hq: 4, hkv: 2, d: 32, seqlens: [10, 21], append: 3, capacity: 32, rotary: { dim: 16, interleaved: false }, opts: { causal: true } },
  { name: "rotary GPT-J, not causal (q at cache_seqlens)", b: 2, sq: 3, hq: 4, hkv: 2, d: 32, seqlens: [10, 21], append: 2, capacity: 32, rotary: { dim: 32, interleaved: true } },
  { name: "rotary GPT-J, paged 16, window", b: 2, sq: 4, hq: 2, hkv: 1, d: 24, seqlens: [15, 3], append: 4, capacity: 40, pageSize: 16, rotary: { dim: 8, interleaved: true }, opts: { window: [6, 0] } },
  { name: "window (10, 2) with seqlen_q 6", b: 2, sq: 6, hq: 2, hkv: 2, d: 16, seqlens: [50, 8], append: 2, capacity: 64, opts: { window: [10, 2] } },
  { name: "softcap + ALiBi", b: 2, sq: 2, hq: 4, hkv: 2, d: 32, seqlens: [60, 61], append: 1, capacity: 64, opts: { softcap: 3, alibiSlopes: standardAlibiSlopes(4), causal: true } },
  { name: "split-KV forced (7 splits), causal", b: 1, sq: 3, hq: 4, hkv: 1, d: 32, seqlens: [900], append: 2, capacity: 1024, pageSize: 16, numSplits: 7, opts: { causal: true } },
  { name: "split-KV forced, more splits than blocks, window", b: 2, sq: 1, hq: 2, hkv: 1, d: 16, seqlens: [150, 3], capacity: 160, numSplits: 13, opts: { window: [40, 0] } },
  { name: "empty cache, no append (O = 0, LSE = +inf)", b: 1, sq: 2, hq: 2, hkv: 1, d: 8, seqlens: [0], capacity: 8 },
  { name: "bf16, paged 16, rotary NeoX, append", dtype: "bf16", b: 2, sq: 2, hq: 4, hkv: 1, d: 64, seqlens: [30, 47], append: 2, capacity: 64, pageSize: 16, rotary: { dim: 64, interleaved: false }, opts: { causal: true } },
  { name: "fp16, GQA, split 3", dtype: "fp16", b: 1, sq: 1, hq: 8, hkv: 2, d: 128, seqlens: [500], append: 1, capacity: 512, numSplits: 3 },
];

describe("CPU KV-cache attention vs the fp64 reference", () => {
  for (const c of cases) test(c.name, () => check(c).then(() => {}));
});

describe("CPU KV-cache on device buffers (a decode loop)", () => {
  test("three steps append into the same cache buffers and match three reference steps", () => {
    const backend = openBackend("cpu", { env: {} }).backend!;
    const seed = 4242;
    const c: Case = { name: "loop", b: 2, sq: 1, hq: 4, hkv: 2, d: 16, seqlens: [5, 9], append: 1, capacity: 32, pageSize: 4, rotary: { dim: 16, interleaved: false }, opts: { causal: true } };
    const first = build(c, seed);
    withBuffers(backend, (up) => {
      const kc = up(first.kCache.data), vc = up(first.vCache.data);
      const seqlens = up(first.opts.cacheSeqlens), table = up(first.opts.blockTable!);
      const cos = up(first.opts.rotaryCos!.data), sin = up(first.opts.rotarySin!.data);
      let kHost = first.kCache, vHost = first.vCache;
      const lens = Int32Array.from(c.seqlens);
      for (let step = 0; step < 3; step++) {
        const q = randomTensor("fp32", [2, 1, 4, 16], seed + 10 * step);
        const kNew = randomTensor("fp32", [2, 1, 2, 16], seed + 10 * step + 1), vNew = randomTensor("fp32", [2, 1, 2, 16], seed + 10 * step + 2);
        const opts: KvCacheOptions = { ...first.opts, cacheSeqlens: Int32Array.from(lens), kNew, vNew };
        const problem = describeKvCache(q, kHost, vHost, opts);
        const o = up(new Float32Array(q.data.length)), lse = up(new Float32Array(8));
        backend.copy(seqlens, up(opts.cacheSeqlens), 8);
        backend.forwardKvcache(kvCacheParamsFor(problem, {
          q: up(q.data).address, kCache: kc.address, vCache: vc.address, o: o.address, lse: lse.address,
          cacheSeqlens: seqlens.address, kNew: up(kNew.data).address, vNew: up(vNew.data).address,
          blockTable: table.address, rotaryCos: cos.address, rotarySin: sin.address,
        }));
        const ref = referenceKvCache(q, kHost, vHost, opts);
        const out = new Float32Array(q.data.length);
        backend.download(o, out);
        expect(relativeError(out, ref.out)).toBeLessThan(1e-5);
        [kHost, vHost] = [ref.kCache, ref.vCache];
        for (let b = 0; b < 2; b++) lens[b]++;
      }
      const kDevice = new Float32Array(kHost.data.length);
      backend.download(kc, kDevice);
      expect(relativeError(kDevice, toFloat32(kHost))).toBeLessThan(1e-6);
    });
  });
});

describe("fa_kvcache_params layout", () => {
  test("the library reports the layout ffi/layout.ts writes, and a drift is named", () => {
    // Loading the backend already compares the layouts; a shifted report must be refused with the field's name.
    expect(openBackend("cpu", { env: {} }).backend).toBeDefined();
    const shifted = expectedKvcacheLayout().map((v, i) => (i >= 31 ? v + 8 : v));
    expect(compareKvcacheLayout(expectedKvcacheLayout())).toEqual([]);
    expect(compareKvcacheLayout(shifted)[0]).toContain("q is at 160 in the library but at 152 here");
  });
});

describe("fa_forward_kvcache refuses bad input with one sentence and writes nothing", () => {
  const backend: Backend = openBackend("cpu", { env: {} }).backend!;
  // A valid paged problem with an append: 2 sequences, pages of 4, 3 blocks each, 8 pages.
  const seed = 99;
  const base: Case = { name: "bad", b: 2, sq: 2, hq: 4, hkv: 2, d: 8, seqlens: [5, 2], append: 2, capacity: 12, pageSize: 4, rotary: { dim: 4, interleaved: false }, opts: { causal: true } };

  function callWith(mutate: (p: KvCacheParams, arrays: { seqlens: Int32Array; table: Int32Array; leftpad: Int32Array; batchIdx: Int32Array }) => void): string {
    const { q, kCache, vCache, opts } = build(base, seed);
    const problem = describeKvCache(q, kCache, vCache, opts);
    const arrays = { seqlens: Int32Array.from(opts.cacheSeqlens), table: Int32Array.from(opts.blockTable!), leftpad: new Int32Array(2), batchIdx: new Int32Array(2) };
    return withBuffers(backend, (up) => {
      const kc = up(kCache.data);
      const params = kvCacheParamsFor(problem, {
        q: up(q.data).address, kCache: kc.address, vCache: up(vCache.data).address, o: up(new Float32Array(q.data.length)).address,
        lse: up(new Float32Array(16)).address, cacheSeqlens: 0n, kNew: up(opts.kNew!.data).address, vNew: up(opts.vNew!.data).address,
        blockTable: 0n, rotaryCos: up(opts.rotaryCos!.data).address, rotarySin: up(opts.rotarySin!.data).address,
      });
      mutate(params, arrays);
      // The arrays are uploaded after the mutation; a test that clears a pointer sets it to 0n, which stays.
      const fill = (field: "cacheSeqlens" | "blockTable" | "cacheLeftpad" | "cacheBatchIdx", a: Int32Array, always: boolean) => {
        if (params[field] === 1n || (always && params[field] === 0n)) params[field] = up(a).address;
      };
      if (params.cacheSeqlens !== -1n) fill("cacheSeqlens", arrays.seqlens, true);
      else params.cacheSeqlens = 0n;
      if (params.blockTable !== -1n) fill("blockTable", arrays.table, true);
      else params.blockTable = 0n;
      fill("cacheLeftpad", arrays.leftpad, false);
      fill("cacheBatchIdx", arrays.batchIdx, false);
      try {
        backend.forwardKvcache(params);
      } catch (e) {
        expect(e).toBeInstanceOf(FlashAttnError);
        // Nothing was appended: the cache is as it was.
        const after = new Float32Array(kCache.data.length);
        backend.download(kc, after);
        expect(Buffer.from(after.buffer).equals(Buffer.from(kCache.data.buffer))).toBe(true);
        return (e as Error).message;
      }
      return "accepted";
    });
  }

  test("the valid base problem runs", () => expect(callWith(() => {})).toBe("accepted"));
  const refusals: Array<[string, Parameters<typeof callWith>[0], string]> = [
    ["block_table entry out of range", (_, a) => void (a.table[3] = 9), "block_table[1][0] = 9 is outside the cache's 9 pages"],
    ["negative block_table entry", (_, a) => void (a.table[0] = -1), "block_table[0][0] = -1 is outside"],
    ["cache_seqlens + seqlen_new over capacity", (_, a) => void (a.seqlens[0] = 11), "sequence 0 holds 11 cached tokens plus 2 new ones, more than the cache's 12 per sequence"],
    ["negative cache_seqlens", (_, a) => void (a.seqlens[1] = -3), "cache_seqlens[1] is negative (-3)"],
    ["negative seqlen_new", (p) => void (p.seqlenNew = -1), "seqlen_new must not be negative, got -1"],
    ["rotary table too short", (p) => void (p.seqlenRotary = 6), "the rotary tables have 6 rows, but sequence 0 needs positions up to 6"],
    ["an unused block_table entry is never read", (_, a) => void (a.table[5] = 1 << 30), "accepted"],
    ["rotary_dim odd", (p) => void (p.rotaryDim = 3), "rotary_dim must be even, got 3"],
    ["rotary_dim over head_dim", (p) => void (p.rotaryDim = 10), "rotary_dim 10 exceeds head_dim 8"],
    ["rotary tables missing", (p) => void (p.rotarySin = 0n), "rotary_dim is set but rotary_cos or rotary_sin is NULL"],
    ["heads_q not a multiple of heads_kv", (p) => void (p.headsQ = 3), "heads_q (3) must be a multiple of heads_kv (2)"],
    ["leftpad over cache_seqlens", (p, a) => { a.leftpad[1] = 3; p.cacheLeftpad = 1n; }, "cache_leftpad[1] = 3 is outside 0..cache_seqlens[1] = 2"],
    ["cache_batch_idx with a paged cache", (p) => void (p.cacheBatchIdx = 1n), "cache_batch_idx applies to contiguous caches only"],
    ["cache_batch_idx out of range", (p, a) => {
      p.blockTable = -1n; p.maxBlocks = 0; p.cacheRows = 4; a.batchIdx[1] = 9; p.cacheBatchIdx = 1n; p.seqlenNew = 0;
      p.kNew = { ...p.kNew, data: 0n }; p.vNew = { ...p.vNew, data: 0n }; a.seqlens[0] = 1; a.seqlens[1] = 1;
    }, "cache_batch_idx[1] = 9 is outside the cache's 9 sequences"],
    ["cache_seqlens NULL", (p) => void (p.cacheSeqlens = -1n), "cache_seqlens is NULL"],
    ["k_new without v_new", (p) => void (p.vNew = { ...p.vNew, data: 0n }), "k_new and v_new must be given together"],
    ["seqlen_new without k_new", (p) => { p.kNew = { ...p.kNew, data: 0n }; p.vNew = { ...p.vNew, data: 0n }; }, "seqlen_new is 2 but k_new / v_new are NULL"],
    ["max_blocks 0 with a block table", (p) => void (p.maxBlocks = 0), "a paged cache needs max_blocks of at least 1, got 0"],
    ["page size 0", (p) => void (p.cacheRows = 0), "the cache needs at least one page and one row each, got 9 and 0"],
    ["num_splits over 256", (p) => void (p.numSplits = 300), "num_splits must be 0 (auto) to 256, got 300"],
    ["seqlen_q 0", (p) => void (p.seqlenQ = 0), "seqlen_q must be at least 1, got 0"],
  ];
  for (const [name, mutate, sentence] of refusals) test(name, () => expect(callWith(mutate)).toContain(sentence));
});

describe("attentionWithKvCache refuses bad input with one sentence", () => {
  const q = randomTensor("fp32", [2, 1, 4, 8], 1), kc = randomTensor("fp32", [2, 16, 2, 8], 2);
  const seqlens = Int32Array.from([3, 4]);
  const refused = async (opts: Partial<KvCacheOptions>, qq = q, k = kc, v = kc) => {
    try {
      await attentionWithKvCache(qq, k, v, { backend: "cpu", cacheSeqlens: seqlens, ...opts });
    } catch (e) {
      expect(e).toBeInstanceOf(FlashAttnError);
      return (e as Error).message;
    }
    return "accepted";
  };
  test("accepts the base problem", async () => expect(await refused({})).toBe("accepted"));
  test("dtype mismatch", async () =>
    expect(await refused({}, q, randomTensor("bf16", [2, 16, 2, 8], 2), randomTensor("bf16", [2, 16, 2, 8], 2))).toContain("k_cache is bf16 but q is fp32"));
  test("k_new of the wrong shape", async () =>
    expect(await refused({ kNew: randomTensor("fp32", [2, 1, 4, 8], 3), vNew: randomTensor("fp32", [2, 1, 4, 8], 3) })).toContain("k_new must be (2, seqlen_new >= 1, 2, 8)"));
  test("block_table not batch x max_blocks", async () => expect(await refused({ blockTable: Int32Array.from([0, 1, 2]) })).toContain("block_table must be (batch, max_blocks)"));
  test("cache_seqlens of the wrong length", async () => expect(await refused({ cacheSeqlens: Int32Array.from([1]) })).toContain("cache_seqlens must hold 2 int32 values"));
  test("rotary_dim over head_dim", async () => {
    const t = randomTensor("fp32", [8, 5], 4);
    expect(await refused({ rotaryCos: t, rotarySin: t })).toContain("rotary_dim 10 (twice the tables' 5 columns) exceeds head_dim 8");
  });
  test("heads_q not a multiple of heads_kv", async () =>
    expect(await refused({}, randomTensor("fp32", [2, 1, 3, 8], 1))).toContain("heads_q (3) must be a multiple of heads_kv (2)"));
  test("the library's value checks reach the caller (over capacity)", async () => {
    const message = await refused({ cacheSeqlens: Int32Array.from([3, 16]), kNew: randomTensor("fp32", [2, 1, 2, 8], 5), vNew: randomTensor("fp32", [2, 1, 2, 8], 6) });
    expect(message).toContain("sequence 1 holds 16 cached tokens plus 1 new ones, more than the cache's 16 per sequence");
  });
});

describe("GPU libraries built on this machine", () => {
  // The libraries validate the struct with the same sentences before any device is touched, so no GPU is needed for
  // that; a valid request then needs the device (its int32 arrays are read back from device memory): without one it
  // is refused with the vendor's reason, never a crash. The GPU suite runs real requests where there is a device.
  for (const name of ["cuda", "hip"] as const) {
    const backend = openBackend(name, { env: {} }).backend;
    test.skipIf(!backend)(`${name}: validation first, then the device`, () => {
      const q = randomTensor("bf16", [1, 1, 2, 64], 1), kc = randomTensor("bf16", [1, 8, 1, 64], 2);
      const problem = describeKvCache(q, kc, kc, { cacheSeqlens: Int32Array.from([3]) });
      const params = kvCacheParamsFor(problem, { q: 0x1000n, kCache: 0x1000n, vCache: 0x1000n, o: 0x1000n, lse: 0n, cacheSeqlens: 0x1000n });
      const attempt = (p: KvCacheParams) => {
        try {
          backend!.forwardKvcache(p);
        } catch (e) {
          return e as FlashAttnError;
        }
        throw new Error("accepted");
      };
      const refused = attempt({ ...params, rotaryDim: 3, rotaryCos: 0x1000n, rotarySin: 0x1000n, seqlenRotary: 8 });
      expect([refused.code, refused.message]).toEqual(["INVALID_ARGUMENT", `${name}: rotary_dim must be even, got 3`]);
      try {
        backend!.deviceCount();
        return; // a machine with this GPU: gpu.test.ts covers the rest
      } catch {}
      const noDevice = attempt(params);
      expect(noDevice.code).toBe("NO_DEVICE");
      expect(noDevice.message).toMatch(new RegExp(`^${name}: .*(no AMD GPU|NVIDIA driver|no CUDA device|libcuda)`));
    });
  }
});
