// The backend decision, recomputed from the facts with lib/verdicts.ts (the rules lib/select.ts decides by): each
// backend chosen, usable, disabled by the user, or rejected with its reasons; and `--require`, which turns "that
// backend is not usable" into an error. A report edited by hand (another driver, no device) gets the verdict a live
// decision would give on such a machine.
import type { BackendDecisionFacts, BackendName, DoctorFacts, DoctorOptions, Finding } from "../facts.ts";
import { assignVerdicts, type BackendChoice, notLoadedReason, userDisabledReason } from "../../lib/verdicts.ts";
import { backendNames } from "../../lib/vocabulary.ts";
import { hiddenByVisibleDevices } from "./nvidia.ts";
import {
  amdHardwarePresent,
  buildSupport,
  cudaLibraryBlockers,
  nvidiaGpus,
  nvidiaHardwarePresent,
  sectionFindings,
} from "./common.ts";

export interface BackendDecisions {
  decisions: BackendDecisionFacts[];
  chosen?: BackendName;
}

/** How the user's choice is named in reasons and fixes: the flag or the variable. */
function choiceSource(f: DoctorFacts): string {
  const r = f.flashattn.request;
  return r.source === "flag" ? `--backend ${r.backend}` : `FLASHATTN_BACKEND=${r.backend}`;
}

/**
 * The decision as a function of the facts: a library that did not load, has no device, or cannot run here by the
 * facts (driver too old, no code for the GPU) is rejected; one that loaded with a device keeps the kernel (or the
 * kernels' refusal) its plan gave when the facts were collected. `choice` asks what another choice would give
 * ("auto": what unsetting FLASHATTN_BACKEND would choose); a backend the collection did not plan for is then taken
 * at its library's word (loaded, with a device).
 */
export function decideFromFacts(f: DoctorFacts, choice: BackendChoice = f.flashattn.request.backend): BackendDecisions {
  const probe = f.flashattn;
  if (!probe.decisions.length) return { decisions: [] }; // the decision itself failed (a finding says why)
  const source = choiceSource(f);
  type Offer = { backend: BackendName; disabled?: string; reasons: string[]; kernel?: string; library?: string };
  const offers = backendNames.map((name): Offer => {
    const recorded = probe.decisions.find((d) => d.backend === name);
    const lib = probe.libraries.find((l) => l.backend === name);
    const explicitLibrary = recorded?.verdict === "disabled" && recorded.reasons[0]?.startsWith("an explicit library");
    const disabled = userDisabledReason(name, choice, source) ?? (explicitLibrary ? recorded!.reasons[0] : undefined);
    const base = { backend: name, disabled, library: lib?.path ?? recorded?.library };
    if (disabled) return { ...base, reasons: [] };
    if (!lib) return { ...base, reasons: recorded?.reasons ?? ["not probed"], kernel: recorded?.kernel };
    if (!lib.loaded) return { ...base, reasons: [notLoadedReason(name, lib.attempts)], library: undefined };
    if (lib.device_error) return { ...base, reasons: [lib.device_error] };
    if (lib.device_count === 0) return { ...base, reasons: ["no device found"] };
    const blockers = name === "cuda" ? cudaLibraryBlockers(f, lib) : [];
    if (blockers.length) return { ...base, reasons: blockers };
    if (recorded?.verdict === "rejected") return { ...base, reasons: recorded.reasons };
    return { ...base, reasons: [], kernel: recorded?.kernel };
  });
  const decisions = assignVerdicts(offers).map(({ backend, verdict, reasons, kernel, library }) => {
    const d: BackendDecisionFacts = { backend, verdict, reasons };
    if (kernel && (verdict === "chosen" || verdict === "usable")) d.kernel = kernel;
    if (library) d.library = library;
    return d;
  });
  return { decisions, chosen: decisions.find((d) => d.verdict === "chosen")?.backend };
}

const usableVerdicts = new Set(["chosen", "usable"]);

/** Whether `--require` is met by the decision; with the reason when it is not. */
export function requirementMet(
  f: DoctorFacts,
  decided: BackendDecisions,
  require: NonNullable<DoctorOptions["require"]>,
): { ok: boolean; reason?: string } {
  const wanted: BackendName[] = require === "gpu" ? ["cuda", "hip"] : [require];
  const decisions = decided.decisions.filter((d) => wanted.includes(d.backend));
  if (decisions.some((d) => usableVerdicts.has(d.verdict))) return { ok: true };
  const reason = decisions.map((d) =>
    `${d.backend} ${d.verdict}${d.reasons[0] ? `: ${firstClause(d.reasons[0])}` : ""}`
  ).join("; ");
  return { ok: false, reason: reason || f.flashattn.error || "no decision was recorded" };
}

/**
 * The fix for a backend choice that cannot run here: drop the flag or unset the variable, saying what auto would
 * choose instead, or, where nothing would run either, that a library must be built first.
 */
function dropChoiceFix(f: DoctorFacts): string {
  const r = f.flashattn.request;
  const drop = r.source === "flag" ? `drop --backend ${r.backend}` : "unset FLASHATTN_BACKEND";
  const auto = decideFromFacts(f, "auto").chosen;
  if (!auto) {
    return `${drop}, and build a library this machine can run: bun kernels/build.ts (the CPU one needs only g++)`;
  }
  return r.source === "flag"
    ? `${drop} (then ${auto} is chosen), or give --backend ${auto}`
    : `${drop} (then ${auto} is chosen), or set it to ${auto}`;
}

