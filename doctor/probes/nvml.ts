// NVML (libnvidia-ml.so.1): the driver version, the highest CUDA the driver supports, and per GPU its name, UUID,
// compute capability, memory and MIG mode, without creating a CUDA context. The versioned symbols (_v2) are bound
// by name because nvml.h only #defines the plain names to them. Runs in the probe worker (see native_util.ts).
import { type NativeArg, type NativeLibrary, openLibrary, type SymbolTable } from "../../ffi/loader.ts";
import { codeName, nvmlReturnNames } from "../codes.ts";
import type { NvmlDevice, NvmlFacts } from "../facts.ts";
import { cudaVersionString, intFrom, loaderError, mappedPath, textFrom } from "./native_util.ts";

const nvmlSymbols = {
  nvmlInit_v2: { args: [], returns: "i32" },
  nvmlShutdown: { args: [], returns: "i32" },
  nvmlSystemGetDriverVersion: { args: ["buffer", "u32"], returns: "i32" },
  nvmlSystemGetCudaDriverVersion_v2: { args: ["buffer"], returns: "i32" },
  nvmlDeviceGetCount_v2: { args: ["buffer"], returns: "i32" },
  nvmlDeviceGetHandleByIndex_v2: { args: ["u32", "buffer"], returns: "i32" },
  nvmlDeviceGetName: { args: ["pointer", "buffer", "u32"], returns: "i32" },
  nvmlDeviceGetUUID: { args: ["pointer", "buffer", "u32"], returns: "i32" },
  // nvmlMemory_t {unsigned long long total, free, used}
  nvmlDeviceGetMemoryInfo: { args: ["pointer", "buffer"], returns: "i32" },
  nvmlDeviceGetCudaComputeCapability: { args: ["pointer", "buffer", "buffer"], returns: "i32" },
  nvmlDeviceGetArchitecture: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetMigMode: { args: ["pointer", "buffer", "buffer"], returns: "i32", optional: true },
} as const satisfies SymbolTable;

const NVML_SUCCESS = 0;
const NVML_ERROR_NOT_SUPPORTED = 3;
// nvml.h: NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80, NVML_DEVICE_NAME_V2_BUFFER_SIZE 96, NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
const DRIVER_VERSION_BYTES = 80;
const NAME_BYTES = 96;
const UUID_BYTES = 96;
/** A bogus count from a broken library must not drive a loop. */
const MAX_DEVICES = 64;

export function probeNvml(): NvmlFacts {
  const started = performance.now();
  const ms = () => Math.round(performance.now() - started);
  let lib: NativeLibrary<typeof nvmlSymbols>;
  try {
    lib = openLibrary("libnvidia-ml.so.1", nvmlSymbols);
  } catch (e) {
    return { status: "absent", error: loaderError(e), ms: ms() };
  }
  const call = (name: keyof typeof nvmlSymbols, ...args: NativeArg[]) => Number(lib.call(name, ...args));
  const facts: NvmlFacts = { status: "ok", library: mappedPath("libnvidia-ml.so") };
  const fail = (what: string, code: number): NvmlFacts => ({
    ...facts,
    status: "error",
    code,
    code_name: codeName(nvmlReturnNames, code),
    error: `${what} returned ${codeName(nvmlReturnNames, code)}`,
  });
  try {
    const init = call("nvmlInit_v2");
    if (init !== NVML_SUCCESS) return { ...fail("nvmlInit_v2", init), ms: ms() };
    try {
      const driver = textFrom(DRIVER_VERSION_BYTES, (b) => call("nvmlSystemGetDriverVersion", b, b.length));
      if (driver.code === NVML_SUCCESS) facts.driver_version = driver.text;
      const cuda = intFrom((o) => call("nvmlSystemGetCudaDriverVersion_v2", o));
      if (cuda.code === NVML_SUCCESS) facts.cuda_driver_version = cudaVersionString(cuda.value);
      const count = new Uint32Array(1);
      const countCode = call("nvmlDeviceGetCount_v2", count);
      if (countCode !== NVML_SUCCESS) return { ...fail("nvmlDeviceGetCount_v2", countCode), ms: ms() };
      facts.devices = [];
      for (let i = 0; i < Math.min(count[0], MAX_DEVICES); i++) facts.devices.push(probeDevice(i));
    } finally {
      call("nvmlShutdown");
    }
  } finally {
    lib.close();
  }
  return { ...facts, ms: ms() };

  function probeDevice(index: number): NvmlDevice {
    const device: NvmlDevice = { index };
    const handleOut = new BigUint64Array(1);
    if (call("nvmlDeviceGetHandleByIndex_v2", index, handleOut) !== NVML_SUCCESS) return device;
    const handle = handleOut[0];
    const name = textFrom(NAME_BYTES, (b) => call("nvmlDeviceGetName", handle, b, b.length));
    if (name.code === NVML_SUCCESS) device.name = name.text;
    const uuid = textFrom(UUID_BYTES, (b) => call("nvmlDeviceGetUUID", handle, b, b.length));
    if (uuid.code === NVML_SUCCESS) device.uuid = uuid.text;
    const memory = new BigUint64Array(3);
    if (call("nvmlDeviceGetMemoryInfo", handle, memory) === NVML_SUCCESS) device.memory_total_bytes = Number(memory[0]);
    const major = new Int32Array(1), minor = new Int32Array(1);
    if (call("nvmlDeviceGetCudaComputeCapability", handle, major, minor) === NVML_SUCCESS) {
      device.compute_capability = `${major[0]}.${minor[0]}`;
    }
    if (lib.has("nvmlDeviceGetArchitecture")) {
      const arch = new Uint32Array(1);
      if (call("nvmlDeviceGetArchitecture", handle, arch) === NVML_SUCCESS) device.architecture = arch[0];
    }
    if (lib.has("nvmlDeviceGetMigMode")) {
      const current = new Uint32Array(1), pending = new Uint32Array(1);
      const code = call("nvmlDeviceGetMigMode", handle, current, pending);
      if (code === NVML_SUCCESS) device.mig = { current: current[0] === 1, pending: pending[0] === 1 };
      else if (code === NVML_ERROR_NOT_SUPPORTED) device.mig = null;
    }
    return device;
  }
}
