// `flashattn run`: attention on real inputs (.npy q/k/v, a .safetensors file with q/k/v or a packed qkv tensor) or on
// a described random problem; optionally checked against the fp64 reference and written out atomically.
//
// This file is the command: its flags and help, parseRunOptions() (raw flag strings to a RunPlan, no I/O, every bad
// flag one USAGE sentence, tested directly), and the report. The run wing (run/) carries the plan out.
import process from "node:process";
import type { Command } from "@commander-js/extra-typings";
import { FlashAttnError } from "../lib/errors.ts";
import { MAX_DEVICE_ORDINAL } from "../lib/devices.ts";
import { printable } from "../lib/terminal.ts";
import { abiFault, checkShape } from "../lib/problem.ts";
import type { BackendChoice, BackendDecision } from "../lib/select.ts";
import { backendNames, type DType, isFp8, type ProblemShape } from "../lib/vocabulary.ts";
import { executeRun, type CheckResult, type RunResult } from "../run/execute.ts";
import { checkRunLimits, defaultShape, type InputPlan, type OutputPlan, type RunPlan } from "../run/plan.ts";
import packageJson from "../package.json" with { type: "json" };
import { action, EXIT_FAILURE, paint, printJson, progress, useColor } from "./_output.ts";

// ---- the plan ------------------------------------------------------------------------------------------------------

/** The raw option values commander hands over (all strings or flags; parseRunOptions gives them meaning). */
export interface RawRunOptions {
  q?: string;
  k?: string;
  v?: string;
  input?: string;
  qName?: string;
  kName?: string;
  vName?: string;
  qkvName?: string;
  shape?: string;
  batch?: string;
  seqlen?: string;
  seqlenQ?: string;
  seqlenK?: string;
  heads?: string;
  headsQ?: string;
  headsKv?: string;
  headDim?: string;
  dtype?: string;
  seed?: string;
  causal?: boolean;
  window?: string;
  softcap?: string;
  scale?: string;
  alibi?: boolean;
  alibiSlopes?: string;
  descale?: string;
  outDtype?: string;
  backend?: string;
  lib?: string;
  out?: string;
  lse?: boolean | string;
  check?: boolean;
  decode?: boolean;
  cacheLen?: string;
  pageSize?: string;
  append?: string;
  rotary?: boolean;
  rotaryInterleaved?: boolean;
  devices?: string;
}

const usage = (message: string, fix?: string) => new FlashAttnError("USAGE", message, fix);

const dtypeAliases: Record<string, DType> = {
  fp32: "fp32",
  f32: "fp32",
  float32: "fp32",
  float: "fp32",
  fp16: "fp16",
  f16: "fp16",
  float16: "fp16",
  half: "fp16",
  bf16: "bf16",
  bfloat16: "bf16",
  fp8_e4m3: "fp8_e4m3",
  e4m3: "fp8_e4m3",
  float8_e4m3fn: "fp8_e4m3",
  fp8_e5m2: "fp8_e5m2",
  e5m2: "fp8_e5m2",
  float8_e5m2: "fp8_e5m2",
};

export function parseDtype(text: string): DType {
  const dtype = dtypeAliases[text.trim().toLowerCase()];
  if (!dtype) throw usage(`unknown dtype '${text}' (choose fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2)`, "e.g. --dtype bf16");
  return dtype;
}

/** A whole number within [min, max], named `flag` in the error. */
function parseInteger(flag: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const trimmed = text.trim();
  const value = /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `a whole number ≥ ${min}` : `a whole number in ${min}..${max}`;
    throw usage(`${flag} must be ${range}, got '${text}'`);
  }
  return value;
}

/** A float flag: finite, `check` holds, and it reaches the library's float32 field as itself (not 0, not inf). */
function parseNumber(flag: string, text: string, check: (x: number) => boolean, want: string): number {
  const value = text.trim() === "" ? NaN : Number(text);
  if (!Number.isFinite(value) || !check(value)) throw usage(`${flag} must be ${want}, got '${text}'`);
  const fault = abiFault("float32", value);
  if (fault) throw usage(`${flag} ${text.trim()} ${fault}`, "the library computes in float32: about 1.2e-38 to 3.4e38");
  return value;
}

