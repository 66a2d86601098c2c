// Prebuilt libraries without packing: the ELF reader (scripts/release/elf.ts) against the real built library (and objdump where present), the
// sha256 gate against real files (missing, foreign and stale manifests, a changed byte), and the doctor's verdict for
// a prebuilt library on machines it can and cannot run on (captured reports with prebuilt facts added).
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  manifestPathFor,
  type PrebuiltManifest,
  prebuiltRefusal,
  runningGlibcVersion,
  sha256File,
} from "../ffi/prebuilt.ts";
import { readElfNeeds } from "../scripts/release/elf.ts";
import type { DoctorFacts, PrebuiltFacts } from "../doctor/facts.ts";
import { buildReport } from "../doctor/report.ts";
import { validate } from "../doctor/schema.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";

const root = path.resolve(import.meta.dir, "..");
const cpuLib = path.join(root, "build", "libflashattn_cpu.so");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-prebuilt-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

describe("readElfNeeds", () => {
  test.skipIf(!fs.existsSync(cpuLib))(
    "the CPU library: libc and libstdc++ needs, the newest GLIBC as objdump sees it",
    () => {
      const needs = readElfNeeds(fs.readFileSync(cpuLib));
      expect(needs.libraries).toEqual(expect.arrayContaining(["libc.so.6", "libstdc++.so.6"]));
      expect(needs.glibc).toMatch(/^2\.\d+$/);
      expect(needs.symbol_versions["libstdc++.so.6"].some((v) => v.startsWith("GLIBCXX_3.4"))).toBe(true);
      const objdump = spawnSync("objdump", ["-T", cpuLib], { encoding: "utf8" });
      if (objdump.status === 0) {
        const versions = [...objdump.stdout.matchAll(/GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1]);
        const newest = versions.sort((a, b) =>
          Bun.semver.order(`${a}.0.0`.split(".").slice(0, 3).join("."), `${b}.0.0`.split(".").slice(0, 3).join("."))
        ).at(-1);
        expect(needs.glibc).toBe(newest!);
      }
    },
  );

  test("a truncated library, garbage and a non-ELF file are errors, never reads past the end", () => {
    if (fs.existsSync(cpuLib)) {
      const bytes = fs.readFileSync(cpuLib);
      expect(() => readElfNeeds(bytes.subarray(0, 4096))).toThrow(/not a readable ELF64/);
    }
    expect(() => readElfNeeds(new Uint8Array(10))).toThrow(/no ELF magic/);
    const header = new Uint8Array(64);
    header.set([0x7f, 0x45, 0x4c, 0x46, 2, 1]);
    new DataView(header.buffer).setBigUint64(0x28, 1n << 40n, true); // section headers a terabyte in
    new DataView(header.buffer).setUint16(0x3a, 64, true);
    new DataView(header.buffer).setUint16(0x3c, 3, true);
    expect(() => readElfNeeds(header)).toThrow(/outside the file/);
  });
});

describe("prebuiltRefusal", () => {
  const bytes = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
  // Each case in its own directory: the verdict is kept per path for the life of the process (as dlopen keeps images).
  let n = 0;
  /** A library file and, given a function of its sha256, the manifest beside it (an object as JSON, text as is). */
  function library(content: Uint8Array, manifest?: (sha: string) => unknown): string {
    const dir = path.join(scratch, `case${n++}`);
    fs.mkdirSync(dir);
    const lib = path.join(dir, "libflashattn_cpu.so");
    fs.writeFileSync(lib, content);
    const doc = manifest?.(sha256File(lib));
    if (doc !== undefined) fs.writeFileSync(manifestPathFor(lib), typeof doc === "string" ? doc : JSON.stringify(doc));
    return lib;
  }
  const manifest = (over: Partial<PrebuiltManifest> = {}) => (sha: string) => ({
    schema: 1,
    library: "libflashattn_cpu.so",
    backend: "cpu",
    sha256: sha,
    bytes: bytes.length,
    version: "0",
    commit: "x",
    compiler: "g++",
    toolkit: {},
    archs: [],
    needs: { glibc: "2.17", symbol_versions: {}, libraries: [] },
    ...over,
  });

  test("no manifest: refused", () => {
    expect(prebuiltRefusal(library(bytes))).toContain("no manifest libflashattn_cpu.json beside it");
  });

  test("the matching manifest: trusted; one changed byte: refused with both hashes", () => {
    expect(prebuiltRefusal(library(bytes, manifest()))).toBeNull();
    const changed = Uint8Array.from(bytes);
    changed[100] ^= 1;
    const packedSha = sha256File(library(bytes));
    const refusal = prebuiltRefusal(library(changed, manifest({ sha256: packedSha })));
    expect(refusal).toContain("refused: sha256 ");
    expect(refusal).toContain(`differs from the manifest's ${packedSha.slice(0, 16)}`);
  });

  test("a manifest of another library, of another schema, or not JSON: refused", () => {
    expect(prebuiltRefusal(library(bytes, manifest({ library: "libflashattn_cuda.so" })))).toContain(
      "describes libflashattn_cuda.so",
    );
    expect(prebuiltRefusal(library(bytes, manifest({ schema: 2 as 1 })))).toContain("not a schema 1 manifest");
    expect(prebuiltRefusal(library(bytes, () => "{"))).toContain("is not JSON");
  });
});

