// bench --preset context-parallel: the flags, and one measured case on the CPU backend with in-process ranks (the
// same measuring code the GPUs run; no assertion depends on the machine's speed).
import { describe, expect, test } from "bun:test";
import { openBackend } from "../lib/backend.ts";
import { LocalRing } from "../lib/ring.ts";
import {
  contextParallelDefaults,
  measureContextParallelCase,
  parseContextParallelFlags,
  renderContextParallel,
} from "../bench/context_parallel.ts";

describe("bench --preset context-parallel", () => {
  test("defaults: 128k..1M tokens, causal and not, fwd and bwd, head dim 128", () => {
    const spec = parseContextParallelFlags({});
    expect(spec.seqlens).toEqual([131072, 262144, 524288, 1048576]);
    expect(spec.causal).toEqual([true, false]);
    expect(spec.directions).toEqual(["fwd", "bwd"]);
    expect(spec.headDim).toBe(128);
  });

  test("flags: lists parsed, nonsense refused with a usage error", () => {
    expect(parseContextParallelFlags({ seqlen: "512k", causal: "on", direction: "bwd", heads: "32", headsKv: "8" }))
      .toMatchObject({ seqlens: [524288], causal: [true], directions: ["bwd"], heads: 32, headsKv: 8 });
    for (const raw of [{ direction: "fwd+bwd" }, { heads: "0" }, { heads: "12", headsKv: "5" }, { iters: "x" }, { seqlen: "-4" }]) {
      expect(() => parseContextParallelFlags(raw)).toThrow();
    }
  });

  test("one case on two in-process CPU ranks: every field measured, the shares and the efficiency are ratios", () => {
    const cpu = openBackend("cpu").backend!;
    const spec = { ...contextParallelDefaults, heads: 2, headsKv: 1, warmup: 0, iters: 1 };
    for (const direction of ["fwd", "bwd"] as const) {
      const c = measureContextParallelCase(new LocalRing(cpu, 2), 67, true, direction, spec, cpu);
      expect(c).toMatchObject({ seqlen: 67, causal: true, direction, ranks: 2 });
      for (const value of [c.ringMs, c.ringNoOverlapMs, c.singleMs!]) expect(value).toBeGreaterThan(0);
      expect(c.communicationShare).toBeGreaterThanOrEqual(0);
      expect(c.communicationShare).toBeLessThanOrEqual(1);
      expect(c.efficiency).toBeCloseTo(c.singleMs! / (2 * c.ringMs), 10);
      expect(renderContextParallel({ preset: "context-parallel", transport: "test", ranks: 2, spec, cases: [c] })).toContain("67");
    }
    expect(cpu.memoryStats().current).toBe(0);
  });
});
