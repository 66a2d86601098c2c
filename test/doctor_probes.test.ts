// The probes, run for real on this machine: subprocess deadlines, a crashing child, the FFI probes of NVML,
// libcuda and HIP in the worker, our own libraries with the backend decision, and the Python stack script.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execWithTimeout } from "../doctor/probes/exec.ts";
import { parseWorkerResult, runNativeProbe } from "../doctor/probes/native.ts";
import { probePython } from "../doctor/probes/python.ts";
import { nvidiaPciGpus, probeHost, probeKfd } from "../doctor/probes/system.ts";
import type { CudaDriverFacts, FlashattnFacts, HipFacts, NvmlFacts } from "../doctor/facts.ts";

const root = path.resolve(import.meta.dir, "..");
const cpuLibrary = path.join(root, "build", "libflashattn_cpu.so");
const hasCpuLibrary = fs.existsSync(cpuLibrary);
if (!hasCpuLibrary) {
  console.warn(
    "doctor probe tests: build/libflashattn_cpu.so missing (run bun kernels/build.ts); library probes skipped",
  );
}

describe("subprocesses never hang the doctor", () => {
  test("a program past its deadline is killed and reported as a timeout", async () => {
    const started = performance.now();
    const r = await execWithTimeout("sleep", ["30"], { timeoutMs: 300 });
    expect(r.status).toBe("timeout");
    expect(r.error).toContain("did not finish within 0.3 s");
    // Killed, not waited for: far below the 30 s the program would take, whatever the machine's load.
    expect(performance.now() - started).toBeLessThan(20_000);
  });
  test("a missing program is absent, a failing one an error with its status", async () => {
    expect((await execWithTimeout("flashattn-no-such-tool", [], { timeoutMs: 5000 })).status).toBe("absent");
    const r = await execWithTimeout("sh", ["-c", "echo broken >&2; exit 3"], { timeoutMs: 5000 });
    expect(r).toMatchObject({ status: "error", exitCode: 3, stderr: "broken\n" });
  });
  test("a worker that crashes becomes a probe error naming the signal", async () => {
    const r = await execWithTimeout("sh", ["-c", "echo 'about to fault' >&2; kill -SEGV $$"], { timeoutMs: 5000 });
    const facts = parseWorkerResult("cuda", r);
    expect(facts.status).toBe("error");
    expect(facts.error).toBe("the cuda probe crashed (SIGSEGV): about to fault");
  });
  test("a worker past its deadline is a timeout, not a hang", async () => {
    const facts = await runNativeProbe<FlashattnFacts>("flashattn", { timeoutMs: 1 });
    expect(facts.status).toBe("timeout");
  });
});

describe("FFI probes of system libraries (in the worker)", () => {
  test("NVML and libcuda: absent here, with the loader's words for the soname", async () => {
    const [nvml, cuda] = await Promise.all([
      runNativeProbe<NvmlFacts>("nvml", { timeoutMs: 20_000 }),
      runNativeProbe<CudaDriverFacts>("cuda", { timeoutMs: 20_000 }),
    ]);
    const hasDriver = fs.existsSync("/proc/driver/nvidia/version");
    if (hasDriver) {
      expect(cuda.status).not.toBe("absent");
      return;
    }
    expect(nvml.status).toBe("absent");
    expect(nvml.error).toContain('"libnvidia-ml.so.1": cannot open shared object file');
    expect(cuda.status).toBe("absent");
    // Bun mentions a cwd-relative path it also tried; the probe reports the soname the system search missed.
    expect(cuda.error).not.toContain(process.cwd() + "/libcuda");
  });
  test("HIP: the runtime installed here loads and reports its version; no GPU", async () => {
    const hip = await runNativeProbe<HipFacts>("hip", { timeoutMs: 20_000 });
    const installed = [
      "/lib/x86_64-linux-gnu/libamdhip64.so.5",
      "/opt/rocm/lib/libamdhip64.so.6",
      "/opt/rocm/lib/libamdhip64.so.7",
    ].some((p) => fs.existsSync(p));
    if (!installed) {
      expect(hip.status).toBe("absent");
      return;
    }
    expect(hip.library).toMatch(/libamdhip64\.so/);
    expect(hip.runtime_version).toMatch(/^\d+\.\d+$/);
    if (!fs.existsSync("/dev/kfd")) {
      expect(hip.status).toBe("error");
      expect(hip.code_name).toMatch(/^hipError/);
    }
  });
});

