// Helpers every rule file shares: version comparison, GPU architecture matching, the few facts that several
// sections derive the same way (which NVIDIA GPUs exist, which driver runs), and the finding builder.
import type { DoctorFacts, Finding, LibraryFacts, Section, Severity } from "../facts.ts";
import { cudaBuildTargets, minimumDriverForCuda, minorVersionCompatibleDriver } from "./tables.ts";

// ---- versions ----------------------------------------------------------------------------------------------------

/** "570.124.06" -> [570, 124, 6]; anything after the numbers ("+cu130", "-0") is ignored. */
export function versionTuple(v: string): number[] {
  const m = /^\s*v?(\d+(?:\.\d+)*)/.exec(v);
  return m ? m[1].split(".").map(Number) : [];
}

/** Numeric tuple comparison (570.26 < 570.124.06); missing parts count as 0. */
export function compareVersions(a: string, b: string): number {
  const x = versionTuple(a), y = versionTuple(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

export const majorOf = (v: string) => versionTuple(v)[0] ?? 0;
export const majorMinor = (v: string) => versionTuple(v).slice(0, 2).join(".");

/**
 * Can a driver run a program built with CUDA `built`? Yes at or above that release's minimum driver ("full"); with
 * a limited feature set (no JIT of its PTX) under minor-version compatibility ("minor-compat"); otherwise "no".
 * Unknown toolkits fall back to the major's minor-compatibility minimum.
 */
export function driverRuns(built: string, driverVersion: string): "full" | "minor-compat" | "no" {
  const exact = minimumDriverForCuda[majorMinor(built)];
  if (exact && compareVersions(driverVersion, exact) >= 0) return "full";
  const mvc = minorVersionCompatibleDriver[majorOf(built)];
  if (mvc && compareVersions(driverVersion, mvc) >= 0) return exact ? "minor-compat" : "full";
  return "no";
}

// ---- architectures -------------------------------------------------------------------------------------------------

/** "9.0" -> "sm_90", "12.0" -> "sm_120" */
export const smName = (cc: string) => `sm_${cc.replace(".", "")}`;

interface ArchTarget {
  kind: "sm" | "compute";
  major: number;
  minor: number;
  /** "a": this exact CC only; "f": the same major family from this minor on */
  suffix: "" | "a" | "f";
}

/** "sm_90a" -> {sm, 9, 0, "a"}; the last digit is the minor, the rest the major (sm_120 -> 12.0). */
export function parseArch(arch: string): ArchTarget | undefined {
  const m = /^(sm|compute)_(\d+)(\d)([af]?)$/.exec(arch.trim());
  if (!m) return undefined;
  return { kind: m[1] as "sm" | "compute", major: Number(m[2]), minor: Number(m[3]), suffix: m[4] as "" | "a" | "f" };
}

/**
 * How code compiled for `archs` runs on a GPU of compute capability `cc`: "sass" (a cubin for it: same major,
 * minor ≤ the GPU's; `a` targets only on that exact CC; `f` targets on the family), "ptx" (only JIT from a plain
 * compute_XY ≤ cc), or "none" ("no kernel image is available for execution on the device").
 */
export function archSupport(archs: readonly string[], cc: string): "sass" | "ptx" | "none" {
  const [major, minor] = versionTuple(cc);
  let ptx = false;
  for (const arch of archs) {
    const t = parseArch(arch);
    if (!t) continue;
    const sameMajor = t.major === major;
    const fits = t.suffix === "a" ? sameMajor && t.minor === minor : sameMajor && t.minor <= minor;
    if (t.kind === "sm" && fits) return "sass";
    if (t.kind === "compute" && t.suffix === "" && (t.major < major || (sameMajor && t.minor <= minor))) ptx = true;
    if (t.kind === "compute" && t.suffix !== "" && fits) ptx = true;
  }
  return ptx ? "ptx" : "none";
}

/** "gfx90a:sramecc+:xnack-" -> "gfx90a" */
export const gfxBase = (name: string) => name.split(":")[0].trim();

// ---- what several sections derive -------------------------------------------------------------------------------

export interface NvidiaGpu {
  index: number;
  name: string;
  cc?: string;
  memoryBytes?: number;
}

/** NVIDIA GPUs as the driver API sees them, else NVML, else nvidia-smi (the second source). */
export function nvidiaGpus(f: DoctorFacts): NvidiaGpu[] {
  const cuda = f.nvidia.cuda_driver.devices;
  if (cuda?.length) {
    return cuda.map((d) => ({
      index: d.index,
      name: d.name ?? `GPU ${d.index}`,
      cc: d.compute_capability,
      memoryBytes: d.memory_bytes,
    }));
  }
  const nvml = f.nvidia.nvml.devices;
  if (nvml?.length) {
    return nvml.map((d) => ({
      index: d.index,
      name: d.name ?? `GPU ${d.index}`,
      cc: d.compute_capability,
      memoryBytes: d.memory_total_bytes,
    }));
  }
  return (f.nvidia.smi.gpus ?? []).map((g, index) => ({
    index,
    name: g.name,
    cc: g.compute_capability,
    memoryBytes: g.memory_mib && g.memory_mib * 2 ** 20,
  }));
}

/** Any sign of NVIDIA hardware: a GPU on the PCI bus, the kernel module, device nodes, or a GPU NVML or nvidia-smi lists. */
export function nvidiaHardwarePresent(f: DoctorFacts): boolean {
  return (f.nvidia.pci_gpus ?? 0) > 0 || f.nvidia.kernel_module.loaded || f.nvidia.device_nodes.length > 0 ||
    nvidiaGpus(f).length > 0;
}

/** The user-space driver version: NVML, else nvidia-smi, else the version in libcuda's file name. */
export function driverVersion(f: DoctorFacts): string | undefined {
  return f.nvidia.nvml.driver_version ?? f.nvidia.smi.driver_version ?? libcudaFileVersion(f);
}

/** libcuda.so.580.95.05 -> "580.95.05" (the real driver's library carries its version; a stub does not). */
export function libcudaFileVersion(f: DoctorFacts): string | undefined {
  return /libcuda\.so\.(\d+\.\d+(?:\.\d+)?)$/.exec(f.nvidia.cuda_driver.library ?? "")?.[1];
}

/** The highest CUDA the driver supports: cuDriverGetVersion, else NVML. */
export function driverCudaVersion(f: DoctorFacts): string | undefined {
  return f.nvidia.cuda_driver.driver_cuda_version ?? f.nvidia.nvml.cuda_driver_version;
}

export function amdHardwarePresent(f: DoctorFacts): boolean {
  return f.amd.kfd.exists || f.amd.kernel_module || (f.amd.hip.devices?.length ?? 0) > 0 ||
    (f.amd.rocminfo.gpus?.length ?? 0) > 0 || (f.amd.amd_smi.gpus?.length ?? 0) > 0;
}

/** The driver a CUDA release needs at least: its own minimum, else its major's minor-compatibility minimum. */
export function minimumDriverFor(built: string): string | undefined {
  return minimumDriverForCuda[majorMinor(built)] ?? minorVersionCompatibleDriver[majorOf(built)];
}

/** Whether `bun kernels/build.ts` makes code that runs on compute capability `cc`, and how. */
export const buildSupport = (cc: string) => archSupport(cudaBuildTargets, cc);

/**
 * Why libflashattn_cuda cannot run on this machine by the facts alone: a driver older than the CUDA it was built
 * with, or no code for any listed GPU. The backend decision (replayed or live) rejects it for these; the libraries
 * section says the same at length.
 */
export function cudaLibraryBlockers(f: DoctorFacts, lib: LibraryFacts): string[] {
  const blockers: string[] = [];
  const built = lib.info?.built_with?.cuda;
  const driver = driverVersion(f);
  if (built && driver && driverRuns(built, driver) === "no") {
    blockers.push(`driver ${driver} is older than the ${minimumDriverFor(built)} that CUDA ${built} needs`);
  }
  const archs = lib.info?.archs ?? [];
  const gpus = nvidiaGpus(f).filter((g) => g.cc);
  if (archs.length && gpus.length && gpus.every((g) => archSupport(archs, g.cc!) === "none")) {
    blockers.push(
      `no code for ${[...new Set(gpus.map((g) => smName(g.cc!)))].join(", ")} (built for ${archs.join(", ")})`,
    );
  }
  return blockers;
}

// ---- findings ------------------------------------------------------------------------------------------------------

/** A finding builder bound to one section. */
export function sectionFindings(section: Section) {
  const list: Finding[] = [];
  const add = (severity: Severity, id: string, message: string, fix?: string, details?: string[]) => {
    const f: Finding = { id: `${section}.${id}`, section, severity, message };
    if (fix) f.fix = fix;
    if (details?.length) f.details = details;
    list.push(f);
  };
  return {
    list,
    ok: (id: string, message: string, details?: string[]) => add("ok", id, message, undefined, details),
    info: (id: string, message: string, fix?: string, details?: string[]) => add("info", id, message, fix, details),
    warn: (id: string, message: string, fix: string, details?: string[]) => add("warning", id, message, fix, details),
    error: (id: string, message: string, fix: string, details?: string[]) => add("error", id, message, fix, details),
  };
}

// ---- formatting ----------------------------------------------------------------------------------------------------

export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes, u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v >= 100 || u === 0 ? Math.round(v) : v.toFixed(1).replace(/\.0$/, "")} ${units[u]}`;
}