/** "L,R" with -1 = unbounded on that side. */
export function parseWindow(text: string): [number, number] {
  const parts = text.split(",");
  if (parts.length !== 2) {
    throw usage(`--window takes LEFT,RIGHT (-1 = unbounded), got '${text}'`, "e.g. --window 256,0");
  }
  const [left, right] = parts.map((p) => {
    const bound = parseInteger("--window bounds", p, -1);
    const fault = abiFault("int32", bound);
    if (fault) throw usage(`--window bound ${p.trim()} ${fault}`, "-1 leaves a side unbounded");
    return bound;
  });
  if (left === -1 && right === -1) {
    throw usage("--window -1,-1 is no window at all", "drop --window, or bound one side");
  }
  return [left, right];
}

/** --shape b,sq,sk,hq,hkv,d (or b,s,h,d with seqlen_q = seqlen_k and heads_q = heads_kv). */
export function parseShape(text: string): ProblemShape {
  const parts = text.split(",");
  if (parts.length !== 6 && parts.length !== 4) {
    throw usage(
      `--shape takes batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim (or batch,seqlen,heads,head_dim), got '${text}'`,
      "e.g. --shape 2,1024,1024,16,4,128",
    );
  }
  const n = parts.map((p) => parseInteger("--shape entries", p, 1));
  return parts.length === 6
    ? { batch: n[0], seqlenQ: n[1], seqlenK: n[2], headsQ: n[3], headsKv: n[4], headDim: n[5] }
    : { batch: n[0], seqlenQ: n[1], seqlenK: n[1], headsQ: n[2], headsKv: n[2], headDim: n[3] };
}

function inputPath(flag: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value.trim() === "") throw usage(`${flag} needs a file path`);
  return value;
}

/** --decode: a random KV-cache step; the size flags give q and the heads, --cache-len the tokens already cached. */
function parseDecode(raw: RawRunOptions): InputPlan | undefined {
  const decodeFlags = ([["cacheLen", "--cache-len"], ["pageSize", "--page-size"], ["append", "--append"], ["rotary", "--rotary"]] as const)
    .filter(([f]) => raw[f] !== undefined && raw[f] !== false);
  if (!raw.decode) {
    if (decodeFlags.length) throw usage(`${decodeFlags[0][1]} describes a random KV-cache step and needs --decode`);
    return undefined;
  }
  const other = [raw.q ?? raw.k ?? raw.v, raw.input, raw.shape, raw.seqlen, raw.seqlenK].some((x) => x !== undefined);
  if (other) {
    throw usage("--decode makes a random KV-cache step: it takes --batch, --seqlen-q, --heads*, --head-dim and --cache-len, not files, --shape, --seqlen or --seqlen-k",
      "e.g. --decode --cache-len 4096 --page-size 16 --append 1 --rotary");
  }
  if (raw.cacheLen === undefined) throw usage("--decode needs --cache-len N (tokens already in each sequence's cache)");
  const shape = { ...shapeFromFlags({ ...raw, seqlenQ: raw.seqlenQ ?? "1" }), seqlenK: parseInteger("--cache-len", raw.cacheLen, 0) };
  return {
    kind: "decode", shape, seed: 0, append: raw.append === undefined ? 0 : parseInteger("--append", raw.append, 0),
    pageSize: raw.pageSize === undefined ? undefined : parseInteger("--page-size", raw.pageSize, 1), rotary: raw.rotary === true,
  };
}

