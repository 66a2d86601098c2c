// The report schema (doctor/schema.json) and a validator for the subset of JSON Schema it uses: type, const, enum,
// properties, required, additionalProperties, items, minimum, pattern, anyOf, allOf and local $ref. Our own small
// validator rather than a dependency: the subset is tiny, it must run on Bun and Deno alike, and `--facts` needs
// it at runtime to refuse a file that is not a doctor report before any rule reads it.
import fs from "node:fs";
import schemaJson from "./schema.json" with { type: "json" };
import { FlashAttnError } from "../lib/errors.ts";
import { parseJsonBounded } from "../lib/json.ts";
import { type DoctorReport, REPORT_SCHEMA_ID } from "./facts.ts";

const reportSchema = schemaJson as unknown as Schema;

interface Schema {
  $ref?: string;
  type?: string | string[];
  const?: unknown;
  enum?: unknown[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  items?: Schema;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  anyOf?: Schema[];
  allOf?: Schema[];
  $defs?: Record<string, Schema>;
}

function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  // An integer JSON cannot carry exactly (beyond 2^53, 1e308) is no index or count: it would name "gpu1e+308".
  if (typeof value === "number") return Number.isSafeInteger(value) ? "integer" : "number";
  return typeof value;
}

const typeMatches = (want: string, got: string) => want === got || (want === "number" && got === "integer");

/** Every violation of `schema` by `value`, as "path: problem" lines (empty when valid). At most `limit`. */
export function validate(value: unknown, schema: Schema = reportSchema, root: Schema = schema, limit = 20): string[] {
  const errors: string[] = [];
  const visit = (v: unknown, s: Schema, path: string): void => {
    if (errors.length >= limit) return;
    if (s.$ref) {
      const name = /^#\/\$defs\/(.+)$/.exec(s.$ref)?.[1];
      const target = name ? root.$defs?.[name] : undefined;
      if (!target) {
        errors.push(`${path}: unresolvable $ref ${s.$ref}`);
        return;
      }
      visit(v, target, path);
    }
    for (const sub of s.allOf ?? []) visit(v, sub, path);
    if (s.anyOf) {
      const ok = s.anyOf.some((sub) => validate(v, sub, root, 1).length === 0);
      if (!ok) errors.push(`${path}: matches none of the allowed forms`);
    }
    const got = typeOf(v);
    if (s.type !== undefined) {
      const wants = Array.isArray(s.type) ? s.type : [s.type];
      if (!wants.some((w) => typeMatches(w, got))) {
        errors.push(`${path}: expected ${wants.join(" or ")}, got ${got}`);
        return;
      }
    }
    if ("const" in s && v !== s.const) errors.push(`${path}: must be ${JSON.stringify(s.const)}`);
    if (s.enum && !s.enum.includes(v)) {
      errors.push(`${path}: must be one of ${s.enum.map((e) => JSON.stringify(e)).join(", ")}`);
    }
    if (typeof v === "number") {
      if (s.minimum !== undefined && v < s.minimum) errors.push(`${path}: must be ≥ ${s.minimum}`);
      if (s.maximum !== undefined && v > s.maximum) errors.push(`${path}: must be ≤ ${s.maximum}`);
    }
    if (typeof v === "string" && s.pattern && !new RegExp(s.pattern).test(v)) {
      errors.push(`${path}: does not match ${s.pattern}`);
    }
    if (Array.isArray(v) && s.items) v.forEach((item, i) => visit(item, s.items!, `${path}[${i}]`));
    if (got === "object" && (s.properties || s.required || s.additionalProperties !== undefined)) {
      const obj = v as Record<string, unknown>;
      for (const key of s.required ?? []) if (!(key in obj)) errors.push(`${path}: missing "${key}"`);
      for (const [key, item] of Object.entries(obj)) {
        const sub = s.properties?.[key];
        if (sub) visit(item, sub, `${path}.${key}`);
        else if (s.additionalProperties === false) errors.push(`${path}: unexpected property "${key}"`);
        else if (typeof s.additionalProperties === "object") visit(item, s.additionalProperties, `${path}.${key}`);
      }
    }
  };
  visit(value, schema, "$");
  return errors.slice(0, limit);
}

/** The facts of one probe, as a dotted path under the report's `facts` ("python", "nvidia.nvml"). */
export type FactsPart =
  | "nvidia.nvml"
  | "nvidia.cuda_driver"
  | "nvidia.smi"
  | "amd.hip"
  | "amd.rocminfo"
  | "amd.amd_smi"
  | "toolkits.nvcc"
  | "toolkits.hipcc"
  | "flashattn"
  | "python"
  | "model"
  | "nccl";

/** Every violation of the report schema by `value` taken as the facts at `part` (a probe's result). */
export function validateFactsPart(value: unknown, part: FactsPart): string[] {
  let schema = reportSchema.$defs!.facts;
  for (const key of part.split(".")) schema = schema.properties![key];
  return validate(value, schema, reportSchema).map((problem) => problem.replace(/^\$/, `facts.${part}`));
}

/** Reports larger than this are not doctor reports (a real one is a few tens of KiB). */
export const MAX_REPORT_BYTES = 8 << 20;
/** Far deeper than any report (about 8 levels), far shallower than what overflows a recursive walk. */
const MAX_REPORT_DEPTH = 64;

/** Reads a report saved with `doctor --json`, refusing (as a usage error) anything that is not one. */
export function readSavedReport(path: string): DoctorReport {
  let fd: number;
  try {
    // Opened without blocking and then checked, so the file judged is the file read (a FIFO would block the read).
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw new FlashAttnError(
      "BAD_INPUT",
      `--facts ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`,
    );
  }
  let text: string;
  try {
    const stat = fs.fstatSync(fd);
    // A FIFO or a device would block the read (or never end); a report is a file.
    if (!stat.isFile()) throw new FlashAttnError("BAD_INPUT", `--facts ${path} is not a regular file`);
    if (stat.size > MAX_REPORT_BYTES) {
      throw new FlashAttnError("BAD_INPUT", `--facts ${path} is ${stat.size} bytes; a doctor report is far smaller`);
    }
    text = fs.readFileSync(fd, "utf8");
  } finally {
    fs.closeSync(fd);
  }
  let doc: unknown;
  try {
    doc = parseJsonBounded(text, { maxChars: MAX_REPORT_BYTES, maxDepth: MAX_REPORT_DEPTH });
  } catch (e) {
    throw new FlashAttnError(
      "BAD_INPUT",
      `--facts ${path} cannot be read as JSON: ${(e as Error).message}`,
      "pass a file written by `flashattn doctor --json`",
    );
  }
  const schema = (doc as { schema?: unknown })?.schema;
  if (typeof schema === "string" && schema.startsWith("flashattn.doctor/") && schema !== REPORT_SCHEMA_ID) {
    throw new FlashAttnError(
      "BAD_INPUT",
      `--facts ${path} is a ${schema} report; this flashattn reads ${REPORT_SCHEMA_ID}`,
      "re-run `flashattn doctor --json` on that machine with this flashattn version",
    );
  }
  const problems = validate(doc);
  if (problems.length) {
    throw new FlashAttnError(
      "BAD_INPUT",
      `--facts ${path} is not a valid doctor report: ${problems.slice(0, 3).join("; ")}`,
      "pass a file written by `flashattn doctor --json`",
    );
  }
  return doc as DoctorReport;
}
