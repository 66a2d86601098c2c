// What the doctor knows about a machine. Probes (doctor/probes/) produce these facts; rules (doctor/rules/) read
// nothing else, so a report saved with `--json` on one machine replays to the same diagnosis anywhere
// (`--facts FILE`). The JSON form is documented in doctor/schema.json and docs/doctor.md; bump
// REPORT_SCHEMA_VERSION on any incompatible change.

import type { PrebuiltManifest } from "../ffi/prebuilt.ts";
import type { DeviceSelection } from "../lib/devices.ts";
import type { ModelAdvice } from "./model/advice.ts";
import type { ModelFacts } from "./model/probe.ts";

export const REPORT_SCHEMA_VERSION = 1;
export const REPORT_SCHEMA_ID = `flashattn.doctor/${REPORT_SCHEMA_VERSION}`;

/** How a probe ended. "absent" = the thing it looks for is not installed (not an error by itself). */
export type ProbeStatus = "ok" | "absent" | "error" | "timeout";

export interface ProbeResult {
  status: ProbeStatus;
  /** One line: the library's, the loader's or the tool's own words when the probe did not succeed. */
  error?: string;
  ms?: number;
}

export interface HostFacts {
  os: string;
  arch: string;
  kernel?: string;
  runtime: string;
  /** The user's group names (for /dev/kfd and /dev/nvidia* access). */
  groups?: string[];
  /** Environment variables that change what loads or what is chosen (secrets are never collected). */
  env: Record<string, string>;
  /** set when /proc, /sys and /dev could not be read (Deno without --allow-all): the runtime's words */
  restricted?: string;
}

// ---- NVIDIA ---------------------------------------------------------------------------------------------------

export interface NvmlDevice {
  index: number;
  name?: string;
  uuid?: string;
  /** "9.0" */
  compute_capability?: string;
  memory_total_bytes?: number;
  /** NVML architecture id (TURING=6 ... BLACKWELL=10) */
  architecture?: number;
  /** null when the GPU has no MIG support */
  mig?: { current: boolean; pending: boolean } | null;
  /** "00000000:3B:00.0" as NVML writes it (eight-digit domain, upper-case hex) */
  pci_bus_id?: string;
  /** the board serial number; absent where the board has none to give (most GeForce cards) */
  serial?: string;
  /** percent of the last sample period a kernel ran (tells a link at idle from one under load) */
  utilization_percent?: number;
  /** null: the board has no ECC (NVML_ERROR_NOT_SUPPORTED) */
  ecc?: NvmlEcc | null;
  /** pages retired after ECC errors (boards before Ampere); null: the board retires none (NOT_SUPPORTED) */
  retired_pages?: NvmlRetiredPages | null;
  /** rows remapped after ECC errors (Ampere and later); null: the board remaps none (NOT_SUPPORTED) */
  remapped_rows?: NvmlRemappedRows | null;
  pcie?: NvmlPcieLink;
  /** each NVLink NVML answered for; null: the board has no NVLink (NOT_SUPPORTED on link 0) */
  nvlinks?: NvmlNvLink[] | null;
}

export interface NvmlEcc {
  enabled: boolean;
  /** the mode after the next reset */
  pending: boolean;
  /** uncorrected errors since the driver loaded */
  volatile_uncorrected?: number;
  /** uncorrected errors over the board's life */
  aggregate_uncorrected?: number;
}

export interface NvmlRetiredPages {
  /** retired for multiple single-bit errors */
  single_bit: number;
  /** retired for a double-bit error */
  double_bit: number;
  /** a retirement waits for the next driver load or reset; until then the bad page may still be handed out */
  pending: boolean;
}

export interface NvmlRemappedRows {
  correctable: number;
  uncorrectable: number;
  /** a remap waits for the next reset */
  pending: boolean;
  /** a remap failed: the bank has no spare row left */
  failed: boolean;
}

/** The PCIe link now and the best this GPU and its slot allow (nvmlDeviceGetMaxPcieLink*: device and system). */
export interface NvmlPcieLink {
  current_generation?: number;
  current_width?: number;
  max_generation?: number;
  max_width?: number;
}