function parseInputs(raw: RawRunOptions): { input?: InputPlan; described: boolean } {
  const decode = parseDecode(raw);
  if (decode) return { input: decode, described: true };
  const npyFlags = { q: inputPath("--q", raw.q), k: inputPath("--k", raw.k), v: inputPath("--v", raw.v) };
  const anyNpy = Object.values(npyFlags).some((x) => x !== undefined);
  const sizeFlags = ["batch", "seqlen", "seqlenQ", "seqlenK", "heads", "headsQ", "headsKv", "headDim"] as const;
  const givenSizes = sizeFlags.filter((f) => raw[f] !== undefined);
  const nameFlags =
    ([["qName", "--q-name"], ["kName", "--k-name"], ["vName", "--v-name"], ["qkvName", "--qkv-name"]] as const)
      .filter(([f]) => raw[f] !== undefined);
  const sources = [
    anyNpy && "--q/--k/--v",
    raw.input !== undefined && "--input",
    (raw.shape !== undefined || givenSizes.length > 0) && "a shape",
  ]
    .filter(Boolean);
  if (sources.length > 1) {
    throw usage(
      `choose one input: ${sources.join(" or ")}, not both`,
      "files (--q/--k/--v or --input) or a random problem (--shape)",
    );
  }
  if (nameFlags.length && raw.input === undefined) {
    throw usage(`${nameFlags[0][1]} names a tensor of a .safetensors --input, which is missing`);
  }

  if (anyNpy) {
    const missing = (["q", "k", "v"] as const).filter((n) => npyFlags[n] === undefined);
    if (missing.length) throw usage(`--q, --k and --v go together; --${missing.join(", --")} missing`);
    for (const [flag, path] of Object.entries(npyFlags)) {
      if (!path!.toLowerCase().endsWith(".npy")) {
        throw usage(
          `--${flag} ${path} is not a .npy file`,
          "pass .npy files to --q/--k/--v, or a .safetensors file to --input",
        );
      }
    }
    return { input: { kind: "npy", q: npyFlags.q!, k: npyFlags.k!, v: npyFlags.v! }, described: true };
  }
  if (raw.input !== undefined) {
    const path = inputPath("--input", raw.input)!;
    if (!path.toLowerCase().endsWith(".safetensors")) {
      throw usage(`--input ${path} is not a .safetensors file`, "pass .npy files with --q/--k/--v");
    }
    const named = [raw.qName, raw.kName, raw.vName].filter((x) => x !== undefined).length;
    if (raw.qkvName !== undefined && named) {
      throw usage("--qkv-name (one packed tensor) and --q-name/--k-name/--v-name exclude each other");
    }
    const names = named ? { q: raw.qName ?? "q", k: raw.kName ?? "k", v: raw.vName ?? "v" } : undefined;
    return { input: { kind: "safetensors", path, names, packed: raw.qkvName }, described: true };
  }
  if (raw.shape !== undefined || givenSizes.length) {
    if (raw.shape !== undefined && givenSizes.length) {
      throw usage(
        `--shape and --${givenSizes[0].replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())} exclude each other`,
        "give the whole shape with --shape, or separate flags",
      );
    }
    return {
      input: { kind: "random", shape: raw.shape !== undefined ? parseShape(raw.shape) : shapeFromFlags(raw), seed: 0 },
      described: true,
    };
  }
  return { described: false };
}

function shapeFromFlags(raw: RawRunOptions): ProblemShape {
  const flag = (name: string, value: string | undefined, fallback: number) =>
    value === undefined ? fallback : parseInteger(name, value, 1);
  if (raw.seqlen !== undefined && (raw.seqlenQ !== undefined || raw.seqlenK !== undefined)) {
    throw usage("--seqlen sets both lengths; do not combine it with --seqlen-q/--seqlen-k");
  }
  if (raw.heads !== undefined && (raw.headsQ !== undefined || raw.headsKv !== undefined)) {
    throw usage("--heads sets both head counts; do not combine it with --heads-q/--heads-kv");
  }
  const seqlen = flag("--seqlen", raw.seqlen, defaultShape.seqlenQ);
  const heads = flag("--heads", raw.heads, defaultShape.headsQ);
  const headsQ = flag("--heads-q", raw.headsQ, heads);
  return {
    batch: flag("--batch", raw.batch, defaultShape.batch),
    seqlenQ: flag("--seqlen-q", raw.seqlenQ, seqlen),
    seqlenK: flag("--seqlen-k", raw.seqlenK, seqlen),
    headsQ,
    // Only --heads-q given: MHA with that many heads.
    headsKv: flag("--heads-kv", raw.headsKv, raw.heads === undefined ? headsQ : heads),
    headDim: flag("--head-dim", raw.headDim, defaultShape.headDim),
  };
}

