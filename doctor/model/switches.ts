// A remote-code model's own switches for its attention, found by reading its modeling source as text (never
// importing or running it): config flags it reads (OLMo's `flash_attention`, `use_flash_attn`), environment
// variables it consults, transformers' class flags it sets (`_supports_flash_attn_2 = True`), and whether it imports
// flash_attn itself. Each with the file and line, because that is where users get stuck. Pure: text in, switches out.

export interface ModelSwitch {
  file: string;
  /** 1-based */
  line: number;
  kind: "config" | "env" | "class_flag" | "import";
  /** the config attribute, variable, class flag ("_supports_sdpa") or module */
  name: string;
  /** a class flag's value */
  value?: boolean;
  /** the source line, trimmed and shortened */
  text: string;
}

/** Attribute or variable names that are about the attention implementation. */
const ATTENTION_WORD = /flash|attn_impl|attention_impl|sdpa|xformers|attn_implementation/i;
const CONFIG_READ = [
  /\bconfig\.([A-Za-z_]\w*)/g,
  /getattr\(\s*(?:self\.)?config\s*,\s*["']([A-Za-z_]\w*)["']/g,
];
const ENV_READ = [
  /os\.environ(?:\.get)?\s*[[(]\s*["']([A-Za-z_]\w*)["']/g,
  /os\.getenv\(\s*["']([A-Za-z_]\w*)["']/g,
];
const CLASS_FLAG = /^\s*(_supports_(?:flash_attn_2|flash_attn|sdpa|flex_attn|attention_backend))\s*(?::\s*bool\s*)?=\s*(True|False)\b/;
const IMPORT = /^\s*(?:from\s+(flash_attn\w*)[\w.]*\s+import|import\s+(flash_attn\w*))/;
/** Enough for any real modeling file's switches; a file listing thousands is not one to trust further. */
const MAX_SWITCHES = 40;
const MAX_TEXT = 160;

/** The attention switches in one modeling file's text. */
export function findSwitches(file: string, source: string): ModelSwitch[] {
  const found: ModelSwitch[] = [];
  const seen = new Set<string>();
  const add = (s: Omit<ModelSwitch, "file" | "text">, text: string) => {
    const key = `${s.kind}:${s.name}`;
    if (seen.has(key) || found.length >= MAX_SWITCHES) return;
    seen.add(key);
    const trimmed = text.trim();
    found.push({ file, ...s, text: trimmed.length > MAX_TEXT ? `${trimmed.slice(0, MAX_TEXT)}...` : trimmed });
  };
  const lines = source.split("\n");
  for (let i = 0; i < lines.length && found.length < MAX_SWITCHES; i++) {
    const text = lines[i];
    if (/^\s*#/.test(text)) continue;
    const line = i + 1;
    const flag = CLASS_FLAG.exec(text);
    if (flag) add({ line, kind: "class_flag", name: flag[1], value: flag[2] === "True" }, text);
    const imported = IMPORT.exec(text);
    if (imported) add({ line, kind: "import", name: imported[1] ?? imported[2] }, text);
    for (const re of CONFIG_READ) {
      for (const m of text.matchAll(re)) if (ATTENTION_WORD.test(m[1])) add({ line, kind: "config", name: m[1] }, text);
    }
    for (const re of ENV_READ) {
      for (const m of text.matchAll(re)) if (ATTENTION_WORD.test(m[1]) || /ATTN|ATTENTION/i.test(m[1])) add({ line, kind: "env", name: m[1] }, text);
    }
  }
  return found;
}
