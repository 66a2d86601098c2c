// `doctor --model PATH`: the attention each real family needs (derived from its published config.json, written in
// test/fixtures/models/), the verdict for each attention implementation on recorded machines (pure rules over
// doctor fixtures), the model's own switches in remote code, bad input (one line, exit 2), and the CLI on every
// family with a fake python3 on PATH that answers as a real transformers 4.48 would, --json → --facts round trip.
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { adviseModel, implementationVerdicts, type ModelAdvice, modelFindings } from "../doctor/model/advice.ts";
import { modelProblems, problemText } from "../doctor/model/kernels.ts";
import { deriveNeeds, type ModelNeeds } from "../doctor/model/needs.ts";
import type { ModelFacts, TransformersFacts } from "../doctor/model/probe.ts";
import { readModel } from "../doctor/model/read.ts";
import { findSwitches } from "../doctor/model/switches.ts";
import type { DoctorFacts, DoctorReport } from "../doctor/facts.ts";
import { validate, validateFactsPart } from "../doctor/schema.ts";
import { FlashAttnError } from "../lib/errors.ts";
import { applyPatch, loadFixture } from "./fixtures/doctor/load.ts";

const root = path.resolve(import.meta.dir, "..");
const models = path.join(root, "test", "fixtures", "models");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-model-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

const configOf = (family: string) => JSON.parse(fs.readFileSync(path.join(models, family, "config.json"), "utf8"));
const needsOf = (family: string): ModelNeeds => deriveNeeds(configOf(family));

