// Problem sets: the presets of issue #5 and the flags that override them, expanded into the list of cases a bench
// run measures. Pure functions (no FFI), so expansion and flag checking are tested without a library.
//
//   fa      the sweep of flash-attention's own figures: batch · seqlen = 16k tokens, hidden 2048
//           (heads = 2048 / head_dim), seqlen 512..16k, head_dim 64/128/256, causal off and on, bf16, fwd and bwd
//   decode  one query token against a long KV cache (4k..128k), GQA 32 query heads over 8 KV heads, head_dim 128,
//           through the plain forward and through the KV-cache entry; at 32k keys also paged caches, an append with
//           rotary, speculative decoding (2..16 query tokens, causal), MQA and head_dim 64 / 256
//   quick   a few small shapes that finish in seconds on a 2-core CPU (the default without a GPU)
//
// With --dtype fp8_e4m3 / fp8_e5m2 every forward case is followed by its bf16 twin (our bf16 forward on the same
// shape, the issue's baseline for fp8); fp8 backward cases stay in the sweep and report that there is none.
import { FlashAttnError } from "../lib/errors.ts";
import { MAX_HEAD_DIM } from "../lib/problem.ts";
import { type DType, dtypeNames, isFp8 } from "../lib/vocabulary.ts";
import type { ModelProblem } from "../doctor/model/kernels.ts";
import { attentionFlops, type Direction, directions, type ProblemSize } from "./flops.ts";

/** A model's attention features beyond the shape (bench --model): absent on the presets' cases. */
export interface CaseFeatures {
  /** [left, right], -1 = unbounded */
  window?: [number, number];
  softcap?: number;
  /** the standard ALiBi slopes, one per query head */
  alibi?: boolean;
}

/**
 * A case timed through the KV-cache entry (fa_forward_kvcache on device buffers) instead of the plain forward: the
 * cache it reads and what the call writes into it. seqlenK is the number of keys attended (cache_seqlens + append).
 */
export interface KvCacheLayout {
  /** Tokens per page of a paged cache whose block table is shuffled; absent: one contiguous cache per sequence. */
  pageSize?: number;
  /** Rows of k_new / v_new written into the cache at cache_seqlens = seqlenK - append (the same slot every call). */
  append: number;
  /** Rotary (GPT-NeoX halves, rotary_dim = head_dim) on q and the appended keys. */
  rotary: boolean;
}

/** The entry point a case times: the plain forward (fa_forward) or the KV-cache entry (fa_forward_kvcache). */
export type Entry = "forward" | "kvcache";
export const entryOf = (c: { kvcache?: KvCacheLayout }): Entry => (c.kvcache ? "kvcache" : "forward");

export interface BenchCase extends ProblemSize, CaseFeatures {
  /** Stable key of the case (shape + direction), used to join our rows with baseline rows. */
  id: string;
  direction: Direction;
  /** decode cases are judged by bytes/s against the copy bandwidth, prefill cases by TFLOP/s. */
  kind: "prefill" | "decode";
  /** Present: timed through the KV-cache entry with this cache; the baselines time the contiguous equivalent. */
  kvcache?: KvCacheLayout;
  /** Our backward in deterministic mode (dQ summed in a fixed order; bwd and fwd+bwd cases only). The baselines
   *  time their default backward. */
  deterministic?: boolean;
}

export type PresetName = "fa" | "decode" | "quick";
export const presetNames: readonly PresetName[] = ["fa", "decode", "quick"];

/** A sweep before expansion. batch and heads may be derived from a token count and a hidden size. */
export interface SweepSpec {
  /** a model's window, softcap and ALiBi, on every case (bench --model) */
  features?: CaseFeatures;
  seqlens: number[];
  /** Query lengths; absent means seqlen_q = seqlen_k (prefill). */
  seqlensQ?: number[];
  hdims: number[];
  /** Explicit batch sizes, or derived as max(1, tokens / seqlen). */
  batches?: number[];
  tokens: number;
  /** Explicit query head counts, or derived as hidden / head_dim. */
  heads?: number[];
  hidden: number;
  /** KV head counts; absent means heads_kv = heads_q (MHA). */
  headsKv?: number[];
  causal: boolean[];
  /** "auto" is bf16 where a GPU is measured, fp32 on a CPU-only run. */
  dtype: DType | "auto";
  directions: Direction[];
  kind: "prefill" | "decode";
  /** Decode: the cases timed through the KV-cache entry as well (expandSweep says which). */
  kvcache?: KvCacheSweep;
  /**
   * Shapes sized for a GPU (GiBs of scores, TFLOPs per call): where a GPU backend is usable and the user did not
   * pick a backend, the CPU rows (our CPU library, NumPy) are not timed, and the report says so. Without a GPU the
   * CPU runs them, under the time limit.
   */
  gpuSized: boolean;
  /** bench --deterministic: the backward cases run ours in deterministic mode */
  deterministic?: boolean;
}