export interface NvmlNvLink {
  link: number;
  active: boolean;
  /** the PCI bus id at the other end of an active link (a GPU or an NVSwitch) */
  remote_pci_bus_id?: string;
}

/** nvmlGpuTopologyLevel_t by name: the closest place the paths of two GPUs meet. */
export type TopologyLevel = "internal" | "single" | "multiple" | "hostbridge" | "node" | "system";

/** nvmlGpuP2PStatus_t by name. */
export type P2PStatus =
  | "ok"
  | "chipset_not_supported"
  | "gpu_not_supported"
  | "topology_not_supported"
  | "disabled_by_regkey"
  | "not_supported"
  | "unknown";

/** Two GPUs (NVML indices, a < b): where their paths meet, and whether one can read the other's memory. */
export interface NvmlPair {
  a: number;
  b: number;
  common_ancestor?: TopologyLevel;
  /** peer-to-peer reads over any path */
  p2p_read?: P2PStatus;
  /** peer-to-peer over NVLink */
  p2p_nvlink?: P2PStatus;
}

export interface NvmlFacts extends ProbeResult {
  library?: string;
  /** nvmlReturn_t of the call that failed, with its name */
  code?: number;
  code_name?: string;
  driver_version?: string;
  /** highest CUDA the driver supports, "13.0" */
  cuda_driver_version?: string;
  devices?: NvmlDevice[];
  /** every pair of the first MAX_TOPOLOGY_DEVICES devices */
  pairs?: NvmlPair[];
}

export interface CudaDevice {
  index: number;
  name?: string;
  compute_capability?: string;
  multiprocessors?: number;
  memory_bytes?: number;
  shared_memory_per_block_optin_bytes?: number;
  shared_memory_per_sm_bytes?: number;
  l2_bytes?: number;
  pci_bus_id?: string;
  /** CU_COMPUTEMODE: 0 default, 2 prohibited, 3 exclusive process */
  compute_mode?: number;
}

export interface CudaDriverFacts extends ProbeResult {
  /** The file the loader actually mapped for libcuda.so.1 (from /proc/self/maps). */
  library?: string;
  /** CUresult of the call that failed (cuInit usually), with its name. */
  code?: number;
  code_name?: string;
  /** cuDriverGetVersion as "major.minor" */
  driver_cuda_version?: string;
  devices?: CudaDevice[];
}

export interface NvidiaSmiFacts extends ProbeResult {
  path?: string;
  exit_code?: number;
  driver_version?: string;
  gpus?: { name: string; compute_capability?: string; memory_mib?: number }[];
}

export interface NvidiaFacts {
  /** /proc/driver/nvidia/version: the kernel module's version (null when the module is not loaded). */
  kernel_module: { loaded: boolean; version?: string };
  /** /dev/nvidia* device nodes present */
  device_nodes: string[];
  /** NVIDIA display/3D controllers on the PCI bus, driver or not (absent where /sys/bus/pci could not be read) */
  pci_gpus?: number;
  nvml: NvmlFacts;
  cuda_driver: CudaDriverFacts;
  smi: NvidiaSmiFacts;
}

// ---- AMD ------------------------------------------------------------------------------------------------------

export interface HipDevice {
  index: number;
  name?: string;
  /** gcnArchName, e.g. "gfx90a:sramecc+:xnack-" */
  gcn_arch_name?: string;
  memory_bytes?: number;
}

export interface HipFacts extends ProbeResult {
  library?: string;
  code?: number;
  code_name?: string;
  /** "6.2" from hipRuntimeGetVersion */
  runtime_version?: string;
  devices?: HipDevice[];
}

export interface KfdFacts {
  exists: boolean;
  /** whether this user can open /dev/kfd read-write */
  accessible?: boolean;
  owner_group?: string;
  mode?: string;
}

export interface AmdToolFacts extends ProbeResult {
  path?: string;
  exit_code?: number;
  /** gfx names of GPU agents (rocminfo) or target_graphics_version (amd-smi) */
  gpus?: { name?: string; gfx: string }[];
}

