// Model-level advice: which attention implementations can serve this model on this machine and why the others
// cannot, the exact line to load it with, and the line that turns flash attention off. Pure: the model's facts
// (doctor/model/probe.ts) and the machine's (doctor/facts.ts) in, advice and findings out, so a report replayed with
// `--facts` gives the same advice anywhere.
import type { DoctorFacts, Finding } from "../facts.ts";
import { amdHardwarePresent, compareVersions, gfxBase, nvidiaGpus, sectionFindings } from "../rules/common.ts";
import { FLASH_ATTN_2_MIN_CC, flashAttnCkArchs, SDPA_MIN_TORCH } from "../rules/tables.ts";
import type { AttentionNeeds, ModelNeeds } from "./needs.ts";
import type { ModelFacts, TransformersClassFacts } from "./probe.ts";
import type { ModelSwitch } from "./switches.ts";

/** transformers' attn_implementation values, in the order the doctor prefers them. */
export const transformersImplementations = ["flash_attention_2", "sdpa", "flex_attention", "eager"] as const;
export type ImplementationName = (typeof transformersImplementations)[number] | "flashattn";

export interface Blocker {
  /** "model": the model or its code rules it out anywhere; "machine": this machine lacks something installable */
  by: "model" | "machine";
  reason: string;
}

export interface ImplementationVerdict {
  name: ImplementationName;
  verdict: "recommended" | "usable" | "unavailable";
  blockers: Blocker[];
  /** what holds even when it is usable (memory, padding, how to call it) */
  notes: string[];
}

export interface ModelAdvice {
  /** "llama (LlamaForCausalLM)" */
  model: string;
  implementations: ImplementationVerdict[];
  /** the line to load the model with; ready: false when it needs something first (said in `after`) */
  use: { line: string; ready: boolean; after?: string };
  /** the line that turns flash attention on, where nothing about the model rules it out (ready: this machine can) */
  enable?: { line: string; ready: boolean; after?: string };
  /** the line that turns flash attention off on purpose (debugging, an older GPU) */
  disable: { line: string; note?: string };
}

/** flash_attn releases that brought a feature (its CHANGELOG / README): softcap 2.6, sliding window 2.3, ALiBi 2.4. */
export const FLASH_ATTN_FEATURE_VERSIONS = { softcap: "2.6.0", window: "2.3.0", alibi: "2.4.0" } as const;
/** flash_attn 2's largest head dimension. */
export const FLASH_ATTN_MAX_HEAD_DIM = 256;
/** transformers' flex_attention integration needs torch 2.5 (torch.nn.attention.flex_attention). */
export const FLEX_MIN_TORCH = "2.5.0";

const parts = (needs: ModelNeeds): AttentionNeeds[] => [needs.text, ...(needs.vision ? [needs.vision] : [])];

/** The class flags transformers (or, for remote code, the model's own file) declares. */
function classFlags(m: ModelFacts): { flags?: TransformersClassFacts; source: string } {
  const arch = m.needs.architectures[0];
  const probed = arch ? m.transformers.classes?.[arch] : undefined;
  if (probed?.found && !m.needs.auto_map) return { flags: probed, source: `${arch} in transformers ${m.transformers.version ?? ""}`.trim() };
  if (m.needs.auto_map) {
    const declared = (name: string) => m.switches.find((s) => s.kind === "class_flag" && s.name === name)?.value;
    if (!m.modeling_files.length) return { source: "the model's own code (not in this directory)" };
    return {
      flags: {
        found: true,
        flash_attn_2: declared("_supports_flash_attn_2") ?? declared("_supports_flash_attn") ?? false,
        sdpa: declared("_supports_sdpa") ?? false,
        flex: declared("_supports_flex_attn") ?? false,
      },
      source: m.modeling_files.join(", "),
    };
  }
  return { flags: probed, source: arch ?? m.needs.model_type };
}

/** The model's own attention switch in its code: a config flag it reads, else an environment variable. */
export function ownSwitch(m: ModelFacts): ModelSwitch | undefined {
  return m.switches.find((s) => s.kind === "config" && !s.name.startsWith("_")) ??
    m.switches.find((s) => s.kind === "env");
}

const where = (s: ModelSwitch) => `${s.file}:${s.line}`;

