// `flashattn run` flag parsing, without I/O: every accepted form becomes the right RunPlan and every bad flag one
// USAGE sentence. Also the packed-qkv split and the rendering of results.
import { describe, expect, test } from "bun:test";
import { tensor } from "../lib/tensor.ts";
import { parseRunOptions, type RawRunOptions, renderRun, runDocument } from "../commands/run.ts";
import { unpackQkv } from "../formats/qkv.ts";
import type { RunResult } from "../run/execute.ts";
import { defaultShape } from "../run/plan.ts";
import { runUsageError as usageError } from "./support/cli.ts";

describe("accepted forms", () => {
  test("no arguments: the embedded default problem, causal and checked, dtype by backend", () => {
    const plan = parseRunOptions({});
    expect(plan.isDefault).toBe(true);
    expect(plan.input).toEqual({ kind: "random", shape: defaultShape, seed: 0 });
    expect(plan.causal).toBe(true);
    expect(plan.check).toBe(true);
    expect(plan.dtype).toBe("auto");
    expect(plan.backend).toBe("auto");
  });

  test("options that do not describe a problem keep the default problem", () => {
    const plan = parseRunOptions({ backend: "cpu", out: "o.npy", json: true } as RawRunOptions);
    expect(plan.isDefault).toBe(true);
    expect(plan.backend).toBe("cpu");
    expect(plan.output).toEqual({ path: "o.npy", format: "npy", lse: { kind: "none" } });
  });

  test("semantics without a shape: default shape, no implicit causal or check", () => {
    const plan = parseRunOptions({ softcap: "30" });
    expect(plan.isDefault).toBe(false);
    expect(plan.causal).toBe(false);
    expect(plan.check).toBe(false);
    expect(plan.softcap).toBe(30);
  });

  test("--shape with six and with four entries", () => {
    expect(parseRunOptions({ shape: "2,128,256,8,2,64", dtype: "bfloat16", seed: "9" }).input)
      .toEqual({
        kind: "random",
        shape: { batch: 2, seqlenQ: 128, seqlenK: 256, headsQ: 8, headsKv: 2, headDim: 64 },
        seed: 9,
      });
    expect(parseRunOptions({ shape: "1,100,4,32" }).input)
      .toEqual({
        kind: "random",
        shape: { batch: 1, seqlenQ: 100, seqlenK: 100, headsQ: 4, headsKv: 4, headDim: 32 },
        seed: 0,
      });
    expect(parseRunOptions({ shape: "1,100,4,32", dtype: "bf16" }).dtype).toBe("bf16");
  });

  test("separate size flags fill in from the defaults", () => {
    expect(parseRunOptions({ seqlenQ: "3", seqlenK: "7", headsQ: "8", headsKv: "2" }).input).toEqual({
      kind: "random",
      shape: { batch: 1, seqlenQ: 3, seqlenK: 7, headsQ: 8, headsKv: 2, headDim: 64 },
      seed: 0,
    });
    expect(parseRunOptions({ headsQ: "12" }).input).toMatchObject({ shape: { headsQ: 12, headsKv: 12 } });
    expect(parseRunOptions({ heads: "4", seqlen: "10" }).input).toMatchObject({
      shape: { headsQ: 4, headsKv: 4, seqlenQ: 10, seqlenK: 10 },
    });
  });

  test(".npy inputs, safetensors with default, explicit and packed names", () => {
    expect(parseRunOptions({ q: "q.npy", k: "k.npy", v: "v.npy", causal: true }).input).toEqual({
      kind: "npy",
      q: "q.npy",
      k: "k.npy",
      v: "v.npy",
    });
    expect(parseRunOptions({ input: "x.safetensors" }).input).toEqual({
      kind: "safetensors",
      path: "x.safetensors",
      names: undefined,
      packed: undefined,
    });
    expect(parseRunOptions({ input: "x.safetensors", kName: "key" }).input)
      .toEqual({ kind: "safetensors", path: "x.safetensors", names: { q: "q", k: "key", v: "v" }, packed: undefined });
    expect(parseRunOptions({ input: "x.safetensors", qkvName: "attn.qkv" }).input)
      .toEqual({ kind: "safetensors", path: "x.safetensors", names: undefined, packed: "attn.qkv" });
  });

  test("masks and scores", () => {
    const plan = parseRunOptions({
      shape: "1,64,64,2,2,32",
      window: "16,-1",
      softcap: "0",
      scale: "0.25",
      alibi: true,
      causal: true,
    });
    expect(plan.window).toEqual([16, -1]);
    expect(plan.softcap).toBe(0);
    expect(plan.scale).toBe(0.25);
    expect(plan.alibi).toEqual({ kind: "standard" });
    expect(parseRunOptions({ shape: "1,64,64,2,2,32", alibiSlopes: "s.npy" }).alibi).toEqual({
      kind: "file",
      path: "s.npy",
    });
  });

  test("outputs: .npy with LSE beside it or named, .safetensors with LSE in the same file", () => {
    expect(parseRunOptions({ out: "dir/o.npy", lse: true }).output).toEqual({
      path: "dir/o.npy",
      format: "npy",
      lse: { kind: "npy", path: "dir/o.lse.npy" },
    });
    expect(parseRunOptions({ out: "o.npy", lse: "l.npy" }).output).toEqual({
      path: "o.npy",
      format: "npy",
      lse: { kind: "npy", path: "l.npy" },
    });
    expect(parseRunOptions({ out: "o.safetensors", lse: true }).output).toEqual({
      path: "o.safetensors",
      format: "safetensors",
      lse: { kind: "same-file" },
    });
  });
});

