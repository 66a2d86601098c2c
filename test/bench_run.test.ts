// bench end to end on the real CPU library: the quick preset through runBench and through the CLI (JSON, CSV, SVG
// files), OOM / unsupported / time-limit rows from measureOurs and runBench, and the Python baselines as real
// subprocesses (NumPy measured; torch named with its reason where it is absent).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { openBackend } from "../lib/backend.ts";
import { tensorBytes } from "../bench/flops.ts";
import { measureOurs, runsFor, SpeedMemory } from "../bench/ours.ts";
import { baselineNames, presetTiming, runBench } from "../bench/run.ts";
import type { BenchReport } from "../bench/results.ts";
import { applyOverrides, expandSweep, presets } from "../bench/sweep.ts";
import { baselineScript, PythonWorker } from "../bench/baselines/worker.ts";
import { renderSvg } from "../bench/report/svg.ts";
import { renderTable } from "../bench/report/table.ts";
import { parseXml } from "./bench_report.test.ts";

const cpu = openBackend("cpu", { env: {} }).backend;
const hasPython = spawnSync("python3", ["-c", "import numpy"]).status === 0;
const torchPresent = spawnSync("python3", ["-c", "import torch"]).status === 0;
const bun = path.join(import.meta.dir, "..", "node_modules", ".bin", "bun");
const cli = path.join(import.meta.dir, "..", "cli.ts");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-bench-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

const quickTiming = { warmup: 1, iters: 10, minIters: 3, caseBudgetMs: 100 };

