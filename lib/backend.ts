// Backend: one loaded libflashattn_<backend>.so behind a typed interface. Every native status becomes a
// FlashAttnError carrying the library's own sentence (fa_last_error), so nothing below this file sees status codes.
import fs from "node:fs";
import { addressOf, decodeCString, type NativeLibrary, openLibrary } from "../ffi/loader.ts";
import { ABI_VERSION, type FaSymbols, faSymbols, Status, statusNames } from "../ffi/symbols.ts";
import {
  type AttnParams,
  compareKvcacheLayout,
  compareLayout,
  decodeKvCacheOutputs,
  decodeOutputs,
  dtypeCode,
  encodeKvCacheParams,
  encodeParams,
  expectedKvcacheLayout,
  expectedLayout,
  type KvCacheParams,
} from "../ffi/layout.ts";
import { type Candidate, type LoadAttempt, libraryCandidates, missingFileError } from "../ffi/discovery.ts";
import { type ErrorCode, FlashAttnError } from "./errors.ts";
import type { BackendName, DType } from "./vocabulary.ts";

export type { BackendName, LoadAttempt };
export type Direction = "fwd" | "bwd" | "fwd+bwd";
export const directionCode: Record<Direction, number> = { "fwd": 0, "bwd": 1, "fwd+bwd": 2 };

export interface KernelInfo {
  id: number;
  name: string;
  directions?: string[];
  dtypes?: string[];
  head_dims?: unknown;
  features?: string[];
  min_arch?: string;
  /** head_dim x element size must be a multiple of this (the path copies rows in chunks of it); absent: any */
  row_bytes_multiple?: number;
}

/** fa_info's self-description. */
export interface LibraryInfo {
  backend: BackendName;
  version: string;
  abi: number;
  compiler?: string;
  built_with?: Record<string, string>;
  archs?: string[];
  kernels: KernelInfo[];
  [key: string]: unknown;
}

/** fa_device_info's description of one device. */
export interface DeviceInfo {
  name: string;
  arch: string;
  multiprocessors?: number;
  memory_bytes?: number;
  shared_memory_optin_bytes?: number;
  l2_bytes?: number;
  driver_version?: string | number;
  runtime_version?: string | number;
  [key: string]: unknown;
}

export type PlanResult =
  | { ok: true; kernel: { id: number; name: string }; num_splits?: number }
  | { ok: false; reasons: string[] };

/** A block of device memory owned by one backend (host memory on the CPU backend). */
export interface DeviceBuffer {
  readonly address: bigint;
  readonly bytes: number;
}

const statusToCode: Record<number, ErrorCode> = {
  [Status.INVALID_ARGUMENT]: "INVALID_ARGUMENT",
  [Status.UNSUPPORTED]: "UNSUPPORTED",
  [Status.OUT_OF_MEMORY]: "OUT_OF_MEMORY",
  [Status.NO_DEVICE]: "NO_DEVICE",
  [Status.DEVICE]: "DEVICE_ERROR",
  [Status.ABI]: "ABI_MISMATCH",
  [Status.INTERNAL]: "INTERNAL",
  [Status.BUFFER_TOO_SMALL]: "INTERNAL",
};

const TEXT_BUFFER = 1 << 16;

export class Backend {
  readonly name: BackendName;
  readonly path: string;
  readonly #lib: NativeLibrary<FaSymbols>;
  #info?: LibraryInfo;

  constructor(name: BackendName, lib: NativeLibrary<FaSymbols>) {
    this.name = name;
    this.path = lib.path;
    this.#lib = lib;
  }