function parseOutput(raw: RawRunOptions): OutputPlan | undefined {
  if (raw.out === undefined) {
    if (raw.lse !== undefined) throw usage("--lse writes the LSE next to the output and needs --out");
    return undefined;
  }
  const path = raw.out;
  const lower = path.toLowerCase();
  const format = lower.endsWith(".npy") ? "npy" : lower.endsWith(".safetensors") ? "safetensors" : undefined;
  if (!format) throw usage(`--out ${path} must end in .npy or .safetensors`);
  if (raw.lse === undefined || raw.lse === false) return { path, format, lse: { kind: "none" } };
  if (format === "safetensors") {
    if (typeof raw.lse === "string") {
      throw usage("with a .safetensors --out the LSE is a second tensor in the same file; give --lse without a path");
    }
    return { path, format, lse: { kind: "same-file" } };
  }
  const lsePath = typeof raw.lse === "string" ? raw.lse : path.replace(/\.npy$/i, ".lse.npy");
  if (!lsePath.toLowerCase().endsWith(".npy")) throw usage(`--lse ${lsePath} must end in .npy`);
  if (lsePath === path) throw usage("--lse and --out name the same file");
  return { path, format, lse: { kind: "npy", path: lsePath } };
}

/** Raw flags to a plan; throws FlashAttnError("USAGE") with one sentence for the first bad flag. No I/O. */
export function parseRunOptions(raw: RawRunOptions): RunPlan {
  const { input, described } = parseInputs(raw);
  const dtype = raw.dtype === undefined ? "auto" : parseDtype(raw.dtype);
  const seed = raw.seed === undefined ? 0 : parseInteger("--seed", raw.seed, 0, 2 ** 32 - 1);
  if (raw.seed !== undefined && input && input.kind !== "random" && input.kind !== "decode") {
    throw usage("--seed only applies to random problems (--shape), not to files");
  }
  const window = raw.window === undefined ? undefined : parseWindow(raw.window);
  const softcap = raw.softcap === undefined
    ? undefined
    : parseNumber("--softcap", raw.softcap, (x) => x >= 0, "a finite number ≥ 0 (0 = off)");
  const scale = raw.scale === undefined
    ? undefined
    : parseNumber("--scale", raw.scale, (x) => x > 0, "a finite number > 0");
  if (raw.alibi && raw.alibiSlopes !== undefined) {
    throw usage("--alibi (standard slopes) and --alibi-slopes FILE exclude each other");
  }
  const alibi: RunPlan["alibi"] = raw.alibiSlopes !== undefined
    ? { kind: "file", path: inputPath("--alibi-slopes", raw.alibiSlopes)! }
    : raw.alibi
    ? { kind: "standard" }
    : { kind: "none" };
  const descale = raw.descale === undefined ? undefined : inputPath("--descale", raw.descale)!;
  if (descale !== undefined && (input?.kind === "decode" || (dtype !== "auto" && !isFp8(dtype)))) {
    throw usage("--descale gives the descale factors of fp8 inputs", "use it with fp8 files (or --dtype fp8_e4m3)");
  }
  if (descale !== undefined && (!input || input.kind === "random")) {
    throw usage("--descale applies to fp8 input files: a random fp8 problem is quantised with its own per-tensor scales");
  }
  let outDtype: RunPlan["outDtype"];
  if (raw.outDtype !== undefined) {
    const named = raw.outDtype.trim().toLowerCase();
    if (named !== "fp16" && named !== "bf16") throw usage(`--out-dtype takes fp16 or bf16, got '${raw.outDtype}'`);
    // A random decode step is fp8 only when --dtype says so.
    const fp8Decode = dtype !== "auto" && isFp8(dtype);
    if ((input?.kind === "decode" && !fp8Decode) || (dtype !== "auto" && !isFp8(dtype))) {
      throw usage("--out-dtype sets the output dtype of fp8 inputs (other inputs write their own dtype)",
        "use it with --dtype fp8_e4m3 / fp8_e5m2 or fp8 files");
    }
    outDtype = named;
  }
  if (input?.kind === "decode" && input.rotary && dtype !== "auto" && isFp8(dtype)) {
    throw usage(`--rotary does not apply to ${dtype} caches: rotary embedding is applied before quantising, so fp8 q and k_new come rotated`,
      "drop --rotary (or run the step in bf16)");
  }
  const backend = raw.backend === undefined ? "auto" : raw.backend.trim().toLowerCase();
  if (backend !== "auto" && !(backendNames as readonly string[]).includes(backend)) {
    throw usage(`unknown backend '${raw.backend}' (choose auto, cpu, cuda or hip)`);
  }
  if (raw.lib !== undefined && raw.lib.trim() === "") {
    throw usage("--lib needs the path of a libflashattn_<backend>.so");
  }

  // Nothing describes a problem: the embedded default runs, causal and checked, unless semantics were given.
  const semanticsGiven = raw.causal || window || softcap !== undefined || scale !== undefined ||
    alibi.kind !== "none" ||
    raw.dtype !== undefined || raw.seed !== undefined;
  const isDefault = !described && !semanticsGiven;
  const plan: RunPlan = {
    input: input ?? { kind: "random", shape: { ...defaultShape }, seed },
    dtype,
    causal: isDefault ? true : raw.causal === true,
    window,
    softcap,
    scale,
    alibi,
    descale,
    outDtype,
    backend: backend as BackendChoice,
    libPath: raw.lib,
    output: parseOutput(raw),
    check: raw.check === true || isDefault,
    isDefault,
    rotaryInterleaved: raw.rotaryInterleaved === true,
  };
  if (plan.rotaryInterleaved && !(plan.input.kind === "safetensors" || (plan.input.kind === "decode" && plan.input.rotary))) {
    throw usage("--rotary-interleaved applies to rotary tables: a KV-cache --input that holds them, or --decode --rotary");
  }
  if (raw.devices !== undefined) plan.devices = parseDevices(raw.devices, plan);
  if (plan.input.kind === "decode") {
    plan.input.seed = seed;
    if (plan.output && plan.output.format !== "safetensors") {
      throw usage("a KV-cache run writes o, lse and the updated caches to one .safetensors --out", "e.g. --out step_out.safetensors");
    }
    const { shape, append } = plan.input;
    checkShape(shape, "USAGE");
    checkRunLimits({ ...shape, seqlenK: shape.seqlenK + append }, { check: plan.check, random: true });
  }
  if (plan.input.kind === "random") {
    plan.input.seed = seed;
    checkShape(plan.input.shape, "USAGE");
    checkRunLimits(plan.input.shape, { check: plan.check, random: true });
  }
  return plan;
}

