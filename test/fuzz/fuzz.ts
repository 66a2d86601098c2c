// A seeded, deterministic mutation fuzzer for the inputs flashattn takes from strangers: the .npy parser, the
// .safetensors parser and the `run` command's flags (through the public `main([...])` of cli.ts, in-process).
//
// Property, for every case: it succeeds, or it fails with ONE line — a FlashAttnError whose code is documented
// (BAD_INPUT for a file, USAGE and friends for flags, exit codes 2/3, CHECK_FAILED 1) — never an uncaught exception,
// an INTERNAL error, a stack trace, a typed-array allocation out of proportion to the input (a header's size claims
// must be checked against the file first), or a hang (the caller, test/fuzz.test.ts, runs this in a child process
// with a watchdog on the per-case progress lines). A file the parser accepts must also be self-consistent: the data
// it returns holds exactly the elements its shape says and the file holds exactly those bytes.
//
//   bun test/fuzz/fuzz.ts [--cases N] [--seed S] [--target npy|safetensors|flags] [--only I]
//   FLASHATTN_FUZZ_CASES=100000 bun test test/fuzz.test.ts
//
// Case i of a target depends only on (seed, target, i), so a violation is replayed with --only i. Progress: one line
// "case <target> <i>" on stderr before each case; the summary (JSON) on stdout at the end.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

/** Bytes of the largest typed array any code constructs during the current case (set by trackAllocations). */
let largestAllocation = 0;

/**
 * Wraps the global typed-array constructors so that every `new Float32Array(n)` (and friends) records its size.
 * Must run before the modules under test are loaded; only ever in the fuzzing child process.
 */
let tracking = false;
function trackAllocations(): void {
  if (tracking) return;
  tracking = true;
  const g = globalThis as unknown as Record<string, unknown>;
  for (const name of ["Uint8Array", "Uint16Array", "Int32Array", "Float32Array", "Float64Array", "ArrayBuffer"]) {
    const ctor = g[name] as { BYTES_PER_ELEMENT?: number; new (...args: unknown[]): unknown };
    g[name] = new Proxy(ctor, {
      construct(target, args, newTarget) {
        if (typeof args[0] === "number") {
          largestAllocation = Math.max(largestAllocation, args[0] * (target.BYTES_PER_ELEMENT ?? 1));
        }
        return Reflect.construct(target, args, newTarget);
      },
    });
  }
}

// ---- seeded randomness -------------------------------------------------------------------------------------------

/** A small, fast, seedable generator (mulberry32): the same seed gives the same cases on every machine. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

/** The generator of case `index` of `target`: independent of every other case, so any case replays alone. */
export function caseRng(seed: number, target: string, index: number): Rng {
  let h = 2166136261 ^ seed;
  for (const ch of `${target}:${index}`) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return new Rng(h);
}

// ---- values a hostile input likes ---------------------------------------------------------------------------------

/** Numbers at the edges of every integer type a size passes through on its way to the C ABI. */
const edgeNumbers = [
  "0",
  "1",
  "2",
  "3",
  "8",
  "-1",
  "-0",
  "2147483647",
  "2147483648",
  "4294967295",
  "4294967296",
  "4294967297",
  "9007199254740991",
  "9007199254740992",
  "9007199254740993",
  "18446744073709551615",
  "18446744073709551616",
  "1e20",
  "1e400",
  "1.5",
  "1e3",
  "0x10",
  "NaN",
  "Infinity",
];

/** Strings that are not numbers, or are numbers only to a careless parser. */
const junk = [
  "",
  " ",
  "abc",
  "1,2",
  "1;2",
  ",",
  "--",
  "-",
  "+4",
  " 3",
  "3 ",
  "\u0663",
  "\uff13",
  "8\n",
  "\u00001",
  "1_000",
  "\u001b[31mred\u001b[0m",
  "\u001b]52;c;Zm9v\u0007",
  "q\r\nk",
  "a".repeat(300),
  "%s%n",
  "../../etc/passwd",
];

const edgeFloats = [
  "0",
  "1",
  "30",
  "0.125",
  "-1",
  "-0",
  "1e-50",
  "1e-45",
  "1.4e-45",
  "1e-38",
  "5e-324",
  "1e38",
  "3.4028235e38",
  "3.5e38",
  "1e39",
  "1e308",
  "NaN",
  "Infinity",
  "-Infinity",
  "1/8",
  "1e",
  ".",
  "0x1p3",
];

