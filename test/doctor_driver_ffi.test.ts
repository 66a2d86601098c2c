// The NVML and driver-API probes call real shared libraries through FFI. This machine has no NVIDIA driver, so the
// libraries here are small C stand-ins built for the test with the documented C signatures (cuda.h, nvml.h): they
// check what the probes cannot check without a GPU — symbol names (_v2), argument order and types, caller
// buffers, handles passed back, error codes, and which file the loader mapped. The stub case is faithful: the
// toolkit's stub libcuda answers CUDA_ERROR_STUB_LIBRARY (34) to every call.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { CudaDriverFacts, HipFacts, NvmlFacts } from "../doctor/facts.ts";
import { runNativeProbe } from "../doctor/probes/native.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";
import { buildReport } from "../doctor/report.ts";

const hasDriver = fs.existsSync("/proc/driver/nvidia/version");
const cc = ["cc", "gcc"].find((c) => spawnSync(c, ["--version"]).status === 0);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "doctor-ffi-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const libcuda = `
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef int CUresult;
CUresult cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 2; return 0; }
CUresult cuDeviceGet(int* dev, int ordinal) { if (ordinal < 0 || ordinal > 1) return 101; *dev = 100 + ordinal; return 0; }
CUresult cuDeviceGetName(char* name, int len, int dev) { snprintf(name, len, "Stand-in H100 #%d", dev - 100); return 0; }
CUresult cuDeviceTotalMem_v2(size_t* bytes, int dev) { *bytes = (size_t)85030141952ull + (dev - 100); return 0; }
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
  if (dev < 100 || dev > 101) return 101;
  switch (attr) {
    case 75: *v = 9; return 0;          /* compute capability major */
    case 76: *v = 0; return 0;          /* minor */
    case 16: *v = 132; return 0;        /* SMs */
    case 97: *v = 232448; return 0;     /* opt-in shared memory per block */
    case 81: *v = 233472; return 0;     /* shared memory per SM */
    case 38: *v = 52428800; return 0;   /* L2 */
    case 20: *v = dev == 101 ? 3 : 0; return 0; /* compute mode: device 1 exclusive-process */
  }
  return 1;
}
CUresult cuDeviceGetPCIBusId(char* bus, int len, int dev) { snprintf(bus, len, "0000:%02x:00.0", 0x18 + dev - 100); return 0; }
`;

// Every entry point of the toolkit's stub answers CUDA_ERROR_STUB_LIBRARY.
const stubLibcuda = `
#include <stddef.h>
int cuInit(unsigned f) { return 34; }
int cuDriverGetVersion(int* v) { return 34; }
int cuDeviceGetCount(int* n) { return 34; }
int cuDeviceGet(int* d, int o) { return 34; }
int cuDeviceGetName(char* n, int l, int d) { return 34; }
int cuDeviceTotalMem_v2(size_t* b, int d) { return 34; }
int cuDeviceGetAttribute(int* v, int a, int d) { return 34; }
int cuDeviceGetPCIBusId(char* b, int l, int d) { return 34; }
`;

const libnvml = `
#include <stdio.h>
#include <string.h>
typedef struct { int index; } device_t;
static device_t devices[1] = {{0}};
static int initialised = 0;
int nvmlInit_v2(void) { initialised = 1; return 0; }
int nvmlShutdown(void) { initialised = 0; return 0; }
int nvmlSystemGetDriverVersion(char* v, unsigned len) { if (!initialised) return 1; if (len < 80) return 7; snprintf(v, len, "580.95.05"); return 0; }
int nvmlSystemGetCudaDriverVersion_v2(int* v) { *v = 13000; return 0; }
int nvmlDeviceGetCount_v2(unsigned* n) { *n = 1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, device_t** h) { if (i > 0) return 2; *h = &devices[i]; return 0; }
static int valid(device_t* d) { return d == &devices[0]; }
int nvmlDeviceGetName(device_t* d, char* n, unsigned len) { if (!valid(d)) return 2; snprintf(n, len, "Stand-in H100"); return 0; }
int nvmlDeviceGetUUID(device_t* d, char* u, unsigned len) { if (!valid(d)) return 2; snprintf(u, len, "GPU-12345678-abcd-ef01-2345-6789abcdef01"); return 0; }
typedef struct { unsigned long long total, free, used; } mem_t;
int nvmlDeviceGetMemoryInfo(device_t* d, mem_t* m) { if (!valid(d)) return 2; m->total = 85520809984ull; m->free = 1; m->used = 2; return 0; }
int nvmlDeviceGetCudaComputeCapability(device_t* d, int* major, int* minor) { if (!valid(d)) return 2; *major = 9; *minor = 0; return 0; }
int nvmlDeviceGetArchitecture(device_t* d, unsigned* a) { if (!valid(d)) return 2; *a = 9; return 0; }
int nvmlDeviceGetMigMode(device_t* d, unsigned* cur, unsigned* pend) { if (!valid(d)) return 2; *cur = 0; *pend = 1; return 0; }
`;

// ROCm 6+: hipGetDevicePropertiesR0600 fills a struct whose gcnArchName sits at a layout-specific offset; the
// stand-in puts it at an offset of its own to show the probe does not depend on one. The legacy symbol must not be
// used with a .so.6/.so.7, so the stand-in's legacy entry point answers an error.
const libhip = `
#include <stdio.h>
#include <string.h>
#include <stddef.h>
int hipInit(unsigned flags) { return 0; }
int hipRuntimeGetVersion(int* v) { *v = 60241133; return 0; }
int hipGetDeviceCount(int* n) { *n = 2; return 0; }
int hipDeviceGet(int* d, int ordinal) { *d = ordinal; return 0; }
int hipDeviceGetName(char* name, int len, int d) { snprintf(name, len, "Stand-in MI250X"); return 0; }
int hipDeviceTotalMem(size_t* bytes, int d) { *bytes = 68702699520ull; return 0; }
int hipGetDevicePropertiesR0600(char* prop, int d) {
  memset(prop, 0, 1472);
  strcpy(prop, "Stand-in MI250X");
  strcpy(prop + 1160, d == 0 ? "gfx90a:sramecc+:xnack-" : "gfx942:sramecc+:xnack-");
  return 0;
}
int hipGetDeviceProperties(char* prop, int d) { return 999; }
`;

function build(source: string, out: string): void {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const src = out + ".c";
  fs.writeFileSync(src, source);
  const r = spawnSync(cc!, ["-shared", "-fPIC", "-O1", "-o", out, src], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`building ${out} failed: ${r.stderr}`);
}

const real = path.join(dir, "driver");
const stubs = path.join(dir, "cuda", "lib64", "stubs");
beforeAll(() => {
  if (!cc || hasDriver) return;
  build(libcuda, path.join(real, "libcuda.so.1"));
  build(libnvml, path.join(real, "libnvidia-ml.so.1"));
  build(stubLibcuda, path.join(stubs, "libcuda.so.1"));
  build(libhip, path.join(real, "libamdhip64.so.7"));
});

// With a real driver installed the loader would find it first; these tests are for driverless machines.
describe.skipIf(!cc || hasDriver)("driver API and NVML probes through FFI (C stand-ins)", () => {
  test("libcuda: versioned symbols, caller buffers, attributes per device, the mapped file", async () => {
    const facts = await runNativeProbe<CudaDriverFacts>("cuda", {
      timeoutMs: 20_000,
      env: { ...process.env, LD_LIBRARY_PATH: real },
    });
    expect(facts.status).toBe("ok");
    expect(facts.library).toBe(path.join(real, "libcuda.so.1"));
    expect(facts.driver_cuda_version).toBe("13.0");
    expect(facts.devices).toEqual([
      {
        index: 0,
        name: "Stand-in H100 #0",
        compute_capability: "9.0",
        multiprocessors: 132,
        memory_bytes: 85030141952,
        shared_memory_per_block_optin_bytes: 232448,
        shared_memory_per_sm_bytes: 233472,
        l2_bytes: 52428800,
        compute_mode: 0,
        pci_bus_id: "0000:18:00.0",
      },
      {
        index: 1,
        name: "Stand-in H100 #1",
        compute_capability: "9.0",
        multiprocessors: 132,
        memory_bytes: 85030141953,
        shared_memory_per_block_optin_bytes: 232448,
        shared_memory_per_sm_bytes: 233472,
        l2_bytes: 52428800,
        compute_mode: 3,
        pci_bus_id: "0000:19:00.0",
      },
    ]);
  });
  test("NVML: _v2 entry points, handles passed back, text buffers, MIG pending", async () => {
    const facts = await runNativeProbe<NvmlFacts>("nvml", {
      timeoutMs: 20_000,
      env: { ...process.env, LD_LIBRARY_PATH: real },
    });
    expect(facts).toMatchObject({
      status: "ok",
      library: path.join(real, "libnvidia-ml.so.1"),
      driver_version: "580.95.05",
      cuda_driver_version: "13.0",
      devices: [{
        index: 0,
        name: "Stand-in H100",
        uuid: "GPU-12345678-abcd-ef01-2345-6789abcdef01",
        compute_capability: "9.0",
        memory_total_bytes: 85520809984,
        architecture: 9,
        mig: { current: false, pending: true },
      }],
    });
  });
  test("HIP: the newest soname first, the R0600 properties symbol, gcnArchName found in the struct", async () => {
    const facts = await runNativeProbe<HipFacts>("hip", {
      timeoutMs: 20_000,
      env: { ...process.env, LD_LIBRARY_PATH: real },
    });
    expect(facts).toMatchObject({
      status: "ok",
      library: path.join(real, "libamdhip64.so.7"),
      runtime_version: "6.2",
      devices: [
        { index: 0, name: "Stand-in MI250X", memory_bytes: 68702699520, gcn_arch_name: "gfx90a:sramecc+:xnack-" },
        { index: 1, name: "Stand-in MI250X", memory_bytes: 68702699520, gcn_arch_name: "gfx942:sramecc+:xnack-" },
      ],
    });
  });
  test("a stub libcuda first on LD_LIBRARY_PATH: found, diagnosed, and the fix names the directory", async () => {
    const env = { ...process.env, LD_LIBRARY_PATH: `${stubs}:${real}` };
    const cuda = await runNativeProbe<CudaDriverFacts>("cuda", { timeoutMs: 20_000, env });
    expect(cuda).toMatchObject({
      status: "error",
      code: 34,
      code_name: "CUDA_ERROR_STUB_LIBRARY",
      library: path.join(stubs, "libcuda.so.1"),
    });
    expect(cuda.driver_cuda_version).toBeUndefined();
    // Put the live facts into an otherwise-H100 machine and let the rules speak.
    const facts = structuredClone(loadFixture("h100.json").report.facts);
    facts.nvidia.cuda_driver = cuda;
    facts.host.env.LD_LIBRARY_PATH = env.LD_LIBRARY_PATH;
    const report = buildReport(facts, {}, { version: "test", runtime: "bun", createdAt: "now" });
    const stub = report.findings.find((f) => f.id === "nvidia.stub_libcuda")!;
    expect(stub.severity).toBe("error");
    expect(stub.fix).toContain(`remove ${stubs} from LD_LIBRARY_PATH`);
  });
});