describe("our libraries and the backend decision (in the worker)", () => {
  test.skipIf(!hasCpuLibrary)("the CPU library loads, passes its self-test and is chosen", async () => {
    const facts = await runNativeProbe<FlashattnFacts>("flashattn", { timeoutMs: 60_000 });
    expect(facts.status).toBe("ok");
    const cpu = facts.libraries.find((l) => l.backend === "cpu")!;
    expect(cpu.loaded).toBe(true);
    expect(cpu.info?.abi).toBe(3);
    expect(cpu.self_test?.ok).toBe(true);
    expect(cpu.self_test!.rel_error!).toBeLessThan(1e-5);
    expect(facts.chosen).toBe("cpu");
    expect(facts.request).toMatchObject({ backend: "auto", source: "default" });
    // The system-search attempt names the soname, not the cwd-relative path Bun also tried.
    const system = facts.libraries.flatMap((l) => l.attempts).filter((a) => a.source === "system" && !a.ok);
    for (const a of system) expect(a.error).not.toContain(`${process.cwd()}/libflashattn`);
    // A HIP library built here (hipcc 5.2) loads, describes itself, and finds no GPU.
    const hip = facts.libraries.find((l) => l.backend === "hip")!;
    if (fs.existsSync(path.join(root, "build", "libflashattn_hip.so")) && !fs.existsSync("/dev/kfd")) {
      expect(hip).toMatchObject({ loaded: true, device_count: 0 });
      expect(hip.info?.built_with?.hip).toMatch(/^\d+\.\d+$/);
      expect(hip.device_error).toContain("/dev/kfd");
      expect(hip.self_test).toBeUndefined();
    }
  });
  test.skipIf(!hasCpuLibrary)("FLASHATTN_BACKEND=cpu is reported as the user's choice", async () => {
    const facts = await runNativeProbe<FlashattnFacts>("flashattn", {
      timeoutMs: 60_000,
      env: { ...process.env, FLASHATTN_BACKEND: "cpu" },
      options: { noSelfTest: true },
    });
    expect(facts.request).toMatchObject({ backend: "cpu", source: "env" });
    const cuda = facts.decisions.find((d) => d.backend === "cuda")!;
    expect(cuda.verdict).toBe("disabled");
    expect(cuda.reasons[0]).toContain("FLASHATTN_BACKEND=cpu");
    expect(facts.libraries.find((l) => l.backend === "cpu")!.self_test).toBeUndefined();
  });
  test("a bad FLASHATTN_BACKEND is a recorded error, not a crash", async () => {
    const facts = await runNativeProbe<FlashattnFacts>("flashattn", {
      timeoutMs: 60_000,
      env: { ...process.env, FLASHATTN_BACKEND: "tpu" },
      options: { noSelfTest: true },
    });
    expect(facts.status).toBe("error");
    expect(facts.error).toContain("FLASHATTN_BACKEND=tpu is not one of auto, cpu, cuda, hip");
  });
});

