// NCCL discovery on a machine without NCCL (this CI box): absent is reported cleanly with every place tried, an
// explicit FLASHATTN_NCCL is the only candidate, and the pip wheel's copy is found under a Python prefix.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ncclMissingError, ncclVersionString, openNccl, pythonNcclCopies } from "../lib/nccl.ts";

describe("NCCL discovery", () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "fa-nccl-"));
  const bare = { HOME: home };

  test("absent: no library, every attempt says why, and the error names the fix", () => {
    const { nccl, attempts } = openNccl(bare);
    if (nccl) {
      // A machine with a system NCCL: it was found on the loader path, the one place left to look.
      expect(attempts.at(-1)).toMatchObject({ source: "system", ok: true });
      return;
    }
    expect(attempts.map((a) => a.source)).toEqual(["system"]);
    expect(attempts[0].error).toMatch(/libnccl\.so\.2/);
    const error = ncclMissingError(attempts);
    expect(error.code).toBe("LIBRARY_NOT_FOUND");
    expect(error.fix).toMatch(/FLASHATTN_NCCL/);
  });

  test("FLASHATTN_NCCL is the only candidate: a missing file, a directory and a non-library are refused", () => {
    const notLibrary = path.join(home, "libnccl.so.2");
    fs.writeFileSync(notLibrary, "not an ELF file");
    for (const [target, error] of [[path.join(home, "missing.so"), /no such file/], [home, /not a regular file/], [notLibrary, /.+/]] as const) {
      const { nccl, attempts } = openNccl({ ...bare, FLASHATTN_NCCL: target });
      expect(nccl).toBeUndefined();
      expect(attempts).toHaveLength(1);
      expect(attempts[0]).toMatchObject({ source: "env", ok: false, path: path.resolve(target) });
      expect(attempts[0].error).toMatch(error);
    }
  });

  test("the pip wheel's copy is found under a virtualenv's python3.* site-packages, and tried after the loader path", () => {
    const venv = path.join(home, "venv");
    const lib = path.join(venv, "lib", "python3.11", "site-packages", "nvidia", "nccl", "lib");
    fs.mkdirSync(lib, { recursive: true });
    fs.writeFileSync(path.join(lib, "libnccl.so.2"), "not an ELF file");
    const env = { ...bare, VIRTUAL_ENV: venv };
    expect(pythonNcclCopies(env)[0]).toBe(path.join(lib, "libnccl.so.2"));
    const { attempts } = openNccl(env);
    expect(attempts[0].source).toBe("system");
    if (!attempts[0].ok) expect(attempts[1]).toMatchObject({ source: "python", path: path.join(lib, "libnccl.so.2"), ok: false });
  });

  test("version codes of both encodings", () => {
    expect(ncclVersionString(22105)).toBe("2.21.5");
    expect(ncclVersionString(2708)).toBe("2.7.8");
    expect(ncclVersionString(21803)).toBe("2.18.3");
  });
});