function machineGpu(f: DoctorFacts): { flashReady: boolean; text: string } {
  const gpus = nvidiaGpus(f);
  const ampere = gpus.find((g) => g.cc && compareVersions(g.cc, FLASH_ATTN_2_MIN_CC) >= 0);
  if (ampere) return { flashReady: true, text: `${ampere.name} (sm_${ampere.cc!.replace(".", "")})` };
  const ck = (f.amd.hip.devices ?? []).find((d) => flashAttnCkArchs.includes(gfxBase(d.gcn_arch_name ?? "")));
  if (ck) return { flashReady: true, text: `${ck.name ?? "AMD GPU"} (${gfxBase(ck.gcn_arch_name!)})` };
  if (gpus.length) {
    const g = gpus[0];
    return { flashReady: false, text: `${g.name} is sm_${(g.cc ?? "?").replace(".", "")}; flash_attn 2 needs sm_80 or newer (Ampere, Ada, Hopper, Blackwell)` };
  }
  if (amdHardwarePresent(f)) return { flashReady: false, text: `no AMD GPU here is one flash_attn's CK backend builds for (${flashAttnCkArchs.slice(0, 3).join(", ")}, ...)` };
  return { flashReady: false, text: "no GPU here; flash_attn 2 runs on NVIDIA sm_80+ (or AMD MI200/MI300 via CK)" };
}

/** Remote code whose modeling file is not here: what it supports cannot be read (downloading the file fixes that). */
function unknownSupport(m: ModelFacts, flags: TransformersClassFacts | undefined, impl: string): Blocker[] {
  if (flags || !m.needs.auto_map) return [];
  const files = m.missing_remote_files.join(", ") || "the model's modeling file";
  return [{ by: "machine", reason: `whether the model's own code supports ${impl} is unknown: ${files} is not in this directory` }];
}

function flashAttention2(m: ModelFacts, f: DoctorFacts, flags: TransformersClassFacts | undefined, source: string): Blocker[] {
  const b: Blocker[] = [...unknownSupport(m, flags, "flash_attention_2")];
  const all = parts(m.needs);
  const own = ownSwitch(m);
  if (flags?.flash_attn_2 !== true && flags) {
    b.push({ by: "model", reason: `${source} does not declare flash_attention_2 support, so transformers refuses attn_implementation="flash_attention_2"` +
      (own ? `; the model's own switch is ${own.kind === "env" ? "the environment variable " : "config."}${own.name} (${where(own)})` : "") });
  }
  const big = all.find((n) => Math.max(n.head_dim_qk, n.head_dim_v) > FLASH_ATTN_MAX_HEAD_DIM);
  if (big) b.push({ by: "model", reason: `head_dim ${Math.max(big.head_dim_qk, big.head_dim_v)} is above flash_attn 2's ${FLASH_ATTN_MAX_HEAD_DIM}` });
  const split = all.find((n) => n.head_dim_qk !== n.head_dim_v);
  if (split) {
    b.push({ by: "model", reason: `Q/K head_dim ${split.head_dim_qk} differs from V head_dim ${split.head_dim_v}: flash_attn 2 takes one head_dim, so V must be padded to ${Math.max(split.head_dim_qk, split.head_dim_v)} by the model's code` });
  }
  const gpu = machineGpu(f);
  if (!gpu.flashReady) b.push({ by: "machine", reason: gpu.text });
  const fa = f.python.flash_attn;
  // Without a Python stack probed (--no-python, no python3) there is nothing to say about flash_attn beyond that.
  if (f.python.status !== "ok") return b;
  if (!fa?.installed) b.push({ by: "machine", reason: "flash_attn is not installed in this Python" });
  else if (fa.importable === false) b.push({ by: "machine", reason: `flash_attn does not import: ${fa.import_error ?? "unknown error"}` });
  else if (fa.version) {
    const needs: Array<[keyof typeof FLASH_ATTN_FEATURE_VERSIONS, boolean, string]> = [
      ["softcap", all.some((n) => !!n.softcap), "logit softcap"],
      ["window", all.some((n) => !!n.sliding_window), "sliding window"],
      ["alibi", all.some((n) => n.alibi), "ALiBi"],
    ];
    for (const [feature, wanted, words] of needs) {
      const min = FLASH_ATTN_FEATURE_VERSIONS[feature];
      if (wanted && compareVersions(fa.version, min) < 0) b.push({ by: "machine", reason: `flash_attn ${fa.version} has no ${words} (the model needs it); it came in flash_attn ${min}` });
    }
  }
  return b;
}

function transformersBlockers(m: ModelFacts): Blocker[] {
  const t = m.transformers;
  if (t.status === "ok") return [];
  return [{ by: "machine", reason: t.error ?? `transformers could not be asked (${t.status})` }];
}

