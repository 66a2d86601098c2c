// The plain fp64 reference of KV-cache attention (flash-attn 2.x flash_attn_with_kvcache; kernels/include/flashattn.h
// states the semantics): every step written out directly, sharing nothing with the library. The appended rows and
// the rotated queries are rounded to the tensors' dtype, as flash-attn stores them; scores, softmax and output are fp64.
// fp8 caches: the caches keep their fp8 numbers (the append copies them); q and the keys and values enter the scores and
// the output dequantised, times the descale factor of their (sequence, kv head).
//
// plainKvCacheProblem restates a call after its append as the plain varlen forward it amounts to (each sequence's
// visible cache tokens gathered into k / v), so that the fp8 check can measure a naive fp8 attention of the same inputs
// with lib/reference.ts's naiveFp8Forward instead of a second copy of it.
import { type KvCacheOptions, describeKvCache } from "./kvcache.ts";
import type { AttentionSemantics } from "./problem.ts";
import type { ReferenceOutput } from "./reference.ts";
import { fromFloat32, type Tensor, roundTo, tensor, toFloat32 } from "./tensor.ts";
import { dtypeBytes } from "./vocabulary.ts";

export interface KvCacheReference extends ReferenceOutput {
  /** The caches after the append. */
  kCache: Tensor;
  vCache: Tensor;
}

/** Rotates x[0 .. rotaryDim) of one row (a copy) to `position`; GPT-NeoX halves or GPT-J pairs. */
function rotate(x: Float64Array, cos: Float32Array, sin: Float32Array, rotaryDim: number, position: number, interleaved: boolean): Float64Array {
  const out = Float64Array.from(x);
  const half = rotaryDim / 2;
  for (let i = 0; i < half; i++) {
    const [a, b] = interleaved ? [2 * i, 2 * i + 1] : [i, i + half];
    const c = cos[position * half + i], s = sin[position * half + i];
    out[a] = x[a] * c - x[b] * s;
    out[b] = x[a] * s + x[b] * c;
  }
  return out;
}

export function referenceKvCache(q: Tensor, kCache: Tensor, vCache: Tensor, opts: KvCacheOptions): KvCacheReference {
  const p = describeKvCache(q, kCache, vCache, opts);
  const d = p.headDim, group = p.headsQ / p.headsKv;
  const qf = toFloat32(q);
  const kc = Float64Array.from(toFloat32(kCache)), vc = Float64Array.from(toFloat32(vCache));
  const kn = opts.kNew ? toFloat32(opts.kNew) : new Float32Array(0), vn = opts.vNew ? toFloat32(opts.vNew) : new Float32Array(0);
  const cos = opts.rotaryCos ? toFloat32(opts.rotaryCos) : new Float32Array(0);
  const sin = opts.rotarySin ? toFloat32(opts.rotarySin) : new Float32Array(0);
  const round = (x: number) => roundTo(p.dtype, x);
  const { cached, cacheRow } = cacheGeometry(q, kCache, vCache, opts);
  // fp8: the factor of (sequence b, kv head h) of q, k or v; 1 when none is given (and for other dtypes).
  const factor = (which: "q" | "k" | "v", b: number, h: number) => {
    const f = opts.descale?.[which];
    return !f ? 1 : f.length === 1 ? f[0] : f[b * p.headsKv + h];
  };

  // 1. The append (k_new rotated to its absolute cache position).
  for (let b = 0; b < p.batch; b++) {
    for (let j = 0; j < p.seqlenNew; j++) {
      const t = cached(b) + j;
      for (let h = 0; h < p.headsKv; h++) {
        const src = ((b * p.seqlenNew + j) * p.headsKv + h) * d;
        let krow: Float64Array = Float64Array.from(kn.subarray(src, src + d));
        if (p.rotaryDim > 0) krow = rotate(krow, cos, sin, p.rotaryDim, t, p.rotaryInterleaved);
        const dst = cacheRow(b, t, h);
        for (let x = 0; x < d; x++) {
          kc[dst + x] = round(krow[x]);
          vc[dst + x] = vn[src + x];
        }
      }
    }
  }

  // 2. Attention of each (rotated) query row over the sequence's keys [leftpad, cache_seqlens + seqlen_new).
  const [left, right] = [p.window[0], p.causal ? 0 : p.window[1]];
  const consecutive = p.causal || p.window[0] >= 0 || p.window[1] >= 0;
  const out = new Float64Array(qf.length);
  const lse = new Float64Array(p.batch * p.headsQ * p.seqlenQ);
  for (let b = 0; b < p.batch; b++) {
    const pad = opts.cacheLeftpad ? opts.cacheLeftpad[b] : 0;
    const keys = cached(b) + p.seqlenNew - pad;
    const diag = keys - p.seqlenQ;
    for (let h = 0; h < p.headsQ; h++) {
      const kvh = Math.floor(h / group);
      const qScale = factor("q", b, kvh), kScale = factor("k", b, kvh), vScale = factor("v", b, kvh);
      const slope = opts.alibiSlopes ? opts.alibiSlopes[opts.alibiPerBatch ? b * p.headsQ + h : h] : 0;
      for (let i = 0; i < p.seqlenQ; i++) {
        const qBase = ((b * p.seqlenQ + i) * p.headsQ + h) * d;
        let qrow: Float64Array = Float64Array.from(qf.subarray(qBase, qBase + d));
        if (p.rotaryDim > 0) {
          const position = cached(b) + (consecutive ? i : 0);
          qrow = rotate(qrow, cos, sin, p.rotaryDim, position, p.rotaryInterleaved).map(round);
        }
        const lo = left >= 0 ? Math.max(0, i + diag - left) : 0;
        const hi = right >= 0 ? Math.min(keys - 1, i + diag + right) : keys - 1;
        const scores: number[] = [], rows: number[] = [];
        for (let j = lo; j <= hi; j++) {
          const kBase = cacheRow(b, pad + j, kvh);
          let dot = 0;
          for (let x = 0; x < d; x++) dot += qrow[x] * kc[kBase + x];
          let s = p.scale * qScale * kScale * dot;
          if (p.softcap > 0) s = p.softcap * Math.tanh(s / p.softcap);
          if (opts.alibiSlopes) s -= slope * Math.abs(i + diag - j);
          scores.push(s);
          rows.push(kBase);
        }
        const lseIndex = (b * p.headsQ + h) * p.seqlenQ + i;
        if (scores.length === 0) {
          lse[lseIndex] = Infinity; // no key: O = 0, LSE = +inf (flash-attn 2.x)
          continue;
        }
        const m = scores.reduce((a, s) => Math.max(a, s), -Infinity);
        const e = scores.map((s) => Math.exp(s - m));
        const sum = e.reduce((a, x) => a + x, 0);
        lse[lseIndex] = m + Math.log(sum);
        for (let n = 0; n < e.length; n++) {
          const w = (e[n] / sum) * vScale;
          for (let x = 0; x < d; x++) out[qBase + x] += w * vc[rows[n] + x];
        }
      }
    }
  }
  return {
    out, lse,
    kCache: fromFloat32(kCache.dtype, kCache.shape, kc),
    vCache: fromFloat32(vCache.dtype, vCache.shape, vc),
  };
}

