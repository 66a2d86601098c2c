// `flashattn bench`: our kernels against the naive algorithm, PyTorch SDPA's backends and NumPy, on the sweeps the
// field quotes (bench/sweep.ts), timed natively. parseBenchOptions() turns the raw flags into a BenchPlan with no
// I/O (every bad flag is one USAGE sentence, tested directly); executeBench() runs it and writes the outputs.
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import type { Command } from "@commander-js/extra-typings";
import { FlashAttnError } from "../lib/errors.ts";
import type { BackendChoice } from "../lib/select.ts";
import { backendNames } from "../lib/vocabulary.ts";
import { checkOutputTargets, writeFileAtomic } from "../formats/atomic.ts";
import {
  applyOverrides,
  MODEL_SEQLENS,
  modelSweep,
  parseSizeList,
  type PresetName,
  presetNames,
  presets,
  type SweepOverrides,
  type SweepSpec,
} from "../bench/sweep.ts";
import { readModel } from "../doctor/model/read.ts";
import { modelProblems, problemText } from "../doctor/model/kernels.ts";
import {
  type BaselineName,
  baselineNames,
  type BenchOptions,
  findBackends,
  gpuAmong,
  presetTiming,
  runBench,
  sdpaImpls,
} from "../bench/run.ts";
import type { BenchReport } from "../bench/results.ts";
import { renderTable } from "../bench/report/table.ts";
import { renderCsv } from "../bench/report/csv.ts";
import { renderSvg } from "../bench/report/svg.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import type { NvmlFacts } from "../doctor/facts.ts";
import { silentProgress, StderrProgress } from "../bench/report/progress.ts";
import {
  CONTEXT_PARALLEL_PRESET,
  parseContextParallelFlags,
  renderContextParallel,
  runContextParallelBench,
} from "../bench/context_parallel.ts";
import { action, EXIT_FAILURE, printJson, progress, useColor } from "./_output.ts";
import { benchDevicesCommand } from "./bench_devices.ts";

/** The raw option values commander hands over. */
export interface RawBenchOptions extends SweepOverrides {
  preset?: string;
  model?: string;
  backend?: string;
  lib?: string;
  baselines?: string;
  warmup?: string;
  iters?: string;
  minIters?: string;
  caseBudgetMs?: string;
  maxSeconds?: string;
  csv?: string | boolean;
  chart?: string;
  save?: string;
  python?: string;
  quiet?: boolean;
  devices?: string;
}

export interface BenchPlan {
  /** undefined: fa where a GPU backend is usable, quick otherwise (decided when the backends are known). */
  preset?: PresetName;
  /** bench --model: a local model directory or config.json whose attention is the sweep */
  model?: string;
  overrides: SweepOverrides;
  backend: BackendChoice;
  libPath?: string;
  baselines: BaselineName[];
  timing: Partial<{ warmup: number; iters: number; minIters: number; caseBudgetMs: number; maxSeconds: number }>;
  csv?: { path?: string };
  chart?: string;
  save?: string;
  python?: string;
  quiet: boolean;
}

const usage = (message: string, fix?: string): never => {
  throw new FlashAttnError("USAGE", message, fix);
};

function wholeNumber(flag: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    usage(`--${flag} takes a whole number in ${min}..${max}, not "${text}"`);
  }
  return n;
}

/** "naive,sdpa,numpy" → the baselines; "sdpa" means all four SDPA backends, "none" none, "all" all. */
export function parseBaselines(text: string | undefined): BaselineName[] {
  if (text === undefined || text.trim() === "all") return [...baselineNames];
  if (text.trim() === "none") return [];
  const out = new Set<BaselineName>();
  for (const item of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    if (item === "sdpa" || item === "torch") sdpaImpls.forEach((i) => out.add(i));
    else if ((baselineNames as readonly string[]).includes(item)) out.add(item as BaselineName);
    else {usage(
        `--baselines: unknown baseline "${item}"`,
        `use a comma list of ${["naive", "sdpa", ...sdpaImpls, "numpy"].join(", ")}, or all / none`,
      );}
  }
  return [...out];
}

