// The HIP runtime (libamdhip64.so.7 / .6 / .5, newest first): its version and per device the name, gcnArchName and
// memory. ROCm 6+ renames hipGetDeviceProperties to hipGetDevicePropertiesR0600 with a new struct layout (the plain
// symbol is the legacy entry point), so the versioned symbol is bound for .so.6/.7. Rather than hard-coding the
// struct offset of gcnArchName for each layout, the probe hands over a buffer larger than any layout and takes the
// one "gfx..." string in it: gcnArchName is the only field that holds one. Runs in the probe worker.
import { type NativeArg, type NativeLibrary, openLibrary, type SymbolTable } from "../../ffi/loader.ts";
import { codeName, hipErrorNames } from "../codes.ts";
import type { HipDevice, HipFacts } from "../facts.ts";
import { intFrom, loaderError, mappedPath, textFrom } from "./native_util.ts";

const sonames = [
  { file: "libamdhip64.so.7", properties: "hipGetDevicePropertiesR0600" },
  { file: "libamdhip64.so.6", properties: "hipGetDevicePropertiesR0600" },
  { file: "libamdhip64.so.5", properties: "hipGetDeviceProperties" },
] as const;

const symbolsFor = (properties: string) =>
  ({
    hipInit: { args: ["u32"], returns: "i32" },
    hipRuntimeGetVersion: { args: ["buffer"], returns: "i32" },
    hipGetDeviceCount: { args: ["buffer"], returns: "i32" },
    hipDeviceGet: { args: ["buffer", "i32"], returns: "i32" },
    hipDeviceGetName: { args: ["buffer", "i32", "i32"], returns: "i32" },
    hipDeviceTotalMem: { args: ["buffer", "i32"], returns: "i32" },
    [properties]: { args: ["buffer", "i32"], returns: "i32" },
  }) satisfies SymbolTable;

const HIP_SUCCESS = 0;
/** Larger than hipDeviceProp_t of every ROCm release (about 1.5 KiB in ROCm 6). */
const PROPERTIES_BYTES = 16 << 10;
const NAME_BYTES = 256;
const MAX_DEVICES = 64;

/** gcnArchName out of a filled hipDeviceProp_t of unknown layout. */
export function findGcnArchName(props: Uint8Array): string | undefined {
  const text = new TextDecoder("latin1").decode(props);
  return /gfx[0-9a-f]{2,4}[a-z]?(?::[a-z-]+[+-])*/.exec(text)?.[0];
}

/** HIP_VERSION = major * 10000000 + minor * 100000 + patch */
export const hipVersionString = (v: number) =>
  `${Math.floor(v / 10_000_000)}.${Math.floor((v % 10_000_000) / 100_000)}`;

export function probeHip(): HipFacts {
  const started = performance.now();
  const ms = () => Math.round(performance.now() - started);
  const tried: string[] = [];
  for (const { file, properties } of sonames) {
    const symbols = symbolsFor(properties);
    let lib: NativeLibrary<typeof symbols>;
    try {
      lib = openLibrary(file, symbols);
    } catch (e) {
      tried.push(loaderError(e));
      continue;
    }
    try {
      return { ...probeWith(lib, properties), library: mappedPath("libamdhip64.so") ?? file, ms: ms() };
    } finally {
      lib.close();
    }
  }
  return { status: "absent", error: tried.at(-1) ?? "libamdhip64 not found", ms: ms() };
}

function probeWith(lib: NativeLibrary<SymbolTable>, properties: string): HipFacts {
  const call = (name: string, ...args: NativeArg[]) => Number(lib.call(name, ...args));
  const facts: HipFacts = { status: "ok" };
  const version = intFrom((o) => call("hipRuntimeGetVersion", o));
  if (version.code === HIP_SUCCESS) facts.runtime_version = hipVersionString(version.value);
  const fail = (what: string, code: number): HipFacts => ({
    ...facts,
    status: "error",
    code,
    code_name: codeName(hipErrorNames, code),
    error: `${what} returned ${codeName(hipErrorNames, code)}`,
  });
  const init = call("hipInit", 0);
  if (init !== HIP_SUCCESS) return fail("hipInit", init);
  const count = intFrom((o) => call("hipGetDeviceCount", o));
  if (count.code !== HIP_SUCCESS) return fail("hipGetDeviceCount", count.code);
  facts.devices = [];
  for (let i = 0; i < Math.min(count.value, MAX_DEVICES); i++) {
    const device: HipDevice = { index: i };
    const handle = intFrom((o) => call("hipDeviceGet", o, i));
    if (handle.code === HIP_SUCCESS) {
      const name = textFrom(NAME_BYTES, (b) => call("hipDeviceGetName", b, b.length, handle.value));
      if (name.code === HIP_SUCCESS) device.name = name.text;
      const memory = new BigUint64Array(1);
      if (call("hipDeviceTotalMem", memory, handle.value) === HIP_SUCCESS) device.memory_bytes = Number(memory[0]);
    }
    const props = new Uint8Array(PROPERTIES_BYTES);
    if (call(properties, props, i) === HIP_SUCCESS) device.gcn_arch_name = findGcnArchName(props);
    facts.devices.push(device);
  }
  return facts;
}