/**
 * The KV-cache cases of a decode sweep: every plain case again through the KV-cache entry on a contiguous cache (so
 * both entries show at the same shape), and at one KV length the variants a serving stack runs, each at every batch
 * of the sweep, built on the sweep's first heads / head_dim / query length.
 */
export interface KvCacheSweep {
  /** the KV length of the variants: the sweep's length nearest to it (so --seqlen 4k moves them to 4k) */
  at: number;
  /** paged caches, shuffled block table (ratio to the contiguous KV-cache row at the same shape) */
  pageSizes: number[];
  /** rows appended with rotary (ratio to the KV-cache row without append) */
  append: number;
  /** speculative decoding: these query lengths, causal (bottom-right), through both entries */
  seqlensQ: number[];
  /** MQA and other KV head counts, through both entries */
  headsKv: number[];
  /** other head dims, through both entries */
  hdims: number[];
}

const k = 1024;

export const presets: Record<PresetName, SweepSpec> = {
  fa: {
    seqlens: [512, 1 * k, 2 * k, 4 * k, 8 * k, 16 * k],
    hdims: [64, 128, 256],
    tokens: 16 * k,
    hidden: 2048,
    causal: [false, true],
    dtype: "bf16",
    directions: ["fwd", "bwd"],
    kind: "prefill",
    gpuSized: true,
  },
  decode: {
    seqlens: [4 * k, 8 * k, 16 * k, 32 * k, 64 * k, 128 * k],
    seqlensQ: [1],
    hdims: [128],
    batches: [1, 8],
    tokens: 0,
    heads: [32],
    hidden: 0,
    headsKv: [8],
    causal: [false],
    dtype: "bf16",
    directions: ["fwd"],
    kind: "decode",
    kvcache: { at: 32 * k, pageSizes: [16, 64, 256], append: 1, seqlensQ: [2, 4, 8, 16], headsKv: [1], hdims: [64, 256] },
    gpuSized: true,
  },
  quick: {
    seqlens: [128, 256],
    hdims: [64],
    batches: [2],
    tokens: 0,
    heads: [4],
    hidden: 0,
    headsKv: [2],
    causal: [false, true],
    dtype: "auto",
    directions: ["fwd", "bwd"],
    kind: "prefill",
    gpuSized: false,
  },
};

/** Flags that override a preset; each is a list as typed by the user (already split, not yet checked). */
export interface SweepOverrides {
  seqlen?: string;
  seqlenQ?: string;
  hdim?: string;
  batch?: string;
  heads?: string;
  headsKv?: string;
  causal?: string;
  dtype?: string;
  direction?: string;
  deterministic?: boolean;
}

// Limits that keep a typo from asking for an absurd sweep (head_dim: the semantics' range); the native library
// validates the rest.
const limits = { seqlen: 1 << 20, hdim: MAX_HEAD_DIM, batch: 1 << 16, heads: 1024, cases: 4096 };

function usage(message: string): never {
  throw new FlashAttnError("USAGE", message);
}

/** "512,1k,16k" -> [512, 1024, 16384]; every entry a whole number in 1..max. */
export function parseSizeList(flag: string, text: string, max: number): number[] {
  const items = text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (items.length === 0) usage(`--${flag} needs at least one value`);
  return items.map((item) => {
    const m = /^(\d+)([kK]?)$/.exec(item);
    if (!m) usage(`--${flag}: "${item}" is not a whole number (suffix k = ×1024 allowed)`);
    const value = Number(m[1]) * (m[2] ? 1024 : 1);
    if (!Number.isSafeInteger(value) || value < 1 || value > max) usage(`--${flag}: ${item} is outside 1..${max}`);
    return value;
  });
}

export function parseCausal(text: string): boolean[] {
  const choices: Record<string, boolean[]> = {
    on: [true],
    true: [true],
    yes: [true],
    off: [false],
    false: [false],
    no: [false],
    both: [false, true],
  };
  const v = choices[text.trim().toLowerCase()];
  if (!v) usage(`--causal takes on, off or both, not "${text}"`);
  return v;
}

function parseDirections(text: string): Direction[] {
  const list = text.split(",").map((s) => s.trim());
  for (const d of list) {
    if (!(directions as string[]).includes(d)) {
      usage(`--direction takes fwd, bwd or fwd+bwd (comma list), not "${d}"`);
    }
  }
  return [...new Set(list as Direction[])];
}

function parseDtype(text: string): DType {
  if ((dtypeNames as readonly string[]).includes(text)) return text as DType;
  usage(`--dtype takes fp16, bf16, fp32, fp8_e4m3 or fp8_e5m2, not "${text}"`);
}

