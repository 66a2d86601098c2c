// NumPy .npy files (format versions 1.0, 2.0 and 3.0), little-endian, C order.
//
// Layout: "\x93NUMPY" | major u8 | minor u8 | header_len (u16 LE in v1, u32 LE in v2/v3) | header | data.
// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }, padded
// with spaces and ended by '\n' so the data starts on a 64-byte boundary; latin-1 in v1/v2, UTF-8 in v3.
//
// Dtypes: '<f4' is fp32, '<f2' is fp16. NumPy has no bfloat16: bf16 data arrives as raw 16-bit patterns, '<u2'
// (arr.view(np.uint16)) or 'V2' (ml_dtypes.bfloat16 saved by np.save); those are read as bf16 only when the caller
// says the data is bf16, since a uint16 file may just as well hold integers. bf16 is written as '<u2', which plain
// NumPy loads; `arr.view(ml_dtypes.bfloat16)` or `torch.from_numpy(arr).view(torch.bfloat16)` restores it.
// fp8 the same way, one byte: '|u1' (arr.view(np.uint8)) or '|V1' (ml_dtypes.float8_*) read as fp8 bit patterns when
// the caller names the format, written as '|u1' (torch.from_numpy(arr).view(torch.float8_e4m3fn) restores it).
import { elementsOf, type Tensor, tensor } from "../lib/tensor.ts";
import { type DType, dtypeBytes, type Fp8DType } from "../lib/vocabulary.ts";
import { type AtomicWriteOptions, writeFileAtomic } from "./atomic.ts";
import { badFile, describeShape, openInput, readExact, tensorByteCount } from "./input.ts";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
/** Real headers are a few hundred bytes; NumPy itself refuses more than 10000 by default. */
const MAX_HEADER_BYTES = 1 << 20;

export interface NpyHeader {
  descr: string;
  fortranOrder: boolean;
  shape: number[];
}

export interface ReadNpyOptions {
  /** Treat '<u2' / 'V2' data as bf16 bit patterns (the caller knows the file holds bf16). */
  bf16?: boolean;
  /** Treat '|u1' / 'V1' data as bit patterns of this fp8 format (the caller knows the file holds it). */
  fp8?: Fp8DType;
}

const fixConvert = "save it as float32 or float16, e.g. np.save(path, arr.astype(np.float32))";

/** The dtype `descr` stands for, or a BAD_INPUT error that says why it cannot be used. */
function dtypeOf(file: string, descr: string, options: ReadNpyOptions): DType {
  switch (descr) {
    case "<f4":
      return "fp32";
    case "<f2":
      return "fp16";
    case "<u2":
    case "|V2":
    case "<V2":
      if (options.bf16) return "bf16";
      throw badFile(
        file,
        `holds ${descr === "<u2" ? "uint16" : "2-byte raw"} data ('${descr}'), which is bfloat16 only if you say so`,
        "pass --dtype bf16 if these are bfloat16 bit patterns, else save as float32",
      );
    case "|u1":
    case "|V1":
      if (options.fp8) return options.fp8;
      throw badFile(
        file,
        `holds ${descr === "|u1" ? "uint8" : "1-byte raw"} data ('${descr}'), which is fp8 only if you say which format`,
        "pass --dtype fp8_e4m3 (or fp8_e5m2) if these are fp8 bit patterns, else save as float32",
      );
  }
  if (descr.startsWith(">")) {
    throw badFile(
      file,
      `is big-endian ('${descr}'); flashattn reads little-endian data`,
      "convert with arr.astype(arr.dtype.newbyteorder('<')) and save again",
    );
  }
  throw badFile(
    file,
    `has dtype '${descr}', which flashattn does not read (float32, float16, bf16 as uint16 and fp8 as uint8 only)`,
    fixConvert,
  );
}

/**
 * Parses the header dict strictly: exactly the keys descr, fortran_order and shape, Python literals only
 * (strings, True/False, a tuple of non-negative integers), nothing after the closing brace but spaces and '\n'.
 */
