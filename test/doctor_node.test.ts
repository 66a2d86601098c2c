// Every GPU of a node (doctor/rules/node.ts): the rules over facts of 1, 2 and 8 GPUs (fixtures derived from the H100
// as captured, in the shapes NVML answers), each failing condition as ONE error line naming the GPU, the rules for a
// PCIe link, NVLink pairs, and `--devices` from flag to report. The NVML probe itself runs for real on this machine
// (no libnvidia-ml here: it says absent), as does the CLI.
import { describe, expect, test } from "bun:test";
import type { DoctorFacts, DoctorOptions, DoctorReport, NvmlDevice } from "../doctor/facts.ts";
import { buildReport } from "../doctor/report.ts";
import { validate } from "../doctor/schema.ts";
import { gpuHealth, nodeRules, pairPath, pciKey, pcieVerdict } from "../doctor/rules/node.ts";
import { parseDeviceSelection } from "../lib/devices.ts";
import { parseDoctorOptions } from "../commands/doctor.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import type { NvmlFacts } from "../doctor/facts.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { doctor, jsonReport } from "./support/doctor_cli.ts";
import fs from "node:fs";
import path from "node:path";
import { root } from "./support/cli.ts";

const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");
const hasCpuLibrary = fs.existsSync(path.join(root, "build", "libflashattn_cpu.so"));

const fixture = (name: string) => structuredClone(loadFixture(name).report);
const node8 = () => fixture("hgx-h100-8gpu.json");
const nodeOf1 = () => fixture("h100-node-of-one.json");

function diagnose(facts: DoctorFacts, options: DoctorOptions): DoctorReport {
  const report = buildReport(facts, options, { version: "test", runtime: "bun test", createdAt: "2026-12-06T00:00:00Z" });
  expect(validate(report)).toEqual([]);
  return report;
}

const errors = (r: DoctorReport) => r.findings.filter((f) => f.severity === "error");
const gpu = (facts: DoctorFacts, i: number): NvmlDevice => facts.nvidia.nvml.devices![i];

describe("fixtures of a node", () => {
  for (const name of ["h100-node-of-one.json", "hgx-h100-8gpu.json"]) {
    test(`${name}: a valid report whose provenance says where its values come from`, () => {
      const { report, provenance } = loadFixture(name);
      expect(provenance!.length).toBeGreaterThan(200);
      expect(validate(report)).toEqual([]);
    });
  }

  test("a node of one: one healthy GPU line, no pairs, the --devices line passes, exit 0", () => {
    const r = nodeOf1();
    const report = diagnose(r.facts, { devices: "all", require: "gpu" });
    expect(report.exit_code).toBe(0);
    const line = report.findings.find((f) => f.id === "nvidia.gpu_health0")!;
    expect(line.severity).toBe("ok");
    for (const s of ["GPU 0 (0000:00:06)", "ECC on, no uncorrectable errors", "PCIe Gen5 x16", "no NVLink", "self-test ok"]) {
      expect(line.message).toContain(s);
    }
    // NOT_SUPPORTED for retired pages is said as normal, never an error
    expect(line.message).toContain("page retirement NOT_SUPPORTED: normal");
    expect(report.findings.find((f) => f.id === "nvidia.pairs")!.message).toContain("one GPU: no pairs");
    expect(report.findings.find((f) => f.id === "nvidia.devices")!.severity).toBe("ok");
  });

  test("8 GPUs on NVSwitches: 8 healthy lines, 28 pairs all NVLink, exit 0", () => {
    const report = diagnose(node8().facts, { devices: "all", require: "gpu" });
    expect(report.exit_code).toBe(0);
    const lines = report.findings.filter((f) => f.id.startsWith("nvidia.gpu_health"));
    expect(lines.map((f) => `${f.id}:${f.severity}`)).toEqual(
      Array.from({ length: 8 }, (_, i) => `nvidia.gpu_health${i}:ok`),
    );
    expect(lines[5].message).toContain("GPU 5 (0000:ab:00)");
    expect(lines[5].message).toContain("NVLink 18/18 up");
    const pairs = report.findings.find((f) => f.id === "nvidia.pairs")!;
    expect(pairs).toMatchObject({ severity: "ok", message: "8 GPUs, 28 pairs: 28 NVLink" });
    expect(pairs.details).toHaveLength(28);
    expect(pairs.details).toContain("GPU 3 - GPU 4: NVLink, across NUMA nodes");
  });
});