/** The preset with the user's flags applied. */
export function applyOverrides(base: SweepSpec, o: SweepOverrides): SweepSpec {
  const spec: SweepSpec = structuredClone(base);
  if (o.seqlen !== undefined) spec.seqlens = parseSizeList("seqlen", o.seqlen, limits.seqlen);
  if (o.seqlenQ !== undefined) spec.seqlensQ = parseSizeList("seqlen-q", o.seqlenQ, limits.seqlen);
  if (o.hdim !== undefined) spec.hdims = parseSizeList("hdim", o.hdim, limits.hdim);
  if (o.batch !== undefined) spec.batches = parseSizeList("batch", o.batch, limits.batch);
  if (o.heads !== undefined) spec.heads = parseSizeList("heads", o.heads, limits.heads);
  if (o.headsKv !== undefined) spec.headsKv = parseSizeList("heads-kv", o.headsKv, limits.heads);
  if (o.causal !== undefined) spec.causal = parseCausal(o.causal);
  if (o.dtype !== undefined) spec.dtype = parseDtype(o.dtype);
  if (o.direction !== undefined) spec.directions = parseDirections(o.direction);
  if (o.deterministic) spec.deterministic = true;
  return spec;
}

export function caseId(c: Omit<BenchCase, "id">): string {
  const gqa = c.headsKv === c.headsQ ? `h${c.headsQ}` : `h${c.headsQ}/${c.headsKv}`;
  const seq = c.seqlenQ === c.seqlenK ? `s${c.seqlenK}` : `q${c.seqlenQ} kv${c.seqlenK}`;
  const features = [
    c.window ? ` window(${c.window[0]},${c.window[1]})` : "",
    c.softcap ? ` softcap${c.softcap}` : "",
    c.alibi ? " alibi" : "",
    c.deterministic ? " deterministic" : "",
  ].join("");
  return `b${c.batch} ${seq} ${gqa} d${c.headDim}${c.causal ? " causal" : ""}${features} ${c.dtype} ${c.direction}${
    c.kvcache ? ` ${layoutText(c.kvcache)}` : ""
  }`;
}

/**
 * The problem a baseline times for `c`: the case itself, or for a KV-cache case the contiguous equivalent (the same
 * q against the attended keys in one contiguous K and V; an append's rows are among them), under the case's id.
 */
export function baselineProblem(c: BenchCase): BenchCase {
  if (!c.kvcache) return c;
  const { kvcache: _, ...plain } = c;
  return plain;
}

/** What a baseline's row of a KV-cache case timed, in words (the table and JSON say it); undefined for plain cases. */
export function baselineEquivalent(c: BenchCase): string | undefined {
  if (!c.kvcache) return undefined;
  return c.kvcache.append > 0 || c.kvcache.rotary
    ? "plain contiguous decode (no baseline appends in place or applies rotary)"
    : "contiguous equivalent";
}

/** "kvcache", "kvcache paged16", "kvcache append1+rotary": the entry and its cache, as ids and titles show it. */
export function layoutText(l: KvCacheLayout): string {
  const parts = [l.pageSize ? `paged${l.pageSize}` : "", l.append ? `append${l.append}` : "", l.rotary ? "rotary" : ""];
  const detail = parts.filter(Boolean).join("+");
  return detail ? `kvcache ${detail}` : "kvcache";
}

/** The default lengths of bench --model: 4k and 16k, within what the model takes. */
export const MODEL_SEQLENS = [4 * k, 16 * k];

/**
 * The sweep of a model's own attention (doctor/model/kernels.ts modelProblems): its heads, KV heads, head dim,
 * causal, window, softcap and ALiBi at batch 1, over `seqlens` (those above the model's maximum dropped, the
 * maximum itself then taken), forward by default, timed as the fa preset times.
 */
export function modelSweep(p: ModelProblem, seqlens: number[], maxPositions?: number): SweepSpec {
  const within = maxPositions ? seqlens.filter((s) => s <= maxPositions) : seqlens;
  const features: CaseFeatures = {};
  if (p.window[0] >= 0 || p.window[1] >= 0) features.window = p.window;
  if (p.softcap) features.softcap = p.softcap;
  if (p.alibi) features.alibi = true;
  return {
    features,
    seqlens: within.length ? within : [maxPositions!],
    hdims: [p.headDim],
    batches: [1],
    tokens: 0,
    heads: [p.headsQ],
    hidden: 0,
    headsKv: [p.headsKv],
    causal: [p.causal],
    dtype: p.dtype,
    directions: ["fwd"],
    kind: "prefill",
    gpuSized: true,
  };
}

/**
 * Every case of a sweep, grouped as the chart draws them: direction, then head_dim, then causal, then seqlen
 * ascending (so a run that stops early has finished whole panels, and per-implementation speed learnt on small
 * shapes predicts the large ones). A decode sweep with KV-cache cases puts each forward case's KV-cache twin right
 * after it, then the variants (kvcacheVariants).
 */
