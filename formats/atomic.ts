// Output files appear whole or not at all: the bytes go to a temporary file in the target's directory (same file
// system, so the rename is atomic), are fsynced, and the temporary file is renamed over the target. A crash or a
// full disk leaves the previous file (or nothing), never half a tensor.
//
// An output never replaces an input: `flashattn run --q x.npy --out x.npy` would destroy the data it reads. Paths are
// compared after resolving symlinks and `..`, so a link to an input or the same file named another way is refused.
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { FlashAttnError } from "../lib/errors.ts";

/** The canonical path of `file`: realpath when it exists, else realpath(directory)/name (the file it would be). */
export function canonicalPath(file: string): string {
  const absolute = path.resolve(file);
  try {
    return fs.realpathSync(absolute);
  } catch {
    const dir = path.dirname(absolute);
    try {
      return path.join(fs.realpathSync(dir), path.basename(absolute));
    } catch {
      return absolute;
    }
  }
}

/** Throws BAD_INPUT when `target` is, after canonicalisation, one of `inputs`. */
export function refuseOverwritingInputs(target: string, inputs: readonly string[]): void {
  const canonicalTarget = canonicalPath(target);
  for (const input of inputs) {
    if (canonicalPath(input) === canonicalTarget) {
      throw new FlashAttnError(
        "BAD_INPUT",
        `refusing to write ${target}: it is also an input (${input})`,
        "choose a different output path",
      );
    }
  }
}

export interface AtomicWriteOptions {
  /** Paths this run reads; the target must not be any of them. */
  inputs?: readonly string[];
}

/** Writes `bytes` (one or more chunks, in order) to `target` atomically. */
export function writeFileAtomic(
  target: string,
  bytes: Uint8Array | readonly Uint8Array[],
  options: AtomicWriteOptions = {},
): void {
  refuseOverwritingInputs(target, options.inputs ?? []);
  const chunks = bytes instanceof Uint8Array ? [bytes] : bytes;
  const absolute = path.resolve(target);
  const dir = path.dirname(absolute);
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch {
    throw new FlashAttnError(
      "BAD_INPUT",
      `cannot write ${target}: directory ${dir} does not exist`,
      `create it first: mkdir -p ${dir}`,
    );
  }
  if (!dirStat.isDirectory()) {
    throw new FlashAttnError("BAD_INPUT", `cannot write ${target}: ${dir} is not a directory`);
  }
  try {
    if (fs.statSync(absolute).isDirectory()) {
      throw new FlashAttnError("BAD_INPUT", `cannot write ${target}: it is a directory`, "name a file, e.g. out.npy");
    }
  } catch (error) {
    if (error instanceof FlashAttnError) throw error;
    // Not there yet: the usual case.
  }

  const temporary = path.join(
    dir,
    `.${path.basename(absolute)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`,
  );
  let fd: number | undefined;
  try {
    fd = fs.openSync(temporary, "wx", 0o644);
    for (const chunk of chunks) {
      let written = 0;
      while (written < chunk.byteLength) written += fs.writeSync(fd, chunk, written, chunk.byteLength - written);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(temporary, absolute);
  } catch (error) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(temporary, { force: true });
    const reason = error instanceof Error ? error.message : String(error);
    throw new FlashAttnError(
      "BAD_INPUT",
      `cannot write ${target}: ${reason}`,
      "check the path and that its directory is writable",
    );
  }
  syncDirectory(dir);
}

// The rename is durable only once the directory entry is on disk. Some file systems refuse fsync on a directory;
// the file itself is already safe then, so that refusal is not an error.
function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch {
    // see above
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
