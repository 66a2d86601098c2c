// FP8 attention on the CPU backend and in the TypeScript library: the two fp8 formats decoded (all 256 bit patterns,
// in TS and in the native loads), P rounded to E4M3 before P·V as fp8 tensor cores need, the forward against the fp64
// reference of the dequantised inputs under docs/DESIGN.md's fp8 rule (no worse than twice a naive fp8 attention), the
// descale factors per tensor and per (sequence, kv head), and the refusals. Inputs are fresh random numbers on every
// run (the seed is in the failure message). The GPU fp8 tests are in test/gpu_fp8.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { attention, type AttentionOptions, attentionBackward, planAttention } from "../lib/attention.ts";
import { openBackend } from "../lib/backend.ts";
import { checkAgainstReference } from "../lib/check.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { paramsFor } from "../lib/select.ts";
import {
  floatToFp8,
  fp8ToFloat,
  fromFloat32,
  quantizeFp8,
  randomValues,
  tensor,
  toFloat32,
} from "../lib/tensor.ts";
import type { Fp8DType } from "../lib/vocabulary.ts";
import { BENCH_SCHEMA, type BenchReport, entryComparisons, type Measurement } from "../bench/results.ts";
import { comparisonCell, renderTable } from "../bench/report/table.ts";
import { applyOverrides, type BenchCase, expandSweep, presets } from "../bench/sweep.ts";
import { encodeNpy, readNpy } from "../formats/npy.ts";
import { encodeSafetensors, readSafetensors } from "../formats/safetensors.ts";
import { cli, runUsageError } from "./support/cli.ts";
import { checkFp8Case, type Fp8Case, fp8LseExcess, quantised } from "./support/fp8.ts";
import { freshSeed } from "./support/grid.ts";

const cpu: AttentionOptions = { backend: "cpu", poison: true };
const formats: Fp8DType[] = ["fp8_e4m3", "fp8_e5m2"];

/** An fp8 pattern decoded by building the float32 bit pattern (a second, independent decoding). */
function decodeByBits(format: Fp8DType, bits: number): number {
  const [mantissaBits, bias] = format === "fp8_e4m3" ? [3, 7] : [2, 15];
  const sign = bits >> 7, exponent = (bits & 0x7f) >> mantissaBits, mantissa = bits & ((1 << mantissaBits) - 1);
  const allOnes = (1 << (7 - mantissaBits)) - 1;
  if (format === "fp8_e4m3" && exponent === allOnes && mantissa === 7) return NaN;
  if (format === "fp8_e5m2" && exponent === allOnes) return mantissa ? NaN : sign ? -Infinity : Infinity;
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  if (exponent === 0) {
    // subnormal: mantissa / 2^mantissaBits · 2^(1 - bias), built as the float32 (mantissa · 2^(1 - bias - m))
    u[0] = mantissa === 0 ? 0 : ((127 + 1 - bias - mantissaBits) << 23);
    f[0] *= mantissa;
  } else {
    u[0] = ((exponent - bias + 127) << 23) | (mantissa << (23 - mantissaBits));
  }
  return sign ? -f[0] : f[0];
}