describe("a failing GPU is one error line naming it, and fails the gate", () => {
  const failing = (facts: DoctorFacts, options: DoctorOptions = { devices: "all", require: "gpu" }) => {
    const report = diagnose(facts, options);
    expect(report.exit_code).toBe(1);
    return errors(report);
  };

  test("uncorrectable ECC errors since the driver loaded", () => {
    const r = node8();
    gpu(r.facts, 3).ecc!.volatile_uncorrected = 2;
    gpu(r.facts, 3).ecc!.aggregate_uncorrected = 2;
    const e = failing(r.facts);
    expect(e.map((f) => f.id)).toEqual(["nvidia.gpu_health3"]);
    expect(e[0].message).toBe("GPU 3 (0000:5d:00): 2 uncorrectable ECC errors since the driver loaded");
    expect(e[0].fix).toContain("nvidia-smi -r -i 3");
  });

  test("errors over the board's life only: a warning, not a failure", () => {
    const r = node8();
    gpu(r.facts, 1).ecc!.aggregate_uncorrected = 5;
    const report = diagnose(r.facts, { devices: "all" });
    expect(report.exit_code).toBe(0);
    expect(report.findings.find((f) => f.id === "nvidia.gpu_health1")!.severity).toBe("warning");
  });

  test("a down-trained x8 link on an x16 card (the slot allows x16)", () => {
    const r = node8();
    gpu(r.facts, 5).pcie = { current_generation: 5, current_width: 8, max_generation: 5, max_width: 16 };
    const e = failing(r.facts);
    expect(e.map((f) => f.id)).toEqual(["nvidia.gpu_health5"]);
    expect(e[0].message).toContain("PCIe link down-trained to x8 (the GPU and its slot allow x16)");
    expect(e[0].fix).toContain("reseat");
  });

  test("pending retired pages, a pending or failed row remap", () => {
    const r = node8();
    gpu(r.facts, 0).retired_pages = { single_bit: 1, double_bit: 1, pending: true };
    gpu(r.facts, 1).remapped_rows = { correctable: 0, uncorrectable: 1, pending: true, failed: false };
    gpu(r.facts, 2).remapped_rows = { correctable: 0, uncorrectable: 9, pending: false, failed: true };
    const e = failing(r.facts);
    expect(e.map((f) => f.id)).toEqual(["nvidia.gpu_health0", "nvidia.gpu_health1", "nvidia.gpu_health2"]);
    expect(e[0].message).toContain("a retired page is pending");
    expect(e[1].message).toContain("a row remap is pending");
    expect(e[2].message).toContain("a row remap failed");
    expect(e[2].fix).toContain("RMA");
  });

  test("several problems of one GPU stay one line", () => {
    const r = node8();
    gpu(r.facts, 6).ecc!.volatile_uncorrected = 1;
    gpu(r.facts, 6).pcie!.current_width = 4;
    const e = failing(r.facts);
    expect(e).toHaveLength(1);
    expect(e[0].message).toContain("1 uncorrectable ECC error since");
    expect(e[0].message).toContain("down-trained to x4");
  });

  test("NVML sees a GPU that CUDA does not; hidden by CUDA_VISIBLE_DEVICES it is only said", () => {
    const r = node8();
    r.facts.nvidia.cuda_driver.devices = r.facts.nvidia.cuda_driver.devices!.filter((d) => d.index !== 7);
    r.facts.flashattn.libraries[0].device_self_tests = r.facts.flashattn.libraries[0].device_self_tests!.slice(0, 7);
    const e = failing(r.facts);
    expect(e.map((f) => f.id)).toEqual(["nvidia.gpu_health7"]);
    expect(e[0].message).toBe("GPU 7 (0000:db:00): NVML sees it but CUDA does not");
    r.facts.host.env.CUDA_VISIBLE_DEVICES = "0,1,2,3,4,5,6";
    const report = diagnose(r.facts, { devices: "all" });
    expect(report.exit_code).toBe(0);
    expect(report.findings.find((f) => f.id === "nvidia.gpu_health7")!.message).toContain("hidden from CUDA");
  });

  test("a failed self-test, a missing one, and a device ordinal that does not exist", () => {
    const r = node8();
    const tests = r.facts.flashattn.libraries[0].device_self_tests!;
    tests[2] = { ...tests[2], ok: false, rel_error: "Infinity", kernel: "cuda-wgmma-sm90" };
    tests.splice(4, 1);
    const e = failing(r.facts);
    expect(e.map((f) => f.id)).toEqual(["nvidia.gpu_health2", "nvidia.gpu_health4"]);
    expect(e[0].message).toContain("self-test failed: relative error Infinity");
    expect(e[1].message).toContain("no self-test ran on it");
    // --devices 0,2 asks nothing of GPU 4: no failure for its missing test
    expect(errors(diagnose(r.facts, { devices: [0, 2] })).map((f) => f.id)).toEqual(["nvidia.gpu_health2"]);

    const one = nodeOf1();
    one.facts.flashattn.libraries[0].device_self_tests!.push({
      device: 3,
      ok: false,
      problem: "bf16 forward",
      error: "no device 3: the library sees 1",
    });
    const bad = failing(one.facts, { devices: [0, 3] });
    expect(bad.map((f) => f.message)).toEqual(["CUDA device 3: self-test failed: no device 3: the library sees 1"]);
  });

  test("a CPU machine: --devices all has no GPU to test (info), a list names devices nobody has (error)", () => {
    const facts = fixture("cpu-only.json").facts;
    const all = diagnose(structuredClone(facts), { devices: "all" });
    expect(all.findings.find((f) => f.id === "nvidia.devices")).toMatchObject({ severity: "info" });
    const list = diagnose(structuredClone(facts), { devices: [0, 2] });
    expect(list.findings.find((f) => f.id === "nvidia.devices")).toMatchObject({ severity: "error" });
    expect(list.exit_code).toBe(1);
  });

  test("a report from before these facts: no GPU health lines, nothing new fails", () => {
    const report = diagnose(fixture("h100.json").facts, {});
    expect(report.findings.filter((f) => f.id.startsWith("nvidia.gpu_health") || f.id === "nvidia.pairs")).toEqual([]);
    expect(report.exit_code).toBe(0);
  });
});