export interface AmdFacts {
  kfd: KfdFacts;
  /** "amdgpu" kernel module present (/sys/module/amdgpu) */
  kernel_module: boolean;
  hip: HipFacts;
  rocminfo: AmdToolFacts;
  amd_smi: AmdToolFacts;
}

// ---- toolkits -------------------------------------------------------------------------------------------------

export interface ToolFacts extends ProbeResult {
  path?: string;
  /** where it was found: "PATH", "CUDA_HOME", "ROCM_PATH", a fixed directory */
  source?: string;
  version?: string;
}

export interface ToolkitFacts {
  nvcc: ToolFacts;
  hipcc: ToolFacts;
}

// ---- our native libraries and the backend decision -------------------------------------------------------------

import type { BackendName } from "../lib/vocabulary.ts";
export type { BackendName, DeviceSelection };

export interface LoadAttemptFacts {
  path: string;
  source: string;
  ok: boolean;
  error?: string;
}

export interface SelfTestFacts {
  ok: boolean;
  /** the problem it ran, in words */
  problem: string;
  kernel?: string;
  /** "Infinity" (a string: JSON has no such number) when the output held NaN or overflowed */
  rel_error?: number | "Infinity";
  tolerance?: number;
  ms?: number;
  error?: string;
}

export interface LibraryFacts {
  backend: BackendName;
  loaded: boolean;
  path?: string;
  attempts: LoadAttemptFacts[];
  /** fa_info as the library reported it */
  info?: {
    version?: string;
    abi?: number;
    compiler?: string;
    built_with?: Record<string, string>;
    archs?: string[];
    kernels?: string[];
  };
  device_count?: number;
  device_error?: string;
  /** fa_device_info of each device */
  devices?: Record<string, unknown>[];
  self_test?: SelfTestFacts;
  /** `doctor --devices`: the self-test on each device asked for (fa_set_device), by device ordinal */
  device_self_tests?: DeviceSelfTestFacts[];
}

export interface DeviceSelfTestFacts extends SelfTestFacts {
  /** the ordinal fa_set_device takes (CUDA's numbering, after CUDA_VISIBLE_DEVICES) */
  device: number;
  /** the device's PCI bus id as the library reports it, to match NVML's GPU */
  pci_bus_id?: string;
}

export interface BackendDecisionFacts {
  backend: BackendName;
  verdict: "chosen" | "usable" | "rejected" | "disabled";
  reasons: string[];
  kernel?: string;
  library?: string;
}

/** A prebuilt library found where the package or the standalone executable keeps them, with its manifest. */
export interface PrebuiltFacts {
  backend: BackendName;
  path: string;
  source: "package" | "executable";
  /** the manifest beside it (ffi/prebuilt.ts), when there is a readable one */
  manifest?: PrebuiltManifest;
  /** why the loader refuses the file (no manifest, sha256 mismatch); absent when its bytes are the packed ones */
  refused?: string;
}

export interface FlashattnFacts extends ProbeResult {
  libraries: LibraryFacts[];
  /** the prebuilt libraries found, and the C library version of this machine they are checked against */
  prebuilt?: PrebuiltFacts[];
  glibc?: string | null;
  /** what was asked for and by whom: the default, --backend, or FLASHATTN_BACKEND */
  request: { backend: "auto" | BackendName; source: "default" | "flag" | "env"; problem: string };
  decisions: BackendDecisionFacts[];
  chosen?: BackendName;
}

// ---- Python stack ----------------------------------------------------------------------------------------------

export interface PyModuleFacts {
  installed: boolean;
  /** distribution version from package metadata */
  version?: string;
  importable?: boolean;
  /** last line of the import error */
  import_error?: string;
  /** the first `undefined symbol: X` of the import error */
  undefined_symbol?: string;
  /** the module whose absence made the import fail (ModuleNotFoundError.name), e.g. "triton" */
  missing_module?: string;
  /** where the wheel came from (direct_url.json), which may carry the flash-attn wheel tag */
  wheel_url?: string;
}