describe("fp8 formats in TypeScript", () => {
  for (const format of formats) {
    test(`${format}: all 256 patterns decode like the bit-level decoding and round-trip`, () => {
      for (let bits = 0; bits < 256; bits++) {
        const value = fp8ToFloat(format, bits), expected = decodeByBits(format, bits);
        if (Number.isNaN(expected)) {
          expect(value).toBeNaN();
          continue;
        }
        expect(value).toBe(expected);
        // every value encodes back to its own bits (+-0 and +-inf included)
        if (Number.isFinite(value)) expect(floatToFp8(format, value)).toBe(bits);
      }
    });
  }

  test("landmarks of the two formats", () => {
    expect(fp8ToFloat("fp8_e4m3", 0x7e)).toBe(448);
    expect(fp8ToFloat("fp8_e4m3", 0x08)).toBe(2 ** -6);
    expect(fp8ToFloat("fp8_e4m3", 0x01)).toBe(2 ** -9);
    expect(fp8ToFloat("fp8_e4m3", 0x7f)).toBeNaN();
    expect(fp8ToFloat("fp8_e4m3", 0x78)).toBe(256); // S.1111.000 is a number in E4M3 (no infinities)
    expect(fp8ToFloat("fp8_e5m2", 0x7b)).toBe(57344);
    expect(fp8ToFloat("fp8_e5m2", 0x7c)).toBe(Infinity);
    expect(fp8ToFloat("fp8_e5m2", 0x01)).toBe(2 ** -16);
  });

  test("rounding: nearest, ties to even, subnormals, overflow to NaN (E4M3) or inf (E5M2)", () => {
    // E4M3 between 1 and 2 the step is 1/8: 1.0625 is a tie between 1 (even) and 1.125
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 1.0625))).toBe(1);
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 1.1875))).toBe(1.25); // tie: 1.125 (odd) vs 1.25 (even)
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 1.07))).toBe(1.125);
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 3 * 2 ** -11))).toBe(2 ** -9); // 1.5 subnormal steps -> 2
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 2 ** -11))).toBe(0); // half a step, tie to 0
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 463))).toBe(448);
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 464))).toBe(448); // tie between 448 (even) and 480 (NaN)
    expect(fp8ToFloat("fp8_e4m3", floatToFp8("fp8_e4m3", 465))).toBeNaN();
    expect(fp8ToFloat("fp8_e5m2", floatToFp8("fp8_e5m2", 1e6))).toBe(Infinity);
    expect(fp8ToFloat("fp8_e5m2", floatToFp8("fp8_e5m2", -1e6))).toBe(-Infinity);
  });

  test("per-tensor quantisation maps the largest magnitude to the format's largest value", () => {
    const values = Float32Array.of(-3, 0.5, 1.5, 0);
    const { tensor: t, scale } = quantizeFp8("fp8_e4m3", [4], values);
    expect(scale).toBe(Math.fround(3 / 448));
    expect(toFloat32(t)[0]).toBe(-448);
    const back = Array.from(toFloat32(t), (x) => x * scale);
    back.forEach((x, i) => expect(Math.abs(x - values[i])).toBeLessThanOrEqual(0.07 * Math.abs(values[i]) + 1e-12));
  });
});

describe("the CPU backend's fp8 loads", () => {
  for (const format of formats) {
    test(`${format}: every bit pattern of V comes out of O exactly, times its descale`, async () => {
      // One key: P = 1, so O = V · v_descale, written in fp16, which holds every fp8 value (halved) exactly.
      const v = tensor(format, [1, 1, 1, 256], Uint8Array.from({ length: 256 }, (_, i) => i));
      const q = tensor(format, [1, 1, 1, 256]), k = tensor(format, [1, 1, 1, 256]);
      const r = await attention(q, k, v, { ...cpu, outDtype: "fp16", descale: { v: Float32Array.of(0.5) } });
      expect(r.out.dtype).toBe("fp16");
      const o = toFloat32(r.out);
      for (let bits = 0; bits < 256; bits++) {
        const expected = decodeByBits(format, bits) / 2;
        if (Number.isNaN(expected)) expect(o[bits]).toBeNaN();
        else expect(o[bits] + 0).toBe(expected + 0); // -0 comes out as 0: P·V adds to a zero accumulator
      }
    });
  }

  test("P is rounded to E4M3 before P·V, and the row sum is not", async () => {
    // Two keys with scores 0 and -0.5: P = (1, e^-0.5 = 0.6065), rounded to (1, 0.625); V rows pick the two columns,
    // so O = (1, 0.625) / (1 + 0.6065): 0.3890 in column 1, where unrounded P would give 0.3775.
    const bits = (x: number) => floatToFp8("fp8_e4m3", x);
    const q = tensor("fp8_e4m3", [1, 1, 1, 8], Uint8Array.of(bits(1), 0, 0, 0, 0, 0, 0, 0));
    const k = tensor("fp8_e4m3", [1, 2, 1, 8], Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, bits(-0.5), 0, 0, 0, 0, 0, 0, 0));
    const v = tensor("fp8_e4m3", [1, 2, 1, 8], Uint8Array.of(bits(1), 0, 0, 0, 0, 0, 0, 0, 0, bits(1), 0, 0, 0, 0, 0, 0));
    const r = await attention(q, k, v, { ...cpu, scale: 1 });
    const o = toFloat32(r.out), sum = 1 + Math.exp(-0.5);
    expect(o[0]).toBeCloseTo(1 / sum, 2);
    expect(Math.abs(o[1] - 0.625 / sum)).toBeLessThan(2e-3);
    expect(Math.abs(o[1] - Math.exp(-0.5) / sum)).toBeGreaterThan(8e-3);
    expect(r.lse[0]).toBeCloseTo(Math.log(sum), 6);
  });
});