describe("derived needs, one family at a time (pure: the parsed config in, the needs out)", () => {
  test("Llama 3.1 8B: GQA 32/8, head_dim 128, llama3 rope scaling ×8, 131072 positions, bf16", () => {
    expect(needsOf("llama-3.1-8b")).toEqual({
      model_type: "llama",
      architectures: ["LlamaForCausalLM"],
      dtype: "bf16",
      text: {
        part: "text", model_type: "llama", heads: 32, kv_heads: 8, head_dim_qk: 128, head_dim_v: 128, layers: 32,
        causal: true, alibi: false, dropout: 0, max_positions: 131072,
        rotary: { theta: 500000, scaling: "llama3", factor: 8 },
      },
    });
  });
  test("Mistral 7B: a 4096-token window on every layer", () => {
    expect(needsOf("mistral-7b-v0.1").text).toMatchObject({ heads: 32, kv_heads: 8, sliding_window: 4096, window_layers: "all" });
  });
  test("Mixtral 8x7B: sliding_window null means none", () => {
    const t = needsOf("mixtral-8x7b").text;
    expect(t).toMatchObject({ heads: 32, kv_heads: 8, head_dim_qk: 128, rotary: { theta: 1e6 } });
    expect(t.sliding_window).toBeUndefined();
  });
  test("Gemma 2 9B: head_dim 256 (not hidden/heads), softcap 50, even layers slide, stored fp32", () => {
    const n = needsOf("gemma-2-9b");
    expect(n.dtype).toBe("fp32");
    expect(n.text).toMatchObject({ heads: 16, kv_heads: 8, head_dim_qk: 256, head_dim_v: 256, softcap: 50, sliding_window: 4096 });
    expect(n.text.window_layers).toBe("even layers (21 of 42); odd layers are global");
  });
  test("Qwen2 7B: sliding_window set but use_sliding_window false, so no window", () => {
    const t = needsOf("qwen2-7b").text;
    expect(t).toMatchObject({ heads: 28, kv_heads: 4, head_dim_qk: 128, window_layers: "use_sliding_window is false" });
    expect(t.sliding_window).toBeUndefined();
    // ... and with it on, the layers from max_window_layers up slide.
    const on = deriveNeeds({ ...configOf("qwen2-7b"), use_sliding_window: true, max_window_layers: 21, sliding_window: 4096 });
    expect(on.text).toMatchObject({ sliding_window: 4096, window_layers: "layers 21 and up" });
  });
  test("Phi-3 mini: MHA, head_dim 96, window 2047", () => {
    expect(needsOf("phi-3-mini-4k").text).toMatchObject({ heads: 32, kv_heads: 32, head_dim_qk: 96, sliding_window: 2047 });
  });
  test("Falcon 7B: multi_query means one KV head; 71 heads of 64", () => {
    expect(needsOf("falcon-7b").text).toMatchObject({ heads: 71, kv_heads: 1, head_dim_qk: 64, alibi: false, max_positions: 2048 });
  });
  test("Bloom 560m: ALiBi by family, no rotary, no torch_dtype stated", () => {
    const n = needsOf("bloom-560m");
    expect(n.text).toMatchObject({ heads: 16, kv_heads: 16, head_dim_qk: 64, alibi: true, layers: 24 });
    expect(n.text.rotary).toBeUndefined();
    expect(n.dtype).toBeUndefined();
  });
  test("MPT 7B: ALiBi from attn_config, remote code named by auto_map", () => {
    const n = needsOf("mpt-7b");
    expect(n.text).toMatchObject({ heads: 32, head_dim_qk: 128, alibi: true, max_positions: 2048 });
    expect(n.auto_map?.AutoModelForCausalLM).toBe("modeling_mpt.MPTForCausalLM");
  });
  test("OLMo 7B (remote code): d_model/n_heads, max_sequence_length, auto_map's tokenizer list read", () => {
    const n = needsOf("olmo-7b");
    expect(n.text).toMatchObject({ heads: 32, kv_heads: 32, head_dim_qk: 128, max_positions: 2048 });
    expect(n.auto_map).toMatchObject({ AutoModelForCausalLM: "modeling_olmo.OLMoForCausalLM", AutoTokenizer: "tokenization_olmo_fast.OLMoTokenizerFast" });
  });
  test("DeepSeek-V2 Lite: MLA's Q/K head dim 128+64 = 192 against V 128, yarn ×40", () => {
    const t = needsOf("deepseek-v2-lite").text;
    expect(t).toMatchObject({ heads: 16, kv_heads: 16, head_dim_qk: 192, head_dim_v: 128, rotary: { dim: 64, scaling: "yarn", factor: 40 } });
  });
  test("LLaVA 1.5: the text model from text_config (Llama defaults filled in) and the CLIP vision tower", () => {
    const n = needsOf("llava-1.5-7b");
    expect(n.dtype).toBe("fp16");
    expect(n.text).toMatchObject({ part: "text", model_type: "llama", heads: 32, kv_heads: 32, head_dim_qk: 128, causal: true, max_positions: 4096 });
    expect(n.vision).toMatchObject({ part: "vision", model_type: "clip_vision_model", heads: 16, head_dim_qk: 64, causal: false, tokens: 577 });
  });
  test("the problems flashattn is asked: window (W-1, 0), softcap, ALiBi, V padded, the vision tower non-causal", () => {
    expect(modelProblems(needsOf("mistral-7b-v0.1")).map(problemText)).toEqual(["bf16 forward, seqlen 4096, heads 32/8, head_dim 128, causal, window (4095, 0)"]);
    expect(problemText(modelProblems(needsOf("gemma-2-9b"))[0])).toContain("head_dim 256, causal, window (4095, 0), softcap 50");
    expect(problemText(modelProblems(needsOf("bloom-560m"))[0])).toBe("bf16 forward, seqlen 2048, heads 16/16, head_dim 64, causal, ALiBi");
    expect(modelProblems(needsOf("deepseek-v2-lite"))[0].headDim).toBe(192);
    expect(modelProblems(needsOf("llava-1.5-7b")).map(problemText)).toEqual([
      "fp16 forward, seqlen 4096, heads 32/32, head_dim 128, causal",
      "fp16 forward, seqlen 577, heads 16/16, head_dim 64",
    ]);
  });
});