export function parseNpyHeader(file: string, text: string): NpyHeader {
  let at = 0;
  const fail = (what: string): never => {
    throw badFile(
      file,
      `malformed .npy header (${what} at character ${at}): ${JSON.stringify(text.slice(0, 120))}`,
      "re-save the array with numpy.save",
    );
  };
  const skipSpace = () => {
    while (at < text.length && (text[at] === " " || text[at] === "\t")) at++;
  };
  const expect = (ch: string) => {
    skipSpace();
    if (text[at] !== ch) fail(`expected '${ch}'`);
    at++;
  };
  const parseString = (): string => {
    skipSpace();
    const quote = text[at];
    if (quote !== "'" && quote !== '"') fail("expected a string");
    const end = text.indexOf(quote, at + 1);
    if (end < 0) fail("unterminated string");
    const value = text.slice(at + 1, end);
    if (value.includes("\\")) fail("escape sequences are not allowed");
    at = end + 1;
    return value;
  };
  const parseBool = (): boolean => {
    skipSpace();
    for (const [word, value] of [["True", true], ["False", false]] as const) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return value;
      }
    }
    return fail("expected True or False");
  };
  const parseShape = (): number[] => {
    expect("(");
    const dims: number[] = [];
    for (;;) {
      skipSpace();
      if (text[at] === ")") break;
      const digits = /^[0-9]+/.exec(text.slice(at, at + 32));
      if (!digits) fail("expected a non-negative integer dimension");
      const dim = Number(digits![0]);
      if (!Number.isSafeInteger(dim)) fail(`dimension ${digits![0]} is too large`);
      dims.push(dim);
      at += digits![0].length;
      skipSpace();
      if (text[at] === ",") {
        at++;
        continue;
      }
      if (text[at] !== ")") fail("expected ',' or ')' in shape");
      // Python needs the comma for a one-element tuple: "(3)" is the integer 3.
      if (dims.length === 1) fail("a one-dimensional shape must be written (n,)");
    }
    at++;
    return dims;
  };

  const seen = new Map<string, unknown>();
  expect("{");
  for (;;) {
    skipSpace();
    if (text[at] === "}") break;
    const key = parseString();
    if (seen.has(key)) fail(`key '${key}' appears twice`);
    expect(":");
    if (key === "descr") seen.set(key, parseString());
    else if (key === "fortran_order") seen.set(key, parseBool());
    else if (key === "shape") seen.set(key, parseShape());
    else fail(`unexpected key '${key}'`);
    skipSpace();
    if (text[at] === ",") at++;
    else if (text[at] !== "}") fail("expected ',' or '}'");
  }
  at++;
  if (!/^[ \t]*\n?[ \t]*$/.test(text.slice(at))) fail("unexpected text after the header dict");
  for (const key of ["descr", "fortran_order", "shape"]) if (!seen.has(key)) fail(`missing key '${key}'`);
  return {
    descr: seen.get("descr") as string,
    fortranOrder: seen.get("fortran_order") as boolean,
    shape: seen.get("shape") as number[],
  };
}