const cases: Fp8Case[] = [
  { name: "e4m3, plain, sq ≠ sk", b: 2, sq: 77, sk: 203, hq: 2, hkv: 2, d: 64 },
  { name: "e4m3, causal, GQA 4:1, fp16 out", b: 1, sq: 150, sk: 150, hq: 4, hkv: 1, d: 128, opts: { causal: true, outDtype: "fp16" } },
  { name: "e4m3, window + softcap", b: 1, sq: 120, sk: 200, hq: 2, hkv: 1, d: 32, opts: { window: [40, 8], softcap: 15 } },
  { name: "e4m3, per-(batch, kv head) descale, split-KV request", b: 3, sq: 33, sk: 300, hq: 4, hkv: 2, d: 64, perHead: true, opts: { numSplits: 4 } },
  { name: "e4m3, varlen, causal", b: 3, sq: 0, sk: 0, hq: 2, hkv: 1, d: 64, varlen: { q: [40, 1, 90], k: [40, 130, 90] }, opts: { causal: true } },
  { name: "e4m3, head_dim 256, ALiBi per head", b: 1, sq: 64, sk: 96, hq: 2, hkv: 2, d: 256, opts: { alibiSlopes: Float32Array.of(0.25, 0.0625) } },
  { name: "e4m3, naive algorithm", b: 1, sq: 70, sk: 90, hq: 2, hkv: 1, d: 64, opts: { algorithm: "naive", causal: true } },
  { name: "e5m2, causal, GQA 2:1", format: "fp8_e5m2", b: 2, sq: 64, sk: 128, hq: 4, hkv: 2, d: 64, opts: { causal: true } },
];

describe("CPU fp8 forward vs the fp64 reference of the dequantised inputs (no worse than 2× a naive fp8 attention)", () => {
  for (const c of cases) {
    test(c.name, async () => {
      const { result } = await checkFp8Case(c, cpu);
      expect(result.kernel).toContain(c.opts?.algorithm === "naive" ? "naive" : "flash");
    });
  }

  test("against bf16 on the same real values: fp8 costs a few percent, not more", async () => {
    const seed = freshSeed();
    const p = quantised("fp8_e4m3", [1, 128, 2, 64], [1, 128, 2, 64], seed);
    const r = await attention(p.q, p.k, p.v, { ...cpu, causal: true, descale: p.descale });
    const bf16 = await attention(p.bf16[0], p.bf16[1], p.bf16[2], { ...cpu, causal: true });
    const check = checkAgainstReference(p.q, p.k, p.v, { causal: true, descale: p.descale }, r.out, r.lse, bf16.out);
    expect(check.bf16Error, `seed ${seed}`).toBeGreaterThan(check.relativeError / 10);
    expect(check.bf16Error, `seed ${seed}`).toBeLessThan(0.15);
  });

  test("a result computed without P rounding or without the descale fails the rule", async () => {
    const seed = freshSeed();
    const p = quantised("fp8_e4m3", [1, 64, 2, 64], [1, 256, 2, 64], seed);
    const semantics = { descale: p.descale };
    const r = await attention(p.q, p.k, p.v, { ...cpu, ...semantics });
    // the same inputs with a forgotten v_descale: every output is off by the factor
    const wrong = await attention(p.q, p.k, p.v, { ...cpu, descale: { q: p.descale.q, k: p.descale.k } });
    expect(checkAgainstReference(p.q, p.k, p.v, semantics, wrong.out, wrong.lse).pass).toBe(false);
    expect(checkAgainstReference(p.q, p.k, p.v, semantics, r.out, r.lse).pass).toBe(true);
  });

  test("the LSE bound of fp8 tensor cores fails a k_descale off by 2 and a row without keys that is not +inf", async () => {
    const seed = freshSeed();
    // causal with 64 queries against 40 keys: the first 24 rows see no key
    const p = quantised("fp8_e4m3", [1, 64, 2, 64], [1, 40, 2, 64], seed);
    const semantics = { causal: true, descale: p.descale };
    const r = await attention(p.q, p.k, p.v, { ...cpu, ...semantics });
    expect(fp8LseExcess(p.q, p.k, p.v, semantics, r.lse), `seed ${seed}`).toBeLessThanOrEqual(1);
    const doubledK = { ...p.descale, k: Float32Array.of(2 * p.descale.k[0]) };
    const wrong = await attention(p.q, p.k, p.v, { ...cpu, causal: true, descale: doubledK });
    expect(fp8LseExcess(p.q, p.k, p.v, semantics, wrong.lse), `seed ${seed}`).toBeGreaterThan(1);
    const finiteWhereNoKey = Float32Array.from(r.lse);
    finiteWhereNoKey[0] = 0; // (batch 0, head 0, query 0): before the causal diagonal
    expect(fp8LseExcess(p.q, p.k, p.v, semantics, finiteWhereNoKey)).toBe(Infinity);
  });
});

