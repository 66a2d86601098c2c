// Where libflashattn_<backend>.so is looked for, in order, recording every attempt with its failure text (doctor and
// error messages list them):
//   1. an explicit path: --lib / the libPath option, else FLASHATTN_LIB. A failing explicit path is an error, never
//      a silent fallback to another library.
//   2. the build folder relative to this module (a source checkout after `bun kernels/build.ts`).
//   3. beside the package: <package>/prebuilt/<platform>/ and the directory of the running executable (for
//      `bun build --compile` / `deno compile --include`). These prebuilt files load only when their sha256 matches
//      the manifest beside them (ffi/prebuilt.ts).
//   4. the bare soname, resolved by the system loader (LD_LIBRARY_PATH, ldconfig).
import { fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import process from "node:process";
import type { BackendName } from "../lib/vocabulary.ts";
import { prebuiltRefusal } from "./prebuilt.ts";

export type AttemptSource = "flag" | "env" | "build" | "package" | "executable" | "system";

export interface LoadAttempt {
  path: string;
  source: AttemptSource;
  ok: boolean;
  error?: string;
}

export interface Candidate {
  path: string;
  source: AttemptSource;
  explicit: boolean;
}

export const libraryFileName = (backend: BackendName) => `libflashattn_${backend}.so`;

const moduleDir = path.dirname(fileURLToPath(import.meta.url));
export const packageRoot = path.resolve(moduleDir, "..");

/** The candidates for one backend, in search order. An explicit path makes it the only candidate. */
export function libraryCandidates(
  backend: BackendName,
  opts: { libPath?: string; env?: Record<string, string | undefined> } = {},
): Candidate[] {
  const env = opts.env ?? process.env;
  if (opts.libPath) return [{ path: path.resolve(opts.libPath), source: "flag", explicit: true }];
  if (env.FLASHATTN_LIB) return [{ path: path.resolve(env.FLASHATTN_LIB), source: "env", explicit: true }];
  const file = libraryFileName(backend);
  const platform = `${process.platform}-${process.arch}`;
  // Inside a standalone executable this module lives in Bun's virtual /$bunfs/, where no library can be.
  const inFiles = !moduleDir.startsWith("/$bunfs/");
  const beside: Candidate[] = [
    { path: path.join(packageRoot, "build", file), source: "build", explicit: false },
    { path: path.join(packageRoot, "prebuilt", platform, file), source: "package", explicit: false },
  ];
  const list: Candidate[] = [
    ...(inFiles ? beside : []),
    { path: path.join(path.dirname(process.execPath), file), source: "executable", explicit: false },
    { path: file, source: "system", explicit: false },
  ];
  // The same file reached two ways is tried once.
  const seen = new Set<string>();
  return list.filter((c) => !seen.has(c.path) && seen.add(c.path));
}

/**
 * Why a candidate fails before any dlopen: a path that does not exist, or a prebuilt file (package, executable)
 * whose manifest does not vouch for its bytes.
 */
export function missingFileError(c: Candidate): string | null {
  if (c.source === "system") return null;
  if (!fs.existsSync(c.path)) return "no such file";
  return c.source === "package" || c.source === "executable" ? prebuiltRefusal(c.path) : null;
}
