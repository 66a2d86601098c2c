// Verdicts as functions of the facts (issue 16): the backend decision recomputed from a report (so an edited report
// gets the edited verdict), CUDA_VISIBLE_DEVICES read as the cause when it hides the GPUs, and every verdict change
// checked through the CLI: `--json` (live where this machine can produce the case) and `--facts` give the same report.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { DoctorFacts, DoctorReport } from "../doctor/facts.ts";
import { buildReport } from "../doctor/report.ts";
import { decideFromFacts } from "../doctor/rules/backend.ts";
import { hiddenByVisibleDevices } from "../doctor/rules/nvidia.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { doctor, jsonReport, root } from "./support/doctor_cli.ts";

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-verdicts-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));
const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));
const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");

const facts = (fixture: string): DoctorFacts => structuredClone(loadFixture(fixture).report.facts);

describe("the backend decision is a function of the facts", () => {
  test("the H100 as captured: cuda chosen with its kernel, cpu usable", () => {
    const d = decideFromFacts(facts("h100.json"));
    expect(d.chosen).toBe("cuda");
    expect(d.decisions.map((x) => `${x.backend} ${x.verdict} ${x.kernel ?? ""}`)).toEqual([
      "cuda chosen cuda-mma-sm80",
      "hip rejected ",
      "cpu usable cpu_flash_fwd_avx2",
    ]);
  });
  test("the same report edited to driver 535: cuda rejected for the driver, cpu chosen", () => {
    const f = facts("h100.json");
    f.nvidia.nvml.driver_version = "535.183.01";
    const d = decideFromFacts(f);
    expect(d.chosen).toBe("cpu");
    expect(d.decisions[0]).toMatchObject({ backend: "cuda", verdict: "rejected" });
    expect(d.decisions[0].reasons).toEqual(["driver 535.183.01 is older than the 580.65.06 that CUDA 13.0 needs"]);
    expect(d.decisions[0].kernel).toBeUndefined();
  });
  test("edited to a library without a device, or one that does not load: rejected with that reason", () => {
    const noDevice = facts("h100.json");
    noDevice.flashattn.libraries[0].device_count = 0;
    expect(decideFromFacts(noDevice).decisions[0].reasons).toEqual(["no device found"]);
    const notLoaded = facts("h100.json");
    notLoaded.flashattn.libraries[0] = {
      backend: "cuda",
      loaded: false,
      attempts: [{ path: "/opt/x/libflashattn_cuda.so", source: "build", ok: false, error: "ABI 2, expected 1" }],
    };
    expect(decideFromFacts(notLoaded).decisions[0]).toMatchObject({
      verdict: "rejected",
      reasons: ["/opt/x/libflashattn_cuda.so: ABI 2, expected 1"],
    });
    expect(decideFromFacts(notLoaded).chosen).toBe("cpu");
  });
  test("the user's choice disables the others; asked without it, the libraries' word decides", () => {
    const f = facts("forced-cpu-on-h100.json");
    const forced = decideFromFacts(f);
    expect(forced.chosen).toBe("cpu");
    expect(forced.decisions[0]).toMatchObject({
      verdict: "disabled",
      reasons: ["the user chose cpu (FLASHATTN_BACKEND=cpu)"],
    });
    expect(decideFromFacts(f, "auto").chosen).toBe("cuda");
    expect(decideFromFacts(facts("forced-backend-cuda-no-gpu.json"), "auto").chosen).toBe("cpu");
  });
  test("a report whose decision failed has no decision to recompute", () => {
    const f = facts("cpu-only.json");
    f.flashattn = { ...f.flashattn, status: "error", error: "FLASHATTN_BACKEND=gpu is not one of ...", decisions: [] };
    expect(decideFromFacts(f)).toEqual({ decisions: [] });
  });
});

describe("a forced backend that cannot run", () => {
  const report = (f: DoctorFacts) =>
    buildReport(f, {}, { version: "t", runtime: "t", createdAt: "2026-12-06T00:00:00Z" });
  test("where nothing else runs either, the fix also says to build a library", () => {
    const f = facts("forced-backend-cuda-no-gpu.json");
    const cpu = f.flashattn.libraries.find((l) => l.backend === "cpu")!;
    cpu.loaded = false;
    cpu.attempts = [{ path: "/work/x/build/libflashattn_cpu.so", source: "build", ok: false, error: "no such file" }];
    expect(report(f).findings.find((x) => x.id === "backend.cuda")?.fix).toBe(
      "unset FLASHATTN_BACKEND, and build a library this machine can run: bun kernels/build.ts (the CPU one needs only g++)",
    );
  });
  test("forced by the flag, the fix is about the flag", () => {
    const f = facts("forced-backend-cuda-no-gpu.json");
    f.flashattn.request.source = "flag";
    const cuda = report(f).findings.find((x) => x.id === "backend.cuda")!;
    expect(cuda.message).toContain("--backend cuda allows no other backend");
    expect(cuda.fix).toBe("drop --backend cuda (then cpu is chosen), or give --backend cpu");
  });
});

