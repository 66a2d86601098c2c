// The CUDA driver API (libcuda.so.1), the library libflashattn_cuda really depends on (its runtime is linked
// statically). Reports which file the loader picked (a toolkit stub first on the path is a classic), the CUDA
// version the driver supports, and per device what the kernels care about: compute capability, SMs, memory,
// opt-in shared memory, L2. Runs in the probe worker (see native_util.ts).
import { type NativeArg, type NativeLibrary, openLibrary, type SymbolTable } from "../../ffi/loader.ts";
import { codeName, cuResultNames } from "../codes.ts";
import type { CudaDevice, CudaDriverFacts } from "../facts.ts";
import { cudaVersionString, intFrom, loaderError, mappedPath, textFrom } from "./native_util.ts";

const cudaSymbols = {
  cuInit: { args: ["u32"], returns: "i32" },
  cuDriverGetVersion: { args: ["buffer"], returns: "i32" },
  cuDeviceGetCount: { args: ["buffer"], returns: "i32" },
  cuDeviceGet: { args: ["buffer", "i32"], returns: "i32" },
  cuDeviceGetName: { args: ["buffer", "i32", "i32"], returns: "i32" },
  // cuda.h #defines cuDeviceTotalMem to the _v2 entry point (size_t result)
  cuDeviceTotalMem_v2: { args: ["buffer", "i32"], returns: "i32" },
  cuDeviceGetAttribute: { args: ["buffer", "i32", "i32"], returns: "i32" },
  cuDeviceGetPCIBusId: { args: ["buffer", "i32", "i32"], returns: "i32" },
} as const satisfies SymbolTable;

// CUdevice_attribute values (unchanged since CUDA 9)
const Attr = {
  multiprocessors: 16,
  computeMode: 20,
  l2Bytes: 38,
  ccMajor: 75,
  ccMinor: 76,
  sharedPerSm: 81,
  sharedPerBlockOptin: 97,
} as const;

const CUDA_SUCCESS = 0;
const NAME_BYTES = 256;
const PCI_BUS_ID_BYTES = 32;
const MAX_DEVICES = 64;

export function probeCudaDriver(): CudaDriverFacts {
  const started = performance.now();
  const ms = () => Math.round(performance.now() - started);
  let lib: NativeLibrary<typeof cudaSymbols>;
  try {
    lib = openLibrary("libcuda.so.1", cudaSymbols);
  } catch (e) {
    return { status: "absent", error: loaderError(e), ms: ms() };
  }
  const call = (name: keyof typeof cudaSymbols, ...args: NativeArg[]) => Number(lib.call(name, ...args));
  const facts: CudaDriverFacts = { status: "ok", library: mappedPath("libcuda.so") };
  try {
    // cuDriverGetVersion needs no cuInit, so the version is known even when initialisation fails.
    const version = intFrom((o) => call("cuDriverGetVersion", o));
    if (version.code === CUDA_SUCCESS && version.value > 0) {
      facts.driver_cuda_version = cudaVersionString(version.value);
    }
    const fail = (what: string, code: number): CudaDriverFacts => ({
      ...facts,
      status: "error",
      code,
      code_name: codeName(cuResultNames, code),
      error: `${what} returned ${codeName(cuResultNames, code)}`,
      ms: ms(),
    });
    const init = call("cuInit", 0);
    if (init !== CUDA_SUCCESS) return fail("cuInit", init);
    const count = intFrom((o) => call("cuDeviceGetCount", o));
    if (count.code !== CUDA_SUCCESS) return fail("cuDeviceGetCount", count.code);
    facts.devices = [];
    for (let i = 0; i < Math.min(count.value, MAX_DEVICES); i++) {
      const handle = intFrom((o) => call("cuDeviceGet", o, i));
      if (handle.code === CUDA_SUCCESS) facts.devices.push(probeDevice(i, handle.value));
    }
  } finally {
    lib.close();
  }
  return { ...facts, ms: ms() };

  function probeDevice(index: number, dev: number): CudaDevice {
    const attr = (id: number) => {
      const r = intFrom((o) => call("cuDeviceGetAttribute", o, id, dev));
      return r.code === CUDA_SUCCESS ? r.value : undefined;
    };
    const device: CudaDevice = { index };
    const name = textFrom(NAME_BYTES, (b) => call("cuDeviceGetName", b, b.length, dev));
    if (name.code === CUDA_SUCCESS) device.name = name.text;
    const major = attr(Attr.ccMajor), minor = attr(Attr.ccMinor);
    if (major !== undefined && minor !== undefined) device.compute_capability = `${major}.${minor}`;
    device.multiprocessors = attr(Attr.multiprocessors);
    const memory = new BigUint64Array(1);
    if (call("cuDeviceTotalMem_v2", memory, dev) === CUDA_SUCCESS) device.memory_bytes = Number(memory[0]);
    device.shared_memory_per_block_optin_bytes = attr(Attr.sharedPerBlockOptin);
    device.shared_memory_per_sm_bytes = attr(Attr.sharedPerSm);
    device.l2_bytes = attr(Attr.l2Bytes);
    device.compute_mode = attr(Attr.computeMode);
    const bus = textFrom(PCI_BUS_ID_BYTES, (b) => call("cuDeviceGetPCIBusId", b, b.length, dev));
    if (bus.code === CUDA_SUCCESS) device.pci_bus_id = bus.text;
    return device;
  }
}
