// What attention a model needs, read from its config.json alone: head counts, head dims (Q/K and V apart), dtype,
// causality, sliding windows per layer, logit softcap, ALiBi, rotary and its scaling, dropout, maximum positions;
// for a vision-language model the text model's and the vision tower's. Pure: the parsed config in, the needs out
// (doctor/model/read.ts does the reading), so every family's derivation is tested without I/O. The config is
// data from outside: every value used is checked, and a value that cannot be right is one BAD_INPUT sentence.
import { FlashAttnError } from "../../lib/errors.ts";
import type { DType } from "../../lib/vocabulary.ts";

export interface AttentionNeeds {
  /** "text" (the language model) or "vision" (a VLM's vision tower) */
  part: "text" | "vision";
  model_type: string;
  heads: number;
  kv_heads: number;
  /** the dimension q and k share (MLA: qk_nope_head_dim + qk_rope_head_dim) */
  head_dim_qk: number;
  head_dim_v: number;
  layers?: number;
  causal: boolean;
  /** tokens a query sees in a sliding-window layer (the query's own included) */
  sliding_window?: number;
  /** which layers slide: "all", a description ("even layers (21 of 42)", "layers 28 and up"), or why none does */
  window_layers?: string;
  /** tanh cap on the attention logits (Gemma 2's attn_logit_softcapping) */
  softcap?: number;
  alibi: boolean;
  rotary?: { theta?: number; scaling?: string; factor?: number; dim?: number };
  dropout: number;
  max_positions?: number;
  /** tokens per image for a vision tower, (image_size / patch_size)² (+1 for a class token) */
  tokens?: number;
}

export interface ModelNeeds {
  model_type: string;
  architectures: string[];
  /** the dtype its weights are stored in (torch_dtype); absent: not stated, transformers loads float32 */
  dtype?: DType;
  /** torch_dtype as written, when it is not one of ours (float64, int8, ...) */
  dtype_other?: string;
  /** auto_map: the config asks for the model's own code (trust_remote_code=True) */
  auto_map?: Record<string, string>;
  text: AttentionNeeds;
  vision?: AttentionNeeds;
}

type Config = Record<string, unknown>;

/** Far above any real model (largest today: 128 heads, head_dim 256, a few million positions). */
const LIMITS = { heads: 1 << 16, dim: 1 << 16, layers: 1 << 16, positions: 1 << 30 };
const MAX_NAME = 120;

const bad = (message: string) =>
  new FlashAttnError("BAD_INPUT", message, "pass a model directory (or its config.json) as published with the model");

/** "config.json" or the sub-config a message is about ("text_config"). */
const section = (where: string) => (where ? where.slice(0, -1) : "config.json");

const isObject = (v: unknown): v is Config => typeof v === "object" && v !== null && !Array.isArray(v);

/** The first of `keys` present with a non-null value. */
function pick(c: Config, keys: string[]): [string, unknown] | undefined {
  for (const key of keys) if (c[key] !== undefined && c[key] !== null) return [key, c[key]];
  return undefined;
}

function whole(c: Config, keys: string[], max: number, where: string): number | undefined {
  const found = pick(c, keys);
  if (!found) return undefined;
  const [key, v] = found;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
    throw bad(`${where}${key} must be a whole number from 1 to ${max}, got ${shortJson(v)}`);
  }
  return v;
}

function real(c: Config, keys: string[], where: string, min = 0): number | undefined {
  const found = pick(c, keys);
  if (!found) return undefined;
  const [key, v] = found;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min) {
    throw bad(`${where}${key} must be a finite number ≥ ${min}, got ${shortJson(v)}`);
  }
  return v;
}

function name(v: unknown): string | undefined {
  return typeof v === "string" ? v.slice(0, MAX_NAME) : undefined;
}