function torchBlockers(f: DoctorFacts, min?: string, what?: string): Blocker[] {
  const torch = f.python.torch;
  if (f.python.status !== "ok") return [];
  if (!torch?.installed) return [{ by: "machine", reason: "torch is not installed in this Python" }];
  if (min && torch.version && compareVersions(torch.version, min) < 0) {
    return [{ by: "machine", reason: `torch ${torch.version} has no ${what}; it needs torch ${min} or newer` }];
  }
  return [];
}

/** Every implementation's verdict, the recommended one first among those without blockers. */
export function implementationVerdicts(m: ModelFacts, f: DoctorFacts): ImplementationVerdict[] {
  const { flags, source } = classFlags(m);
  const common = transformersBlockers(m);
  const softcap = parts(m.needs).find((n) => n.softcap);
  const declines = (key: "sdpa" | "flex", impl: string): Blocker[] =>
    flags && flags[key] !== true ? [{ by: "model", reason: `${source} does not declare ${impl} support` }] : unknownSupport(m, flags, impl);
  const verdicts: ImplementationVerdict[] = [
    { name: "flash_attention_2", verdict: "unavailable", blockers: [...common, ...flashAttention2(m, f, flags, source)], notes: [] },
    {
      name: "sdpa",
      verdict: "unavailable",
      blockers: [
        ...common,
        ...declines("sdpa", "sdpa"),
        ...(softcap ? [{ by: "model" as const, reason: `SDPA applies no logit softcap (the model needs ${softcap.softcap}); its outputs would differ from the model's` }] : []),
        ...torchBlockers(f, SDPA_MIN_TORCH, "SDPA for transformers"),
      ],
      notes: [],
    },
    {
      name: "flex_attention",
      verdict: "unavailable",
      blockers: [...common, ...declines("flex", "flex_attention"), ...torchBlockers(f, FLEX_MIN_TORCH, "flex_attention")],
      notes: [],
    },
    {
      name: "eager",
      verdict: "unavailable",
      blockers: [...common, ...torchBlockers(f)],
      notes: ["materialises every (seqlen × seqlen) score matrix: memory grows with the square of the sequence"],
    },
    flashattnVerdict(m),
  ];
  for (const v of verdicts) if (!v.blockers.length) v.verdict = "usable";
  const best = verdicts.find((v) => v.verdict === "usable" && v.name !== "flashattn");
  if (best) best.verdict = "recommended";
  return verdicts;
}

function flashattnVerdict(m: ModelFacts): ImplementationVerdict {
  const v: ImplementationVerdict = { name: "flashattn", verdict: "unavailable", blockers: [], notes: [] };
  if (m.kernels.status !== "ok") v.blockers.push({ by: "machine", reason: m.kernels.error ?? `the kernel probe ended: ${m.kernels.status}` });
  for (const p of m.kernels.parts) {
    if (p.error) v.blockers.push({ by: "model", reason: `${p.part}: ${p.error}` });
    else if (!p.chosen) {
      const why = p.decisions.filter((d) => d.verdict !== "disabled").map((d) => `${d.backend}: ${d.reasons[0] ?? d.verdict}`);
      v.blockers.push({ by: "machine", reason: `${p.part}: no backend can run ${p.problem} (${why.join("; ")})` });
    } else {
      const d = p.decisions.find((x) => x.verdict === "chosen");
      v.notes.push(`${p.part}: ${p.chosen}${d?.kernel ? ` (${d.kernel})` : ""} for ${p.problem}`);
    }
  }
  const split = parts(m.needs).find((n) => n.head_dim_qk !== n.head_dim_v);
  if (split) v.notes.push(`V padded from head_dim ${split.head_dim_v} to ${split.head_dim_qk}: the library takes one head_dim`);
  v.notes.push("flashattn is a library and CLI (`flashattn run`), not an attn_implementation of transformers");
  return v;
}

const torchDtype = {
  bf16: "torch.bfloat16", fp16: "torch.float16", fp32: "torch.float32", fp8_e4m3: "torch.float8_e4m3fn",
  fp8_e5m2: "torch.float8_e5m2",
} as const;

/** How the model is loaded: AutoModelForCausalLM for causal LMs, else its own class. */
function loader(needs: ModelNeeds): string {
  const arch = needs.architectures[0];
  if (!arch || arch.endsWith("ForCausalLM")) return "AutoModelForCausalLM";
  return arch;
}

function loadLine(needs: ModelNeeds, args: string[]): string {
  const all = ["path", ...(needs.auto_map ? ["trust_remote_code=True"] : []), ...args];
  return `${loader(needs)}.from_pretrained(${all.join(", ")})`;
}

