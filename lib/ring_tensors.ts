// Context-parallel attention on host tensors: the whole q, k, v (and dout) are split into the ranks' shards
// (lib/ring.ts's load-balanced layout), uploaded to each rank's device, run through the ring, and the shards of the
// outputs put back in sequence order. What `flashattn run --devices` and the tests use; a training loop that keeps
// its shards on the devices calls ringAttention / ringAttentionBackward directly.
import type { DeviceBuffer } from "./backend.ts";
import type { Problem } from "./problem.ts";
import {
  describeRingProblem,
  type RingBackwardShard,
  type RingForwardShard,
  type RingOptions,
  type RingTimes,
  type RingTransport,
  ringAttention,
  ringAttentionBackward,
  type Shard,
  shardOf,
} from "./ring.ts";
import { storageFor, type Tensor, tensor, type TensorData } from "./tensor.ts";

export interface RingSemantics extends RingOptions {
  causal?: boolean;
  scale?: number;
  softcap?: number;
}

/**
 * The rows of `shard` from data laid out as (outer, seqlen, rowElements): (batch, seqlen, heads, d) tensors with
 * outer = batch, (batch, heads, seqlen) LSEs with outer = batch·heads and rowElements = 1.
 */
export function gatherShard<T extends TensorData>(data: T, outer: number, seqlen: number, rowElements: number, shard: Shard): T {
  const out = new (data.constructor as new (n: number) => T)(outer * shard.rows * rowElements);
  for (let o = 0; o < outer; o++) {
    for (const c of shard.chunks) {
      const from = (o * seqlen + c.start) * rowElements;
      out.set(data.subarray(from, from + c.rows * rowElements) as never, (o * shard.rows + c.offset) * rowElements);
    }
  }
  return out;
}

/** Writes a shard's rows back into their places in (outer, seqlen, rowElements) data (gatherShard's inverse). */
export function scatterShard(into: TensorData, part: TensorData, outer: number, seqlen: number, rowElements: number, shard: Shard): void {
  for (let o = 0; o < outer; o++) {
    for (const c of shard.chunks) {
      const from = (o * shard.rows + c.offset) * rowElements;
      into.set(part.subarray(from, from + c.rows * rowElements) as never, (o * seqlen + c.start) * rowElements);
    }
  }
}

/** Device buffers of every rank, freed together on their own devices. */
class RankBuffers {
  readonly #held: Array<{ rank: number; buffer: DeviceBuffer }> = [];
  constructor(readonly t: RingTransport) {}
  upload(rank: number, host: ArrayBufferView): DeviceBuffer {
    this.t.use(rank);
    return this.#keep(rank, this.t.backend.upload(host));
  }
  alloc(rank: number, bytes: number): DeviceBuffer {
    this.t.use(rank);
    return this.#keep(rank, this.t.backend.alloc(bytes));
  }
  download(rank: number, buffer: DeviceBuffer, into: ArrayBufferView): void {
    this.t.use(rank);
    this.t.backend.download(buffer, into);
  }
  #keep(rank: number, buffer: DeviceBuffer): DeviceBuffer {
    this.#held.push({ rank, buffer });
    return buffer;
  }
  release(): void {
    for (const { rank, buffer } of this.#held.splice(0)) {
      this.t.use(rank);
      this.t.backend.free(buffer);
    }
  }
}

/** The split of one problem: per rank its shard and the row sizes of its tensors. */
function layoutOf(p: Problem, ranks: number) {
  const qRow = p.headsQ * p.headDim, kvRow = p.headsKv * p.headDim, S = p.seqlenQ;
  const shards = Array.from({ length: ranks }, (_, r) => shardOf(S, ranks, r));
  const q = (data: TensorData, s: Shard) => gatherShard(data, p.batch, S, qRow, s);
  const kv = (data: TensorData, s: Shard) => gatherShard(data, p.batch, S, kvRow, s);
  const lse = (data: Float32Array, s: Shard) => gatherShard(data, p.batch * p.headsQ, S, 1, s);
  return { qRow, kvRow, S, shards, q, kv, lse };
}

