// The backend decision's rules that need no library: who is out by the user's choice, why a library that did not
// load is out, and which of the rest is chosen. lib/select.ts decides live with them; the doctor replays saved facts
// with them (doctor/rules/backend.ts), so a report edited by hand gets the verdict the live decision would give.
import type { BackendName } from "./vocabulary.ts";

export type BackendChoice = "auto" | BackendName;
export type Verdict = "chosen" | "usable" | "rejected" | "disabled";

/**
 * One reason for a library that did not load: "not built" when no candidate file exists, otherwise the first real
 * loader error (ABI mismatch, missing symbol, ...). The full attempt list stays in the decision for doctor.
 */
export function notLoadedReason(
  name: BackendName,
  attempts: readonly { path: string; source: string; ok: boolean; error?: string }[],
): string {
  const real = attempts.find((a) => !a.ok && a.source !== "system" && a.error !== "no such file");
  if (real) return `${real.path}: ${real.error}`;
  return `libflashattn_${name}.so not found (not built here: \`bun kernels/build.ts ${name}\`)`;
}

/** Why a backend the user did not pick is out of the running, or undefined when it is a candidate. */
export function userDisabledReason(name: BackendName, choice: BackendChoice, source?: string): string | undefined {
  return choice !== "auto" && name !== choice ? `the user chose ${choice} (${source})` : undefined;
}

/**
 * The verdicts, from what each backend offered: disabled (a reason of the user's choice), rejected (reasons), or
 * usable, the first usable in preference order (cuda, hip, cpu) chosen. Pure: the doctor replays saved facts with it.
 */
export function assignVerdicts<T extends { backend: BackendName; disabled?: string; reasons: string[] }>(
  offers: T[],
): (Omit<T, "disabled"> & { verdict: Verdict })[] {
  const decided = offers.map(({ disabled, ...rest }) => ({
    ...rest,
    reasons: disabled ? [disabled] : rest.reasons,
    verdict: (disabled ? "disabled" : rest.reasons.length ? "rejected" : "usable") as Verdict,
  }));
  const first = decided.find((d) => d.verdict === "usable");
  if (first) first.verdict = "chosen";
  return decided;
}
