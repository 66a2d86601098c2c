// formats/: .npy and .safetensors read/write against NumPy-written fixtures (test/fixtures/formats/make.py), round
// trips that compare bits, every malformed header we know of, and atomic writes that refuse to replace an input.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { FlashAttnError } from "../lib/errors.ts";
import { fromFloat32, type Tensor, tensor } from "../lib/tensor.ts";
import { encodeNpy, parseNpyHeader, readNpy, writeNpy } from "../formats/npy.ts";
import { encodeSafetensors, openSafetensors, readSafetensors, writeSafetensors } from "../formats/safetensors.ts";
import { canonicalPath, writeFileAtomic } from "../formats/atomic.ts";

const fixtures = path.join(import.meta.dir, "fixtures", "formats");
const fixture = (name: string) => path.join(fixtures, name);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-formats-"));
const tmp = (name: string) => path.join(scratch, name);
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** The fixture grid: arange(24).reshape(2, 3, 4) / 8 - 1, exact in fp16 and bf16. */
const grid = Float32Array.from({ length: 24 }, (_, i) => i / 8 - 1);

/** Runs `fn`, expects a BAD_INPUT FlashAttnError, returns its message. */
function badInput(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("BAD_INPUT");
    return (error as FlashAttnError).message;
  }
  throw new Error("expected a BAD_INPUT error, got none");
}

function npyWithHeader(dict: string, dataBytes: number, major = 1): Uint8Array {
  const preamble = major === 1 ? 10 : 12;
  const header = dict + " ".repeat((64 - ((preamble + dict.length + 1) % 64)) % 64) + "\n";
  const bytes = new Uint8Array(preamble + header.length + dataBytes);
  bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const view = new DataView(bytes.buffer);
  if (major === 1) view.setUint16(8, header.length, true);
  else view.setUint32(8, header.length, true);
  for (let i = 0; i < header.length; i++) bytes[preamble + i] = header.charCodeAt(i);
  return bytes;
}

function writeBytes(name: string, bytes: Uint8Array): string {
  fs.writeFileSync(tmp(name), bytes);
  return tmp(name);
}

const hasNumpy = spawnSync("python3", ["-c", "import numpy"]).status === 0;

describe(".npy: NumPy's own files", () => {
  test("float32 v1, v2 and v3 headers read the same values", () => {
    for (const name of ["f4.npy", "f4_v2.npy", "f4_v3.npy"]) {
      const t = readNpy(fixture(name));
      expect(t.dtype).toBe("fp32");
      expect(t.shape).toEqual([2, 3, 4]);
      expect(Array.from(t.data)).toEqual(Array.from(grid));
    }
  });

  test("float16 reads as fp16 bits equal to our conversion", () => {
    const t = readNpy(fixture("f2.npy"));
    expect(t.dtype).toBe("fp16");
    expect(Array.from(t.data)).toEqual(Array.from(fromFloat32("fp16", [2, 3, 4], grid).data));
  });

  test("uint16 and V2 data are bf16 only when the caller says so", () => {
    for (const name of ["bf16_u2.npy", "bf16_v2.npy"]) {
      expect(badInput(() => readNpy(fixture(name)))).toContain("bfloat16 only if you say so");
      const t = readNpy(fixture(name), { bf16: true });
      expect(t.dtype).toBe("bf16");
      expect(Array.from(t.data)).toEqual(Array.from(fromFloat32("bf16", [2, 3, 4], grid).data));
    }
  });

  test("a 0-d array has shape ()", () => {
    const t = readNpy(fixture("scalar.npy"));
    expect(t.shape).toEqual([]);
    expect(Array.from(t.data)).toEqual([1.5]);
  });

  test("Fortran order, float64 and big-endian are refused with the fix", () => {
    expect(badInput(() => readNpy(fixture("fortran.npy")))).toContain("Fortran (column-major) order");
    expect(badInput(() => readNpy(fixture("f8.npy")))).toContain("'<f8'");
    expect(badInput(() => readNpy(fixture("big_endian.npy")))).toContain("big-endian");
  });
});

