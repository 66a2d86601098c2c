// A Python baseline (torch_sdpa.py, numpy_attention.py) as a long-lived subprocess speaking one JSON object per
// line: it says hello (or why it cannot run) once, then answers one line per case. Keeping one process for the
// whole sweep pays `import torch` once, and lets the bench interleave: our kernels on a shape, then the baseline
// on the same shape, so a time limit cuts whole shapes rather than a whole implementation.
// Every wait has a deadline; a worker that overruns it is killed and reported, never waited on forever, together with
// anything it started (it runs in a process group of its own).
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { abandonPipes, killGroup, spawnGroup } from "../../lib/subprocess.ts";
import { diskPath } from "../../lib/standalone.ts";

export type WorkerStart<Hello> = { worker: PythonWorker<Hello> } | { unavailable: string };

/** The interpreter: FLASHATTN_PYTHON when set, else python3 on the PATH. */
export const pythonCommand = (env: Record<string, string | undefined> = process.env) =>
  env.FLASHATTN_PYTHON || "python3";

/** The script on disk (in the standalone executable: an extracted copy, see lib/standalone.ts). */
export const baselineScript = (name: string) => diskPath(fileURLToPath(new URL(`./${name}`, import.meta.url)));

export class PythonWorker<Hello> {
  #hello?: Hello;
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #lines: string[] = [];
  #wake: (() => void) | null = null;
  #exited: string | null = null;
  #stderrTail = "";

  private constructor(child: ChildProcessWithoutNullStreams, python: string) {
    this.#child = child;
    let partial = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      partial += chunk;
      let nl: number;
      while ((nl = partial.indexOf("\n")) >= 0) {
        const line = partial.slice(0, nl).trim();
        partial = partial.slice(nl + 1);
        if (line) this.#lines.push(line);
      }
      this.#notify();
    });
    // A worker that exits while we write to it makes the write fail with EPIPE; the exit handler below reports
    // why it exited, so the stream error itself carries nothing to add (unhandled, it would end the process).
    child.stdin.on("error", () => {});
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => (this.#stderrTail = (this.#stderrTail + chunk).slice(-2000)));
    child.on("error", (e: NodeJS.ErrnoException) => {
      this.#exited = e.code === "ENOENT"
        ? `${python} was not found (install Python 3, or set FLASHATTN_PYTHON to an interpreter)`
        : `${python} failed: ${e.message}`;
      this.#notify();
    });
    child.on("exit", (code, signal) => {
      const last = this.#stderrTail.trim().split("\n").pop() ?? "";
      this.#exited ??= `the worker exited (${signal ?? `status ${code}`})${last ? `: ${last}` : ""}`;
      this.#notify();
    });
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** The next line the worker printed; throws with the reason when it exits or `timeoutMs` passes (then kills it). */
  async #readLine(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.#lines.length === 0) {
      if (this.#exited) throw new Error(this.#exited);
      const left = deadline - Date.now();
      if (left <= 0) {
        this.close();
        throw new Error(`no answer within ${Math.round(timeoutMs / 1000)} s; the worker was stopped`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.#lines.shift()!;
  }

  #parse<T>(line: string): T {
    try {
      return JSON.parse(line) as T;
    } catch {
      this.close();
      throw new Error(`the worker printed something that is not JSON: ${line.slice(0, 120)}`);
    }
  }

  /** What the worker said about itself in its first line (versions, device). */
  get hello(): Hello {
    return this.#hello!;
  }

  /**
   * Starts `script` and waits for its first line. A missing interpreter, a crash, a timeout or an {"unavailable"}
   * line all come back as { unavailable: reason } (a baseline that is missing is named, never silently dropped).
   */
  static async start<Hello>(
    script: string,
    opts: { python?: string; timeoutMs: number; env?: Record<string, string | undefined> },
  ): Promise<WorkerStart<Hello>> {
    const python = opts.python ?? pythonCommand(opts.env);
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawnGroup(python, ["-B", "-u", script], {
        env: { ...(opts.env ?? process.env), PYTHONDONTWRITEBYTECODE: "1", PYTHONUNBUFFERED: "1" },
        stdio: ["pipe", "pipe", "pipe"],
      }) as ChildProcessWithoutNullStreams;
    } catch (e) {
      return { unavailable: `cannot start ${python}: ${(e as Error).message}` };
    }
    const worker = new PythonWorker<Hello>(child, python);
    try {
      const first = worker.#parse<{ hello?: Hello; unavailable?: string }>(await worker.#readLine(opts.timeoutMs));
      if (!first.hello) throw new Error(first.unavailable ?? `${script} did not say hello`);
      worker.#hello = first.hello;
      return { worker };
    } catch (e) {
      worker.close();
      return { unavailable: (e as Error).message };
    }
  }

  /** Sends one request and waits for its answer line; throws with the reason on timeout or exit. */
  async request<Answer>(message: unknown, timeoutMs: number): Promise<Answer> {
    if (this.#exited) throw new Error(this.#exited);
    this.#child.stdin.write(JSON.stringify(message) + "\n");
    return this.#parse<Answer>(await this.#readLine(timeoutMs));
  }

  /** Asks the worker to quit, and kills it (with all it started) if it has not gone two seconds later. */
  close(): void {
    const child = this.#child;
    const running = () => child.exitCode === null && child.signalCode === null;
    if (running()) {
      try {
        child.stdin.end(JSON.stringify({ op: "quit" }) + "\n");
      } catch { /* stdin already closed */ }
      const timer = setTimeout(() => {
        if (!running()) return;
        killGroup(child);
        abandonPipes(child);
      }, 2000);
      (timer as { unref?: () => void }).unref?.();
    }
    this.#exited ??= "the worker was closed";
  }
}
