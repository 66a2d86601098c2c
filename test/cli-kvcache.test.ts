// `flashattn run` on KV-cache steps: flag parsing (--decode and its flags, one USAGE sentence each), a step read from
// a .safetensors file with I32 index tensors (the CLI in a child process, on the real CPU library), its --out file
// (o, lse, the updated caches) against the fp64 reference, and bad files answered with one line and exit 2.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseRunOptions } from "../commands/run.ts";
import { openSafetensors } from "../formats/safetensors.ts";
import { referenceKvCache } from "../lib/kvcache_reference.ts";
import { relativeError } from "../lib/reference.ts";
import { fromFloat32, randomTensor, type Tensor, toFloat32 } from "../lib/tensor.ts";
import { cli, runUsageError as usageError } from "./support/cli.ts";

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-kv-"));
const tmp = (name: string) => path.join(scratch, name);
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A .safetensors file of float tensors and I32 arrays, written by hand (flashattn itself never writes I32). */
function writeStep(file: string, floats: Record<string, Tensor>, ints: Record<string, { shape: number[]; data: Int32Array }>) {
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

describe("--decode flags", () => {
  test("a decode step: seqlen_q 1 by default, the cache length, pages, append, rotary", () => {
    const plan = parseRunOptions({ decode: true, cacheLen: "4096", pageSize: "16", append: "1", rotary: true, rotaryInterleaved: true, headsQ: "32", headsKv: "8", headDim: "128" });
    expect(plan.input).toEqual({
      kind: "decode", seed: 0, pageSize: 16, append: 1, rotary: true,
      shape: { batch: 1, seqlenQ: 1, seqlenK: 4096, headsQ: 32, headsKv: 8, headDim: 128 },
    });
    expect(plan.rotaryInterleaved).toBe(true);
  });
  test("refusals", () => {
    expect(usageError({ cacheLen: "5" })).toContain("--cache-len describes a random KV-cache step and needs --decode");
    expect(usageError({ rotary: true })).toContain("--rotary describes a random KV-cache step and needs --decode");
    expect(usageError({ decode: true })).toContain("--decode needs --cache-len N");
    expect(usageError({ decode: true, cacheLen: "-1" })).toContain("--cache-len must be a whole number ≥ 0");
    expect(usageError({ decode: true, cacheLen: "8", pageSize: "0" })).toContain("--page-size must be a whole number ≥ 1");
    expect(usageError({ decode: true, cacheLen: "8", seqlenK: "9" })).toContain("--decode makes a random KV-cache step");
    expect(usageError({ decode: true, cacheLen: "8", out: "o.npy" })).toContain("one .safetensors --out");
    expect(usageError({ decode: true, cacheLen: "8", rotaryInterleaved: true })).toContain("--rotary-interleaved applies to rotary tables");
    expect(usageError({ decode: true, cacheLen: "8", headsQ: "3", headsKv: "2" })).toContain("heads_q (3) must be a multiple of heads_kv (2)");
  });
});

describe("flashattn run on KV-cache steps", () => {
  test("--decode --page-size --append --rotary --check passes and reports the cache", () => {
    const r = cli(["run", "--decode", "--cache-len", "70", "--page-size", "16", "--append", "3", "--rotary", "--rotary-interleaved",
      "--seqlen-q", "3", "--causal", "--heads-q", "4", "--heads-kv", "2", "--head-dim", "32", "--check", "--json"]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.ok).toBe(true);
    expect(doc.check.pass).toBe(true);
    expect(doc.kvcache).toEqual({ cached: [70], appended: 3, pageSize: 16, rotary: "gpt-j" });
    expect(doc.shape.seqlenK).toBe(73);
  });

  test("--input step.safetensors: o, lse and the updated caches in --out match the reference", () => {
    const q = randomTensor("fp32", [2, 2, 4, 16], 1), kCache = randomTensor("fp32", [6, 8, 2, 16], 2);
    const vCache = randomTensor("fp32", [6, 8, 2, 16], 3);
    const kNew = randomTensor("fp32", [2, 2, 2, 16], 4), vNew = randomTensor("fp32", [2, 2, 2, 16], 5);
    const cos = fromFloat32("fp32", [24, 4], Array.from({ length: 96 }, (_, i) => Math.cos(i / 7)));
    const sin = fromFloat32("fp32", [24, 4], Array.from({ length: 96 }, (_, i) => Math.sin(i / 7)));
    const cacheSeqlens = Int32Array.from([9, 14]), blockTable = Int32Array.from([5, 0, 3, 2, 4, 1]);
    const input = tmp("step.safetensors"), out = tmp("step_out.safetensors");
    writeStep(input, { q, k_cache: kCache, v_cache: vCache, k_new: kNew, v_new: vNew, rotary_cos: cos, rotary_sin: sin },
      { cache_seqlens: { shape: [2], data: cacheSeqlens }, block_table: { shape: [2, 3], data: blockTable } });
    const r = cli(["run", "--input", input, "--causal", "--check", "--out", out]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("9..14 cached + 2 appended, pages of 8, rotary gpt-neox");
    const ref = referenceKvCache(q, kCache, vCache, { cacheSeqlens, blockTable, kNew, vNew, rotaryCos: cos, rotarySin: sin, causal: true });
    const file = openSafetensors(out);
    try {
      expect([...file.entries.keys()].sort()).toEqual(["k_cache", "lse", "o", "v_cache"]);
      expect(relativeError(toFloat32(file.read("o")), ref.out)).toBeLessThan(1e-5);
      expect(relativeError(toFloat32(file.read("lse")), ref.lse)).toBeLessThan(1e-5);
      expect(relativeError(toFloat32(file.read("k_cache")), toFloat32(ref.kCache))).toBeLessThan(1e-6);
      expect(Buffer.from(file.read("v_cache").data.buffer).equals(Buffer.from(ref.vCache.data.buffer))).toBe(true);
    } finally {
      file.close();
    }
  });

  test("bad steps: one line, exit 2", () => {
    const q = randomTensor("fp32", [1, 1, 2, 8], 1), kc = randomTensor("fp32", [1, 4, 2, 8], 2);
    const noLengths = tmp("no_lengths.safetensors");
    writeStep(noLengths, { q, k_cache: kc, v_cache: kc }, {});
    const overfull = tmp("overfull.safetensors");
    writeStep(overfull, { q, k_cache: kc, v_cache: kc }, { cache_seqlens: { shape: [1], data: Int32Array.from([5]) } });
    const floatLengths = tmp("float_lengths.safetensors");
    writeStep(floatLengths, { q, k_cache: kc, v_cache: kc, cache_seqlens: fromFloat32("fp32", [1], [3]) }, {});
    for (const [file, message] of [
      [noLengths, "holds k_cache but no cache_seqlens"],
      [overfull, "sequence 0 holds 5 cached tokens plus 0 new ones, more than the cache's 4 per sequence"],
      [floatLengths, "tensor 'cache_seqlens' has dtype F32, but it holds indices: I32 is read"],
    ]) {
      const r = cli(["run", "--input", file]);
      expect([file, r.code]).toEqual([file, 2]);
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toContain(message);
      expect(r.stderr.trimEnd().split("\n").length).toBeLessThanOrEqual(2);
    }
    const named = cli(["run", "--input", overfull, "--q-name", "query"]);
    expect(named.code).toBe(2);
    expect(named.stderr).toContain("is a KV-cache step (it holds k_cache), whose tensors have fixed names");
  });
});
