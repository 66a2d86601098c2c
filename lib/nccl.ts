// NCCL, found at run time and loaded through FFI: the transport of context-parallel attention across GPUs
// (lib/ring.ts). One process drives every GPU of the ring: ncclCommInitAll makes one communicator per device, and
// each ring step is one ncclGroupStart / ncclSend + ncclRecv per rank / ncclGroupEnd on per-device streams.
//
// Where libnccl.so.2 is looked for, in order (every attempt recorded, like the library's own discovery):
//   1. FLASHATTN_NCCL=<path>: only that file (a failing explicit path is an error, never a silent fallback);
//   2. the bare soname, resolved by the system loader (LD_LIBRARY_PATH, ldconfig: a system or conda NCCL);
//   3. the copy PyTorch's wheels install (site-packages/nvidia/nccl/lib/libnccl.so.2), looked for in a bounded set
//      of Python prefixes: $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local, /usr/local, /usr, /opt/conda, one python3.* level each.
//
// Streams come from the CUDA driver API (libcuda.so.1, the library libflashattn_cuda depends on anyway): the ring's
// transfers run on a non-blocking stream per device, so they overlap the kernels on the default stream.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { type NativeArg, type NativeLibrary, openLibrary, readCString, type SymbolTable } from "../ffi/loader.ts";
import type { Backend, DeviceBuffer } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import type { RingTransport } from "./ring.ts";

export const ncclSymbols = {
  ncclGetVersion: { args: ["buffer"], returns: "i32" },
  ncclGetErrorString: { args: ["i32"], returns: "pointer" },
  ncclCommInitAll: { args: ["buffer", "i32", "buffer"], returns: "i32" },
  ncclCommDestroy: { args: ["pointer"], returns: "i32" },
  ncclGroupStart: { args: [], returns: "i32" },
  ncclGroupEnd: { args: [], returns: "i32" },
  // (const void* buf, size_t count, ncclDataType_t, int peer, ncclComm_t, cudaStream_t)
  ncclSend: { args: ["pointer", "u64", "i32", "i32", "pointer", "pointer"], returns: "i32" },
  ncclRecv: { args: ["pointer", "u64", "i32", "i32", "pointer", "pointer"], returns: "i32" },
} as const satisfies SymbolTable;

const NCCL_SUCCESS = 0;
/** ncclInt8: the ring moves bytes. */
const NCCL_INT8 = 0;

export type NcclSource = "env" | "system" | "python";

export interface NcclAttempt {
  path: string;
  source: NcclSource;
  ok: boolean;
  error?: string;
}

/** The pip wheel's NCCL under the Python prefixes named above (files that exist, in that order). */
export function pythonNcclCopies(env: Record<string, string | undefined> = process.env): string[] {
  const prefixes = [env.VIRTUAL_ENV, env.CONDA_PREFIX, path.join(env.HOME ?? os.homedir(), ".local"), "/usr/local", "/usr", "/opt/conda"];
  const found: string[] = [];
  for (const prefix of prefixes) {
    if (!prefix) continue;
    let entries: string[] = [];
    try {
      entries = fs.readdirSync(path.join(prefix, "lib")).filter((name) => /^python3(\.\d+)?$/.test(name)).sort();
    } catch {
      continue;
    }
    for (const python of entries) {
      for (const packages of ["site-packages", "dist-packages"]) {
        const file = path.join(prefix, "lib", python, packages, "nvidia", "nccl", "lib", "libnccl.so.2");
        if (fs.existsSync(file) && !found.includes(file)) found.push(file);
      }
    }
  }
  return found;
}

/** "2.21.5" from ncclGetVersion's code (X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before). */
export function ncclVersionString(code: number): string {
  const [major, rest] = code >= 10000 ? [Math.floor(code / 10000), code % 10000] : [Math.floor(code / 1000), code % 1000];
  return `${major}.${Math.floor(rest / 100)}.${rest % 100}`;
}

/** One loaded libnccl.so.2. */
export class Nccl {
  constructor(readonly lib: NativeLibrary<typeof ncclSymbols>, readonly source: NcclSource) {}

  get path(): string {
    return this.lib.path;
  }