function rejectionFix(f: DoctorFacts, backend: BackendName, reasons: string[]): string {
  const text = reasons.join(" ");
  const hidden = backend === "cuda" ? hiddenByVisibleDevices(f) : undefined;
  if (hidden) return hidden.fix;
  // lib/select.ts says "libflashattn_<b>.so not found (not built here: ...)" or "<path>: <loader error>".
  if (/\.so not found|\.so: /.test(text)) {
    return "see the libraries section above (bun kernels/build.ts builds them)";
  }
  if (backend === "cuda" && /driver|device|libcuda|CUDA|no code for/i.test(text)) {
    return "see the NVIDIA and libraries sections above";
  }
  if (backend === "hip" && /driver|device|HIP|kfd/i.test(text)) return "see the AMD and libraries sections above";
  return "the library's kernels do not accept this request; `flashattn run --backend " + backend +
    "` shows the same reasons";
}

/** A GPU older than anything the build targets: the CUDA backend cannot serve it, and no rebuild changes that. */
function beyondTheBuild(f: DoctorFacts, backend: BackendName, reasons: string[]): boolean {
  const ccs = nvidiaGpus(f).map((g) => g.cc).filter((cc): cc is string => !!cc);
  return backend === "cuda" && reasons.some((r) => r.startsWith("no code for")) && ccs.length > 0 &&
    ccs.every((cc) => buildSupport(cc) === "none");
}

export function backendRules(f: DoctorFacts, options: DoctorOptions = {}): Finding[] {
  const s = sectionFindings("backend");
  const probe = f.flashattn;
  if (probe.status !== "ok" && probe.error) {
    const fix = /\(fix: (.*)\)$/.exec(probe.error)?.[1];
    s.error(
      "decision_failed",
      `the backend decision failed: ${probe.error.replace(/ \(fix: .*\)$/, "")}`,
      fix ?? "fix the setting named above; `flashattn doctor --verbose` lists every library attempt",
    );
  }
  const request = probe.request;
  const decided = decideFromFacts(f);
  const forced = request.backend !== "auto" && request.source !== "default";
  if (request?.problem && decided.decisions.length) s.ok("request", `decision for: ${request.problem}`);

  for (const d of decided.decisions) {
    const reasons = d.reasons.join("; ");
    switch (d.verdict) {
      case "chosen":
        s.ok(
          d.backend,
          `${d.backend}: chosen${d.kernel ? ` (kernel ${d.kernel})` : ""}`,
          d.library ? [`library: ${d.library}`] : undefined,
        );
        break;
      case "usable":
        s.ok(
          d.backend,
          `${d.backend}: usable${d.kernel ? ` (kernel ${d.kernel})` : ""}, not preferred`,
          d.library ? [`library: ${d.library}`] : undefined,
        );
        break;
      case "disabled":
        s.info(d.backend, `${d.backend}: disabled by your choice (${reasons})`);
        break;
      case "rejected": {
        const expected = d.backend === "cpu" ||
          (d.backend === "cuda" ? nvidiaHardwarePresent(f) : amdHardwarePresent(f));
        if (forced && d.backend === request.backend) {
          // The user's choice is the cause: say so, whether or not anything above is wrong.
          s.error(
            d.backend,
            `${d.backend}: rejected, and ${choiceSource(f)} allows no other backend: ${reasons}`,
            dropChoiceFix(f),
          );
        } else if (beyondTheBuild(f, d.backend, d.reasons)) {
          s.warn(
            d.backend,
            `${d.backend}: rejected: ${reasons}`,
            "nothing to rebuild: flashattn's CUDA kernels start at sm_75 (Turing); the CPU backend serves this machine",
          );
        } else if (expected) {
          s.error(d.backend, `${d.backend}: rejected: ${reasons}`, rejectionFix(f, d.backend, d.reasons));
        } else {s.info(
            d.backend,
            `${d.backend}: rejected: ${firstClause(reasons)} (no ${d.backend === "cuda" ? "NVIDIA" : "AMD"} GPU here)`,
            undefined,
            [reasons],
          );}
        break;
      }
    }
  }
  // Under the user's choice the rejection of that one backend above is the whole story, with its fix.
  if (probe.status === "ok" && decided.decisions.length && !decided.chosen && !forced) {
    s.error(
      "none",
      "no backend can run attention on this machine",
      "fix the errors above; the CPU backend needs only `bun kernels/build.ts`",
    );
  }

  if (options.require) {
    const met = requirementMet(f, decided, options.require);
    const wanted = options.require === "gpu" ? ["cuda", "hip"] : [options.require];
    const byChoice = forced && !wanted.includes(request.backend);
    if (met.ok) s.ok("require", `--require ${options.require}: satisfied`);
    else if (byChoice) {
      const drop = request.source === "flag" ? `drop --backend ${request.backend}` : "unset FLASHATTN_BACKEND";
      const unforced = requirementMet(f, decideFromFacts(f, "auto"), options.require);
      const what = options.require === "gpu" ? "the GPU backends" : options.require;
      if (unforced.ok) {
        s.error(
          "require",
          `--require ${options.require}: not usable, because ${choiceSource(f)} disables ${what}`,
          `${drop} for this check (without it ${options.require} is usable here)`,
        );
      } else {
        s.error(
          "require",
          `--require ${options.require}: not usable: ${
            choiceSource(f)
          } disables ${what}; without it: ${unforced.reason}`,
          `${drop} for this check, and fix the findings above for ${what}`,
        );
      }
    } else {s.error(
        "require",
        `--require ${options.require}: not usable (${met.reason})`,
        "fix the findings above for that backend",
      );}
  }
  return s.list;
}

/** A rejection reason without the list of every path tried (that is in --verbose). */
function firstClause(reasons: string): string {
  return reasons.replace(/: \/.*$/, "").replace(/: libflashattn.*$/, "").replace(/ \(not built here: .*\)$/, "");
}
