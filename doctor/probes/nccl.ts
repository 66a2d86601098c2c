// NCCL and GPU peer access, for context parallelism (lib/ring.ts, lib/nccl.ts): the libnccl.so.2 lib/nccl.ts would
// load (the same search, so the doctor and `run --devices` agree) and its version, then from the CUDA driver how many
// GPUs there are and which ordered pairs cannot reach each other's memory (cuDeviceCanAccessPeer). Runs in the probe
// worker (a driver call on a wedged GPU ends the child, not the doctor).
import process from "node:process";
import { type NativeArg, type NativeLibrary, openLibrary, type SymbolTable } from "../../ffi/loader.ts";
import { openNccl } from "../../lib/nccl.ts";
import type { NcclFacts } from "../facts.ts";
import { codeName, cuResultNames } from "../codes.ts";
import { intFrom, loaderError } from "./native_util.ts";

const peerSymbols = {
  cuInit: { args: ["u32"], returns: "i32" },
  cuDeviceGetCount: { args: ["buffer"], returns: "i32" },
  cuDeviceGet: { args: ["buffer", "i32"], returns: "i32" },
  cuDeviceCanAccessPeer: { args: ["buffer", "i32", "i32"], returns: "i32" },
} as const satisfies SymbolTable;

/** More GPUs than any node has: a driver answering more is not believed (the pair loop is quadratic). */
const MAX_GPUS = 64;

function peerAccess(): Pick<NcclFacts, "gpus" | "no_peer_access" | "peer_error"> {
  let lib: NativeLibrary<typeof peerSymbols>;
  try {
    lib = openLibrary("libcuda.so.1", peerSymbols);
  } catch (e) {
    return { peer_error: `the CUDA driver could not be loaded: ${loaderError(e)}` };
  }
  const call = (name: keyof typeof peerSymbols, ...args: NativeArg[]) => Number(lib.call(name, ...args));
  const failed = (what: string, code: number) => ({ peer_error: `${what} returned ${codeName(cuResultNames, code)}` });
  try {
    const init = call("cuInit", 0);
    if (init !== 0) return failed("cuInit", init);
    const count = intFrom((o) => call("cuDeviceGetCount", o));
    if (count.code !== 0) return failed("cuDeviceGetCount", count.code);
    if (count.value < 0 || count.value > MAX_GPUS) return { peer_error: `the driver reports ${count.value} GPUs` };
    const handles: number[] = [];
    for (let i = 0; i < count.value; i++) {
      const handle = intFrom((o) => call("cuDeviceGet", o, i));
      if (handle.code !== 0) return failed(`cuDeviceGet(${i})`, handle.code);
      handles.push(handle.value);
    }
    const blocked: Array<[number, number]> = [];
    for (let i = 0; i < handles.length; i++) {
      for (let j = 0; j < handles.length; j++) {
        if (i === j) continue;
        const can = intFrom((o) => call("cuDeviceCanAccessPeer", o, handles[i], handles[j]));
        if (can.code !== 0) return failed(`cuDeviceCanAccessPeer(${i}, ${j})`, can.code);
        if (can.value === 0) blocked.push([i, j]);
      }
    }
    return { gpus: count.value, no_peer_access: blocked };
  } finally {
    lib.close();
  }
}

export function probeNccl(): NcclFacts {
  const started = performance.now();
  const { nccl, attempts } = openNccl(process.env);
  const facts: NcclFacts = { status: nccl ? "ok" : "absent", attempts, ...peerAccess() };
  if (nccl) {
    facts.library = nccl.path;
    facts.source = nccl.source;
    try {
      facts.version = nccl.version();
    } catch (e) {
      facts.status = "error";
      facts.error = (e as Error).message;
    }
  } else {
    facts.error = "libnccl.so.2 was not found";
  }
  facts.ms = Math.round(performance.now() - started);
  return facts;
}
