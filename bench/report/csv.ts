// One CSV row per measurement (RFC 4180 quoting), the case's shape spelled out in columns so a spreadsheet or
// pandas can pivot it without parsing ids. Units are in the column names.
import { type BenchReport, bytesMoved, speedupOfOurs } from "../results.ts";
import { entryOf } from "../sweep.ts";

const columns = [
  "case",
  "batch",
  "seqlen_q",
  "seqlen_k",
  "heads_q",
  "heads_kv",
  "head_dim",
  "causal",
  "dtype",
  "direction",
  "kind",
  "impl",
  "family",
  "place",
  "status",
  "reason",
  "median_ms",
  "min_ms",
  "p25_ms",
  "p75_ms",
  "max_ms",
  "spread",
  "iters",
  "tflops",
  "gbps",
  "copy_fraction",
  "peak_bytes",
  "speedup_of_ours",
  "kernel",
  "computed_dtype",
  "device",
  "driver",
  "library",
  "entry",
  "page_size",
  "append",
  "rotary",
  "bytes_moved",
  "baseline_equivalent",
  "reference_case",
  "ratio_to_reference",
] as const;

interface LibraryFacts {
  backend: string;
  version?: string;
  compiler?: string;
  device?: { name?: string; driver_version?: unknown };
}

/** The machine facts of each place (device name, driver, our library's build), so every row carries them. */
function placeFacts(report: BenchReport): Map<string, [string?, string?, string?]> {
  const m = report.machine as { libraries?: LibraryFacts[]; nvidia?: { driver_version?: string } };
  return new Map((m.libraries ?? []).map((lib) => {
    const driver = lib.backend === "cuda" && m.nvidia?.driver_version
      ? m.nvidia.driver_version
      : lib.device?.driver_version;
    return [lib.backend, [
      lib.device?.name,
      driver === undefined ? undefined : String(driver),
      `libflashattn_${lib.backend} ${lib.version ?? "?"} (${lib.compiler ?? "?"})`,
    ]];
  }));
}

function quote(value: unknown): string {
  if (value === undefined || value === null) return "";
  const text = typeof value === "number" ? (Number.isFinite(value) ? String(value) : "") : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function renderCsv(report: BenchReport): string {
  const cases = new Map(report.cases.map((c) => [c.id, c]));
  const facts = placeFacts(report);
  const lines = [columns.join(",")];
  for (const m of report.measurements) {
    const c = cases.get(m.caseId)!;
    const t = m.timing;
    const comparison = report.comparisons?.find((x) => x.caseId === m.caseId && x.impl === m.impl);
    const row = [
      c.id,
      c.batch,
      c.seqlenQ,
      c.seqlenK,
      c.headsQ,
      c.headsKv,
      c.headDim,
      c.causal,
      c.dtype,
      c.direction,
      c.kind,
      m.impl,
      m.family,
      m.place,
      m.status,
      m.reason,
      t?.medianMs,
      t?.minMs,
      t?.p25Ms,
      t?.p75Ms,
      t?.maxMs,
      t?.spread,
      t?.iters,
      m.tflops,
      m.gbps,
      m.copyFraction,
      m.peakBytes,
      speedupOfOurs(report, m),
      m.kernel,
      m.dtype,
      ...[0, 1, 2].map((i) => facts.get(m.place)?.[i]),
      entryOf(c),
      c.kvcache?.pageSize,
      c.kvcache?.append,
      c.kvcache?.rotary,
      c.kind === "decode" ? bytesMoved(c, m) : undefined,
      m.equivalent,
      comparison?.referenceId,
      comparison?.ratio,
    ];
    lines.push(row.map(quote).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}
