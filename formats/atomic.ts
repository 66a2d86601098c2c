// Output files appear whole or not at all: the bytes go to a temporary file in the target's directory (same file
// system, so the rename is atomic), are fsynced, and the temporary file is renamed over the target. A crash or a
// full disk leaves the previous file (or nothing), never half a tensor.
//
// An output never replaces an input: `flashattn run --q x.npy --out x.npy` would destroy the data it reads. Paths are
// compared after resolving symlinks and `..`, so a link to an input or the same file named another way is refused.
//
// Replacing a file keeps what the user set up: its permission bits stay, and a target that is a symbolic link is
// written through, atomically, to the file it points at (the link stays a link). A link to nothing is refused.
//
// Several outputs of one command are written together (writeFilesAtomic): all are staged first, then renamed in one
// step that puts the old files back if a rename fails. SIGINT or SIGTERM while staging removes the temporary files
// and exits with 128 + the signal number (130, 143).
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

const cannotWrite = (target: string, why: string, fix?: string) =>
  new FlashAttnError("BAD_INPUT", `cannot write ${target}: ${why}`, fix);

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

/**
 * Checks, before any work is done, that `target` can be written: not an input, its directory exists and is
 * writable, and it is (or will be) a regular file. Returns the file that will be replaced or created: the target
 * itself, or what a symbolic link points at.
 */
export function checkOutputTarget(target: string, inputs: readonly string[] = []): string {
  refuseOverwritingInputs(target, inputs);
  const absolute = path.resolve(target);
  let link: fs.Stats | undefined;
  try {
    link = fs.lstatSync(absolute);
  } catch {
    // Not there yet: the usual case.
  }
  let file = absolute;
  if (link?.isSymbolicLink()) {
    try {
      file = fs.realpathSync(absolute);
    } catch {
      throw cannotWrite(target, "it is a symbolic link to a file that does not exist", "remove the link or name a file");
    }
  }
  const dir = path.dirname(file);
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch {
    throw cannotWrite(target, `directory ${dir} does not exist`, `create it first: mkdir -p ${dir}`);
  }
  if (!dirStat.isDirectory()) throw cannotWrite(target, `${dir} is not a directory`);
  // Writable means a new file can be created there (access(2) answers for the real uid only, and not in every
  // runtime): create the kind of temporary file the write will need, and remove it.
  const probe = temporaryBeside(file, "tmp");
  try {
    fs.closeSync(fs.openSync(probe, "wx", 0o600));
    fs.rmSync(probe, { force: true });
  } catch {
    throw cannotWrite(target, `directory ${dir} is not writable`, "choose a directory you can write to");
  }
  const existing = link && statOrUndefined(file);
  if (existing?.isDirectory()) throw cannotWrite(target, "it is a directory", "name a file, e.g. out.npy");
  if (existing && !existing.isFile()) {
    throw cannotWrite(target, "it exists and is not a regular file (a FIFO, device or socket)", "name a regular file");
  }
  return file;
}