describe("the PCIe link rule", () => {
  test("width below the best possible fails; a slow generation is a note at idle and a warning under load", () => {
    const link = { current_generation: 5, current_width: 16, max_generation: 5, max_width: 16 };
    expect(pcieVerdict(link, 0)).toEqual({ text: "PCIe Gen5 x16" });
    expect(pcieVerdict({ ...link, current_width: 8 }, 0)!.failure).toContain("down-trained to x8");
    const idle = pcieVerdict({ ...link, current_generation: 1 }, 0)!;
    expect(idle.failure).toBeUndefined();
    expect(idle.warning).toBeUndefined();
    expect(idle.note).toContain("Gen1 at idle");
    const busy = pcieVerdict({ ...link, current_generation: 3 }, 97)!;
    expect(busy.warning).toBe("PCIe Gen3 under load (97% busy) where Gen5 is possible");
    expect(pcieVerdict({ ...link, current_generation: 3 }, 49)!.warning).toBeUndefined();
    expect(pcieVerdict(undefined, 0)).toBeUndefined();
    expect(pcieVerdict({ max_width: 16 }, 0)).toBeUndefined();
  });

  test("a GPU slowed to Gen3 under load warns but does not fail the gate", () => {
    const r = node8();
    Object.assign(gpu(r.facts, 4), { utilization_percent: 100, pcie: { ...gpu(r.facts, 4).pcie, current_generation: 3 } });
    const report = diagnose(r.facts, { devices: "all" });
    expect(report.exit_code).toBe(0);
    expect(report.findings.find((f) => f.id === "nvidia.gpu_health4")!.severity).toBe("warning");
  });
});

