// The human report on stdout: a header with the machine facts and what was not measured (with why), then one row
// per case and one column per implementation. Prefill cells read "TFLOP/s", decode cells "GB/s moved (share of
// the copy bandwidth)"; a baseline's cell ends with ×N, how many times faster ours is on the same place (above 1:
// ours wins). A report with KV-cache cases adds three columns: the entry each row times, our time against the
// reference row of the same shape (paged against contiguous, append against none, KV-cache against fa_forward)
// and what the baselines timed instead; a report of fp8 cases adds the "vs ref" column (fp8 against our bf16). A second table gives the peak memory of one call, where the naive
// algorithm's O(seqlen²) scores show; the notes say why any cell is not a number.
import { type BenchReport, type EntryComparison, FP8_TIME_RATIO_TARGET, type Measurement, speedupOfOurs } from "../results.ts";
import { geometricMean } from "../stats.ts";
import { type BenchCase, entryOf } from "../sweep.ts";
import { paint, printable, type Style } from "../../lib/terminal.ts";

export interface TableOptions {
  color: boolean;
}

const statusWord: Record<Measurement["status"], string> = {
  ok: "",
  oom: "OOM",
  unsupported: "n/a",
  skipped: "skipped",
  error: "error",
};

const colour = (on: boolean, style: Style, text: string) => paint(style, text, on);
// Width without ANSI codes, for padding coloured cells.
// deno-lint-ignore no-control-regex -- ESC is what an ANSI colour code starts with
const visibleLength = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "").length;
const padEnd = (s: string, n: number) => s + " ".repeat(Math.max(0, n - visibleLength(s)));
const padStart = (s: string, n: number) => " ".repeat(Math.max(0, n - visibleLength(s))) + s;

export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return "";
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  return `${(bytes / 2 ** 10).toFixed(0)} KiB`;
}

/** A short duration as a person reads it: µs below a millisecond. */

/** Three significant figures at most, whole numbers from 100 up (TFLOP/s of a CPU are 0.0x, of a GPU 100s). */
export function formatRate(v: number): string {
  if (!Number.isFinite(v)) return "?";
  if (v >= 100) return v.toFixed(0);
  return String(Number(v.toPrecision(3)));
}

/** The implementations with at least one row, in report order (ours first, then baselines). */
export function measuredImpls(report: BenchReport): string[] {
  const seen = new Set(report.measurements.map((m) => m.impl));
  return report.implementations.map((i) => i.impl).filter((impl, i, all) => seen.has(impl) && all.indexOf(impl) === i);
}

function rateCell(report: BenchReport, c: BenchCase, m: Measurement | undefined, color: boolean): string {
  if (!m) return "";
  if (m.status !== "ok") return colour(color, "dim", statusWord[m.status]);
  const rate = c.kind === "decode"
    ? `${formatRate(m.gbps ?? NaN)}${m.copyFraction !== undefined ? ` (${Math.round(m.copyFraction * 100)}%)` : ""}`
    : formatRate(m.tflops ?? NaN);
  const speedup = speedupOfOurs(report, m);
  if (speedup === undefined) return rate;
  return `${rate} ${colour(color, speedup >= 1 ? "green" : "red", `×${speedup.toFixed(2)}`)}`;
}

function grid(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(visibleLength(h), ...rows.map((r) => visibleLength(r[i] ?? ""))));
  const line = (cells: string[]) =>
    cells.map((cell, i) => (i === 0 ? padEnd(cell, widths[i]) : padStart(cell, widths[i]))).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

function machineLines(report: BenchReport): string[] {
  const lines: string[] = [];
  const m = report.machine as {
    host?: { cpu?: string; cpu_count?: number; runtime?: string };
    libraries?: {
      backend: string;
      version?: string;
      compiler?: string;
      path: string;
      device?: { name?: string; arch?: string; driver_version?: unknown };
    }[];
    nvidia?: { driver_version?: string };
    baselines?: Record<string, Record<string, unknown>>;
  };
  if (m.host) {
    const cpu = m.host.cpu ? `${m.host.cpu}${m.host.cpu_count ? ` ×${m.host.cpu_count}` : ""}` : undefined;
    lines.push(`host: ${[cpu, m.host.runtime].filter(Boolean).join(", ")}`);
  }
  for (const lib of m.libraries ?? []) {
    const d = lib.device ?? {};
    const driver = lib.backend === "cuda" && m.nvidia?.driver_version ? `, driver ${m.nvidia.driver_version}` : "";
    lines.push(
      `${lib.backend}: ${d.name ?? "?"} ${d.arch ?? ""}${driver}; libflashattn_${lib.backend} ${lib.version ?? "?"} (${
        lib.compiler ?? "?"
      })`,
    );
  }
  const torch = m.baselines?.torch;
  if (torch) {
    lines.push(`torch ${torch.torch} (CUDA ${torch.cuda ?? "-"}, cuDNN ${torch.cudnn ?? "-"}) on ${torch.device}`);
  }
  const numpy = m.baselines?.numpy;
  if (numpy) lines.push(`numpy ${numpy.numpy} (python ${numpy.python})`);
  for (const c of report.copyBandwidth) {
    lines.push(`copy bandwidth (${c.place}, ${c.device}): ${formatRate(c.gbps)} GB/s`);
  }
  // Device names, versions and paths come from libraries and tools: shown inert.
  return lines.map(printable);
}