describe("configs that cannot be right: one BAD_INPUT sentence", () => {
  const refuses = (config: unknown, words: string) => {
    let error: unknown;
    try {
      deriveNeeds(config);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlashAttnError);
    expect((error as FlashAttnError).code).toBe("BAD_INPUT");
    expect((error as FlashAttnError).message).toContain(words);
  };
  test("not an object, no heads, heads of the wrong type or size, GQA that does not divide, no dims", () => {
    refuses([1, 2], "not a JSON object");
    refuses({ hidden_size: 4096 }, "has no attention head count");
    refuses({ num_attention_heads: "32", hidden_size: 4096 }, `num_attention_heads must be a whole number from 1 to 65536, got "32"`);
    refuses({ num_attention_heads: 1e300, hidden_size: 4096 }, "num_attention_heads must be a whole number");
    refuses({ num_attention_heads: 32, num_key_value_heads: 5, hidden_size: 4096 }, "not a multiple of the 5 key/value heads");
    refuses({ num_attention_heads: 32 }, "neither head_dim nor hidden_size");
    refuses({ num_attention_heads: 32, hidden_size: 4001 }, "hidden_size 4001 is not a multiple of the 32 heads");
    refuses({ num_attention_heads: 32, hidden_size: 4096, attn_logit_softcapping: -1 }, "attn_logit_softcapping must be a finite number ≥ 0");
    refuses({ text_config: { model_type: "mystery" }, vision_config: {} }, "text_config has no attention head count");
    refuses({ num_attention_heads: 8, hidden_size: 512, layer_types: ["sliding_attention"] }, "sliding_window is not set");
  });
});

describe("remote code read as text: the model's own switches with file and line", () => {
  test("OLMo-style: the config flag, the environment variable, the flash_attn import", () => {
    const source = fs.readFileSync(path.join(models, "olmo-7b", "modeling_olmo.py"), "utf8");
    const found = findSwitches("modeling_olmo.py", source).map((s) => `${s.kind}:${s.name}@${s.line}`);
    expect(found).toEqual(["config:flash_attention@18", "env:OLMO_DISABLE_FLASH_ATTN@20", "import:flash_attn@25"]);
  });
  test("class flags with their values; comments and unrelated config reads are not switches", () => {
    const text = [
      "class M(PreTrainedModel):",
      "    _supports_flash_attn_2 = True",
      "    _supports_sdpa: bool = False",
      "    # config.use_flash_attn is documented here, not read",
      "    h = config.hidden_size",
      "    impl = getattr(config, 'attn_implementation', 'eager')",
      "    fast = os.getenv('MYMODEL_USE_FLASH')",
    ].join("\n");
    expect(findSwitches("m.py", text).map((s) => [s.kind, s.name, s.value ?? null, s.line])).toEqual([
      ["class_flag", "_supports_flash_attn_2", true, 2],
      ["class_flag", "_supports_sdpa", false, 3],
      ["config", "attn_implementation", null, 6],
      ["env", "MYMODEL_USE_FLASH", null, 7],
    ]);
  });
});

// ---- verdicts on recorded machines (pure) -----------------------------------------------------------------------

/** What transformers 4.48 says about these classes (their _supports_* flags in that release). */
const classFlags: TransformersFacts["classes"] = {
  LlamaForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  MistralForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  MixtralForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  Gemma2ForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  Qwen2ForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  Phi3ForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: false },
  FalconForCausalLM: { found: true, flash_attn_2: true, sdpa: true, flex: false },
  BloomForCausalLM: { found: true, flash_attn_2: false, sdpa: false, flex: false },
  LlavaForConditionalGeneration: { found: true, flash_attn_2: true, sdpa: true, flex: true },
  OLMoForCausalLM: { found: false, error: "AttributeError: module transformers has no attribute OLMoForCausalLM" },
  DeepseekV2ForCausalLM: { found: false, error: "AttributeError: module transformers has no attribute DeepseekV2ForCausalLM" },
  MPTForCausalLM: { found: false, error: "AttributeError: module transformers has no attribute MPTForCausalLM" },
};
const transformers448: TransformersFacts = { status: "ok", version: "4.48.3", model_type_known: true, classes: classFlags };

