// The standalone executable (`bun build --compile`, scripts/release/release.ts) carries its modules and data files inside
// itself, under Bun's virtual /$bunfs/ root. Bun reads those paths; other programs cannot: Python must be given a
// real file, and the probe worker cannot be `bun worker.ts` when there is no bun. This module is the one place that
// knows: in a checkout, an npm install or under Deno every path here is a plain file and passes through unchanged.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const VIRTUAL_ROOT = "/$bunfs/";

/** True inside the compiled executable. */
export const isStandalone = fileURLToPath(import.meta.url).startsWith(VIRTUAL_ROOT);

/**
 * The executable re-runs itself as the doctor's probe worker when this variable is "1" (bin/standalone.ts), since
 * it has no separate runtime to run doctor/probes/worker.ts with.
 */
export const PROBE_WORKER_ENV = "FLASHATTN_STANDALONE_PROBE_WORKER";

/**
 * A path another program can open for `file` (a data file beside a module, e.g. a Python script): the file itself,
 * or in the standalone executable a copy of the embedded file, written once per user into a private directory.
 * The directory holds every embedded file, so scripts that import their neighbours (worker_protocol.py) work.
 */
export function diskPath(file: string): string {
  if (!file.startsWith(VIRTUAL_ROOT)) return file;
  const dir = extractionDir();
  for (
    const blob of (globalThis as unknown as { Bun: { embeddedFiles: (Blob & { name: string })[] } }).Bun.embeddedFiles
  ) {
    const target = path.join(dir, path.basename(blob.name));
    const embedded = fs.readFileSync(path.join(VIRTUAL_ROOT, "root", blob.name));
    // Rewritten when absent or different (another flashattn version, or tampering), through a rename.
    if (!fs.existsSync(target) || !fs.readFileSync(target).equals(embedded)) {
      const tmp = `${target}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, embedded, { mode: 0o600 });
      fs.renameSync(tmp, target);
    }
  }
  return path.join(dir, path.basename(file));
}

function extractionDir(): string {
  const uid = process.getuid?.() ?? 0;
  const dir = path.join(os.tmpdir(), `flashattn-${uid}-embedded`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // A directory someone else made (or opened up) could feed us their scripts: refuse it rather than run them.
  const st = fs.lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o022) !== 0) {
    throw new Error(`${dir} is not a private directory of this user; remove it and run again`);
  }
  return dir;
}