  #lastError(): string {
    const buf = new Uint8Array(4096);
    this.#lib.call("fa_last_error", buf, BigInt(buf.length));
    return decodeCString(buf);
  }

  /** Throws a FlashAttnError for a non-zero status, with the library's message. */
  #check(status: number | bigint, what: string): void {
    const s = Number(status);
    if (s === Status.OK) return;
    const message = this.#lastError() || `${what} failed with status ${statusNames[s] ?? s}`;
    throw new FlashAttnError(statusToCode[s] ?? "INTERNAL", `${this.name}: ${message}`);
  }

  #text(what: string, call: (buf: Uint8Array) => number | bigint): string {
    const buf = new Uint8Array(TEXT_BUFFER);
    this.#check(call(buf), what);
    return decodeCString(buf);
  }

  #json<T>(what: string, call: (buf: Uint8Array) => number | bigint): T {
    const text = this.#text(what, call);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new FlashAttnError("INTERNAL", `${this.name}: ${what} returned malformed JSON: ${text.slice(0, 120)}`);
    }
  }

  info(): LibraryInfo {
    this.#info ??= this.#json<LibraryInfo>("fa_info", (b) => this.#lib.call("fa_info", b, BigInt(b.length)));
    return this.#info;
  }

  kernelName(id: number): string {
    return this.info().kernels.find((k) => k.id === id)?.name ?? `kernel#${id}`;
  }

  deviceCount(): number {
    const out = new Int32Array(1);
    this.#check(this.#lib.call("fa_device_count", out), "fa_device_count");
    return out[0];
  }

  deviceInfo(index: number): DeviceInfo {
    return this.#json<DeviceInfo>("fa_device_info", (b) => this.#lib.call("fa_device_info", index, b, BigInt(b.length)));
  }

  setDevice(index: number): void {
    this.#check(this.#lib.call("fa_set_device", index), "fa_set_device");
  }

  alloc(bytes: number): DeviceBuffer {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new FlashAttnError("INTERNAL", `cannot allocate ${bytes} bytes`);
    const out = new BigUint64Array(1);
    this.#check(this.#lib.call("fa_malloc", out, BigInt(bytes)), "fa_malloc");
    return { address: out[0], bytes };
  }

  free(buf: DeviceBuffer): void {
    this.#check(this.#lib.call("fa_free", buf.address), "fa_free");
  }

  /** Copies a host array into a new device buffer. */
  upload(host: ArrayBufferView): DeviceBuffer {
    const buf = this.alloc(host.byteLength);
    try {
      if (host.byteLength > 0) this.#check(this.#lib.call("fa_memcpy_h2d", buf.address, host, BigInt(host.byteLength)), "fa_memcpy_h2d");
    } catch (e) {
      this.free(buf);
      throw e;
    }
    return buf;
  }

  /** Copies the first `into.byteLength` bytes of a device buffer into a host array. */
  download(buf: DeviceBuffer, into: ArrayBufferView): void {
    if (into.byteLength > buf.bytes) throw new FlashAttnError("INTERNAL", `download of ${into.byteLength} bytes from a ${buf.bytes}-byte buffer`);
    if (into.byteLength === 0) return;
    this.#check(this.#lib.call("fa_memcpy_d2h", into, buf.address, BigInt(into.byteLength)), "fa_memcpy_d2h");
  }

  /** Fills a device buffer with one byte value (0xff poisons fp16/bf16/fp32 with NaNs). */
  fill(buf: DeviceBuffer, byteValue: number): void {
    this.#check(this.#lib.call("fa_memset", buf.address, byteValue, BigInt(buf.bytes)), "fa_memset");
  }

  copy(dst: DeviceBuffer, src: DeviceBuffer, bytes: number): void {
    if (bytes > dst.bytes || bytes > src.bytes) throw new FlashAttnError("INTERNAL", "device copy larger than its buffers");
    this.#check(this.#lib.call("fa_memcpy_d2d", dst.address, src.address, BigInt(bytes)), "fa_memcpy_d2d");
  }

  synchronize(): void {
    this.#check(this.#lib.call("fa_synchronize"), "fa_synchronize");
  }

  memoryStats(): { current: number; peak: number } {
    const out = new BigInt64Array(2);
    this.#check(this.#lib.call("fa_memory_stats", out), "fa_memory_stats");
    return { current: Number(out[0]), peak: Number(out[1]) };
  }

  resetPeakMemory(): void {
    this.#check(this.#lib.call("fa_reset_peak_memory"), "fa_reset_peak_memory");
  }

  forward(p: AttnParams): { kernelId: number; numSplits: number } {
    const bytes = encodeParams(p);
    this.#check(this.#lib.call("fa_forward", bytes), "fa_forward");
    return decodeOutputs(bytes);
  }

  backward(p: AttnParams): { kernelId: number } {
    const bytes = encodeParams(p);
    this.#check(this.#lib.call("fa_backward", bytes), "fa_backward");
    return { kernelId: decodeOutputs(bytes).kernelId };
  }

  /**
   * KV-cache attention on device buffers: appends p.kNew / p.vNew into the cache where it lives, then writes O and LSE
   * (flashattn.h, fa_kvcache_params). A decode loop calls this once per step on the same cache buffers.
   */
  forwardKvcache(p: KvCacheParams): { kernelId: number; numSplits: number } {
    if (!this.#lib.has("fa_forward_kvcache")) {
      throw new FlashAttnError("UNSUPPORTED", `${this.name}: ${this.path} predates KV-cache attention (no fa_forward_kvcache)`,
        "rebuild the library (bun kernels/build.ts) or install a newer flashattn");
    }
    const bytes = encodeKvCacheParams(p);
    this.#check(this.#lib.call("fa_forward_kvcache", bytes), "fa_forward_kvcache");
    return decodeKvCacheOutputs(bytes);
  }

  #requireCombine(symbol: "fa_merge_partial" | "fa_convert"): void {
    if (!this.#lib.has(symbol)) {
      throw new FlashAttnError("UNSUPPORTED", `${this.name}: ${this.path} predates context parallelism (no ${symbol})`,
        "rebuild the library (bun kernels/build.ts) or install a newer flashattn");
    }
  }

  /**
   * Merges a partial attention result into a running one through their LSEs (flashattn.h, fa_merge_partial): acc is
   * fp32 (batch, rows, heads, headDim), accLse fp32 (batch, heads, rows), part `dtype` in acc's layout.
   */
  mergePartial(dtype: DType, shape: { batch: number; rows: number; heads: number; headDim: number },
    acc: bigint, accLse: bigint, part: bigint, partLse: bigint): void {
    this.#requireCombine("fa_merge_partial");
    this.#check(this.#lib.call("fa_merge_partial", dtypeCode[dtype], shape.batch, shape.rows, shape.heads, shape.headDim,
      acc, accLse, part, partLse), "fa_merge_partial");
  }

  /** dst = (accumulate ? dst : 0) + src over `count` elements, converting between fp32, fp16 and bf16 (fa_convert). */
  convert(dstDtype: DType, dst: bigint, srcDtype: DType, src: bigint, count: number, accumulate: boolean): void {
    this.#requireCombine("fa_convert");
    this.#check(this.#lib.call("fa_convert", dtypeCode[dstDtype], dst, dtypeCode[srcDtype], src, BigInt(count), accumulate ? 1 : 0),
      "fa_convert");
  }

  /** Which kernel would serve `p`, or why none can. Never dereferences the pointers in `p`. */
  plan(p: AttnParams, direction: Direction): PlanResult {
    const bytes = encodeParams(p);
    return this.#json<PlanResult>("fa_plan", (b) => this.#lib.call("fa_plan", bytes, directionCode[direction], b, BigInt(b.length)));
  }

  /** Per-iteration times in ms, timed inside the library after `warmup` untimed runs. */
  bench(p: AttnParams, direction: Direction, warmup: number, iters: number): Float32Array {
    if (!Number.isInteger(iters) || iters < 1) throw new FlashAttnError("USAGE", `iterations must be a positive whole number, got ${iters}`);
    const times = new Float32Array(iters);
    const bytes = encodeParams(p);
    this.#check(this.#lib.call("fa_bench", bytes, directionCode[direction], warmup, iters, times), "fa_bench");
    return times;
  }

  /** Per-run times in ms of fa_forward_kvcache's device work, timed inside the library as bench() times fa_forward. */
  benchKvcache(p: KvCacheParams, warmup: number, iters: number): Float32Array {
    if (!Number.isInteger(iters) || iters < 1) throw new FlashAttnError("USAGE", `iterations must be a positive whole number, got ${iters}`);
    if (!this.#lib.has("fa_bench_kvcache")) {
      throw new FlashAttnError("UNSUPPORTED", `${this.name}: ${this.path} predates fa_bench_kvcache`,
        "rebuild the library (bun kernels/build.ts) or install a newer flashattn");
    }
    const times = new Float32Array(iters);
    const bytes = encodeKvCacheParams(p);
    this.#check(this.#lib.call("fa_bench_kvcache", bytes, warmup, iters, times), "fa_bench_kvcache");
    return times;
  }

  /** Unloads the library. Only for tests and short-lived tools: openBackend keeps libraries loaded. */
  close(): void {
    for (const [path, b] of loaded) if (b === this) loaded.delete(path);
    this.#lib.close();
  }
}

