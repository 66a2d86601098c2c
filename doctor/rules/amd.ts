// AMD: /dev/kfd access, the HIP runtime and each GPU's gcnArchName; rocminfo and amd-smi only confirm.
import type { DoctorFacts, Finding } from "../facts.ts";
import { amdHardwarePresent, formatBytes, gfxBase, sectionFindings } from "./common.ts";

export function amdRules(f: DoctorFacts): Finding[] {
  const s = sectionFindings("amd");
  const { kfd, hip, rocminfo, amd_smi: amdSmi } = f.amd;
  const runtime = hip.runtime_version ? `HIP runtime ${hip.runtime_version} (${hip.library})` : undefined;

  if (!amdHardwarePresent(f)) {
    s.info("none", `no AMD GPU on this machine (no /dev/kfd)${runtime ? `; ${runtime} is installed` : ""}`);
    return s.list;
  }

  if (kfd.exists && kfd.accessible === false) {
    const groups = f.host.groups?.join(", ") ?? "unknown";
    s.error(
      "kfd_permission",
      `this user cannot open /dev/kfd read-write (group ${kfd.owner_group ?? "?"}, mode ${
        kfd.mode ?? "?"
      }; your groups: ${groups})`,
      "add yourself to the render and video groups (sudo usermod -aG render,video $USER), then log out and in",
    );
  } else if (!kfd.exists) {
    s.error(
      "kfd_missing",
      "an AMD GPU is present but /dev/kfd does not exist",
      "load the amdgpu kernel module (sudo modprobe amdgpu); in a container pass --device=/dev/kfd --device=/dev/dri",
    );
  }

  if (hip.status === "absent") {
    s.error(
      "hip_absent",
      "the HIP runtime (libamdhip64.so.7/.6/.5) is not installed",
      "install ROCm (https://rocm.docs.amd.com) and make sure its lib directory is known to the loader (ldconfig or LD_LIBRARY_PATH)",
    );
  } else if (hip.status !== "ok" && !(kfd.exists && kfd.accessible === false)) {
    s.error(
      "hip_failed",
      `HIP: ${hip.error}`,
      "check dmesg for amdgpu errors and that ROCm matches the kernel driver; rocminfo shows what the runtime sees",
    );
  } else if (runtime) {
    s.ok("runtime", runtime);
  }

  for (const d of hip.devices ?? []) {
    s.ok(
      `gpu${d.index}`,
      `GPU ${d.index}: ${d.name ?? "AMD GPU"}, ${d.gcn_arch_name ?? "arch unknown"}, ${formatBytes(d.memory_bytes)}`,
    );
  }

  // Second sources: the same set of gfx targets.
  const hipArchs = (hip.devices ?? []).map((d) => gfxBase(d.gcn_arch_name ?? "")).filter(Boolean).sort().join(",");
  for (const [tool, facts] of [["rocminfo", rocminfo], ["amd-smi", amdSmi]] as const) {
    if (facts.status !== "ok" || !facts.gpus) continue;
    const toolArchs = facts.gpus.map((g) => gfxBase(g.gfx)).sort().join(",");
    if (hipArchs && toolArchs !== hipArchs) {
      s.warn(
        `${tool.replace("-", "_")}_disagrees`,
        `${tool} lists ${toolArchs || "no GPU"} but HIP sees ${hipArchs}`,
        "check HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES and that only one ROCm version is installed",
      );
    }
  }
  return s.list;
}