describe("NVLink and pairs", () => {
  test("links down on one GPU: a warning naming them; pairs that lack the NVLink the others have: a warning", () => {
    const r = node8();
    for (const l of gpu(r.facts, 2).nvlinks!.slice(0, 3)) l.active = false;
    for (const p of r.facts.nvidia.nvml.pairs!) if (p.a === 2 || p.b === 2) p.p2p_nvlink = "not_supported";
    const report = diagnose(r.facts, { devices: "all" });
    expect(report.exit_code).toBe(0);
    expect(report.findings.find((f) => f.id === "nvidia.gpu_health2")).toMatchObject({
      severity: "warning",
      message: "GPU 2 (0000:3a:00): NVLink 0, 1, 2 down (15 of 18 up)",
    });
    const pairs = report.findings.find((f) => f.id === "nvidia.pairs")!;
    expect(pairs.severity).toBe("warning");
    expect(pairs.message).toBe(
      "8 GPUs, 28 pairs: 21 NVLink, 7 PCIe P2P: 7 of 28 pairs lack the NVLink path the others have",
    );
  });

  test("two PCIe GPUs without P2P: said (host-memory staging), not a failure", () => {
    const r = node8();
    const facts = r.facts;
    facts.nvidia.nvml.devices = facts.nvidia.nvml.devices!.slice(0, 2).map((d) => ({ ...d, nvlinks: null }));
    facts.nvidia.nvml.pairs = [{ a: 0, b: 1, common_ancestor: "system", p2p_read: "chipset_not_supported", p2p_nvlink: "not_supported" }];
    facts.nvidia.cuda_driver.devices = facts.nvidia.cuda_driver.devices!.slice(0, 2);
    facts.flashattn.libraries[0].device_self_tests = facts.flashattn.libraries[0].device_self_tests!.slice(0, 2);
    const report = diagnose(facts, { devices: "all" });
    expect(report.exit_code).toBe(0);
    expect(report.findings.find((f) => f.id === "nvidia.pairs")).toMatchObject({
      severity: "info",
      message: "2 GPUs, 1 pair: 1 no P2P (chipset_not_supported): GPUs without P2P exchange data through host memory (slower collectives)",
    });
    expect(pairPath({ a: 0, b: 1, p2p_read: "ok", p2p_nvlink: "not_supported" })).toBe("PCIe P2P");
  });
});

describe("matching GPUs across sources", () => {
  test("pciKey: NVML's, libcuda's and our library's bus ids meet; nonsense is no key", () => {
    expect(pciKey("00000000:3B:00.0")).toBe("0000:3b:00");
    expect(pciKey("0000:3b:00.0")).toBe("0000:3b:00");
    expect(pciKey("0000:3b:00")).toBe("0000:3b:00");
    expect(pciKey("00000001:3B:00.0")).toBe("0001:3b:00");
    for (const bad of [undefined, "", "GPU-1234", "0000:3b", "0000:3b:00.9", "zz:3b:00.0"]) expect(pciKey(bad)).toBeUndefined();
  });

  test("CUDA numbers GPUs differently from NVML: the line names both, the self-test is matched by bus id", () => {
    const r = node8();
    // CUDA's order swapped for GPUs 0 and 1 (CUDA_DEVICE_ORDER=FASTEST_FIRST on a mixed node)
    const [a, b] = r.facts.nvidia.cuda_driver.devices!;
    r.facts.nvidia.cuda_driver.devices![0] = { ...b, index: 0 };
    r.facts.nvidia.cuda_driver.devices![1] = { ...a, index: 1 };
    const tests = r.facts.flashattn.libraries[0].device_self_tests!;
    tests[0] = { ...tests[0], pci_bus_id: "0000:2a:00" };
    tests[1] = { ...tests[1], pci_bus_id: "0000:18:00", ok: false, error: "boom" };
    const health = gpuHealth(r.facts, { devices: "all" });
    expect(health[0]).toMatchObject({ label: "GPU 0 (0000:18:00), CUDA device 1", cudaDevice: 1 });
    expect(health[0].failures).toEqual(["self-test failed: boom"]);
    expect(health[1].failures).toEqual([]);
  });

  test("nodeRules without --devices: no self-test demanded, no --devices line", () => {
    const r = node8();
    r.facts.flashattn.libraries[0].device_self_tests = undefined;
    const found = nodeRules(r.facts, {});
    expect(found.filter((f) => f.severity === "error")).toEqual([]);
    expect(found.some((f) => f.id === "nvidia.devices")).toBe(false);
  });
});