/**
 * Asks the library where it puts each field of a struct (`query` reports sizes and offsets, as ffi/layout.ts
 * expects them) and refuses a library that disagrees, naming the first field that differs.
 */
function checkLayout(
  lib: NativeLibrary<FaSymbols>,
  libPath: string,
  query: "fa_params_layout" | "fa_kvcache_layout",
  what: string,
  expectedEntries: () => number[],
  compare: (reported: ArrayLike<number | bigint>) => string[],
): void {
  const reported = new BigInt64Array(expectedEntries().length + 8);
  const count = Number(lib.call(query, reported, reported.length));
  const problems = compare(Array.from(reported.subarray(0, Math.min(count, reported.length))));
  if (problems.length) {
    throw new FlashAttnError("ABI_MISMATCH", `${libPath}: ${what} differs: ${problems[0]}`,
      "rebuild the library (bun kernels/build.ts) so it matches this flashattn");
  }
}

/**
 * Loads one candidate and checks ABI version, params layout and (when `expected` is given) the backend it says it
 * is. An explicitly named library may be any backend: it is what it says.
 */
function loadCandidate(expected: BackendName | null, c: Candidate): Backend {
  const lib = openLibrary(c.path, faSymbols);
  try {
    const abi = Number(lib.call("fa_abi_version"));
    if (abi !== ABI_VERSION) {
      throw new FlashAttnError(
        "ABI_MISMATCH",
        `${c.path} has ABI version ${abi} but this flashattn needs ${ABI_VERSION}`,
        "rebuild the library (bun kernels/build.ts) or install the matching flashattn",
      );
    }
    checkLayout(lib, c.path, "fa_params_layout", "parameter layout", expectedLayout, compareLayout);
    if (lib.has("fa_kvcache_layout")) {
      checkLayout(lib, c.path, "fa_kvcache_layout", "KV-cache parameter layout", expectedKvcacheLayout, compareKvcacheLayout);
    }
    const probe = new Backend(expected ?? "cpu", lib);
    const actual = probe.info().backend;
    if (expected && actual !== expected) {
      throw new FlashAttnError("ABI_MISMATCH", `${c.path} is a ${actual} library, not ${expected}`);
    }
    return expected ? probe : new Backend(actual, lib);
  } catch (e) {
    lib.close();
    throw e;
  }
}