function shortJson(v: unknown): string {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

const dtypes: Record<string, DType> = { bfloat16: "bf16", float16: "fp16", half: "fp16", float32: "fp32", float: "fp32" };

/** Defaults of the transformers config classes, for configs that leave them out (LLaVA's text_config, CLIP). */
const familyDefaults: Record<string, Config> = {
  llama: { hidden_size: 4096, num_attention_heads: 32, num_hidden_layers: 32, max_position_embeddings: 2048 },
  mistral: { hidden_size: 4096, num_attention_heads: 32, num_key_value_heads: 8, sliding_window: 4096 },
  clip_vision_model: { hidden_size: 768, num_attention_heads: 12, num_hidden_layers: 12, image_size: 224, patch_size: 32 },
  siglip_vision_model: { hidden_size: 768, num_attention_heads: 12, num_hidden_layers: 12, image_size: 224, patch_size: 16 },
  falcon: { max_position_embeddings: 2048 },
  bloom: { max_position_embeddings: 2048 },
};

/** Families whose position information is ALiBi whatever the config says. */
const alibiFamilies = new Set(["bloom"]);
/** Families that alternate sliding and global layers (even layers slide) without a layer_types list. */
const alternatingFamilies = new Set(["gemma2"]);

/**
 * The needs of one attention stack (a decoder, or a vision encoder when `part` is "vision"). `where` prefixes the
 * config path in messages ("text_config.").
 */
function attentionNeeds(raw: Config, part: "text" | "vision", where: string): AttentionNeeds {
  const model_type = name(raw.model_type) ?? "unknown";
  const c: Config = { ...(familyDefaults[model_type] ?? {}), ...raw };
  // MPT keeps its attention settings in attn_config.
  const attn = isObject(c.attn_config) ? c.attn_config : {};
  const heads = whole(c, ["num_attention_heads", "n_head", "n_heads", "num_heads"], LIMITS.heads, where);
  if (heads === undefined) {
    throw bad(`${section(where)} has no attention head count (num_attention_heads, n_head or n_heads)`);
  }
  let kv_heads = whole(c, ["num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"],
    LIMITS.heads, where);
  // Falcon-7B and OLMo say "one KV head" with a flag; Falcon's new architecture counts them in num_kv_heads.
  if (kv_heads === undefined && (c.multi_query === true || c.multi_query_attention === true)) kv_heads = 1;
  if (model_type === "falcon" && c.new_decoder_architecture !== true && c.multi_query === false) kv_heads = heads;
  kv_heads ??= heads;
  if (heads % kv_heads !== 0) {
    throw bad(`${where}the ${heads} attention heads are not a multiple of the ${kv_heads} key/value heads`);
  }
  const hidden = whole(c, ["hidden_size", "d_model", "n_embd", "dim"], LIMITS.dim * LIMITS.heads, where);
  const nope = whole(c, ["qk_nope_head_dim"], LIMITS.dim, where);
  const rope = whole(c, ["qk_rope_head_dim"], LIMITS.dim, where);
  let head_dim_qk = nope !== undefined && rope !== undefined
    ? nope + rope
    : whole(c, ["head_dim", "attention_head_size", "kv_channels"], LIMITS.dim, where);
  if (head_dim_qk === undefined) {
    if (hidden === undefined) throw bad(`${section(where)} has neither head_dim nor hidden_size`);
    if (hidden % heads !== 0) throw bad(`${where}hidden_size ${hidden} is not a multiple of the ${heads} heads`);
    head_dim_qk = hidden / heads;
  }
  const head_dim_v = whole(c, ["v_head_dim"], LIMITS.dim, where) ?? head_dim_qk;
  const layers = whole(c, ["num_hidden_layers", "n_layer", "n_layers", "num_layers"], LIMITS.layers, where);

  const alibi = alibiFamilies.has(model_type) || c.alibi === true || attn.alibi === true;
  const needs: AttentionNeeds = {
    part,
    model_type,
    heads,
    kv_heads,
    head_dim_qk,
    head_dim_v,
    causal: part === "text",
    alibi,
    dropout: real(c, ["attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"], where) ??
      real(attn, ["attn_pdrop"], `${where}attn_config.`) ?? 0,
  };
  if (layers !== undefined) needs.layers = layers;
  const max = whole(c, ["max_position_embeddings", "max_sequence_length", "max_seq_len", "n_positions", "seq_length"],
    LIMITS.positions, where);
  if (max !== undefined) needs.max_positions = max;
  const softcap = real(c, ["attn_logit_softcapping"], where);
  if (softcap) needs.softcap = softcap;
  if (!alibi && c.rope !== false && c.position_embedding_type !== "absolute" && part === "text") {
    needs.rotary = rotaryOf(c, where, head_dim_qk, rope);
  }
  Object.assign(needs, windowOf(c, layers, where));
  if (part === "vision") {
    const image = whole(c, ["image_size"], LIMITS.positions, where);
    const patch = whole(c, ["patch_size"], LIMITS.positions, where);
    const tokens = image && patch ? Math.floor(image / patch) ** 2 + (model_type.startsWith("clip") ? 1 : 0) : 0;
    if (tokens >= 1) needs.tokens = tokens;
  }
  return needs;
}

function rotaryOf(c: Config, where: string, headDim: number, ropeDim?: number): AttentionNeeds["rotary"] {
  const rotary: NonNullable<AttentionNeeds["rotary"]> = {};
  const theta = real(c, ["rope_theta", "rotary_emb_base", "rope_base"], where);
  if (theta !== undefined) rotary.theta = theta;
  const partial = real(c, ["partial_rotary_factor", "rotary_pct"], where);
  const dim = ropeDim ?? (partial !== undefined && partial < 1 ? Math.round(headDim * partial) : undefined);
  if (dim !== undefined && dim >= 1) rotary.dim = dim;
  if (isObject(c.rope_scaling)) {
    const s = c.rope_scaling;
    rotary.scaling = name(s.rope_type) ?? name(s.type) ?? "unnamed";
    const factor = real(s, ["factor"], `${where}rope_scaling.`);
    if (factor !== undefined) rotary.factor = factor;
  }
  return rotary;
}

/**
 * The sliding window and which layers use it: a layer_types list, Gemma-2's alternation, Gemma-3's
 * sliding_window_pattern, Qwen-2's use_sliding_window with max_window_layers, or Mistral's window on every layer.
 */
function windowOf(c: Config, layers: number | undefined, where: string): Partial<AttentionNeeds> {
  const window = whole(c, ["sliding_window", "attention_window_size"], LIMITS.positions, where);
  if (Array.isArray(c.layer_types)) {
    const types = c.layer_types.map((t) => name(t) ?? "");
    const sliding = types.filter((t) => t === "sliding_attention").length;
    if (sliding === 0) return { window_layers: "layer_types has no sliding layers" };
    if (window === undefined) throw bad(`${where}layer_types has sliding layers but sliding_window is not set`);
    return { sliding_window: window, window_layers: sliding === types.length ? "all" : `${sliding} of ${types.length} layers` };
  }
  if (window === undefined) return {};
  if (c.use_sliding_window === false) return { window_layers: "use_sliding_window is false" };
  if (alternatingFamilies.has(name(c.model_type) ?? "")) {
    const n = layers === undefined ? "" : ` (${Math.ceil(layers / 2)} of ${layers})`;
    return { sliding_window: window, window_layers: `even layers${n}; odd layers are global` };
  }
  const pattern = whole(c, ["sliding_window_pattern"], LIMITS.layers, where);
  if (pattern !== undefined && pattern > 1) {
    return { sliding_window: window, window_layers: `${pattern - 1} of every ${pattern} layers; every ${pattern}th is global` };
  }
  const upTo = whole(c, ["max_window_layers"], LIMITS.layers, where);
  if (c.use_sliding_window === true && upTo !== undefined && layers !== undefined && upTo < layers) {
    return { sliding_window: window, window_layers: `layers ${upTo} and up` };
  }
  return { sliding_window: window, window_layers: "all" };
}

/** A model's attention needs from its parsed config.json. Throws BAD_INPUT (one sentence) for a config that is not one. */
export function deriveNeeds(config: unknown): ModelNeeds {
  if (!isObject(config)) throw bad("config.json is not a JSON object");
  const architectures = Array.isArray(config.architectures)
    ? config.architectures.map(name).filter((a): a is string => !!a).slice(0, 8)
    : [];
  const model_type = name(config.model_type) ?? "unknown";
  const textRaw = isObject(config.text_config) ? config.text_config : isObject(config.llm_config) ? config.llm_config : undefined;
  const visionRaw = isObject(config.vision_config) ? config.vision_config : undefined;
  const needs: ModelNeeds = {
    model_type,
    architectures,
    text: textRaw ? attentionNeeds(textRaw, "text", "text_config.") : attentionNeeds(config, "text", ""),
  };
  if (visionRaw) needs.vision = attentionNeeds(visionRaw, "vision", "vision_config.");
  const torchDtype = name(config.torch_dtype ?? config.dtype ?? textRaw?.torch_dtype);
  if (torchDtype !== undefined) {
    const dtype = dtypes[torchDtype.replace(/^torch\./, "")];
    if (dtype) needs.dtype = dtype;
    else needs.dtype_other = torchDtype;
  }
  if (isObject(config.auto_map)) {
    const map: Record<string, string> = {};
    for (const [k, v] of Object.entries(config.auto_map).slice(0, 16)) {
      const target = Array.isArray(v) ? name(v[0]) : name(v);
      if (target) map[k.slice(0, MAX_NAME)] = target;
    }
    needs.auto_map = map;
  }
  return needs;
}

/**
 * The modeling files auto_map names for its model classes ("modeling_olmo.OLMoForCausalLM" -> "modeling_olmo.py";
 * "repo--file.Class" too): where the attention code lives. Tokenizer and config files hold no attention switches.
 */
export function remoteCodeFiles(needs: ModelNeeds): string[] {
  const files = new Set<string>();
  for (const [auto, target] of Object.entries(needs.auto_map ?? {})) {
    if (!auto.startsWith("AutoModel")) continue;
    const local = target.includes("--") ? target.split("--").pop()! : target;
    const module = local.split(".").slice(0, -1).join("/");
    if (module) files.add(`${module}.py`);
  }
  return [...files];
}