describe(".npy: round trips keep every bit", () => {
  // Specials: ±0, ±inf, NaN, the smallest fp16 subnormal, the largest fp16, a bf16 with mantissa bits.
  const specials = [0, -0, Infinity, -Infinity, NaN, 2 ** -24, 65504, 1.0078125, -3.5, 1e-3];
  for (const dtype of ["fp32", "fp16", "bf16"] as const) {
    test(`${dtype} write → read`, () => {
      const t = fromFloat32(dtype, [2, 5], specials);
      writeNpy(tmp(`rt-${dtype}.npy`), t);
      const back = readNpy(tmp(`rt-${dtype}.npy`), { bf16: dtype === "bf16" });
      expect(back.dtype).toBe(dtype);
      expect(back.shape).toEqual([2, 5]);
      const bits = (x: Tensor) => Array.from(new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength));
      expect(bits(back)).toEqual(bits(t));
    });
  }

  test("the data starts on a 64-byte boundary and one-dimensional shapes keep their comma", () => {
    const [head] = encodeNpy(tensor("fp32", [7]));
    expect(head.byteLength % 64).toBe(0);
    expect(new TextDecoder().decode(head)).toContain("'shape': (7,)");
  });

  test.skipIf(!hasNumpy)("NumPy loads what we write (skipped without python3 + numpy)", () => {
    writeNpy(tmp("for-numpy.npy"), fromFloat32("fp32", [2, 3, 4], grid));
    writeNpy(tmp("for-numpy-bf16.npy"), fromFloat32("bf16", [2, 3, 4], grid));
    const script = `import numpy as np, sys
a = np.load(sys.argv[1]); b = np.load(sys.argv[2])
bf = (b.astype(np.uint32) << 16).view(np.float32)
print(a.dtype, a.shape, float(a.sum()), b.dtype, float(bf.sum()))`;
    const r = spawnSync("python3", ["-c", script, tmp("for-numpy.npy"), tmp("for-numpy-bf16.npy")], {
      encoding: "utf8",
    });
    expect(r.stderr).toBe("");
    const sum = grid.reduce((s, x) => s + x, 0);
    expect(r.stdout.trim()).toBe(`float32 (2, 3, 4) ${sum.toFixed(1)} uint16 ${sum.toFixed(1)}`);
  });
});

describe(".npy: malformed files", () => {
  const goodBytes = () => new Uint8Array(fs.readFileSync(fixture("f4.npy")));

  test("a missing file names the path", () => {
    expect(badInput(() => readNpy(tmp("absent.npy")))).toBe(`${tmp("absent.npy")}: no such file`);
  });

  test("not .npy at all, and too short", () => {
    expect(badInput(() => readNpy(writeBytes("text.npy", new TextEncoder().encode("hello, this is not numpy")))))
      .toContain("no \\x93NUMPY magic");
    expect(badInput(() => readNpy(writeBytes("tiny.npy", goodBytes().subarray(0, 6))))).toContain("too short");
  });

  test("a truncated header", () => {
    expect(badInput(() => readNpy(writeBytes("cut-header.npy", goodBytes().subarray(0, 40))))).toContain(
      "is truncated: its header claims",
    );
  });

  test("a header claiming more data than the file has", () => {
    const bytes = goodBytes();
    expect(badInput(() => readNpy(writeBytes("cut-data.npy", bytes.subarray(0, bytes.length - 4)))))
      .toContain("needs 96 data bytes but the file has 92");
  });

  test("bytes after the data are refused too", () => {
    const bytes = goodBytes();
    const longer = new Uint8Array(bytes.length + 8);
    longer.set(bytes);
    expect(badInput(() => readNpy(writeBytes("long.npy", longer)))).toContain("8 bytes after");
  });

  test("a giant shape in a 100-byte file fails before allocating", () => {
    const before = process.memoryUsage().rss;
    const huge = npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000), }", 0);
    expect(huge.length).toBeLessThanOrEqual(128);
    expect(badInput(() => readNpy(writeBytes("giant.npy", huge)))).toContain(
      "needs 4000000000 data bytes but the file has 0",
    );
    const overflow = npyWithHeader(
      "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000000000), }",
      36,
    );
    expect(badInput(() => readNpy(writeBytes("overflow.npy", overflow)))).toContain("more than 2^53");
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 2 ** 20);
  });

  test("a header length past the file, and an absurd one", () => {
    const bytes = npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, 2);
    new DataView(bytes.buffer).setUint32(8, 0xfffffff0, true);
    expect(badInput(() => readNpy(writeBytes("len.npy", bytes)))).toContain("more than the 1048576 flashattn accepts");
    new DataView(bytes.buffer).setUint32(8, 5000, true);
    expect(badInput(() => readNpy(writeBytes("len2.npy", bytes)))).toContain(
      "is truncated: its header claims 5000 bytes",
    );
  });

  test("an unknown format version", () => {
    const bytes = goodBytes();
    bytes[6] = 4;
    expect(badInput(() => readNpy(writeBytes("v4.npy", bytes)))).toContain("format version 4.0");
  });

  const malformedDicts: Array<[string, string]> = [
    ["{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"],
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", "unexpected key 'extra'"],
    ["{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", "key 'descr' appears twice"],
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (2)}", "must be written (n,)"],
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "non-negative integer dimension"],
    ["{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}", "expected True or False"],
    ["{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}", "expected ',' or '}'"],
    ["{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", "expected ':'"],
    ["{'descr': '<f4", "unterminated string"],
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", "unexpected text after the header dict"],
    ["['descr', '<f4']", "expected '{'"],
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3.5)}", "expected ',' or ')'"],
  ];
  for (const [dict, expected] of malformedDicts) {
    test(`header ${dict} → ${expected}`, () => {
      expect(badInput(() => parseNpyHeader("x.npy", dict + "  \n"))).toContain(expected);
      // The same header inside a file is refused by readNpy before any data is read.
      expect(badInput(() => readNpy(writeBytes("dict.npy", npyWithHeader(dict, 8))))).toContain(
        "malformed .npy header",
      );
    });
  }

  test("a well-formed header parses strictly", () => {
    expect(parseNpyHeader("x.npy", "{'descr': '<f2', 'fortran_order': True, 'shape': (), }   \n"))
      .toEqual({ descr: "<f2", fortranOrder: true, shape: [] });
    expect(parseNpyHeader("x.npy", '{"shape": (3, 4,), "descr": "<f4", "fortran_order": False}\n').shape).toEqual([
      3,
      4,
    ]);
  });
});

