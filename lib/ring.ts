// Context-parallel (ring) attention: one sequence split over N ranks (GPUs, or in-process ranks of one device), K/V
// blocks passed around a ring while every rank runs our forward (or backward) on the block it holds.
//
// Layout (load-balanced causal): the sequence is cut into 2N chunks as equal as whole rows allow; rank r holds chunk
// r (its "front") and chunk 2N-1-r (its "back") as one shard (batch, rows_r, heads, head_dim) in that order, so every
// rank does the same causal work. At step s rank r holds the K/V block of rank src = (r - s) mod N. Per (q chunk,
// kv chunk) pair the mask is full (kv chunk before the q chunk), diagonal (the same chunk) or skipped (after it);
// the visible kv chunks of one q chunk are always a prefix of the held block, so each q chunk needs at most one call:
//   step 0: front against the own front (causal), back against the whole own block (causal, bottom-right aligned:
//           the front is fully visible, the back diagonal); later steps: q chunk c against the held chunks before c.
// Forward: partial (O, LSE) merged into a running fp32 accumulator by the log-sum-exp rule (fa_merge_partial, the
// split-KV combine's maths). Backward: every call runs our backward with the global O and LSE (exact: P is
// recomputed from the final LSE), dQ accumulates locally in fp32, dK/dV accumulate in fp32 and travel with their
// block, coming home after N steps (fa_convert sums the partial gradients).
//
// The transport moves device buffers between ranks; the algorithm posts the next block's transfer before computing
// on the current one (overlap) and waits at the end of each step. Transports: NCCL (lib/nccl.ts, one process driving
// every GPU) and LocalRing below (every rank on one device of one backend: device-to-device copies).
import { Scratch } from "./attention.ts";
import type { Backend, DeviceBuffer } from "./backend.ts";
import { FlashAttnError } from "./errors.ts";
import type { AttnParams, TensorView } from "../ffi/layout.ts";
import { describeProblem, type Problem, type TensorShape } from "./problem.ts";
import { type AttnRequest, paramsFor } from "./select.ts";
import { dtypeBytes } from "./vocabulary.ts";

/** Moves device buffers around a ring of ranks. One backend (one library) serves every rank. */
export interface RingTransport {
  readonly ranks: number;
  readonly backend: Backend;
  /** What carries the blocks ("nccl 2.21.5", "in-process copies"), for reports. */
  readonly description: string;
  /** Makes `rank`'s device current: allocations and kernels that follow run there. */
  use(rank: number): void;
  /**
   * Starts, for every rank r at once, sending bytes[r] of send[r] to rank (r+1) mod N and receiving
   * bytes[(r-1) mod N] into recv[r] from rank (r-1) mod N. The send buffers must hold their data when this is called
   * (a transport whose copies run asynchronously waits for the ranks' queued work first).
   */
  shift(send: readonly DeviceBuffer[], recv: readonly DeviceBuffer[], bytes: readonly number[]): void;
  /** Returns when every shift started so far has landed and every rank's queued work is done. */
  wait(): void;
  close(): void;
}

/** Every rank on the current device of one backend; a shift is a device-to-device copy done at wait(). */
export class LocalRing implements RingTransport {
  readonly ranks: number;
  readonly backend: Backend;
  readonly description = "in-process copies on one device";
  #pending: Array<{ dst: DeviceBuffer; src: DeviceBuffer; bytes: number }> = [];