/**
 * --devices 0,1,…: the ranks of a context-parallel run. A split by rows keeps only the semantics that do not depend on
 * where a row sits (causal is handled per block): a window, ALiBi and KV-cache steps are refused here.
 */
function parseDevices(text: string, plan: RunPlan): number[] {
  // Ranks, not a set of GPUs: a device may repeat (the CPU backend's in-process ranks are all device 0).
  const devices = text.split(",").map((d) => parseInteger("--devices entries", d, 0, MAX_DEVICE_ORDINAL));
  const refused = [plan.window && "--window", plan.alibi.kind !== "none" && "--alibi", plan.input.kind === "decode" && "--decode"]
    .find(Boolean);
  if (refused) throw usage(`--devices splits one sequence over the devices (context parallelism), which ${refused} does not allow`);
  if (plan.input.kind === "random" && plan.input.shape.seqlenQ !== plan.input.shape.seqlenK) {
    throw usage("--devices splits one sequence: seqlen_q and seqlen_k must be equal", "use --seqlen N");
  }
  return devices;
}

// ---- presenting ----------------------------------------------------------------------------------------------------

function formatError(x: number): string {
  return Number.isFinite(x) ? x.toExponential(2) : String(x);
}

function checkFailure(check: CheckResult): FlashAttnError {
  return new FlashAttnError(
    "CHECK_FAILED",
    `check failed: relative error ${formatError(check.relativeError)} exceeds the limit ${formatError(check.limit)}`,
    "run `flashattn doctor`, and report it with the command line if the library is ours",
  );
}

