// The machine facts every bench report carries, so a number is never read without what produced it: host and
// runtime, each measured library (its self-description and its device), the GPU driver as doctor's NVML probe
// sees it, and what the Python baselines reported about themselves (torch, CUDA, cuDNN, NumPy versions).
import os from "node:os";
import process from "node:process";
import type { Backend } from "../lib/backend.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import type { NvmlFacts } from "../doctor/facts.ts";

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

function runtime(): string {
  if (g.Bun) return `bun ${g.Bun.version}`;
  if (g.Deno) return `deno ${g.Deno.version.deno}`;
  return `node ${process.version}`;
}

/**
 * A host fact, or undefined where the runtime refuses it (Deno without --allow-sys): the report then lacks that
 * fact rather than the run failing.
 */
export function hostFact<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

export async function machineFacts(
  backends: Backend[],
  baselines: { name: string; hello?: Record<string, unknown> }[],
): Promise<Record<string, unknown>> {
  const libraries = backends.map((b) => {
    const info = b.info();
    let device: unknown;
    try {
      device = b.deviceInfo(0);
    } catch (e) {
      device = { error: (e as Error).message };
    }
    return {
      backend: b.name,
      path: b.path,
      version: info.version,
      compiler: info.compiler,
      built_with: info.built_with,
      archs: info.archs,
      device,
    };
  });
  // The driver as NVML reports it (doctor's probe, in its own deadline-bound process): only where CUDA is measured.
  let nvidia: Pick<NvmlFacts, "status" | "error" | "driver_version" | "cuda_driver_version" | "devices"> | undefined;
  if (backends.some((b) => b.name === "cuda")) {
    const nvml = await runNativeProbe<NvmlFacts>("nvml", { timeoutMs: 10_000 });
    nvidia = {
      status: nvml.status,
      error: nvml.error,
      driver_version: nvml.driver_version,
      cuda_driver_version: nvml.cuda_driver_version,
      devices: nvml.devices,
    };
  }
  const cpus = hostFact(() => os.cpus()) ?? [];
  return {
    host: {
      os: hostFact(() => `${os.type()} ${os.release()}`),
      arch: process.arch,
      cpu: cpus[0]?.model?.trim(),
      cpu_count: cpus.length || undefined,
      memory_bytes: hostFact(() => os.totalmem()),
      runtime: runtime(),
    },
    libraries,
    ...(nvidia ? { nvidia } : {}),
    baselines: Object.fromEntries(baselines.filter((b) => b.hello).map((b) => [b.name, b.hello])),
  };
}