/** A recorded machine with flash_attn `version` installed (or none). */
function machine(fixture: string, flashAttn?: string): DoctorFacts {
  const facts = loadFixture(`${fixture}.json`).report.facts;
  const patch = flashAttn ? { installed: true, version: flashAttn, importable: true } : { installed: false };
  return applyPatch(facts as never, { python: { flash_attn: patch } } as never) as unknown as DoctorFacts;
}

function modelOn(family: string, backend: "cuda" | "cpu" = "cuda", transformers = transformers448): ModelFacts {
  const source = readModel(path.join(models, family));
  const parts = modelProblems(source.needs).map((p) => ({
    part: p.part,
    problem: problemText(p),
    decisions: [{ backend, verdict: "chosen" as const, reasons: [], kernel: `${backend}_flash_fwd` }],
    chosen: backend,
  }));
  return { ...source, transformers, kernels: { status: "ok", parts } };
}

const verdictsOf = (a: ModelAdvice) => Object.fromEntries(a.implementations.map((v) => [v.name, v.verdict]));
const blockersOf = (a: ModelAdvice, name: string) => a.implementations.find((v) => v.name === name)!.blockers.map((b) => b.reason).join(" | ");

describe("verdicts and the line to use, on an H100 with flash_attn 2.7.4 (pure rules)", () => {
  const h100 = machine("h100", "2.7.4.post1");
  test.each([
    ["llama-3.1-8b", "torch.bfloat16"],
    ["mistral-7b-v0.1", "torch.bfloat16"],
    ["mixtral-8x7b", "torch.bfloat16"],
    ["gemma-2-9b", "torch.bfloat16"],
    ["qwen2-7b", "torch.bfloat16"],
    ["phi-3-mini-4k", "torch.bfloat16"],
    ["falcon-7b", "torch.bfloat16"],
  ])("%s: flash_attention_2 recommended, loaded in half precision; off means sdpa", (family, dtype) => {
    const a = adviseModel(modelOn(family), h100);
    expect(verdictsOf(a).flash_attention_2).toBe("recommended");
    expect(a.use).toEqual({ line: `AutoModelForCausalLM.from_pretrained(path, attn_implementation="flash_attention_2", torch_dtype=${dtype})`, ready: true });
    if (family !== "gemma-2-9b") expect(a.disable.line).toStartWith(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa"`);
  });
  test("Gemma 2: SDPA refused for its softcap, so turning flash off means flex_attention in its stored fp32", () => {
    const a = adviseModel(modelOn("gemma-2-9b"), h100);
    expect(blockersOf(a, "sdpa")).toContain("SDPA applies no logit softcap (the model needs 50)");
    expect(a.disable.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="flex_attention", torch_dtype=torch.float32)`);
  });
  test("Bloom: transformers supports neither flash_attention_2 nor sdpa for it: eager, in the default dtype", () => {
    const a = adviseModel(modelOn("bloom-560m"), h100);
    expect(verdictsOf(a)).toMatchObject({ flash_attention_2: "unavailable", sdpa: "unavailable", flex_attention: "unavailable", eager: "recommended" });
    expect(blockersOf(a, "flash_attention_2")).toBe(`BloomForCausalLM in transformers 4.48.3 does not declare flash_attention_2 support, so transformers refuses attn_implementation="flash_attention_2"`);
    expect(a.use.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")`);
    expect(a.enable).toBeUndefined();
  });
  test("OLMo (remote code): attn_implementation refused, its own config.flash_attention is the way in and out", () => {
    const a = adviseModel(modelOn("olmo-7b"), h100);
    expect(blockersOf(a, "flash_attention_2")).toContain("the model's own switch is config.flash_attention (modeling_olmo.py:18)");
    expect(a.use).toEqual({ line: "AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, flash_attention=True, torch_dtype=torch.bfloat16)", ready: true });
    expect(a.disable.line).toBe("AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, flash_attention=False)");
    expect(a.disable.note).toBe("the model's own switch: modeling_olmo.py:18 reads config.flash_attention; the model's code also reads OLMO_DISABLE_FLASH_ATTN (modeling_olmo.py:20)");
  });
  test("DeepSeek-V2: Q/K 192 vs V 128 rules flash_attn 2 out; its modeling file is missing; flashattn pads V", () => {
    const a = adviseModel(modelOn("deepseek-v2-lite"), h100);
    const fa2 = blockersOf(a, "flash_attention_2");
    expect(fa2).toContain("Q/K head_dim 192 differs from V head_dim 128");
    expect(fa2).toContain("modeling_deepseek.py is not in this directory");
    expect(a.enable).toBeUndefined();
    expect(a.implementations.find((v) => v.name === "flashattn")!.notes).toContain("V padded from head_dim 128 to 192: the library takes one head_dim");
    // sdpa and flex wait for the modeling file; eager is certain.
    expect(a.use).toEqual({ line: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager", torch_dtype=torch.bfloat16)`, ready: true });
  });
  test("LLaVA: its own class, fp16, and a per-part way to turn flash off", () => {
    const a = adviseModel(modelOn("llava-1.5-7b"), h100);
    expect(a.use.line).toBe(`LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="flash_attention_2", torch_dtype=torch.float16)`);
    expect(a.disable.line).toBe(`LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.float16)`);
    expect(a.disable.note).toContain(`{"text_config": "sdpa", "vision_config": "eager"}`);
  });
  test("MPT: remote code without its modeling file: support unknown, said as such", () => {
    const a = adviseModel(modelOn("mpt-7b"), h100);
    expect(blockersOf(a, "sdpa")).toBe("whether the model's own code supports sdpa is unknown: modeling_mpt.py is not in this directory");
    expect(verdictsOf(a).eager).toBe("recommended");
  });
});

describe("verdicts that depend on the machine (pure rules)", () => {
  test("flash_attn too old for the feature: softcap needs 2.6, a sliding window 2.3, ALiBi 2.4", () => {
    const gemma = adviseModel(modelOn("gemma-2-9b"), machine("h100", "2.5.9"));
    expect(blockersOf(gemma, "flash_attention_2")).toBe("flash_attn 2.5.9 has no logit softcap (the model needs it); it came in flash_attn 2.6.0");
    expect(verdictsOf(gemma).flex_attention).toBe("recommended");
    expect(gemma.enable).toMatchObject({ ready: false, after: "flash_attn 2.5.9 has no logit softcap (the model needs it); it came in flash_attn 2.6.0" });
    const mistral = adviseModel(modelOn("mistral-7b-v0.1"), machine("h100", "2.1.0"));
    expect(blockersOf(mistral, "flash_attention_2")).toContain("flash_attn 2.1.0 has no sliding window");
    expect(adviseModel(modelOn("mistral-7b-v0.1"), machine("h100", "2.3.0")).implementations[0].verdict).toBe("recommended");
  });
  test("head_dim above 256 and ALiBi before flash_attn 2.4; an MI250X (CK's gfx90a) runs flash_attn", () => {
    const wide = modelOn("llama-3.1-8b");
    wide.needs = { ...wide.needs, text: { ...wide.needs.text, head_dim_qk: 512, head_dim_v: 512 } };
    expect(blockersOf(adviseModel(wide, machine("h100", "2.7.4")), "flash_attention_2")).toBe("head_dim 512 is above flash_attn 2's 256");
    const alibiFalcon = modelOn("falcon-7b");
    alibiFalcon.needs = deriveNeeds({ ...configOf("falcon-7b"), alibi: true });
    expect(alibiFalcon.needs.text.rotary).toBeUndefined();
    expect(blockersOf(adviseModel(alibiFalcon, machine("h100", "2.3.6")), "flash_attention_2")).toBe("flash_attn 2.3.6 has no ALiBi (the model needs it); it came in flash_attn 2.4.0");
    expect(adviseModel(modelOn("llama-3.1-8b", "cuda"), machine("mi250x-rocm6", "2.7.4")).implementations[0].verdict).toBe("recommended");
  });
  test("a T4 (sm_75): flash_attn 2 cannot run there, SDPA is the line", () => {
    const a = adviseModel(modelOn("llama-3.1-8b"), machine("t4", "2.7.4.post1"));
    expect(blockersOf(a, "flash_attention_2")).toContain("is sm_75; flash_attn 2 needs sm_80 or newer");
    expect(a.use.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.bfloat16)`);
    expect(a.enable).toMatchObject({ ready: false });
  });
  test("no transformers: nothing of it is usable, the line is still given with what it waits for", () => {
    const absent: TransformersFacts = { status: "absent", error: "transformers not installed (ModuleNotFoundError: No module named 'transformers')" };
    const a = adviseModel(modelOn("llama-3.1-8b", "cpu", absent), machine("cpu-only"));
    expect(verdictsOf(a)).toEqual({ flash_attention_2: "unavailable", sdpa: "unavailable", flex_attention: "unavailable", eager: "unavailable", flashattn: "usable" });
    expect(a.use.ready).toBe(false);
    expect(a.use.after).toContain("transformers not installed");
    expect(a.use.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.bfloat16)`);
  });
  test("--no-python: neither transformers nor flash_attn is guessed at; the fix says how to check them", () => {
    const skipped: TransformersFacts = { status: "absent", error: "transformers was not asked (--no-python)" };
    const facts = applyPatch(machine("h100") as never, { python: { status: "absent", error: "skipped (--no-python)", flash_attn: null, torch: null } } as never) as unknown as DoctorFacts;
    const m = modelOn("llama-3.1-8b", "cuda", skipped);
    const a = adviseModel(m, facts);
    expect(blockersOf(a, "flash_attention_2")).toBe("transformers was not asked (--no-python)");
    const use = modelFindings(m, a).find((x) => x.id === "model.use")!;
    expect(use).toMatchObject({ severity: "warning", fix: "transformers was not asked (--no-python): run the doctor without --no-python to check the Python stack" });
  });
  test("flashattn's own kernels: the decision as recorded, a problem outside the library said as a model blocker", () => {
    const m = modelOn("llama-3.1-8b");
    m.kernels.parts[0] = { part: "text", problem: "bf16 forward, seqlen 4096, heads 8/8, head_dim 512, causal", decisions: [], error: "head_dim 512 is out of range (1..256)" };
    const v = implementationVerdicts(m, machine("h100"));
    expect(v.find((x) => x.name === "flashattn")).toMatchObject({ verdict: "unavailable", blockers: [{ by: "model", reason: "text: head_dim 512 is out of range (1..256)" }] });
  });
});

describe("reading a model from disk: bad input is one BAD_INPUT sentence", () => {
  const refuses = (where: string, words: string) => {
    let error: unknown;
    try {
      readModel(where);
    } catch (e) {
      error = e;
    }
    expect((error as FlashAttnError)?.code).toBe("BAD_INPUT");
    expect((error as FlashAttnError).message).toContain(words);
  };
  const dir = (name: string, files: Record<string, string>) => {
    const d = path.join(scratch, name);
    fs.mkdirSync(d, { recursive: true });
    for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(d, f), text);
    return d;
  };
  test("missing path, directory without config.json, malformed, huge and deep JSON, a FIFO", () => {
    refuses(path.join(scratch, "nope"), "no such file or directory");
    refuses(dir("empty", {}), "has no config.json");
    refuses(path.join(dir("malformed", { "config.json": "{\"num_attention_heads\": 32," }), "config.json"), "cannot be read as JSON");
    refuses(dir("deep", { "config.json": "[".repeat(100_000) + "]".repeat(100_000) }), "nested more than 64 levels deep");
    const huge = dir("huge", {});
    fs.writeFileSync(path.join(huge, "config.json"), "");
    fs.truncateSync(path.join(huge, "config.json"), 5 << 20);
    refuses(huge, "bytes; a model's file of this kind is far smaller");
    const fifoDir = dir("fifo", {});
    const made = spawnSync("mkfifo", [path.join(fifoDir, "config.json")]);
    if (made.status === 0) {
      refuses(fifoDir, "is not a regular file");
      refuses(path.join(fifoDir, "config.json"), "is neither a directory nor a regular file");
    }
  });
});

