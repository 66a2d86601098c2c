// KV-cache attention (fa_forward_kvcache) on libflashattn_cpu against the independent fp64 reference
// (lib/kvcache_reference.ts): contiguous and paged caches (pages of 1, 16, 256, a shuffled block table), appends that
// cross page boundaries, cache_batch_idx, leftpad, rotary both ways, causal / window with seqlen_q > 1, GQA / MQA,
// softcap, ALiBi, forced split-KV; then every validation sentence through the C ABI and through the API.
import { describe, expect, test } from "bun:test";
import { compareKvcacheLayout, expectedKvcacheLayout, type KvCacheParams } from "../ffi/layout.ts";
import { type Backend, openBackend } from "../lib/backend.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { attentionWithKvCache, describeKvCache, type KvCacheOptions, kvCacheParamsFor, kvCacheRefusals, planKvCache } from "../lib/kvcache.ts";
import { standardAlibiSlopes } from "../lib/problem.ts";
import { randomTensor } from "../lib/tensor.ts";
import { checkDecodeLoop, checkKvCase, type KvArrays, type KvCase as Case, kvCallWith } from "./support/kvcache.ts";

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
  { name: "no cache_seqlens: every cache full, paged 16, leftpad, causal", b: 2, sq: 3, hq: 4, hkv: 2, d: 32, seqlens: [], full: true, capacity: 48, pageSize: 16, leftpad: [5, 0], opts: { causal: true } },
  { name: "no cache_seqlens: contiguous, rotary GPT-J from the capacity, causal", b: 2, sq: 2, hq: 2, hkv: 1, d: 16, seqlens: [], full: true, capacity: 40, rotary: { dim: 16, interleaved: true }, opts: { causal: true } },
  { name: "fp16, GQA, split 3", dtype: "fp16", b: 1, sq: 1, hq: 8, hkv: 2, d: 128, seqlens: [500], append: 1, capacity: 512, numSplits: 3 },
];

describe("CPU KV-cache attention vs the fp64 reference", () => {
  for (const c of cases) test(c.name, () => checkKvCase(c).then(() => {}));
});