describe("CUDA_VISIBLE_DEVICES as the cause", () => {
  // The H100 with the driver API seeing nothing (cuInit: CUDA_ERROR_NO_DEVICE) and NVML one GPU.
  const hidden = (value: string | undefined) => {
    const f = facts("h100-cuda-visible-devices-empty.json");
    if (value === undefined) delete f.host.env.CUDA_VISIBLE_DEVICES;
    else f.host.env.CUDA_VISIBLE_DEVICES = value;
    return hiddenByVisibleDevices(f)?.message;
  };
  test("empty, -1, an index past the GPUs, or an unknown UUID first: named", () => {
    expect(hidden("")).toContain("is empty, which hides every GPU");
    expect(hidden("-1")).toContain('its first entry "-1" is not an index 0..0');
    expect(hidden("1")).toContain('its first entry "1"');
    expect(hidden("GPU-00000000,0")).toContain('its first entry "GPU-00000000"');
  });
  test("a valid first entry (index, UUID prefix, MIG instance) or no variable: not the cause", () => {
    expect(hidden("0")).toBeUndefined();
    expect(hidden("GPU-2e8b0464")).toBeUndefined();
    expect(hidden("MIG-5c3d")).toBeUndefined();
    expect(hidden(undefined)).toBeUndefined();
  });
  test("only when the driver API sees none while NVML sees some", () => {
    expect(hiddenByVisibleDevices(facts("h100.json"))).toBeUndefined(); // all GPUs visible
    const f = facts("h100-cuda-visible-devices-empty.json");
    f.nvidia.nvml.devices = [];
    expect(hiddenByVisibleDevices(f)).toBeUndefined();
  });
});

describe("fixes the user can carry out", () => {
  test("no HIP code for the GPU: the fix names the build's FLASHATTN_HIP_ARCHS with that gfx added", () => {
    const f = facts("mi250x-rocm6.json");
    f.amd.hip.devices = [{ index: 0, name: "AMD Instinct MI300X", gcn_arch_name: "gfx942:sramecc+:xnack-" }];
    const lib = f.flashattn.libraries.find((l) => l.backend === "hip")!;
    lib.loaded = true;
    lib.info = { ...lib.info, archs: ["gfx90a"], built_with: { hip: f.amd.hip.runtime_version! } };
    const report = buildReport(f, {}, { version: "t", runtime: "t", createdAt: "2026-12-06T00:00:00Z" });
    expect(report.findings.find((x) => x.id === "libraries.hip_arch_gpu0")?.fix).toStartWith(
      "rebuild with gfx942 among the offload targets: FLASHATTN_HIP_ARCHS=gfx90a,gfx942 bun kernels/build.ts hip",
    );
  });
  test("a HIP library and runtime of different majors: an error with an AMD GPU, information without", () => {
    const f = facts("cpu-only-gpu-libraries-built.json");
    f.amd.hip.runtime_version = "6.2";
    const severity = (facts: DoctorFacts) =>
      buildReport(facts, {}, { version: "t", runtime: "t", createdAt: "2026-12-06T00:00:00Z" }).findings.find((x) =>
        x.id === "libraries.hip_version"
      )?.severity;
    expect(severity(f)).toBe("info");
    f.amd.kfd = { exists: true, accessible: true };
    expect(severity(f)).toBe("error");
  });
  test("a CUDA_HOME without nvcc is named, with the toolkit that is there as the example", () => {
    const f = facts("h100.json");
    f.host.env.CUDA_HOME = "/opt/cuda-12.8";
    const report = buildReport(f, {}, { version: "t", runtime: "t", createdAt: "2026-12-06T00:00:00Z" });
    expect(report.findings.find((x) => x.id === "toolkits.cuda_home_differs")).toMatchObject({
      severity: "warning",
      message: expect.stringContaining("CUDA_HOME=/opt/cuda-12.8 has no bin/nvcc"),
      fix: "point CUDA_HOME at a toolkit (the directory that holds bin/nvcc, e.g. /usr/local/cuda) or unset it",
    });
  });
});