/** The dtype argument: flash attention runs in half precision only; the others keep the stored dtype. */
function dtypeArg(needs: ModelNeeds, flash: boolean): string[] {
  if (flash) return [`torch_dtype=${needs.dtype === "fp16" ? torchDtype.fp16 : torchDtype.bf16}`];
  return needs.dtype ? [`torch_dtype=${torchDtype[needs.dtype]}`] : [];
}

/** The line to load with, and the line that switches flash attention off. */
export function adviseModel(m: ModelFacts, f: DoctorFacts): ModelAdvice {
  const needs = m.needs;
  const implementations = implementationVerdicts(m, f);
  const arch = needs.architectures[0];
  const advice: ModelAdvice = {
    model: arch ? `${needs.model_type} (${arch})` : needs.model_type,
    implementations,
    use: { line: "", ready: false },
    disable: { line: "" },
  };
  const own = ownSwitch(m);
  const fa2 = implementations[0];
  const ownFlag = own?.kind === "config" && needs.auto_map ? own : undefined;
  const machineReasons = (v: ImplementationVerdict) => v.blockers.filter((b) => b.by === "machine").map((b) => b.reason);
  // Flash attention on: the model's own switch for remote code that has one (transformers' flag is refused there),
  // else attn_implementation="flash_attention_2"; only where nothing about the model rules it out.
  const modelBlocks = fa2.blockers.filter((b) => b.by === "model" && !(ownFlag && b.reason.includes("does not declare")));
  if (!modelBlocks.length) {
    const line = ownFlag
      ? loadLine(needs, [`${ownFlag.name}=True`, ...dtypeArg(needs, true)])
      : loadLine(needs, [`attn_implementation="flash_attention_2"`, ...dtypeArg(needs, true)]);
    advice.enable = { line, ready: machineReasons(fa2).length === 0 };
    if (!advice.enable.ready) advice.enable.after = machineReasons(fa2).join("; ");
  }
  const transformersOnly = implementations.filter((v) => v.name !== "flashattn");
  // None ready: the one this machine is fewest steps from (installing transformers, not also a GPU and flash_attn).
  const pick = transformersOnly.find((v) => v.verdict === "recommended") ?? transformersOnly
    .filter((v) => v.blockers.every((b) => b.by === "machine"))
    .reduce<ImplementationVerdict | undefined>((best, v) => (!best || v.blockers.length < best.blockers.length ? v : best), undefined);
  if (advice.enable?.ready) advice.use = { ...advice.enable };
  else if (ownFlag) {
    // Remote code decides by its own switch (attn_implementation does not reach it): off until this machine can.
    advice.use = { line: loadLine(needs, [`${ownFlag.name}=False`, ...dtypeArg(needs, false)]), ready: !transformersBlockers(m).length };
    if (!advice.use.ready) advice.use.after = transformersBlockers(m).map((b) => b.reason).join("; ");
  } else if (pick) {
    const flash = pick.name === "flash_attention_2";
    const machine = machineReasons(pick);
    advice.use = { line: loadLine(needs, [`attn_implementation="${pick.name}"`, ...dtypeArg(needs, flash)]), ready: machine.length === 0 };
    if (machine.length) advice.use.after = machine.join("; ");
  } else {
    advice.use = { line: "", ready: false, after: "no attention implementation of transformers can serve this model as configured" };
  }

  // Off on purpose: the model's own switch where it has one, else the best implementation that is not flash.
  const offPick = transformersOnly.find((v) => v.name !== "flash_attention_2" && v.blockers.every((b) => b.by === "machine"));
  if (ownFlag) {
    advice.disable = {
      line: loadLine(needs, [`${ownFlag.name}=False`, ...dtypeArg(needs, false)]),
      note: `the model's own switch: ${where(ownFlag)} reads config.${ownFlag.name}`,
    };
  } else if (offPick) {
    advice.disable = { line: loadLine(needs, [`attn_implementation="${offPick.name}"`, ...dtypeArg(needs, false)]) };
    if (needs.vision) advice.disable.note = `applies to the text model and the vision tower alike; per part: attn_implementation={"text_config": "${offPick.name}", "vision_config": "eager"} (transformers 4.50+)`;
  } else advice.disable = { line: "", note: "no non-flash implementation can serve this model as configured" };
  const env = m.switches.find((s) => s.kind === "env");
  if (env) advice.disable.note = [advice.disable.note, `the model's code also reads ${env.name} (${where(env)})`].filter(Boolean).join("; ");
  return advice;
}