// ---- seed files ---------------------------------------------------------------------------------------------------

function float32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

function seededValues(rng: Rng, n: number): number[] {
  return Array.from({ length: n }, () => rng.next() * 2 - 1);
}

function npyBytes(descr: string, shape: string, data: Uint8Array, major = 1): Uint8Array {
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const preamble = major === 1 ? 10 : 12;
  const header = dict + " ".repeat((64 - ((preamble + dict.length + 1) % 64)) % 64) + "\n";
  const out = new Uint8Array(preamble + header.length + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const view = new DataView(out.buffer);
  if (major === 1) view.setUint16(8, header.length, true);
  else view.setUint32(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[preamble + i] = header.charCodeAt(i);
  out.set(data, preamble + header.length);
  return out;
}

const shapeText = (
  dims: readonly (number | string)[],
) => (dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(", ")})`);

/** A valid .npy file: fp32, fp16 or bf16 bit patterns, format 1, 2 or 3, a few small shapes (BSHD and others). */
function seedNpy(rng: Rng): Uint8Array {
  const dims = rng.pick([[1, 8, 2, 16], [2, 3, 1, 8], [1, 12, 1, 16], [4], [2, 3], [1, 1, 1, 1], [0, 4], []]);
  const count = dims.reduce((a, b) => a * b, 1);
  const descr = rng.pick(["<f4", "<f2", "<u2", "|V2"]);
  const data = descr === "<f4"
    ? float32Bytes(seededValues(rng, count))
    : new Uint8Array(Uint16Array.from({ length: count }, () => rng.int(0x10000)).buffer);
  return npyBytes(descr, shapeText(dims), data, rng.pick([1, 1, 2, 3]));
}

function safetensorsBytes(header: unknown, data: Uint8Array, lengthField?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

interface StEntry {
  dtype: unknown;
  shape: unknown;
  data_offsets: unknown;
  [extra: string]: unknown;
}

/** A valid .safetensors layout: q/k/v or a packed qkv, sometimes a tensor of another dtype and metadata. */
function seedSafetensors(rng: Rng): { header: Record<string, unknown>; data: Uint8Array } {
  const tensors: [string, string, number[]][] = rng.chance(0.5)
    ? [["q", "F32", [1, 8, 2, 16]], ["k", "F32", [1, 12, 1, 16]], ["v", "F32", [1, 12, 1, 16]]]
    : [["qkv", rng.pick(["F32", "F16", "BF16"]), [1, 6, 3, 2, 8]]];
  if (rng.chance(0.3)) tensors.push(["ids", "I64", [3]]);
  const bytesPer: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I64: 8 };
  const header: Record<string, unknown> = {};
  if (rng.chance(0.5)) header.__metadata__ = { format: "pt", note: "seed" };
  let offset = 0;
  for (const [name, dtype, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, bytesPer[dtype]);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const data = new Uint8Array(offset);
  for (let i = 0; i < data.length; i += 4) data.set(float32Bytes([rng.next() * 2 - 1]), i);
  return { header, data };
}

// ---- mutations ------------------------------------------------------------------------------------------------------

/** Byte-level damage: bit flips, interesting bytes, truncation, appended garbage, a copied block. */
export function mutateBytes(rng: Rng, input: Uint8Array): Uint8Array {
  let bytes: Uint8Array = input.slice();
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const at = bytes.length ? rng.int(bytes.length) : 0;
    switch (rng.int(6)) {
      case 0: // flip a few bits
        for (let i = 0, n = 1 + rng.int(8); i < n && bytes.length; i++) bytes[rng.int(bytes.length)] ^= 1 << rng.int(8);
        break;
      case 1: // an interesting byte
        if (bytes.length) bytes[at] = rng.pick([0x00, 0xff, 0x7f, 0x80, 0x20, 0x0a, 0x22, 0x27, 0x7b, 0x7d]);
        break;
      case 2: // truncate
        bytes = bytes.slice(0, at);
        break;
      case 3: { // append garbage
        const extra = Uint8Array.from({ length: 1 + rng.int(64) }, () => rng.int(256));
        const grown = new Uint8Array(bytes.length + extra.length);
        grown.set(bytes);
        grown.set(extra, bytes.length);
        bytes = grown;
        break;
      }
      case 4: // overwrite a 4- or 8-byte field with an edge value (sizes, lengths)
        if (bytes.length >= at + 8) {
          const v = new DataView(bytes.buffer, bytes.byteOffset);
          const edge = rng.pick([
            0n,
            1n,
            0x7fffffffn,
            0x80000000n,
            0xffffffffn,
            0x1_0000_0000n,
            0x7fff_ffff_ffff_ffffn,
            0xffff_ffff_ffff_ffffn,
            BigInt(bytes.length),
            BigInt(bytes.length) + 1n,
          ]);
          if (rng.chance(0.5)) v.setBigUint64(at, edge, true);
          else v.setUint32(at, Number(edge & 0xffffffffn), true);
        }
        break;
      default: { // duplicate a block somewhere else
        const len = rng.int(32);
        const from = rng.int(Math.max(1, bytes.length - len));
        bytes.copyWithin(at, from, from + len);
      }
    }
  }
  return bytes;
}

function shapePool(rng: Rng): string {
  const n = rng.int(6);
  const dims = Array.from({ length: n }, () => rng.chance(0.6) ? String(rng.int(17)) : rng.pick(edgeNumbers));
  switch (rng.int(8)) {
    case 0:
      return `(${dims.join(", ")})`; // "(3)" is not a tuple
    case 1:
      return `[${dims.join(", ")}]`;
    case 2:
      return `(${dims.join(", ")},,)`;
    default:
      return shapeText(dims);
  }
}

/** A .npy whose header dict is rebuilt from hostile parts, with real or random data after it. */
function npyFieldMutation(rng: Rng): Uint8Array {
  const descr = rng.pick(["<f4", "<f2", "<u2", "|V2", "<V2", ">f4", "<f8", "|u1", "<i4", "", "f4", "<f4\u0000", "'"]);
  const order = rng.pick(["False", "True", "false", "0", "None", "'False'"]);
  const keys = [`'descr': '${descr}'`, `'fortran_order': ${order}`, `'shape': ${shapePool(rng)}`];
  if (rng.chance(0.15)) keys.push(rng.pick([`'descr': '<f4'`, `'extra': 1`, `"shape": (1,)`, `'shape': ()`]));
  if (rng.chance(0.15)) keys.splice(rng.int(keys.length), 1);
  if (rng.chance(0.3)) keys.sort(() => rng.next() - 0.5);
  let dict = `{${keys.join(", ")}${rng.chance(0.5) ? ", " : ""}}`;
  if (rng.chance(0.1)) dict += rng.pick(["junk", "}", "\x00", " \n \n"]);
  if (rng.chance(0.05)) dict = dict.replace("}", "");
  const dataLength = rng.pick([0, 1, 4, 63, 64, 256, 1024, 3 * 1024]);
  const data = Uint8Array.from({ length: dataLength }, () => rng.int(256));
  const bytes = npyBytes("<f4", "(1,)", new Uint8Array(0), rng.pick([1, 2, 3]));
  // Replace the encoded dict with ours, keeping the preamble format and (usually) a correct length field.
  const major = bytes[6];
  const preamble = major === 1 ? 10 : 12;
  const header = dict + " ".repeat((64 - ((preamble + dict.length + 1) % 64)) % 64) + "\n";
  const encoded = major === 3
    ? new TextEncoder().encode(header)
    : Uint8Array.from(header, (c) => c.charCodeAt(0) & 0xff);
  const out = new Uint8Array(preamble + encoded.length + data.length);
  out.set(bytes.subarray(0, preamble));
  const view = new DataView(out.buffer);
  const length = rng.chance(0.85) ? encoded.length : rng.pick([0, 1, encoded.length + 1, 0xffff, 0xffffffff, 1 << 20]);
  if (major === 1) view.setUint16(8, length & 0xffff, true);
  else view.setUint32(8, length >>> 0, true);
  out.set(encoded, preamble);
  out.set(data, preamble + encoded.length);
  return out;
}

const jsonEdges: unknown[] = [
  0,
  1,
  -1,
  1.5,
  2 ** 31,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 53 + 2,
  1e20,
  1e308,
  "8",
  null,
  true,
  [],
  {},
  [1, 2],
];

/** A .safetensors whose JSON header has hostile fields, names, nesting or length field. */
function safetensorsFieldMutation(rng: Rng): Uint8Array {
  const { header, data } = seedSafetensors(rng);
  const names = Object.keys(header).filter((n) => n !== "__metadata__");
  const victim = header[rng.pick(names)] as StEntry;
  switch (rng.int(8)) {
    case 0:
      victim.dtype = rng.pick(["F64", "I8", "BOOL", "F8_E4M3", "f32", "", "C64", null, 4]);
      break;
    case 1:
      victim.shape = rng.chance(0.5)
        ? Array.from({ length: rng.int(5) }, () => rng.pick(jsonEdges))
        : rng.pick([[2 ** 40, 2 ** 40], [2 ** 26, 2 ** 26, 2 ** 26], [0, 2 ** 53], [-1], "1,2", null, [[1]]]);
      break;
    case 2:
      victim.data_offsets = rng.chance(0.5)
        ? [rng.pick(jsonEdges), rng.pick(jsonEdges)]
        : rng.pick([[0], [0, 1, 2], [-8, 0], [1.5, 2.5], [2 ** 53, 2 ** 53 + 8], "0,8", null]);
      break;
    case 3:
      victim[rng.pick(["extra", "DTYPE", "offsets"])] = rng.pick(jsonEdges);
      break;
    case 4:
      header.__metadata__ = rng.pick([{ a: 1 }, [], "x", null, { nested: { a: "b" } }, { ["\u0000"]: "\u001b[2J" }]);
      break;
    case 5: { // rename a tensor to something hostile
      const name = rng.pick(names);
      const entry = header[name] as StEntry;
      header[rng.pick(["", "__metadata__", "\u001b]0;title\u0007", "q\nk", "a".repeat(5000), "qkv", "q"])] = entry;
      delete header[name];
      if (rng.chance(0.5)) entry.dtype = rng.pick(["F64", "X", null]); // and refuse it, so the error names it
      break;
    }
    case 6: // a header that is not an object of entries, or is nested absurdly deep
      return safetensorsBytes(
        rng.pick([
          "[]",
          "null",
          '"q"',
          "{",
          '{"q":',
          "[".repeat(100_000) + "]".repeat(100_000),
          '{"q":{}}',
          `{"q":${"[".repeat(5000)}${"]".repeat(5000)}}`,
          "\ufeff{}",
          "{} {}",
        ]),
        data,
      );
    default: { // the u64 length field lies
      const json = BigInt(new TextEncoder().encode(JSON.stringify(header)).byteLength);
      return safetensorsBytes(
        header,
        data,
        rng.pick([
          0n,
          1n,
          json - 1n,
          json + 1n,
          100_000_001n,
          2n ** 53n + 1n,
          2n ** 63n,
          2n ** 64n - 1n,
          BigInt(data.length) + json + 8n,
        ]),
      );
    }
  }
  return safetensorsBytes(header, data);
}

/** The file of one parser case: mostly damaged seeds or hostile headers, a few untouched seeds. */
function fileCase(rng: Rng, target: "npy" | "safetensors"): Uint8Array {
  const seed = () => {
    if (target === "npy") return seedNpy(rng);
    const { header, data } = seedSafetensors(rng);
    return safetensorsBytes(header, data);
  };
  if (rng.chance(0.03)) return seed(); // the parsers must still accept good files
  if (target === "npy") return rng.chance(0.4) ? npyFieldMutation(rng) : mutateBytes(rng, seed());
  return rng.chance(0.6) ? safetensorsFieldMutation(rng) : mutateBytes(rng, seed());
}

// ---- outcomes -------------------------------------------------------------------------------------------------------

export interface Violation {
  target: Target;
  index: number;
  /** What went wrong, in one line. */
  problem: string;
  /** What the case fed in: the argv, or the file's bytes as base64 (replay with --only). */
  input: string;
}

export type Target = "npy" | "safetensors" | "flags";
export const targets: readonly Target[] = ["npy", "safetensors", "flags"];

interface Tally {
  ok: number;
  /** Failures by error code (or exit code for flags). */
  refused: Record<string, number>;
}

interface Modules {
  readNpy: typeof import("../../formats/npy.ts").readNpy;
  readSafetensors: typeof import("../../formats/safetensors.ts").readSafetensors;
  FlashAttnError: typeof import("../../lib/errors.ts").FlashAttnError;
  exitCodeFor: typeof import("../../lib/errors.ts").exitCodeFor;
  main: typeof import("../../cli.ts").main;
}

/** A one-line message with no line breaks (control characters are another matter: see hasRawControl). */
const oneLine = (message: string) => message.length > 0 && !/[\r\n]/.test(message);

/** Bytes a parser may allocate at once for a file of `size` bytes: at most the file (or its 8- to 12-byte preamble). */
const allocationBudget = (size: number) => Math.max(size, 16);

function elementBytesOf(dtype: string): number {
  return dtype === "fp32" ? 4 : 2;
}

/** Parses `file` as a tensor file and checks the outcome; returns a problem or null, and tallies the outcome. */
function checkParse(
  m: Modules,
  kind: "npy" | "safetensors",
  file: string,
  bytes: Uint8Array,
  tally: Tally,
  bf16: boolean,
): string | null {
  largestAllocation = 0;
  try {
    if (kind === "npy") {
      const t = m.readNpy(file, { bf16 });
      const count = t.shape.reduce((a, b) => a * b, 1);
      if (t.data.length !== count) return `accepted: shape (${t.shape}) but ${t.data.length} elements`;
      const major = bytes[6];
      const preamble = major === 1 ? 10 : 12;
      const headerLength = major === 1 ? bytes[8] | (bytes[9] << 8) : new DataView(bytes.buffer).getUint32(8, true);
      const expected = preamble + headerLength + count * elementBytesOf(t.dtype);
      if (expected !== bytes.length) {
        return `accepted a ${bytes.length}-byte file whose header and data make ${expected}`;
      }
    } else {
      const { tensors } = m.readSafetensors(file);
      for (const [name, t] of tensors) {
        const count = t.shape.reduce((a, b) => a * b, 1);
        if (t.data.length !== count) {
          return `accepted: tensor '${name}' shape (${t.shape}) but ${t.data.length} elements`;
        }
      }
    }
    tally.ok++;
  } catch (error) {
    if (!(error instanceof m.FlashAttnError)) {
      return `threw ${(error as Error)?.name ?? typeof error}: ${
        String((error as Error)?.message ?? error).split("\n")[0]
      }`;
    }
    if (error.code !== "BAD_INPUT") return `failed with code ${error.code}, not BAD_INPUT: ${error.message}`;
    if (!oneLine(error.message)) return `error message is not one line: ${JSON.stringify(error.message.slice(0, 200))}`;
    if (error.fix !== undefined && !oneLine(error.fix)) return `fix is not one line: ${JSON.stringify(error.fix)}`;
    tally.refused[error.code] = (tally.refused[error.code] ?? 0) + 1;
  }
  if (largestAllocation > allocationBudget(bytes.length)) {
    return `allocated ${largestAllocation} bytes for a ${bytes.length}-byte file`;
  }
  return null;
}

// ---- the flag target --------------------------------------------------------------------------------------------------

interface FlagContext {
  dir: string;
  /** Input files of every kind: valid, mutated, empty, a directory, missing. */
  files: string[];
  lib: string;
}

function smallShape(rng: Rng): string {
  const hkv = rng.pick([1, 2]);
  return [rng.pick([1, 2]), 1 + rng.int(24), rng.int(25), hkv * rng.pick([1, 2]), hkv, rng.pick([8, 16, 32])].join(",");
}

/** Random `run` arguments: a small valid problem (so a case costs milliseconds) with hostile flags over it. */
function flagArgv(rng: Rng, ctx: FlagContext): string[] {
  const argv: string[] = [];
  if (rng.chance(0.1)) argv.push(rng.pick(["--json", "--no-color", "-v"]));
  argv.push("run");
  const json = rng.chance(0.5);
  if (json) argv.push("--json");
  if (rng.chance(0.75)) argv.push("--shape", smallShape(rng));
  else if (rng.chance(0.5)) {
    const file = () => rng.pick(ctx.files);
    if (rng.chance(0.5)) argv.push("--q", file(), "--k", file(), "--v", file());
    else argv.push("--input", file());
  } else {
    argv.push("--seqlen", String(1 + rng.int(16)), "--heads", "2", "--head-dim", "16");
  }
  // How hostile this case's flag values are: some cases are nearly all valid, so the success path is fuzzed too.
  const hostility = rng.pick([0.05, 0.3, 0.6]);
  const either = (valid: () => string, hostile: () => string) => (rng.chance(hostility) ? hostile() : valid());
  const outPath = () => path.join(ctx.dir, rng.pick(["o.npy", "o.safetensors", "o.txt", "nodir/o.npy", "lse.npy", ""]));
  const int = () => either(() => String(1 + rng.int(16)), () => rng.pick([...edgeNumbers, ...junk]));
  const float = () => either(() => rng.pick(["0", "1", "30", "0.125", "2.5"]), () => rng.pick(edgeFloats));
  type Flag = [string, () => string | null];
  // Flags that refine the base problem: most of what a case adds.
  const refining: Flag[] = [
    [
      "--dtype",
      () => either(() => rng.pick(["fp32", "fp16", "bf16", "BF16"]), () => rng.pick(["float64", "int8", "", "fp"])),
    ],
    ["--seed", int],
    [
      "--window",
      () =>
        either(() => `${rng.int(9) - 1},${rng.int(9)}`, () => rng.chance(0.7) ? `${int()},${int()}` : rng.pick(junk)),
    ],
    ["--softcap", float],
    ["--scale", float],
    ["--causal", () => null],
    ["--alibi", () => null],
    ["--check", () => null],
    [
      "--backend",
      () => either(() => rng.pick(["auto", "cpu"]), () => rng.pick(["cuda", "hip", "CPU", "gpu", "", "cpu,cuda"])),
    ],
    [
      "--lib",
      () => either(() => ctx.lib, () => rng.pick([path.join(ctx.dir, "missing.so"), ctx.dir, rng.pick(ctx.files), ""])),
    ],
    ["--out", outPath],
    ["--lse", () => (rng.chance(0.5) ? null : outPath())],
    ["--alibi-slopes", () => rng.pick(ctx.files)],
  ];
  // Flags that describe the problem again (conflicts with the base), or are not flags at all.
  const clashing: Flag[] = [
    [
      "--shape",
      () => either(() => smallShape(rng), () => Array.from({ length: rng.pick([3, 4, 6, 7]) }, int).join(",")),
    ],
    ["--batch", int],
    ["--seqlen", int],
    ["--seqlen-q", int],
    ["--seqlen-k", int],
    ["--heads", int],
    ["--heads-q", int],
    ["--heads-kv", int],
    ["--head-dim", int],
    ["--q", () => rng.pick(ctx.files)],
    ["--k", () => rng.pick(ctx.files)],
    ["--v", () => rng.pick(ctx.files)],
    ["--input", () => rng.pick(ctx.files)],
    ["--q-name", () => rng.pick(["q", "k", "qkv", "", ...junk])],
    ["--k-name", () => rng.pick(["k", "v", ...junk])],
    ["--v-name", () => rng.pick(["v", "q", ...junk])],
    ["--qkv-name", () => rng.pick(["qkv", "q", ...junk])],
    ["--bogus", () => null],
    ["--", () => null],
    ["-x", () => null],
    ["--help", () => null],
  ];
  for (let i = 0, n = 1 + rng.int(4); i < n; i++) {
    const [flag, value] = rng.pick(rng.chance(0.85) ? refining : clashing);
    const v = value();
    argv.push(flag);
    if (v !== null) argv.push(v);
  }
  if (rng.chance(0.3)) argv.push("--check"); // so that a value silently changed on the way down shows
  if (rng.chance(0.05)) argv.push(rng.pick(junk)); // a stray positional argument
  if (rng.chance(0.03)) argv.splice(1 + rng.int(argv.length - 1), 1); // drop one token: a flag loses its value
  return argv;
}

/** Runs `main(argv)` with stdout and stderr captured. */
async function runCaptured(m: Modules, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = process.stdout as unknown as { write: unknown };
  const err = process.stderr as unknown as { write: unknown };
  const saved = [out.write, err.write];
  let stdout = "", stderr = "";
  out.write = (chunk: string | Uint8Array) => ((stdout += String(chunk)), true);
  err.write = (chunk: string | Uint8Array) => ((stderr += String(chunk)), true);
  try {
    return { code: await m.main(argv), stdout, stderr };
  } finally {
    [out.write, err.write] = saved;
  }
}

const problemSizedAllocation = 64 << 20; // the small problems above need well under 1 MiB per tensor

async function checkFlags(m: Modules, argv: string[], tally: Tally): Promise<string | null> {
  largestAllocation = 0;
  let result: { code: number; stdout: string; stderr: string };
  try {
    result = await runCaptured(m, argv);
  } catch (error) {
    return `main() threw ${(error as Error)?.name}: ${String((error as Error)?.message).split("\n")[0]}`;
  }
  const { code, stdout, stderr } = result;
  tally.refused[`exit ${code}`] = (tally.refused[`exit ${code}`] ?? 0) + 1;
  if (code === 0) tally.ok++;
  if (![0, 1, 2, 3].includes(code)) return `exit code ${code} is not one of 0, 1, 2, 3`;
  if (/^\s+at .*:\d+:\d+\)?$/m.test(stderr)) return `a stack trace on stderr: ${JSON.stringify(stderr.slice(0, 300))}`;
  const json = argv.slice(0, argv.includes("--") ? argv.indexOf("--") : argv.length).includes("--json");
  const helpShown = argv.includes("--help") || argv.includes("-h");
  if (json && !helpShown) {
    let doc: { ok?: boolean; error?: { code?: string; message?: string } };
    try {
      doc = JSON.parse(stdout);
    } catch {
      return `--json printed no single JSON document on stdout: ${JSON.stringify(stdout.slice(0, 200))}`;
    }
    if ((code === 0) !== (doc.ok === true)) return `exit ${code} but the document says ok: ${doc.ok}`;
    if (code !== 0) {
      const errorCode = doc.error?.code ?? "";
      if (errorCode === "INTERNAL") return `INTERNAL error: ${doc.error?.message}`;
      const expected = m.exitCodeFor(new m.FlashAttnError(errorCode as never, ""));
      if (expected !== code) return `error code ${errorCode} should exit ${expected}, exited ${code}`;
      if (!oneLine(doc.error?.message ?? "")) {
        return `error message is not one line: ${JSON.stringify(doc.error?.message)}`;
      }
    }
  }
  if (code !== 0) {
    // The human error: one "flashattn: <message>" line, at most one "  fix: <fix>" line after it, nothing more.
    const lines = stderr.replace(/\n$/, "").split("\n");
    const at = lines.findIndex((l) => l.startsWith("flashattn: "));
    if (at < 0) return `exit ${code} without a "flashattn: " line on stderr: ${JSON.stringify(stderr.slice(0, 300))}`;
    const rest = lines.slice(at + 1);
    if (rest.length > 1 || (rest.length === 1 && !rest[0].startsWith("  fix: "))) {
      return `the error takes more than one line (and a fix): ${
        JSON.stringify(lines.slice(at).join("\n").slice(0, 300))
      }`;
    }
    if (/internal error/i.test(lines[at])) return `internal error: ${lines[at]}`;
    if (code === 1 && !/^flashattn: check failed/.test(lines[at])) {
      return `exit 1 that is not a failed check: ${lines[at]}`;
    }
    // Random inputs are finite and well scaled, so a failed check there means a flag's value changed on its way to
    // the kernel (or a kernel is wrong): a silent wrong answer without --check. Mutated files may hold NaN.
    const fileFlags = ["--q", "--k", "--v", "--input", "--alibi-slopes"];
    if (code === 1 && !argv.some((a) => fileFlags.includes(a))) {
      return `a random problem failed its check: ${lines[at]}`;
    }
  }
  if (largestAllocation > problemSizedAllocation) return `allocated ${largestAllocation} bytes for a small problem`;
  return null;
}

// ---- the driver ---------------------------------------------------------------------------------------------------------

export interface FuzzSummary {
  seed: number;
  cases: Record<Target, number>;
  tallies: Record<Target, Tally>;
  violations: Violation[];
}

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

/** Writes the fixed files every flag case draws from: valid seeds, mutated seeds and the awkward kinds. */
function prepareFlagFiles(dir: string, rng: Rng): string[] {
  const files: string[] = [];
  const write = (name: string, bytes: Uint8Array) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, bytes);
    files.push(file);
  };
  const f32 = (dims: number[]) =>
    npyBytes("<f4", shapeText(dims), float32Bytes(seededValues(rng, dims.reduce((a, b) => a * b, 1))));
  write("q.npy", f32([1, 8, 2, 16]));
  write("k.npy", f32([1, 12, 1, 16]));
  write("v.npy", f32([1, 12, 1, 16]));
  write("slopes.npy", f32([2]));
  const st = seedSafetensors(rng);
  write("qkv.safetensors", safetensorsBytes(st.header, st.data));
  for (let i = 0; i < 6; i++) write(`bad${i}.npy`, mutateBytes(rng, seedNpy(rng)));
  for (let i = 0; i < 3; i++) write(`bad${i}.safetensors`, safetensorsFieldMutation(rng));
  write("empty.npy", new Uint8Array(0));
  files.push(dir, path.join(dir, "missing.npy"), "");
  return files;
}

export async function runFuzz(
  options: {
    seed: number;
    cases: number;
    targets?: readonly Target[];
    only?: number;
    onCase?: (t: Target, i: number) => void;
  },
): Promise<FuzzSummary> {
  trackAllocations();
  const m: Modules = {
    ...(await import("../../formats/npy.ts")),
    ...(await import("../../formats/safetensors.ts")),
    ...(await import("../../lib/errors.ts")),
    ...(await import("../../cli.ts")),
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-fuzz-"));
  const summary: FuzzSummary = {
    seed: options.seed,
    cases: { npy: 0, safetensors: 0, flags: 0 },
    tallies: { npy: { ok: 0, refused: {} }, safetensors: { ok: 0, refused: {} }, flags: { ok: 0, refused: {} } },
    violations: [],
  };
  const savedEnv = { ...process.env };
  try {
    // The flag cases run in this process: keep the environment from choosing for them.
    for (const name of ["FLASHATTN_BACKEND", "FLASHATTN_LIB", "FLASHATTN_DEBUG", "FORCE_COLOR"]) {
      delete process.env[name];
    }
    process.env.NO_COLOR = "1";
    const ctx: FlagContext = {
      dir,
      files: prepareFlagFiles(dir, new Rng(options.seed)),
      lib: path.join(import.meta.dir, "..", "..", "build", "libflashattn_cpu.so"),
    };
    for (const target of options.targets ?? targets) {
      const first = options.only ?? 0, last = options.only ?? options.cases - 1;
      for (let index = first; index <= last; index++) {
        options.onCase?.(target, index);
        const rng = caseRng(options.seed, target, index);
        summary.cases[target]++;
        const tally = summary.tallies[target];
        if (target === "flags") {
          const argv = flagArgv(rng, ctx);
          const problem = await checkFlags(m, argv, tally);
          if (problem) summary.violations.push({ target, index, problem, input: JSON.stringify(argv) });
          // Outputs of this case must not become inputs or obstacles of the next: each case replays alone.
          for (const name of ["o.npy", "o.safetensors", "o.txt", "lse.npy", "nodir"]) {
            fs.rmSync(path.join(dir, name), { recursive: true, force: true });
          }
          continue;
        }
        const bytes = fileCase(rng, target);
        const file = path.join(dir, `case.${target}`);
        fs.writeFileSync(file, bytes);
        const problem = checkParse(m, target, file, bytes, tally, rng.chance(0.5));
        if (problem) summary.violations.push({ target, index, problem, input: base64(bytes) });
      }
    }
  } finally {
    for (const name of Object.keys(process.env)) if (!(name in savedEnv)) delete process.env[name];
    Object.assign(process.env, savedEnv);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return summary;
}

function flagValue(argv: string[], name: string): string | undefined {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const cases = Number(flagValue(argv, "--cases") ?? process.env.FLASHATTN_FUZZ_CASES ?? 300);
  const seed = Number(flagValue(argv, "--seed") ?? process.env.FLASHATTN_FUZZ_SEED ?? 1);
  const target = flagValue(argv, "--target") as Target | undefined;
  const only = flagValue(argv, "--only");
  if (
    !Number.isSafeInteger(cases) || cases < 1 || !Number.isSafeInteger(seed) || (target && !targets.includes(target))
  ) {
    process.stderr.write(
      "usage: bun test/fuzz/fuzz.ts [--cases N] [--seed S] [--target npy|safetensors|flags] [--only I]\n",
    );
    process.exit(2);
  }
  const progressLine = (t: Target, i: number) => process.stderr.write(`case ${t} ${i}\n`);
  const summary = await runFuzz({
    seed,
    cases,
    targets: target ? [target] : targets,
    only: only === undefined ? undefined : Number(only),
    onCase: progressLine,
  });
  process.stdout.write(JSON.stringify(summary) + "\n");
  process.exitCode = summary.violations.length ? 1 : 0;
}