  version(): string {
    const out = new Int32Array(1);
    this.check(this.lib.call("ncclGetVersion", out), "ncclGetVersion");
    return ncclVersionString(out[0]);
  }

  /** Throws the library's own sentence for a failed call. */
  check(result: number | bigint, what: string): void {
    const code = Number(result);
    if (code === NCCL_SUCCESS) return;
    const text = readCString(this.lib.call("ncclGetErrorString", code) as bigint) || `error ${code}`;
    throw new FlashAttnError("DEVICE_ERROR", `${what} failed: ${text} (ncclResult ${code})`,
      "NCCL_DEBUG=WARN shows NCCL's own account of the failure");
  }

  call(name: keyof typeof ncclSymbols, ...args: NativeArg[]): void {
    this.check(this.lib.call(name, ...args), name);
  }
}

/** Loads NCCL from the first candidate that opens; every attempt is recorded. */
export function openNccl(env: Record<string, string | undefined> = process.env): { nccl?: Nccl; attempts: NcclAttempt[] } {
  const explicit = env.FLASHATTN_NCCL?.trim();
  const candidates: Array<{ path: string; source: NcclSource }> = explicit
    ? [{ path: path.resolve(explicit), source: "env" }]
    : [{ path: "libnccl.so.2", source: "system" }, ...pythonNcclCopies(env).map((p) => ({ path: p, source: "python" as const }))];
  const attempts: NcclAttempt[] = [];
  for (const c of candidates) {
    if (c.source !== "system") {
      // dlopen of a FIFO blocks and of a directory fails obscurely: only regular files are opened.
      const stat = fs.statSync(c.path, { throwIfNoEntry: false });
      if (!stat?.isFile()) {
        attempts.push({ ...c, ok: false, error: stat ? "is not a regular file" : "no such file" });
        continue;
      }
    }
    try {
      const nccl = new Nccl(openLibrary(c.path, ncclSymbols), c.source);
      attempts.push({ ...c, ok: true });
      return { nccl, attempts };
    } catch (e) {
      attempts.push({ ...c, ok: false, error: (e as Error).message });
    }
  }
  return { attempts };
}

/** The sentence for "no NCCL": every place tried, and what to do. */
export function ncclMissingError(attempts: NcclAttempt[]): FlashAttnError {
  const tried = attempts.map((a) => `${a.path} (${a.source}): ${a.error}`).join("; ");
  return new FlashAttnError("LIBRARY_NOT_FOUND", `NCCL (libnccl.so.2) was not found: ${tried}`,
    "install NCCL (pip install nvidia-nccl-cu12, or the distribution's libnccl2) or set FLASHATTN_NCCL=/path/to/libnccl.so.2");
}

// ---- the CUDA driver's streams and contexts ------------------------------------------------------------------------

const driverSymbols = {
  cuInit: { args: ["u32"], returns: "i32" },
  cuDeviceGet: { args: ["buffer", "i32"], returns: "i32" },
  cuDevicePrimaryCtxRetain: { args: ["buffer", "i32"], returns: "i32" },
  cuDevicePrimaryCtxRelease_v2: { args: ["i32"], returns: "i32" },
  cuCtxSetCurrent: { args: ["pointer"], returns: "i32" },
  cuStreamCreate: { args: ["buffer", "u32"], returns: "i32" },
  cuStreamDestroy_v2: { args: ["pointer"], returns: "i32" },
  cuStreamSynchronize: { args: ["pointer"], returns: "i32" },
} as const satisfies SymbolTable;

const CU_STREAM_NON_BLOCKING = 1;