/** The human report (stdout). */
export function renderRun(r: RunResult, color: boolean): string {
  const label = (text: string) => paint("bold", text.padEnd(8), color);
  const s = r.shape;
  const heads = s.headsQ === s.headsKv ? `heads ${s.headsQ}` : `heads ${s.headsQ}/${s.headsKv} (GQA)`;
  const features = [
    r.causal && "causal",
    r.window && `window (${r.window.join(", ")})`,
    r.softcap > 0 && `softcap ${r.softcap}`,
    r.alibi !== "none" && "alibi",
  ].filter(Boolean);
  const lines = [
    `${label("backend")}${r.backend}  ${paint("dim", "kernel", color)} ${printable(r.kernel)}`,
    `${label("shape")}batch ${s.batch}, seqlen ${s.seqlenQ}${
      s.seqlenK !== s.seqlenQ ? `×${s.seqlenK}` : ""
    }, ${heads}, head_dim ${s.headDim}, ${r.dtype}${features.length ? ", " + features.join(", ") : ""}`,
    `${label("time")}${r.ms.toFixed(2)} ms  ${r.gflops.toFixed(1)} GFLOP/s ${
      paint("dim", "(one call; `flashattn bench` for kernel timings)", color)
    }`,
  ];
  if (r.kvcache) {
    const kv = r.kvcache;
    const cached = Math.min(...kv.cached) === Math.max(...kv.cached) ? `${kv.cached[0]}` : `${Math.min(...kv.cached)}..${Math.max(...kv.cached)}`;
    lines.splice(2, 0, `${label("cache")}${cached} cached + ${kv.appended} appended, ${
      kv.pageSize === null ? "contiguous" : `pages of ${kv.pageSize}`
    }${kv.rotary === "none" ? "" : `, rotary ${kv.rotary}`}`);
  }
  if (r.check) {
    const verdict = r.check.pass ? paint("green", "PASS", color) : paint("red", "FAIL", color);
    const naive = r.check.naiveError === undefined ? "" : `, naive ${r.dtype} ${formatError(r.check.naiveError)}`;
    const bf16 = r.check.bf16Error === undefined ? "" : `; vs bf16 ${formatError(r.check.bf16Error)}`;
    lines.push(
      `${label("check")}relative error ${formatError(r.check.relativeError)} (limit ${
        formatError(r.check.limit)
      }${naive}; lse ${formatError(r.check.lseError)}${bf16})  ${verdict}`,
    );
  }
  if (r.ring) lines.splice(1, 0, `${label("ring")}${r.ring.ranks} rank${r.ring.ranks === 1 ? " (one device: no context parallelism)" : "s"} over ${printable(r.ring.transport)}`);
  if (r.outputs.length) lines.push(`${label("wrote")}${r.outputs.map(printable).join(", ")}`);
  if (r.defaultProblem) {
    lines.push(paint("dim", "default problem; see `flashattn run --help` for files, shapes and options", color));
  }
  return lines.join("\n") + "\n";
}

