// Context parallelism (`run --devices`, lib/ring.ts): is NCCL there, can the GPUs reach each other, and would a ring
// over this machine's GPUs run, and if not, why. Pure: reads the NCCL facts and the backend decision only. Nothing
// here is an error: context parallelism is optional, and a machine without it is still a healthy machine.
import type { DoctorFacts, Finding, NcclFacts } from "../facts.ts";
import { decideFromFacts } from "./backend.ts";
import { sectionFindings } from "./common.ts";

export interface ParallelVerdict {
  /** A ring over every GPU would run (at least two GPUs, NCCL, a usable cuda backend). */
  works: boolean;
  /** The GPUs it would span. */
  gpus: number;
  /** Why it would not run (empty when it would). */
  reasons: string[];
  /** What to do about the first reason. */
  fix?: string;
}

export const NCCL_FIX = "pip install nvidia-nccl-cu12 (the wheel PyTorch uses), install the distribution's libnccl2, or set FLASHATTN_NCCL=/path/to/libnccl.so.2";

/** The verdict from the NCCL facts and whether (and why not) the cuda backend is usable. */
export function contextParallelVerdict(nccl: NcclFacts, cuda: { usable: boolean; reason?: string }): ParallelVerdict {
  const gpus = nccl.gpus ?? 0;
  const blockers: Array<[string, string]> = [];
  if (!cuda.usable) blockers.push([`the cuda backend is not usable (${cuda.reason ?? "see the backend decision"})`, "see the sections above: the ring runs our CUDA kernels"]);
  if (nccl.status !== "ok") blockers.push([nccl.status === "absent" ? "NCCL is not installed" : `NCCL does not work (${nccl.error})`, NCCL_FIX]);
  if (nccl.gpus === undefined) blockers.push([`the GPUs could not be counted (${nccl.peer_error ?? "no driver"})`, "see the NVIDIA section"]);
  else if (gpus < 2) blockers.push([`this machine has ${gpus} GPU${gpus === 1 ? "" : "s"}; a ring needs at least two (one GPU runs the ring of 1, which splits nothing)`, "run on a machine with several GPUs"]);
  return { works: blockers.length === 0, gpus, reasons: blockers.map(([r]) => r), fix: blockers[0]?.[1] };
}

function cudaUsability(f: DoctorFacts): { usable: boolean; reason?: string } {
  const cuda = decideFromFacts(f).decisions.find((d) => d.backend === "cuda");
  if (cuda && (cuda.verdict === "chosen" || cuda.verdict === "usable")) return { usable: true };
  return { usable: false, reason: cuda?.reasons[0] ?? "no cuda library" };
}

const pairList = (pairs: Array<[number, number]>) => pairs.map(([a, b]) => `${a}→${b}`).join(", ");

export function contextParallelRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("parallel");
  const nccl = f.nccl;
  if (!nccl) return s.list; // a report from before NCCL was probed
  if (nccl.status === "ok") {
    s.ok("nccl", `NCCL ${nccl.version ?? "(version unknown)"}: ${nccl.library} (${nccl.source === "python" ? "the pip wheel's copy" : nccl.source === "env" ? "FLASHATTN_NCCL" : "the loader path"})`);
  } else if (nccl.status === "absent") {
    s.info("nccl_missing", "NCCL (libnccl.so.2) not found: context parallelism (run --devices) is not available", NCCL_FIX,
      (nccl.attempts ?? []).map((a) => `${a.path} (${a.source}): ${a.error ?? "ok"}`));
  } else {
    s.warn("nccl_broken", `NCCL did not answer: ${nccl.error ?? nccl.status}`, NCCL_FIX);
  }
  if (nccl.peer_error) {
    s.info("peer_unknown", `which GPUs can reach each other is unknown: ${nccl.peer_error}`);
  } else if ((nccl.gpus ?? 0) >= 2) {
    const blocked = nccl.no_peer_access ?? [];
    if (blocked.length === 0) s.ok("peer_access", `all ${nccl.gpus} GPUs can access each other's memory (P2P)`);
    else {
      s.warn("no_peer_access", `GPU pairs without peer access: ${pairList(blocked)}: NCCL passes the ring's blocks through host memory, and the ring is slower`,
        "`nvidia-smi topo -m` shows the links; PCIe ACS, an IOMMU or a VM can block P2P");
    }
  }
  const v = contextParallelVerdict(nccl, cudaUsability(f));
  if (v.works) {
    s.ok("verdict", `context parallelism would run here: a ring of ${v.gpus} GPUs (flashattn run --devices ${Array.from({ length: v.gpus }, (_, i) => i).join(",")})`);
  } else {
    s.info("verdict", `context parallelism would not run here: ${v.reasons.join("; ")}`, v.fix);
  }
  return s.list;
}
