// The Python attention stack (torch, flash_attn, flash_attn_3, the rotary / layer_norm extensions, triton,
// transformers), read by doctor/probes/python_stack.py in a subprocess with a deadline; runPythonScript runs it (and
// doctor --model's transformers probe).
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { ProbeResult, PythonFacts } from "../facts.ts";
import { execWithTimeout, findExecutable, lastLine, probeJson } from "./exec.ts";
import { diskPath } from "../../lib/standalone.ts";

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "python_stack.py");
/** Importing torch, flash_attn and transformers cold can take a while; a wedged import must not. */
const PYTHON_TIMEOUT_MS = 60_000;

export async function probePython(env: Record<string, string | undefined> = process.env): Promise<PythonFacts> {
  // FLASHATTN_PYTHON picks the interpreter (a venv's python) when python3 on PATH is not the one that matters.
  const python = env.FLASHATTN_PYTHON || findExecutable("python3", [], env);
  if (!python) return { status: "absent", error: "python3 not found on PATH" };
  // The user's environment as is (their venv, their site-packages): what their python sees is the point.
  // Only the shape of a JSON object is checked here; collect.ts holds every probe's result to the report schema.
  return await runPythonScript<PythonFacts>(python, [diskPath(script)], PYTHON_TIMEOUT_MS,
    { ...env, NO_COLOR: "1", PYTHONDONTWRITEBYTECODE: "1" });
}

/**
 * Runs one of our Python probe scripts with a deadline and returns the JSON object it printed last, with the run's
 * ms added. Never throws: a timeout or a missing interpreter is that status, and output that is not one JSON
 * object is an "error" whose sentence ends with the script's last stderr line (its traceback's verdict).
 */
export async function runPythonScript<T extends ProbeResult & { executable?: string }>(
  python: string,
  args: string[],
  timeoutMs: number,
  env: Record<string, string | undefined>,
): Promise<T> {
  const r = await execWithTimeout(python, args, { timeoutMs, env });
  if (r.status === "timeout" || r.status === "absent") {
    return { status: r.status, executable: python, error: r.error, ms: r.ms } as T;
  }
  try {
    return { ...(probeJson(r.stdout) as unknown as T), ms: r.ms };
  } catch (e) {
    const said = lastLine(r.stderr);
    return {
      status: "error",
      executable: python,
      error: `${r.error ?? `${path.basename(python)} ${(e as Error).message}`}${said ? `: ${said.slice(0, 300)}` : ""}`,
      ms: r.ms,
    } as T;
  }
}
