// `flashattn doctor` as a user and a CI script meet it, in child processes on this machine: exit codes 0/1/2,
// one schema-valid JSON document, NO_COLOR, --require, the user's backend choice, and --facts replaying a report
// (ours and another machine's) to the same diagnosis. Also once under Deno.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { DoctorReport } from "../doctor/facts.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { doctor, jsonReport, root } from "./support/doctor_cli.ts";

const deno = path.join(root, "node_modules", ".bin", "deno");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-doctor-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));
const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");
if (!hasCpuLibrary) {
  console.warn("doctor CLI tests: build/libflashattn_cpu.so missing (run bun kernels/build.ts); live checks skipped");
}

// One live --json run shared by the tests that only read it (the probes cost a second or two).
let live: { r: ReturnType<typeof doctor>; report: DoctorReport } | undefined;
function liveReport() {
  if (!live) {
    const r = doctor(["--json", "--no-python"]);
    live = { r, report: jsonReport(r) };
  }
  return live;
}

describe.skipIf(!hasCpuLibrary || hasGpu)("live on this CPU-only machine", () => {
  test("--json: one schema-valid document, healthy, exit 0, the CPU backend chosen by lib/select", () => {
    const { r, report } = liveReport();
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    expect(report.exit_code).toBe(0);
    expect(report.summary).toMatchObject({ errors: 0, chosen_backend: "cpu", healthy: true });
    expect(report.backends.map((d) => `${d.backend}:${d.verdict}`)).toEqual([
      "cuda:rejected",
      "hip:rejected",
      "cpu:chosen",
    ]);
    expect(report.facts.flashattn.libraries.find((l) => l.backend === "cpu")?.self_test?.ok).toBe(true);
    expect(report.facts.python).toMatchObject({ status: "absent", error: "skipped (--no-python)" });
  });
  test("human output: sections, marks, summary; no colour when piped or with NO_COLOR", () => {
    const r = doctor(["--no-python"], { NO_COLOR: "1", FORCE_COLOR: "1" });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("\x1b[");
    for (const s of ["NVIDIA\n", "AMD\n", "Toolkits\n", "flashattn libraries\n", "Backend decision\n"]) {
      expect(r.stdout).toContain(s);
    }
    expect(r.stdout).toContain("✓ cpu: chosen");
    expect(r.stdout).toContain("No issues found; backend: cpu.");
    expect(r.stderr).toContain("probing");
    const colored = doctor(["--no-python"], { FORCE_COLOR: "1" });
    expect(colored.stdout).toContain("\x1b[32m✓\x1b[39m");
  });
  test("--require gpu fails (exit 1) and says why; --require cpu passes", () => {
    const gpu = doctor(["--require", "gpu", "--no-python", "--no-self-test"], { NO_COLOR: "1" });
    expect(gpu.code).toBe(1);
    expect(gpu.stdout).toContain("✗ --require gpu: not usable (cuda rejected");
    expect(gpu.stdout).toContain("fix: ");
    expect(doctor(["--require", "cpu", "--no-python", "--no-self-test"]).code).toBe(0);
  });
  test("FLASHATTN_BACKEND=cpu: the GPU backends are disabled by the user's choice", () => {
    const r = doctor(["--json", "--no-python", "--no-self-test"], { FLASHATTN_BACKEND: "cpu" });
    const report = jsonReport(r);
    expect(report.facts.flashattn.request).toMatchObject({ backend: "cpu", source: "env" });
    const cuda = report.findings.find((f) => f.id === "backend.cuda")!;
    expect(cuda).toMatchObject({ severity: "info" });
    expect(cuda.message).toContain("disabled by your choice (the user chose cpu (FLASHATTN_BACKEND=cpu))");
  });
  test("a bad FLASHATTN_BACKEND is a finding with a fix (exit 1), never a crash", () => {
    const r = doctor(["--json", "--no-python", "--no-self-test"], { FLASHATTN_BACKEND: "tpu" });
    expect(r.code).toBe(1);
    const f = jsonReport(r).findings.find((x) => x.id === "backend.decision_failed")!;
    expect(f.message).toContain("FLASHATTN_BACKEND=tpu is not one of auto, cpu, cuda, hip");
    expect(f.fix).toContain("unset FLASHATTN_BACKEND");
  });
  test("--lib naming a missing library: two errors with fixes (exit 1), the decision refused, no fallback", () => {
    const missing = path.join(scratch, "libflashattn_cuda.so");
    const report = jsonReport(doctor(["--json", "--no-python", "--lib", missing]));
    expect(report.exit_code).toBe(1);
    expect(report.summary.chosen_backend).toBeNull();
    const lib = report.findings.find((f) => f.id === "libraries.explicit_load_failed")!;
    expect(lib.message).toBe(`the library named by --lib (${missing}) does not load: no such file`);
    expect(report.findings.find((f) => f.id === "backend.decision_failed")?.fix).toContain("unset it");
  });
  test("--facts replays a saved report to the same findings", () => {
    const saved = path.join(scratch, "live.json");
    fs.writeFileSync(saved, liveReport().r.stdout);
    const r = doctor(["--json", "--facts", saved]);
    expect(r.code).toBe(0);
    const replay = jsonReport(r);
    expect(replay.replayed_from).toBe(saved);
    expect(replay.findings).toEqual(liveReport().report.findings);
    expect(replay.facts).toEqual(liveReport().report.facts);
  });
});