describe.skipIf(!cpu)("bench on the CPU library (skipped when build/libflashattn_cpu.so is not built)", () => {
  let report: BenchReport;
  beforeAll(async () => {
    report = await runBench({
      preset: "quick",
      spec: presets.quick,
      backend: "cpu",
      baselines: [...baselineNames],
      timing: quickTiming,
      // No time limit that a loaded machine could reach: the limit itself is tested with maxSeconds 0 below.
      maxSeconds: 1e9,
      env: { ...process.env, FLASHATTN_BACKEND: undefined, FLASHATTN_LIB: undefined },
    });
  }, 120_000);

  test("the quick preset times every case on ours", () => {
    const cases = expandSweep(presets.quick, { gpu: false });
    expect(report.cases.map((c) => c.id)).toEqual(cases.map((c) => c.id));
    // How long it took depends on the machine and its load; that it finished without the limit does not.
    expect(report.timeLimited).toBe(false);
    expect(report.elapsedSeconds).toBeGreaterThan(0);
    for (const c of report.cases) {
      const ours = report.measurements.find((m) => m.caseId === c.id && m.impl === "flashattn-cpu")!;
      expect(ours.status).toBe("ok");
      // Many runs, unless one run took over half the budget (a very busy machine), which the row then says.
      if (ours.timing!.iters < 3) expect(ours.reason).toContain("one run only");
      expect(ours.tflops!).toBeGreaterThan(0);
      // One call holds at least its inputs and outputs.
      expect(ours.peakBytes!).toBeGreaterThanOrEqual(tensorBytes(c, c.direction));
      expect(ours.kernel).toBeTruthy();
    }
  });

  test("naive runs forward and says why not backward", () => {
    for (const c of report.cases) {
      const naive = report.measurements.find((m) => m.caseId === c.id && m.impl === "naive-cpu")!;
      if (c.direction === "fwd") expect(naive.status).toBe("ok");
      else {
        expect(naive.status).toBe("unsupported");
        expect(naive.reason!.length).toBeGreaterThan(5);
      }
    }
  });

  test("every baseline is measured or named with its reason", () => {
    for (
      const impl of ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "numpy", "naive-cpu", "flashattn-cpu"]
    ) {
      const status = report.implementations.find((i) => i.impl === impl)!;
      expect(status).toBeDefined();
      if (!status.available) expect(status.reason!.length).toBeGreaterThan(10);
    }
    // GPU backends were excluded by the user's --backend cpu, and say so.
    expect(report.implementations.find((i) => i.impl === "flashattn-cuda")!.reason).toContain("the user chose cpu");
  });

  test.skipIf(!hasPython)(
    "NumPy timed on every case, in fp32, and ratios computed against ours (skipped without python3 + numpy)",
    () => {
      const rows = report.measurements.filter((m) => m.impl === "numpy");
      expect(rows.length).toBe(report.cases.length);
      // The first case is always timed; later ones may be skipped when NumPy is slow on this (shared) machine, and
      // then the row says why.
      expect(rows[0].status).toBe("ok");
      for (const m of rows) {
        if (m.status === "skipped") {
          expect(m.reason).toContain("per-case budget");
          continue;
        }
        expect(m.status).toBe("ok");
        expect(m.dtype).toBeUndefined(); // quick on a CPU is fp32 already
        expect(m.peakBytes!).toBeGreaterThan(0);
      }
      const timedCount = rows.filter((m) => m.status === "ok").length;
      expect(renderTable(report, { color: false })).toMatch(new RegExp(`vs numpy: ×[0-9.]+ over ${timedCount} cases`));
    },
  );

  test.skipIf(torchPresent)(
    "without torch the SDPA baselines are named with the reason (skipped where torch is installed)",
    () => {
      for (const impl of ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math"]) {
        const status = report.implementations.find((i) => i.impl === impl)!;
        expect(status.available).toBe(false);
        expect(status.reason).toMatch(/torch is not importable|python3? was not found/);
      }
      expect(renderTable(report, { color: false })).toContain(
        "not measured: sdpa-flash, sdpa-cudnn, sdpa-efficient, sdpa-math: torch is not importable",
      );
    },
  );

  test("the chart of a real run parses and holds one bar per timed value", () => {
    const svg = renderSvg(report);
    parseXml(svg);
    const bars = (svg.match(/<rect class="bar"/g) ?? []).length;
    expect(bars).toBe(report.measurements.filter((m) => m.status === "ok").length);
  });

  test("a case that cannot fit is OOM without being attempted, an unsupported one says why, both as rows", () => {
    const [c] = expandSweep(presets.quick, { gpu: false });
    const ctx = { plan: quickTiming, memoryLimitBytes: 1000, speeds: new SpeedMemory() };
    const oom = measureOurs(cpu!, c, "flash", ctx);
    expect(oom.status).toBe("oom");
    expect(oom.reason).toContain("not attempted");
    const [wide] = expandSweep(applyOverrides(presets.quick, { hdim: "200", seqlen: "16" }), { gpu: false });
    const odd = measureOurs(cpu!, { ...wide, headDim: 1000, id: "hdim 1000" }, "flash", {
      ...ctx,
      memoryLimitBytes: 1e9,
    });
    expect(odd.status).toBe("unsupported");
    expect(odd.reason).toMatch(/head.?dim/i);
  });

  test("a speed learnt on small shapes skips a shape that would blow the per-case budget", () => {
    const [c] = expandSweep(presets.quick, { gpu: false });
    const speeds = new SpeedMemory();
    speeds.learn(`flashattn-cpu ${c.direction}`, 1, 1e6); // a millisecond per FLOP: hopeless
    const row = measureOurs(cpu!, c, "flash", { plan: quickTiming, memoryLimitBytes: 1e9, speeds });
    expect(row.status).toBe("skipped");
    expect(row.reason).toContain("per-case budget");
  });

  test("a spent time limit turns the rows into 'skipped' with the reason, and the report is complete", async () => {
    const r = await runBench({
      preset: "quick",
      spec: presets.quick,
      backend: "cpu",
      baselines: ["naive"],
      timing: quickTiming,
      maxSeconds: 0,
      env: { ...process.env, FLASHATTN_BACKEND: undefined, FLASHATTN_LIB: undefined },
    });
    expect(r.timeLimited).toBe(true);
    expect(r.measurements.length).toBe(2 * r.cases.length);
    for (const m of r.measurements) {
      expect(m.status).toBe("skipped");
      expect(m.reason).toContain("--max-seconds 0");
    }
  });

  test("the CLI writes JSON on stdout and the chart, CSV and saved report to files", () => {
    // The chart goes into a folder that does not exist yet: bench creates it (a fresh checkout has no results/bench).
    const chart = path.join(scratch, "new", "quick.svg"),
      csv = path.join(scratch, "quick.csv"),
      saved = path.join(scratch, "quick.json");
    const r = spawnSync(bun, [
      cli,
      "bench",
      "--preset",
      "quick",
      "--backend",
      "cpu",
      "--baselines",
      "naive",
      "--direction",
      "fwd",
      "--json",
      "--chart",
      chart,
      "--csv",
      csv,
      "--save",
      saved,
    ], { encoding: "utf8", env: { ...process.env, NO_COLOR: "1", FLASHATTN_BACKEND: "" } });
    expect(r.stderr).toContain("wrote chart");
    expect(r.status).toBe(0);
    const doc = JSON.parse(r.stdout) as BenchReport;
    expect(doc.schema).toBe("flashattn.bench/1");
    expect(doc.cases.length).toBe(4);
    expect(JSON.parse(fs.readFileSync(saved, "utf8")).measurements.length).toBe(doc.measurements.length);
    expect(fs.readFileSync(csv, "utf8").trimEnd().split("\r\n").length).toBe(1 + doc.measurements.length);
    parseXml(fs.readFileSync(chart, "utf8"));
    expect((doc.machine as { host: { runtime: string } }).host.runtime).toContain("bun");
  }, 60_000);
});