class Driver {
  readonly #lib: NativeLibrary<typeof driverSymbols>;
  constructor() {
    try {
      this.#lib = openLibrary("libcuda.so.1", driverSymbols);
    } catch (e) {
      throw new FlashAttnError("LIBRARY_NOT_FOUND", `the CUDA driver (libcuda.so.1) could not be loaded: ${(e as Error).message}`);
    }
    this.call("cuInit", 0);
  }
  call(name: keyof typeof driverSymbols, ...args: NativeArg[]): void {
    const code = Number(this.#lib.call(name, ...args));
    if (code !== 0) throw new FlashAttnError("DEVICE_ERROR", `${name} failed with CUresult ${code}`);
  }
  /** Calls `name` with an 8-byte out-parameter first and returns what it wrote there. */
  out(name: keyof typeof driverSymbols, ...args: NativeArg[]): bigint {
    const slot = new BigUint64Array(1);
    this.call(name, slot, ...args);
    return slot[0];
  }
  close(): void {
    this.#lib.close();
  }
}

/**
 * The ring over NCCL, one rank per listed GPU, all driven from this process through one CUDA backend. A ring of one
 * is a 1-rank communicator whose sends go to itself.
 */
export class NcclRing implements RingTransport {
  readonly ranks: number;
  readonly description: string;
  readonly #devices: number[];
  #comms: bigint[] = [];
  readonly #streams: bigint[] = [];
  /** The CUdevice and its primary context (the one the CUDA runtime uses) of each rank. */
  readonly #cuDevices: number[] = [];
  readonly #contexts: bigint[] = [];
  readonly #driver: Driver;
  #closed = false;

  constructor(readonly backend: Backend, readonly nccl: Nccl, devices: number[]) {
    if (backend.name !== "cuda") throw new FlashAttnError("UNSUPPORTED", `NCCL moves CUDA device memory: the ${backend.name} backend cannot use it`);
    if (devices.length < 1 || new Set(devices).size !== devices.length) {
      throw new FlashAttnError("USAGE", `a ring needs distinct devices, got ${devices.join(",") || "none"}`);
    }
    this.#devices = [...devices];
    this.ranks = devices.length;
    this.#driver = new Driver();
    try {
      for (const device of devices) {
        backend.setDevice(device);
        const cuDevice = Number(this.#driver.out("cuDeviceGet", device));
        this.#contexts.push(this.#driver.out("cuDevicePrimaryCtxRetain", cuDevice));
        this.#cuDevices.push(cuDevice);
      }
      const comms = new BigUint64Array(devices.length);
      nccl.call("ncclCommInitAll", comms, devices.length, Int32Array.from(devices));
      this.#comms = Array.from(comms);
      devices.forEach((_, r) => {
        this.use(r);
        this.#streams.push(this.#driver.out("cuStreamCreate", CU_STREAM_NON_BLOCKING));
      });
    } catch (e) {
      this.close();
      throw e;
    }
    this.description = `nccl ${nccl.version()} (${nccl.path}) over GPUs ${devices.join(",")}`;
  }

  use(rank: number): void {
    this.backend.setDevice(this.#devices[rank]);
    this.#driver.call("cuCtxSetCurrent", this.#contexts[rank]);
  }

  shift(send: readonly DeviceBuffer[], recv: readonly DeviceBuffer[], bytes: readonly number[]): void {
    const n = this.ranks;
    // The send buffers were written by kernels on each device's default stream: let those finish first.
    for (let r = 0; r < n; r++) {
      this.use(r);
      this.#driver.call("cuStreamSynchronize", null);
    }
    this.nccl.call("ncclGroupStart");
    try {
      for (let r = 0; r < n; r++) {
        const next = (r + 1) % n, previous = (r - 1 + n) % n;
        this.nccl.call("ncclSend", send[r].address, BigInt(bytes[r]), NCCL_INT8, next, this.#comms[r], this.#streams[r]);
        this.nccl.call("ncclRecv", recv[r].address, BigInt(bytes[previous]), NCCL_INT8, previous, this.#comms[r], this.#streams[r]);
      }
    } finally {
      this.nccl.call("ncclGroupEnd");
    }
  }

  wait(): void {
    for (let r = 0; r < this.ranks; r++) {
      this.use(r);
      this.#driver.call("cuStreamSynchronize", this.#streams[r]);
      this.backend.synchronize();
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#streams.forEach((stream, r) => {
      this.use(r);
      this.#driver.call("cuStreamDestroy_v2", stream);
    });
    for (const comm of this.#comms) this.nccl.call("ncclCommDestroy", comm);
    for (const cuDevice of this.#cuDevices) this.#driver.call("cuDevicePrimaryCtxRelease_v2", cuDevice);
    this.#driver.close();
  }
}