export function parseBenchOptions(raw: RawBenchOptions): BenchPlan {
  let preset: PresetName | undefined;
  if (raw.preset !== undefined) {
    if (!(presetNames as readonly string[]).includes(raw.preset)) {
      usage(`--preset takes ${[...presetNames, CONTEXT_PARALLEL_PRESET].join(", ")}, not "${raw.preset}"`);
    }
    preset = raw.preset as PresetName;
  }
  const backend = (raw.backend ?? "auto") as BackendChoice;
  if (backend !== "auto" && !(backendNames as readonly string[]).includes(backend)) {
    usage(`--backend takes auto, cpu, cuda or hip, not "${raw.backend}"`);
  }
  const overrides: SweepOverrides = {
    seqlen: raw.seqlen,
    seqlenQ: raw.seqlenQ,
    hdim: raw.hdim,
    batch: raw.batch,
    heads: raw.heads,
    headsKv: raw.headsKv,
    causal: raw.causal,
    dtype: raw.dtype,
    direction: raw.direction,
    deterministic: raw.deterministic,
  };
  // Check the sweep flags now, against any preset: a typo fails before a library is even loaded.
  applyOverrides(presets.quick, overrides);
  if (raw.model !== undefined) {
    const shapeFlags: Array<[string, unknown]> = [
      ["--preset", raw.preset], ["--hdim", raw.hdim], ["--heads", raw.heads], ["--heads-kv", raw.headsKv],
      ["--causal", raw.causal], ["--seqlen-q", raw.seqlenQ],
    ];
    const clash = shapeFlags.find(([, value]) => value !== undefined);
    if (clash) usage(`--model takes the attention shape from the model; ${clash[0]} does not apply with it`);
  }
  if (raw.chart !== undefined && !raw.chart.toLowerCase().endsWith(".svg")) {
    usage(`--chart writes SVG: name a .svg file, not "${raw.chart}"`);
  }
  return {
    preset,
    model: raw.model,
    overrides,
    backend,
    libPath: raw.lib,
    baselines: parseBaselines(raw.baselines),
    timing: {
      warmup: wholeNumber("warmup", raw.warmup, 0, 1000),
      iters: wholeNumber("iters", raw.iters, 1, 100_000),
      minIters: wholeNumber("min-iters", raw.minIters, 1, 1000),
      caseBudgetMs: wholeNumber("case-budget-ms", raw.caseBudgetMs, 1, 3_600_000),
      maxSeconds: wholeNumber("max-seconds", raw.maxSeconds, 1, 7 * 24 * 3600),
    },
    csv: raw.csv === undefined || raw.csv === false ? undefined : { path: raw.csv === true ? undefined : raw.csv },
    chart: raw.chart,
    save: raw.save,
    python: raw.python,
    quiet: raw.quiet === true,
  };
}

/**
 * bench --model: the sweep of the model's text attention (its heads, KV heads, head dim, window, softcap, ALiBi),
 * timed as the fa preset is; --seqlen, --batch, --dtype and --direction still apply.
 */
export function modelBench(plan: BenchPlan): { spec: SweepSpec; model: string; problem: string } {
  const source = readModel(plan.model!);
  const text = modelProblems(source.needs)[0];
  const seqlens = plan.overrides.seqlen !== undefined ? parseSizeList("seqlen", plan.overrides.seqlen, 1 << 20) : MODEL_SEQLENS;
  const { batch, dtype, direction, deterministic } = plan.overrides;
  const sweep = modelSweep(text, seqlens, source.needs.text.max_positions);
  const spec = applyOverrides(sweep, { batch, dtype, direction, deterministic });
  const arch = source.needs.architectures[0];
  const lengths = spec.seqlens.join("/");
  const problem = problemText(text).replace(`seqlen ${text.seqlen}`, `seqlen ${lengths}`);
  return { spec, model: `${source.needs.model_type}${arch ? ` (${arch})` : ""}, ${source.config}`, problem };
}

