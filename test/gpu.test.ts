// The GPU backends against the fp64 reference over the same docs/DESIGN.md grid as the CPU suite, in fp16/bf16, with
// the tolerance rule (≤ 1e-2 and ≤ 2× a naive same-precision implementation). Every kernel path of the CUDA library
// is exercised: the dispatcher's own choice, then each path forced through FLASHATTN_KERNEL where it can serve the
// case. On a machine without a GPU every test here is skipped, and the skip says why.
//
// Run only these on a GPU machine: scripts/ci/test.sh test/gpu.test.ts (the KV-cache part alone: bun test
// test/gpu.test.ts -t kvcache). The library's own limits (sizes it refuses,
// nonsense parameter values, rows of 2^25+ keys, LSE of rows without keys) run on every backend present, GPUs included,
// in test/native-limits.test.ts.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AttentionOptions } from "../lib/attention.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { kvCacheKernels } from "../lib/kvcache.ts";
import { standardAlibiSlopes } from "../lib/problem.ts";
import { randomTensor } from "../lib/tensor.ts";
import { cli } from "./support/cli.ts";
import { gpuBackend } from "./support/gpu.ts";
import { backwardCases, type Case, checkBackward, checkForward, forwardCases, freshSeed, inGpuDtype } from "./support/grid.ts";
import { checkDecodeLoop, checkKvCase, type KvCase, kvCallWith, writeStep } from "./support/kvcache.ts";
import { setNativeEnv } from "./support/native-env.ts";

for (const name of ["cuda", "hip"] as const) {
  const { backend, why } = gpuBackend(name);
  if (!backend) {
    // One skipped entry that says why, instead of the whole grid repeating it.
    test.skip(`${name} GPU suite — skipped: ${why}`, () => {});
    continue;
  }
  describe(`${name} on ${backend.deviceInfo(0).name}`, () => {
    const run: AttentionOptions = { backend: name };
    const gpuForward = forwardCases.map(inGpuDtype);
    const gpuBackward = backwardCases.map(inGpuDtype);

    describe("forward, dispatcher's choice", () => {
      for (const c of gpuForward) test(`${c.name} [${c.dtype}]`, () => checkForward(c, run).then(() => {}));
    });
    describe("backward, dispatcher's choice", () => {
      for (const c of gpuBackward) test(`${c.name} [${c.dtype}]`, () => checkBackward(c, run).then(() => {}));
    });

    // Each kernel path forced: a path that cannot serve a case must say why (plan), never compute garbage.
    const paths = backend.info().kernels;
    for (const kernel of paths) {
      const dirs = kernel.directions ?? ["fwd"];
      describe(`path ${kernel.name}`, () => {
        const cases: Array<[Case, "fwd" | "bwd"]> = [
          ...(dirs.includes("fwd") ? gpuForward.map((c) => [c, "fwd"] as [Case, "fwd"]) : []),
          ...(dirs.includes("bwd") ? gpuBackward.map((c) => [c, "bwd"] as [Case, "bwd"]) : []),
        ];
        for (const [c, dir] of cases) {
          test(`${dir} ${c.name} [${c.dtype}]`, async () => {
            setNativeEnv("FLASHATTN_KERNEL", kernel.name);
            try {
              const ran = dir === "fwd" ? await checkForward(c, run) : await checkBackward(c, run);
              expect(ran).toBe(kernel.name); // the forced path, not the dispatcher's own choice
            } catch (e) {
              // A refusal is fine (the path does not cover this case: the plan says why); wrong numbers are not.
              const message = (e as Error).message;
              // The plan names the refusing path first: "no backend can run this: cuda: portable: <why>".
              if (!message.startsWith(`no backend can run this: ${name}: ${kernel.name}: `)) throw e;
            } finally {
              setNativeEnv("FLASHATTN_KERNEL", undefined);
            }
          });
        }
      });
    }
  });
}

