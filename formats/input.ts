// Reading untrusted tensor files: every size a header claims is checked against the real file size before anything
// is allocated, so a 100-byte file that claims a (1e9, 1e9) tensor costs a stat, not a giant allocation.
import fs from "node:fs";
import { FlashAttnError } from "../lib/errors.ts";

/**
 * A BAD_INPUT error about `file`: "<file>: <what is wrong>" plus how to fix it. The problem may quote what a file
 * says (tensor names, dtypes, header keys); FlashAttnError shows their control characters as escapes.
 */
export function badFile(file: string, problem: string, fix?: string): FlashAttnError {
  return new FlashAttnError("BAD_INPUT", `${file}: ${problem}`, fix);
}

/** An open input file and its size; close() when done. */
export interface InputFile {
  path: string;
  fd: number;
  size: number;
  close(): void;
}

/**
 * Opens an input file for reading, refusing anything that is not a regular file (a FIFO would block the open or
 * the read forever, a device never ends, a directory has no bytes). The open itself does not block: O_NONBLOCK,
 * which has no effect on the reads of a regular file.
 */
export function openInput(file: string, kind: string): InputFile {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === "ENOENT") throw badFile(file, "no such file", `check the path of the ${kind} file`);
    if (code === "EACCES") throw badFile(file, "permission denied", "make the file readable");
    throw badFile(file, `cannot open: ${(error as Error).message}`);
  }
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) {
    fs.closeSync(fd);
    const what = stat.isFIFO() ? "a FIFO" : stat.isDirectory() ? "a directory" : stat.isSocket() ? "a socket" : "a device";
    throw badFile(file, `is not a regular file (it is ${what})`, `name a ${kind} file`);
  }
  return { path: file, fd, size: stat.size, close: () => fs.closeSync(fd) };
}

/** Reads exactly `into.byteLength` bytes at `position`; the caller has checked the range against the file size. */
export function readExact(input: InputFile, position: number, into: Uint8Array): void {
  let done = 0;
  while (done < into.byteLength) {
    const n = fs.readSync(input.fd, into, done, into.byteLength - done, position + done);
    if (n <= 0) throw badFile(input.path, `ends early at byte ${position + done} (the file changed while being read?)`);
    done += n;
  }
}

/**
 * Bytes a tensor of `shape` with `elementBytes`-byte elements occupies, or null when the count overflows a safe
 * integer (any such tensor is larger than any real file). Dimensions must be whole numbers ≥ 0.
 */
export function tensorByteCount(shape: readonly number[], elementBytes: number): number | null {
  let bytes = elementBytes;
  for (const dim of shape) {
    bytes *= dim;
    if (!Number.isSafeInteger(bytes)) return null;
  }
  return bytes;
}

export function describeShape(shape: readonly number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
}
