// `flashattn run` on fp8 KV-cache steps (the CLI in a child process, on the real CPU library): a random --decode step
// quantised per tensor, a .safetensors step of F8_E4M3 tensors with descale tensors whose --out (o in bf16 / fp16, the
// updated fp8 caches) matches the fp64 reference, and the fp8 refusals answered with one line and exit 2.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseRunOptions } from "../commands/run.ts";
import { openSafetensors } from "../formats/safetensors.ts";
import { checkKvCacheAgainstReference } from "../lib/check.ts";
import { referenceKvCache } from "../lib/kvcache_reference.ts";
import { fromFloat32, randomTensor, type Tensor, toFloat32 } from "../lib/tensor.ts";
import { cli, runUsageError as usageError } from "./support/cli.ts";
import { bitsOf, writeStep } from "./support/kvcache.ts";

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-kv-fp8-"));
const tmp = (name: string) => path.join(scratch, name);
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A paged fp8 step: 2 sequences, pages of 8 (6 pages, shuffled), 2 new tokens each, descale per (sequence, kv head). */
function fp8Step(format: "fp8_e4m3" | "fp8_e5m2" = "fp8_e4m3") {
  const q = randomTensor(format, [2, 2, 4, 16], 1), kCache = randomTensor(format, [6, 8, 2, 16], 2);
  const vCache = randomTensor(format, [6, 8, 2, 16], 3);
  const kNew = randomTensor(format, [2, 2, 2, 16], 4), vNew = randomTensor(format, [2, 2, 2, 16], 5);
  const cacheSeqlens = Int32Array.from([7, 13]), blockTable = Int32Array.from([5, 0, 3, 2, 4, 1]);
  const descale = { q: Float32Array.of(0.25), k: Float32Array.of(0.5, 1, 0.125, 2), v: Float32Array.of(1.5) };
  const floats: Record<string, Tensor> = {
    q, k_cache: kCache, v_cache: vCache, k_new: kNew, v_new: vNew,
    q_descale: fromFloat32("fp32", [1], descale.q), k_descale: fromFloat32("fp32", [2, 2], descale.k),
    v_descale: fromFloat32("fp32", [], descale.v),
  };
  const ints = { cache_seqlens: { shape: [2], data: cacheSeqlens }, block_table: { shape: [2, 3], data: blockTable } };
  return { q, kCache, vCache, kNew, vNew, cacheSeqlens, blockTable, descale, floats, ints };
}