  constructor(backend: Backend, ranks: number) {
    if (!Number.isInteger(ranks) || ranks < 1) throw new FlashAttnError("USAGE", `a ring needs at least one rank, got ${ranks}`);
    this.backend = backend;
    this.ranks = ranks;
  }
  use(_rank: number): void {}
  shift(send: readonly DeviceBuffer[], recv: readonly DeviceBuffer[], bytes: readonly number[]): void {
    for (let r = 0; r < this.ranks; r++) this.#pending.push({ src: send[r], dst: recv[(r + 1) % this.ranks], bytes: bytes[r] });
  }
  wait(): void {
    for (const { dst, src, bytes } of this.#pending.splice(0)) this.backend.copy(dst, src, bytes);
    this.backend.synchronize();
  }
  close(): void {
    this.#pending = [];
  }
}

// ---- the split of the sequence ----------------------------------------------------------------------------------

/** Row ranges [start, start + rows) in the global sequence, and where they sit in a rank's shard. */
export interface ShardChunk {
  /** Chunk index 0..2N-1 in sequence order. */
  index: number;
  start: number;
  rows: number;
  /** First row of this chunk inside the rank's shard (0 for the front). */
  offset: number;
}

export interface Shard {
  rank: number;
  rows: number;
  chunks: [ShardChunk, ShardChunk];
}

/** Rank `rank`'s two chunks of a `seqlen`-row sequence split over `ranks` ranks (chunk c = rows [⌊cS/2N⌋, ⌊(c+1)S/2N⌋)). */
export function shardOf(seqlen: number, ranks: number, rank: number): Shard {
  const bound = (c: number) => Math.floor((c * seqlen) / (2 * ranks));
  const chunk = (index: number, offset: number): ShardChunk => ({ index, start: bound(index), rows: bound(index + 1) - bound(index), offset });
  const front = chunk(rank, 0);
  const back = chunk(2 * ranks - 1 - rank, front.rows);
  return { rank, rows: front.rows + back.rows, chunks: [front, back] };
}

/**
 * The call one q chunk makes against the block of rank `src`: how many leading rows of that block it sees and whether
 * the mask is causal (only the own block at step 0 holds a diagonal chunk); 0 rows = nothing to do.
 */
export function visibleRows(q: ShardChunk, held: Shard, causal: boolean, ownBlock: boolean): { rows: number; causal: boolean } {
  if (!causal) return { rows: held.rows, causal: false };
  if (ownBlock) return { rows: q.offset + q.rows, causal: true };
  const rows = held.chunks.filter((kv) => kv.index < q.index).reduce((n, kv) => n + kv.rows, 0);
  return { rows, causal: false };
}

// ---- the problem ------------------------------------------------------------------------------------------------

/**
 * The global problem of a ring: self-attention over one sequence length (q, k, v share it), with the semantics a
 * split by rows keeps exact. Position-dependent masks other than causal (window, ALiBi) and varlen are refused.
 */
export function describeRingProblem(q: TensorShape, k: TensorShape, v: TensorShape, opts: { causal?: boolean; scale?: number; softcap?: number } = {}): Problem {
  return checkRingProblem(describeProblem(q, k, v, opts));
}

/** A problem the ring computes exactly, as it is; else the sentence why not (ringAttention takes any Problem). */
function checkRingProblem(problem: Problem): Problem {
  if (problem.varlen || problem.window[0] !== -1 || problem.window[1] !== -1) {
    throw new FlashAttnError("UNSUPPORTED", "context parallelism splits one sequence by rows: varlen batches and sliding windows are not supported");
  }
  if (problem.seqlenQ !== problem.seqlenK) {
    throw new FlashAttnError("UNSUPPORTED", `context parallelism splits one sequence: seqlen_q (${problem.seqlenQ}) must equal seqlen_k (${problem.seqlenK})`);
  }
  if (problem.dtype !== "fp16" && problem.dtype !== "bf16" && problem.dtype !== "fp32") {
    throw new FlashAttnError("UNSUPPORTED", `context parallelism takes fp32, fp16 or bf16, not ${problem.dtype}`);
  }
  return problem;
}

/** One rank's shard of the forward: inputs q, k, v (batch, rows, heads, head_dim) and outputs o and lse (batch, heads_q, rows, fp32). */
export interface RingForwardShard {
  q: DeviceBuffer;
  k: DeviceBuffer;
  v: DeviceBuffer;
  o: DeviceBuffer;
  lse: DeviceBuffer;
}

/** One rank's shard of the backward: the forward's tensors and dout in, dq, dk, dv out (q's and k's shapes). */
export interface RingBackwardShard extends RingForwardShard {
  dout: DeviceBuffer;
  dq: DeviceBuffer;
  dk: DeviceBuffer;
  dv: DeviceBuffer;
}

export interface RingOptions {
  /** Post the next block's transfer before computing on the current one (default). false: transfer, wait, compute. */
  overlap?: boolean;
}

/** Host wall times of one ring pass, in ms. */
export interface RingTimes {
  totalMs: number;
  /** Without overlap: the time spent waiting for transfers alone (the communication); with overlap: 0 (not separable). */
  communicationMs: number;
}

// ---- the passes -------------------------------------------------------------------------------------------------

const at = (b: DeviceBuffer, byteOffset: number): bigint => b.address + BigInt(byteOffset);

/** The geometry of one ring problem: shards, element sizes, and the tensor views of a call. */
class RingGeometry {
  readonly shards: Shard[];
  readonly maxRows: number;
  readonly maxChunk: number;
  readonly elt: number;
  readonly qRow: number;
  readonly kvRow: number;

