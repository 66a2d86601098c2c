// Runs every probe (in parallel, each with its own deadline) and assembles the facts. Nothing here throws for a
// machine's sake: a probe that fails, times out, crashes or answers nonsense is recorded as such and the rules turn
// it into a finding.
import process from "node:process";
import type { CudaDriverFacts, DoctorFacts, FlashattnFacts, HipFacts, NcclFacts, NvmlFacts, ProbeResult } from "./facts.ts";
import { type FactsPart, validateFactsPart } from "./schema.ts";
import { jsonReplacer } from "../lib/json.ts";
import { type FlashattnProbeOptions } from "./probes/flashattn.ts";
import { runNativeProbe } from "./probes/native.ts";
import { probePython } from "./probes/python.ts";
import {
  amdgpuModuleLoaded,
  nvidiaDeviceNodes,
  nvidiaPciGpus,
  probeHost,
  probeKfd,
  probeNvidiaKernelModule,
} from "./probes/system.ts";
import { probeAmdSmi, probeHipcc, probeNvcc, probeNvidiaSmi, probeRocminfo } from "./probes/tools.ts";

export interface CollectOptions extends FlashattnProbeOptions {
  /** skip the Python stack (it is the slowest probe) */
  noPython?: boolean;
  env?: Record<string, string | undefined>;
  /** called with the probes still running, every SLOW_NOTICE_MS while any is (for a "still waiting" line) */
  onSlow?: (pending: string[]) => void;
}

/** After this long without an answer the user hears which probes are still running. */
export const SLOW_NOTICE_MS = 10_000;

const DRIVER_PROBE_TIMEOUT_MS = 20_000;
/** Loading every library, deciding, and one small attention per usable backend (a GPU context costs seconds). */
const FLASHATTN_PROBE_TIMEOUT_MS = 60_000;
/** `--devices`: each further device's self-test creates its own context. */
const PER_DEVICE_SELF_TEST_MS = 15_000;
/** The devices a self-test may run on (doctor/probes/flashattn.ts lists at most this many). */
const MAX_SELF_TEST_DEVICES = 16;

function flashattnProbeTimeoutMs(devices: CollectOptions["devices"]): number {
  const count = devices === undefined ? 1 : devices === "all" ? MAX_SELF_TEST_DEVICES : devices.length;
  return FLASHATTN_PROBE_TIMEOUT_MS + PER_DEVICE_SELF_TEST_MS * Math.max(0, Math.min(count, MAX_SELF_TEST_DEVICES) - 1);
}

export async function collectFacts(opts: CollectOptions = {}): Promise<DoctorFacts> {
  const env = opts.env ?? process.env;
  const { backend, libPath, noSelfTest, devices } = opts;
  const pending = new Set<string>();
  const track = <T>(name: string, p: Promise<T>): Promise<T> => {
    pending.add(name);
    return p.finally(() => pending.delete(name));
  };
  const notice = opts.onSlow && setInterval(() => pending.size && opts.onSlow!([...pending]), SLOW_NOTICE_MS);
  const [nvml, cudaDriver, hip, flashattn, smi, rocminfo, amdSmi, nvcc, hipcc, python, nccl] = await Promise.all([
    track("NVML", runNativeProbe<NvmlFacts>("nvml", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env })),
    track("libcuda", runNativeProbe<CudaDriverFacts>("cuda", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env })),
    track("HIP", runNativeProbe<HipFacts>("hip", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env })),
    track(
      "flashattn libraries and self-test",
      runNativeProbe<FlashattnFacts>("flashattn", {
        timeoutMs: flashattnProbeTimeoutMs(devices),
        env,
        options: { backend, libPath, noSelfTest, devices } satisfies FlashattnProbeOptions,
      }),
    ),
    track("nvidia-smi", probeNvidiaSmi(env)),
    track("rocminfo", probeRocminfo(env)),
    track("amd-smi", probeAmdSmi(env)),
    track("nvcc", probeNvcc(env)),
    track("hipcc", probeHipcc(env)),
    opts.noPython
      ? Promise.resolve({ status: "absent" as const, error: "skipped (--no-python)" })
      : track("Python stack", probePython(env)),
    track("NCCL", runNativeProbe<NcclFacts>("nccl", { timeoutMs: DRIVER_PROBE_TIMEOUT_MS, env })),
  ]).finally(() => notice && clearInterval(notice));
  return {
    host: probeHost(env),
    nvidia: {
      kernel_module: probeNvidiaKernelModule(),
      device_nodes: nvidiaDeviceNodes(),
      ...optional("pci_gpus", nvidiaPciGpus()),
      nvml: admitted("nvidia.nvml", "NVML", nvml),
      cuda_driver: admitted("nvidia.cuda_driver", "libcuda", cudaDriver),
      smi: admitted("nvidia.smi", "nvidia-smi", smi),
    },
    amd: {
      kfd: probeKfd(),
      kernel_module: amdgpuModuleLoaded(),
      hip: admitted("amd.hip", "HIP", hip),
      rocminfo: admitted("amd.rocminfo", "rocminfo", rocminfo),
      amd_smi: admitted("amd.amd_smi", "amd-smi", amdSmi),
    },
    toolkits: { nvcc: admitted("toolkits.nvcc", "nvcc", nvcc), hipcc: admitted("toolkits.hipcc", "hipcc", hipcc) },
    flashattn: withDefaults(admitted("flashattn", "flashattn libraries", withDefaults(flashattn))),
    python: admitted("python", "Python stack", python),
    nccl: admitted("nccl", "NCCL", nccl),
  };
}

/**
 * Far more than any real probe result (a few KiB) as the report prints it, far less than the report may hold: every
 * report the doctor writes must replay with --facts (doctor/schema.ts MAX_REPORT_BYTES).
 */
const MAX_PROBE_FACTS_CHARS = 256 << 10;

/**
 * A probe's result as the report carries it: valid by the report schema and of a sane size, else a probe error that
 * says why. What a probe read may come from anything on PATH or a library passed with --lib; a report the doctor
 * writes is always one its --facts accepts.
 */
function admitted<T extends ProbeResult>(part: FactsPart, label: string, facts: T): T {
  // Checked as the report will hold it (no undefined members, Infinity as "Infinity"), and passed on in that form:
  // the rules see what a replay of the report will see.
  const asJson = JSON.parse(JSON.stringify(facts, jsonReplacer) ?? "null") as T;
  const problems = validateFactsPart(asJson, part);
  const size = problems.length ? 0 : JSON.stringify(asJson, null, 2).length;
  if (!problems.length && size <= MAX_PROBE_FACTS_CHARS) return asJson;
  const why = problems.length
    ? `does not fit the report schema (${problems[0].slice(0, 200)})`
    : `is ${size} characters long, far more than any real one`;
  const ms = (facts as { ms?: unknown } | null)?.ms;
  return {
    status: "error",
    error: `the ${label} probe's result ${why}; it was left out`,
    ...(typeof ms === "number" && ms >= 0 ? { ms } : {}),
  } as T;
}

/** { key: value }, or nothing where the value is unknown (the report has no undefined members). */
const optional = <K extends string, V>(key: K, value: V | undefined) =>
  (value === undefined ? {} : { [key]: value }) as Partial<Record<K, V>>;

/** A flashattn probe that timed out or crashed still has the shape the rules expect. */
function withDefaults(f: FlashattnFacts): FlashattnFacts {
  return {
    ...f,
    libraries: f.libraries ?? [],
    decisions: f.decisions ?? [],
    request: f.request ?? { backend: "auto", source: "default", problem: "" },
  };
}
