// One bench run: find our usable backends and the baselines, then walk the cases in order, timing on each shape
// our kernels, the naive algorithm, PyTorch SDPA's backends and NumPy before moving on. A case that does not fit,
// is not supported or fails becomes its row's status and the sweep goes on; a time limit turns the remaining
// rows into "skipped" with that reason, so the run always ends with a complete report.
import os from "node:os";
import process from "node:process";
import type { Backend } from "../lib/backend.ts";
import { type BackendChoice, chooseBackend, noBackendError } from "../lib/select.ts";
import { type BackendName, backendNames } from "../lib/vocabulary.ts";
import { measureCopyBandwidth } from "./copy.ts";
import { attentionFlops, gigabytesPerSecond, tflopsPerSecond } from "./flops.ts";
import {
  type Algorithm,
  implName,
  measureOurs,
  memoryLimit,
  problemFor,
  SpeedMemory,
  type TimingPlan,
} from "./ours.ts";
import {
  BENCH_SCHEMA,
  type BenchConfig,
  type BenchReport,
  type CopyBandwidth,
  bytesMoved,
  entryComparisons,
  type ImplStatus,
  type Measurement,
} from "./results.ts";
import { summarize } from "./stats.ts";
import {
  baselineEquivalent,
  baselineProblem,
  type BenchCase,
  expandSweep,
  type PresetName,
  type SweepSpec,
} from "./sweep.ts";
import { baselineScript, PythonWorker } from "./baselines/worker.ts";
import { type ProgressSink, silentProgress } from "./report/progress.ts";
import { formatRate } from "./report/table.ts";
import { type DriverReader, hostFact, machineFacts } from "./machine.ts";
import { KernelChecks } from "./verify.ts";

/**
 * Timing per preset. The fa preset must fit well under 8 minutes on an H100 with every baseline: 72 cases, up to 7
 * implementations each, 300 ms of timed kernel time per implementation and case at most (fewer runs for slow
 * ones, never fewer than 5), and a hard limit of 7 minutes after which rows are "skipped". The decode preset's 60
 * cases (half of them through the KV-cache entry) take a few seconds each on a GPU with every baseline.
 */
export const presetTiming: Record<PresetName, TimingPlan & { maxSeconds: number }> = {
  fa: { warmup: 3, iters: 30, minIters: 5, caseBudgetMs: 300, maxSeconds: 420 },
  decode: { warmup: 5, iters: 50, minIters: 10, caseBudgetMs: 200, maxSeconds: 420 },
  quick: { warmup: 1, iters: 10, minIters: 3, caseBudgetMs: 100, maxSeconds: 60 },
};

export const sdpaImpls = ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math"] as const;
export const baselineNames = ["naive", ...sdpaImpls, "numpy"] as const;
export type BaselineName = typeof baselineNames[number];

export interface BenchOptions {
  preset: PresetName;
  /** bench --model: which model the spec is the attention of (for the report) */
  model?: string;
  spec: SweepSpec;
  backend: BackendChoice;
  libPath?: string;
  baselines: BaselineName[];
  timing: TimingPlan;
  maxSeconds: number;
  python?: string;
  progress?: ProgressSink;
  env?: Record<string, string | undefined>;
  /** The backend decision made before (commands/bench.ts); made here when absent. */
  backends?: FoundBackends;
  /** how the report learns the NVIDIA driver's version when CUDA is measured (none: the report goes without) */
  readDriver?: DriverReader;
}

interface WorkerResult {
  impl: string;
  status: Measurement["status"];
  reason?: string;
  times_ms?: number[];
  peak_bytes?: number;
  dtype?: string;
}

type Hello = Record<string, unknown>;

/** Whether a run times the CPU: not for a GPU-sized preset when a GPU is usable, unless the user picked a backend. */
export function timesCpu(spec: SweepSpec, gpuUsable: boolean, backend: BackendChoice): boolean {
  return !(gpuUsable && spec.gpuSized && backend === "auto");
}

/** The backend decision of a bench run: our usable backends (preference order) and a status for every backend. */
export interface FoundBackends {
  usable: Backend[];
  statuses: ImplStatus[];
}

/**
 * Our backends that can run `spec` here, by the same decision run and doctor use, and why the others cannot; made
 * once per run (commands/bench.ts also picks the default preset from it). The probe is the sweep's first case in
 * bf16 where the dtype is left open, which every backend reads. None usable is the environment error run and
 * doctor give too.
 */