describe("bench CLI errors", () => {
  test("a bad flag is one line and exit 2, a JSON error document with --json", () => {
    const r = spawnSync(bun, [cli, "bench", "--json", "--seqlen", "12q"], { encoding: "utf8" });
    expect(r.status).toBe(2);
    const doc = JSON.parse(r.stdout);
    expect(doc.ok).toBe(false);
    expect(doc.error.code).toBe("USAGE");
    expect(doc.error.message).toContain('"12q" is not a whole number');
    const plain = spawnSync(bun, [cli, "bench", "--preset", "nope"], {
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1" },
    });
    expect(plain.status).toBe(2);
    expect(plain.stdout).toBe("");
    expect(plain.stderr.trim().split("\n")[0]).toBe('flashattn: --preset takes fa, decode, quick, context-parallel, not "nope"');
  });

  test("no usable backend is an environment error (exit 3)", () => {
    const r = spawnSync(bun, [cli, "bench", "--lib", path.join(scratch, "missing.so")], {
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1" },
    });
    expect(r.status).toBe(3);
    expect(r.stderr).toContain("missing.so");
  });
});

describe("Python baseline workers", () => {
  test("a missing interpreter is a reason, not a crash", async () => {
    const started = await PythonWorker.start(baselineScript("torch_sdpa.py"), {
      python: path.join(scratch, "no-python"),
      timeoutMs: 10_000,
    });
    expect("unavailable" in started && started.unavailable).toContain("was not found");
  });

  test("a worker that dies says how", async () => {
    // `false` exits at once with status 1: the worker never says hello.
    const started = await PythonWorker.start(baselineScript("numpy_attention.py"), {
      python: "false",
      timeoutMs: 10_000,
    });
    expect("unavailable" in started && started.unavailable).toContain("the worker exited (status 1)");
  });

  test.skipIf(!hasPython)(
    "NumPy computes the attention it times: forward vs a float64 loop, gradients vs finite differences (skipped without python3 + numpy)",
    () => {
      // GQA 4/2, sq < sk (bottom-right causal), a fully masked row when sq > sk; gradients of sum(O ∘ dO).
      const check = `
import importlib.util, io, contextlib, math, os, sys
import numpy as np
sys.path.insert(0, os.path.dirname(sys.argv[1]))  # as when the script runs: its folder holds worker_protocol.py
spec = importlib.util.spec_from_file_location("na", sys.argv[1])
na = importlib.util.module_from_spec(spec)
with contextlib.redirect_stdout(io.StringIO()):
    spec.loader.exec_module(na)
rng = np.random.default_rng(7)
worst = 0.0
for (b, sq, sk, hq, hkv, d) in [(2, 5, 7, 4, 2, 8), (1, 6, 3, 2, 1, 16)]:
    q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    do = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    scale = 1 / math.sqrt(d)
    for causal in (False, True):
        def ref(q, k, v):
            o = np.zeros((b, sq, hq, d))
            for bb in range(b):
                for h in range(hq):
                    g = h // (hq // hkv)
                    s = q[bb, :, h].astype(np.float64) @ k[bb, :, g].astype(np.float64).T * scale
                    for i in range(sq):
                        for j in range(sk):
                            if causal and j > i + sk - sq:
                                s[i, j] = -np.inf
                    for i in range(sq):
                        if np.isfinite(s[i]).any():
                            p = np.exp(s[i] - s[i].max()); o[bb, i, h] = (p / p.sum()) @ v[bb, :, g]
            return o
        o, lse = na.forward(q, k, v, causal, scale)
        worst = max(worst, np.abs(o - ref(q, k, v)).max())
        dq, dk, dv = na.backward(q, k, v, o, lse, do, causal, scale)
        for name, grad in (("q", dq), ("k", dk), ("v", dv)):
            args = {"q": q.astype(np.float64), "k": k.astype(np.float64), "v": v.astype(np.float64)}
            idx = tuple(int(rng.integers(n)) for n in args[name].shape)
            plus, minus = dict(args), dict(args)
            plus[name] = args[name].copy(); plus[name][idx] += 1e-4
            minus[name] = args[name].copy(); minus[name][idx] -= 1e-4
            fd = ((ref(**plus) * do).sum() - (ref(**minus) * do).sum()) / 2e-4
            worst = max(worst, abs(fd - grad[idx]))
print(worst)
`;
      const r = spawnSync("python3", ["-B", "-c", check, baselineScript("numpy_attention.py")], { encoding: "utf8" });
      expect(r.stderr).toBe("");
      expect(Number(r.stdout.trim())).toBeLessThan(1e-3);
    },
  );

  test.skipIf(!hasPython)(
    "NumPy answers a case with timed runs and its peak memory (skipped without python3 + numpy)",
    async () => {
      const started = await PythonWorker.start<{ numpy: string }>(baselineScript("numpy_attention.py"), {
        timeoutMs: 20_000,
      });
      if (!("worker" in started)) throw new Error(started.unavailable);
      const w = started.worker;
      try {
        expect(w.hello.numpy).toMatch(/^\d+\.\d+/);
        const [c] = expandSweep(presets.quick, { gpu: false });
        const req = { op: "case", case: c, warmup: 1, iters: 4, min_iters: 2, budget_ms: 1000 };
        const answer = await w.request<
          { id: string; results: { status: string; times_ms: number[]; peak_bytes: number }[] }
        >(
          { ...req, memory_limit_bytes: 1e9 },
          20_000,
        );
        expect(answer.id).toBe(c.id);
        // How many runs are timed depends on how fast this machine runs the case (the rule itself is checked
        // without a clock below); what does not: every time is a positive number and the count obeys the rule.
        const [result] = answer.results as { status: string; times_ms: number[]; reason?: string }[];
        expect(result.status).toBe("ok");
        expect(result.times_ms.every((t) => Number.isFinite(t) && t > 0)).toBe(true);
        if (result.reason === undefined) {
          expect(result.times_ms.length).toBeGreaterThanOrEqual(req.min_iters);
          expect(result.times_ms.length).toBeLessThanOrEqual(req.iters);
        } else {
          expect(result.reason).toMatch(/^one run only: it takes \d+ ms, over half the per-case budget$/);
          expect(result.times_ms.length).toBe(1);
        }
        expect(answer.results[0].peak_bytes).toBeGreaterThan(3 * 2 * 128 * 4 * 64 * 4);
        const refused = await w.request<{ results: { status: string; reason: string }[] }>({
          ...req,
          memory_limit_bytes: 1000,
        }, 20_000);
        expect(refused.results[0].status).toBe("oom");
        expect(refused.results[0].reason).toContain("materialised scores need");
      } finally {
        w.close();
      }
    },
  );
});

