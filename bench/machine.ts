// The machine facts every bench report carries, so a number is never read without what produced it: host and
// runtime, each measured library (its self-description and its device), the GPU driver as the caller reads it (the
// CLI passes the doctor's NVML probe, so bench depends on no other wing), and what the Python baselines reported
// about themselves (torch, CUDA, cuDNN, NumPy versions).
import os from "node:os";
import process from "node:process";
import type { Backend } from "../lib/backend.ts";

/** What a bench report records of the NVIDIA driver. */
export interface DriverFacts {
  status: string;
  error?: string;
  driver_version?: string;
  /** highest CUDA the driver supports, "13.0" */
  cuda_driver_version?: string;
  devices?: unknown[];
}

/** Reads the NVIDIA driver's facts within its own deadline; never throws. */
export type DriverReader = () => Promise<DriverFacts>;

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
  readDriver?: DriverReader,
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
  // The driver: only where CUDA is measured.
  let nvidia: DriverFacts | undefined;
  if (readDriver && backends.some((b) => b.name === "cuda")) {
    const nvml = await readDriver();
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
