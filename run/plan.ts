// What one `flashattn run` does, as data: where the inputs come from, the semantics, the backend wish, the outputs.
// commands/run.ts builds a RunPlan from the flags (no I/O); run/execute.ts carries it out.
import { FlashAttnError } from "../lib/errors.ts";
import type { BackendChoice } from "../lib/select.ts";
import type { DType, ProblemShape } from "../lib/vocabulary.ts";

export type InputPlan =
  | { kind: "npy"; q: string; k: string; v: string }
  /** names: explicit q/k/v names; packed: an explicit qkv name; neither: q/k/v if present, else qkv. */
  | { kind: "safetensors"; path: string; names?: { q: string; k: string; v: string }; packed?: string }
  | { kind: "random"; shape: ProblemShape; seed: number }
  /** A random KV-cache step (run/kvcache.ts): shape.seqlenK is the tokens already cached per sequence. */
  | { kind: "decode"; shape: ProblemShape; seed: number; pageSize?: number; append: number; rotary: boolean };

export interface OutputPlan {
  path: string;
  format: "npy" | "safetensors";
  /** LSE: not written, a separate .npy path, or (safetensors) a second tensor in the same file. */
  lse: { kind: "none" } | { kind: "npy"; path: string } | { kind: "same-file" };
}

export interface RunPlan {
  input: InputPlan;
  /** Requested dtype: for files, a conversion (or how to read uint16 .npy data); "auto" = the files' own dtype,
   *  for random problems fp32 on the CPU and bf16 on a GPU. */
  dtype: DType | "auto";
  causal: boolean;
  window?: [number, number];
  softcap?: number;
  scale?: number;
  alibi: { kind: "none" } | { kind: "standard" } | { kind: "file"; path: string };
  /** fp8 descale factors: a .safetensors or .json file of q_descale, k_descale, v_descale (run/inputs.ts). */
  descale?: string;
  /** The output dtype of an fp8 run (fp16 or bf16; bf16 when absent). */
  outDtype?: "fp16" | "bf16";
  /** KV-cache runs with rotary tables: GPT-J pairs instead of GPT-NeoX halves. */
  rotaryInterleaved: boolean;
  backend: BackendChoice;
  libPath?: string;
  output?: OutputPlan;
  check: boolean;
  /** True when no problem was described: the embedded default problem runs, checked. */
  isDefault: boolean;
  /** --devices: context-parallel (ring) attention, one rank per listed device (run/ring.ts). */
  devices?: number[];
}

/** The embedded default problem: one causal sequence of 1024 tokens, 8 heads of dimension 64. */
export const defaultShape: ProblemShape = {
  batch: 1,
  seqlenQ: 1024,
  seqlenK: 1024,
  headsQ: 8,
  headsKv: 8,
  headDim: 64,
};

/** Random inputs are generated on the host: at most 2^28 elements (1 GiB as fp32) per tensor. */
export const MAX_RANDOM_ELEMENTS = 2 ** 28;
/** The fp64 reference costs about 2·b·hq·sq·sk·d multiply-adds; beyond 2^35 (tens of seconds) --check is refused. */
export const MAX_CHECK_WORK = 2 ** 35;

/** The host's limits of a run (the problem rules themselves are lib/problem.ts checkShape): random size, check cost. */
export function checkRunLimits(shape: ProblemShape, options: { check: boolean; random: boolean }): void {
  const { batch, seqlenQ, seqlenK, headsQ, headsKv, headDim } = shape;
  const largest = Math.max(batch * seqlenQ * headsQ, batch * seqlenK * headsKv) * headDim;
  if (options.random && largest > MAX_RANDOM_ELEMENTS) {
    throw new FlashAttnError(
      "USAGE",
      `the problem needs ${largest.toExponential(2)} elements per tensor; run generates at most 2^28 on the host`,
      "use a smaller shape (flashattn bench measures large problems on the device)",
    );
  }
  if (options.check && 2 * batch * headsQ * seqlenQ * seqlenK * headDim > MAX_CHECK_WORK) {
    throw new FlashAttnError(
      "USAGE",
      `--check on this problem would take the fp64 reference too long (more than 2^35 multiply-adds)`,
      "drop --check, or check a smaller shape",
    );
  }
}

/** The file paths a plan reads: outputs must not replace any of them. */
export function planInputs(plan: RunPlan): string[] {
  const paths: string[] = [];
  if (plan.input.kind === "npy") paths.push(plan.input.q, plan.input.k, plan.input.v);
  if (plan.input.kind === "safetensors") paths.push(plan.input.path);
  if (plan.alibi.kind === "file") paths.push(plan.alibi.path);
  if (plan.descale !== undefined) paths.push(plan.descale);
  return paths;
}
