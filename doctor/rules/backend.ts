// The backend decision as lib/select.ts made it (recorded in the facts): each backend chosen, usable, disabled by
// the user, or rejected with its reasons; and `--require`, which turns "that backend is not usable" into an error.
import type { BackendName, DoctorFacts, DoctorOptions, Finding } from "../facts.ts";
import { amdHardwarePresent, nvidiaHardwarePresent, sectionFindings } from "./common.ts";

const usableVerdicts = new Set(["chosen", "usable"]);

/** Whether `--require` is met; with the reason when it is not. */
export function requirementMet(
  f: DoctorFacts,
  require: NonNullable<DoctorOptions["require"]>,
): { ok: boolean; reason?: string } {
  const wanted: BackendName[] = require === "gpu" ? ["cuda", "hip"] : [require];
  const decisions = f.flashattn.decisions.filter((d) => wanted.includes(d.backend));
  if (decisions.some((d) => usableVerdicts.has(d.verdict))) return { ok: true };
  const reason = decisions.map((d) =>
    `${d.backend} ${d.verdict}${d.reasons[0] ? `: ${firstClause(d.reasons[0])}` : ""}`
  ).join("; ");
  return { ok: false, reason: reason || f.flashattn.error || "no decision was recorded" };
}

function rejectionFix(backend: BackendName, reasons: string[]): string {
  const text = reasons.join(" ");
  // lib/select.ts says "libflashattn_<b>.so not found (not built here: ...)" or "<path>: <loader error>".
  if (/\.so not found|\.so: /.test(text)) {
    return "see the libraries section above (bun kernels/build.ts builds them)";
  }
  if (backend === "cuda" && /driver|device|libcuda|CUDA/i.test(text)) {
    return "see the NVIDIA and libraries sections above";
  }
  if (backend === "hip" && /driver|device|HIP|kfd/i.test(text)) return "see the AMD and libraries sections above";
  return "the library's kernels do not accept this request; `flashattn run --backend " + backend +
    "` shows the same reasons";
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
  if (request?.problem && probe.decisions.length) s.ok("request", `decision for: ${request.problem}`);

  for (const d of probe.decisions) {
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
        if (expected) s.error(d.backend, `${d.backend}: rejected: ${reasons}`, rejectionFix(d.backend, d.reasons));
        else {s.info(
            d.backend,
            `${d.backend}: rejected: ${firstClause(reasons)} (no ${d.backend === "cuda" ? "NVIDIA" : "AMD"} GPU here)`,
            undefined,
            [reasons],
          );}
        break;
      }
    }
  }
  if (probe.status === "ok" && probe.decisions.length && !probe.chosen) {
    s.error(
      "none",
      "no backend can run attention on this machine",
      "fix the errors above; the CPU backend needs only `bun kernels/build.ts`",
    );
  }

  if (options.require) {
    const met = requirementMet(f, options.require);
    if (met.ok) s.ok("require", `--require ${options.require}: satisfied`);
    else {s.error(
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
