// Host tensors: a dtype, a shape and the raw elements (fp16/bf16 kept as their 16-bit patterns), with exact
// conversions to and from fp32 (round to nearest even, like the hardware) and seeded random data.
import { FlashAttnError } from "./errors.ts";
import type { DType } from "./vocabulary.ts";

export type { DType };

export interface Tensor {
  dtype: DType;
  shape: number[];
  /** fp32: Float32Array; fp16/bf16: Uint16Array of bit patterns. Row-major (C order). */
  data: Float32Array | Uint16Array;
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new FlashAttnError("BAD_INPUT", `shape ${JSON.stringify(shape)} has a bad dimension ${d}`);
    n *= d;
    if (!Number.isSafeInteger(n)) throw new FlashAttnError("BAD_INPUT", `shape ${JSON.stringify(shape)} has too many elements`);
  }
  return n;
}

export function tensor(dtype: DType, shape: number[], data?: Float32Array | Uint16Array): Tensor {
  const n = elementCount(shape);
  const storage = data ?? (dtype === "fp32" ? new Float32Array(n) : new Uint16Array(n));
  if (storage.length !== n) {
    throw new FlashAttnError("BAD_INPUT", `shape ${JSON.stringify(shape)} needs ${n} elements but the data has ${storage.length}`);
  }
  if ((dtype === "fp32") !== (storage instanceof Float32Array)) {
    throw new FlashAttnError("BAD_INPUT", `${dtype} data must be a ${dtype === "fp32" ? "Float32Array" : "Uint16Array of bit patterns"}`);
  }
  return { dtype, shape: [...shape], data: storage };
}

// ---- scalar conversions ---------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToFloat(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

export function floatToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff; // NaN stays a (quiet) NaN
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fp16ToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export function floatToFp16(x: number): number {
  f32[0] = x; // round to fp32 first, like a cast from a float tensor
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let frac = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (frac ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    frac |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = frac & ((1 << shift) - 1);
    let m = frac >>> shift;
    if (rest > half || (rest === half && (m & 1))) m++;
    return sign | m;
  }
  const rest = frac & 0x1fff;
  let m = frac >>> 13;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1))) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

/** Rounds a value to the nearest representable value of `dtype` (fp32, fp16 or bf16). */
export function roundTo(dtype: DType, x: number): number {
  if (dtype === "fp16") return fp16ToFloat(floatToFp16(x));
  if (dtype === "bf16") return bf16ToFloat(floatToBf16(x));
  return Math.fround(x);
}

// ---- tensor conversions ----------------------------------------------------------------------------------------

export function toFloat32(t: Tensor): Float32Array {
  if (t.dtype === "fp32") return t.data as Float32Array;
  const src = t.data as Uint16Array;
  const out = new Float32Array(src.length);
  const conv = t.dtype === "fp16" ? fp16ToFloat : bf16ToFloat;
  for (let i = 0; i < src.length; i++) out[i] = conv(src[i]);
  return out;
}

export function fromFloat32(dtype: DType, shape: number[], values: ArrayLike<number>): Tensor {
  if (dtype === "fp32") return tensor("fp32", shape, Float32Array.from(values));
  const out = new Uint16Array(values.length);
  const conv = dtype === "fp16" ? floatToFp16 : floatToBf16;
  for (let i = 0; i < values.length; i++) out[i] = conv(values[i]);
  return tensor(dtype, shape, out);
}

// ---- random data -------------------------------------------------------------------------------------------------

/** A small, fast, seedable PRNG (mulberry32): uniform floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal values times `scale`, deterministic for a seed (Box–Muller). */
export function randomTensor(dtype: DType, shape: number[], seed: number, scale = 1): Tensor {
  const n = elementCount(shape);
  const next = rng(seed);
  const values = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - next();
    const v = next();
    const r = Math.sqrt(-2 * Math.log(u)) * scale;
    values[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) values[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return fromFloat32(dtype, shape, values);
}
