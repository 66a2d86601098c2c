// Command-line tools, each run with a deadline: the compilers (nvcc, hipcc) and the vendors' own reporters as a
// second source (nvidia-smi, rocminfo, amd-smi). Parsers are exported for tests against captured output.
import path from "node:path";
import process from "node:process";
import type { AmdToolFacts, NvidiaSmiFacts, ToolFacts } from "../facts.ts";
import { type ExecResult, execWithTimeout, findExecutable, lastLine } from "./exec.ts";

type Env = Record<string, string | undefined>;
const TOOL_TIMEOUT_MS = 15_000;

/**
 * A tool looked up on PATH, then in the directories its toolkit variables name; `homeFirst` names the variable that
 * wins over PATH where it holds the tool (CUDA_HOME: kernels/build.ts and torch's extension builds use its nvcc).
 */
function locate(
  name: string,
  homes: [string, string | undefined][],
  fixed: string[],
  env: Env,
  homeFirst?: string,
): { path?: string; source?: string } {
  const first = homes.find(([variable, home]) => variable === homeFirst && home);
  const chosen = first && findExecutable(name, [path.join(first[1]!, "bin")], { PATH: "" });
  if (chosen) return { path: chosen, source: first[0] };
  const onPath = findExecutable(name, [], env);
  if (onPath) return { path: onPath, source: "PATH" };
  for (const [variable, home] of homes) {
    if (!home) continue;
    const found = findExecutable(name, [path.join(home, "bin")], { PATH: "" });
    if (found) return { path: found, source: variable };
  }
  for (const dir of fixed) {
    const found = findExecutable(name, [dir], { PATH: "" });
    if (found) return { path: found, source: dir };
  }
  return {};
}

function failed(r: ExecResult): { status: ToolFacts["status"]; error?: string } {
  const said = lastLine(r.stderr) || lastLine(r.stdout);
  return {
    status: r.status === "ok" ? "error" : r.status,
    error: said ? `${r.error}: ${said.slice(0, 300)}` : r.error,
  };
}

/** "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0" */
export const parseNvccVersion = (text: string) => /release (\d+\.\d+)/.exec(text)?.[1];
/** "HIP version: 5.2.21153-0" -> "5.2" */
export const parseHipccVersion = (text: string) => /HIP version:\s*(\d+\.\d+)/.exec(text)?.[1];

async function probeCompiler(
  name: string,
  homes: [string, string | undefined][],
  fixed: string[],
  parse: (text: string) => string | undefined,
  env: Env,
  homeFirst?: string,
): Promise<ToolFacts> {
  const where = locate(name, homes, fixed, env, homeFirst);
  if (!where.path) {
    return {
      status: "absent",
      error: `${name} not found on PATH${homes.map(([v]) => ` or in $${v}/bin`).join("")}`,
    };
  }
  const r = await execWithTimeout(where.path, ["--version"], { timeoutMs: TOOL_TIMEOUT_MS, env });
  const version = parse(r.stdout + r.stderr);
  if (r.status !== "ok" || !version) return { ...where, ...failed(r), ms: r.ms };
  return { status: "ok", ...where, version, ms: r.ms };
}

export const probeNvcc = (env: Env = process.env) =>
  probeCompiler(
    "nvcc",
    [["CUDA_HOME", env.CUDA_HOME], ["CUDA_PATH", env.CUDA_PATH]],
    ["/usr/local/cuda/bin"],
    parseNvccVersion,
    env,
    "CUDA_HOME",
  );

export const probeHipcc = (env: Env = process.env) =>
  probeCompiler("hipcc", [["ROCM_PATH", env.ROCM_PATH]], ["/opt/rocm/bin"], parseHipccVersion, env);

/** `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits` */
export function parseNvidiaSmiCsv(text: string): Pick<NvidiaSmiFacts, "driver_version" | "gpus"> {
  const gpus: NonNullable<NvidiaSmiFacts["gpus"]> = [];
  let driver: string | undefined;
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const [name, cc, memory, driverVersion] = line.split(",").map((f) => f.trim());
    if (!name || driverVersion === undefined) continue;
    gpus.push({
      name,
      compute_capability: /^\d+\.\d+$/.test(cc) ? cc : undefined,
      memory_mib: /^\d+$/.test(memory) ? Number(memory) : undefined,
    });
    driver ??= driverVersion;
  }
  return { driver_version: driver, gpus };
}

export async function probeNvidiaSmi(env: Env = process.env): Promise<NvidiaSmiFacts> {
  const smi = findExecutable("nvidia-smi", [], env);
  if (!smi) return { status: "absent", error: "nvidia-smi not found on PATH" };
  const r = await execWithTimeout(
    smi,
    ["--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"],
    { timeoutMs: TOOL_TIMEOUT_MS, env },
  );
  if (r.status !== "ok") return { path: smi, exit_code: r.exitCode, ...failed(r), ms: r.ms };
  return { status: "ok", path: smi, exit_code: 0, ...parseNvidiaSmiCsv(r.stdout), ms: r.ms };
}

/** GPU agents of `rocminfo` output: each "Name: gfx..." in an agent block whose Device Type is GPU. */
export function parseRocminfo(text: string): NonNullable<AmdToolFacts["gpus"]> {
  const gpus: NonNullable<AmdToolFacts["gpus"]> = [];
  for (const block of text.split(/\n\*{5,}\s*\n/)) {
    if (!/Device Type:\s*GPU/.test(block)) continue;
    const gfx = /^\s*Name:\s*(gfx[0-9a-f]+)/m.exec(block)?.[1];
    if (!gfx) continue;
    gpus.push({ gfx, name: /Marketing Name:\s*(.+)/.exec(block)?.[1].trim() });
  }
  return gpus;
}

/** `amd-smi static --asic --json`: a list, or {"gpu_data": [...]}, of {asic: {market_name, target_graphics_version}}. */
export function parseAmdSmiJson(text: string): NonNullable<AmdToolFacts["gpus"]> {
  const doc = JSON.parse(text);
  const list: unknown[] = Array.isArray(doc) ? doc : Array.isArray(doc?.gpu_data) ? doc.gpu_data : [];
  return list.flatMap((entry) => {
    const asic = (entry as { asic?: { market_name?: string; target_graphics_version?: string } })?.asic;
    return asic?.target_graphics_version ? [{ gfx: asic.target_graphics_version, name: asic.market_name }] : [];
  });
}

async function probeAmdTool(
  name: string,
  args: string[],
  parse: (text: string) => NonNullable<AmdToolFacts["gpus"]>,
  env: Env,
): Promise<AmdToolFacts> {
  const where = locate(name, [["ROCM_PATH", env.ROCM_PATH]], ["/opt/rocm/bin"], env);
  if (!where.path) return { status: "absent", error: `${name} not found` };
  const r = await execWithTimeout(where.path, args, { timeoutMs: TOOL_TIMEOUT_MS, env });
  if (r.status !== "ok") return { path: where.path, exit_code: r.exitCode, ...failed(r), ms: r.ms };
  try {
    return { status: "ok", path: where.path, exit_code: 0, gpus: parse(r.stdout), ms: r.ms };
  } catch (e) {
    return {
      status: "error",
      path: where.path,
      exit_code: 0,
      error: `unreadable output: ${(e as Error).message}`,
      ms: r.ms,
    };
  }
}

export const probeRocminfo = (env: Env = process.env) => probeAmdTool("rocminfo", [], parseRocminfo, env);
export const probeAmdSmi = (env: Env = process.env) =>
  probeAmdTool("amd-smi", ["static", "--asic", "--json"], parseAmdSmiJson, env);
