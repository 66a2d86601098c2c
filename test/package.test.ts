// Installing flashattn as a user does, with nothing to compile: `npm pack` (its prepack stages the prebuilt libraries
// with their manifests) -> `npm install <tarball>` into an empty project -> `npx flashattn ...` with a PATH that has
// node, npm and sh only (no bun, deno, g++, nvcc, hipcc); the same package from a Bun project
// (`import { attention } from "flashattn"`) and from Deno (the unpacked package's cli.ts); the standalone executable
// of `npm run release` under `env -i PATH=/usr/bin:/bin`; and a prebuilt library with one byte changed, refused.
//
// Test mode, said on stderr: the package is packed with FLASHATTN_PACK_ALLOW_MISSING=cuda,hip, so it carries the GPU
// libraries that build/ already has (CI builds all three first: .ci/run) and never spends minutes compiling CUDA
// inside a test. A release (`npm pack` without it, `npm run release`) refuses to go without all three.
// Slow (pack, install, a release build); nothing here depends on the machine's speed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const root = path.resolve(import.meta.dir, "..");
const bun = path.join(root, "node_modules", ".bin", "bun");
const deno = path.join(root, "node_modules", ".bin", "deno");
const platform = `${process.platform}-${process.arch}`;
const npm = Bun.which("npm");
const node = Bun.which("node");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "flashattn-package-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

const SLOW = 600_000;
const gpuLibs = ["cuda", "hip"].filter((b) => fs.existsSync(path.join(root, "build", `libflashattn_${b}.so`)));

/** A PATH with node, npm, npx and sh only: the machine of a user who has Node and nothing else. */
const nodeOnlyBin = path.join(scratch, "node-only-bin");
const home = process.env.HOME ?? os.tmpdir();
/** The machine's network settings (proxy, extra CA certificates), which npm and Deno need to reach the registry. */
const networkEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) =>
    /^(https?_proxy|no_proxy|NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR|DENO_CERT|DENO_DIR)$/i.test(k)
  ),
);
const denoCert = process.env.DENO_CERT ?? process.env.SSL_CERT_FILE ?? process.env.NODE_EXTRA_CA_CERTS;
const nodeOnlyEnv = {
  ...networkEnv,
  PATH: nodeOnlyBin,
  HOME: home,
  NO_COLOR: "1",
  npm_config_update_notifier: "false",
};

function sh(command: string, args: string[], opts: { cwd: string; env: Record<string, string | undefined> }) {
  const r = spawnSync(command, args, { ...opts, encoding: "utf8", timeout: SLOW, maxBuffer: 64 << 20 });
  return { code: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "", error: r.error?.message };
}

const skipReason = !npm || !node
  ? "npm and node are needed on the PATH"
  : process.platform !== "linux"
  ? "prebuilt libraries are linux-x64"
  : null;
if (skipReason) console.error(`package tests skipped: ${skipReason}`);

let tarball = "";
let project = "";
const installedLib = (backend: string) =>
  path.join(project, "node_modules", "flashattn", "prebuilt", platform, `libflashattn_${backend}.so`);

beforeAll(() => {
  if (skipReason) return;
  fs.mkdirSync(nodeOnlyBin);
  for (const [name, target] of [["node", node!], ["npm", npm!], ["npx", Bun.which("npx")!], ["sh", "/bin/sh"]]) {
    fs.symlinkSync(target, path.join(nodeOnlyBin, name));
  }
  console.error(
    `package tests: packing with FLASHATTN_PACK_ALLOW_MISSING=cuda,hip (test mode, not a release); GPU libraries in build/: ${
      gpuLibs.join(", ") || "none"
    }`,
  );
  const pack = sh(npm!, ["pack", "--json", "--pack-destination", scratch], {
    cwd: root,
    env: { ...process.env, FLASHATTN_PACK_ALLOW_MISSING: "cuda,hip", NO_COLOR: "1" },
  });
  if (pack.code !== 0) throw new Error(`npm pack failed (${pack.code}): ${pack.stderr.slice(-2000)}`);
  const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf("[")));
  tarball = path.join(scratch, info.filename);
  console.error(
    `package tests: ${info.filename} ${(info.size / 1e6).toFixed(1)} MB packed, ${
      (info.unpackedSize / 1e6).toFixed(1)
    } MB unpacked, ${info.entryCount} files`,
  );

  project = path.join(scratch, "project");
  fs.mkdirSync(project);
  fs.writeFileSync(
    path.join(project, "package.json"),
    JSON.stringify({ name: "consumer", private: true, type: "module" }),
  );
  const install = sh("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], {
    cwd: project,
    env: nodeOnlyEnv,
  });
  if (install.code !== 0) {
    throw new Error(`npm install of the tarball failed (${install.code}): ${install.stderr.slice(-2000)}`);
  }
}, SLOW);

