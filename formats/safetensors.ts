// .safetensors files: header_len (u64 LE) | JSON header of header_len bytes | data buffer.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// buffer), plus an optional "__metadata__" map of strings. The format requires the tensors to cover the data buffer
// exactly: no overlaps, no holes. flashattn reads and writes F32, F16, BF16, F8_E4M3 and F8_E5M2 (fp8 as bit patterns);
// the other dtypes are recognised (so a file that also holds, say, an I64 tensor can still be opened) but not read.
import { type DType, elementsOf, type Tensor, tensor } from "../lib/tensor.ts";
import { type AtomicWriteOptions, writeFileAtomic } from "./atomic.ts";
import { badFile, describeShape, type InputFile, openInput, readExact, tensorByteCount } from "./input.ts";

/** The reference implementation refuses headers above 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000;

const elementBytes: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
  C64: 8,
};
const fileDtype: Record<DType, string> = { fp32: "F32", fp16: "F16", bf16: "BF16", fp8_e4m3: "F8_E4M3", fp8_e5m2: "F8_E5M2" };
const readableDtypes: Record<string, DType> = Object.fromEntries(
  Object.entries(fileDtype).map(([dtype, name]) => [name, dtype as DType]),
);

export interface SafetensorsEntry {
  name: string;
  /** The dtype as the file spells it (F32, BF16, I64, ...). */
  dtype: string;
  shape: number[];
  /** Offsets into the data buffer, [begin, end). */
  begin: number;
  end: number;
}

/** An opened, fully validated .safetensors file; tensors are read on demand. */
export interface SafetensorsFile {
  path: string;
  metadata: Record<string, string>;
  entries: Map<string, SafetensorsEntry>;
  /** Reads one tensor (F32/F16/BF16/F8_E4M3/F8_E5M2) as a host tensor. */
  read(name: string): Tensor;
  /** Reads one I32 tensor (indices, lengths: a KV cache's block table) as its values, C order. */
  readInt32(name: string): { shape: number[]; data: Int32Array };
  close(): void;
}

const fixResave = "re-save it with safetensors (save_file)";

/** Validates a parsed header against the data buffer size; returns the entries and metadata. */
export function validateHeader(
  file: string,
  header: unknown,
  dataSize: number,
): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw badFile(file, "has a safetensors header that is not a JSON object", fixResave);
  }
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (
        typeof value !== "object" || value === null || Array.isArray(value) ||
        !Object.values(value).every((v) => typeof v === "string")
      ) {
        throw badFile(file, "has a __metadata__ that is not a map of strings to strings", fixResave);
      }
      metadata = { ...(value as Record<string, string>) };
      continue;
    }
    entries.set(name, validateEntry(file, name, value, dataSize));
  }

  // Sorted by position, each tensor must start where the previous one ended and the last must end the buffer.
  const ordered = [...entries.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous = "the start of the data";
  for (const entry of ordered) {
    if (entry.begin < cursor) {
      throw badFile(file, `tensor '${entry.name}' [${entry.begin}, ${entry.end}) overlaps ${previous}`, fixResave);
    }
    if (entry.begin > cursor) {
      throw badFile(
        file,
        `has ${entry.begin - cursor} unused bytes before tensor '${entry.name}' (offsets must leave no holes)`,
        fixResave,
      );
    }
    cursor = entry.end;
    previous = `tensor '${entry.name}'`;
  }
  if (cursor !== dataSize) {
    throw badFile(
      file,
      `has ${dataSize - cursor} bytes after the last tensor's data (offsets must cover the data exactly)`,
      fixResave,
    );
  }
  return { entries, metadata };
}

