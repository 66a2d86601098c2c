// `flashattn run --devices 0,1,…`: the run's q, k, v through context-parallel (ring) attention, one rank per listed
// device. On the CUDA backend the blocks travel over NCCL (lib/nccl.ts), one process driving every GPU; on the CPU
// backend (for trying the ring without GPUs) every rank is the CPU's device 0 and the blocks move by in-process copies.
import type { AttentionPlan, AttentionResult } from "../lib/attention.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { NcclRing, ncclMissingError, openNccl } from "../lib/nccl.ts";
import type { AttentionSemantics } from "../lib/problem.ts";
import { LocalRing, type RingTransport } from "../lib/ring.ts";
import { ringAttentionTensors } from "../lib/ring_tensors.ts";
import type { Tensor } from "../lib/tensor.ts";
import process from "node:process";

/** What a ring run reports beside the usual result. */
export interface RingReport {
  ranks: number;
  devices: number[];
  transport: string;
}

/** The transport for `devices` on the chosen backend, or the sentence why there is none. */
export function ringTransport(decided: AttentionPlan, devices: number[], env: Record<string, string | undefined> = process.env): RingTransport {
  const backend = decided.backend;
  if (backend.name === "cpu") {
    if (devices.some((d) => d !== 0)) {
      throw new FlashAttnError("USAGE", `the CPU backend has one device (0): --devices ${devices.join(",")} names others`,
        "on the CPU every rank is device 0 (e.g. --devices 0,0,0 for three ranks)");
    }
    return new LocalRing(backend, devices.length);
  }
  if (backend.name !== "cuda") {
    throw new FlashAttnError("UNSUPPORTED", `context parallelism runs over NCCL on the cuda backend; ${backend.name} has no ring transport (RCCL is not supported)`);
  }
  if (new Set(devices).size !== devices.length) throw new FlashAttnError("USAGE", `--devices lists a GPU twice: ${devices.join(",")}`);
  const count = backend.deviceCount();
  const missing = devices.find((d) => d >= count);
  if (missing !== undefined) {
    throw new FlashAttnError("USAGE", `--devices names GPU ${missing}, but this machine has ${count} (0..${count - 1})`);
  }
  const { nccl, attempts } = openNccl(env);
  if (!nccl) throw ncclMissingError(attempts);
  return new NcclRing(backend, nccl, devices);
}

export interface RingRun extends AttentionResult {
  ring: RingReport;
}

/** Runs the forward through the ring; the result has attention()'s fields plus the ring's description. */
export function runRing(decided: AttentionPlan, devices: number[], q: Tensor, k: Tensor, v: Tensor, semantics: AttentionSemantics, tell: (m: string) => void): RingRun {
  const ring = ringTransport(decided, devices);
  try {
    tell(devices.length === 1
      ? `one device: running the ring of 1 (no context parallelism; the same code path as N devices) over ${ring.description}…`
      : `running the ring of ${devices.length} ranks over ${ring.description}…`);
    const { out, lse, times } = ringAttentionTensors(ring, q, k, v, { causal: semantics.causal, scale: semantics.scale, softcap: semantics.softcap });
    const ringReport: RingReport = { ranks: ring.ranks, devices, transport: ring.description };
    return { out, lse, backend: decided.backend.name, kernel: `ring of ${ring.ranks}`, numSplits: 1, ms: times.totalMs, ring: ringReport };
  } finally {
    ring.close();
  }
}