/** checkOutputTarget for each of several outputs written together, which must also be different files. */
export function checkOutputTargets(targets: readonly string[], inputs: readonly string[] = []): string[] {
  const real = targets.map((t) => checkOutputTarget(t, inputs));
  for (let i = 1; i < real.length; i++) {
    const same = real.indexOf(real[i]);
    if (same < i) throw cannotWrite(targets[i], `it is the same file as ${targets[same]}`, "name two different files");
  }
  return real;
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

export interface AtomicWriteOptions {
  /** Paths this run reads; the target must not be any of them. */
  inputs?: readonly string[];
}

/** One output file: where it goes and its bytes, in order. */
export interface OutputFile {
  target: string;
  bytes: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** A temporary file beside the real target, fully written and fsynced, waiting for its rename. */
interface Staged {
  target: string;
  file: string;
  temporary: string;
  /** Permission bits of the file it replaces (kept), or undefined for a new file. */
  mode?: number;
}

function temporaryBeside(file: string, tag: string): string {
  return path.join(
    path.dirname(file),
    `.${path.basename(file)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.${tag}`,
  );
}

/** Temporary files of writes in progress: a signal removes them before the process exits. */
const pending = new Set<string>();
const signalNumbers = { SIGINT: 2, SIGTERM: 15 } as const;
let listening = 0;
function onSignal(signal: keyof typeof signalNumbers): void {
  for (const file of pending) fs.rmSync(file, { force: true });
  process.exit(128 + signalNumbers[signal]);
}
const handlers = {
  SIGINT: () => onSignal("SIGINT"),
  SIGTERM: () => onSignal("SIGTERM"),
};
function listenForSignals(on: boolean): void {
  listening += on ? 1 : -1;
  for (const [signal, handler] of Object.entries(handlers)) {
    if (on && listening === 1) process.on(signal, handler);
    if (!on && listening === 0) process.off(signal, handler);
  }
}

// Large chunks are written in slices; between slices an asynchronous write lets a pending signal be handled.
const SLICE_BYTES = 8 << 20;

function writeAll(fd: number, chunk: Uint8Array): void {
  let written = 0;
  while (written < chunk.byteLength) written += fs.writeSync(fd, chunk, written, chunk.byteLength - written);
}

/**
 * Creates the temporary file for `file`: a new file gets the usual permissions (0666 less the umask), one that
 * replaces an existing file keeps that file's permission bits.
 */
function createTemporary(file: string): { fd: number; temporary: string; mode?: number } {
  const temporary = temporaryBeside(file, "tmp");
  const mode = statOrUndefined(file)?.mode;
  const fd = fs.openSync(temporary, "wx", 0o666);
  try {
    if (mode !== undefined) fs.fchmodSync(fd, mode & 0o7777);
  } catch (error) {
    fs.closeSync(fd);
    fs.rmSync(temporary, { force: true });
    throw error;
  }
  return { fd, temporary, mode };
}

const writeFailed = (target: string, error: unknown) =>
  error instanceof FlashAttnError ? error : cannotWrite(target, error instanceof Error ? error.message : String(error),
    "check the path and that its directory is writable");

/** Writes one file's bytes to a temporary file beside its target, letting signals in between slices. */
async function stage(out: OutputFile, file: string): Promise<Staged> {
  let created: ReturnType<typeof createTemporary> | undefined;
  try {
    created = createTemporary(file);
    pending.add(created.temporary);
    const chunks = out.bytes instanceof Uint8Array ? [out.bytes] : out.bytes;
    for await (const chunk of chunks) {
      for (let at = 0; at < chunk.byteLength; at += SLICE_BYTES) {
        writeAll(created.fd, chunk.subarray(at, Math.min(chunk.byteLength, at + SLICE_BYTES)));
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    }
    fs.fsyncSync(created.fd);
    fs.closeSync(created.fd);
    return { target: out.target, file, temporary: created.temporary, mode: created.mode };
  } catch (error) {
    if (created) {
      fs.closeSync(created.fd);
      fs.rmSync(created.temporary, { force: true });
      pending.delete(created.temporary);
    }
    throw writeFailed(out.target, error);
  }
}

/**
 * Renames every staged file over its target. If a rename fails, the targets already replaced get their old files
 * back (kept as hard links until the end) or are removed when they are new: all outputs or none.
 */
function commit(staged: Staged[]): void {
  const backups = staged.map((s) => {
    if (s.mode === undefined) return undefined;
    const backup = temporaryBeside(s.file, "old");
    try {
      fs.linkSync(s.file, backup);
      return backup;
    } catch {
      return undefined; // a file system without hard links: the commit is then atomic per file only
    }
  });
  let done = 0;
  try {
    for (; done < staged.length; done++) fs.renameSync(staged[done].temporary, staged[done].file);
  } catch (error) {
    for (let i = 0; i < done; i++) {
      if (backups[i]) fs.renameSync(backups[i]!, staged[i].file);
      else if (staged[i].mode === undefined) fs.rmSync(staged[i].file, { force: true });
    }
    for (const s of staged.slice(done)) fs.rmSync(s.temporary, { force: true });
    throw cannotWrite(staged[done].target, (error as Error).message, "check the path and that its directory is writable");
  } finally {
    for (const b of backups) if (b) fs.rmSync(b, { force: true });
    for (const s of staged) pending.delete(s.temporary);
  }
  for (const dir of new Set(staged.map((s) => path.dirname(s.file)))) syncDirectory(dir);
}

/**
 * Writes several files as one: every target is checked first, then all are staged, then all renamed; a failure at
 * any step leaves every target as it was. SIGINT/SIGTERM during the writes remove the temporary files and exit.
 */
export async function writeFilesAtomic(files: readonly OutputFile[], options: AtomicWriteOptions = {}): Promise<void> {
  const real = checkOutputTargets(files.map((f) => f.target), options.inputs);
  const staged: Staged[] = [];
  listenForSignals(true);
  try {
    for (const [i, f] of files.entries()) staged.push(await stage(f, real[i]));
    commit(staged.splice(0));
  } finally {
    for (const s of staged) {
      fs.rmSync(s.temporary, { force: true });
      pending.delete(s.temporary);
    }
    listenForSignals(false);
  }
}

/** Writes `bytes` (one or more chunks, in order) to `target` atomically, synchronously. */
export function writeFileAtomic(
  target: string,
  bytes: Uint8Array | readonly Uint8Array[],
  options: AtomicWriteOptions = {},
): void {
  const file = checkOutputTarget(target, options.inputs ?? []);
  let created: ReturnType<typeof createTemporary> | undefined;
  let open = false;
  try {
    created = createTemporary(file);
    open = true;
    for (const chunk of bytes instanceof Uint8Array ? [bytes] : bytes) writeAll(created.fd, chunk);
    fs.fsyncSync(created.fd);
    fs.closeSync(created.fd);
    open = false;
    fs.renameSync(created.temporary, file);
  } catch (error) {
    if (created) {
      if (open) fs.closeSync(created.fd);
      fs.rmSync(created.temporary, { force: true });
    }
    throw writeFailed(target, error);
  }
  syncDirectory(path.dirname(file));
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