/** One line per backend: its verdict and the first reason (for --verbose, on stderr). */
export function renderDecisions(decisions: BackendDecision[]): string {
  return decisions.map((d) => {
    const detail = d.verdict === "chosen" || d.verdict === "usable"
      ? (d.kernel ? `kernel ${d.kernel}` : "")
      : (d.reasons[0] ?? "");
    return `  ${d.backend.padEnd(5)}${d.verdict.padEnd(9)}${printable(detail)}`;
  }).join("\n") + "\n";
}

export function runDocument(r: RunResult): Record<string, unknown> {
  const ok = r.check ? r.check.pass : true;
  const doc: Record<string, unknown> = { ok, command: "run", version: packageJson.version, ...r };
  if (!ok) doc.error = { code: "CHECK_FAILED", message: checkFailure(r.check!).message };
  return doc;
}

const examples = `
Examples:
  $ flashattn run                                          # default problem (1×1024 tokens, 8 heads, d 64, causal), checked
  $ flashattn run --q q.npy --k k.npy --v v.npy --causal --out o.npy --lse --check
  $ flashattn run --shape 2,4096,4096,32,8,128 --dtype bf16 --window 512,0 --backend cuda --json

Inputs: .npy files are C-order little-endian float32/float16 (bf16 as uint16 bit patterns with --dtype bf16);
.safetensors files hold q, k, v (or --q-name/--k-name/--v-name), or one packed qkv tensor (batch, seqlen, 3, heads, d).
FP8 (forward, output in bf16 or --out-dtype fp16): .npy uint8 bit patterns with --dtype fp8_e4m3, or F8_E4M3 / F8_E5M2 .safetensors
tensors, with descale factors q_descale, k_descale, v_descale (scalar or (batch, heads_kv)) in the --input or a
--descale file; float inputs and random problems with --dtype fp8_e4m3 are quantised with per-tensor scales.
  $ flashattn run --shape 1,512,512,8,8,128 --dtype fp8_e4m3 --causal --check
Layout BSHD: q (batch, seqlen_q, heads_q, head_dim), k/v (batch, seqlen_k, heads_kv, head_dim).
KV cache: a .safetensors --input holding k_cache runs flash_attn_with_kvcache on q, k_cache, v_cache and the optional
k_new, v_new, rotary_cos, rotary_sin, cache_seqlens, block_table, cache_batch_idx, cache_leftpad (I32; without
cache_seqlens every cache counts as full); --out (a .safetensors) then holds o, lse and, after an append, the updated
k_cache / v_cache. fp8 caches: F8_E4M3 / F8_E5M2 tensors with q_descale, k_descale, v_descale (k_new / v_new in the
caches' scale), or floats with --dtype fp8_* (quantised per tensor); no rotary.
  $ flashattn run --decode --cache-len 4096 --page-size 16 --append 1 --rotary --heads-q 32 --heads-kv 8 --head-dim 128 --check
  $ flashattn run --decode --cache-len 4096 --page-size 16 --append 1 --dtype fp8_e4m3 --check   (fp8 caches: CPU)
Context parallelism: --devices 0,1,… splits one sequence over the GPUs (2N chunks, rank r holding chunks r and 2N-1-r)
and passes K/V around a ring over NCCL (libnccl.so.2: FLASHATTN_NCCL, the loader path, or PyTorch's nvidia-nccl wheel).
  $ flashattn run --seqlen 131072 --heads 32 --head-dim 128 --causal --devices 0,1,2,3`;