describe("the Python stack script", () => {
  const python = ["/usr/bin/python3", "/usr/local/bin/python3"].find((p) => fs.existsSync(p)) ?? Bun.which("python3");
  test.skipIf(!python)(
    "imports what people import from a flash_attn that imports, naming the module each one misses",
    async () => {
      // A real package laid out as flash-attn 2.8 is: rotary needs a module that is not installed here, rms_norm the
      // optional dropout_layer_norm extension, the triton layer norm imports.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "doctor-py-"));
      const write = (file: string, text: string) => {
        fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
        fs.writeFileSync(path.join(dir, file), text);
      };
      write("flash_attn/__init__.py", '__version__ = "2.8.3"\n');
      write("flash_attn/layers/__init__.py", "");
      write("flash_attn/layers/rotary.py", "import flashattn_doctor_test_missing_dependency\n");
      write("flash_attn/ops/__init__.py", "");
      write("flash_attn/ops/rms_norm.py", "import dropout_layer_norm\n");
      write("flash_attn/ops/triton/__init__.py", "");
      write("flash_attn/ops/triton/layer_norm.py", "LAYER_NORM = True\n");
      try {
        const facts = await probePython({ ...process.env, PYTHONPATH: dir });
        expect(facts.flash_attn).toMatchObject({ installed: true, importable: true, version: "2.8.3" });
        expect(facts.flash_attn_modules).toEqual([
          {
            module: "flash_attn.layers.rotary",
            importable: false,
            import_error: "ModuleNotFoundError: No module named 'flashattn_doctor_test_missing_dependency'",
            missing_module: "flashattn_doctor_test_missing_dependency",
          },
          {
            module: "flash_attn.ops.rms_norm",
            importable: false,
            import_error: "ModuleNotFoundError: No module named 'dropout_layer_norm'",
            missing_module: "dropout_layer_norm",
          },
          { module: "flash_attn.ops.triton.layer_norm", importable: true },
        ]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
  test("FLASHATTN_PYTHON naming no interpreter is recorded with that path, not replaced by python3", async () => {
    const missing = path.join(os.tmpdir(), "flashattn-no-such-venv", "bin", "python");
    const facts = await probePython({ ...process.env, FLASHATTN_PYTHON: missing });
    expect(facts).toMatchObject({ status: "absent", executable: missing, error: `${missing} not found` });
    expect(probeHost({ FLASHATTN_PYTHON: missing }).env.FLASHATTN_PYTHON).toBe(missing);
  });
  test("NVIDIA GPUs on the PCI bus are counted from vendor and class; an unreadable bus is unknown", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "doctor-pci-"));
    const device = (name: string, vendor: string, cls: string) => {
      fs.mkdirSync(path.join(dir, name));
      fs.writeFileSync(path.join(dir, name, "vendor"), `${vendor}\n`);
      fs.writeFileSync(path.join(dir, name, "class"), `${cls}\n`);
    };
    try {
      device("0000:00:01.0", "0x8086", "0x030000"); // Intel graphics
      device("0000:17:00.0", "0x10de", "0x030200"); // NVIDIA 3D controller (a data-center GPU)
      device("0000:17:00.1", "0x10de", "0x040300"); // its HDMI audio function: not a GPU
      device("0000:65:00.0", "0x10de", "0x030000"); // NVIDIA VGA controller
      expect(nvidiaPciGpus(dir)).toBe(2);
      expect(nvidiaPciGpus(path.join(dir, "missing"))).toBeUndefined();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  test.skipIf(!python)("reports a flash_attn whose import fails, with the undefined symbol", async () => {
    // A real package on PYTHONPATH whose import raises what a mismatched extension raises.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "doctor-py-"));
    fs.mkdirSync(path.join(dir, "flash_attn"));
    fs.writeFileSync(
      path.join(dir, "flash_attn", "__init__.py"),
      'raise ImportError("/site/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")\n',
    );
    fs.mkdirSync(path.join(dir, "flash_attn-2.8.3.dist-info"));
    fs.writeFileSync(
      path.join(dir, "flash_attn-2.8.3.dist-info", "METADATA"),
      "Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n",
    );
    try {
      const facts = await probePython({ ...process.env, PYTHONPATH: dir });
      expect(facts.status).toBe("ok");
      expect(facts.version).toMatch(/^3\.\d+\.\d+$/);
      expect(facts.flash_attn).toMatchObject({
        installed: true,
        version: "2.8.3",
        importable: false,
        undefined_symbol: "_ZN3c104cuda9SetDeviceEi",
      });
      expect(facts.flash_attn?.import_error).toStartWith("ImportError: ");
      expect(facts.flash_attn_3).toEqual({ installed: false });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  test("no python is absent, not an error", async () => {
    const facts = await probePython({ PATH: "/nonexistent" });
    expect(facts.status).toBe("absent");
  });
});

describe("filesystem facts", () => {
  test("host and /dev/kfd", () => {
    const host = probeHost({ FLASHATTN_BACKEND: "cpu", SECRET_TOKEN: "x" });
    expect(host.env).toEqual({ FLASHATTN_BACKEND: "cpu" });
    expect(host.runtime).toMatch(/^bun \d/);
    expect(host.groups?.length).toBeGreaterThan(0);
    expect(probeKfd().exists).toBe(fs.existsSync("/dev/kfd"));
  });
});
