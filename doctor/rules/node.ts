// Every GPU of a node, one line each: NVML's view of its memory health (ECC, retired pages, remapped rows), its PCIe
// link and NVLinks, whether CUDA sees it, and with `--devices` the self-test that ran on it. A GPU with a problem is
// ONE error line naming every problem, so `doctor --require gpu --devices all` fails a CI job with one line per
// failing GPU. Then one line on the pairs: where their paths meet and whether peer-to-peer works.
//
// The rules (pure functions of the facts, so a replayed report judges the same):
// - fails: uncorrectable ECC errors since the driver loaded (volatile count > 0); a retired page pending; a row remap
//   pending or failed; a PCIe link narrower than the width the GPU and its slot allow; a GPU NVML lists that CUDA
//   does not see (unless CUDA_VISIBLE_DEVICES hides it, or MIG is on); with --devices, a failed or missing self-test.
// - warns: uncorrectable errors over the board's life only (aggregate > 0, volatile 0); an ECC mode change pending;
//   some NVLinks down while others are up; a PCIe generation below the best possible while the GPU is busy.
// - notes: a PCIe generation below the best at idle (GPUs slow the link to save power when idle; the width stays);
//   NOT_SUPPORTED answers (no ECC, no NVLink, no page retirement): normal for the board, said as such.
import type {
  DeviceSelfTestFacts,
  DoctorFacts,
  DoctorOptions,
  Finding,
  NvmlDevice,
  NvmlPair,
  NvmlPcieLink,
  TopologyLevel,
} from "../facts.ts";
import { sectionFindings } from "./common.ts";

/** A GPU this busy (NVML's utilization, percent) is under load: a slow link generation then is not power saving. */
export const LOADED_UTILIZATION_PERCENT = 50;

/**
 * "00000000:3B:00.0" (NVML), "0000:3b:00.0" (libcuda), "0000:3b:00" (our library) -> "0000:3b:00": the domain, bus
 * and device a GPU is found by, whichever source wrote it.
 */
