// The report: built from facts by the rules, rendered for people (sections of one-line findings with ✓ ! ✗ •, the
// fix under every ! and ✗, details with --verbose, a summary line) or as one JSON document (doctor/schema.json).
import { paint, type Style } from "../commands/_output.ts";
import {
  type DoctorFacts,
  type DoctorOptions,
  type DoctorReport,
  type Finding,
  REPORT_SCHEMA_ID,
  type Section,
  type Severity,
} from "./facts.ts";
import { evaluate, verdict } from "./rules/index.ts";

export function buildReport(
  facts: DoctorFacts,
  options: DoctorOptions,
  meta: { version: string; runtime: string; createdAt: string; replayedFrom?: string },
): DoctorReport {
  const findings = evaluate(facts, options);
  const chosen = facts.flashattn.chosen ?? null;
  const v = verdict(findings, chosen ?? undefined);
  const report: DoctorReport = {
    schema: REPORT_SCHEMA_ID,
    created_at: meta.createdAt,
    tool: { name: "flashattn", version: meta.version, runtime: meta.runtime },
    options,
    summary: { errors: v.errors, warnings: v.warnings, chosen_backend: chosen, healthy: v.healthy, line: v.line },
    exit_code: v.exitCode,
    findings,
    backends: facts.flashattn.decisions,
    facts,
  };
  if (meta.replayedFrom) report.replayed_from = meta.replayedFrom;
  return report;
}

const sectionTitles: Record<Section, string> = {
  system: "System",
  nvidia: "NVIDIA",
  amd: "AMD",
  toolkits: "Toolkits",
  libraries: "flashattn libraries",
  python: "Python stack",
  backend: "Backend decision",
};

const marks: Record<Severity, { mark: string; style: Style }> = {
  ok: { mark: "✓", style: "green" },
  info: { mark: "•", style: "dim" },
  warning: { mark: "!", style: "yellow" },
  error: { mark: "✗", style: "red" },
};

export function renderHuman(report: DoctorReport, opts: { color: boolean; verbose: boolean }): string {
  const c = opts.color;
  const lines: string[] = [];
  const host = report.facts.host;
  const origin = report.replayed_from
    ? `replaying ${report.replayed_from}, captured ${report.created_at} with ${host.runtime}`
    : host.runtime;
  lines.push(paint("bold", `flashattn doctor`, c) + paint("dim", ` (${origin}; ${host.os}, ${host.arch})`, c));

  const bySection = new Map<Section, Finding[]>();
  for (const f of report.findings) bySection.set(f.section, [...(bySection.get(f.section) ?? []), f]);
  for (const [section, findings] of bySection) {
    lines.push("", paint("bold", sectionTitles[section], c));
    for (const f of findings) {
      const { mark, style } = marks[f.severity];
      lines.push(`  ${paint(style, mark, c)} ${f.message}`);
      const showFix = f.fix && (f.severity === "error" || f.severity === "warning" || opts.verbose);
      if (showFix) lines.push(`    ${paint("dim", "fix:", c)} ${f.fix}`);
      if (opts.verbose) { for (const d of f.details ?? []) lines.push(paint("dim", `      ${d}`, c)); }
    }
  }
  const s = report.summary;
  const style: Style = s.errors ? "red" : s.warnings ? "yellow" : "green";
  lines.push("", paint(style, s.line, c));
  if (!opts.verbose) {
    lines.push(
      paint("dim", "(details: flashattn doctor --verbose; for a bug report: flashattn doctor --json > doctor.json)", c),
    );
  }
  return lines.join("\n") + "\n";
}