describe("fp8 refusals", () => {
  const q = tensor("fp8_e4m3", [1, 4, 2, 16]), k = tensor("fp8_e4m3", [1, 4, 1, 16]);
  const refused = (f: () => unknown, code: FlashAttnError["code"], message: RegExp) => {
    let error: unknown;
    try {
      f();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe(code);
    expect((error as Error).message).toMatch(message);
  };

  test("descale factors of the wrong count, not finite, not positive, or for non-fp8 inputs", () => {
    refused(() => planAttention(q, k, k, { backend: "cpu", descale: { k: new Float32Array(3) } }), "BAD_INPUT",
      /k_descale has 3 values; it takes 1 \(per tensor\) or batch × heads_kv = 1/);
    refused(() => planAttention(q, k, k, { backend: "cpu", descale: { q: Float32Array.of(NaN) } }), "BAD_INPUT",
      /q_descale\[0\] is NaN: descale factors must be finite positive/);
    refused(() => planAttention(q, k, k, { backend: "cpu", descale: { v: Float32Array.of(-1) } }), "BAD_INPUT", /v_descale\[0\] is -1/);
    const h = tensor("bf16", [1, 4, 2, 16]), hk = tensor("bf16", [1, 4, 1, 16]);
    refused(() => planAttention(h, hk, hk, { backend: "cpu", descale: { q: Float32Array.of(1) } }), "BAD_INPUT",
      /descale factors apply to fp8 inputs only/);
  });

  test("output dtypes: fp8 writes fp16 or bf16; other inputs write their own dtype", () => {
    refused(() => planAttention(q, k, k, { backend: "cpu", outDtype: "fp32" }), "BAD_INPUT", /writes its output in fp16 or bf16, not fp32/);
    const h = tensor("fp16", [1, 4, 2, 16]), hk = tensor("fp16", [1, 4, 1, 16]);
    refused(() => planAttention(h, hk, hk, { backend: "cpu", outDtype: "bf16" }), "BAD_INPUT", /only fp8 inputs take another output dtype/);
  });

  test("mixed dtypes and a backward pass are refused", () => {
    refused(() => planAttention(q, tensor("fp8_e5m2", [1, 4, 1, 16]), k, { backend: "cpu" }), "BAD_INPUT", /must share a dtype/);
    refused(() => planAttention(q, k, k, { backend: "cpu" }, "bwd"), "UNSUPPORTED", /fp8_e4m3 attention is forward only/);
    const o = tensor("fp8_e4m3", q.shape);
    expect(attentionBackward(o, q, k, k, o, new Float32Array(8), { backend: "cpu" })).rejects.toThrow(/forward only/);
  });

  test("the library itself refuses what the struct shows and, on the CPU, bad descale values", () => {
    const { backend } = openBackend("cpu", { env: {} });
    const plan = planAttention(q, k, k, { backend: "cpu" });
    const placeholder = 0x100000n;
    const base = paramsFor(plan.request, { q: placeholder, k: placeholder, v: placeholder, o: placeholder, lse: 0n });
    const reasons = (p: typeof base, direction: "fwd" | "bwd" = "fwd") => {
      const r = backend!.plan(p, direction);
      return r.ok ? [] : r.reasons;
    };
    expect(backend!.plan(base, "fwd")).toMatchObject({ ok: true });
    expect(reasons({ ...base, dout: base.q, dq: base.q, dk: base.k, dv: base.k, lse: placeholder }, "bwd").join())
      .toContain("fp8_e4m3 is forward only");
    expect(backend!.plan({ ...base, outDtype: "fp32" }, "fwd")).toMatchObject({ ok: true }); // code 0: the default, bf16
    expect(backend!.plan({ ...base, outDtype: "fp16" }, "fwd")).toMatchObject({ ok: true });
    expect(reasons({ ...base, outDtype: "fp8_e5m2" }).join()).toContain("is not one an fp8 forward writes");
    const bf16 = { ...base, dtype: "bf16" as const };
    expect(reasons({ ...bf16, qDescale: { data: placeholder, batchStride: 0, headStride: 0 } }).join())
      .toContain("q_descale is given but dtype is bf16");
    expect(reasons({ ...base, kDescale: { data: placeholder, batchStride: -1, headStride: 0 } }).join()).toContain("negative stride");
    expect(reasons({ ...base, vDescale: { data: 0n, batchStride: 2, headStride: 0 } }).join()).toContain("absent descale has zero strides");

    // Values are read on the CPU (host memory): a NaN factor in a real buffer is refused by fa_forward.
    const buffers = [q, k, k].map((t) => backend!.upload(t.data));
    const o = backend!.alloc(q.data.length * 2), factor = backend!.upload(Float32Array.of(Infinity));
    try {
      const p = {
        ...paramsFor(plan.request, { q: buffers[0].address, k: buffers[1].address, v: buffers[2].address, o: o.address, lse: 0n }),
        kDescale: { data: factor.address, batchStride: 0, headStride: 0 },
      };
      expect(() => backend!.forward(p)).toThrow(/k_descale\[0, 0\] is inf: descale factors must be finite positive normal floats/);
    } finally {
      for (const b of [...buffers, o, factor]) backend!.free(b);
    }
  });
});

describe("fp8 files", () => {
  let dir = "";
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-fp8-"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, chunks: Uint8Array[]) => {
    const at = path.join(dir, name);
    fs.writeFileSync(at, Buffer.concat(chunks));
    return at;
  };
  const every = (format: Fp8DType) => tensor(format, [4, 64], Uint8Array.from({ length: 256 }, (_, i) => i));

  for (const format of formats) {
    test(`${format}: .safetensors and .npy ('|u1') round trips keep every bit pattern`, () => {
      const t = every(format);
      const st = file(`${format}.safetensors`, encodeSafetensors({ x: t }));
      const back = readSafetensors(st).tensors.get("x")!;
      expect(back.dtype).toBe(format);
      expect(Array.from(back.data)).toEqual(Array.from(t.data));
      const bytes = fs.readFileSync(st);
      const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString("utf8")).x;
      expect(header.dtype).toBe(format === "fp8_e4m3" ? "F8_E4M3" : "F8_E5M2");

      const npy = file(`${format}.npy`, encodeNpy(t));
      expect(fs.readFileSync(npy).subarray(0, 80).toString("latin1")).toContain("'descr': '|u1'");
      const read = readNpy(npy, { fp8: format });
      expect(read.dtype).toBe(format);
      expect(Array.from(read.data)).toEqual(Array.from(t.data));
    });
  }

  test("a '|u1' .npy is fp8 only when the format is named", () => {
    const npy = file("bits.npy", encodeNpy(every("fp8_e4m3")));
    expect(() => readNpy(npy)).toThrow(/holds uint8 data \('\|u1'\), which is fp8 only if you say which format/);
  });

  // An fp8 problem as a serving stack stores it: fp8 q, k, v with (batch, heads_kv) descale factors.
  function fp8Input(name: string, extra: Record<string, ReturnType<typeof tensor>> = {}) {
    const seed = freshSeed();
    const p = quantised("fp8_e4m3", [2, 40, 4, 32], [2, 60, 2, 32], seed);
    const perHead = (s: Float32Array) => tensor("fp32", [2, 2], Float32Array.from([1, 2, 0.5, 1], (x) => x * s[0]));
    return file(name, encodeSafetensors({
      q: p.q, k: p.k, v: p.v, q_descale: perHead(p.descale.q), k_descale: perHead(p.descale.k),
      v_descale: tensor("fp32", [], Float32Array.of(p.descale.v[0])), ...extra,
    }));
  }

  test("run --input with F8_E4M3 tensors and descale tensors: checked on the CPU, o written in bf16", () => {
    const input = fp8Input("problem.safetensors");
    const out = path.join(dir, "o.safetensors");
    const r = cli(["run", "--input", input, "--causal", "--check", "--backend", "cpu", "--out", out, "--lse", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.dtype).toBe("fp8_e4m3");
    expect(doc.check.pass).toBe(true);
    expect(doc.check.relativeError).toBeLessThanOrEqual(2 * doc.check.naiveError);
    expect(doc.check.bf16Error).toBeUndefined(); // the real values are not known
    const written = readSafetensors(out).tensors;
    expect(written.get("out")!.dtype).toBe("bf16");
    expect(written.get("out")!.shape).toEqual([2, 40, 4, 32]);
  });

  test("run --q/--k/--v of '|u1' .npy with --dtype fp8_e4m3 and a JSON --descale", () => {
    const p = quantised("fp8_e4m3", [1, 30, 2, 16], [1, 50, 2, 16], freshSeed());
    const [q, k, v] = (["q", "k", "v"] as const).map((n) => file(`${n}.npy`, encodeNpy(p[n])));
    const descale = path.join(dir, "descale.json");
    fs.writeFileSync(descale, JSON.stringify({ q_descale: p.descale.q[0], k_descale: [[p.descale.k[0], p.descale.k[0]]], v_descale: [p.descale.v[0]] }));
    const r = cli(["run", "--q", q, "--k", k, "--v", v, "--dtype", "fp8_e4m3", "--descale", descale, "--check", "--backend", "cpu", "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).check.pass).toBe(true);
    // without the factors the values are the raw fp8 numbers: a different problem, still checked against itself
    const bare = cli(["run", "--q", q, "--k", k, "--v", v, "--dtype", "fp8_e4m3", "--check", "--backend", "cpu", "--json"]);
    expect(bare.code).toBe(0);
  });

  test("float inputs with --dtype fp8_e4m3 are quantised per tensor, and compared with bf16", () => {
    const real = ["q", "k", "v"].map((_, i) => fromFloat32("fp32", [1, 64, 2, 32], randomValues([1, 64, 2, 32], freshSeed() + i)));
    const input = file("real.safetensors", encodeSafetensors({ q: real[0], k: real[1], v: real[2] }));
    const r = cli(["run", "--input", input, "--dtype", "fp8_e4m3", "--check", "--backend", "cpu", "--json"]);
    expect(r.code).toBe(0);
    const check = JSON.parse(r.stdout).check;
    expect(check.pass).toBe(true);
    expect(check.bf16Error).toBeGreaterThan(0);
    expect(check.bf16Error).toBeLessThan(0.15);
  });

  test("bad fp8 input: one line, exit 2", () => {
    const fails = (args: string[], message: RegExp) => {
      const r = cli(["run", "--backend", "cpu", ...args]);
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split("\n").filter((l) => !l.startsWith("  fix:") && !l.startsWith("fix:")).length).toBe(1);
      expect(r.code).toBe(2);
    };
    fails(["--input", fp8Input("wrong-shape.safetensors", { k_descale: tensor("fp32", [2, 3], new Float32Array(6).fill(1)) })],
      /k_descale has shape \(2, 3\); it takes a scalar or \(batch, heads_kv\) = \(2, 2\)/);
    fails(["--input", fp8Input("nan.safetensors", { v_descale: tensor("fp32", [1], Float32Array.of(NaN)) })],
      /v_descale holds NaN: descale factors must be finite and positive/);
    const mixed = file("mixed.safetensors", encodeSafetensors({
      q: tensor("fp8_e4m3", [1, 4, 2, 16]), k: tensor("bf16", [1, 4, 2, 16]), v: tensor("fp8_e4m3", [1, 4, 2, 16]),
    }));
    fails(["--input", mixed], /q, k and v must share one dtype, got fp8_e4m3, bf16, fp8_e4m3/);
    fails(["--input", fp8Input("convert.safetensors"), "--dtype", "fp16"], /holds fp8_e4m3 tensors, which run as they are/);
    const badShape = path.join(dir, "bad.json"), good = path.join(dir, "good.json");
    fs.writeFileSync(badShape, JSON.stringify({ q_descale: [[1, 2, 3]] }));
    fs.writeFileSync(good, JSON.stringify({ q_descale: 1 }));
    const plain = file("plain.safetensors", encodeSafetensors({ q: tensor("fp8_e4m3", [2, 4, 2, 16]), k: tensor("fp8_e4m3", [2, 4, 2, 16]), v: tensor("fp8_e4m3", [2, 4, 2, 16]) }));
    fails(["--input", plain, "--descale", badShape], /bad.json: q_descale has shape \(1, 3\); it takes a scalar or \(batch, heads_kv\) = \(2, 2\)/);
    fails(["--input", fp8Input("twice.safetensors"), "--descale", good], /descale factors are given twice/);
  });

  test("flag refusals", () => {
    expect(runUsageError({ shape: "1,8,8,2,2,16", dtype: "fp8_e4m3", descale: "d.json" })).toMatch(/a random fp8 problem is quantised/);
    expect(runUsageError({ shape: "1,8,8,2,2,16", dtype: "bf16", descale: "d.json" })).toMatch(/--descale gives the descale factors of fp8/);
    expect(runUsageError({ decode: true, cacheLen: "16", dtype: "fp8_e4m3", rotary: true })).toMatch(/--rotary does not apply to fp8_e4m3 caches/);
    expect(runUsageError({ dtype: "fp8" })).toMatch(/choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2/);
    expect(runUsageError({ shape: "1,8,8,2,2,16", dtype: "bf16", outDtype: "fp16" })).toMatch(/--out-dtype sets the output dtype of fp8 inputs/);
    expect(runUsageError({ shape: "1,8,8,2,2,16", dtype: "fp8_e4m3", outDtype: "fp32" })).toMatch(/--out-dtype takes fp16 or bf16, got 'fp32'/);
  });

  test("--out-dtype fp16: o written in fp16, checked under the same rule", () => {
    const out = path.join(dir, "o16.npy");
    const r = cli(["run", "--shape", "1,64,64,2,2,32", "--dtype", "fp8_e4m3", "--out-dtype", "fp16", "--causal", "--check",
      "--backend", "cpu", "--out", out, "--json"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(JSON.parse(r.stdout).check.pass).toBe(true);
    const o = readNpy(out);
    expect([o.dtype, o.shape]).toEqual(["fp16", [1, 64, 2, 32]]);
  });
});

describe("bench --dtype fp8", () => {
  test("every fp8 forward case is followed by its bf16 twin (our bf16 forward on the same shape); backward has none", () => {
    const cases = expandSweep(applyOverrides(presets.quick, { dtype: "fp8_e4m3" }), { gpu: true });
    const shape = ({ id: _, dtype: __, ...rest }: BenchCase) => rest;
    const fwd = cases.filter((c) => c.dtype === "fp8_e4m3" && c.direction === "fwd");
    expect(fwd.length).toBe(4);
    for (const c of fwd) {
      const twin = cases[cases.indexOf(c) + 1];
      expect(twin.dtype).toBe("bf16");
      expect(shape(twin)).toEqual(shape(c));
    }
    expect(cases.filter((c) => c.dtype === "bf16").length).toBe(4);
    expect(cases.filter((c) => c.direction === "bwd").every((c) => c.dtype === "fp8_e4m3")).toBe(true);
    // other dtypes get no twins
    expect(expandSweep(applyOverrides(presets.quick, { dtype: "bf16" }), { gpu: true }).length).toBe(8);
  });

  test("fp8 against bf16 from given times: the ratio, the issue's GPU target where it applies, the cell and the count", () => {
    const spec = applyOverrides(presets.fa, { dtype: "fp8_e4m3", seqlen: "1k,4k", hdim: "64,128", causal: "off", direction: "fwd" });
    const cases = expandSweep(spec, { gpu: true });
    const at = (d: number, s: number, dtype: string) => cases.find((c) => c.headDim === d && c.seqlenK === s && c.dtype === dtype)!;
    const timed = (c: BenchCase, place: "cuda" | "cpu", ms: number): Measurement => ({
      caseId: c.id, impl: `flashattn-${place}`, family: "ours", place, status: "ok",
      timing: { medianMs: ms, minMs: ms, p25Ms: ms, p75Ms: ms, maxMs: ms, spread: 0, iters: 5 },
    });
    const measurements = [
      timed(at(128, 4096, "fp8_e4m3"), "cuda", 0.5), timed(at(128, 4096, "bf16"), "cuda", 0.9),
      timed(at(128, 1024, "fp8_e4m3"), "cuda", 0.7), timed(at(128, 1024, "bf16"), "cuda", 0.8),
      timed(at(64, 4096, "fp8_e4m3"), "cuda", 0.6), timed(at(64, 4096, "bf16"), "cuda", 0.6),
      timed(at(128, 4096, "fp8_e4m3"), "cpu", 50), timed(at(128, 4096, "bf16"), "cpu", 40),
    ];
    const comparisons = entryComparisons(cases, measurements);
    const find = (d: number, s: number, place: string) =>
      comparisons.find((x) => x.caseId === at(d, s, "fp8_e4m3").id && x.place === place)!;
    expect(comparisons.length).toBe(4);
    expect(find(128, 4096, "cuda")).toMatchObject({ referenceId: at(128, 4096, "bf16").id, against: "bf16", target: 1 / 1.6 });
    expect(find(128, 4096, "cuda").ratio).toBeCloseTo(0.5 / 0.9, 12);
    expect(find(128, 1024, "cuda").target).toBeUndefined(); // the bound is from seqlen 4k
    expect(find(64, 4096, "cuda").target).toBeUndefined(); // and at head_dim 128 and 256
    expect(find(128, 4096, "cpu").target).toBeUndefined(); // and on a GPU
    expect(find(128, 4096, "cpu").ratio).toBeCloseTo(1.25, 12);
    expect(comparisonCell(find(128, 4096, "cuda"), false)).toBe("0.56× bf16 ✓");
    expect(comparisonCell({ ...find(128, 4096, "cuda"), ratio: 0.7 }, false)).toBe("0.70× bf16 ✗");

    const report: BenchReport = {
      ok: true, schema: BENCH_SCHEMA, createdAt: "2026-12-06T09:00:00.000Z",
      config: { preset: "fa", warmup: 3, iters: 30, minIters: 5, caseBudgetMs: 300, maxSeconds: 420 }, machine: {},
      implementations: [{ impl: "flashattn-cuda", family: "ours", place: "cuda", available: true }],
      copyBandwidth: [], cases, measurements: measurements.filter((m) => m.place === "cuda"),
      comparisons: comparisons.filter((x) => x.place === "cuda"), elapsedSeconds: 1, timeLimited: false,
    };
    const text = renderTable(report, { color: false });
    expect(text).toMatch(/^case +vs ref +flashattn-cuda$/m);
    expect(text.split("\n").find((l) => l.startsWith(`${at(128, 4096, "fp8_e4m3").id} `))).toContain("0.56× bf16 ✓");
    expect(text).toContain("fp8 → our bf16 forward on the same shape");
    expect(text).toContain("fp8 at least 1.6× our bf16 forward: 1 of 1 rows (worst 0.56×)");
    expect(text).not.toContain("fa_forward_kvcache");
  });

  test("on the CPU: fp8 forward and its bf16 twin timed, the ratio in the JSON and the table, the backward unsupported", () => {
    expect(applyOverrides(presets.quick, { dtype: "fp8_e4m3" }).dtype).toBe("fp8_e4m3");
    expect(() => applyOverrides(presets.quick, { dtype: "fp8" })).toThrow(/takes fp16, bf16, fp32, fp8_e4m3 or fp8_e5m2/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-fp8-bench-"));
    const saved = path.join(dir, "bench.json");
    const r = cli(["bench", "--backend", "cpu", "--dtype", "fp8_e4m3", "--seqlen", "128", "--hdim", "32", "--causal", "off",
      "--baselines", "none", "--quiet", "--save", saved], { NO_COLOR: "1" });
    const doc = fs.existsSync(saved) ? JSON.parse(fs.readFileSync(saved, "utf8")) as BenchReport : undefined;
    fs.rmSync(dir, { recursive: true, force: true });
    expect([r.code, r.stderr]).toEqual([0, ""]);
    if (!doc) throw new Error("bench --save wrote no report");
    const fp8Id = "b2 s128 h4/2 d32 fp8_e4m3 fwd", bf16Id = "b2 s128 h4/2 d32 bf16 fwd";
    expect(doc.cases.map((c) => c.id)).toEqual([fp8Id, bf16Id, "b2 s128 h4/2 d32 fp8_e4m3 bwd"]);
    const row = (id: string) => doc.measurements.find((m) => m.caseId === id && m.impl === "flashattn-cpu")!;
    expect(row(fp8Id)).toMatchObject({ status: "ok", check: { pass: true } });
    expect(row(fp8Id).kernel).toMatch(/^cpu_flash_fwd_/);
    expect(row(bf16Id)).toMatchObject({ status: "ok", check: { pass: true } });
    expect(row("b2 s128 h4/2 d32 fp8_e4m3 bwd")).toMatchObject({ status: "unsupported" });
    expect(row("b2 s128 h4/2 d32 fp8_e4m3 bwd").reason).toContain("fp8_e4m3 is forward only");
    const [comparison] = doc.comparisons!;
    expect(doc.comparisons!.length).toBe(1);
    expect(comparison).toMatchObject({ caseId: fp8Id, referenceId: bf16Id, impl: "flashattn-cpu", against: "bf16" });
    expect(comparison.target).toBeUndefined();
    expect(comparison.ratio).toBeCloseTo(row(fp8Id).timing!.medianMs / row(bf16Id).timing!.medianMs, 12);
    const line = r.stdout.split("\n").find((l) => l.startsWith(`${fp8Id} `))!;
    expect(line).toContain(`${comparison.ratio.toFixed(2)}× bf16`);
    expect(r.stdout).toContain("vs ref (flashattn-cpu): median time over the reference row's: fp8 → our bf16 forward");
  }, 120_000); // a hang guard: the bench's own budget ends it sooner
});