export interface TorchFacts extends PyModuleFacts {
  cuda?: string | null;
  hip?: string | null;
  cuda_available?: boolean;
  device_count?: number;
  arch_list?: string[];
  cxx11_abi?: boolean;
  devices?: { name: string; capability: string; gcn_arch_name?: string }[];
  /** what torch.cuda raised while being asked, if anything */
  cuda_error?: string;
}

export interface PythonFacts extends ProbeResult {
  executable?: string;
  version?: string;
  torch?: TorchFacts;
  flash_attn?: PyModuleFacts;
  flash_attn_3?: PyModuleFacts;
  /** csrc/rotary: rotary_emb */
  rotary?: PyModuleFacts;
  /** csrc/layer_norm: dropout_layer_norm */
  layer_norm?: PyModuleFacts;
  triton?: PyModuleFacts;
  einops?: PyModuleFacts;
  /** what people import from flash_attn (flash_attn.layers.rotary, ...), tried only when flash_attn imports */
  flash_attn_modules?: { module: string; importable: boolean; import_error?: string; missing_module?: string }[];
  transformers?: PyModuleFacts & { flash_attn_2_available?: boolean; sdpa_available?: boolean };
}

// ---- the whole ---------------------------------------------------------------------------------------------------

// ---- context parallelism -------------------------------------------------------------------------------------

/** NCCL (lib/nccl.ts's search) and which GPUs can reach each other's memory (cuDeviceCanAccessPeer). */
export interface NcclFacts extends ProbeResult {
  /** The libnccl.so.2 that loaded, where it came from, and its version ("2.21.5"). */
  library?: string;
  source?: "env" | "system" | "python";
  version?: string;
  /** Every place looked at, in order, with the loader's words for those that failed. */
  attempts?: Array<{ path: string; source: "env" | "system" | "python"; ok: boolean; error?: string }>;
  /** CUDA devices the driver sees (absent when the driver could not be asked: see peer_error). */
  gpus?: number;
  /** Ordered pairs of GPUs that can NOT access each other's memory directly (empty: every pair can). */
  no_peer_access?: Array<[number, number]>;
  /** Why the driver could not be asked about the GPUs. */
  peer_error?: string;
}

export interface DoctorFacts {
  host: HostFacts;
  nvidia: NvidiaFacts;
  amd: AmdFacts;
  toolkits: ToolkitFacts;
  flashattn: FlashattnFacts;
  python: PythonFacts;
  /** `doctor --model PATH`: what the model's files and the installed transformers say (doctor/model/) */
  model?: ModelFacts;
  /** NCCL and GPU peer access, for context parallelism (absent in reports from before it was probed) */
  nccl?: NcclFacts;
}

export type Severity = "ok" | "info" | "warning" | "error";

export type Section = "system" | "nvidia" | "amd" | "toolkits" | "libraries" | "python" | "backend" | "model" | "parallel";

export interface Finding {
  /** stable identifier, dotted: "nvidia.driver_too_old" */
  id: string;
  section: Section;
  severity: Severity;
  message: string;
  /** what to do about it; every warning and error has one */
  fix?: string;
  /** more lines, printed with --verbose */
  details?: string[];
}

export interface DoctorOptions {
  /** --require: this backend (or any GPU backend) must be usable */
  require?: "cuda" | "hip" | "gpu" | "cpu";
  /** --devices: the self-test on each of these device ordinals, and a line for each GPU (doctor/rules/node.ts) */
  devices?: DeviceSelection;
}


export interface DoctorReport {
  schema: string;
  created_at: string;
  tool: { name: "flashattn"; version: string; runtime: string };
  /** set when the facts were read from a saved report (--facts) */
  replayed_from?: string;
  options: DoctorOptions;
  summary: { errors: number; warnings: number; chosen_backend: BackendName | null; healthy: boolean; line: string };
  exit_code: 0 | 1;
  findings: Finding[];
  backends: BackendDecisionFacts[];
  /** `doctor --model`: the advice computed from facts.model */
  model?: ModelAdvice;
  facts: DoctorFacts;
}
