// bench/ without a library: the FLOP and byte formulas against hand-computed figures and the published convention,
// preset expansion (the sweep flash-attention's figures use), flag parsing (one USAGE sentence per bad flag),
// timing statistics, and the progress bar's ETA.
import { describe, expect, test } from "bun:test";
import { FlashAttnError } from "../lib/errors.ts";
import {
  attentionFlops,
  gigabytesPerSecond,
  kvBytes,
  naiveScoreBytes,
  tensorBytes,
  tflopsPerSecond,
} from "../bench/flops.ts";
import { applyOverrides, expandSweep, parseSizeList, presets } from "../bench/sweep.ts";
import { geometricMean, quantile, summarize } from "../bench/stats.ts";
import { formatDuration, StderrProgress } from "../bench/report/progress.ts";
import { parseBaselines, parseBenchOptions } from "../commands/bench.ts";
import { presetTiming, timesCpu } from "../bench/run.ts";
import { requestFor, runsFor, SpeedMemory } from "../bench/ours.ts";
import { paramsFor } from "../lib/select.ts";

function usageError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("USAGE");
    return (error as FlashAttnError).message;
  }
  throw new Error("expected a USAGE error, got none");
}

const shape = {
  batch: 2,
  seqlenQ: 8192,
  seqlenK: 8192,
  headsQ: 16,
  headsKv: 16,
  headDim: 128,
  causal: false,
  dtype: "bf16" as const,
};

describe("FLOP and byte formulas", () => {
  test("forward is 4·b·h·sq·sk·d, halved for causal; backward 2.5×, fwd+bwd 3.5×", () => {
    const fwd = 4 * 2 * 16 * 8192 * 8192 * 128;
    expect(attentionFlops(shape, "fwd")).toBe(fwd);
    expect(attentionFlops({ ...shape, causal: true }, "fwd")).toBe(fwd / 2);
    expect(attentionFlops(shape, "bwd")).toBe(2.5 * fwd);
    expect(attentionFlops(shape, "fwd+bwd")).toBe(3.5 * fwd);
    // GQA does not change the count: every query head still does its two matmuls.
    const gqa = { ...shape, headsKv: 2 };
    expect(attentionFlops(gqa, "fwd")).toBe(fwd);
  });

  test("the docs/DESIGN.md anchor converts back: 361 TFLOP/s at hdim 128, 8k, non-causal is 3.05 ms", () => {
    const ms = attentionFlops(shape, "fwd") / 361e12 * 1e3;
    expect(ms).toBeCloseTo(3.046, 2);
    expect(tflopsPerSecond(attentionFlops(shape, "fwd"), ms)).toBeCloseTo(361, 6);
  });

  test("decode bytes are K and V once: 2·b·sk·h_kv·d·sizeof", () => {
    const decode = {
      batch: 8,
      seqlenQ: 1,
      seqlenK: 131072,
      headsQ: 32,
      headsKv: 8,
      headDim: 128,
      causal: false,
      dtype: "bf16" as const,
    };
    expect(kvBytes(decode)).toBe(2 * 8 * 131072 * 8 * 128 * 2);
    expect(kvBytes({ ...decode, dtype: "fp32" })).toBe(2 * kvBytes(decode));
    expect(gigabytesPerSecond(3e9, 1)).toBeCloseTo(3000, 9);
  });

  test("tensor bytes: q, k, v, o, fp32 LSE; backward adds dO, dQ, dK, dV", () => {
    const small = {
      batch: 1,
      seqlenQ: 4,
      seqlenK: 6,
      headsQ: 2,
      headsKv: 1,
      headDim: 8,
      causal: false,
      dtype: "fp16" as const,
    };
    const q = 1 * 4 * 2 * 8 * 2, kv = 1 * 6 * 1 * 8 * 2, lse = 1 * 2 * 4 * 4;
    expect(tensorBytes(small, "fwd")).toBe(2 * q + 2 * kv + lse);
    expect(tensorBytes(small, "bwd")).toBe(4 * q + 4 * kv + lse);
    expect(naiveScoreBytes(small)).toBe(2 * 1 * 2 * 4 * 6 * 4);
  });
});

