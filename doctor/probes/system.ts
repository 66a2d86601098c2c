// Facts read from the filesystem and the environment: no library calls, nothing that can block.
import fs from "node:fs";
import os from "node:os";
import process from "node:process";
import type { HostFacts, KfdFacts } from "../facts.ts";
import { runtimeName } from "../../ffi/loader.ts";

/** Variables that change what loads, what is visible or what is chosen. Nothing else is collected. */
const RELEVANT_ENV = [
  "FLASHATTN_BACKEND",
  "FLASHATTN_LIB",
  "FLASHATTN_PYTHON",
  "CUDA_HOME",
  "CUDA_PATH",
  "CUDA_VISIBLE_DEVICES",
  "LD_LIBRARY_PATH",
  "ROCM_PATH",
  "HIP_VISIBLE_DEVICES",
  "ROCR_VISIBLE_DEVICES",
  "HIP_PLATFORM",
  "TORCH_CUDA_ARCH_LIST",
  "FLASH_ATTN_CUDA_ARCHS",
  "FLASH_ATTENTION_TRITON_AMD_ENABLE",
] as const;

// deno-lint-ignore no-explicit-any
const G = globalThis as any;

/** "bun 1.4.5" / "deno 2.9.6" */
export function runtimeVersion(): string {
  if (runtimeName === "bun") return `bun ${G.Bun.version}`;
  if (runtimeName === "deno") return `deno ${G.Deno.version.deno}`;
  return `node ${process.versions.node}`;
}

/** Group names of this process (from /proc/self/status and /etc/group; no subprocess). */
export function userGroups(): string[] | undefined {
  try {
    const status = fs.readFileSync("/proc/self/status", "utf8");
    const gids = new Set((/^Groups:[ \t]*(.*)$/m.exec(status)?.[1] ?? "").split(/\s+/).filter(Boolean));
    const gid = /^Gid:[ \t]*(\d+)/m.exec(status)?.[1];
    if (gid) gids.add(gid);
    const names = groupNames();
    return [...gids].map((id) => names.get(id) ?? id).sort();
  } catch {
    return undefined;
  }
}

function groupNames(): Map<string, string> {
  const names = new Map<string, string>();
  try {
    for (const line of fs.readFileSync("/etc/group", "utf8").split("\n")) {
      const [name, , gid] = line.split(":");
      if (name && gid) names.set(gid, name);
    }
  } catch { /* numeric ids then */ }
  return names;
}

/**
 * Deno permissions a live check cannot do without (FFI for the libraries, subprocesses for the tools and Python,
 * sys for the OS facts, read and env for paths and settings), as the flags that grant them. Empty elsewhere.
 */
export function missingDenoPermissions(): string[] {
  const deno = G.Deno;
  if (!deno?.permissions?.querySync || runtimeName !== "deno") return [];
  const needed = ["ffi", "read", "env", "run", "sys"] as const;
  return needed.filter((name) => deno.permissions.querySync({ name }).state !== "granted").map((name) =>
    `--allow-${name}`
  );
}

/**
 * Why /proc, /sys and /dev cannot be read, if they cannot: Deno grants them only with --allow-all, whatever
 * --allow-read says. Without them the kernel-module, device-node and /dev/kfd facts are unknown, not absent.
 */
export function restrictedReason(): string | undefined {
  try {
    fs.statSync("/proc/self/status");
    return undefined;
  } catch (e) {
    const message = (e as Error).message;
    return /Requires|NotCapable|PermissionDenied/.test(message) || (e as Error).name === "NotCapable"
      ? message.split("\n")[0]
      : undefined;
  }
}

export function probeHost(env: Record<string, string | undefined> = process.env): HostFacts {
  const collected: Record<string, string> = {};
  for (const key of RELEVANT_ENV) if (env[key] !== undefined) collected[key] = env[key]!;
  const host: HostFacts = {
    os: `${os.type()} ${os.release()}`.trim(),
    arch: process.arch,
    kernel: os.release(),
    runtime: runtimeVersion(),
    groups: userGroups(),
    env: collected,
  };
  const restricted = restrictedReason();
  if (restricted) host.restricted = restricted;
  return host;
}

/** The NVIDIA kernel module's version, as /proc/driver/nvidia/version states it ("... Kernel Module  580.95.05 ..."). */
export function probeNvidiaKernelModule(): { loaded: boolean; version?: string } {
  try {
    const text = fs.readFileSync("/proc/driver/nvidia/version", "utf8");
    const version = /Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1];
    return { loaded: true, version };
  } catch {
    return { loaded: false };
  }
}

export function nvidiaDeviceNodes(): string[] {
  try {
    return fs.readdirSync("/dev").filter((f) => /^nvidia(\d+|ctl|-uvm)$/.test(f)).map((f) => `/dev/${f}`).sort();
  } catch {
    return [];
  }
}

/**
 * NVIDIA display and 3D controllers on the PCI bus (vendor 0x10de, class 0x03xx), whether or not a driver is loaded:
 * what tells a GPU whose driver is missing from driver libraries left on a machine without one. Undefined where
 * /sys/bus/pci cannot be read.
 */
export function nvidiaPciGpus(root = "/sys/bus/pci/devices"): number | undefined {
  let entries: string[];
  try {
    entries = fs.readdirSync(root);
  } catch {
    return undefined;
  }
  let count = 0;
  for (const entry of entries) {
    try {
      const vendor = fs.readFileSync(`${root}/${entry}/vendor`, "utf8").trim();
      const cls = fs.readFileSync(`${root}/${entry}/class`, "utf8").trim();
      if (vendor === "0x10de" && cls.startsWith("0x03")) count++;
    } catch {
      // a device that vanished or cannot be read is not counted
    }
  }
  return count;
}

/** /dev/kfd, the device node ROCm needs: present? can this user open it read-write? which group owns it? */
export function probeKfd(): KfdFacts {
  const kfd = "/dev/kfd";
  let stat: fs.Stats;
  try {
    stat = fs.statSync(kfd);
  } catch {
    return { exists: false };
  }
  let accessible = true;
  try {
    fs.accessSync(kfd, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    accessible = false;
  }
  return {
    exists: true,
    accessible,
    owner_group: groupNames().get(String(stat.gid)) ?? String(stat.gid),
    mode: (stat.mode & 0o777).toString(8).padStart(3, "0"),
  };
}

export function amdgpuModuleLoaded(): boolean {
  try {
    return fs.existsSync("/sys/module/amdgpu");
  } catch {
    return false; // unreadable (see restrictedReason)
  }
}