export async function executeBench(plan: BenchPlan): Promise<BenchReport> {
  const model = plan.model === undefined ? undefined : modelBench(plan);
  if (model && !plan.quiet) {
    progress(`flashattn bench: ${model.model}: the text model's attention, ${model.problem} (a vision tower is not benched)`);
  }
  // The backend decision, once: it picks the default preset and is what the run measures.
  const probe = model?.spec ?? (plan.preset ? applyOverrides(presets[plan.preset], plan.overrides) : presets.quick);
  const backends = findBackends(probe, { backend: plan.backend, libPath: plan.libPath });
  // A model is timed as the fa preset: the same baselines, budgets and limit.
  const preset = model ? "fa" : plan.preset ?? (gpuAmong(backends) ? "fa" : "quick");
  const defaults = presetTiming[preset];
  const t = plan.timing;
  const options: BenchOptions = {
    preset,
    model: model?.model,
    spec: model?.spec ?? applyOverrides(presets[preset], plan.overrides),
    backend: plan.backend,
    libPath: plan.libPath,
    baselines: plan.baselines,
    timing: {
      warmup: t.warmup ?? defaults.warmup,
      iters: t.iters ?? defaults.iters,
      minIters: Math.min(t.minIters ?? defaults.minIters, t.iters ?? defaults.iters),
      caseBudgetMs: t.caseBudgetMs ?? defaults.caseBudgetMs,
    },
    maxSeconds: t.maxSeconds ?? defaults.maxSeconds,
    python: plan.python,
    progress: plan.quiet ? silentProgress : new StderrProgress(process.stderr),
    backends,
    // The driver as NVML reports it: the doctor's probe, in its own deadline-bound process.
    readDriver: () => runNativeProbe<NvmlFacts>("nvml", { timeoutMs: 10_000 }),
  };
  if (!plan.quiet && plan.preset === undefined && !model) progress(`flashattn bench: preset ${preset} (pass --preset to choose)`);
  return await runBench(options);
}

const encode = (text: string) => new TextEncoder().encode(text);

/**
 * Refuses, before the bench runs, a --csv or --save file that cannot be written (a missing folder is not created:
 * a typo in a path must not leave a new directory tree behind). The chart's folder is created (results/<device>/).
 */
export function checkOutputs(plan: BenchPlan): void {
  checkOutputTargets([plan.csv?.path, plan.save].filter((f): f is string => !!f));
}

/** Writes the files the flags ask for; returns one line per file written (for stderr). */
export function writeOutputs(report: BenchReport, plan: BenchPlan): string[] {
  if (plan.chart) fs.mkdirSync(path.dirname(path.resolve(plan.chart)), { recursive: true });
  const written: string[] = [];
  if (plan.chart) {
    writeFileAtomic(plan.chart, encode(renderSvg(report)));
    written.push(`chart: ${plan.chart}`);
  }
  if (plan.csv?.path) {
    writeFileAtomic(plan.csv.path, encode(renderCsv(report)));
    written.push(`csv: ${plan.csv.path}`);
  }
  if (plan.save) {
    writeFileAtomic(plan.save, encode(JSON.stringify(report, null, 2) + "\n"));
    written.push(`report: ${plan.save}`);
  }
  return written;
}

const examples = `
Examples:
  $ flashattn bench                                          # quick without a GPU, fa with one
  $ flashattn bench --preset fa --json --chart fa.svg > fa.json
  $ flashattn bench --preset decode --save decode.json       # decode over 4k..128k KV, GQA; KV-cache: paged, append, spec.
  $ flashattn bench --model ./Mistral-7B-v0.1 --seqlen 4k,16k  # the model's own attention, vs the fa baselines
  $ flashattn bench --seqlen 1k,4k --hdim 128 --causal both --direction fwd,bwd --baselines sdpa-flash,sdpa-cudnn
  $ flashattn bench --seqlen 8k --hdim 128 --direction bwd --deterministic   # the reproducible backward's cost
  $ flashattn bench --preset context-parallel --seqlen 512k  # ring attention over every GPU (NCCL) vs one GPU

Implementations: ours (every usable libflashattn backend), naive-<backend> (materialised scores, forward only),
sdpa-flash/-cudnn/-efficient/-math (PyTorch through python3, when torch sees a GPU), numpy (CPU rows). A baseline
that cannot run is listed with the reason; a case that does not fit or is unsupported says so on its row.
Timing: inside the library (CUDA/HIP events, a monotonic clock on the CPU), cache flushed before each run, median
of the timed runs. See docs/bench.md.`;

/**
 * --preset context-parallel: ring attention over every GPU (bench/context_parallel.ts), its own table and report.
 * Of bench's flags it reads --seqlen, --causal, --direction, --heads, --heads-kv, --warmup and --iters.
 */
function contextParallelCommand(raw: RawBenchOptions, json: boolean, quiet: boolean): void {
  const notForRing = ["model", "hdim", "batch", "dtype", "seqlenQ", "baselines", "csv", "chart", "lib", "backend", "deterministic"] as const;
  const ignored = notForRing.find((f) => raw[f] !== undefined);
  if (ignored) usage(`--${ignored.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())} does not apply to --preset ${CONTEXT_PARALLEL_PRESET} (head dim 128, bf16, batch 1, every GPU)`);
  const spec = parseContextParallelFlags({ ...raw, causal: raw.causal === undefined ? undefined : String(raw.causal) });
  if (raw.save) checkOutputTargets([raw.save]);
  const report = runContextParallelBench(spec, quiet ? () => {} : (line) => progress(line));
  if (raw.save) writeFileAtomic(raw.save, encode(JSON.stringify(report, null, 2) + "\n"));
  if (json) printJson(report);
  else process.stdout.write(renderContextParallel(report));
}