describe("each bad flag is one usage sentence", () => {
  const cases: Array<[RawRunOptions, string]> = [
    [{ dtype: "fp8" }, "unknown dtype 'fp8' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)"],
    [{ shape: "1,2,3" }, "--shape takes batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim"],
    [{ shape: "1,16,16,0,1,64" }, "--shape entries must be a whole number ≥ 1, got '0'"],
    [{ shape: "1,16,16,x,1,64" }, "got 'x'"],
    [{ shape: "1,16,16,6,4,64" }, "heads_q (6) must be a multiple of heads_kv (4)"],
    [{ shape: "1,16,16,4,4,512" }, "head_dim 512 is out of range (1..256)"],
    [{ shape: "64,65536,65536,32,32,128" }, "run generates at most 2^28"],
    [{ shape: "1,8192,8192,16,16,128", check: true }, "--check on this problem would take the fp64 reference too long"],
    [{ shape: "1,16,16,4,4,64", seqlen: "3" }, "--shape and --seqlen exclude each other"],
    [{ seqlen: "3", seqlenQ: "4" }, "--seqlen sets both lengths"],
    [{ heads: "4", headsKv: "2" }, "--heads sets both head counts"],
    [{ headDim: "-8" }, "--head-dim must be a whole number ≥ 1, got '-8'"],
    [{ q: "q.npy", k: "k.npy" }, "--q, --k and --v go together; --v missing"],
    [{ q: "q.npy", k: "k.npy", v: "v.txt" }, "--v v.txt is not a .npy file"],
    [
      { q: "q.npy", k: "k.npy", v: "v.npy", input: "x.safetensors" },
      "choose one input: --q/--k/--v or --input, not both",
    ],
    [{ input: "x.safetensors", shape: "1,2,2,1,1,8" }, "choose one input: --input or a shape"],
    [{ input: "x.npy" }, "--input x.npy is not a .safetensors file"],
    [{ qName: "a" }, "--q-name names a tensor of a .safetensors --input, which is missing"],
    [
      { input: "x.safetensors", qName: "a", qkvName: "b" },
      "--qkv-name (one packed tensor) and --q-name/--k-name/--v-name exclude each other",
    ],
    [{ q: "q.npy", k: "k.npy", v: "v.npy", seed: "3" }, "--seed only applies to random problems"],
    [{ seed: "-1" }, "--seed must be a whole number in 0..4294967295"],
    [{ window: "5" }, "--window takes LEFT,RIGHT"],
    [{ window: "-2,0" }, "--window bounds must be a whole number ≥ -1, got '-2'"],
    [{ window: "-1,-1" }, "--window -1,-1 is no window at all"],
    [{ softcap: "-1" }, "--softcap must be a finite number ≥ 0 (0 = off), got '-1'"],
    [{ softcap: "inf" }, "--softcap must be a finite number"],
    [{ scale: "0" }, "--scale must be a finite number > 0, got '0'"],
    [{ scale: "NaN" }, "--scale must be a finite number > 0"],
    [{ scale: "" }, "--scale must be a finite number > 0"],
    [{ alibi: true, alibiSlopes: "s.npy" }, "--alibi (standard slopes) and --alibi-slopes FILE exclude each other"],
    [{ backend: "tpu" }, "unknown backend 'tpu' (choose auto, cpu, cuda or hip)"],
    [{ lib: " " }, "--lib needs the path"],
    [{ out: "o.txt" }, "--out o.txt must end in .npy or .safetensors"],
    [{ lse: true }, "--lse writes the LSE next to the output and needs --out"],
    [{ out: "o.safetensors", lse: "l.npy" }, "LSE is a second tensor in the same file"],
    [{ out: "o.npy", lse: "l.bin" }, "--lse l.bin must end in .npy"],
    [{ out: "o.npy", lse: "o.npy" }, "--lse and --out name the same file"],
  ];
  for (const [raw, expected] of cases) {
    test(`${JSON.stringify(raw)} → ${expected}`, () => {
      expect(usageError(raw)).toContain(expected);
    });
  }
});

