// Runs every probe (in parallel, each with its own deadline) and assembles the facts. Nothing here throws for a
// machine's sake: a probe that fails, times out or crashes is recorded as such and the rules turn it into a finding.
import process from "node:process";
import type { CudaDriverFacts, DoctorFacts, FlashattnFacts, HipFacts, NvmlFacts } from "./facts.ts";
import { type FlashattnProbeOptions } from "./probes/flashattn.ts";
import { runNativeProbe } from "./probes/native.ts";
import { probePython } from "./probes/python.ts";
import { amdgpuModuleLoaded, nvidiaDeviceNodes, probeHost, probeKfd, probeNvidiaKernelModule } from "./probes/system.ts";
import { probeAmdSmi, probeHipcc, probeNvcc, probeNvidiaSmi, probeRocminfo } from "./probes/tools.ts";

export interface CollectOptions extends FlashattnProbeOptions {
  /** skip the Python stack (it is the slowest probe) */
  noPython?: boolean;
  env?: Record<string, string | undefined>;
}

const DRIVER_PROBE_TIMEOUT_MS = 20_000;
/** Loading every library, deciding, and one small attention per usable backend (a GPU context costs seconds). */
const FLASHATTN_PROBE_TIMEOUT_MS = 60_000;

export async function collectFacts(opts: CollectOptions = {}): Promise<DoctorFacts> {
  const env = opts.env ?? process.env;
  const { backend, libPath, noSelfTest } = opts;
  const [nvml, cudaDriver, hip, flashattn, smi, rocminfo, amdSmi, nvcc, hipcc, python] = await Promise.all([
    runNativeProbe<NvmlFacts>("nvml", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env }),
    runNativeProbe<CudaDriverFacts>("cuda", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env }),
    runNativeProbe<HipFacts>("hip", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env }),
    runNativeProbe<FlashattnFacts>("flashattn", {
      timeoutMs: FLASHATTN_PROBE_TIMEOUT_MS,
      env,
      options: { backend, libPath, noSelfTest } satisfies FlashattnProbeOptions,
    }),
    probeNvidiaSmi(env),
    probeRocminfo(env),
    probeAmdSmi(env),
    probeNvcc(env),
    probeHipcc(env),
    opts.noPython ? Promise.resolve({ status: "absent" as const, error: "skipped (--no-python)" }) : probePython(env),
  ]);
  return {
    host: probeHost(env),
    nvidia: {
      kernel_module: probeNvidiaKernelModule(),
      device_nodes: nvidiaDeviceNodes(),
      nvml,
      cuda_driver: cudaDriver,
      smi,
    },
    amd: { kfd: probeKfd(), kernel_module: amdgpuModuleLoaded(), hip, rocminfo, amd_smi: amdSmi },
    toolkits: { nvcc, hipcc },
    flashattn: withDefaults(flashattn),
    python,
  };
}

/** A flashattn probe that timed out or crashed still has the shape the rules expect. */
function withDefaults(f: FlashattnFacts): FlashattnFacts {
  return {
    ...f,
    libraries: f.libraries ?? [],
    decisions: f.decisions ?? [],
    request: f.request ?? { backend: "auto", source: "default", problem: "" },
  };
}
