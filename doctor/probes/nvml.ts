// NVML (libnvidia-ml.so.1): the driver version, the highest CUDA the driver supports, and per GPU its name, UUID,
// PCI bus id, serial, compute capability, memory, MIG mode, ECC mode and uncorrected error counts, retired pages and
// remapped rows, the PCIe link (now and at best), each NVLink, and for every pair of GPUs where their paths meet
// and whether peer-to-peer works, all without creating a CUDA context. The versioned symbols (_v2, _v3) are bound
// by name because nvml.h only #defines the plain names to them. NVML_ERROR_NOT_SUPPORTED is an answer (the board
// has no ECC, no NVLink, retires no pages), recorded as null; any other failure leaves the fact out. Runs in the
// probe worker (see native_util.ts).
import { type NativeArg, type NativeLibrary, openLibrary, type SymbolTable } from "../../ffi/loader.ts";
import { codeName, nvmlReturnNames } from "../codes.ts";
import type {
  NvmlDevice,
  NvmlFacts,
  NvmlNvLink,
  NvmlPair,
  NvmlPcieLink,
  P2PStatus,
  TopologyLevel,
} from "../facts.ts";
import { decodeCString } from "../../ffi/loader.ts";
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
  // nvmlPciInfo_t (v3): char busIdLegacy[16]; unsigned domain, bus, device, pciDeviceId, pciSubSystemId; char busId[32]
  nvmlDeviceGetPciInfo_v3: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetSerial: { args: ["pointer", "buffer", "u32"], returns: "i32", optional: true },
  // nvmlUtilization_t {unsigned gpu, memory}
  nvmlDeviceGetUtilizationRates: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  // (device, nvmlEnableState_t* current, nvmlEnableState_t* pending)
  nvmlDeviceGetEccMode: { args: ["pointer", "buffer", "buffer"], returns: "i32", optional: true },
  // (device, nvmlMemoryErrorType_t, nvmlEccCounterType_t, unsigned long long* count)
  nvmlDeviceGetTotalEccErrors: { args: ["pointer", "u32", "u32", "buffer"], returns: "i32", optional: true },
  // (device, nvmlPageRetirementCause_t, unsigned* pageCount in/out, unsigned long long* addresses)
  nvmlDeviceGetRetiredPages: { args: ["pointer", "u32", "buffer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetRetiredPagesPendingStatus: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  // (device, unsigned* corrRows, unsigned* uncRows, unsigned* isPending, unsigned* failureOccurred)
  nvmlDeviceGetRemappedRows: { args: ["pointer", "buffer", "buffer", "buffer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetCurrPcieLinkGeneration: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetCurrPcieLinkWidth: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetMaxPcieLinkGeneration: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  nvmlDeviceGetMaxPcieLinkWidth: { args: ["pointer", "buffer"], returns: "i32", optional: true },
  // (device, unsigned link, nvmlEnableState_t* isActive)
  nvmlDeviceGetNvLinkState: { args: ["pointer", "u32", "buffer"], returns: "i32", optional: true },
  // (device, unsigned link, nvmlPciInfo_t*)
  nvmlDeviceGetNvLinkRemotePciInfo_v2: { args: ["pointer", "u32", "buffer"], returns: "i32", optional: true },
  // (device1, device2, nvmlGpuTopologyLevel_t*)
  nvmlDeviceGetTopologyCommonAncestor: { args: ["pointer", "pointer", "buffer"], returns: "i32", optional: true },
  // (device1, device2, nvmlGpuP2PCapsIndex_t, nvmlGpuP2PStatus_t*)
  nvmlDeviceGetP2PStatus: { args: ["pointer", "pointer", "u32", "buffer"], returns: "i32", optional: true },
} as const satisfies SymbolTable;

const NVML_SUCCESS = 0;
const NVML_ERROR_NOT_SUPPORTED = 3;
// nvml.h: NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80, NVML_DEVICE_NAME_V2_BUFFER_SIZE 96, NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
const DRIVER_VERSION_BYTES = 80;
const NAME_BYTES = 96;
const UUID_BYTES = 96;
/** A bogus count from a broken library must not drive a loop. */
const MAX_DEVICES = 64;
/** Pairs are read among the first this many GPUs (120 pairs; an 8-GPU node has 28). */
export const MAX_TOPOLOGY_DEVICES = 16;
// nvml.h: NVML_DEVICE_SERIAL_BUFFER_SIZE 30; sizeof(nvmlPciInfo_t) 68 with busId at offset 36; NVML_NVLINK_MAX_LINKS 18
const SERIAL_BYTES = 30;
const PCI_INFO_BYTES = 68;
const PCI_BUS_ID_OFFSET = 36;
const PCI_BUS_ID_BYTES = 32;
const NVLINK_MAX_LINKS = 18;
/** Retired page addresses read at most (the count comes back even when there are more). */
const RETIRED_PAGES_READ = 64;
// nvml.h enums
const NVML_ERROR_INSUFFICIENT_SIZE = 7;
const NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1;
const NVML_VOLATILE_ECC = 0;
const NVML_AGGREGATE_ECC = 1;
const NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0;
const NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1;
const NVML_P2P_CAPS_INDEX_READ = 0;
const NVML_P2P_CAPS_INDEX_NVLINK = 2;
const topologyLevels: Record<number, TopologyLevel> = {
  0: "internal",
  10: "single",
  20: "multiple",
  30: "hostbridge",
  40: "node",
  50: "system",
};
const p2pStatuses: readonly P2PStatus[] = [
  "ok",
  "chipset_not_supported",
  "gpu_not_supported",
  "topology_not_supported",
  "disabled_by_regkey",
  "not_supported",
  "unknown",
];

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
      const handles: (bigint | undefined)[] = [];
      for (let i = 0; i < Math.min(count[0], MAX_DEVICES); i++) {
        const handleOut = new BigUint64Array(1);
        const handle = call("nvmlDeviceGetHandleByIndex_v2", i, handleOut) === NVML_SUCCESS ? handleOut[0] : undefined;
        handles.push(handle);
        facts.devices.push(handle === undefined ? { index: i } : probeDevice(i, handle));
      }
      const pairs = probePairs(handles.slice(0, MAX_TOPOLOGY_DEVICES));
      if (pairs.length) facts.pairs = pairs;
    } finally {
      call("nvmlShutdown");
    }
  } finally {
    lib.close();
  }
  return { ...facts, ms: ms() };

  function probeDevice(index: number, handle: bigint): NvmlDevice {
    const device: NvmlDevice = { index };
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
    if (lib.has("nvmlDeviceGetPciInfo_v3")) {
      const pci = pciBusId((b) => call("nvmlDeviceGetPciInfo_v3", handle, b));
      if (pci) device.pci_bus_id = pci;
    }
    if (lib.has("nvmlDeviceGetSerial")) {
      const serial = textFrom(SERIAL_BYTES, (b) => call("nvmlDeviceGetSerial", handle, b, b.length));
      if (serial.code === NVML_SUCCESS && serial.text) device.serial = serial.text;
    }
    if (lib.has("nvmlDeviceGetUtilizationRates")) {
      const rates = new Uint32Array(2);
      if (call("nvmlDeviceGetUtilizationRates", handle, rates) === NVML_SUCCESS && rates[0] <= 100) {
        device.utilization_percent = rates[0];
      }
    }
    probeMemoryHealth(device, handle);
    const pcie = probePcie(handle);
    if (Object.keys(pcie).length) device.pcie = pcie;
    const nvlinks = probeNvLinks(handle);
    if (nvlinks !== undefined) device.nvlinks = nvlinks;
    return device;
  }

  /** An unsigned out-parameter of `symbol` (device, unsigned*), or the NVML code when the call failed. */
  function unsignedOf(symbol: keyof typeof nvmlSymbols, handle: bigint): { code: number; value: number } {
    if (!lib.has(symbol)) return { code: NVML_ERROR_NOT_SUPPORTED, value: 0 };
    const out = new Uint32Array(1);
    const code = call(symbol, handle, out);
    return { code, value: out[0] };
  }

  /** The busId text of an nvmlPciInfo_t that `fill` writes. */
  function pciBusId(fill: (buf: Uint8Array) => number): string | undefined {
    const info = new Uint8Array(PCI_INFO_BYTES);
    if (fill(info) !== NVML_SUCCESS) return undefined;
    return decodeCString(info.subarray(PCI_BUS_ID_OFFSET, PCI_BUS_ID_OFFSET + PCI_BUS_ID_BYTES)).trim() || undefined;
  }

  /** ECC mode and uncorrected counts, retired pages, remapped rows: each null where the board has none. */
  function probeMemoryHealth(device: NvmlDevice, handle: bigint): void {
    if (lib.has("nvmlDeviceGetEccMode")) {
      const current = new Uint32Array(1), pending = new Uint32Array(1);
      const code = call("nvmlDeviceGetEccMode", handle, current, pending);
      if (code === NVML_ERROR_NOT_SUPPORTED) device.ecc = null;
      else if (code === NVML_SUCCESS) {
        device.ecc = { enabled: current[0] === 1, pending: pending[0] === 1 };
        const uncorrected = (counter: number) => {
          if (!lib.has("nvmlDeviceGetTotalEccErrors")) return undefined;
          const out = new BigUint64Array(1);
          const ok = call("nvmlDeviceGetTotalEccErrors", handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter, out);
          // A count past 2^53 is no count (the report holds exact integers only): left out, not rounded.
          return ok === NVML_SUCCESS && out[0] <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(out[0]) : undefined;
        };
        const volatile = uncorrected(NVML_VOLATILE_ECC), aggregate = uncorrected(NVML_AGGREGATE_ECC);
        if (volatile !== undefined) device.ecc.volatile_uncorrected = volatile;
        if (aggregate !== undefined) device.ecc.aggregate_uncorrected = aggregate;
      }
    }
    if (lib.has("nvmlDeviceGetRetiredPages")) {
      const retired = (cause: number) => {
        const count = new Uint32Array([RETIRED_PAGES_READ]);
        const code = call("nvmlDeviceGetRetiredPages", handle, cause, count, new BigUint64Array(RETIRED_PAGES_READ));
        // With more pages than the buffer holds NVML still writes the count.
        return { code, count: code === NVML_SUCCESS || code === NVML_ERROR_INSUFFICIENT_SIZE ? count[0] : undefined };
      };
      const single = retired(NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS);
      const double = retired(NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR);
      if (single.code === NVML_ERROR_NOT_SUPPORTED) device.retired_pages = null;
      else if (single.count !== undefined && double.count !== undefined) {
        const pending = unsignedOf("nvmlDeviceGetRetiredPagesPendingStatus", handle);
        device.retired_pages = {
          single_bit: single.count,
          double_bit: double.count,
          pending: pending.code === NVML_SUCCESS && pending.value === 1,
        };
      }
    }
    if (lib.has("nvmlDeviceGetRemappedRows")) {
      const [corr, unc, pending, failed] = [0, 1, 2, 3].map(() => new Uint32Array(1));
      const code = call("nvmlDeviceGetRemappedRows", handle, corr, unc, pending, failed);
      if (code === NVML_ERROR_NOT_SUPPORTED) device.remapped_rows = null;
      else if (code === NVML_SUCCESS) {
        device.remapped_rows = {
          correctable: corr[0],
          uncorrectable: unc[0],
          pending: pending[0] !== 0,
          failed: failed[0] !== 0,
        };
      }
    }
  }

  function probePcie(handle: bigint): NvmlPcieLink {
    const link: NvmlPcieLink = {};
    const read = (symbol: keyof typeof nvmlSymbols, key: keyof NvmlPcieLink) => {
      const r = unsignedOf(symbol, handle);
      // PCIe has generations 1..7 and widths 1..32; anything else is not a link reading.
      if (r.code === NVML_SUCCESS && r.value >= 1 && r.value <= 32) link[key] = r.value;
    };
    read("nvmlDeviceGetCurrPcieLinkGeneration", "current_generation");
    read("nvmlDeviceGetCurrPcieLinkWidth", "current_width");
    read("nvmlDeviceGetMaxPcieLinkGeneration", "max_generation");
    read("nvmlDeviceGetMaxPcieLinkWidth", "max_width");
    return link;
  }

  /** Each link up to NVML_NVLINK_MAX_LINKS; a board without NVLink answers NOT_SUPPORTED for link 0 (null). */
  function probeNvLinks(handle: bigint): NvmlNvLink[] | null | undefined {
    if (!lib.has("nvmlDeviceGetNvLinkState")) return undefined;
    const links: NvmlNvLink[] = [];
    for (let link = 0; link < NVLINK_MAX_LINKS; link++) {
      const active = new Uint32Array(1);
      const code = call("nvmlDeviceGetNvLinkState", handle, link, active);
      if (code === NVML_ERROR_NOT_SUPPORTED && link === 0) return null;
      // INVALID_ARGUMENT / NOT_SUPPORTED past the board's last link: that link does not exist.
      if (code !== NVML_SUCCESS) continue;
      const entry: NvmlNvLink = { link, active: active[0] === 1 };
      if (entry.active && lib.has("nvmlDeviceGetNvLinkRemotePciInfo_v2")) {
        const remote = pciBusId((b) => call("nvmlDeviceGetNvLinkRemotePciInfo_v2", handle, link, b));
        if (remote) entry.remote_pci_bus_id = remote;
      }
      links.push(entry);
    }
    return links;
  }

  /** Every pair a < b: the common ancestor and the P2P read / NVLink status. */
  function probePairs(handles: (bigint | undefined)[]): NvmlPair[] {
    const pairs: NvmlPair[] = [];
    for (let a = 0; a < handles.length; a++) {
      for (let b = a + 1; b < handles.length; b++) {
        const ha = handles[a], hb = handles[b];
        if (ha === undefined || hb === undefined) continue;
        const pair: NvmlPair = { a, b };
        if (lib.has("nvmlDeviceGetTopologyCommonAncestor")) {
          const level = new Uint32Array(1);
          if (call("nvmlDeviceGetTopologyCommonAncestor", ha, hb, level) === NVML_SUCCESS) {
            const name = topologyLevels[level[0]];
            if (name) pair.common_ancestor = name;
          }
        }
        if (lib.has("nvmlDeviceGetP2PStatus")) {
          const p2p = (index: number): P2PStatus | undefined => {
            const status = new Uint32Array(1);
            if (call("nvmlDeviceGetP2PStatus", ha, hb, index, status) !== NVML_SUCCESS) return undefined;
            return p2pStatuses[status[0]] ?? "unknown";
          };
          const read = p2p(NVML_P2P_CAPS_INDEX_READ), nvlink = p2p(NVML_P2P_CAPS_INDEX_NVLINK);
          if (read) pair.p2p_read = read;
          if (nvlink) pair.p2p_nvlink = nvlink;
        }
        pairs.push(pair);
      }
    }
    return pairs;
  }
}
