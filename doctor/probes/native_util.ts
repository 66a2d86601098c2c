// Small helpers shared by the FFI probes of system libraries (NVML, libcuda, HIP). These probes run inside
// doctor/probes/worker.ts, a child process with a deadline, so a library that blocks or crashes costs a finding,
// never the doctor.
import fs from "node:fs";
import { decodeCString } from "../../ffi/loader.ts";

/**
 * The file the dynamic loader mapped for a library opened by soname (e.g. "libcuda.so.1" may resolve to
 * /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05 or to a toolkit's stubs/libcuda.so). Linux only.
 */
export function mappedPath(sonamePrefix: string): string | undefined {
  try {
    for (const line of fs.readFileSync("/proc/self/maps", "utf8").split("\n")) {
      const file = line.slice(line.indexOf("/"));
      if (line.includes("/") && file.split("/").pop()!.startsWith(sonamePrefix)) return file;
    }
  } catch { /* no procfs: the path stays unknown */ }
  return undefined;
}

/** Runs `fill` with a fresh caller buffer and decodes the NUL-terminated text it wrote. */
export function textFrom(bytes: number, fill: (buf: Uint8Array) => number): { code: number; text: string } {
  const buf = new Uint8Array(bytes);
  const code = fill(buf);
  return { code, text: code === 0 ? decodeCString(buf).trim() : "" };
}

/** An integer out-parameter. */
export function intFrom(fill: (out: Int32Array) => number): { code: number; value: number } {
  const out = new Int32Array(1);
  const code = fill(out);
  return { code, value: out[0] };
}

/** "major.minor" from the 1000*major + 10*minor encoding of cuDriverGetVersion / nvmlSystemGetCudaDriverVersion. */
export function cudaVersionString(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** The first line of a loader error, without Bun's misleading cwd-relative path (see ffi/loader.ts). */
export { loaderMessage as loaderError } from "../../ffi/loader.ts";