test("runningGlibcVersion: this machine's glibc, as ldd reports it", () => {
  const ldd = spawnSync("ldd", ["--version"], { encoding: "utf8" });
  const expected = /(\d+\.\d+)\s*$/m.exec(ldd.stdout.split("\n")[0])?.[1];
  if (expected) expect(runningGlibcVersion()).toBe(expected);
  else expect(runningGlibcVersion() === null || /^\d+\.\d+/.test(runningGlibcVersion()!)).toBe(true);
});

describe("doctor: a prebuilt library judged for the machine", () => {
  const cudaManifest = (minDriver: string, glibc = "2.34"): PrebuiltManifest => ({
    schema: 1,
    library: "libflashattn_cuda.so",
    backend: "cuda",
    sha256: "a".repeat(64),
    bytes: 1,
    version: "0.1.0",
    commit: "c".repeat(40),
    compiler: "nvcc 13.0",
    toolkit: { cuda: "13.0" },
    archs: ["sm_90a"],
    min_nvidia_driver: minDriver,
    needs: { glibc, symbol_versions: {}, libraries: ["libc.so.6"] },
  });
  const diagnose = (fixture: string, prebuilt: PrebuiltFacts[], glibc = "2.36") => {
    const facts = structuredClone(loadFixture(fixture).report.facts) as DoctorFacts;
    facts.flashattn.prebuilt = prebuilt;
    facts.flashattn.glibc = glibc;
    const report = buildReport(facts, {}, { version: "test", runtime: "bun test", createdAt: "2026-12-06T00:00:00Z" });
    expect(validate(report)).toEqual([]);
    return report;
  };
  const at = "/opt/x/prebuilt/linux-x64/libflashattn_cuda.so";

  test("H100 with driver 580.159.04, manifest minimum 580.65.06: can load and run", () => {
    const r = diagnose("h100.json", [{
      backend: "cuda",
      path: at,
      source: "package",
      manifest: cudaManifest("580.65.06"),
    }]);
    const f = r.findings.find((x) => x.id === "libraries.cuda_prebuilt")!;
    expect(f.severity).toBe("ok");
    expect(f.message).toContain("needs glibc ≥ 2.34, NVIDIA driver ≥ 580.65.06");
    expect(f.details).toEqual(expect.arrayContaining([`sha256 ${"a".repeat(64)} (verified)`, "targets: sm_90a"]));
  });

  test("the same H100 against a manifest needing a newer driver: a warning naming both versions", () => {
    const r = diagnose("h100.json", [{
      backend: "cuda",
      path: at,
      source: "package",
      manifest: cudaManifest("590.44.01"),
    }]);
    const f = r.findings.find((x) => x.id === "libraries.cuda_prebuilt_unusable")!;
    expect(f.severity).toBe("warning");
    expect(f.message).toContain("NVIDIA driver 580.159.04 is older than the 590.44.01 it needs");
    expect(f.fix).toContain("590.44.01");
  });

  test("glibc older than the library needs: said with both versions", () => {
    const r = diagnose("h100.json", [{
      backend: "cuda",
      path: at,
      source: "executable",
      manifest: cudaManifest("580.65.06", "2.38"),
    }]);
    expect(r.findings.find((x) => x.id === "libraries.cuda_prebuilt_unusable")?.message).toContain(
      "glibc 2.36 here is older than the 2.38 it needs",
    );
  });

  test("a CPU-only machine: the CUDA library is information (no NVIDIA GPU), a refused file is an error", () => {
    const r = diagnose("cpu-only.json", [
      { backend: "cuda", path: at, source: "package", manifest: cudaManifest("580.65.06") },
      {
        backend: "cpu",
        path: at.replace("cuda", "cpu"),
        source: "package",
        refused: "refused: sha256 1… differs from the manifest's 2…",
      },
    ]);
    const cuda = r.findings.find((x) => x.id === "libraries.cuda_prebuilt")!;
    expect(cuda.severity).toBe("info");
    expect(cuda.message).toContain("no NVIDIA GPU here");
    const cpu = r.findings.find((x) => x.id === "libraries.cpu_prebuilt_refused")!;
    expect(cpu.severity).toBe("error");
    expect(cpu.fix).toContain("reinstall flashattn");
    expect(r.exit_code).toBe(1);
  });
});