function validateEntry(file: string, name: string, value: unknown, dataSize: number): SafetensorsEntry {
  const fail = (problem: string): never => {
    throw badFile(file, `tensor '${name}' ${problem}`, fixResave);
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail("is not a JSON object");
  const record = value as Record<string, unknown>;
  const { dtype, shape, data_offsets: offsets } = record;
  for (const key of Object.keys(record)) {
    if (key !== "dtype" && key !== "shape" && key !== "data_offsets") fail(`has an unexpected key '${key}'`);
  }
  if (typeof dtype !== "string" || !(dtype in elementBytes)) fail(`has an unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`has a shape that is not a list of non-negative integers: ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    fail(`has data_offsets that are not two non-negative integers: ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as number[];
  if (end < begin) fail(`has data_offsets [${begin}, ${end}] that end before they begin`);
  if (end > dataSize) {
    fail(`has data_offsets [${begin}, ${end}] past the ${dataSize}-byte data buffer (truncated file?)`);
  }
  const bytes = tensorByteCount(shape as number[], elementBytes[dtype as string]);
  if (bytes !== end - begin) {
    fail(
      `has shape ${describeShape(shape as number[])} of ${dtype} (${
        bytes ?? "more than 2^53"
      } bytes) but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { name, dtype: dtype as string, shape: shape as number[], begin, end };
}

/** Opens and validates `file`: header length against the file size and a cap, JSON, every entry's offsets. */
export function openSafetensors(file: string): SafetensorsFile {
  const input = openInput(file, ".safetensors");
  try {
    if (input.size < 8) throw badFile(file, `is ${input.size} bytes, too short to be a .safetensors file`, fixResave);
    const prefix = new Uint8Array(8);
    readExact(input, 0, prefix);
    const headerLength = new DataView(prefix.buffer).getBigUint64(0, true);
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw badFile(
        file,
        `claims a ${headerLength}-byte header, more than the ${MAX_HEADER_BYTES} allowed (not a .safetensors file?)`,
        fixResave,
      );
    }
    if (Number(headerLength) > input.size - 8) {
      throw badFile(
        file,
        `is truncated: its header claims ${headerLength} bytes but only ${input.size - 8} follow`,
        "the file was cut short; re-save or re-download it",
      );
    }
    const headerBytes = new Uint8Array(Number(headerLength));
    readExact(input, 8, headerBytes);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
    } catch (error) {
      throw badFile(file, `has a header that is not valid JSON (${(error as Error).message})`, fixResave);
    }
    const dataStart = 8 + Number(headerLength);
    const { entries, metadata } = validateHeader(file, header, input.size - dataStart);
    return {
      path: file,
      metadata,
      entries,
      read: (name) => readEntry(input, entries, dataStart, name),
      readInt32: (name) => readInt32Entry(input, entries, dataStart, name),
      close: () => input.close(),
    };
  } catch (error) {
    input.close();
    throw error;
  }
}

function entryNamed(input: InputFile, entries: Map<string, SafetensorsEntry>, name: string): SafetensorsEntry {
  const entry = entries.get(name);
  if (!entry) {
    const names = [...entries.keys()];
    throw badFile(
      input.path,
      `has no tensor named '${name}' (it has ${names.length ? names.map((n) => `'${n}'`).join(", ") : "no tensors"})`,
      "choose the tensor with --q-name/--k-name/--v-name",
    );
  }
  return entry;
}

function readInt32Entry(input: InputFile, entries: Map<string, SafetensorsEntry>, dataStart: number, name: string) {
  const entry = entryNamed(input, entries, name);
  if (entry.dtype !== "I32") {
    throw badFile(input.path, `tensor '${name}' has dtype ${entry.dtype}, but it holds indices: I32 is read`,
      "save it as torch.int32");
  }
  const bytes = new Uint8Array(entry.end - entry.begin);
  readExact(input, dataStart + entry.begin, bytes);
  return { shape: entry.shape, data: new Int32Array(bytes.buffer) };
}

function readEntry(input: InputFile, entries: Map<string, SafetensorsEntry>, dataStart: number, name: string): Tensor {
  const entry = entryNamed(input, entries, name);
  const dtype = readableDtypes[entry.dtype];
  if (!dtype) {
    throw badFile(
      input.path,
      `tensor '${name}' has dtype ${entry.dtype}, which flashattn does not read (F32, F16, BF16, F8_E4M3, F8_E5M2 only)`,
      "convert it, e.g. tensor.to(torch.float32), and save again",
    );
  }
  const bytes = new Uint8Array(entry.end - entry.begin);
  readExact(input, dataStart + entry.begin, bytes);
  return tensor(dtype, entry.shape, elementsOf(dtype, bytes.buffer));
}

/** Reads named tensors (all readable ones when `names` is omitted) and the metadata, closing the file. */
export function readSafetensors(
  file: string,
  names?: readonly string[],
): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const opened = openSafetensors(file);
  try {
    const wanted = names ?? [...opened.entries.values()].filter((e) => e.dtype in readableDtypes).map((e) => e.name);
    return { tensors: new Map(wanted.map((n) => [n, opened.read(n)])), metadata: opened.metadata };
  } finally {
    opened.close();
  }
}

/**
 * The bytes of a .safetensors file. Tensors are laid out by element size (largest first), then by name, back to
 * back, after a header padded with spaces to a multiple of 8: every tensor starts aligned to its element size.
 */
export function encodeSafetensors(
  tensors: Record<string, Tensor>,
  metadata: Record<string, string> = {},
): Uint8Array[] {
  const names = Object.keys(tensors).sort((a, b) => {
    const bySize = tensors[b].data.BYTES_PER_ELEMENT - tensors[a].data.BYTES_PER_ELEMENT;
    return bySize || (a < b ? -1 : a > b ? 1 : 0);
  });
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    if (name === "__metadata__") throw new Error("'__metadata__' is reserved and cannot name a tensor");
    const t = tensors[name];
    header[name] = { dtype: fileDtype[t.dtype], shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20); // pad with spaces
  headerBytes.set(json);
  const head = new Uint8Array(8 + headerBytes.byteLength);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  head.set(headerBytes, 8);
  return [
    head,
    ...names.map((n) => new Uint8Array(tensors[n].data.buffer, tensors[n].data.byteOffset, tensors[n].data.byteLength)),
  ];
}

/** Writes tensors (and metadata) as .safetensors atomically (never over one of options.inputs). */
export function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor>,
  metadata: Record<string, string> = {},
  options: AtomicWriteOptions = {},
): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata), options);
}