describe("--facts with other machines' reports", () => {
  test("the A100 on driver 535: exit 1 and the driver fix, in words and in JSON", () => {
    const file = path.join(scratch, "a100.json");
    fs.writeFileSync(file, JSON.stringify(loadFixture("a100-driver535.json").report));
    const human = doctor(["--facts", file], { NO_COLOR: "1" });
    expect(human.code).toBe(1);
    expect(human.stdout).toContain("replaying " + file);
    expect(human.stdout).toContain("✗ libflashattn_cuda was built with CUDA 13.0, which needs driver ≥ 580.65.06");
    expect(human.stdout).toContain("\n    fix: upgrade the NVIDIA driver to R580 or newer");
    expect(human.stdout).toContain("Doctor found 2 errors and 2 warnings; backend: cpu.");
    const json = jsonReport(doctor(["--json", "--facts", file, "--require", "cuda"]));
    expect(json.options).toEqual({ require: "cuda" });
    expect(json.findings.find((f) => f.id === "backend.require")?.severity).toBe("error");
  });
  test("usage errors exit 2: a bad --require, a missing or foreign --facts file, --facts with --lib", () => {
    const bad = doctor(["--require", "tpu"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--require must be one of cuda, hip, gpu, cpu");
    const missing = doctor(["--json", "--facts", path.join(scratch, "nope.json")]);
    expect(missing.code).toBe(2);
    expect(JSON.parse(missing.stdout)).toMatchObject({ ok: false, error: { code: "BAD_INPUT" } });
    const foreign = path.join(scratch, "foreign.json");
    fs.writeFileSync(foreign, JSON.stringify({ schema: "flashattn.doctor/1", facts: {} }));
    const invalid = doctor(["--facts", foreign]);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toContain("is not a valid doctor report: $: missing");
    const future = path.join(scratch, "future.json");
    fs.writeFileSync(future, JSON.stringify({ schema: "flashattn.doctor/2" }));
    expect(doctor(["--facts", future]).stderr).toContain(
      "is a flashattn.doctor/2 report; this flashattn reads flashattn.doctor/1",
    );
    expect(doctor(["--facts", foreign, "--lib", "/x.so"]).code).toBe(2);
  });
});

describe.skipIf(!hasCpuLibrary || hasGpu)("Deno", () => {
  const denoRun = (grants: string[]) => [deno, "run", ...grants, "cli.ts"];
  test("doctor --json under Deno -A: the probes run in Deno workers, the same report", () => {
    const r = doctor(["--json", "--no-python"], { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" }, denoRun(["-A"]));
    expect(r.code).toBe(0);
    const report = jsonReport(r);
    expect(report.tool.runtime).toMatch(/^deno \d/);
    expect(report.summary).toMatchObject({ chosen_backend: "cpu", errors: 0, warnings: 0 });
    expect(report.facts.host.restricted).toBeUndefined();
    expect(report.facts.nvidia.cuda_driver.status).toBe("absent");
    expect(report.facts.flashattn.libraries.find((l) => l.backend === "cpu")?.self_test?.ok).toBe(true);
  }, 180_000);
  test("without run/sys permissions a live check is a usage error naming the flags; a replay needs only read", () => {
    const env = { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" };
    const live = doctor(["--json"], env, denoRun(["--allow-ffi", "--allow-read", "--allow-env"]));
    expect(live.code).toBe(2);
    expect(JSON.parse(live.stdout).error.message).toBe(
      "flashattn doctor under Deno needs --allow-run --allow-sys (it loads drivers through FFI and runs tools)",
    );
    const file = path.join(scratch, "h100-replay.json");
    fs.writeFileSync(file, JSON.stringify(loadFixture("h100.json").report));
    const replay = doctor(["--facts", file], env, denoRun(["--allow-read", "--allow-env"]));
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain("✓ cuda: chosen (kernel cuda-mma-sm80)");
  }, 180_000);
  test("without --allow-all Deno hides /proc, /sys and /dev: a warning that says so, not a crash", () => {
    const r = doctor(
      ["--json", "--no-python", "--no-self-test"],
      { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
      denoRun(["--allow-ffi", "--allow-read", "--allow-env", "--allow-run", "--allow-sys"]),
    );
    expect(r.code).toBe(0);
    const f = jsonReport(r).findings.find((x) => x.id === "system.restricted")!;
    expect(f.severity).toBe("warning");
    expect(f.fix).toContain("deno run -A");
  }, 180_000);
});