export function expandSweep(spec: SweepSpec, ctx: { gpu: boolean }): BenchCase[] {
  const dtype: DType = spec.dtype === "auto" ? (ctx.gpu ? "bf16" : "fp32") : spec.dtype;
  const cases: BenchCase[] = [];
  const seen = new Set<string>();
  const add = (c: Omit<BenchCase, "id">) => {
    if (c.headsQ % c.headsKv !== 0) usage(`--heads ${c.headsQ} is not a multiple of --heads-kv ${c.headsKv}`);
    const id = caseId(c);
    if (seen.has(id)) return;
    seen.add(id);
    cases.push({ id, ...c });
    if (cases.length > limits.cases) usage(`the sweep has more than ${limits.cases} cases; narrow the flags`);
  };
  // The KV-cache entry is forward only; a contiguous cache without append is the plain problem through it. An fp8
  // forward (there is no fp8 backward) is followed by its bf16 twin: our bf16 forward on the same shape, the
  // baseline the fp8 figures are read against (results.ts entryComparisons).
  const twin = (c: Omit<BenchCase, "id">) => {
    if (spec.kvcache && c.direction === "fwd") add({ ...c, kvcache: { append: 0, rotary: false } });
    if (isFp8(c.dtype) && c.direction === "fwd" && !c.kvcache) add({ ...c, dtype: "bf16" });
  };
  for (const direction of spec.directions) {
    for (const headDim of spec.hdims) {
      for (const causal of spec.causal) {
        for (const seqlenK of [...spec.seqlens].sort((a, b) => a - b)) {
          const batches = spec.batches ?? [Math.max(1, Math.floor(spec.tokens / seqlenK))];
          const headsList = spec.heads ?? [Math.floor(spec.hidden / headDim)];
          for (const batch of batches) {
            for (const headsQ of headsList) {
              if (headsQ < 1) usage(`hidden ${spec.hidden} / head_dim ${headDim} leaves no heads; pass --heads`);
              for (const headsKv of spec.headsKv ?? [headsQ]) {
                for (const seqlenQ of spec.seqlensQ ?? [seqlenK]) {
                  const c = { ...spec.features, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, dtype, direction,
                    kind: spec.kind, ...(spec.deterministic && direction !== "fwd" ? { deterministic: true } : {}) };
                  add(c);
                  twin(c);
                }
              }
            }
          }
        }
      }
    }
  }
  if (spec.kvcache && spec.directions.includes("fwd")) {
    for (const variant of kvcacheVariants(spec, spec.kvcache, dtype)) {
      add(variant);
      if (!variant.kvcache) twin(variant);
    }
  }
  return cases;
}

/**
 * The KV-cache variants at one KV length (the sweep's nearest to kv.at), for each batch, on the sweep's first shape:
 * paged caches and the append with rotary (KV-cache entry only: they compare with the contiguous KV-cache twin), then
 * speculative decoding, other KV head counts and head dims (forward cases; expandSweep adds their KV-cache twins).
 */
function kvcacheVariants(spec: SweepSpec, kv: KvCacheSweep, dtype: DType): Omit<BenchCase, "id">[] {
  const seqlenK = spec.seqlens.reduce((best, s) => (Math.abs(s - kv.at) < Math.abs(best - kv.at) ? s : best));
  const headDim = spec.hdims[0];
  const headsQ = spec.heads?.[0] ?? Math.floor(spec.hidden / headDim);
  const base = {
    seqlenQ: spec.seqlensQ?.[0] ?? 1, seqlenK, headsQ, headsKv: spec.headsKv?.[0] ?? headsQ, headDim,
    causal: spec.causal[0], dtype, direction: "fwd" as const, kind: spec.kind,
  };
  const batches = spec.batches ?? [1];
  const each = (make: (batch: number) => Omit<BenchCase, "id">) => batches.map(make);
  return [
    ...kv.pageSizes.flatMap((pageSize) => each((batch) => ({ ...base, batch, kvcache: { pageSize, append: 0, rotary: false } }))),
    ...(kv.append > 0 ? each((batch) => ({ ...base, batch, kvcache: { append: kv.append, rotary: true } })) : []),
    ...kv.seqlensQ.flatMap((seqlenQ) => each((batch) => ({ ...base, batch, seqlenQ, causal: true }))),
    ...kv.headsKv.filter((h) => headsQ % h === 0).flatMap((headsKv) => each((batch) => ({ ...base, batch, headsKv }))),
    ...kv.hdims.flatMap((d) => each((batch) => ({ ...base, batch, headDim: d }))),
  ];
}

/** Total forward-equivalent work of a sweep, for progress and ETA weighting. */
export const sweepFlops = (cases: BenchCase[]) => cases.reduce((sum, c) => sum + attentionFlops(c, c.direction), 0);