/** Why each cell that holds no number holds none, grouped so 30 identical reasons take one line. */
function notes(report: BenchReport): string[] {
  // Reasons that differ only in their numbers ("it takes 105 ms", "it takes 520 ms") share a line with the range.
  const groups = new Map<string, string[]>();
  for (const m of report.measurements) {
    if (m.status === "ok" && !m.reason) continue;
    const text = `${m.impl} ${m.status === "ok" ? "note" : statusWord[m.status]}: ${m.reason ?? "no reason given"}`;
    const key = text.replace(NUMBER, "#");
    groups.set(key, [...(groups.get(key) ?? []), text]);
  }
  const lines = [...groups.values()].map((texts) => `  ${printable(mergeNumbers(texts))}${texts.length > 1 ? ` (${texts.length} cases)` : ""}`);
  // Runs whose middle half spreads over 10 % of the median: a busy machine or a clock that moved; read with care.
  const noisy = new Map<string, Measurement[]>();
  for (const m of report.measurements) {
    if (m.timing && m.timing.iters > 1 && m.timing.spread > NOISY_SPREAD) {
      noisy.set(m.impl, [...(noisy.get(m.impl) ?? []), m]);
    }
  }
  for (const [impl, rows] of noisy) {
    const worst = rows.reduce((a, b) => (b.timing!.spread > a.timing!.spread ? b : a));
    lines.push(
      `  ${impl} noisy: spread over ${NOISY_SPREAD * 100}% of the median on ${rows.length} case${
        rows.length > 1 ? "s" : ""
      } (worst ${Math.round(worst.timing!.spread * 100)}% on ${worst.caseId})`,
    );
  }
  return lines;
}

const entryName = { forward: "fa_forward", kvcache: "fa_forward_kvcache" } as const;
const againstWords: Record<EntryComparison["against"], string> = {
  contiguous: "contiguous",
  "no append": "no append",
  forward: "fa_forward",
  bf16: "bf16",
};

/** "1.04× contiguous ✓": our time over the reference row's, and whether it meets the issue's bound. */
export function comparisonCell(x: EntryComparison | undefined, color: boolean): string {
  if (!x) return "";
  const text = `${x.ratio.toFixed(2)}× ${againstWords[x.against]}`;
  if (x.target === undefined) return text;
  const met = x.ratio <= x.target;
  return `${text} ${colour(color, met ? "green" : "red", met ? "✓" : "✗")}`;
}

/**
 * The columns of a report with KV-cache cases or fp8 comparisons (none otherwise): for KV-cache cases the entry timed
 * and what the baselines timed; for both our time against the reference row (for our first implementation with
 * comparisons); and the notes that define them.
 */
function entryColumns(report: BenchReport, impls: string[], color: boolean) {
  const comparisons = report.comparisons ?? [];
  const kvcache = report.cases.some((c) => c.kvcache);
  const fp8 = comparisons.some((x) => x.against === "bf16");
  if (!kvcache && !fp8) return { header: [], cells: (_: BenchCase) => [], notes: [] };
  const impl = impls.find((i) => comparisons.some((x) => x.impl === i));
  const vsRef = (c: BenchCase) => comparisonCell(comparisons.find((x) => x.caseId === c.id && x.impl === impl), color);
  const references = [
    ...(kvcache
      ? ["paged → the contiguous KV-cache row (target ≤ 1.10), append+rotary → the KV-cache row without append (target ≤ 1.05), KV-cache → the fa_forward row"]
      : []),
    ...(fp8
      ? [`fp8 → our bf16 forward on the same shape, the bf16 row below it (on a GPU at head_dim 128 and 256 from seqlen 4k target ≤ ${FP8_TIME_RATIO_TARGET}: fp8 at least 1.6× faster)`]
      : []),
  ];
  const notes = [
    ...(kvcache
      ? ["  fa_forward_kvcache rows are timed inside the library by fa_bench_kvcache, as fa_bench times fa_forward rows (the cache flushed before each run, device events): the append, rotary and attention kernels; the call's host-side check of its int32 arrays (on a GPU a blocking read of them) is not in the time"]
      : []),
    `  vs ref${impl ? ` (${impl})` : ""}: median time over the reference row's: ${references.join(", ")}`,
    ...(kvcache
      ? ["  baselines time: on KV-cache rows no baseline has a paged cache, an in-place append or rotary; they time the contiguous equivalent (the same q against the attended keys in one contiguous K and V), for append+rotary the plain contiguous decode"]
      : []),
  ];
  const bounds = [
    ["contiguous", "paged within 10% of contiguous"],
    ["no append", "append+rotary within 5% of no append"],
    ["bf16", "fp8 at least 1.6× our bf16 forward"],
  ] as const;
  for (const [against, what] of bounds) {
    const rows = comparisons.filter((x) => x.impl === impl && x.against === against && x.target !== undefined);
    if (rows.length) {
      notes.push(`  ${what}: ${rows.filter((x) => x.ratio <= x.target!).length} of ${rows.length} rows (worst ${
        Math.max(...rows.map((x) => x.ratio)).toFixed(2)
      }×)`);
    }
  }
  if (!kvcache) return { header: ["vs ref"], cells: (c: BenchCase) => [vsRef(c)], notes };
  const baselinesTime = (c: BenchCase) =>
    !c.kvcache ? "" : c.kvcache.append > 0 || c.kvcache.rotary ? "plain decode" : "contiguous equiv.";
  return { header: ["entry", "vs ref", "baselines time"], cells: (c: BenchCase) => [entryName[entryOf(c)], vsRef(c), baselinesTime(c)], notes };
}

