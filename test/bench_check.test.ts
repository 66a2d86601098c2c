// bench never times a wrong kernel: each kernel path is checked against the fp64 reference on a small case first,
// and a path that fails is not timed; its rows say so, in the table's reason and in the JSON's `check`.
// The wrong kernel is the real CPU library with a fault put in after it: its forward's O is zeroed.
import { describe, expect, test } from "bun:test";
import { Backend, openBackend } from "../lib/backend.ts";
import { openLibrary } from "../ffi/loader.ts";
import { faSymbols } from "../ffi/symbols.ts";
import { zeroingOutput } from "./support/broken_library.ts";
import { implName } from "../bench/ours.ts";
import { presets } from "../bench/sweep.ts";
import { findBackends, runBench } from "../bench/run.ts";
import { KernelChecks, smallCaseOf } from "../bench/verify.ts";
import { expandSweep } from "../bench/sweep.ts";

const cpu = openBackend("cpu", { env: {} }).backend;
const timing = { warmup: 1, iters: 3, minIters: 1, caseBudgetMs: 50 };

describe.skipIf(!cpu)("bench's reference check of each kernel path (skipped without the CPU library)", () => {
  const broken = () => new Backend("cpu", zeroingOutput(openLibrary(cpu!.path, faSymbols), "fa_forward"));

  test("a correct path passes on a small case of the same kind", async () => {
    const [c] = expandSweep(presets.quick, { gpu: false });
    const check = await new KernelChecks().verify(cpu!, c, "flash");
    expect(check.pass).toBe(true);
    expect(check.relativeError!).toBeLessThanOrEqual(check.limit!);
    expect(check.kernel).toBeTruthy();
    const small = smallCaseOf(c);
    expect(check.shape).toBe(`b1 q${small.seqlenQ} kv${small.seqlenK} h${small.headsQ}/${small.headsKv} d${c.headDim}`);
  });

  test("a wrong path fails the check", async () => {
    const [c] = expandSweep(presets.quick, { gpu: false });
    const check = await new KernelChecks().verify(broken(), c, "flash");
    expect(check.pass).toBe(false);
    expect(check.relativeError!).toBeGreaterThan(check.limit!);
  });

  test("runBench does not time a wrong path: its rows are errors that say why, with the check in JSON", async () => {
    const found = findBackends(presets.quick, { backend: "cpu", env: {} });
    const report = await runBench({
      preset: "quick",
      spec: presets.quick,
      backend: "cpu",
      baselines: [],
      timing,
      maxSeconds: 600,
      env: {},
      backends: { ...found, usable: [broken()] },
    });
    const ours = report.measurements.filter((m) => m.impl === implName("flash", "cpu"));
    expect(ours.length).toBe(report.cases.length);
    for (const m of ours) {
      expect(m.status).toBe("error");
      expect(m.timing).toBeUndefined();
      expect(m.reason).toContain("not timed: the kernel failed the reference check");
      expect(JSON.parse(JSON.stringify(m)).check.pass).toBe(false);
    }
  }, 120_000);
});