export function findBackends(
  spec: SweepSpec,
  opts: { backend: BackendChoice; libPath?: string; env?: Record<string, string | undefined> },
): FoundBackends {
  const first = expandSweep(spec, { gpu: true })[0];
  const { decisions, usable } = chooseBackend(
    { problem: problemFor(first), direction: first.direction },
    { backend: opts.backend, libPath: opts.libPath, env: opts.env },
  );
  const statuses: ImplStatus[] = [];
  for (const d of decisions) {
    const backend = usable.get(d.backend);
    statuses.push({
      impl: implName("flash", d.backend),
      family: "ours",
      place: d.backend,
      available: !!backend,
      ...(backend
        ? { detail: { library: backend.path, kernel: d.kernel } }
        : { reason: d.reasons.join("; ") || d.verdict }),
    });
  }
  if (usable.size === 0) throw noBackendError(decisions);
  return { usable: backendNames.map((n) => usable.get(n)).filter((b): b is Backend => !!b), statuses };
}

/** Whether a decision includes a GPU backend of ours. */
export const gpuAmong = (found: FoundBackends) => found.usable.some((b) => b.name !== "cpu");

/** Fills in the derived figures of a timed row: TFLOP/s, and for decode GB/s (decodeBytes) against the copy bandwidth. */
function withRates(m: Measurement, c: BenchCase, copies: CopyBandwidth[]): Measurement {
  if (m.status !== "ok" || !m.timing) return m;
  const ms = m.timing.medianMs;
  const out: Measurement = { ...m, tflops: tflopsPerSecond(attentionFlops(c, c.direction), ms) };
  if (c.kind === "decode") {
    out.gbps = gigabytesPerSecond(bytesMoved(c, m), ms);
    const copy = copies.find((x) => x.place === m.place);
    if (copy) out.copyFraction = out.gbps / copy.gbps;
  }
  return out;
}

/** A Python baseline: its worker (when it started) and the implementations it serves. */
interface PythonBaseline {
  name: string;
  impls: string[];
  family: "torch" | "numpy";
  place: BackendName;
  worker?: PythonWorker<Hello>;
  down?: string;
}

async function startBaseline(
  name: string,
  script: string,
  impls: string[],
  family: "torch" | "numpy",
  place: BackendName,
  statuses: ImplStatus[],
  opts: BenchOptions,
): Promise<PythonBaseline> {
  const started = await PythonWorker.start<Hello>(baselineScript(script), {
    python: opts.python,
    timeoutMs: 120_000,
    env: opts.env,
  });
  const base: PythonBaseline = { name, impls, family, place };
  if ("worker" in started) base.worker = started.worker;
  for (const impl of impls) {
    statuses.push(
      "worker" in started
        ? { impl, family, place, available: true, detail: started.worker.hello }
        : { impl, family, place, available: false, reason: started.unavailable },
    );
  }
  return base;
}