export function register(program: Command) {
  program.command("bench")
    .description("benchmark the attention kernels against naive, PyTorch SDPA and NumPy baselines")
    .option("--preset <name>", `sweep: ${[...presetNames, CONTEXT_PARALLEL_PRESET].join(", ")} (default: fa with a GPU, else quick)`)
    .option("--model <path>", "time this local model's own attention (heads, KV heads, head dim, window, softcap) at --seqlen (default 4k,16k)")
    .option("--seqlen <list>", "sequence lengths (KV length for decode), e.g. 512,1k,16k")
    .option("--seqlen-q <list>", "query lengths when they differ from --seqlen (decode: 1)")
    .option("--hdim <list>", "head dimensions, e.g. 64,128,256")
    .option("--batch <list>", "batch sizes (default: 16k tokens / seqlen for fa)")
    .option("--heads <list>", "query heads (default: 2048 / head dim for fa)")
    .option("--heads-kv <list>", "key/value heads (GQA/MQA when fewer than --heads)")
    .option("--causal <on|off|both>", "causal mask, bottom-right aligned")
    .option("--dtype <fp16|bf16|fp32|fp8_e4m3|fp8_e5m2>", "data type (default: bf16; quick on a CPU: fp32); fp8 adds each forward case's bf16 twin")
    .option("--direction <list>", "fwd, bwd, fwd+bwd (comma list)")
    .option("--deterministic", "our backward in deterministic mode (dQ summed in a fixed order); baselines run their default")
    .option("--backend <auto|cpu|cuda|hip>", "our backend(s) to measure (default auto: every usable one)")
    .option("--lib <path>", "explicit libflashattn_<backend>.so")
    .option(
      "--baselines <list>",
      "naive, sdpa (all four), sdpa-flash, sdpa-cudnn, sdpa-efficient, sdpa-math, numpy; all or none",
    )
    .option("--warmup <n>", "untimed runs before timing")
    .option("--iters <n>", "timed runs per case (fewer when a run is slow, see --case-budget-ms)")
    .option("--min-iters <n>", "fewest timed runs of a slow case")
    .option("--case-budget-ms <ms>", "timed kernel time one implementation may spend on one case")
    .option("--max-seconds <s>", "time limit of the whole run; later rows become 'skipped'")
    .option("--csv [file]", "CSV, one row per measurement (stdout without a file)")
    .option("--chart <file.svg>", "grouped bar chart per (direction, head dim, causal)")
    .option("--save <file.json>", "also write the JSON report to a file")
    .option("--python <path>", "interpreter for the torch and NumPy baselines (default FLASHATTN_PYTHON or python3)")
    .option("--quiet", "no progress on stderr")
    .option("--devices <all|0,2>", "one bf16 case on each of these GPUs at once: TFLOP/s per GPU, outliers flagged")
    .addHelpText("after", examples)
    .action(action(async (globals, raw: RawBenchOptions) => {
      if (raw.devices !== undefined) return await benchDevicesCommand({ ...raw }, globals);
      if (raw.preset === CONTEXT_PARALLEL_PRESET) return contextParallelCommand(raw, globals.json === true, raw.quiet === true);
      const plan = parseBenchOptions(raw);
      checkOutputs(plan);
      const report = await executeBench(plan);
      const written = writeOutputs(report, plan);
      if (globals.json) printJson(report);
      else if (plan.csv && !plan.csv.path) process.stdout.write(renderCsv(report));
      else process.stdout.write(renderTable(report, { color: useColor(process.stdout, globals.color) }));
      if (!plan.quiet) { for (const line of written) progress(`flashattn bench: wrote ${line}`); }
      // Unsupported shapes and OOM are results; our kernels failing on a device is not.
      const failed = report.measurements.filter((m) => m.family === "ours" && m.status === "error");
      if (failed.length) {
        progress(
          `flashattn bench: ${failed.length} of our measurements failed, first: ${failed[0].impl} on ${
            failed[0].caseId
          }: ${failed[0].reason}`,
        );
        return EXIT_FAILURE;
      }
    }));
}