describe("CPU KV-cache on device buffers (a decode loop)", () => {
  test("three steps append into the same cache buffers and match three reference steps", () => {
    const backend = openBackend("cpu", { env: {} }).backend!;
    const c: Case = { name: "loop", b: 2, sq: 1, hq: 4, hkv: 2, d: 16, seqlens: [5, 9], append: 1, capacity: 32, pageSize: 4, rotary: { dim: 16, interleaved: false }, opts: { causal: true } };
    expect(checkDecodeLoop(backend, c, 3, 4242)).toHaveLength(3);
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
  // cache_seqlens NULL and no k_new / v_new: the calls flash-attn makes without cache_seqlens.
  const noAppend = (p: KvCacheParams) => {
    p.cacheSeqlens = -1n;
    p.seqlenNew = 0;
    p.kNew = { ...p.kNew, data: 0n };
    p.vNew = { ...p.vNew, data: 0n };
  };
  const noRotary = (p: KvCacheParams) => Object.assign(p, { rotaryDim: 0, rotaryCos: 0n, rotarySin: 0n, seqlenRotary: 0 });
  const callWith = (mutate: (p: KvCacheParams, arrays: KvArrays) => void) => kvCallWith(backend, "fp32", mutate);

  test("the valid base problem runs", () => expect(callWith(() => {})).toBe("accepted"));
  test("fa_bench_kvcache checks the request as the call does, then times every run", () => {
    let times: Float32Array = new Float32Array();
    const bench = (b: Backend, p: KvCacheParams) => void (times = b.benchKvcache(p, 1, 3));
    expect(kvCallWith(backend, "fp32", (_, a) => void (a.table[3] = 9), 8, bench)).toBe(
      "cpu: block_table[1][0] = 9 is outside the cache's 9 pages");
    expect(kvCallWith(backend, "fp32", () => {}, 8, bench)).toBe("accepted");
    expect(times.length).toBe(3);
    for (const t of times) expect(t).toBeGreaterThan(0);
  });
  test("cache_seqlens NULL without an append runs (every cache full)", () => {
    expect(callWith((p) => {
      noAppend(p);
      noRotary(p);
    })).toBe("accepted");
  });
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
    ["cache_seqlens NULL with an append", (p) => void (p.cacheSeqlens = -1n), "appending needs cache_seqlens: without it every sequence's cache counts as full"],
    ["cache_seqlens NULL, no append: every cache full, all 3 block_table columns read", (p, a) => {
      noAppend(p);
      noRotary(p);
      a.table[5] = 9;
    }, "block_table[1][2] = 9 is outside the cache's 9 pages"],
    ["cache_seqlens NULL, no append: rotary positions run from the capacity", noAppend,
      "the rotary tables have 12 rows, but sequence 0 needs positions up to 13"],
    ["cache_seqlens NULL, no append: leftpad up to the capacity", (p, a) => {
      noAppend(p);
      a.leftpad[0] = 13;
      p.cacheLeftpad = 1n;
    }, "cache_leftpad[0] = 13 is outside 0..the cache's capacity = 12"],
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
  test("an append without cache_seqlens", async () => {
    const message = await refused({ cacheSeqlens: undefined, kNew: randomTensor("fp32", [2, 1, 2, 8], 5), vNew: randomTensor("fp32", [2, 1, 2, 8], 6) });
    expect(message).toBe("appending needs cache_seqlens: without it every sequence's cache counts as full, leaving no room for k_new");
  });
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
      const append = attempt({ ...params, cacheSeqlens: 0n, seqlenNew: 1, kNew: params.q, vNew: params.q });
      expect([append.code, append.message]).toEqual(["INVALID_ARGUMENT",
        `${name}: appending needs cache_seqlens: without it every sequence's cache counts as full, leaving no room for k_new`]);
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

describe("which backend serves KV-cache calls (pure rules over fa_info)", () => {
  const kernel = (name: string, extra: object) => ({ id: 1, name, directions: ["fwd"], dtypes: ["fp16", "bf16"], head_dims: [256], features: ["causal"], ...extra });
  test("a library with no kernel marked kvcache is refused, saying so", () => {
    expect(kvCacheRefusals({ kernels: [kernel("cuda-mma-sm80-fwd", {})] }, { dtype: "bf16", headDim: 128 }))
      .toEqual(["this library has no KV-cache kernel (fa_info marks none \"kvcache\")"]);
  });
  test("the marker counts in directions or in features", () => {
    expect(kvCacheRefusals({ kernels: [kernel("portable", { directions: ["fwd", "kvcache"] })] }, { dtype: "bf16", headDim: 128 })).toEqual([]);
    expect(kvCacheRefusals({ kernels: [kernel("cuda-decode", { features: ["kvcache"] })] }, { dtype: "fp16", headDim: 64 })).toEqual([]);
  });
  test("dtype and head_dim ([max] or a list) must fit one kvcache kernel; each refusal names its kernel", () => {
    const lib = { kernels: [kernel("cuda-decode", { features: ["kvcache"], head_dims: [64, 128] }), kernel("portable", { features: ["kvcache"], head_dims: [256] })] };
    expect(kvCacheRefusals(lib, { dtype: "bf16", headDim: 96 })).toEqual([]); // portable takes it
    expect(kvCacheRefusals(lib, { dtype: "fp32", headDim: 128 })).toEqual([
      "cuda-decode: no fp32 (it takes fp16, bf16)", "portable: no fp32 (it takes fp16, bf16)"]);
    expect(kvCacheRefusals({ kernels: [lib.kernels[0]] }, { dtype: "bf16", headDim: 96 })).toEqual(["cuda-decode: head_dim 96 is not among [64,128]"]);
  });
  test("a kernel's row_bytes_multiple rules out head dims whose rows it cannot copy (fp8 head_dim 40: 40 bytes), not others", () => {
    const decode = kernel("cuda-decode", { features: ["kvcache"], dtypes: ["bf16", "fp8_e4m3"], row_bytes_multiple: 16 });
    expect(kvCacheRefusals({ kernels: [decode] }, { dtype: "fp8_e4m3", headDim: 40 }))
      .toEqual(["cuda-decode: rows of head_dim 40 fp8_e4m3 are 40 bytes, not a multiple of 16"]);
    expect(kvCacheRefusals({ kernels: [decode] }, { dtype: "fp8_e4m3", headDim: 48 })).toEqual([]);
    expect(kvCacheRefusals({ kernels: [decode] }, { dtype: "bf16", headDim: 40 })).toEqual([]); // 80 bytes
    // the portable kernel after it (no row rule) takes what cuda-decode refuses
    const portable = kernel("portable", { features: ["kvcache"], dtypes: ["bf16", "fp8_e4m3"] });
    expect(kvCacheRefusals({ kernels: [decode, portable] }, { dtype: "fp8_e4m3", headDim: 40 })).toEqual([]);
  });
  test("the judge's reasons reach the decision: a head_dim no kvcache kernel takes leaves no backend, saying why", () => {
    let error: unknown;
    try {
      planKvCache({ dtype: "fp16", headDim: 512 }, { backend: "cpu", env: {} });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).message).toBe("no backend can run this: cpu: cpu_flash_fwd_avx2: head_dim 512 is not among [256]");
  });
  test("the CPU library marks its forward kernels kvcache, so auto plans cpu here with a reason for each GPU", () => {
    const cpu = openBackend("cpu", { env: {} }).backend!;
    expect(kvCacheRefusals(cpu.info(), { dtype: "fp32", headDim: 256 })).toEqual([]);
    // cpu always serves; every backend preferred to the chosen one is rejected with its reason (here without a GPU:
    // not built, or no device; on a GPU machine whose library marks a kvcache kernel, cuda is chosen).
    const plan = planKvCache({ dtype: "bf16", headDim: 128 }, { env: {} });
    const chosen = plan.decisions.findIndex((d) => d.verdict === "chosen");
    expect(plan.decisions[chosen].backend).toBe(plan.backend.name);
    expect(["chosen", "usable"]).toContain(plan.decisions.find((d) => d.backend === "cpu")!.verdict);
    for (const d of plan.decisions.slice(0, chosen)) expect([d.verdict, d.reasons.length > 0]).toEqual(["rejected", true]);
  });
});