const loaded = new Map<string, Backend>();

/** dlopen of a FIFO blocks forever and of a device or directory fails obscurely: only regular files are opened. */
function notRegularFileError(c: Candidate): string | null {
  if (c.source === "system") return null;
  try {
    return fs.statSync(c.path).isFile() ? null : "is not a regular file (a FIFO, device or directory)";
  } catch (error) {
    return (error as Error).message;
  }
}

/**
 * Finds and loads libflashattn_<name>.so. Every attempt is recorded; the first library that loads and passes the
 * ABI checks wins. With an explicit path (libPath / FLASHATTN_LIB) only that path is tried.
 */
export function openBackend(
  name: BackendName,
  opts: { libPath?: string; env?: Record<string, string | undefined> } = {},
): { backend?: Backend; attempts: LoadAttempt[] } {
  const attempts: LoadAttempt[] = [];
  for (const c of libraryCandidates(name, opts)) {
    const missing = missingFileError(c) ?? notRegularFileError(c);
    if (missing) {
      attempts.push({ path: c.path, source: c.source, ok: false, error: missing });
      continue;
    }
    try {
      // A library stays loaded for the life of the process: unloading a CUDA runtime that was linked in
      // statically is not safe, and reopening costs a device initialisation.
      const cached = loaded.get(c.path);
      const backend = cached && (c.explicit || cached.name === name) ? cached : loadCandidate(c.explicit ? null : name, c);
      loaded.set(c.path, backend);
      attempts.push({ path: c.path, source: c.source, ok: true });
      return { backend, attempts };
    } catch (e) {
      attempts.push({ path: c.path, source: c.source, ok: false, error: (e as Error).message.split("\n")[0] });
      if (c.explicit) break;
    }
  }
  return { attempts };
}

/** One line naming every place that was tried, for "library not found" messages. */
export function describeAttempts(attempts: LoadAttempt[]): string {
  return attempts.map((a) => `${a.path} (${a.source}): ${a.ok ? "ok" : a.error}`).join("; ");
}

export { addressOf };
