// facts (+ options) -> findings, summary and exit code. Pure: no I/O, no clock, no environment; the same facts give
// the same report on any machine (that is what `--facts FILE` relies on).
import type { DoctorFacts, DoctorOptions, Finding, Severity } from "../facts.ts";
import { amdRules } from "./amd.ts";
import { backendRules } from "./backend.ts";
import { libraryRules } from "./libraries.ts";
import { nodeRules } from "./node.ts";
import { nvidiaRules } from "./nvidia.ts";
import { pythonRules } from "./python.ts";
import { systemRules } from "./system.ts";
import { toolkitRules } from "./toolkits.ts";
import { contextParallelRules } from "./context_parallel.ts";

/**
 * Sections run in order; later ones see the findings before them, so a consequence (a library without a device)
 * can defer to its cause (a stub libcuda) instead of repeating it.
 */
export function evaluate(facts: DoctorFacts, options: DoctorOptions = {}): Finding[] {
  const findings: Finding[] = [];
  findings.push(...systemRules(facts));
  findings.push(...nvidiaRules(facts));
  findings.push(...nodeRules(facts, options));
  findings.push(...amdRules(facts));
  findings.push(...toolkitRules(facts));
  findings.push(...libraryRules(facts, findings));
  findings.push(...pythonRules(facts));
  findings.push(...backendRules(facts, options));
  findings.push(...contextParallelRules(facts));
  return findings;
}

export interface Verdict {
  errors: number;
  warnings: number;
  healthy: boolean;
  /** 0 healthy (warnings allowed), 1 at least one error */
  exitCode: 0 | 1;
  line: string;
}

const count = (findings: Finding[], severity: Severity) => findings.filter((f) => f.severity === severity).length;

export function verdict(findings: Finding[], chosen: string | undefined): Verdict {
  const errors = count(findings, "error"), warnings = count(findings, "warning");
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const backend = chosen ? `backend: ${chosen}` : "no usable backend";
  const line = errors + warnings === 0
    ? `No issues found; ${backend}.`
    : `Doctor found ${plural(errors, "error")} and ${plural(warnings, "warning")}; ${backend}.`;
  return { errors, warnings, healthy: errors === 0, exitCode: errors ? 1 : 0, line };
}