describe("--devices from the flag", () => {
  test("all, a list, and every malformed value a usage error", () => {
    expect(parseDeviceSelection("all")).toBe("all");
    expect(parseDeviceSelection(" 0, 2 ")).toEqual([0, 2]);
    for (const bad of ["", "-1", "0,,1", "1.5", "0x1", "256", "gpu0", "0,0"]) {
      expect(() => parseDeviceSelection(bad)).toThrow(/--devices/);
    }
  });

  test("doctor: --devices needs the self-test", () => {
    const raw = { python: true, selfTest: true, devices: "0,1" };
    expect(parseDoctorOptions(raw).options.devices).toEqual([0, 1]);
    expect(() => parseDoctorOptions({ ...raw, selfTest: false })).toThrow("drop --no-self-test");
  });
});

describe("on this machine, for real", () => {
  test.skipIf(hasGpu)("the NVML probe without libnvidia-ml says absent, and does not crash", async () => {
    const nvml = await runNativeProbe<NvmlFacts>("nvml", { timeoutMs: 20_000 });
    expect(nvml.status).toBe("absent");
    expect(nvml.devices).toBeUndefined();
  });

  test.skipIf(!hasCpuLibrary || hasGpu)("doctor --devices all --require gpu --json: recorded, no GPU, exit 1", () => {
    const r = doctor(["--devices", "all", "--require", "gpu", "--json", "--no-python"]);
    const report = jsonReport(r);
    expect(r.code).toBe(1);
    expect(report.options).toEqual({ require: "gpu", devices: "all" });
    expect(report.findings.find((f) => f.id === "nvidia.devices")!.message).toBe("--devices all: no GPU here to test");
    expect(report.findings.find((f) => f.id === "backend.require")!.severity).toBe("error");
  });

  test("doctor --devices with a bad list: exit 2 and one line", () => {
    const r = doctor(["--devices", "0,x"]);
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toContain('--devices takes "all" or a comma list');
  });
});

// On an NVIDIA machine with the CUDA library built (the lent GPU machine): the node as it is.
const hasNvidia = fs.existsSync("/dev/nvidiactl") && fs.existsSync(path.join(root, "build", "libflashattn_cuda.so"));
if (!hasNvidia) console.warn("doctor node tests: no NVIDIA GPU with build/libflashattn_cuda.so here; the live node test is skipped");

describe.skipIf(!hasNvidia)("live on an NVIDIA node", () => {
  test("doctor --devices all --require gpu --json: NVML's facts per GPU, a self-test and one line per GPU", () => {
    const r = doctor(["--devices", "all", "--require", "gpu", "--json", "--no-python"]);
    const report = jsonReport(r);
    const nvml = report.facts.nvidia.nvml;
    expect(nvml.status).toBe("ok");
    const gpus = nvml.devices!;
    expect(gpus.length).toBeGreaterThan(0);
    for (const g of gpus) {
      expect(pciKey(g.pci_bus_id)).toBeDefined();
      // a VM may hide the link (NVML then leaves pcie out); where it is read it is a real link
      if (g.pcie?.current_width !== undefined) expect(g.pcie.current_width).toBeGreaterThanOrEqual(1);
      expect(g.ecc === null || typeof g.ecc?.enabled === "boolean").toBe(true);
      expect(report.findings.some((f) => f.id === `nvidia.gpu_health${g.index}`)).toBe(true);
    }
    expect(nvml.pairs?.length ?? 0).toBe((gpus.length * (gpus.length - 1)) / 2);
    const cuda = report.facts.flashattn.libraries.find((l) => l.backend === "cuda")!;
    expect(cuda.device_self_tests!.map((t) => t.device)).toEqual(
      Array.from({ length: Math.min(cuda.device_count!, 16) }, (_, i) => i),
    );
    // A healthy node passes; if it does not, the failing lines say why.
    const failing = report.findings.filter((f) => f.severity === "error").map((f) => `${f.id}: ${f.message}`);
    expect(failing).toEqual([]);
    expect(r.code).toBe(0);
  }, 300_000);
});