// ---- KV-cache attention (fa_forward_kvcache) ------------------------------------------------------------------------
// The KV-cache grid (test/support/kvcache.ts checks each case against lib/kvcache_reference.ts, O and LSE poisoned with
// NaN first): on the dispatcher's choice, then on every path fa_info marks "kvcache", forced through FLASHATTN_KERNEL.
// A forced path may refuse a case it does not cover (UNSUPPORTED, naming itself), except the plain decode cases every
// KV-cache path must serve. Then a decode loop on device buffers, bad input on the device, and the CLI planning cuda.
// Run only these on a GPU machine: scripts/ci/test.sh test/gpu.test.ts -t kvcache (its --timeout 120000 covers the fp64
// reference of the 8k-token cases).

const alibi32 = standardAlibiSlopes(32);
/** The decode loop's cache: paged 16, GQA 32/8, d 128, rotary, one sequence starting 2 tokens before a page boundary. */
const kvLoopCase: KvCase = { name: "loop", dtype: "bf16", b: 2, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [14, 1000], append: 1, capacity: 1024, pageSize: 16, rotary: { dim: 128, interleaved: false }, opts: { causal: true } };
/** Decode at a long cache: every KV-cache path must run these (a refusal fails the test). */
const kvMustRun: KvCase[] = [
  { name: "decode sq 1 at 8k, GQA 32/8, d 128, paged 16, split auto", dtype: "bf16", b: 2, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [8191, 5000], append: 1, capacity: 8192, pageSize: 16 },
  { name: "decode sq 1 at 8k, GQA 32/8, d 128, contiguous", dtype: "fp16", b: 1, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [8192], capacity: 8192 },
];
const kvGpuCases: KvCase[] = [
  ...kvMustRun,
  { name: "paged, page 1, shuffled, append 2", dtype: "bf16", b: 2, sq: 1, hq: 8, hkv: 2, d: 64, seqlens: [7, 130], append: 2, capacity: 140, pageSize: 1 },
  { name: "paged, page 16, append 5 crosses a page boundary, causal sq 4", dtype: "fp16", b: 2, sq: 4, hq: 8, hkv: 2, d: 128, seqlens: [14, 300], append: 5, capacity: 320, pageSize: 16, opts: { causal: true } },
  { name: "paged, page 256, append 9 crosses a page boundary", dtype: "bf16", b: 2, sq: 1, hq: 8, hkv: 2, d: 128, seqlens: [250, 700], append: 9, capacity: 1024, pageSize: 256 },
  { name: "paged, odd page 7, leftpad, append 4 crosses a page boundary", dtype: "fp16", b: 2, sq: 4, hq: 4, hkv: 2, d: 64, seqlens: [33, 19], append: 4, capacity: 42, pageSize: 7, leftpad: [9, 0], opts: { causal: true } },
  { name: "contiguous, cache_batch_idx, append 2", dtype: "bf16", b: 2, sq: 1, hq: 8, hkv: 2, d: 128, seqlens: [100, 1000], append: 2, capacity: 1024, cacheBatch: 4, batchIdx: [3, 1] },
  { name: "contiguous, leftpad, causal sq 4", dtype: "fp16", b: 3, sq: 4, hq: 8, hkv: 2, d: 64, seqlens: [120, 400, 5], append: 1, capacity: 512, leftpad: [40, 0, 5], opts: { causal: true } },
  { name: "no cache_seqlens: every cache full, paged 16, leftpad", dtype: "bf16", b: 2, sq: 1, hq: 8, hkv: 2, d: 128, seqlens: [], full: true, capacity: 640, pageSize: 16, leftpad: [17, 0] },
  { name: "empty cache and a row without keys (O 0, LSE +inf)", dtype: "fp16", b: 2, sq: 1, hq: 4, hkv: 1, d: 64, seqlens: [0, 500], capacity: 512 },
  { name: "rotary GPT-NeoX, causal sq 4, paged 16, append 4 across a page", dtype: "bf16", b: 2, sq: 4, hq: 32, hkv: 8, d: 128, seqlens: [14, 900], append: 4, capacity: 1024, pageSize: 16, rotary: { dim: 128, interleaved: false }, opts: { causal: true } },
  { name: "rotary GPT-J, not causal (q at cache_seqlens), sq 3, append 2", dtype: "fp16", b: 2, sq: 3, hq: 8, hkv: 2, d: 64, seqlens: [10, 210], append: 2, capacity: 256, rotary: { dim: 64, interleaved: true } },
  { name: "rotary NeoX on 64 of 128 features, decode append 1", dtype: "bf16", b: 2, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [3000, 77], append: 1, capacity: 4096, pageSize: 64, rotary: { dim: 64, interleaved: false } },
  { name: "speculative: causal sq 16, append 16, paged 64", dtype: "fp16", b: 2, sq: 16, hq: 32, hkv: 8, d: 128, seqlens: [1000, 40], append: 16, capacity: 1088, pageSize: 64, opts: { causal: true } },
  { name: "window (64, 0), sq 16, 1k cache", dtype: "bf16", b: 1, sq: 16, hq: 8, hkv: 2, d: 128, seqlens: [1000], append: 16, capacity: 1024, opts: { window: [64, 0] } },
  { name: "window (10, 2), sq 4", dtype: "fp16", b: 2, sq: 4, hq: 4, hkv: 4, d: 64, seqlens: [50, 300], capacity: 320, opts: { window: [10, 2] } },
  { name: "softcap 30, decode", dtype: "bf16", b: 2, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [2000, 1], append: 1, capacity: 2048, opts: { softcap: 30 } },
  { name: "ALiBi per head, causal sq 4", dtype: "fp16", b: 2, sq: 4, hq: 32, hkv: 8, d: 128, seqlens: [700, 64], append: 4, capacity: 1024, pageSize: 16, opts: { causal: true, alibiSlopes: alibi32 } },
  { name: "ALiBi per batch x head, decode", dtype: "bf16", b: 2, sq: 1, hq: 4, hkv: 1, d: 64, seqlens: [333, 900], capacity: 1024, opts: { alibiSlopes: Float32Array.from({ length: 8 }, (_, i) => 0.02 * (i + 1)), alibiPerBatch: true } },
  { name: "MQA 16/1, d 128, decode at 2k", dtype: "fp16", b: 2, sq: 1, hq: 16, hkv: 1, d: 128, seqlens: [2047, 1500], append: 1, capacity: 2048, pageSize: 16 },
  { name: "head dim 64, GQA 32/8, decode", dtype: "bf16", b: 2, sq: 1, hq: 32, hkv: 8, d: 64, seqlens: [1500, 4000], append: 1, capacity: 4096, pageSize: 16 },
  { name: "head dim 256, GQA 8/2, paged 16, decode", dtype: "fp16", b: 2, sq: 1, hq: 8, hkv: 2, d: 256, seqlens: [2000, 31], append: 1, capacity: 2048, pageSize: 16 },
  { name: "split-KV forced (3), decode at 4k", dtype: "bf16", b: 1, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [4000], append: 1, capacity: 4096, numSplits: 3 },
  { name: "split-KV forced (3), causal sq 4, paged 16", dtype: "fp16", b: 2, sq: 4, hq: 8, hkv: 2, d: 128, seqlens: [3000, 2000], append: 4, capacity: 3072, pageSize: 16, numSplits: 3, opts: { causal: true } },
  { name: "batch 4 of mixed lengths, decode append 1, split auto", dtype: "bf16", b: 4, sq: 1, hq: 32, hkv: 8, d: 128, seqlens: [1, 17, 4095, 600], append: 1, capacity: 4096, pageSize: 256 },
];