/** "32 heads / 8 KV heads (GQA 4:1), head_dim 128, causal, sliding window 4096 (all layers), ..." */
export function describeNeeds(n: AttentionNeeds): string {
  const words: string[] = [];
  const group = n.heads === n.kv_heads ? "MHA" : n.kv_heads === 1 ? "MQA" : `GQA ${n.heads / n.kv_heads}:1`;
  words.push(`${n.heads} heads / ${n.kv_heads} KV heads (${group})`);
  words.push(n.head_dim_qk === n.head_dim_v ? `head_dim ${n.head_dim_qk}` : `head_dim Q/K ${n.head_dim_qk}, V ${n.head_dim_v}`);
  words.push(n.causal ? "causal" : "bidirectional");
  if (n.sliding_window) words.push(`sliding window ${n.sliding_window} (${n.window_layers ?? "all"})`);
  else if (n.window_layers) words.push(`no sliding window (${n.window_layers})`);
  if (n.softcap) words.push(`logit softcap ${n.softcap}`);
  if (n.alibi) words.push("ALiBi");
  if (n.rotary) {
    const r = n.rotary;
    const detail = [r.theta !== undefined ? `θ ${r.theta}` : "", r.dim !== undefined ? `${r.dim} dims` : "",
      r.scaling ? `${r.scaling} scaling${r.factor !== undefined ? ` ×${r.factor}` : ""}` : ""].filter(Boolean).join(", ");
    words.push(detail ? `rotary (${detail})` : "rotary");
  }
  if (n.dropout) words.push(`attention dropout ${n.dropout}`);
  if (n.max_positions) words.push(`max ${n.max_positions} positions`);
  if (n.tokens) words.push(`${n.tokens} tokens per image`);
  return words.join(", ");
}

/** What a line waits for, with the pip line for the Python packages among it. */
function installFix(after: string): string {
  if (after.includes("(--no-python)")) return `${after}: run the doctor without --no-python to check the Python stack`;
  const missing = [["transformers not installed", "transformers"], ["torch is not installed", "torch"], ["flash_attn is not installed", "flash-attn"]]
    .filter(([words]) => after.includes(words)).map(([, dist]) => dist);
  return missing.length ? `${after} (pip install ${missing.join(" ")}, in the Python that runs the model)` : after;
}

/** The model's findings (section "model"), for the report's list and summary. */
export function modelFindings(m: ModelFacts, advice: ModelAdvice): Finding[] {
  const s = sectionFindings("model");
  const stored = m.needs.dtype ?? m.needs.dtype_other ?? "not stated (transformers loads float32)";
  s.info("needs", `${advice.model}: ${describeNeeds(m.needs.text)}; weights ${stored}`);
  if (m.needs.vision) s.info("vision", `vision tower (${m.needs.vision.model_type}): ${describeNeeds(m.needs.vision)}`);
  if (m.cache_implementation) s.info("cache", `generation_config.json asks for the "${m.cache_implementation}" cache`);
  for (const file of m.missing_remote_files) {
    s.warn("remote_code_missing", `auto_map names ${file}, which is not in this directory: its attention switches cannot be read`,
      "download the model's *.py files beside config.json (the doctor reads them as text, never runs them)");
  }
  for (const sw of m.switches.filter((x) => x.kind !== "class_flag")) {
    const what = sw.kind === "config" ? `reads config.${sw.name}` : sw.kind === "env" ? `reads the environment variable ${sw.name}` : `imports ${sw.name}`;
    s.info("switch", `${where(sw)} ${what}: ${sw.text}`);
  }
  for (const v of advice.implementations) {
    const id = v.name === "flashattn" ? "flashattn_kernels" : v.name;
    const reasons = v.blockers.map((b) => b.reason);
    if (v.verdict === "unavailable") s.info(id, `${v.name}: unavailable — ${reasons.join("; ")}`, undefined, v.notes);
    else s.ok(id, `${v.name}: ${v.verdict}${v.notes.length && v.name === "flashattn" ? ` — ${v.notes[0]}` : ""}`, v.notes);
  }
  if (advice.use.line) {
    const line = `use: ${advice.use.line}`;
    if (advice.use.ready) s.ok("use", line);
    else s.warn("use", `${line} (not ready here)`, installFix(advice.use.after ?? ""));
  } else s.warn("use", "no attention implementation of transformers can load this model as configured", advice.use.after ?? "check the model's config");
  if (advice.enable && advice.enable.line !== advice.use.line) {
    s.info("enable", `flash attention on: ${advice.enable.line}${advice.enable.ready ? "" : " (not ready here)"}`, advice.enable.after);
  }
  if (advice.disable.line) s.info("disable", `to turn flash attention off: ${advice.disable.line}`, advice.disable.note);
  return s.list;
}