describe("--decode --dtype fp8", () => {
  test("flag parsing: fp8 decode steps, --out-dtype with them, and --rotary refused", () => {
    const plan = parseRunOptions({ decode: true, cacheLen: "64", dtype: "fp8_e4m3", outDtype: "fp16" });
    expect([plan.input.kind, plan.dtype, plan.outDtype]).toEqual(["decode", "fp8_e4m3", "fp16"]);
    expect(usageError({ decode: true, cacheLen: "64", outDtype: "fp16" })).toContain("--out-dtype sets the output dtype of fp8 inputs");
    expect(usageError({ decode: true, cacheLen: "64", rotary: true, dtype: "fp8_e5m2" })).toBe(
      "--rotary does not apply to fp8_e5m2 caches: rotary embedding is applied before quantising, so fp8 q and k_new come rotated");
  });

  test("a paged random step with an append, quantised per tensor, passes the fp8 check", () => {
    const r = cli(["run", "--decode", "--cache-len", "40", "--page-size", "16", "--append", "3", "--seqlen-q", "2", "--causal",
      "--heads-q", "4", "--heads-kv", "2", "--head-dim", "32", "--dtype", "fp8_e4m3", "--check", "--json", "--backend", "cpu"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect([doc.dtype, doc.check.pass, doc.kvcache]).toEqual(["fp8_e4m3", true, { cached: [40], appended: 3, pageSize: 16, rotary: "none" }]);
    // the fp8 rule: within twice a naive fp8 attention, which is not exact
    expect(doc.check.naiveError).toBeGreaterThan(0);
    expect(doc.check.limit).toBe(2 * doc.check.naiveError);
  });

  test("--out holds the updated fp8 caches with the per-tensor scales the random step was quantised with", () => {
    const out = tmp("decode_out.safetensors");
    const r = cli(["run", "--decode", "--cache-len", "20", "--append", "2", "--heads-q", "2", "--heads-kv", "1", "--head-dim", "16",
      "--dtype", "fp8_e5m2", "--out-dtype", "fp16", "--out", out, "--backend", "cpu"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    const file = openSafetensors(out);
    try {
      expect(["o", "k_cache", "k_descale"].map((n) => file.read(n).dtype)).toEqual(["fp16", "fp8_e5m2", "fp32"]);
      // per-tensor scale = max |x| / 57344 of standard normal values: far below 1, never 0
      const k = toFloat32(file.read("k_descale"));
      expect([k.length, k[0] > 0 && k[0] < 1e-3]).toEqual([1, true]);
    } finally {
      file.close();
    }
  });

  test("--rotary with fp8: one line, exit 2", () => {
    const r = cli(["run", "--decode", "--cache-len", "8", "--rotary", "--dtype", "fp8_e4m3"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr.split("\n")[0]).toContain("--rotary does not apply to fp8_e4m3 caches");
    expect(r.stderr.trimEnd().split("\n").length).toBeLessThanOrEqual(2);
  });
});

describe("--input step.safetensors with fp8 tensors", () => {
  for (const [format, outDtype] of [["fp8_e4m3", undefined], ["fp8_e5m2", "fp16"]] as const) {
    test(`${format}${outDtype ? ", --out-dtype fp16" : ""}: o and the updated fp8 caches in --out match the reference`, () => {
      const s = fp8Step(format);
      const input = tmp(`${format}.safetensors`), out = tmp(`${format}_out.safetensors`);
      writeStep(input, s.floats, s.ints);
      const r = cli(["run", "--input", input, "--causal", "--check", "--json", "--out", out, ...(outDtype ? ["--out-dtype", outDtype] : [])]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).check.pass).toBe(true);
      const opts = { cacheSeqlens: s.cacheSeqlens, blockTable: s.blockTable, kNew: s.kNew, vNew: s.vNew, causal: true, descale: s.descale, outDtype };
      const ref = referenceKvCache(s.q, s.kCache, s.vCache, opts);
      const file = openSafetensors(out);
      try {
        expect([...file.entries.keys()].sort()).toEqual(["k_cache", "k_descale", "lse", "o", "q_descale", "v_cache", "v_descale"]);
        // the scales travel with the caches: one factor as (1,), else (batch, heads_kv)
        expect([file.read("k_descale").shape, Array.from(toFloat32(file.read("k_descale")))]).toEqual([[2, 2], Array.from(s.descale.k)]);
        expect([file.read("v_descale").shape, Array.from(toFloat32(file.read("v_descale")))]).toEqual([[1], Array.from(s.descale.v)]);
        const o = file.read("o"), k = file.read("k_cache"), v = file.read("v_cache");
        expect([o.dtype, k.dtype, v.dtype]).toEqual([outDtype ?? "bf16", format, format]);
        // the append is a byte copy: the caches equal the reference's (the input with k_new / v_new in place)
        expect(bitsOf(k).equals(bitsOf(ref.kCache)) && bitsOf(v).equals(bitsOf(ref.vCache))).toBe(true);
        expect(bitsOf(k).equals(bitsOf(s.kCache))).toBe(false);
        const check = checkKvCacheAgainstReference(s.q, s.kCache, s.vCache, opts,
          { out: o, lse: file.read("lse").data as Float32Array, kCache: k, vCache: v });
        expect([check.pass, check.naiveError! > 0]).toEqual([true, true]);
      } finally {
        file.close();
      }
    });
  }

  test("bad fp8 steps: one line, exit 2", () => {
    const s = fp8Step();
    const steps: Array<[string, Record<string, Tensor>, string, string[]]> = [
      ["rotary.safetensors", { ...s.floats, rotary_cos: randomTensor("fp8_e4m3", [32, 4], 6), rotary_sin: randomTensor("fp8_e4m3", [32, 4], 7) },
        "rotary embedding is not applied to fp8_e4m3 tensors: rotate q and k_new before quantising them", []],
      ["mixed.safetensors", { ...s.floats, v_cache: fromFloat32("bf16", s.vCache.shape, new Float32Array(6 * 8 * 2 * 16)) },
        "v_cache is bf16 but q is fp8_e4m3: every tensor of a KV-cache call shares one dtype", []],
      ["negative.safetensors", { ...s.floats, k_descale: fromFloat32("fp32", [2, 2], [1, 1, -1, 1]) },
        "k_descale holds -1: descale factors must be finite and positive", []],
      ["shape.safetensors", { ...s.floats, v_descale: fromFloat32("fp32", [3], [1, 1, 1]) },
        "v_descale has shape (3,); it takes a scalar or (batch, heads_kv) = (2, 2)", []],
      ["convert.safetensors", s.floats, "holds fp8_e4m3 tensors, which run as they are: --dtype bf16 cannot convert them", ["--dtype", "bf16"]],
    ];
    for (const [name, floats, message, flags] of steps) {
      writeStep(tmp(name), floats, s.ints);
      const r = cli(["run", "--input", tmp(name), ...flags]);
      expect([name, r.code, r.stdout]).toEqual([name, 2, ""]);
      expect([name, r.stderr.split("\n")[0]]).toEqual([name, expect.stringContaining(message)]);
      expect(r.stderr.trimEnd().split("\n").length).toBeLessThanOrEqual(2);
    }
  });
});