describe("presets", () => {
  test("fa is flash-attention's sweep: 16k tokens, hidden 2048, hdim 64/128/256, seqlen 512..16k, causal both, fwd and bwd", () => {
    const cases = expandSweep(presets.fa, { gpu: true });
    expect(cases.length).toBe(2 * 3 * 2 * 6);
    for (const c of cases) {
      expect(c.batch * c.seqlenK).toBe(16384);
      expect(c.headsQ * c.headDim).toBe(2048);
      expect(c.headsKv).toBe(c.headsQ);
      expect(c.seqlenQ).toBe(c.seqlenK);
      expect(c.dtype).toBe("bf16");
    }
    expect(new Set(cases.map((c) => c.seqlenK))).toEqual(new Set([512, 1024, 2048, 4096, 8192, 16384]));
    expect(new Set(cases.map((c) => c.id)).size).toBe(cases.length);
    // Grouped as the chart draws them: the first six are fwd, hdim 64, non-causal, seqlen ascending.
    expect(cases.slice(0, 6).map((c) => [c.direction, c.headDim, c.causal, c.seqlenK])).toEqual(
      [512, 1024, 2048, 4096, 8192, 16384].map((s) => ["fwd", 64, false, s]),
    );
    const first = cases[0];
    expect([first.batch, first.headsQ]).toEqual([32, 32]);
  });

  test("decode is one query token against 4k..128k KV, GQA 32/8, judged by bytes", () => {
    // The plain-forward cases; the KV-cache cases of the preset are test/bench_kvcache.test.ts's.
    const cases = expandSweep(presets.decode, { gpu: true }).filter((c) => !c.kvcache && c.seqlenQ === 1 &&
      c.headsKv === 8 && c.headDim === 128);
    expect(cases.length).toBe(6 * 2);
    for (const c of cases) {
      expect(c.seqlenQ).toBe(1);
      expect(c.headsQ / c.headsKv).toBe(4);
      expect(c.kind).toBe("decode");
      expect(c.direction).toBe("fwd");
    }
    expect(Math.max(...cases.map((c) => c.seqlenK))).toBe(131072);
  });

  test("GPU-sized presets leave the CPU out where a GPU is usable, unless a backend is picked", () => {
    expect(timesCpu(presets.fa, true, "auto")).toBe(false);
    expect(timesCpu(presets.decode, true, "auto")).toBe(false);
    expect(timesCpu(presets.fa, true, "cpu")).toBe(true);
    expect(timesCpu(presets.fa, false, "auto")).toBe(true);
    expect(timesCpu(presets.quick, true, "auto")).toBe(true);
  });

  test("quick computes in fp32 without a GPU and bf16 with one", () => {
    expect(expandSweep(presets.quick, { gpu: false }).every((c) => c.dtype === "fp32")).toBe(true);
    expect(expandSweep(presets.quick, { gpu: true }).every((c) => c.dtype === "bf16")).toBe(true);
  });

  test("flags override a preset; --batch replaces the 16k-token rule", () => {
    const spec = applyOverrides(presets.fa, {
      hdim: "128",
      causal: "on",
      seqlen: "1k,4k",
      direction: "fwd+bwd",
      batch: "3",
      headsKv: "4",
    });
    const cases = expandSweep(spec, { gpu: true });
    expect(cases.map((c) => [c.headDim, c.causal, c.seqlenK, c.direction, c.batch, c.headsQ, c.headsKv])).toEqual([
      [128, true, 1024, "fwd+bwd", 3, 16, 4],
      [128, true, 4096, "fwd+bwd", 3, 16, 4],
    ]);
    expect(cases[0].id).toBe("b3 s1024 h16/4 d128 causal bf16 fwd+bwd");
    // The preset itself is untouched.
    expect(presets.fa.hdims).toEqual([64, 128, 256]);
  });

  test("--deterministic marks the backward cases only, in their ids, and reaches the library's params", () => {
    const spec = applyOverrides(presets.quick, { seqlen: "128", causal: "off", direction: "fwd,bwd,fwd+bwd", deterministic: true });
    const cases = expandSweep(spec, { gpu: false });
    expect(cases.map((c) => [c.direction, c.deterministic ?? false])).toEqual([
      ["fwd", false],
      ["bwd", true],
      ["fwd+bwd", true],
    ]);
    expect(cases[1].id).toBe("b2 s128 h4/2 d64 deterministic fp32 bwd");
    expect(cases[0].id).not.toContain("deterministic");
    const params = (c: (typeof cases)[number]) => paramsFor(requestFor(c, "flash"), { q: 1n, k: 1n, v: 1n, o: 1n, lse: 1n });
    expect(params(cases[1]).deterministic).toBe(true);
    expect(params(cases[0]).deterministic).toBe(false);
    // Without the flag nothing is marked.
    const plain = expandSweep(applyOverrides(presets.quick, { seqlen: "128", direction: "bwd" }), { gpu: false });
    expect(plain.every((c) => c.deterministic === undefined && !c.id.includes("deterministic"))).toBe(true);
  });

  test("sizes accept k suffixes and refuse anything else with one sentence", () => {
    expect(parseSizeList("seqlen", "512, 1k,16K", 1 << 20)).toEqual([512, 1024, 16384]);
    expect(usageError(() => parseSizeList("seqlen", "1.5k", 1 << 20))).toContain('"1.5k" is not a whole number');
    expect(usageError(() => parseSizeList("hdim", "512", 256))).toContain("outside 1..256");
    expect(usageError(() => parseSizeList("batch", "0", 10))).toContain("outside 1..10");
    expect(usageError(() => parseSizeList("batch", ",", 10))).toContain("at least one value");
    expect(usageError(() => expandSweep(applyOverrides(presets.quick, { heads: "6", headsKv: "4" }), { gpu: false })))
      .toContain("not a multiple of --heads-kv 4");
    expect(usageError(() => applyOverrides(presets.quick, { causal: "maybe" }))).toContain("on, off or both");
    expect(usageError(() => applyOverrides(presets.quick, { direction: "fwd,sideways" }))).toContain('not "sideways"');
    expect(usageError(() => applyOverrides(presets.quick, { dtype: "fp8" }))).toContain('not "fp8"');
  });

  test("an absurdly large sweep is refused before anything runs", () => {
    const many = Array.from({ length: 70 }, (_, i) => i + 1).join(",");
    expect(usageError(() => expandSweep(applyOverrides(presets.quick, { seqlen: many, batch: many }), { gpu: false })))
      .toContain("more than 4096 cases");
  });
});