for (const name of ["cuda", "hip"] as const) {
  const { backend, why } = gpuBackend(name);
  if (!backend) {
    test.skip(`${name} kvcache GPU tests — skipped: ${why}`, () => {});
    continue;
  }
  const kvPaths = kvCacheKernels(backend.info());
  describe(`${name} kvcache on ${backend.deviceInfo(0).name}`, () => {
    test("the library marks at least one kernel path \"kvcache\" in fa_info", () => {
      expect(kvPaths.map((k) => k.name)).not.toEqual([]);
    });

    describe("dispatcher's choice", () => {
      for (const c of kvGpuCases) {
        test(`${c.name} [${c.dtype}]`, async () => {
          const got = await checkKvCase(c, { backend: name });
          expect(kvPaths.map((k) => k.name)).toContain(got.kernel);
        });
      }
    });

    for (const kernel of kvPaths) {
      describe(`path ${kernel.name} forced`, () => {
        /** Runs `body` with the path forced; a refusal naming the path is accepted unless `mustRun`. */
        const forced = async (mustRun: boolean, body: () => Promise<string[]> | string[]) => {
          setNativeEnv("FLASHATTN_KERNEL", kernel.name);
          try {
            const ran = await body();
            expect(new Set(ran)).toEqual(new Set([kernel.name])); // the forced path, not the dispatcher's own choice
          } catch (e) {
            const refusal = e instanceof FlashAttnError && e.code === "UNSUPPORTED" && e.message.includes(kernel.name);
            if (mustRun || !refusal) throw e;
          } finally {
            setNativeEnv("FLASHATTN_KERNEL", undefined);
          }
        };
        for (const c of kvGpuCases) {
          test(`${c.name} [${c.dtype}]`, () => forced(kvMustRun.includes(c), async () => [(await checkKvCase(c, { backend: name })).kernel]));
        }
        test("decode loop: 8 steps append one token each into device buffers, pages crossed, never copied back", () =>
          forced(true, () => checkDecodeLoop(backend, kvLoopCase, 8, freshSeed())));
      });
    }

    test("decode loop on the dispatcher's choice: 8 steps on device buffers", () => {
      const kernels = checkDecodeLoop(backend, kvLoopCase, 8, freshSeed());
      expect(kernels.every((k) => kvPaths.some((p) => p.name === k))).toBe(true);
    });

    describe("bad input on the device: one sentence, nothing written, the library still works", () => {
      const refusals: Array<[string, Parameters<typeof kvCallWith>[2], string]> = [
        ["block_table entry out of range", (_, a) => void (a.table[3] = 9), "block_table[1][0] = 9 is outside the cache's 9 pages"],
        ["negative block_table entry", (_, a) => void (a.table[0] = -1), "block_table[0][0] = -1 is outside"],
        ["cache_seqlens + seqlen_new over capacity", (_, a) => void (a.seqlens[0] = 11), "sequence 0 holds 11 cached tokens plus 2 new ones, more than the cache's 12 per sequence"],
        ["an append without cache_seqlens", (p) => void (p.cacheSeqlens = -1n), "appending needs cache_seqlens"],
        ["rotary table too short", (p) => void (p.seqlenRotary = 6), "the rotary tables have 6 rows, but sequence 0 needs positions up to 6"],
      ];
      for (const [what, mutate, sentence] of refusals) {
        test(what, () => {
          const message = kvCallWith(backend, "bf16", mutate, 128);
          expect(message).toContain(sentence);
          expect(message).not.toContain("\n");
        });
      }
      test("a valid call after the refusals runs", () => expect(kvCallWith(backend, "bf16", () => {}, 128)).toBe("accepted"));
    });

    test("CLI: run --decode plans cuda with auto, bf16, names the kernel that ran, and passes --check", () => {
      const r = cli(["run", "--decode", "--cache-len", "8192", "--page-size", "16", "--append", "1", "--rotary", "--heads-q", "32",
        "--heads-kv", "8", "--head-dim", "128", "--batch", "2", "--check", "--json"]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      const doc = JSON.parse(r.stdout);
      expect([doc.backend, doc.dtype, doc.check.pass]).toEqual([name, "bf16", true]);
      expect(kvPaths.map((k) => k.name)).toContain(doc.kernel);
    });

    test("CLI: an out-of-range block_table on the device is one line and exit 2", () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-kvgpu-"));
      try {
        const file = path.join(dir, "bad.safetensors");
        const q = randomTensor("bf16", [1, 1, 8, 64], 1), kc = randomTensor("bf16", [4, 16, 2, 64], 2);
        writeStep(file, { q, k_cache: kc, v_cache: kc },
          { cache_seqlens: { shape: [1], data: Int32Array.of(20) }, block_table: { shape: [1, 2], data: Int32Array.of(3, 4) } });
        const r = cli(["run", "--input", file, "--backend", name]);
        expect([r.code, r.stdout]).toEqual([2, ""]);
        expect(r.stderr.split("\n")[0]).toContain("block_table[0][1] = 4 is outside the cache's 4 pages");
        expect(r.stderr.trimEnd().split("\n").length).toBeLessThanOrEqual(2);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
