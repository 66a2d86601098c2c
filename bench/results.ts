// The bench report: what was measured, by which implementation, on which machine. Reporters (bench/report/*) only
// read this; `--json` prints it as is, so its keys carry their units (ms, bytes, tflops, gbps).
import { type BackendName, isFp8 } from "../lib/vocabulary.ts";
import { baselineProblem, type BenchCase, caseId, type KvCacheLayout, type PresetName } from "./sweep.ts";
import { decodeBytes } from "./flops.ts";
import type { TimingSummary } from "./stats.ts";

export const BENCH_SCHEMA = "flashattn.bench/1";

/** ours: a libflashattn backend; naive: its materialised-scores algorithm; torch: an SDPA backend; numpy: NumPy. */
export type ImplFamily = "ours" | "naive" | "torch" | "numpy";

/**
 * ok: timed. oom: out of memory (or predicted not to fit, said in reason). unsupported: the implementation cannot
 * run this case. skipped: not attempted (time limit, or predicted far over the per-case budget). error: it failed.
 */
export type RowStatus = "ok" | "oom" | "unsupported" | "skipped" | "error";

/** The check of a kernel path against the fp64 reference on a small case, made before the path is timed. */
export interface KernelCheck {
  /** The small case, e.g. "b1 q257 kv257 h2/2 d128". */
  shape: string;
  /** The kernel(s) that computed it. */
  kernel?: string;
  relativeError?: number;
  limit?: number;
  pass: boolean;
  /** Why the small case could not run at all (then pass is false). */
  error?: string;
  /** The library refused the small case as unsupported (the timed case says the same). */
  unsupported?: boolean;
}

export interface Measurement {
  caseId: string;
  impl: string;
  family: ImplFamily;
  /** Where it ran: "cpu", or the GPU backend kind ("cuda", "hip"); ratios compare rows of the same place. */
  place: BackendName;
  status: RowStatus;
  reason?: string;
  timing?: TimingSummary;
  tflops?: number;
  /**
   * Decode: the bytes the call must move (bench/flops.ts decodeBytes: K+V of the attended keys, q, o, appended rows)
   * per second (1e9), and that as a fraction of the device's copy bandwidth.
   */
  gbps?: number;
  copyFraction?: number;
  /** Peak memory of one call, inputs and outputs included. */
  peakBytes?: number;
  kernel?: string;
  /** When the implementation computed in another dtype than the case's (NumPy: fp32). */
  dtype?: string;
  /** Ours and naive: the reference check of this kernel path, made before it was timed. */
  check?: KernelCheck;
  /**
   * A baseline's row of a KV-cache case: the problem it timed instead ("contiguous equivalent", or for an append the
   * plain contiguous decode), since no baseline has a paged cache, an in-place append or rotary.
   */
  equivalent?: string;
}

/**
 * Our time on a case against ours on its reference case of the same shape, same implementation and place: for
 * KV-cache cases a paged cache against the contiguous cache (the issue's bound: within 10 %), an append with rotary
 * against the same cache without (within 5 %), a contiguous KV-cache call against the plain forward (no bound: the
 * two entries side by side); an fp8 forward against our bf16 forward (issue #18's bound on a GPU: at least 1.6×
 * faster, i.e. a time ratio of at most 0.625, at head_dim 128 and 256 from seqlen 4k).
 */
export interface EntryComparison {
  caseId: string;
  /** the case it is compared with */
  referenceId: string;
  impl: string;
  place: BackendName;
  against: "contiguous" | "no append" | "forward" | "bf16";
  /** median time of the case / median time of the reference: 1.04 is 4 % slower */
  ratio: number;
  /** the largest ratio the issue accepts, where it sets one */
  target?: number;
}

/** One implementation the run considered, measured or not, with the reason when it was not. */
export interface ImplStatus {
  impl: string;
  family: ImplFamily;
  place?: BackendName;
  available: boolean;
  reason?: string;
  detail?: Record<string, unknown>;
}

export interface CopyBandwidth {
  place: BackendName;
  device: string;
  bytes: number;
  medianMs: number;
  /** (read + written bytes) / median time, 1e9 bytes per second. */
  gbps: number;
  method: string;
}

export interface BenchConfig {
  preset: PresetName;
  /** bench --model: the model whose attention the cases are ("mistral (MistralForCausalLM), config.json path") */
  model?: string;
  warmup: number;
  iters: number;
  minIters: number;
  caseBudgetMs: number;
  maxSeconds: number;
}