  constructor(readonly problem: Problem, readonly ranks: number) {
    this.shards = Array.from({ length: ranks }, (_, r) => shardOf(problem.seqlenQ, ranks, r));
    this.maxRows = Math.max(...this.shards.map((s) => s.rows));
    this.maxChunk = Math.max(...this.shards.flatMap((s) => s.chunks.map((c) => c.rows)));
    this.elt = dtypeBytes[problem.dtype];
    this.qRow = problem.headsQ * problem.headDim;
    this.kvRow = problem.headsKv * problem.headDim;
  }

  /** Bytes of one K (or V) block of `rows` rows in `eltBytes`-byte elements. */
  kvBytes(rows: number, eltBytes = this.elt): number {
    return this.problem.batch * rows * this.kvRow * eltBytes;
  }

  /** A view of `rows` rows of a (batch, shardRows, heads, d) tensor starting at row `offset`. */
  view(data: bigint, shardRows: number, offset: number, rowElements: number): TensorView {
    return { data: data + BigInt(offset * rowElements * this.elt), batchStride: shardRows * rowElements, rowStride: rowElements, headStride: this.problem.headDim };
  }

  /**
   * fa_attn_params of one block call: the rows of chunk `c` of rank `rank`'s shard (q at `q`) against the first
   * `seen.rows` rows of the held block (K then V in `block`, of `held`'s size). The caller adds the outputs.
   */
  params(direction: "fwd" | "bwd", rank: number, c: ShardChunk, q: bigint, block: DeviceBuffer, held: Shard, seen: { rows: number; causal: boolean }): AttnParams {
    const p = this.problem;
    const request: AttnRequest = {
      problem: { ...p, seqlenQ: c.rows, seqlenK: seen.rows, totalQ: p.batch * c.rows, totalK: p.batch * seen.rows, causal: seen.causal, sequences: [] },
      direction,
    };
    const params = paramsFor(request, { q: 0n, k: 0n, v: 0n, o: 0n, lse: 0n });
    params.q = this.view(q, this.shards[rank].rows, c.offset, this.qRow);
    params.k = this.view(block.address, held.rows, 0, this.kvRow);
    params.v = this.view(at(block, this.kvBytes(held.rows)), held.rows, 0, this.kvRow);
    return params;
  }
}

/** Every rank's buffers named in `names` are there and hold at least its shard. */
function checkShards(g: RingGeometry, shards: ReadonlyArray<Partial<RingBackwardShard>>, names: Array<keyof RingBackwardShard>): void {
  checkRingProblem(g.problem);
  if (shards.length !== g.ranks) throw new FlashAttnError("BAD_INPUT", `the ring has ${g.ranks} ranks but ${shards.length} shards were given`);
  shards.forEach((shard, r) => {
    const rows = g.shards[r].rows;
    for (const name of names) {
      const buffer = shard[name];
      const need = name === "lse" ? g.problem.batch * g.problem.headsQ * rows * 4
        : name === "k" || name === "v" || name === "dk" || name === "dv" ? g.kvBytes(rows)
        : g.problem.batch * rows * g.qRow * g.elt;
      if (!buffer || buffer.bytes < need) {
        throw new FlashAttnError("BAD_INPUT", `rank ${r}'s ${name} holds ${buffer?.bytes ?? 0} bytes but its shard of ${rows} rows needs ${need}`);
      }
    }
  });
}

/**
 * Runs the N steps. With overlap the next step's block transfer is posted before this step computes; without, the
 * transfer (and anything posted before it) is waited for first, and that wait is the communication time. Each step
 * waits for its own work before it returns.
 */
function runSteps(t: RingTransport, overlap: boolean, shiftFor: (s: number) => void, step: (s: number) => void): RingTimes {
  let communicationMs = 0;
  const t0 = performance.now();
  for (let s = 0; s < t.ranks; s++) {
    if (s < t.ranks - 1) shiftFor(s);
    if (!overlap) {
      const w0 = performance.now();
      t.wait();
      communicationMs += performance.now() - w0;
    }
    step(s);
  }
  return { totalMs: performance.now() - t0, communicationMs };
}

/** The held block's rank at step s, for rank r. */
const sourceOf = (r: number, s: number, n: number) => (r - s + n) % n;

/**
 * The two buffers a rank's travelling K/V block alternates between (one computed on, one receiving), each K then V of
 * the largest shard; the first holds the rank's own block.
 */
function ownBlock(b: Backend, g: RingGeometry, scratch: Scratch, shard: RingForwardShard, me: Shard): DeviceBuffer[] {
  const kv = [0, 1].map(() => scratch.alloc(2 * g.kvBytes(g.maxRows)));
  const bytes = g.kvBytes(me.rows);
  b.copy(kv[0], shard.k, bytes);
  b.copy({ address: at(kv[0], bytes), bytes }, shard.v, bytes);
  return kv;
}

/** Sends every rank's block of step s (blocks[r][s % 2], the K/V-shaped pair of the held block) to the next rank. */
function shiftBlocks(t: RingTransport, g: RingGeometry, blocks: DeviceBuffer[][], s: number, eltBytes = g.elt): void {
  t.shift(blocks.map((pair) => pair[s % 2]), blocks.map((pair) => pair[(s + 1) % 2]),
    blocks.map((_, r) => 2 * g.kvBytes(g.shards[sourceOf(r, s, t.ranks)].rows, eltBytes)));
}

/** Copies chunk c's LSE rows between a (batch, heads, c.rows) buffer and a (batch, heads, shardRows) shard, either way. */
function copyLseRows(backend: Backend, g: RingGeometry, shardLse: DeviceBuffer, shardRows: number, chunkLse: DeviceBuffer, c: ShardChunk, toShard: boolean): void {
  const p = g.problem;
  for (let bh = 0; bh < p.batch * p.headsQ; bh++) {
    const inShard = { address: at(shardLse, (bh * shardRows + c.offset) * 4), bytes: c.rows * 4 };
    const inChunk = { address: at(chunkLse, bh * c.rows * 4), bytes: c.rows * 4 };
    if (toShard) backend.copy(inShard, inChunk, c.rows * 4);
    else backend.copy(inChunk, inShard, c.rows * 4);
  }
}

/**
 * Context-parallel forward: every rank's o and lse for its shard, equal to single-device attention over the whole
 * sequence. `shards[r]` lives on rank r's device.
 */
export function ringAttention(t: RingTransport, problem: Problem, shards: readonly RingForwardShard[], opts: RingOptions = {}): RingTimes {
  const g = new RingGeometry(problem, t.ranks);
  checkShards(g, shards, ["q", "k", "v", "o", "lse"]);
  const b = t.backend, p = problem, n = t.ranks;
  const scratch = shards.map((_, r) => (t.use(r), new Scratch(b)));
  try {
    const ranks = shards.map((shard, r) => {
      t.use(r);
      const me = g.shards[r];
      const kv = ownBlock(b, g, scratch[r], shard, me);
      const acc = me.chunks.map((c) => ({ o: scratch[r].alloc(p.batch * c.rows * g.qRow * 4), lse: scratch[r].alloc(p.batch * p.headsQ * c.rows * 4), filled: false }));
      return { me, kv, acc, partO: scratch[r].alloc(p.batch * g.maxChunk * g.qRow * g.elt), partLse: scratch[r].alloc(p.batch * p.headsQ * g.maxChunk * 4) };
    });
    const times = runSteps(t, opts.overlap ?? true, (s) => shiftBlocks(t, g, ranks.map((rk) => rk.kv), s), (s) => {
      ranks.forEach((rank, r) => {
        t.use(r);
        const held = g.shards[sourceOf(r, s, n)];
        rank.me.chunks.forEach((c, ci) => {
          const seen = visibleRows(c, held, p.causal, s === 0);
          if (c.rows === 0 || seen.rows === 0) return;
          const params = g.params("fwd", r, c, shards[r].q.address, rank.kv[s % 2], held, seen);
          params.o = g.view(rank.partO.address, c.rows, 0, g.qRow);
          params.lse = rank.partLse.address;
          b.forward(params);
          const acc = rank.acc[ci];
          if (acc.filled) {
            b.mergePartial(p.dtype, { batch: p.batch, rows: c.rows, heads: p.headsQ, headDim: p.headDim }, acc.o.address, acc.lse.address, rank.partO.address, rank.partLse.address);
          } else {
            b.convert("fp32", acc.o.address, p.dtype, rank.partO.address, p.batch * c.rows * g.qRow, false);
            b.copy(acc.lse, rank.partLse, acc.lse.bytes);
            acc.filled = true;
          }
        });
      });
      t.wait();
    });
    ranks.forEach((rank, r) => {
      t.use(r);
      rank.me.chunks.forEach((c, ci) => {
        if (c.rows === 0) return;
        for (let bi = 0; bi < p.batch; bi++) {
          b.convert(p.dtype, at(shards[r].o, (bi * rank.me.rows + c.offset) * g.qRow * g.elt), "fp32",
            at(rank.acc[ci].o, bi * c.rows * g.qRow * 4), c.rows * g.qRow, false);
        }
        copyLseRows(b, g, shards[r].lse, rank.me.rows, rank.acc[ci].lse, c, true);
      });
    });
    t.wait();
    return times;
  } finally {
    scratch.forEach((sc, r) => (t.use(r), sc.release()));
  }
}

/**
 * Context-parallel backward: every rank's dq, dk, dv for its shard from the forward's o and lse (ringAttention's),
 * equal to the single-device backward.
 */
export function ringAttentionBackward(t: RingTransport, problem: Problem, shards: readonly RingBackwardShard[], opts: RingOptions = {}): RingTimes {
  const g = new RingGeometry(problem, t.ranks);
  checkShards(g, shards, ["q", "k", "v", "o", "lse", "dout", "dq", "dk", "dv"]);
  const b = t.backend, p = problem, n = t.ranks;
  const scratch = shards.map((_, r) => (t.use(r), new Scratch(b)));
  try {
    const ranks = shards.map((shard, r) => {
      t.use(r);
      const sc = scratch[r], me = g.shards[r];
      const kv = ownBlock(b, g, sc, shard, me);
      const dkv = [0, 1].map(() => sc.alloc(2 * g.kvBytes(g.maxRows, 4)));
      b.fill(dkv[0], 0);
      const chunks = me.chunks.map((c) => {
        const lse = sc.alloc(p.batch * p.headsQ * c.rows * 4);
        if (c.rows > 0) copyLseRows(b, g, shard.lse, me.rows, lse, c, false);
        const dqAcc = sc.alloc(p.batch * c.rows * g.qRow * 4);
        b.fill(dqAcc, 0);
        return {
          lse, dqAcc, seen: { rows: 0, causal: false },
          dq: sc.alloc(p.batch * c.rows * g.qRow * g.elt), dk: sc.alloc(g.kvBytes(g.maxRows)), dv: sc.alloc(g.kvBytes(g.maxRows)),
        };
      });
      return { me, kv, dkv, chunks };
    });
    const times = runSteps(t, opts.overlap ?? true, (s) => shiftBlocks(t, g, ranks.map((rk) => rk.kv), s), (s) => {
      // Partial gradients of this step's block; dK/dV of the block are summed once it has arrived (the wait below).
      ranks.forEach((rank, r) => {
        t.use(r);
        const held = g.shards[sourceOf(r, s, n)];
        rank.me.chunks.forEach((c, ci) => {
          const part = rank.chunks[ci];
          part.seen = c.rows === 0 ? { rows: 0, causal: false } : visibleRows(c, held, p.causal, s === 0);
          if (part.seen.rows === 0) return;
          const shard = shards[r];
          const params = g.params("bwd", r, c, shard.q.address, rank.kv[s % 2], held, part.seen);
          params.o = g.view(shard.o.address, rank.me.rows, c.offset, g.qRow);
          params.dout = g.view(shard.dout.address, rank.me.rows, c.offset, g.qRow);
          params.lse = part.lse.address;
          params.dq = g.view(part.dq.address, c.rows, 0, g.qRow);
          params.dk = g.view(part.dk.address, part.seen.rows, 0, g.kvRow);
          params.dv = g.view(part.dv.address, part.seen.rows, 0, g.kvRow);
          b.backward(params);
        });
      });
      t.wait(); // this step's work, and the block's dK/dV accumulators sent at the end of the previous step
      ranks.forEach((rank, r) => {
        t.use(r);
        const held = g.shards[sourceOf(r, s, n)];
        const dkv = rank.dkv[s % 2];
        rank.chunks.forEach((part, ci) => {
          const c = rank.me.chunks[ci];
          if (part.seen.rows === 0) return;
          b.convert("fp32", part.dqAcc.address, p.dtype, part.dq.address, p.batch * c.rows * g.qRow, true);
          for (const [i, grad] of [[0, part.dk], [1, part.dv]] as const) {
            for (let bi = 0; bi < p.batch; bi++) {
              b.convert("fp32", at(dkv, i * g.kvBytes(held.rows, 4) + bi * held.rows * g.kvRow * 4), p.dtype,
                at(grad, bi * part.seen.rows * g.kvRow * g.elt), part.seen.rows * g.kvRow, true);
            }
          }
        });
      });
      shiftBlocks(t, g, ranks.map((rk) => rk.dkv), s, 4); // overlaps the next step's compute
    });
    // After N dK/dV shifts every block's gradients are home, in the buffer the last shift filled.
    t.wait();
    ranks.forEach((rank, r) => {
      t.use(r);
      const shard = shards[r], dkv = rank.dkv[n % 2], rows = rank.me.rows;
      b.convert(p.dtype, shard.dk.address, "fp32", dkv.address, p.batch * rows * g.kvRow, false);
      b.convert(p.dtype, shard.dv.address, "fp32", at(dkv, g.kvBytes(rows, 4)), p.batch * rows * g.kvRow, false);
      rank.me.chunks.forEach((c, ci) => {
        for (let bi = 0; bi < p.batch && c.rows > 0; bi++) {
          b.convert(p.dtype, at(shard.dq, (bi * rows + c.offset) * g.qRow * g.elt), "fp32",
            at(rank.chunks[ci].dqAcc, bi * c.rows * g.qRow * 4), c.rows * g.qRow, false);
        }
      });
    });
    t.wait();
    return times;
  } finally {
    scratch.forEach((sc, r) => (t.use(r), sc.release()));
  }
}