export interface RingResult {
  problem: Problem;
  out: Tensor;
  /** (batch, heads_q, seqlen) */
  lse: Float32Array;
  times: RingTimes;
}

/** Context-parallel forward over the transport's ranks; equal to attention(q, k, v, { causal, scale, softcap }). */
export function ringAttentionTensors(t: RingTransport, q: Tensor, k: Tensor, v: Tensor, opts: RingSemantics = {}): RingResult {
  const p = describeRingProblem(q, k, v, opts);
  const L = layoutOf(p, t.ranks);
  const bufs = new RankBuffers(t);
  try {
    const shards: RingForwardShard[] = L.shards.map((s, r) => ({
      q: bufs.upload(r, L.q(q.data, s)), k: bufs.upload(r, L.kv(k.data, s)), v: bufs.upload(r, L.kv(v.data, s)),
      o: bufs.alloc(r, p.batch * s.rows * L.qRow * q.data.BYTES_PER_ELEMENT),
      lse: bufs.alloc(r, p.batch * p.headsQ * s.rows * 4),
    }));
    const times = ringAttention(t, p, shards, opts);
    const out = tensor(p.dtype, q.shape), lse = new Float32Array(p.batch * p.headsQ * L.S);
    L.shards.forEach((s, r) => {
      const o = storageFor(p.dtype, p.batch * s.rows * L.qRow), l = new Float32Array(p.batch * p.headsQ * s.rows);
      bufs.download(r, shards[r].o, o);
      bufs.download(r, shards[r].lse, l);
      scatterShard(out.data, o, p.batch, L.S, L.qRow, s);
      scatterShard(lse, l, p.batch * p.headsQ, L.S, 1, s);
    });
    return { problem: p, out, lse, times };
  } finally {
    bufs.release();
  }
}

export interface RingGradients {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  times: RingTimes;
}

/** Context-parallel backward from the forward's out and lse; equal to attentionBackward(...). */
export function ringAttentionBackwardTensors(
  t: RingTransport, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Float32Array, opts: RingSemantics = {},
): RingGradients {
  const p = describeRingProblem(q, k, v, opts);
  const L = layoutOf(p, t.ranks);
  const bufs = new RankBuffers(t);
  try {
    const shards: RingBackwardShard[] = L.shards.map((s, r) => {
      const qBytes = p.batch * s.rows * L.qRow * q.data.BYTES_PER_ELEMENT, kvBytes = p.batch * s.rows * L.kvRow * k.data.BYTES_PER_ELEMENT;
      return {
        q: bufs.upload(r, L.q(q.data, s)), k: bufs.upload(r, L.kv(k.data, s)), v: bufs.upload(r, L.kv(v.data, s)),
        o: bufs.upload(r, L.q(out.data, s)), lse: bufs.upload(r, L.lse(lse, s)), dout: bufs.upload(r, L.q(dout.data, s)),
        dq: bufs.alloc(r, qBytes), dk: bufs.alloc(r, kvBytes), dv: bufs.alloc(r, kvBytes),
      };
    });
    const times = ringAttentionBackward(t, p, shards, opts);
    const dq = tensor(p.dtype, q.shape), dk = tensor(p.dtype, k.shape), dv = tensor(p.dtype, v.shape);
    L.shards.forEach((s, r) => {
      for (const [name, whole, rowElements] of [["dq", dq, L.qRow], ["dk", dk, L.kvRow], ["dv", dv, L.kvRow]] as const) {
        const part = storageFor(p.dtype, p.batch * s.rows * rowElements);
        bufs.download(r, shards[r][name], part);
        scatterShard(whole.data, part, p.batch, L.S, rowElements, s);
      }
    });
    return { dq, dk, dv, times };
  } finally {
    bufs.release();
  }
}