// ---- through the CLI ----------------------------------------------------------------------------------------------

/** The doctor's --json report and exit code. */
function doctorJson(args: string[], env: Record<string, string> = {}) {
  const r = doctor(args, env);
  return { code: r.code, report: jsonReport(r) };
}

/** What a report says: its findings, the decision and the verdict (not when or where it was made). */
const verdicts = (r: DoctorReport) => ({
  findings: r.findings,
  backends: r.backends,
  summary: r.summary,
  exit_code: r.exit_code,
});

/** `--json` output replayed with `--facts` gives the same verdicts, and the same exit code. */
function roundTrip(first: { code: number | null; report: DoctorReport }, name: string, args: string[] = []) {
  const file = path.join(scratch, name);
  fs.writeFileSync(file, JSON.stringify(first.report));
  const replay = doctorJson(["--json", "--facts", file, ...args]);
  expect(verdicts(replay.report)).toEqual(verdicts(first.report));
  expect(replay.code).toBe(first.code);
  return replay.report;
}

const finding = (r: DoctorReport, id: string) => r.findings.find((f) => f.id === id);

describe.skipIf(!hasCpuLibrary || hasGpu)("live on this CPU-only machine, then replayed", () => {
  test("FLASHATTN_BACKEND=cuda: the variable is the cause and the fix", () => {
    const live = doctorJson(["--json", "--no-python", "--no-self-test"], { FLASHATTN_BACKEND: "cuda" });
    expect(live.code).toBe(1);
    expect(live.report.summary.chosen_backend).toBeNull();
    expect(finding(live.report, "backend.cuda")?.fix).toBe(
      "unset FLASHATTN_BACKEND (then cpu is chosen), or set it to cpu",
    );
    expect(finding(live.report, "backend.none")).toBeUndefined();
    roundTrip(live, "forced-cuda.json");
  });
  test("--backend cpu --require gpu: the flag, and that without it no GPU backend runs either", () => {
    const live = doctorJson(["--json", "--no-python", "--no-self-test", "--backend", "cpu", "--require", "gpu"]);
    expect(live.code).toBe(1);
    const require = finding(live.report, "backend.require");
    expect(require?.message).toContain("--backend cpu disables the GPU backends; without it: cuda rejected");
    expect(require?.fix).toContain("drop --backend cpu for this check");
    roundTrip(live, "forced-cpu-require-gpu.json");
  });
  test("FLASHATTN_PYTHON naming no interpreter: an error with the right fix", () => {
    const missing = path.join(scratch, "venv", "bin", "python");
    const live = doctorJson(["--json", "--no-self-test"], { FLASHATTN_PYTHON: missing });
    expect(live.code).toBe(1);
    expect(finding(live.report, "python.interpreter")).toMatchObject({
      severity: "error",
      message: `FLASHATTN_PYTHON=${missing} does not run: ${missing} not found`,
    });
    roundTrip(live, "python-missing.json");
  });
});

describe("fixtures replayed through the CLI, and their output replayed again", () => {
  const cases: [fixture: string, args: string[], check: (r: DoctorReport) => void][] = [
    ["h100-edited-driver535.json", [], (r) => {
      expect(r.summary.chosen_backend).toBe("cpu");
      expect(r.backends[0]).toMatchObject({ backend: "cuda", verdict: "rejected" });
    }],
    ["leftover-driver-no-gpu.json", [], (r) => expect(r.exit_code).toBe(0)],
    ["v100-sm70.json", [], (r) => expect(finding(r, "backend.cuda")?.severity).toBe("warning")],
    ["h100-cuda-visible-devices-empty.json", [], (r) => expect(finding(r, "nvidia.visible_devices")).toBeDefined()],
    ["forced-cpu-on-h100.json", ["--require", "gpu"], (r) => {
      expect(finding(r, "backend.require")?.fix).toContain("without it gpu is usable here");
    }],
    ["flash-attn-rotary-without-triton.json", [], (r) => {
      expect(finding(r, "python.import_layers_rotary")?.severity).toBe("warning");
    }],
  ];
  for (const [fixture, args, check] of cases) {
    test(fixture, () => {
      const file = path.join(scratch, `fixture-${fixture}`);
      fs.writeFileSync(file, JSON.stringify(loadFixture(fixture).report));
      const first = doctorJson(["--json", "--facts", file, ...args]);
      check(first.report);
      check(roundTrip(first, `again-${fixture}`, args));
    });
  }
});