describe.skipIf(!!skipReason)("the npm package", () => {
  test("carries the CPU library and the GPU libraries build/ has, each with a manifest whose sha256 matches", () => {
    const list = sh("tar", ["-tzf", tarball], { cwd: scratch, env: process.env }).stdout.split("\n");
    for (const backend of ["cpu", ...gpuLibs]) {
      expect(list).toContain(`package/prebuilt/${platform}/libflashattn_${backend}.so`);
      expect(list).toContain(`package/prebuilt/${platform}/libflashattn_${backend}.json`);
      const manifest = JSON.parse(fs.readFileSync(installedLib(backend).replace(/\.so$/, ".json"), "utf8"));
      const bytes = fs.readFileSync(installedLib(backend));
      expect(manifest.sha256).toBe(new Bun.CryptoHasher("sha256").update(bytes).digest("hex"));
      expect(manifest.needs.glibc).toMatch(/^2\.\d+$/);
      expect(manifest.commit).toMatch(/^[0-9a-f]{40}/);
      if (backend === "cuda") expect(manifest.min_nvidia_driver).toMatch(/^\d+\.\d+/);
    }
    // Build-only files stay out; the CLI's sources are in.
    expect(list.some((f) => f.startsWith("package/build/"))).toBe(false);
    expect(list).toContain("package/cli.ts");
  });

  test("the node-only PATH really lacks bun, deno and the compilers", () => {
    for (const tool of ["bun", "deno", "g++", "nvcc", "hipcc"]) {
      expect(Bun.which(tool, { PATH: nodeOnlyBin })).toBeNull();
    }
  });

  test("npx flashattn run --check: passes on the prebuilt CPU library, and says where it came from", () => {
    const r = sh("npx", ["flashattn", "run", "--check", "--json"], { cwd: project, env: nodeOnlyEnv });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.ok).toBe(true);
    expect(doc.check.pass).toBe(true);
    const chosen = doc.decisions.find((d: { verdict: string }) => d.verdict === "chosen");
    expect(chosen.backend).toBe("cpu");
    expect(chosen.library).toBe(installedLib("cpu"));
    expect(chosen.attempts.at(-1)).toEqual({ path: installedLib("cpu"), source: "package", ok: true });
  }, SLOW);

  test(
    "npx flashattn doctor --json: exit 0, the manifests shown, each prebuilt library judged for this machine",
    () => {
      const r = sh("npx", ["flashattn", "doctor", "--json"], { cwd: project, env: nodeOnlyEnv });
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.exit_code).toBe(0);
      const prebuilt = doc.facts.flashattn.prebuilt as {
        backend: string;
        path: string;
        refused?: string;
        manifest?: { sha256: string };
      }[];
      expect(prebuilt.map((p) => p.backend).sort()).toEqual(["cpu", ...gpuLibs].sort());
      for (const p of prebuilt) {
        expect(p.refused).toBeUndefined();
        expect(p.manifest?.sha256).toMatch(/^[0-9a-f]{64}$/);
      }
      expect(doc.facts.flashattn.glibc).toMatch(/^2\.\d+$/);
      const cpu = doc.findings.find((f: { id: string }) => f.id === "libraries.cpu_prebuilt");
      expect(cpu.severity).toBe("ok");
      expect(cpu.message).toContain("can load and run here");
      // Without a GPU, a GPU library is information ("nothing to run on"), never a problem.
      const hasGpu = fs.existsSync("/dev/nvidiactl") || fs.existsSync("/dev/kfd");
      for (const b of gpuLibs) {
        const f = doc.findings.find((x: { id: string }) => x.id.startsWith(`libraries.${b}_prebuilt`));
        if (!hasGpu) expect(f.message).toContain(`no ${b === "cuda" ? "NVIDIA" : "AMD"} GPU here`);
      }
    },
    SLOW,
  );

  test("npx flashattn bench --preset quick --json: measures the prebuilt CPU library", () => {
    const r = sh("npx", ["flashattn", "bench", "--preset", "quick", "--json"], { cwd: project, env: nodeOnlyEnv });
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.ok).toBe(true);
    const ours = doc.implementations.find((i: { impl: string }) => i.impl === "flashattn-cpu");
    expect(ours.available).toBe(true);
    expect(ours.detail.library).toBe(installedLib("cpu"));
    expect(doc.measurements.some((m: { impl: string }) => m.impl === "flashattn-cpu")).toBe(true);
  }, SLOW);

  test(
    "npm i -g (a prefix of its own): `flashattn doctor --json` exits 0 on the prebuilt libraries; npm rm -g removes it",
    () => {
      const prefix = path.join(scratch, "global");
      const install = sh("npm", [
        "install",
        "-g",
        "--prefix",
        prefix,
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        tarball,
      ], { cwd: scratch, env: nodeOnlyEnv });
      expect(install.code).toBe(0);
      const env = { ...nodeOnlyEnv, PATH: `${path.join(prefix, "bin")}:${nodeOnlyBin}` };
      const r = sh("flashattn", ["doctor", "--json"], { cwd: scratch, env });
      expect(r.code).toBe(0);
      const cpu = JSON.parse(r.stdout).facts.flashattn.prebuilt.find((p: { backend: string }) => p.backend === "cpu");
      expect(cpu.path).toBe(
        path.join(prefix, "lib", "node_modules", "flashattn", "prebuilt", platform, "libflashattn_cpu.so"),
      );
      expect(sh("npm", ["rm", "-g", "--prefix", prefix, "flashattn"], { cwd: scratch, env }).code).toBe(0);
      expect(fs.existsSync(path.join(prefix, "bin", "flashattn"))).toBe(false);
    },
    SLOW,
  );

  test("bunx flashattn with Bun alone on the PATH (no node): the launcher runs the CLI inside Bun", () => {
    const bunOnly = path.join(scratch, "bun-only-bin");
    fs.mkdirSync(bunOnly);
    for (const name of ["bun", "bunx"]) fs.symlinkSync(fs.realpathSync(bun), path.join(bunOnly, name));
    const r = sh(path.join(bunOnly, "bunx"), ["flashattn", "run", "--check", "--json"], {
      cwd: project,
      env: { PATH: bunOnly, HOME: home, NO_COLOR: "1" },
    });
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.check.pass).toBe(true);
    expect(doc.decisions.find((d: { verdict: string }) => d.verdict === "chosen").library).toBe(installedLib("cpu"));
  }, SLOW);

  test('a Bun project imports it: import { attention } from "flashattn"', () => {
    fs.writeFileSync(
      path.join(project, "main.ts"),
      `import { attention, randomTensor } from "flashattn";\n` +
        `const q = randomTensor("fp32", [1, 64, 2, 32], 1), k = randomTensor("fp32", [1, 64, 2, 32], 2), v = randomTensor("fp32", [1, 64, 2, 32], 3);\n` +
        `const r = await attention(q, k, v, { causal: true });\n` +
        `console.log(JSON.stringify({ backend: r.backend, shape: r.out.shape }));\n`,
    );
    const r = sh(bun, ["main.ts"], { cwd: project, env: { PATH: nodeOnlyBin, HOME: home } });
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ backend: "cpu", shape: [1, 64, 2, 32] });
  }, SLOW);

  test("Deno runs the unpacked package's cli.ts (Deno does not strip types under node_modules)", () => {
    const dir = path.join(scratch, "deno");
    fs.mkdirSync(dir);
    expect(sh("tar", ["-xzf", tarball, "-C", dir], { cwd: scratch, env: process.env }).code).toBe(0);
    const r = sh(
      deno,
      [
        "run",
        "--node-modules-dir=none",
        "--allow-ffi",
        "--allow-read",
        "--allow-env",
        path.join(dir, "package", "cli.ts"),
        "run",
        "--check",
        "--json",
      ],
      {
        cwd: scratch,
        env: { ...nodeOnlyEnv, ...(denoCert ? { DENO_CERT: denoCert } : {}), DENO_NO_UPDATE_CHECK: "1" },
      },
    );
    if (r.code !== 0) console.error(r.stderr.slice(-1500));
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.check.pass).toBe(true);
    const chosen = doc.decisions.find((d: { verdict: string }) => d.verdict === "chosen");
    expect(chosen.library).toBe(path.join(dir, "package", "prebuilt", platform, "libflashattn_cpu.so"));
  }, SLOW);

  // Last: it changes the installed package.
  test("a prebuilt library with one byte changed is refused with its reason, never loaded", () => {
    const lib = installedLib("cpu");
    const bytes = fs.readFileSync(lib);
    bytes[bytes.length >> 1] ^= 0x01;
    fs.writeFileSync(lib, bytes);
    const r = sh("npx", ["flashattn", "run", "--backend", "cpu", "--json"], { cwd: project, env: nodeOnlyEnv });
    expect(r.code).toBe(3);
    const doc = JSON.parse(r.stdout);
    expect(doc.ok).toBe(false);
    expect(doc.error.message).toContain(`${lib}: refused: sha256`);
    expect(doc.error.message).toContain("differs from the manifest");
    const d = sh("npx", ["flashattn", "doctor", "--json"], { cwd: project, env: nodeOnlyEnv });
    const finding = JSON.parse(d.stdout).findings.find((f: { id: string }) =>
      f.id === "libraries.cpu_prebuilt_refused"
    );
    expect(finding.severity).toBe("error");
    expect(finding.message).toContain("refused: sha256");
  }, SLOW);
});