test("packed qkv (b, s, 3, h, d) splits into q, k, v", () => {
  const [b, s, h, d] = [2, 3, 2, 4];
  const qkv = tensor("fp32", [b, s, 3, h, d]);
  // Element value encodes (token, which, head, dim) so any misplaced copy shows.
  for (let i = 0; i < qkv.data.length; i++) qkv.data[i] = i;
  const { q, k, v } = unpackQkv("x.safetensors", "qkv", qkv);
  for (const [which, t] of [q, k, v].entries()) {
    expect(t.shape).toEqual([b, s, h, d]);
    for (let token = 0; token < b * s; token++) {
      for (let e = 0; e < h * d; e++) expect(t.data[token * h * d + e]).toBe((token * 3 + which) * h * d + e);
    }
  }
  expect(() => unpackQkv("x.safetensors", "qkv", tensor("fp32", [2, 3, 2, 2, 4]))).toThrow(
    "must be (batch, seqlen, 3, heads, head_dim)",
  );
});

describe("rendering", () => {
  const result: RunResult = {
    backend: "cpu",
    kernel: "cpu_flash",
    numSplits: 1,
    dtype: "bf16",
    shape: { batch: 1, seqlenQ: 5, seqlenK: 9, headsQ: 4, headsKv: 2, headDim: 16 },
    causal: true,
    window: null,
    softcap: 0,
    scale: 0.25,
    alibi: "none",
    ms: 1.5,
    gflops: 2.5,
    check: { relativeError: 0.02, naiveError: 0.004, lseError: 1e-7, limit: 0.008, pass: false },
    outputs: ["o.npy"],
    defaultProblem: false,
    decisions: [],
  };

  test("a failed check makes the JSON document ok: false with CHECK_FAILED", () => {
    const doc = runDocument(result);
    expect(doc.ok).toBe(false);
    expect(doc.error).toEqual({
      code: "CHECK_FAILED",
      message: "check failed: relative error 2.00e-2 exceeds the limit 8.00e-3",
    });
    expect(runDocument({ ...result, check: { ...result.check!, relativeError: 0.001, pass: true } }).ok).toBe(true);
  });

  test("the human report names backend, kernel, shape, time and verdict; colour only when asked", () => {
    const plain = renderRun(result, false);
    expect(plain).not.toContain("\x1b[");
    expect(plain).toContain("cpu  kernel cpu_flash");
    expect(plain).toContain("batch 1, seqlen 5×9, heads 4/2 (GQA), head_dim 16, bf16, causal");
    expect(plain).toContain("1.50 ms  2.5 GFLOP/s");
    expect(plain).toContain("relative error 2.00e-2 (limit 8.00e-3, naive bf16 4.00e-3; lse 1.00e-7)  FAIL");
    expect(renderRun(result, true)).toContain("\x1b[31mFAIL\x1b[39m");
  });
});