test.skipIf(!hasPython)(
  "the Python workers count warm-up and timed runs by runsFor's rule (skipped without python3)",
  () => {
    const plan = { warmup: 3, iters: 30, minIters: 5, caseBudgetMs: 300 };
    const estimates = [0, 1e-4, 0.2, 2.5, 9.99, 10, 20, 37.5, 74.9, 75, 100, 149.9, 150, 150.1, 400];
    const script = `
import json, sys
sys.path.insert(0, sys.argv[1])
from worker_protocol import runs_for
req = {"warmup": ${plan.warmup}, "iters": ${plan.iters}, "min_iters": ${plan.minIters}, "budget_ms": ${plan.caseBudgetMs}}
print(json.dumps([runs_for(e, req) for e in ${JSON.stringify(estimates)}]))
`;
    const r = spawnSync("python3", ["-B", "-c", script, path.dirname(baselineScript("worker_protocol.py"))], {
      encoding: "utf8",
    });
    expect(r.stderr).toBe("");
    const python = JSON.parse(r.stdout) as ([number, number] | null)[];
    expect(python).toEqual(estimates.map((e) => {
      const runs = runsFor(e, plan);
      return runs && [runs.warmup, runs.iters];
    }));
  },
);

test("the quick preset's timing keeps it to a few seconds", () => {
  expect(presetTiming.quick.caseBudgetMs * 8 * 3).toBeLessThanOrEqual(5000);
});