describe.skipIf(!!skipReason)("the standalone executable (npm run release)", () => {
  let dir = "";
  beforeAll(() => {
    const release = sh(bun, ["scripts/release/release.ts", "--allow-missing", "cuda,hip"], {
      cwd: root,
      env: { ...process.env, NO_COLOR: "1" },
    });
    if (release.code !== 0) throw new Error(`release failed (${release.code}): ${release.stderr.slice(-2000)}`);
    dir = path.join(scratch, "release");
    fs.mkdirSync(dir);
    const untar = sh("tar", ["-xJf", path.join(root, "dist", `flashattn-${platform}.tar.xz`), "-C", dir], {
      cwd: dir,
      env: process.env,
    });
    if (untar.code !== 0) throw new Error(`the release archive does not unpack: ${untar.stderr}`);
    dir = path.join(dir, `flashattn-${platform}`);
  }, SLOW);

  const bare = (args: string[]) =>
    sh(path.join(dir, "flashattn"), args, { cwd: scratch, env: { PATH: "/usr/bin:/bin" } });

  test("the archive holds the executable and the libraries with their manifests", () => {
    const files = fs.readdirSync(dir).sort();
    expect(files).toContain("flashattn");
    for (const b of ["cpu", ...gpuLibs]) {
      expect(files).toEqual(expect.arrayContaining([`libflashattn_${b}.so`, `libflashattn_${b}.json`]));
    }
  });

  test("run --check under env -i PATH=/usr/bin:/bin: the library beside the executable", () => {
    const r = bare(["run", "--check", "--json"]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.check.pass).toBe(true);
    const chosen = doc.decisions.find((d: { verdict: string }) => d.verdict === "chosen");
    expect(chosen.attempts.at(-1)).toEqual({
      path: path.join(dir, "libflashattn_cpu.so"),
      source: "executable",
      ok: true,
    });
  }, SLOW);

  test(
    "doctor --json under env -i: exit 0, probes run in the executable itself, the Python probe's script extracted",
    () => {
      const r = bare(["doctor", "--json"]);
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.facts.flashattn.status).toBe("ok");
      expect(doc.facts.flashattn.prebuilt.find((p: { backend: string }) => p.backend === "cpu").source).toBe(
        "executable",
      );
      // python3 is in /usr/bin here: the embedded python_stack.py must have run (a status other than "absent").
      if (fs.existsSync("/usr/bin/python3")) expect(doc.facts.python.status).toBe("ok");
    },
    SLOW,
  );

  test("bench --preset quick --json under env -i", () => {
    const r = bare(["bench", "--preset", "quick", "--json"]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    const ours = doc.implementations.find((i: { impl: string }) => i.impl === "flashattn-cpu");
    expect(ours.detail.library).toBe(path.join(dir, "libflashattn_cpu.so"));
  }, SLOW);
});