describe(".safetensors", () => {
  const q = fromFloat32("bf16", [1, 3, 2, 8], Array.from({ length: 48 }, (_, i) => Math.sin(i)));
  const k = fromFloat32("fp32", [1, 5, 1, 8], Array.from({ length: 40 }, (_, i) => Math.cos(i)));
  const h = fromFloat32("fp16", [3], [0.5, -2, 65504]);

  test("round trip of F32, F16 and BF16 with metadata keeps every bit", () => {
    writeSafetensors(tmp("rt.safetensors"), { q, k, h }, { format: "pt", producer: "test" });
    const { tensors, metadata } = readSafetensors(tmp("rt.safetensors"));
    expect(metadata).toEqual({ format: "pt", producer: "test" });
    for (const [name, t] of Object.entries({ q, k, h })) {
      const back = tensors.get(name)!;
      expect(back.dtype).toBe(t.dtype);
      expect(back.shape).toEqual(t.shape);
      expect(Array.from(back.data)).toEqual(Array.from(t.data));
    }
  });

  test("written layout: header padded to 8, tensors by element size then name, each aligned", () => {
    const [head] = encodeSafetensors({ q, k, h, a: tensor("fp32", [2]) });
    const length = Number(new DataView(head.buffer).getBigUint64(0, true));
    expect(length % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(head.subarray(8)));
    const order = Object.keys(header).sort((x, y) => header[x].data_offsets[0] - header[y].data_offsets[0]);
    expect(order).toEqual(["a", "k", "h", "q"]);
    for (const name of order) {
      const size = header[name].dtype === "F32" ? 4 : 2;
      expect(header[name].data_offsets[0] % size).toBe(0);
    }
  });

  test("the NumPy-made fixtures: q/k/v with metadata, packed bf16 qkv", () => {
    const { tensors, metadata } = readSafetensors(fixture("qkv.safetensors"));
    expect(metadata).toEqual({ format: "np", note: "fixture" });
    expect(Array.from(tensors.get("q")!.data)).toEqual(Array.from(readNpy(fixture("q.npy")).data));
    expect(tensors.get("k")!.shape).toEqual([1, 9, 2, 16]);
    const packed = readSafetensors(fixture("packed.safetensors")).tensors.get("qkv")!;
    expect(packed.dtype).toBe("bf16");
    expect(packed.shape).toEqual([2, 6, 3, 2, 8]);
  });

  test("a file with an I64 tensor opens; reading that tensor says why not", () => {
    const file = openSafetensors(fixture("mixed.safetensors"));
    try {
      expect([...file.entries.keys()].sort()).toEqual(["ids", "x"]);
      expect(Array.from(file.read("x").data)).toEqual(Array.from(grid));
      expect(badInput(() => file.read("ids"))).toContain("tensor 'ids' has dtype I64");
      expect(badInput(() => file.read("nope"))).toContain("has no tensor named 'nope' (it has 'ids', 'x')");
    } finally {
      file.close();
    }
  });

  /** A file from a header object and a data size (zero bytes). */
  function craft(name: string, header: unknown, dataBytes: number, rawHeader?: string): string {
    const json = new TextEncoder().encode(rawHeader ?? JSON.stringify(header));
    const bytes = new Uint8Array(8 + json.length + dataBytes);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
    bytes.set(json, 8);
    return writeBytes(name, bytes);
  }
  const f32 = (shape: number[], begin: number, end: number) => ({ dtype: "F32", shape, data_offsets: [begin, end] });

  const malformed: Array<[string, () => string, string]> = [
    ["too short", () => writeBytes("short.safetensors", new Uint8Array(5)), "too short"],
    ["header length past the file", () => {
      const bytes = new Uint8Array(64);
      new DataView(bytes.buffer).setBigUint64(0, 1000n, true);
      return writeBytes("hl.safetensors", bytes);
    }, "is truncated: its header claims 1000 bytes but only 56 follow"],
    ["absurd header length", () => {
      const bytes = new Uint8Array(64);
      new DataView(bytes.buffer).setBigUint64(0, 2n ** 62n, true);
      return writeBytes("hl2.safetensors", bytes);
    }, "more than the 100000000 allowed"],
    ["bad JSON", () => craft("json.safetensors", null, 0, '{"q": {"dtype": "F32",'), "not valid JSON"],
    ["header not an object", () => craft("arr.safetensors", [1, 2], 0), "not a JSON object"],
    [
      "overlapping offsets",
      () => craft("overlap.safetensors", { a: f32([2], 0, 8), b: f32([2], 4, 12) }, 12),
      "tensor 'b' [4, 12) overlaps tensor 'a'",
    ],
    [
      "a hole",
      () => craft("hole.safetensors", { a: f32([2], 0, 8), b: f32([2], 12, 20) }, 20),
      "4 unused bytes before tensor 'b'",
    ],
    [
      "offsets past the data",
      () => craft("past.safetensors", { a: f32([4], 0, 16) }, 8),
      "past the 8-byte data buffer",
    ],
    [
      "shape × dtype ≠ offsets",
      () => craft("size.safetensors", { a: f32([3], 0, 8) }, 8),
      "(12 bytes) but data_offsets [0, 8] hold 8",
    ],
    [
      "unknown dtype",
      () => craft("dt.safetensors", { a: { dtype: "F128", shape: [1], data_offsets: [0, 16] } }, 16),
      'unknown dtype "F128"',
    ],
    [
      "negative shape",
      () => craft("neg.safetensors", { a: f32([-1], 0, 0) }, 0),
      "not a list of non-negative integers",
    ],
    [
      "bad metadata",
      () => craft("meta.safetensors", { __metadata__: { n: 1 } }, 0),
      "__metadata__ that is not a map of strings",
    ],
    ["trailing bytes", () => craft("trail.safetensors", { a: f32([1], 0, 4) }, 12), "8 bytes after the last tensor"],
    [
      "giant shape in a tiny file",
      () => craft("giant.safetensors", { a: f32([1e6, 1e6], 0, 4e12) }, 0),
      "past the 0-byte data buffer",
    ],
  ];
  for (const [what, make, expected] of malformed) {
    test(`malformed: ${what}`, () => {
      expect(badInput(() => openSafetensors(make()))).toContain(expected);
    });
  }
});