// ---- the CLI ----------------------------------------------------------------------------------------------------

const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");
const bun = path.join(root, "node_modules", ".bin", "bun");

/** A python3 that answers the doctor's two scripts as Python 3.11 with torch 2.5.1 (CPU) and transformers 4.48.3 would. */
const fakePythonDir = path.join(scratch, "bin");
fs.mkdirSync(fakePythonDir);
const stack = {
  status: "ok", executable: path.join(fakePythonDir, "python3"), version: "3.11.2",
  torch: { installed: true, version: "2.5.1+cpu", importable: true, cuda: null, hip: null, cuda_available: false, device_count: 0, arch_list: [], devices: [] },
  flash_attn: { installed: false }, flash_attn_3: { installed: false }, triton: { installed: false },
  transformers: { installed: true, version: "4.48.3", importable: true, flash_attn_2_available: false, sdpa_available: true },
};
fs.writeFileSync(path.join(fakePythonDir, "python3"), [
  "#!/bin/sh",
  'case "$1" in',
  `*python_stack.py) echo '${JSON.stringify(stack)}' ;;`,
  `*transformers_probe.py) echo '${JSON.stringify(transformers448)}' ;;`,
  "*) echo unexpected script >&2; exit 3 ;;",
  "esac",
].join("\n"), { mode: 0o755 });