/** Reads a .npy file into a host tensor, checking every claimed size against the file before allocating. */
export function readNpy(file: string, options: ReadNpyOptions = {}): Tensor {
  const input = openInput(file, ".npy");
  try {
    const prefix = new Uint8Array(12);
    if (input.size < 10) {
      throw badFile(file, `is ${input.size} bytes, too short to be a .npy file`, "check that it is a NumPy .npy file");
    }
    readExact(input, 0, prefix.subarray(0, Math.min(12, input.size)));
    if (!MAGIC.every((b, i) => prefix[i] === b)) {
      throw badFile(
        file,
        "is not a .npy file (no \\x93NUMPY magic)",
        "save the array with numpy.save, or pass .safetensors with --input",
      );
    }
    const major = prefix[6];
    if (major < 1 || major > 3 || prefix[7] !== 0) {
      throw badFile(
        file,
        `has .npy format version ${major}.${prefix[7]}; flashattn reads 1.0, 2.0 and 3.0`,
        "re-save it with numpy.save",
      );
    }
    const view = new DataView(prefix.buffer);
    const lengthBytes = major === 1 ? 2 : 4;
    const headerStart = 8 + lengthBytes;
    if (input.size < headerStart) {
      throw badFile(file, "is truncated inside the .npy preamble", "re-save the array with numpy.save");
    }
    const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    if (headerLength > MAX_HEADER_BYTES) {
      throw badFile(
        file,
        `claims a ${headerLength}-byte .npy header, more than the ${MAX_HEADER_BYTES} flashattn accepts`,
        "re-save the array with numpy.save",
      );
    }
    const dataStart = headerStart + headerLength;
    if (dataStart > input.size) {
      throw badFile(
        file,
        `is truncated: its header claims ${headerLength} bytes but the file has ${
          input.size - headerStart
        } after the preamble`,
        "the file was cut short; re-save or re-download it",
      );
    }
    const headerBytes = new Uint8Array(headerLength);
    readExact(input, headerStart, headerBytes);
    const header = parseNpyHeader(file, decodeHeader(file, headerBytes, major));

    if (header.fortranOrder) {
      throw badFile(
        file,
        "is in Fortran (column-major) order; flashattn reads C order",
        "save np.ascontiguousarray(arr) instead",
      );
    }
    const dtype = dtypeOf(file, header.descr, options);
    const bytes = tensorByteCount(header.shape, dtypeBytes[dtype]);
    const available = input.size - dataStart;
    if (bytes === null || bytes > available) {
      throw badFile(
        file,
        `is truncated: shape ${describeShape(header.shape)} of '${header.descr}' needs ${
          bytes ?? "more than 2^53"
        } data bytes but the file has ${available}`,
        "the file was cut short or its header is wrong; re-save it",
      );
    }
    if (bytes < available) {
      throw badFile(
        file,
        `has ${available - bytes} bytes after the ${describeShape(header.shape)} '${header.descr}' data`,
        "the header does not match the data; re-save the array with numpy.save",
      );
    }
    const count = bytes / dtypeBytes[dtype];
    const data = elementsOf(dtype, new ArrayBuffer(count * dtypeBytes[dtype]));
    readExact(input, dataStart, new Uint8Array(data.buffer));
    return tensor(dtype, header.shape, data);
  } finally {
    input.close();
  }
}

function decodeHeader(file: string, bytes: Uint8Array, major: number): string {
  if (major === 3) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw badFile(file, "has a .npy v3 header that is not valid UTF-8", "re-save the array with numpy.save");
    }
  }
  let text = ""; // latin-1: one byte, one code point
  for (const byte of bytes) text += String.fromCharCode(byte);
  return text;
}

const descrFor: Record<DType, string> = { fp32: "<f4", fp16: "<f2", bf16: "<u2", fp8_e4m3: "|u1", fp8_e5m2: "|u1" };

/** The bytes of a .npy file for `t` (header chunk, then the data viewed in place): v1, or v2 for huge headers. */
export function encodeNpy(t: Tensor): Uint8Array[] {
  const shape = describeShape(t.shape);
  const dict = `{'descr': '${descrFor[t.dtype]}', 'fortran_order': False, 'shape': ${shape}, }`;
  const major = dict.length + 1 + 10 > 0xffff ? 2 : 1;
  const preamble = major === 1 ? 10 : 12;
  // Pad with spaces so that the data starts on a 64-byte boundary, then end the header with '\n'.
  const padded = dict + " ".repeat((64 - ((preamble + dict.length + 1) % 64)) % 64) + "\n";
  const head = new Uint8Array(preamble + padded.length);
  head.set(MAGIC);
  head[6] = major;
  head[7] = 0;
  const view = new DataView(head.buffer);
  if (major === 1) view.setUint16(8, padded.length, true);
  else view.setUint32(8, padded.length, true);
  for (let i = 0; i < padded.length; i++) head[preamble + i] = padded.charCodeAt(i);
  return [head, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)];
}

/** Writes `t` as .npy atomically (never over one of options.inputs). */
export function writeNpy(file: string, t: Tensor, options: AtomicWriteOptions = {}): void {
  writeFileAtomic(file, encodeNpy(t), options);
}