describe("atomic writes", () => {
  test("replaces an existing file whole and leaves no temporary files", () => {
    fs.writeFileSync(tmp("atomic.bin"), "old");
    writeFileAtomic(tmp("atomic.bin"), [new TextEncoder().encode("new "), new TextEncoder().encode("content")]);
    expect(fs.readFileSync(tmp("atomic.bin"), "utf8")).toBe("new content");
    expect(fs.readdirSync(scratch).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  test("refuses to write over an input, however it is named", () => {
    const input = tmp("input.npy");
    writeNpy(input, tensor("fp32", [2]));
    fs.symlinkSync(input, tmp("link.npy"));
    const names = [input, tmp("link.npy"), path.join(scratch, ".", "sub", "..", "input.npy")];
    fs.mkdirSync(tmp("sub"));
    for (const target of names) {
      expect(badInput(() => writeNpy(target, tensor("fp32", [3]), { inputs: [input] }))).toContain(
        "it is also an input",
      );
    }
    expect(readNpy(input).shape).toEqual([2]); // untouched
    expect(canonicalPath(tmp("link.npy"))).toBe(canonicalPath(input));
  });

  test("a missing directory or a directory target is a clear error and leaves nothing behind", () => {
    expect(badInput(() => writeFileAtomic(tmp("no/such/dir/x.npy"), new Uint8Array(1)))).toContain("does not exist");
    expect(badInput(() => writeFileAtomic(scratch, new Uint8Array(1)))).toContain("it is a directory");
    expect(fs.readdirSync(scratch).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });
});