const NUMBER = /\d+(?:\.\d+)?/g;

/** Texts equal but for their numbers, as one: each number that differs between them becomes its range "lo–hi". */
export function mergeNumbers(texts: string[]): string {
  const numbers = texts.map((t) => (t.match(NUMBER) ?? []).map(Number));
  let i = 0;
  return texts[0].replace(NUMBER, (first) => {
    const values = numbers.map((n) => n[i]);
    i++;
    const [lo, hi] = [Math.min(...values), Math.max(...values)];
    return lo === hi ? first : `${lo}–${hi}`;
  });
}

/** Interquartile range over median above which a row is called noisy. */
const NOISY_SPREAD = 0.1;

export function renderTable(report: BenchReport, opts: TableOptions): string {
  const { color } = opts;
  const out: string[] = [];
  out.push(...machineLines(report));
  // Implementations missing for the same reason (the four SDPA backends without torch) share one line.
  const missing = new Map<string, string[]>();
  for (const i of report.implementations.filter((x) => !x.available)) {
    const reason = i.reason ?? "no reason given";
    missing.set(reason, [...(missing.get(reason) ?? []), i.impl]);
  }
  for (const [reason, impls] of missing) out.push(`not measured: ${impls.join(", ")}: ${printable(reason)}`);
  out.push("");

  const impls = measuredImpls(report);
  const byCase = new Map<string, Map<string, Measurement>>();
  for (const m of report.measurements) {
    if (!byCase.has(m.caseId)) byCase.set(m.caseId, new Map());
    byCase.get(m.caseId)!.set(m.impl, m);
  }
  const kinds = new Set(report.cases.map((c) => c.kind));
  const decodeUnit = "GB/s moved: K+V, q, o, appended rows (share of copy bandwidth)";
  const unit = kinds.size > 1
    ? `TFLOP/s (prefill) or ${decodeUnit} (decode)`
    : kinds.has("decode")
    ? decodeUnit
    : "TFLOP/s";
  out.push(`${unit}; ×N = ours is N times faster than that baseline (median of timed runs)`);
  const entries = entryColumns(report, impls, color);
  out.push(
    grid(
      ["case", ...entries.header, ...impls],
      report.cases.map((c) => [
        c.id,
        ...entries.cells(c),
        ...impls.map((impl) => rateCell(report, c, byCase.get(c.id)?.get(impl), color)),
      ]),
    ),
  );
  out.push("");
  out.push("peak memory of one call (inputs and outputs included)");
  out.push(grid(
    ["case", ...impls],
    report.cases.map((c) => [
      c.id,
      ...impls.map((impl) => {
        const m = byCase.get(c.id)?.get(impl);
        return !m ? "" : m.status === "ok" ? formatBytes(m.peakBytes) : colour(color, "dim", statusWord[m.status]);
      }),
    ]),
  ));

  const summary: string[] = [];
  for (const impl of impls) {
    const ratios = report.measurements.filter((m) => m.impl === impl).map((m) => speedupOfOurs(report, m)).filter((
      r,
    ): r is number => r !== undefined);
    if (ratios.length) summary.push(`  vs ${impl}: ×${geometricMean(ratios).toFixed(2)} over ${ratios.length} cases`);
  }
  if (summary.length) out.push("", "ours against each baseline (geometric mean of the speed-ups):", ...summary);
  const why = [...entries.notes, ...notes(report)];
  if (why.length) out.push("", "notes:", ...why);
  if (report.timeLimited) {
    out.push("", `the time limit of ${report.config.maxSeconds} s cut the run short; the remaining rows say "skipped"`);
  }
  out.push("", `${report.cases.length} cases in ${report.elapsedSeconds.toFixed(1)} s`);
  return out.join("\n") + "\n";
}