export interface BenchReport {
  ok: true;
  schema: typeof BENCH_SCHEMA;
  createdAt: string;
  config: BenchConfig;
  machine: Record<string, unknown>;
  implementations: ImplStatus[];
  copyBandwidth: CopyBandwidth[];
  cases: BenchCase[];
  measurements: Measurement[];
  /** KV-cache and fp8 cases against their reference case (entryComparisons); absent from reports made before them. */
  comparisons?: EntryComparison[];
  /** Wall time of the whole run, and whether the time limit cut it short. */
  elapsedSeconds: number;
  timeLimited: boolean;
}

/** The measurement of ours that a row is compared with: the first "ours" implementation on the same place. */
export function referenceRow(report: BenchReport, m: Measurement): Measurement | undefined {
  const ours = report.implementations.find((i) => i.family === "ours" && i.available && i.place === m.place);
  if (!ours) return undefined;
  return report.measurements.find((x) => x.caseId === m.caseId && x.impl === ours.impl && x.status === "ok");
}

/**
 * How many times faster ours is than `m` on the same case and place (time of m / time of ours); undefined when
 * either side has no timing, or `m` is ours itself.
 */
export function speedupOfOurs(report: BenchReport, m: Measurement): number | undefined {
  if (m.family === "ours" || m.status !== "ok" || !m.timing) return undefined;
  const ref = referenceRow(report, m);
  if (!ref?.timing) return undefined;
  return m.timing.medianMs / ref.timing.medianMs;
}

/** fp8 forward time over bf16 forward time that issue #18 accepts on a GPU (fp8 at least 1.6× faster). */
export const FP8_TIME_RATIO_TARGET = 1 / 1.6;

interface Reference {
  id: string;
  against: EntryComparison["against"];
  target?: number;
  /** The target is a GPU's: fp8 tensor cores are what make fp8 faster; the CPU computes in fp32 whatever the input. */
  gpuOnly?: boolean;
}

/**
 * The reference a case is compared with: a KV-cache case's layout without paging, else without append, else plain;
 * an fp8 forward's bf16 twin (sweep.ts expandSweep).
 */
function referenceOf(c: BenchCase): Reference | undefined {
  const { id: _, ...shape } = c;
  if (isFp8(c.dtype) && c.direction === "fwd" && !c.kvcache) {
    const issueShape = (c.headDim === 128 || c.headDim === 256) && c.seqlenK >= 4096;
    return { id: caseId({ ...shape, dtype: "bf16" }), against: "bf16", ...(issueShape ? { target: FP8_TIME_RATIO_TARGET, gpuOnly: true } : {}) };
  }
  const l = c.kvcache;
  if (!l) return undefined;
  const as = (kvcache: KvCacheLayout | undefined) => caseId({ ...shape, kvcache });
  if (l.pageSize) return { id: as({ ...l, pageSize: undefined }), against: "contiguous", target: 1.1 };
  if (l.append > 0 || l.rotary) return { id: as({ append: 0, rotary: false }), against: "no append", target: 1.05 };
  return { id: as(undefined), against: "forward" };
}

/**
 * Every KV-cache or fp8 case whose reference case was also timed, by each of our implementations that timed both:
 * the ratio of the median times (the figures "paged within 10 % of contiguous", "append + rotary at most 5 % over
 * decode" and "fp8 at least 1.6× our bf16" are read from).
 */
export function entryComparisons(cases: BenchCase[], measurements: Measurement[]): EntryComparison[] {
  const ids = new Set(cases.map((c) => c.id));
  const timed = (m: Measurement) => m.family === "ours" && m.status === "ok" && m.timing !== undefined;
  const out: EntryComparison[] = [];
  for (const c of cases) {
    const ref = referenceOf(c);
    if (!ref || !ids.has(ref.id)) continue;
    for (const mine of measurements.filter((m) => m.caseId === c.id && timed(m))) {
      const theirs = measurements.find((m) => m.caseId === ref.id && m.impl === mine.impl && timed(m));
      if (!theirs) continue;
      out.push({
        caseId: c.id,
        referenceId: ref.id,
        impl: mine.impl,
        place: mine.place,
        against: ref.against,
        ratio: mine.timing!.medianMs / theirs.timing!.medianMs,
        ...(ref.target !== undefined && !(ref.gpuOnly && mine.place === "cpu") ? { target: ref.target } : {}),
      });
    }
  }
  return out;
}

/** The bytes a decode row's GB/s counts: of the case for ours, of the problem a baseline timed instead for the rest. */
export const bytesMoved = (c: BenchCase, m: Pick<Measurement, "family">) =>
  decodeBytes(m.family === "ours" ? c : baselineProblem(c));
