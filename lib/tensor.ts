// Host tensors: a dtype, a shape and the raw elements (fp16/bf16 kept as their 16-bit patterns, fp8 as bytes), with
// exact conversions to and from fp32 (round to nearest even, like the hardware) and seeded random data.
import { FlashAttnError } from "./errors.ts";
import { type DType, dtypeBytes, type Fp8DType, isFp8 } from "./vocabulary.ts";

export type { DType };

export type TensorData = Float32Array | Uint16Array | Uint8Array;

export interface Tensor {
  dtype: DType;
  shape: number[];
  /** fp32: Float32Array; fp16/bf16: Uint16Array of bit patterns; fp8: Uint8Array of bit patterns. Row-major (C order). */
  data: TensorData;
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

/** Empty storage of `n` elements of `dtype`: the typed array its bits live in. */
export function storageFor(dtype: DType, n: number): TensorData {
  return dtype === "fp32" ? new Float32Array(n) : dtypeBytes[dtype] === 1 ? new Uint8Array(n) : new Uint16Array(n);
}

/** The elements of `dtype` that `bytes` holds (little-endian, as files store them), viewed in place. */
export function elementsOf(dtype: DType, bytes: ArrayBuffer): TensorData {
  return dtype === "fp32" ? new Float32Array(bytes) : dtypeBytes[dtype] === 1 ? new Uint8Array(bytes) : new Uint16Array(bytes);
}

export function tensor(dtype: DType, shape: number[], data?: TensorData): Tensor {
  const n = elementCount(shape);
  const storage = data ?? storageFor(dtype, n);
  if (storage.length !== n) {
    throw new FlashAttnError("BAD_INPUT", `shape ${JSON.stringify(shape)} needs ${n} elements but the data has ${storage.length}`);
  }
  if (storage.constructor !== storageFor(dtype, 0).constructor) {
    throw new FlashAttnError("BAD_INPUT", `${dtype} data must be a ${storageFor(dtype, 0).constructor.name}${dtype === "fp32" ? "" : " of bit patterns"}`);
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

// OCP fp8. E4M3: bias 7, 3 mantissa bits, no infinities, S.1111.111 = NaN, largest 448. E5M2: bias 15, 2 mantissa
// bits, IEEE-like (S.11111.00 = inf, S.11111.xx = NaN), largest 57344.
const fp8Formats = {
  fp8_e4m3: { mantissaBits: 3, bias: 7, max: 448 },
  fp8_e5m2: { mantissaBits: 2, bias: 15, max: 57344 },
} as const;

/** The largest finite value of an fp8 dtype. */
export function fp8Max(dtype: Fp8DType): number {
  return fp8Formats[dtype].max;
}

export function fp8ToFloat(dtype: Fp8DType, bits: number): number {
  const { mantissaBits, bias } = fp8Formats[dtype];
  const sign = bits & 0x80 ? -1 : 1;
  const exponent = (bits & 0x7f) >>> mantissaBits, mantissa = bits & ((1 << mantissaBits) - 1);
  const top = (1 << (7 - mantissaBits)) - 1;
  if (dtype === "fp8_e4m3" && exponent === top && mantissa === 7) return NaN;
  if (dtype === "fp8_e5m2" && exponent === top) return mantissa ? NaN : sign * Infinity;
  if (exponent === 0) return sign * mantissa * 2 ** (1 - bias - mantissaBits);
  return sign * (1 + mantissa / (1 << mantissaBits)) * 2 ** (exponent - bias);
}

/**
 * The fp8 bits nearest to x (ties to even), from x's float32 value like a cast from a float tensor. Past the largest
 * value (by half a step or more) the result is not finite: NaN in E4M3, which has no infinity; ±inf in E5M2 (PyTorch's
 * float8 casts do the same). Quantise with a scale (quantizeFp8) to stay in range.
 */
export function floatToFp8(dtype: Fp8DType, x: number): number {
  const { mantissaBits, bias, max } = fp8Formats[dtype];
  const v = Math.fround(x);
  if (Number.isNaN(v)) return 0x7f;
  const sign = v < 0 || Object.is(v, -0) ? 0x80 : 0;
  const a = Math.abs(v);
  const minNormal = 2 ** (1 - bias);
  // The step of the grid a falls in: subnormals share the smallest normal exponent's step.
  const exponent = a < minNormal ? 1 - bias : Math.floor(Math.log2(a));
  const step = 2 ** (exponent - mantissaBits);
  let q = a / step;
  const floor = Math.floor(q);
  const rest = q - floor;
  q = rest > 0.5 || (rest === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
  const rounded = q * step;
  if (rounded > max) return dtype === "fp8_e4m3" ? sign | 0x7f : sign | 0x7c;
  if (rounded < minNormal) return sign | q; // subnormal (q < 2^mantissaBits), or zero
  const e = Math.floor(Math.log2(rounded));
  return sign | ((e + bias) << mantissaBits) | Math.round(rounded / 2 ** (e - mantissaBits) - (1 << mantissaBits));
}

/** Rounds a value to the nearest representable value of `dtype`. */
export function roundTo(dtype: DType, x: number): number {
  if (dtype === "fp16") return fp16ToFloat(floatToFp16(x));
  if (dtype === "bf16") return bf16ToFloat(floatToBf16(x));
  if (isFp8(dtype)) return fp8ToFloat(dtype, floatToFp8(dtype, x));
  return Math.fround(x);
}

// ---- tensor conversions ----------------------------------------------------------------------------------------

/** bits -> value of one element of a 16- or 8-bit dtype. */
function decoder(dtype: Exclude<DType, "fp32">): (bits: number) => number {
  if (isFp8(dtype)) {
    const table = Float32Array.from({ length: 256 }, (_, bits) => fp8ToFloat(dtype, bits));
    return (bits) => table[bits];
  }
  return dtype === "fp16" ? fp16ToFloat : bf16ToFloat;
}

function encoder(dtype: Exclude<DType, "fp32">): (x: number) => number {
  if (isFp8(dtype)) return (x) => floatToFp8(dtype, x);
  return dtype === "fp16" ? floatToFp16 : floatToBf16;
}

export function toFloat32(t: Tensor): Float32Array {
  if (t.dtype === "fp32") return t.data as Float32Array;
  const src = t.data as Uint16Array | Uint8Array;
  const out = new Float32Array(src.length);
  const conv = decoder(t.dtype);
  for (let i = 0; i < src.length; i++) out[i] = conv(src[i]);
  return out;
}

export function fromFloat32(dtype: DType, shape: number[], values: ArrayLike<number>): Tensor {
  if (dtype === "fp32") return tensor("fp32", shape, Float32Array.from(values));
  const out = storageFor(dtype, values.length);
  const conv = encoder(dtype);
  for (let i = 0; i < values.length; i++) out[i] = conv(values[i]);
  return tensor(dtype, shape, out);
}

/**
 * Per-tensor fp8 quantisation of real values: scale = max |x| / the format's largest value (1 for an all-zero
 * tensor), bits = round(x / scale). The descale factor to pass with the tensor is `scale`: bits · scale ≈ x.
 */
export function quantizeFp8(dtype: Fp8DType, shape: number[], values: ArrayLike<number>): { tensor: Tensor; scale: number } {
  let amax = 0;
  for (let i = 0; i < values.length; i++) amax = Math.max(amax, Math.abs(values[i]));
  if (!Number.isFinite(amax)) throw new FlashAttnError("BAD_INPUT", "cannot quantise values that are not finite to fp8");
  const scale = amax > 0 ? Math.fround(amax / fp8Max(dtype)) : 1;
  const scaled = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) scaled[i] = Math.min(fp8Max(dtype), Math.max(-fp8Max(dtype), values[i] / scale));
  return { tensor: fromFloat32(dtype, shape, scaled), scale };
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

/** Standard normal values times `scale`, deterministic for a seed (Box–Muller), as float32. */
export function randomValues(shape: number[], seed: number, scale = 1): Float32Array {
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
  return values;
}

/** Standard normal values times `scale` rounded to `dtype`, deterministic for a seed. */
export function randomTensor(dtype: DType, shape: number[], seed: number, scale = 1): Tensor {
  return fromFloat32(dtype, shape, randomValues(shape, seed, scale));
}