/**
 * Where the caches hold a sequence's tokens: cached(b), the tokens before the append (without cache_seqlens every
 * cache is full), and cacheRow(b, t, h), the element offset of (sequence b, cache token t, kv head h).
 */
function cacheGeometry(q: Tensor, kCache: Tensor, vCache: Tensor, opts: KvCacheOptions) {
  const p = describeKvCache(q, kCache, vCache, opts);
  const capacity = p.paged ? p.maxBlocks * p.cacheRows : p.cacheRows;
  const cached = (b: number) => (opts.cacheSeqlens ? opts.cacheSeqlens[b] : capacity);
  const cacheRow = (b: number, t: number, h: number) => {
    const [page, row] = p.paged
      ? [opts.blockTable![b * p.maxBlocks + Math.floor(t / p.cacheRows)], t % p.cacheRows]
      : [opts.cacheBatchIdx ? opts.cacheBatchIdx[b] : b, t];
    return ((page * p.cacheRows + row) * p.headsKv + h) * p.headDim;
  };
  return { p, cached, cacheRow };
}

/**
 * A call without rotary, restated after its append (kCache / vCache: the caches the append produced) as the plain
 * varlen forward it amounts to: q as (batch x seqlen_q, heads_q, d), k and v the keys each sequence sees, tokens
 * [leftpad, cache_seqlens + seqlen_new), packed in sequence order; the masks, scale, softcap, ALiBi and fp8 fields as
 * given. Its output has the KV-cache call's layout.
 */
export function plainKvCacheProblem(q: Tensor, kCache: Tensor, vCache: Tensor, opts: KvCacheOptions) {
  const { p, cached, cacheRow } = cacheGeometry(q, kCache, vCache, opts);
  const rowElements = p.headsKv * p.headDim, bytes = dtypeBytes[p.dtype];
  const lengths = Array.from({ length: p.batch }, (_, b) => cached(b) + p.seqlenNew - (opts.cacheLeftpad?.[b] ?? 0));
  const totalK = lengths.reduce((a, n) => a + n, 0);
  const k = tensor(p.dtype, [totalK, p.headsKv, p.headDim]), v = tensor(p.dtype, [totalK, p.headsKv, p.headDim]);
  const cuK = new Int32Array(p.batch + 1);
  for (let b = 0; b < p.batch; b++) {
    cuK[b + 1] = cuK[b] + lengths[b];
    for (let j = 0; j < lengths[b]; j++) {
      const token = (opts.cacheLeftpad?.[b] ?? 0) + j;
      // A token's kv heads are consecutive in a cache row (the caches are contiguous (pages, rows, heads_kv, d)).
      const from = cacheRow(b, token, 0) * bytes, to = (cuK[b] + j) * rowElements * bytes;
      for (const [src, dst] of [[kCache, k], [vCache, v]]) {
        new Uint8Array(dst.data.buffer).set(new Uint8Array(src.data.buffer, src.data.byteOffset + from, rowElements * bytes), to);
      }
    }
  }
  const semantics: AttentionSemantics = {
    causal: opts.causal, window: opts.window, softcap: opts.softcap, scale: opts.scale, alibiSlopes: opts.alibiSlopes,
    alibiPerBatch: opts.alibiPerBatch, descale: opts.descale, outDtype: opts.outDtype,
    cuSeqlensQ: Int32Array.from({ length: p.batch + 1 }, (_, b) => b * p.seqlenQ), cuSeqlensK: cuK,
  };
  return { q: tensor(p.dtype, [p.batch * p.seqlenQ, p.headsQ, p.headDim], q.data), k, v, semantics };
}