function doctor(args: string[]) {
  const r = spawnSync(bun, ["cli.ts", "doctor", "--no-self-test", ...args], {
    cwd: root,
    env: { PATH: `${fakePythonDir}:${path.join(root, "node_modules", ".bin")}:/usr/bin:/bin`, HOME: os.homedir(), NO_COLOR: "1" },
    encoding: "utf8",
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const families = fs.readdirSync(models).sort();

describe.skipIf(!hasCpuLibrary || hasGpu)("flashattn doctor --model on this CPU-only machine", () => {
  test("there are at least ten families", () => expect(families.length).toBeGreaterThanOrEqual(10));
  test.each(families)("%s: --json is schema-valid with the advice; --facts replays it to the same; human shows it", (family) => {
    const dir = path.join(models, family);
    const r = doctor(["--json", "--model", dir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as DoctorReport;
    expect(validate(report)).toEqual([]);
    const advice = report.model!;
    expect(advice.model).toBe(`${report.facts.model!.needs.model_type} (${report.facts.model!.needs.architectures[0]})`);
    // No GPU here: flash_attention_2 never; the CPU library serves the model's shape (a real decision).
    expect(advice.implementations[0]).toMatchObject({ name: "flash_attention_2", verdict: "unavailable" });
    expect(advice.implementations[0].blockers.map((b) => b.reason)).toContain("no GPU here; flash_attn 2 runs on NVIDIA sm_80+ (or AMD MI200/MI300 via CK)");
    const ours = advice.implementations.find((v) => v.name === "flashattn")!;
    expect(ours.verdict).toBe("usable");
    expect(report.facts.model!.kernels.parts.every((p) => p.chosen === "cpu")).toBe(true);
    expect(advice.use.line).toMatch(/\.from_pretrained\(path, /);

    const saved = path.join(scratch, `${family}.json`);
    fs.writeFileSync(saved, r.stdout);
    const replay = doctor(["--json", "--facts", saved]);
    expect(replay.code).toBe(0);
    const again = JSON.parse(replay.stdout) as DoctorReport;
    expect(again.model).toEqual(report.model);
    expect(again.findings).toEqual(report.findings);

    const human = doctor(["--model", dir]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain("\nModel\n");
    expect(human.stdout).toContain(`use: ${advice.use.line}`);
    expect(human.stdout).toContain(`flashattn: usable — text: cpu`);
  });
  test("a replay edited to another verdict recomputes the advice (no stale advice survives)", () => {
    const r = doctor(["--json", "--model", path.join(models, "bloom-560m")]);
    const report = JSON.parse(r.stdout) as DoctorReport;
    report.facts.model!.transformers.classes!.BloomForCausalLM = { found: true, flash_attn_2: false, sdpa: true, flex: false };
    const saved = path.join(scratch, "bloom-edited.json");
    fs.writeFileSync(saved, JSON.stringify(report));
    const again = JSON.parse(doctor(["--json", "--facts", saved]).stdout) as DoctorReport;
    expect(again.model!.use.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")`);
    expect(report.model!.use.line).toBe(`AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")`);
  });
  test("bad input: one line on stderr, exit 2, before any probe runs", () => {
    const fifo = path.join(scratch, "fifo-cli");
    fs.mkdirSync(fifo);
    spawnSync("mkfifo", [path.join(fifo, "config.json")]);
    const cases: Array<[string, string]> = [
      [path.join(scratch, "missing"), "no such file or directory"],
      [scratch, "has no config.json"],
      [fifo, "is not a regular file"],
    ];
    for (const [where, words] of cases) {
      const r = doctor(["--model", where]);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain(words);
      expect(r.stderr).not.toContain("probing");
    }
    const both = doctor(["--model", path.join(models, "llama-3.1-8b"), "--facts", path.join(scratch, "x.json")]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("--model applies only to a live check");
  });
});

describe("a python3 that answers nonsense", () => {
  test("its transformers answer becomes a probe error that says why; the report stays valid", async () => {
    const { collectModelFacts } = await import("../doctor/model/probe.ts");
    const dir = path.join(scratch, "liar");
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "python3"), `#!/bin/sh\necho '{"status":"ok","classes":{"LlamaForCausalLM":{"found":"yes"}}}'\n`, { mode: 0o755 });
    const facts = await collectModelFacts(readModel(path.join(models, "llama-3.1-8b")), { env: { ...process.env, PATH: `${dir}:/usr/bin:/bin` } });
    expect(facts.transformers.status).toBe("error");
    expect(facts.transformers.error).toContain(`the transformers probe's result does not fit the report schema (facts.model.transformers.classes.LlamaForCausalLM.found: expected boolean, got string)`);
    expect(validateFactsPart(facts, "model")).toEqual([]);
  });
});

describe("transformers is not installed here: the probe says so", () => {
  test.skipIf(!fs.existsSync("/usr/bin/python3"))("the real python3 of this machine, asked about Llama", async () => {
    const { probeTransformers } = await import("../doctor/model/probe.ts");
    const facts = await probeTransformers(readModel(path.join(models, "llama-3.1-8b")), { PATH: "/usr/bin:/bin" });
    if (facts.status === "ok") return; // a machine with transformers: nothing to check here
    expect(facts).toMatchObject({ status: "absent", executable: "/usr/bin/python3" });
    expect(facts.error).toMatch(/^transformers not installed \(.*No module named 'transformers'/);
  });
});
