// Prebuilt libraries: the ones shipped in the npm package (prebuilt/<platform>/) and beside the standalone binary.
// Each libflashattn_<backend>.so there comes with libflashattn_<backend>.json, its manifest (written by
// scripts/prebuilt.ts when the package or the release is made). A prebuilt file is trusted only when its sha256
// matches the manifest: a file changed after packing (a flipped byte, a swapped library) is refused before dlopen
// runs any of its code. What a library needs from the machine (the newest GLIBC symbol version, the libraries it
// links) is read from the ELF file itself, so the manifest states facts, not assumptions.
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

/** Compares dotted version strings numerically: -1, 0 or 1. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[._-]/).map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(/[._-]/).map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
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

// ---- ELF ---------------------------------------------------------------------------------------------------------

const SHT_DYNAMIC = 6;
const SHT_GNU_VERNEED = 0x6ffffffe;
const DT_NEEDED = 1n;

/**
 * The shared libraries and symbol versions an ELF64 little-endian shared object needs. Every offset is checked
 * against the file: a truncated or hostile file gives an Error, never a read out of bounds or a huge loop.
 */
export function readElfNeeds(bytes: Uint8Array): ElfNeeds {
  const bad = (why: string) => new Error(`not a readable ELF64 shared library: ${why}`);
  if (bytes.length < 64 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    throw bad("no ELF magic");
  }
  if (bytes[4] !== 2 || bytes[5] !== 1) throw bad("not 64-bit little-endian");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (off: number) => {
    if (off < 0 || off + 8 > bytes.length) throw bad(`offset ${off} past the end`);
    const v = dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`value at ${off} too large`);
    return Number(v);
  };
  const u32 = (off: number) => {
    if (off < 0 || off + 4 > bytes.length) throw bad(`offset ${off} past the end`);
    return dv.getUint32(off, true);
  };
  const u16 = (off: number) => {
    if (off < 0 || off + 2 > bytes.length) throw bad(`offset ${off} past the end`);
    return dv.getUint16(off, true);
  };
  const shoff = u64(0x28), shentsize = u16(0x3a), shnum = u16(0x3c);
  if (shentsize < 64 || shoff + shnum * shentsize > bytes.length) throw bad("section headers outside the file");
  const sections = Array.from({ length: shnum }, (_, i) => {
    const h = shoff + i * shentsize;
    return { type: u32(h + 4), offset: u64(h + 0x18), size: u64(h + 0x20), link: u32(h + 0x28), info: u32(h + 0x2c) };
  });
  const stringAt = (strtab: number, off: number) => {
    const s = sections[strtab];
    if (!s || off >= s.size) throw bad("string outside its table");
    const start = s.offset + off;
    const end = bytes.indexOf(0, start);
    if (end < 0 || end > s.offset + s.size) throw bad("unterminated string");
    return new TextDecoder().decode(bytes.subarray(start, end));
  };

  const libraries: string[] = [];
  for (const s of sections.filter((x) => x.type === SHT_DYNAMIC)) {
    for (let off = s.offset; off + 16 <= s.offset + s.size; off += 16) {
      const tag = dv.getBigInt64(off, true);
      if (tag === 0n) break;
      if (tag === DT_NEEDED) libraries.push(stringAt(s.link, u64(off + 8)));
    }
  }

  // Newest version per (library, prefix): GLIBC_2.34 beats GLIBC_2.2.5; GLIBCXX and CXXABI are kept apart.
  const newest = new Map<string, Map<string, string>>();
  for (const s of sections.filter((x) => x.type === SHT_GNU_VERNEED)) {
    let off = s.offset;
    for (let n = 0; n < s.info; n++) {
      const count = u16(off + 2), file = stringAt(s.link, u32(off + 4)), aux = u32(off + 8), next = u32(off + 12);
      let a = off + aux;
      for (let j = 0; j < count; j++) {
        const name = stringAt(s.link, u32(a + 8));
        const m = /^([A-Z_]+?)_(\d+(?:\.\d+)*)$/.exec(name);
        if (m) {
          const perLib = newest.get(file) ?? new Map<string, string>();
          const old = perLib.get(m[1]);
          if (!old || compareVersions(m[2], old.slice(m[1].length + 1)) > 0) perLib.set(m[1], name);
          newest.set(file, perLib);
        }
        const step = u32(a + 12);
        if (step === 0) break;
        a += step;
      }
      if (next === 0) break;
      off += next;
    }
  }
  const symbolVersions: Record<string, string[]> = {};
  let glibc: string | null = null;
  for (const [file, perLib] of [...newest].sort(([a], [b]) => a.localeCompare(b))) {
    symbolVersions[file] = [...perLib.values()].sort();
    const g = perLib.get("GLIBC")?.slice("GLIBC_".length);
    if (g && (!glibc || compareVersions(g, glibc) > 0)) glibc = g;
  }
  return { glibc, symbol_versions: symbolVersions, libraries };
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