describe("bench flags", () => {
  test("baselines: sdpa expands to its four backends; unknown names are refused", () => {
    expect(parseBaselines(undefined)).toEqual([
      "naive",
      "sdpa-flash",
      "sdpa-cudnn",
      "sdpa-efficient",
      "sdpa-math",
      "numpy",
    ]);
    expect(parseBaselines("none")).toEqual([]);
    expect(parseBaselines("sdpa,numpy")).toEqual(["sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "numpy"]);
    expect(parseBaselines("sdpa-cudnn")).toEqual(["sdpa-cudnn"]);
    expect(usageError(() => parseBaselines("naive,xformers"))).toContain('unknown baseline "xformers"');
  });

  test("parseBenchOptions checks every flag before any library is loaded", () => {
    const plan = parseBenchOptions({ preset: "decode", iters: "20", csv: true, chart: "out.svg", maxSeconds: "30" });
    expect(plan.preset).toBe("decode");
    expect(plan.timing).toEqual({
      warmup: undefined,
      iters: 20,
      minIters: undefined,
      caseBudgetMs: undefined,
      maxSeconds: 30,
    });
    expect(plan.csv).toEqual({ path: undefined });
    expect(parseBenchOptions({ csv: "x.csv" }).csv).toEqual({ path: "x.csv" });
    expect(parseBenchOptions({}).preset).toBeUndefined();
    expect(usageError(() => parseBenchOptions({ preset: "huge" }))).toContain("--preset takes fa, decode, quick");
    expect(usageError(() => parseBenchOptions({ backend: "tpu" }))).toContain("--backend takes auto, cpu, cuda or hip");
    expect(usageError(() => parseBenchOptions({ iters: "0" }))).toContain("--iters takes a whole number in 1..");
    expect(usageError(() => parseBenchOptions({ warmup: "-1" }))).toContain("--warmup");
    expect(usageError(() => parseBenchOptions({ chart: "out.png" }))).toContain("name a .svg file");
    expect(usageError(() => parseBenchOptions({ seqlen: "abc" }))).toContain("--seqlen");
    expect(parseBenchOptions({ deterministic: true }).overrides.deterministic).toBe(true);
    expect(parseBenchOptions({}).overrides.deterministic).toBeUndefined();
  });

  test("the fa preset's worst case fits the 8-minute window", () => {
    const t = presetTiming.fa;
    expect(t.maxSeconds).toBeLessThan(8 * 60);
    // Per implementation and case: the estimate run plus the timed runs stay near the budget (slow runs get minIters).
    expect(t.caseBudgetMs * 72 * 7 / 1000).toBeLessThan(t.maxSeconds);
  });
});

describe("how many runs a case gets", () => {
  const plan = { warmup: 3, iters: 30, minIters: 5, caseBudgetMs: 300 };

  test("fast kernels get every run; slower ones fewer, never under minIters; over half the budget, one run", () => {
    expect(runsFor(0.2, plan)).toEqual({ warmup: 3, iters: 30 });
    expect(runsFor(20, plan)).toEqual({ warmup: 3, iters: 15 });
    expect(runsFor(100, plan)).toEqual({ warmup: 1, iters: 5 });
    expect(runsFor(150, plan)).toEqual({ warmup: 1, iters: 5 });
    expect(runsFor(151, plan)).toBeNull();
    expect(runsFor(0, plan)).toEqual({ warmup: 3, iters: 30 });
  });

  test("a speed learnt on one shape skips a larger one predicted over four times the budget", () => {
    const speeds = new SpeedMemory();
    expect(speeds.skipReason("numpy fwd", 1e9, plan)).toBeUndefined(); // nothing learnt yet: try it
    speeds.learn("numpy fwd", 1e9, 100); // 100 ms per GFLOP
    expect(speeds.predictMs("numpy fwd", 4e9)).toBeCloseTo(400, 9);
    expect(speeds.skipReason("numpy fwd", 12e9, plan)).toBeUndefined(); // 1.2 s: still tried (once)
    expect(speeds.skipReason("numpy fwd", 13e9, plan)).toBe(
      "one run would take about 1.3 s, over four times the per-case budget of 0.3 s",
    );
    expect(speeds.skipReason("numpy bwd", 13e9, plan)).toBeUndefined(); // per direction
  });
});

describe("timing statistics", () => {
  test("median, quartiles and the relative spread", () => {
    const s = summarize([5, 1, 4, 2, 3]);
    expect(s).toEqual({ iters: 5, medianMs: 3, minMs: 1, maxMs: 5, p25Ms: 2, p75Ms: 4, spread: 2 / 3 });
    expect(summarize([2, 4]).medianMs).toBe(3);
    expect(quantile([10, 20, 30, 40], 0.25)).toBeCloseTo(17.5, 12);
  });

  test("a NaN or negative time is a measurement bug, not a number to average", () => {
    expect(() => summarize([1, NaN])).toThrow("invalid iteration time");
    expect(() => summarize([1, -2])).toThrow("invalid iteration time");
    expect(() => summarize([])).toThrow("no timed iterations");
  });

  test("geometric mean of speed-ups ignores what is not a ratio", () => {
    expect(geometricMean([2, 8])).toBeCloseTo(4, 12);
    expect(geometricMean([0.5, 2, NaN, 0])).toBeCloseTo(1, 12);
    expect(geometricMean([])).toBeNaN();
  });
});

describe("progress", () => {
  test("ETA follows the weighted work done; plain lines when stderr is not a terminal", () => {
    let now = 0;
    const lines: string[] = [];
    const p = new StderrProgress({ isTTY: false, write: (s: string) => lines.push(s) }, { now: () => now });
    p.start([1, 3]);
    expect(p.eta()).toBeNaN();
    now = 2000;
    p.step(0, "case a");
    p.done(0, "case a: 1 TFLOP/s");
    expect(p.eta()).toBeCloseTo(6, 9); // 1 unit took 2 s, 3 units remain
    p.finish();
    expect(lines).toEqual(["[1/2] case a: 1 TFLOP/s (ETA 6s)\n"]);
  });

  test("on a terminal the bar redraws in place, cut to the width, and clears at the end", () => {
    const writes: string[] = [];
    const p = new StderrProgress({ isTTY: true, columns: 40, write: (s: string) => writes.push(s) }, { now: () => 0 });
    p.start([1]);
    p.step(0, "b32 s512 h32 d64 bf16 fwd · flashattn-cuda with a long label");
    p.done(0, "done");
    p.finish();
    const drawn = writes.filter((w) => w.includes("%"));
    expect(drawn.length).toBeGreaterThan(0);
    for (const w of drawn) {
      expect(w.startsWith("\x1b[?7l\r\x1b[K")).toBe(true);
      // deno-lint-ignore no-control-regex -- strips the terminal's escape sequences to measure the visible line
      expect(w.replace(/\x1b\[[?0-9;]*[a-zA-Z]/g, "").replace("\r", "").length).toBeLessThanOrEqual(39);
    }
    expect(drawn.at(-1)).toContain("100%");
    expect(writes.at(-1)).toBe("\r\x1b[K");
  });

  test("durations read as a person would say them", () => {
    expect(formatDuration(5.4)).toBe("5s");
    expect(formatDuration(125)).toBe("2m05s");
    expect(formatDuration(3 * 3600 + 60)).toBe("3h01m");
    expect(formatDuration(NaN)).toBe("?");
  });
});
