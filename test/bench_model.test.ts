// `flashattn bench --model PATH`: the model's own attention (heads, KV heads, head dim, window, softcap, ALiBi) as
// the sweep, through the same machinery as the presets (bench/sweep.ts cases, bench/ours.ts, the kernel checks, the
// baselines, the memory table). Pure expansion first, then the CLI on the CPU library with tiny lengths.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { modelProblems } from "../doctor/model/kernels.ts";
import { deriveNeeds } from "../doctor/model/needs.ts";
import { expandSweep, MODEL_SEQLENS, modelSweep } from "../bench/sweep.ts";
import { caseSemantics } from "../bench/ours.ts";
import { parseBenchOptions } from "../commands/bench.ts";
import type { BenchReport } from "../bench/results.ts";

const root = path.resolve(import.meta.dir, "..");
const models = path.join(root, "test", "fixtures", "models");
const needsOf = (family: string) => deriveNeeds(JSON.parse(fs.readFileSync(path.join(models, family, "config.json"), "utf8")));
const casesOf = (family: string, seqlens = MODEL_SEQLENS) => {
  const needs = needsOf(family);
  return expandSweep(modelSweep(modelProblems(needs)[0], seqlens, needs.text.max_positions), { gpu: true });
};

describe("the model's sweep (pure)", () => {
  test("Mistral: 4k and 16k, batch 1, GQA 32/8, head_dim 128, causal, its window on every case", () => {
    expect(casesOf("mistral-7b-v0.1").map((c) => c.id)).toEqual([
      "b1 s4096 h32/8 d128 causal window(4095,0) bf16 fwd",
      "b1 s16384 h32/8 d128 causal window(4095,0) bf16 fwd",
    ]);
  });
  test("lengths past the model's maximum are dropped; none left means its maximum (Falcon: 2048)", () => {
    expect(casesOf("falcon-7b").map((c) => c.seqlenK)).toEqual([2048]);
    expect(casesOf("phi-3-mini-4k").map((c) => c.seqlenK)).toEqual([4096]);
  });
  test("Gemma 2's softcap and window, Bloom's ALiBi, LLaVA's fp16 reach the cases and their semantics", () => {
    const [gemma] = casesOf("gemma-2-9b", [1024]);
    expect(gemma).toMatchObject({ headsQ: 16, headsKv: 8, headDim: 256, softcap: 50, window: [4095, 0] });
    expect(caseSemantics(gemma)).toEqual({ causal: true, window: [4095, 0], softcap: 50 });
    const [bloom] = casesOf("bloom-560m", [1024]);
    expect(bloom.alibi).toBe(true);
    expect(caseSemantics(bloom).alibiSlopes).toHaveLength(16);
    expect(casesOf("llava-1.5-7b", [1024])[0]).toMatchObject({ dtype: "fp16", headsQ: 32, headDim: 128 });
    // The presets' cases carry none of it: their ids and semantics are as before.
    expect(caseSemantics({ ...gemma, window: undefined, softcap: undefined })).toEqual({ causal: true });
  });
  test("--model refuses the flags that would change the model's shape", () => {
    for (const [flag, raw] of [["--hdim", { hdim: "64" }], ["--heads", { heads: "8" }], ["--preset", { preset: "fa" }], ["--causal", { causal: "off" }]] as const) {
      expect(() => parseBenchOptions({ model: "x", ...raw })).toThrow(`--model takes the attention shape from the model; ${flag} does not apply with it`);
    }
    expect(parseBenchOptions({ model: "x", seqlen: "1k", dtype: "fp16" }).model).toBe("x");
  });
});

const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const bun = path.join(root, "node_modules", ".bin", "bun");
const bench = (args: string[]) => {
  const r = spawnSync(bun, ["cli.ts", "bench", ...args], { cwd: root, encoding: "utf8", timeout: 180_000, env: { ...process.env, NO_COLOR: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

describe.skipIf(!hasCpuLibrary)("bench --model on the CPU library", () => {
  test("Gemma 2 (softcap + window): ours and naive timed and checked against the reference, NumPy refuses with the reason, memory column", () => {
    const r = bench(["--model", path.join(models, "gemma-2-9b"), "--seqlen", "64", "--backend", "cpu", "--baselines", "naive,numpy", "--iters", "2", "--warmup", "0", "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as BenchReport;
    expect(report.config).toMatchObject({ preset: "fa", model: `gemma2 (Gemma2ForCausalLM), ${path.join(models, "gemma-2-9b", "config.json")}` });
    expect(report.cases.map((c) => c.id)).toEqual(["b1 s64 h16/8 d256 causal window(4095,0) softcap50 bf16 fwd"]);
    const byImpl = Object.fromEntries(report.measurements.map((m) => [m.impl, m]));
    for (const impl of ["flashattn-cpu", "naive-cpu"]) {
      expect(byImpl[impl]).toMatchObject({ status: "ok", check: { pass: true } });
      expect(byImpl[impl].peakBytes).toBeGreaterThan(0);
    }
    if (byImpl.numpy) {
      expect(byImpl.numpy).toMatchObject({ status: "unsupported", reason: "this baseline times plain attention; the model's sliding window, logit softcap would make it another problem" });
    }
    expect(r.stderr).toContain("the text model's attention, bf16 forward, seqlen 64, heads 16/8, head_dim 256, causal, window (4095, 0), softcap 50");
  });
  test("Bloom (ALiBi): the slopes reach the kernels, checked against the reference", () => {
    const r = bench(["--model", path.join(models, "bloom-560m"), "--seqlen", "48", "--backend", "cpu", "--baselines", "naive", "--iters", "2", "--warmup", "0", "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as BenchReport;
    expect(report.measurements.map((m) => [m.impl, m.status, m.check?.pass])).toEqual([["flashattn-cpu", "ok", true], ["naive-cpu", "ok", true]]);
  });
  test("a missing model is one line and exit 2", () => {
    const r = bench(["--model", path.join(root, "no-such-model")]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")[0]).toContain("no such file or directory");
  });
});