export function pciKey(id: string | undefined): string | undefined {
  const m = /^\s*([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.[0-7])?\s*$/i.exec(id ?? "");
  if (!m) return undefined;
  const hex = (text: string, digits: number) => parseInt(text, 16).toString(16).padStart(digits, "0");
  return `${hex(m[1], 4)}:${hex(m[2], 2)}:${hex(m[3], 2)}`;
}

export interface LinkVerdict {
  /** "PCIe Gen5 x16" (and the best possible where it differs) */
  text: string;
  /** the link is down-trained by the rule (width below the best possible): a failing GPU */
  failure?: string;
  /** a slow generation under load */
  warning?: string;
  /** a slow generation at idle (power saving) */
  note?: string;
}

/**
 * The PCIe link rule: a width below the best the GPU and its slot allow is down-trained (a seating, riser or lane
 * fault; GPUs do not narrow the link to save power), a failure. A generation below the best is how an idle GPU
 * saves power, so it counts only under load (utilization ≥ LOADED_UTILIZATION_PERCENT): then a warning, else a note.
 */
export function pcieVerdict(link: NvmlPcieLink | undefined, utilization?: number): LinkVerdict | undefined {
  if (!link || link.current_width === undefined || link.current_generation === undefined) return undefined;
  const now = `PCIe Gen${link.current_generation} x${link.current_width}`;
  const best = `Gen${link.max_generation ?? "?"} x${link.max_width ?? "?"}`;
  const slowGen = link.max_generation !== undefined && link.current_generation < link.max_generation;
  const narrow = link.max_width !== undefined && link.current_width < link.max_width;
  const verdict: LinkVerdict = { text: slowGen || narrow ? `${now} (best ${best})` : now };
  if (narrow) {
    verdict.failure = `PCIe link down-trained to x${link.current_width} (the GPU and its slot allow x${link.max_width})`;
  }
  if (slowGen) {
    const loaded = utilization !== undefined && utilization >= LOADED_UTILIZATION_PERCENT;
    if (loaded) {
      verdict.warning = `PCIe Gen${link.current_generation} under load (${utilization}% busy) where Gen${link.max_generation} is possible`;
    } else {
      verdict.note = `PCIe Gen${link.current_generation} at idle (Gen${link.max_generation} possible: idle GPUs slow the link to save power)`;
    }
  }
  return verdict;
}

/** What the rules concluded about one GPU. */
export interface GpuHealth {
  /** the finding's id within the section: "gpu_health0" (NVML index), "gpu_health_hip1" (a device ordinal) */
  id: string;
  /** "GPU 0 (0000:3b:00)" */
  label: string;
  nvmlIndex?: number;
  /** the CUDA device ordinal (what --devices and fa_set_device take) */
  cudaDevice?: number;
  failures: string[];
  warnings: string[];
  /** what is fine, said in the ok line */
  facts: string[];
  fixes: string[];
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** Whether device ordinal `d` is among those --devices asks for. */
const selected = (options: DoctorOptions, d: number) =>
  options.devices === "all" || (Array.isArray(options.devices) && options.devices.includes(d));

function selfTestText(t: DeviceSelfTestFacts): { ok: boolean; text: string } {
  if (t.ok) return { ok: true, text: `self-test ok${t.ms !== undefined ? ` (${t.ms} ms)` : ""}` };
  const why = t.error ??
    (t.rel_error !== undefined ? `relative error ${t.rel_error} over the ${t.tolerance ?? "?"} allowed` : "no result");
  return { ok: false, text: `self-test failed: ${why}` };
}

function memoryHealth(d: NvmlDevice, h: GpuHealth, resetFix: string): void {
  if (d.ecc === null) h.facts.push("no ECC on this board");
  else if (d.ecc) {
    const volatile = d.ecc.volatile_uncorrected ?? 0, aggregate = d.ecc.aggregate_uncorrected ?? 0;
    if (!d.ecc.enabled) h.facts.push("ECC off");
    if (d.ecc.enabled !== d.ecc.pending) {
      h.warnings.push(`ECC turns ${d.ecc.pending ? "on" : "off"} at the next reset`);
      h.fixes.push(resetFix);
    }
    if (volatile > 0) {
      h.failures.push(`${plural(volatile, "uncorrectable ECC error")} since the driver loaded`);
      h.fixes.push(`drain it, ${resetFix} to retire or remap the bad memory, and check nvidia-smi -q -d ECC,ROW_REMAPPER`);
    } else if (aggregate > 0) {
      h.warnings.push(`${plural(aggregate, "uncorrectable ECC error")} over its life (none since the driver loaded)`);
      h.fixes.push("check nvidia-smi -q -d ECC,ROW_REMAPPER,PAGE_RETIREMENT; errors that recur mean an RMA");
    } else if (d.ecc.enabled) h.facts.push("ECC on, no uncorrectable errors");
  }
  const r = d.retired_pages;
  if (r?.pending) {
    h.failures.push("a retired page is pending (the bad page stays in use until a reset)");
    h.fixes.push(resetFix);
  }
  if (r && r.single_bit + r.double_bit > 0) h.facts.push(`${plural(r.single_bit + r.double_bit, "page")} retired`);
  const m = d.remapped_rows;
  if (m?.failed) {
    h.failures.push("a row remap failed (no spare row left)");
    h.fixes.push("the GPU needs service: take it out of the pool and open an RMA");
  } else if (m?.pending) {
    h.failures.push("a row remap is pending (it takes effect at the next reset)");
    h.fixes.push(resetFix);
  }
  if (m && m.correctable + m.uncorrectable > 0) {
    h.facts.push(`${plural(m.correctable + m.uncorrectable, "row")} remapped`);
  }
  if (r === null && m === null) h.facts.push("no page retirement or row remapping on this board (NOT_SUPPORTED)");
  else if (r === null && m) h.facts.push("remaps rows (page retirement NOT_SUPPORTED: normal since Ampere)");
}

function nvlinkHealth(d: NvmlDevice, h: GpuHealth): void {
  if (d.nvlinks === null) {
    h.facts.push("no NVLink");
    return;
  }
  if (!d.nvlinks?.length) return;
  const up = d.nvlinks.filter((l) => l.active);
  const down = d.nvlinks.filter((l) => !l.active);
  if (up.length && down.length) {
    h.warnings.push(`NVLink ${down.map((l) => l.link).join(", ")} down (${up.length} of ${d.nvlinks.length} up)`);
    h.fixes.push("check nvidia-smi nvlink -s and -e (error counters); on NVSwitch systems that nvidia-fabricmanager runs");
  } else h.facts.push(up.length ? `NVLink ${up.length}/${d.nvlinks.length} up` : "NVLink present, no link up");
}

/** The health of every GPU NVML lists, and of every device a self-test ran on that NVML does not list. */
export function gpuHealth(f: DoctorFacts, options: DoctorOptions = {}): GpuHealth[] {
  const nvml = f.nvidia.nvml;
  const cuda = f.nvidia.cuda_driver;
  const cudaLib = f.flashattn.libraries.find((l) => l.backend === "cuda" && l.loaded);
  const tests = cudaLib?.device_self_tests ?? [];
  const cudaOrdinalOf = (bus: string | undefined) => {
    const key = pciKey(bus);
    const i = key ? (cuda.devices ?? []).findIndex((c) => pciKey(c.pci_bus_id) === key) : -1;
    return i >= 0 ? cuda.devices![i].index : undefined;
  };
  const hidden = f.host.env.CUDA_VISIBLE_DEVICES !== undefined;
  const cudaComparable = cuda.status === "ok" && (cuda.devices ?? []).some((c) => pciKey(c.pci_bus_id));
  const used = new Set<DeviceSelfTestFacts>();
  const out: GpuHealth[] = [];

  for (const d of nvml.status === "ok" ? nvml.devices ?? [] : []) {
    const bus = pciKey(d.pci_bus_id);
    const cudaDevice = cudaOrdinalOf(d.pci_bus_id);
    const h: GpuHealth = {
      id: `gpu_health${d.index}`,
      label: `GPU ${d.index}${bus ? ` (${bus})` : ""}${
        cudaDevice !== undefined && cudaDevice !== d.index ? `, CUDA device ${cudaDevice}` : ""
      }`,
      nvmlIndex: d.index,
      cudaDevice,
      failures: [],
      warnings: [],
      facts: [],
      fixes: [],
    };
    const resetFix = `reset it (sudo nvidia-smi -r -i ${d.index}) or reboot`;
    memoryHealth(d, h, resetFix);
    const link = pcieVerdict(d.pcie, d.utilization_percent);
    if (link) {
      if (link.failure) {
        h.failures.push(link.failure);
        h.fixes.push("reseat the GPU or its riser, check the slot's lane setting in the BIOS; lspci -vv shows LnkSta");
      } else h.facts.push(link.text);
      if (link.warning) {
        h.warnings.push(link.warning);
        h.fixes.push("check the slot's PCIe generation in the BIOS and the riser; lspci -vv shows LnkSta/LnkCap");
      }
      if (link.note) h.facts.push(link.note);
    }
    nvlinkHealth(d, h);
    if (cudaDevice === undefined && bus && cudaComparable) {
      if (hidden) h.facts.push("hidden from CUDA by CUDA_VISIBLE_DEVICES");
      else if (d.mig?.current) h.facts.push("MIG on: CUDA sees its instances");
      else {
        h.failures.push("NVML sees it but CUDA does not");
        h.fixes.push("check dmesg for Xid errors (79: fallen off the bus); reset the GPU or reboot");
      }
    }
    const test = cudaDevice !== undefined ? tests.find((t) => t.device === cudaDevice) : undefined;
    if (test) {
      used.add(test);
      const t = selfTestText(test);
      (t.ok ? h.facts : h.failures).push(t.text);
      if (!t.ok) h.fixes.push(`run flashattn doctor --devices ${cudaDevice} --verbose; check dmesg for Xid errors`);
    } else if (cudaDevice !== undefined && selected(options, cudaDevice)) {
      h.failures.push(`no self-test ran on it${cudaLib ? "" : " (the CUDA library did not load)"}`);
      h.fixes.push("see the flashattn libraries section");
    }
    // A line needs something to say: a report from before these facts existed adds none.
    if (h.failures.length || h.warnings.length || h.facts.length) out.push(h);
  }

  // Self-tests NVML cannot place (no NVML, a device ordinal with no GPU, HIP devices).
  for (const lib of f.flashattn.libraries) {
    for (const t of lib.device_self_tests ?? []) {
      if (used.has(t)) continue;
      const bus = pciKey(t.pci_bus_id);
      const s = selfTestText(t);
      out.push({
        id: `gpu_health_${lib.backend}${t.device}`,
        label: `${lib.backend.toUpperCase()} device ${t.device}${bus ? ` (${bus})` : ""}`,
        cudaDevice: lib.backend === "cuda" ? t.device : undefined,
        failures: s.ok ? [] : [s.text],
        warnings: [],
        facts: s.ok ? [s.text] : [],
        fixes: s.ok ? [] : [`run flashattn doctor --devices ${t.device} --verbose`],
      });
    }
  }
  return out;
}

const levelText: Record<TopologyLevel, string> = {
  internal: "on one board",
  single: "behind one PCIe switch",
  multiple: "behind several PCIe switches",
  hostbridge: "at one host bridge",
  node: "in one NUMA node",
  system: "across NUMA nodes",
};

/** How two GPUs reach each other: "NVLink", "PCIe P2P" or "no P2P (not_supported)". */
export function pairPath(p: NvmlPair): string {
  if (p.p2p_nvlink === "ok") return "NVLink";
  if (p.p2p_read === "ok") return "PCIe P2P";
  return `no P2P${p.p2p_read ? ` (${p.p2p_read})` : ""}`;
}

function topologyFindings(f: DoctorFacts, options: DoctorOptions, s: ReturnType<typeof sectionFindings>): void {
  const gpus = f.nvidia.nvml.devices?.length ?? 0;
  const pairs = f.nvidia.nvml.pairs ?? [];
  if (gpus === 1 && options.devices) {
    s.info("pairs", "one GPU: no pairs to check (peer-to-peer and NVLink need two)");
    return;
  }
  if (!pairs.length) return;
  const byPath = new Map<string, number>();
  for (const p of pairs) byPath.set(pairPath(p), (byPath.get(pairPath(p)) ?? 0) + 1);
  const summary = [...byPath].map(([path, n]) => `${n} ${path}`).join(", ");
  const details = pairs.map((p) =>
    `GPU ${p.a} - GPU ${p.b}: ${pairPath(p)}${p.common_ancestor ? `, ${levelText[p.common_ancestor]}` : ""}`
  );
  const message = `${plural(gpus, "GPU")}, ${plural(pairs.length, "pair")}: ${summary}`;
  const nvlinked = byPath.get("NVLink") ?? 0;
  if (nvlinked > 0 && nvlinked < pairs.length) {
    s.warn(
      "pairs",
      `${message}: ${pairs.length - nvlinked} of ${pairs.length} pairs lack the NVLink path the others have`,
      "check nvidia-smi nvlink -s and nvidia-smi topo -m; on NVSwitch systems that nvidia-fabricmanager runs",
      details,
    );
  } else if ((byPath.get("NVLink") ?? 0) + (byPath.get("PCIe P2P") ?? 0) < pairs.length) {
    s.info(
      "pairs",
      `${message}: GPUs without P2P exchange data through host memory (slower collectives)`,
      "nvidia-smi topo -p2p r shows the matrix; P2P over PCIe needs IOMMU/ACS settings that allow it",
      details,
    );
  } else s.ok("pairs", message, details);
}

export function nodeRules(f: DoctorFacts, options: DoctorOptions = {}): Finding[] {
  const s = sectionFindings("nvidia");
  const health = gpuHealth(f, options);
  for (const h of health) {
    const id = h.id;
    const fix = [...new Set(h.fixes)].join("; ");
    const facts = h.facts.length ? [`fine: ${h.facts.join(", ")}`] : [];
    if (h.failures.length) s.error(id, `${h.label}: ${h.failures.join("; ")}`, fix, [...h.warnings, ...facts]);
    else if (h.warnings.length) s.warn(id, `${h.label}: ${h.warnings.join("; ")}`, fix, facts);
    else s.ok(id, `${h.label}: ${h.facts.join(", ")}`);
  }
  topologyFindings(f, options, s);
  if (options.devices) {
    const what = options.devices === "all" ? "--devices all" : `--devices ${options.devices.join(",")}`;
    const failing = health.filter((h) => h.failures.length);
    if (!health.length) {
      if (options.devices === "all") s.info("devices", `${what}: no GPU here to test`);
      else s.error("devices", `${what}: no GPU library has these devices`, "list the devices with flashattn doctor");
    } else if (failing.length) s.info("devices", `${what}: ${failing.length} of ${plural(health.length, "GPU")} fail`);
    else {
      s.ok(
        "devices",
        `${what}: ${health.length === 1 ? "the one GPU passes" : `all ${health.length} GPUs pass`} (self-test, ECC, retired pages and remapping, PCIe link, visible to CUDA)`,
      );
    }
  }
  return s.list;
}