export async function runBench(opts: BenchOptions): Promise<BenchReport> {
  const progress = opts.progress ?? silentProgress;
  const t0 = performance.now();
  const deadline = t0 + opts.maxSeconds * 1000;
  const config: BenchConfig = {
    preset: opts.preset,
    ...(opts.model ? { model: opts.model } : {}),
    warmup: opts.timing.warmup,
    iters: opts.timing.iters,
    minIters: opts.timing.minIters,
    caseBudgetMs: opts.timing.caseBudgetMs,
    maxSeconds: opts.maxSeconds,
  };

  const found = opts.backends ?? findBackends(opts.spec, opts);
  const statuses = [...found.statuses.map((s) => ({ ...s }))];
  const gpu = gpuAmong(found);
  let usable = found.usable;
  if (!timesCpu(opts.spec, gpu, opts.backend)) {
    usable = usable.filter((b) => b.name !== "cpu");
    for (const s of statuses.filter((x) => x.place === "cpu" && x.available)) {
      s.available = false;
      s.reason =
        `the ${opts.preset} preset is sized for a GPU (a CPU would spend minutes per shape); time it with --backend cpu`;
    }
  }
  const cases = expandSweep(opts.spec, { gpu });
  const wants = new Set(opts.baselines);

  for (const b of usable) {
    statuses.push(
      wants.has("naive") ? { impl: implName("naive", b.name), family: "naive", place: b.name, available: true } : {
        impl: implName("naive", b.name),
        family: "naive",
        place: b.name,
        available: false,
        reason: "not requested (--baselines)",
      },
    );
  }

  const copies: CopyBandwidth[] = [];
  if (cases.some((c) => c.kind === "decode")) {
    for (const b of usable) {
      try {
        copies.push(measureCopyBandwidth(b));
      } catch (e) {
        statuses.push({
          impl: `copy-${b.name}`,
          family: "ours",
          place: b.name,
          available: false,
          reason: `copy bandwidth not measured: ${(e as Error).message}`,
        });
      }
    }
  }

  const pythons: PythonBaseline[] = [];
  const gpuPlace = usable.find((b) => b.name !== "cpu")?.name ?? "cuda";
  const sdpaWanted = sdpaImpls.filter((i) => wants.has(i));
  if (sdpaWanted.length) {
    pythons.push(await startBaseline("torch", "torch_sdpa.py", [...sdpaWanted], "torch", gpuPlace, statuses, opts));
  }
  if (wants.has("numpy")) {
    if (usable.some((b) => b.name === "cpu")) {
      // NumPy's BLAS gets the threads our CPU library uses (FLASHATTN_NUM_THREADS, else every core): same cores.
      const env = opts.env ?? process.env;
      const threads = env.FLASHATTN_NUM_THREADS ||
        String(hostFact(() => os.availableParallelism?.() ?? os.cpus().length) ?? 1);
      const blas = Object.fromEntries(
        ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"].map((k) => [k, env[k] || threads]),
      );
      pythons.push(
        await startBaseline("numpy", "numpy_attention.py", ["numpy"], "numpy", "cpu", statuses, {
          ...opts,
          env: { ...env, ...blas },
        }),
      );
    } else {
      statuses.push({
        impl: "numpy",
        family: "numpy",
        place: "cpu",
        available: false,
        reason: "our CPU backend is not measured in this run, so NumPy has nothing to compare with",
      });
    }
  }

  const speeds = new SpeedMemory();
  const checks = new KernelChecks();
  const limits = new Map(usable.map((b) => [b.name, memoryLimit(b)]));
  const meanFlops = cases.reduce((s, c) => s + attentionFlops(c, c.direction), 0) / Math.max(1, cases.length);
  progress.start(cases.map((c) => 1 + attentionFlops(c, c.direction) / meanFlops));
  const measurements: Measurement[] = [];
  let timeLimited = false;

  try {
    for (const [index, c] of cases.entries()) {
      const rows: Measurement[] = [];
      const timeLeft = () => deadline - performance.now();
      const skip = (impl: string, family: Measurement["family"], place: BackendName) =>
        rows.push({
          caseId: c.id,
          impl,
          family,
          place,
          status: "skipped",
          reason: `the time limit (--max-seconds ${opts.maxSeconds}) was reached`,
        });

      const algorithms: Algorithm[] = wants.has("naive") ? ["flash", "naive"] : ["flash"];
      for (const b of usable) {
        for (const algorithm of algorithms) {
          if (timeLeft() <= 0) {
            timeLimited = true;
            skip(implName(algorithm, b.name), algorithm === "flash" ? "ours" : "naive", b.name);
            continue;
          }
          progress.step(index, `${c.id} · ${implName(algorithm, b.name)}`);
          const check = await checks.verify(b, c, algorithm);
          if (!check.pass && !check.unsupported) {
            rows.push({
              caseId: c.id,
              impl: implName(algorithm, b.name),
              family: algorithm === "flash" ? "ours" : "naive",
              place: b.name,
              status: "error",
              reason: `not timed: the kernel failed the reference check on ${check.shape}: ${
                check.error ?? `relative error ${check.relativeError!.toExponential(2)} > ${check.limit!.toExponential(2)}`
              }`,
              check,
            });
            continue;
          }
          const row = measureOurs(b, c, algorithm, { plan: opts.timing, memoryLimitBytes: limits.get(b.name)!, speeds });
          rows.push({ ...row, check });
        }
      }

      for (const py of pythons) {
        if (!py.worker) continue;
        if (timeLeft() <= 0) {
          timeLimited = true;
          for (const impl of py.impls) skip(impl, py.family, py.place);
          continue;
        }
        if (py.down) {
          for (const impl of py.impls) {
            rows.push({ caseId: c.id, impl, family: py.family, place: py.place, status: "error", reason: py.down });
          }
          continue;
        }
        const flops = attentionFlops(c, c.direction);
        const run: string[] = [];
        for (const impl of py.impls) {
          const tooSlow = speeds.skipReason(`${impl} ${c.direction}`, flops, opts.timing);
          if (tooSlow) {
            rows.push({ caseId: c.id, impl, family: py.family, place: py.place, status: "skipped", reason: tooSlow });
          } else run.push(impl);
        }
        if (run.length === 0) continue;
        progress.step(index, `${c.id} · ${run.join(", ")}`);
        // Each implementation may spend a few budgets plus set-up (cuDNN plans, first-call compiles); the time limit
        // of the run, with a little grace, caps that.
        const ownLimit = run.length * (opts.timing.caseBudgetMs * 3 + 30_000);
        const timeoutMs = Math.max(1000, Math.min(timeLeft() + 5000, ownLimit));
        try {
          const answer = await py.worker.request<{ results: WorkerResult[] }>({
            op: "case",
            // A KV-cache case is timed by the baselines as its contiguous equivalent (none has a paged cache,
            // an in-place append or rotary); their rows say so.
            case: baselineProblem(c),
            impls: run,
            warmup: opts.timing.warmup,
            iters: opts.timing.iters,
            min_iters: opts.timing.minIters,
            budget_ms: opts.timing.caseBudgetMs,
            memory_limit_bytes: limits.get("cpu") ?? 0,
          }, timeoutMs);
          for (const r of answer.results) {
            const m: Measurement = { caseId: c.id, impl: r.impl, family: py.family, place: py.place, status: r.status };
            const equivalent = baselineEquivalent(c);
            if (equivalent) m.equivalent = equivalent;
            if (r.reason) m.reason = r.reason;
            if (r.dtype && r.dtype !== c.dtype) m.dtype = r.dtype;
            if (r.status === "ok" && r.times_ms?.length) {
              m.timing = summarize(r.times_ms);
              if (r.peak_bytes !== undefined) m.peakBytes = r.peak_bytes;
              speeds.learn(`${r.impl} ${c.direction}`, flops, m.timing.medianMs);
            } else if (r.status === "ok") {
              m.status = "error";
              m.reason = "the worker returned no times";
            }
            rows.push(m);
          }
        } catch (e) {
          // Stopped by the run's time limit: these rows are skipped like the rest. Otherwise the worker is broken
          // (hung past its own allowance, crashed): its rows from here on are errors with that reason.
          if (timeoutMs < ownLimit && timeLeft() <= 0) {
            timeLimited = true;
            for (const impl of run) {
              rows.push({
                caseId: c.id,
                impl,
                family: py.family,
                place: py.place,
                status: "skipped",
                reason: `the time limit (--max-seconds ${opts.maxSeconds}) was reached while ${py.name} was running`,
              });
            }
          } else {
            py.down = `${py.name} baseline stopped: ${(e as Error).message}`;
            for (const impl of run) {
              rows.push({ caseId: c.id, impl, family: py.family, place: py.place, status: "error", reason: py.down });
            }
          }
        }
      }

      const finished = rows.map((m) => withRates(m, c, copies));
      measurements.push(...finished);
      const ours = finished.find((m) => m.family === "ours" && m.status === "ok");
      progress.done(
        index,
        `${c.id}: ${
          ours?.tflops !== undefined ? `${ours.impl} ${formatRate(ours.tflops)} TFLOP/s` : "no timing of ours"
        }`,
      );
    }
  } finally {
    progress.finish();
    for (const py of pythons) py.worker?.close();
  }

  return {
    ok: true,
    schema: BENCH_SCHEMA,
    createdAt: new Date().toISOString(),
    config,
    machine: await machineFacts(
      usable,
      pythons.map((p) => ({ name: p.name, hello: p.worker?.hello })),
      opts.readDriver,
    ),
    implementations: statuses,
    copyBandwidth: copies,
    cases,
    measurements,
    comparisons: entryComparisons(cases, measurements),
    elapsedSeconds: (performance.now() - t0) / 1000,
    timeLimited,
  };
}
