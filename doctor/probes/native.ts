// Runs a native probe (doctor/probes/worker.ts) in a child process of the same runtime, with a deadline. A library
// call that blocks (cuInit on a wedged GPU, a self-test kernel that never returns) or crashes (a segfault inside a
// driver) ends the child, not the doctor: the result is a probe result with status "timeout" or "error".
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { ProbeResult } from "../facts.ts";
import { type ExecResult, execWithTimeout, lastLine, probeJson } from "./exec.ts";
import { restrictedReason } from "./system.ts";
import { isStandalone, PROBE_WORKER_ENV } from "../../lib/standalone.ts";

const workerPath = path.join(path.dirname(fileURLToPath(import.meta.url)), "worker.ts");

// deno-lint-ignore no-explicit-any
const Deno: any = (globalThis as any).Deno;

/** The command that runs a TypeScript file with this runtime and the permissions the probes need. */
function runtimeCommand(script: string): [string, string[]] {
  if (Deno && typeof (globalThis as { Bun?: unknown }).Bun === "undefined") {
    // The worker gets no more than the doctor has: everything if /proc is readable (only --allow-all grants it),
    // else what the probes need to call libraries.
    const grants = restrictedReason() ? ["--allow-ffi", "--allow-read", "--allow-env", "--allow-sys"] : ["--allow-all"];
    return [Deno.execPath(), ["run", "--no-prompt", ...grants, script]];
  }
  // The standalone executable has no runtime beside it: it runs itself as the worker (bin/standalone.ts).
  return isStandalone ? [process.execPath, []] : [process.execPath, [script]];
}

export type NativeProbeName = "nvml" | "cuda" | "hip" | "flashattn" | "model" | "device-bench" | "nccl";

export async function runNativeProbe<T extends ProbeResult>(
  probe: NativeProbeName,
  opts: { timeoutMs: number; options?: unknown; env?: Record<string, string | undefined> },
): Promise<T> {
  const [command, runtimeArgs] = runtimeCommand(workerPath);
  const args = [...runtimeArgs, probe];
  if (opts.options !== undefined) args.push(JSON.stringify(opts.options));
  const env = {
    ...(opts.env ?? process.env),
    // cuInit otherwise preloads the JIT libraries, which costs time and is not needed to read device facts.
    CUDA_FORCE_PRELOAD_LIBRARIES: "0",
    NO_COLOR: "1",
    ...(isStandalone ? { [PROBE_WORKER_ENV]: "1" } : {}),
  };
  return parseWorkerResult<T>(probe, await execWithTimeout(command, args, { timeoutMs: opts.timeoutMs, env }));
}

/** The worker's JSON, or a probe result that says how the worker ended. */
export function parseWorkerResult<T extends ProbeResult>(probe: NativeProbeName, r: ExecResult): T {
  if (r.status === "timeout") {
    return { status: "timeout", error: `the ${probe} probe ${r.error?.replace(/^\S+ /, "")}`, ms: r.ms } as T;
  }
  if (r.signal) {
    return { status: "error", error: `the ${probe} probe crashed (${r.signal})${stderrTail(r)}`, ms: r.ms } as T;
  }
  try {
    // The shape is checked against the report schema in collect.ts.
    return probeJson(r.stdout) as unknown as T;
  } catch (e) {
    return {
      status: "error",
      error: `the ${probe} probe ${r.error ?? (e as Error).message}${stderrTail(r)}`,
      ms: r.ms,
    } as T;
  }
}

const stderrTail = (r: ExecResult) => {
  const line = lastLine(r.stderr);
  return line ? `: ${line.slice(0, 300)}` : "";
};
