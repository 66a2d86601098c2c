// The report: built from facts by the rules, rendered for people (sections of one-line findings with ✓ ! ✗ •, the
// fix under every ! and ✗, details with --verbose, a summary line) or as one JSON document (doctor/schema.json).
// Every string in a report may come from outside (a tool's output, a library's self-description, a saved report
// replayed with --facts): the human form shows its control characters as escapes, line by line.
import { paint, printable, type Style } from "../lib/terminal.ts";
import {
  type DoctorFacts,
  type DoctorOptions,
  type DoctorReport,
  type Finding,
  REPORT_SCHEMA_ID,
  type Section,
  type Severity,
} from "./facts.ts";
import { redactFacts } from "./redact.ts";
import { decideFromFacts } from "./rules/backend.ts";
import { evaluate, verdict } from "./rules/index.ts";
import { adviseModel, modelFindings } from "./model/advice.ts";

export function buildReport(
  collected: DoctorFacts,
  options: DoctorOptions,
  meta: { version: string; runtime: string; createdAt: string; replayedFrom?: string },
): DoctorReport {
  // The one door facts come in by, collected here or replayed from a file: no credential gets past it.
  const facts = redactFacts(collected);
  const findings = evaluate(facts, options);
  const model = facts.model && adviseModel(facts.model, facts);
  if (facts.model && model) findings.push(...modelFindings(facts.model, model));
  // The decision recomputed from the facts, as the rules see them: live and replayed reports give the same verdict.
  const decided = decideFromFacts(facts);
  const chosen = decided.chosen ?? null;
  const v = verdict(findings, chosen ?? undefined);
  const report: DoctorReport = {
    schema: REPORT_SCHEMA_ID,
    created_at: meta.createdAt,
    tool: { name: "flashattn", version: meta.version, runtime: meta.runtime },
    options,
    summary: { errors: v.errors, warnings: v.warnings, chosen_backend: chosen, healthy: v.healthy, line: v.line },
    exit_code: v.exitCode,
    findings,
    backends: decided.decisions,
    ...(model ? { model } : {}),
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
  model: "Model",
  parallel: "Context parallelism",
};

const marks: Record<Severity, { mark: string; style: Style }> = {
  ok: { mark: "✓", style: "green" },
  info: { mark: "•", style: "dim" },
  warning: { mark: "!", style: "yellow" },
  error: { mark: "✗", style: "red" },
};

export function renderHuman(report: DoctorReport, opts: { color: boolean; verbose: boolean }): string {
  const c = opts.color;
  // Text from the report, made inert; only our own colours reach the terminal as escape sequences.
  const show = (style: Style | undefined, text: string) => style ? paint(style, printable(text), c) : printable(text);
  const lines: string[] = [];
  const host = report.facts.host;
  const origin = report.replayed_from
    ? `replaying ${report.replayed_from}, captured ${report.created_at} with ${host.runtime}`
    : host.runtime;
  lines.push(show("bold", `flashattn doctor`) + show("dim", ` (${origin}; ${host.os}, ${host.arch})`));

  const bySection = new Map<Section, Finding[]>();
  for (const f of report.findings) bySection.set(f.section, [...(bySection.get(f.section) ?? []), f]);
  for (const [section, findings] of bySection) {
    lines.push("", show("bold", sectionTitles[section]));
    for (const f of findings) {
      const { mark, style } = marks[f.severity];
      lines.push(`  ${show(style, mark)} ${show(undefined, f.message)}`);
      const showFix = f.fix && (f.severity === "error" || f.severity === "warning" || opts.verbose);
      if (showFix) lines.push(`    ${show("dim", "fix:")} ${show(undefined, f.fix!)}`);
      if (opts.verbose) { for (const d of f.details ?? []) lines.push(show("dim", `      ${d}`)); }
    }
  }
  const s = report.summary;
  const style: Style = s.errors ? "red" : s.warnings ? "yellow" : "green";
  lines.push("", show(style, s.line));
  if (!opts.verbose) {
    lines.push(
      show("dim", "(details: flashattn doctor --verbose; for a bug report: flashattn doctor --json > doctor.json)"),
    );
  }
  return lines.join("\n") + "\n";
}