/** Adds `run` to the program. */
export function register(program: Command) {
  program.command("run")
    .description("compute attention on .npy/.safetensors inputs or a random problem, check it, write the output")
    .option("--q <file.npy>", "query (batch, seqlen_q, heads_q, head_dim)")
    .option("--k <file.npy>", "keys (batch, seqlen_k, heads_kv, head_dim)")
    .option("--v <file.npy>", "values, shaped like the keys")
    .option("--input <file.safetensors>", "a .safetensors file with q, k, v or one packed qkv tensor")
    .option("--q-name <name>", "tensor name of q in --input (default q)")
    .option("--k-name <name>", "tensor name of k in --input (default k)")
    .option("--v-name <name>", "tensor name of v in --input (default v)")
    .option("--qkv-name <name>", "packed (batch, seqlen, 3, heads, head_dim) tensor in --input (default qkv)")
    .option("--shape <b,sq,sk,hq,hkv,d>", "random problem of this shape (or b,s,h,d)")
    .option("--batch <n>", "random problem: batch size (default 1)")
    .option("--seqlen <n>", "random problem: seqlen_q = seqlen_k (default 1024)")
    .option("--seqlen-q <n>", "random problem: query length")
    .option("--seqlen-k <n>", "random problem: key/value length")
    .option("--heads <n>", "random problem: heads_q = heads_kv (default 8)")
    .option("--heads-q <n>", "random problem: query heads")
    .option("--heads-kv <n>", "random problem: key/value heads (GQA/MQA when fewer)")
    .option("--head-dim <n>", "random problem: head dimension (default 64)")
    .option("--dtype <fp32|fp16|bf16|fp8_e4m3|fp8_e5m2>", "data type (random default: fp32 on CPU, bf16 on GPU; files: convert; fp8: quantise per tensor)")
    .option("--seed <n>", "random problem seed (default 0)")
    .option("--causal", "causal mask, bottom-right aligned")
    .option("--window <left,right>", "sliding window; -1 = unbounded side")
    .option("--softcap <c>", "softcap: s = c·tanh(s/c); 0 = off")
    .option("--scale <s>", "softmax scale (default 1/sqrt(head_dim))")
    .option("--alibi", "ALiBi with the standard slopes for the head count")
    .option("--alibi-slopes <file.npy>", "ALiBi slopes, (heads_q,) or (batch, heads_q)")
    .option("--descale <file>", "fp8 descale factors q_descale, k_descale, v_descale (.safetensors or .json)")
    .option("--out-dtype <fp16|bf16>", "output dtype of an fp8 run (default bf16)")
    .option("--backend <auto|cpu|cuda|hip>", "backend (default auto: cuda, hip, cpu)")
    .option("--lib <path>", "explicit libflashattn_<backend>.so")
    .option("--out <file>", "write O to .npy or .safetensors (atomically, never over an input)")
    .option("--lse [file.npy]", "also write the LSE (batch, heads_q, seqlen_q); safetensors: same file")
    .option("--check", "compare with the fp64 reference; exit 1 beyond the docs/DESIGN.md tolerance")
    .option("--decode", "random KV-cache step (flash_attn_with_kvcache): q of --seqlen-q tokens (default 1) over a cache")
    .option("--cache-len <n>", "--decode: tokens already in each sequence's cache")
    .option("--page-size <p>", "--decode: a paged cache with pages of p tokens (any size) and a shuffled block table")
    .option("--append <n>", "--decode: new keys/values written into the cache in place, then attended to")
    .option("--rotary", "--decode: rotary embedding of q and the new keys (rotary_dim = head_dim)")
    .option("--rotary-interleaved", "rotary in GPT-J pairs instead of GPT-NeoX halves")
    .option("--devices <list>", "context-parallel (ring) attention over these GPUs through NCCL, e.g. 0,1,2,3 (CPU backend: 0,0 = two ranks)")
    .addHelpText("after", examples)
    .action(action(async (globals, raw: RawRunOptions) => {
      const tell = (message: string) => {
        if (!globals.json && (globals.verbose || process.stderr.isTTY)) progress(message);
      };
      const result = await executeRun(parseRunOptions(raw), tell);
      if (globals.verbose && !globals.json) process.stderr.write("backends:\n" + renderDecisions(result.decisions));
      if (globals.json) printJson(runDocument(result));
      else process.stdout.write(renderRun(result, useColor(process.stdout, globals.color)));
      if (result.check && !result.check.pass) {
        if (!globals.json) throw checkFailure(result.check);
        progress(`flashattn: ${checkFailure(result.check).message}`);
        return EXIT_FAILURE;
      }
    }));
}
