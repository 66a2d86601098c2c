// The doctor's own view of the machine: whether it could read everything it needed.
import type { DoctorFacts, Finding } from "../facts.ts";
import { sectionFindings } from "./common.ts";

export function systemRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("system");
  if (f.host.restricted) {
    s.warn(
      "restricted",
      `/proc, /sys and /dev are not readable (${f.host.restricted}): kernel-module, device-node and /dev/kfd checks are incomplete`,
      "under Deno run the doctor with --allow-all: deno run -A cli.ts doctor",
    );
  }
  return s.list;
}
