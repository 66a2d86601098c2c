// Prebuilt libraries: the ones shipped in the npm package (prebuilt/<platform>/) and beside the standalone binary.
// Each libflashattn_<backend>.so there comes with libflashattn_<backend>.json, its manifest (written by
// scripts/release/prebuilt.ts when the package or the release is made). A prebuilt file is trusted only when its sha256
// matches the manifest: a file changed after packing (a flipped byte, a swapped library) is refused before dlopen
// runs any of its code. What a library needs from the machine (the newest GLIBC symbol version, the libraries it
// links) is read from the ELF file itself when the manifest is written (scripts/release/elf.ts), so it states facts.
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { openLibrary } from "./loader.ts";

export const MANIFEST_SCHEMA = 1;

export interface PrebuiltManifest {
  schema: typeof MANIFEST_SCHEMA;
  /** file name of the library the manifest describes */
  library: string;
  backend: string;
  sha256: string;
  bytes: number;
  /** flashattn's version and the git commit its sources came from ("-dirty" when the tree had changes) */
  version: string;
  commit: string;
  /** the compiler as the library reports it (fa_info), and the toolkit versions it was built with */
  compiler: string;
  toolkit: Record<string, string>;
  /** GPU targets with machine code (and PTX) in the library, as fa_info lists them; [] for the CPU library */
  archs: string[];
  /** the oldest NVIDIA driver that runs the CUDA library (the CUDA toolkit's minimum driver); CUDA library only */
  min_nvidia_driver?: string;
  /** what the file needs from the machine, read from its ELF dynamic section and version needs */
  needs: ElfNeeds;
}

export interface ElfNeeds {
  /** newest GLIBC_x.y symbol version the library references (across libc, libm, libpthread ...) */
  glibc: string | null;
  /** newest version per prefix per needed library, e.g. {"libstdc++.so.6": ["GLIBCXX_3.4.29", "CXXABI_1.3.13"]} */
  symbol_versions: Record<string, string[]>;
  /** DT_NEEDED entries: the shared libraries the dynamic loader must find */
  libraries: string[];
}

/** libflashattn_cpu.so -> libflashattn_cpu.json, in the same directory. */
export const manifestPathFor = (libraryPath: string) => libraryPath.replace(/\.so$/, "") + ".json";

export function sha256File(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** The manifest beside a library, or the reason there is no usable one. */
export function readManifest(libraryPath: string): { manifest: PrebuiltManifest } | { error: string } {
  const file = manifestPathFor(libraryPath);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return { error: `no manifest ${path.basename(file)} beside it` };
  }
  let m: Partial<PrebuiltManifest>;
  try {
    m = JSON.parse(text);
  } catch (e) {
    return { error: `manifest ${path.basename(file)} is not JSON (${(e as Error).message})` };
  }
  if (
    !m || typeof m !== "object" || m.schema !== MANIFEST_SCHEMA || typeof m.sha256 !== "string" ||
    !/^[0-9a-f]{64}$/.test(m.sha256)
  ) {
    return { error: `manifest ${path.basename(file)} is not a schema ${MANIFEST_SCHEMA} manifest with a sha256` };
  }
  if (m.library !== path.basename(libraryPath)) {
    return { error: `manifest ${path.basename(file)} describes ${m.library}, not ${path.basename(libraryPath)}` };
  }
  return { manifest: m as PrebuiltManifest };
}

const verified = new Map<string, string | null>();

/**
 * Why a prebuilt library must not be loaded (no manifest, or its bytes differ from the manifest's sha256), or null
 * when it is the file that was packed. Decided once per path per process: the dynamic loader, too, keeps the first
 * image it mapped for a path for the life of the process, and hashing the 20 MB CUDA library on every lookup would
 * cost more than the lookup.
 */
export function prebuiltRefusal(libraryPath: string): string | null {
  const cached = verified.get(libraryPath);
  if (cached !== undefined) return cached;
  const read = readManifest(libraryPath);
  let refusal: string | null;
  if ("error" in read) refusal = `refused: ${read.error} (a prebuilt library is trusted only with its manifest)`;
  else {
    let actual: string;
    try {
      actual = sha256File(libraryPath);
    } catch (e) {
      actual = `unreadable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
    }
    refusal = actual === read.manifest.sha256
      ? null
      : `refused: sha256 ${actual.slice(0, 16)}… differs from the manifest's ${read.manifest.sha256.slice(0, 16)}… ` +
        `(the file changed after packing; reinstall flashattn)`;
  }
  verified.set(libraryPath, refusal);
  return refusal;
}

// ---- this machine ------------------------------------------------------------------------------------------------

const CS_GNU_LIBC_VERSION = 2;
let machineGlibc: string | null | undefined;

/** The running C library's version ("2.36"), asked of libc itself through confstr; null where it is not glibc. */
export function runningGlibcVersion(): string | null {
  if (machineGlibc !== undefined) return machineGlibc;
  machineGlibc = null;
  try {
    const libc = openLibrary("libc.so.6", { confstr: { args: ["i32", "buffer", "u64"], returns: "u64" } });
    const buf = new Uint8Array(64);
    const n = libc.call("confstr", CS_GNU_LIBC_VERSION, buf, BigInt(buf.length));
    if (Number(n) > 0) {
      const text = new TextDecoder().decode(buf.subarray(0, Math.min(Number(n) - 1, buf.length)));
      machineGlibc = /^glibc (\d+(?:\.\d+)+)/.exec(text)?.[1] ?? null;
    }
    libc.close();
  } catch { /* not glibc (musl), or no FFI: unknown */ }
  return machineGlibc;
}
