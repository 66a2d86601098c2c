// The doctor's context-parallelism section: pure rules over NCCL facts and the backend decision (a captured H100
// report with NCCL facts added), and the schema accepting what the rules read.
import { describe, expect, test } from "bun:test";
import type { DoctorFacts, DoctorReport, NcclFacts } from "../doctor/facts.ts";
import { buildReport } from "../doctor/report.ts";
import { contextParallelVerdict, NCCL_FIX } from "../doctor/rules/context_parallel.ts";
import { validate } from "../doctor/schema.ts";
import { loadFixture } from "./fixtures/doctor/load.ts";

const found: NcclFacts = {
  status: "ok", library: "/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2", source: "python", version: "2.21.5",
  attempts: [{ path: "libnccl.so.2", source: "system", ok: false, error: "cannot open shared object file" }], gpus: 8, no_peer_access: [],
};
const absent: NcclFacts = {
  status: "absent", error: "libnccl.so.2 was not found",
  attempts: [{ path: "libnccl.so.2", source: "system", ok: false, error: "cannot open shared object file" }], gpus: 8, no_peer_access: [],
};

function diagnose(nccl: NcclFacts | undefined, base = "h100.json"): DoctorReport {
  const facts: DoctorFacts = { ...loadFixture(base).report.facts, nccl };
  if (!nccl) delete facts.nccl;
  return buildReport(facts, {}, { version: "test", runtime: "bun test", createdAt: "2026-12-06T00:00:00Z" });
}
const finding = (r: DoctorReport, id: string) => r.findings.find((f) => f.id === id);

describe("the context-parallelism verdict", () => {
  const cuda = { usable: true };
  test("NCCL, a usable cuda backend and two or more GPUs: it runs", () => {
    expect(contextParallelVerdict({ ...found, gpus: 2 }, cuda)).toEqual({ works: true, gpus: 2, reasons: [], fix: undefined });
  });
  test("each missing piece is a reason, the first one's fix is offered", () => {
    const none = contextParallelVerdict(absent, { usable: false, reason: "libflashattn_cuda.so not found" });
    expect(none.works).toBe(false);
    expect(none.reasons).toHaveLength(2);
    expect(none.reasons[0]).toContain("libflashattn_cuda.so not found");
    expect(none.reasons[1]).toBe("NCCL is not installed");
    expect(contextParallelVerdict(absent, cuda).fix).toBe(NCCL_FIX);
    const one = contextParallelVerdict({ ...found, gpus: 1 }, cuda);
    expect(one.works).toBe(false);
    expect(one.reasons).toEqual([expect.stringContaining("ring of 1")]);
    const uncounted = contextParallelVerdict({ ...found, gpus: undefined, peer_error: "cuInit returned CUDA_ERROR_NO_DEVICE" }, cuda);
    expect(uncounted.reasons[0]).toContain("CUDA_ERROR_NO_DEVICE");
    const broken = contextParallelVerdict({ ...found, status: "error", error: "ncclGetVersion failed" }, cuda);
    expect(broken.reasons[0]).toContain("ncclGetVersion failed");
  });
});

describe("the doctor's context-parallelism section on a captured H100 report", () => {
  test("NCCL found, 8 GPUs with P2P: every finding ok, the verdict names the --devices list, the report is valid", () => {
    const r = diagnose(found);
    expect(finding(r, "parallel.nccl")?.message).toContain("NCCL 2.21.5");
    expect(finding(r, "parallel.nccl")?.message).toContain("pip wheel");
    expect(finding(r, "parallel.peer_access")?.severity).toBe("ok");
    const verdict = finding(r, "parallel.verdict")!;
    expect(verdict.severity).toBe("ok");
    expect(verdict.message).toContain("--devices 0,1,2,3,4,5,6,7");
    expect(validate(r)).toEqual([]);
  });

  test("pairs without peer access are a warning that names them", () => {
    const r = diagnose({ ...found, gpus: 4, no_peer_access: [[0, 3], [3, 0]] });
    const w = finding(r, "parallel.no_peer_access")!;
    expect(w.severity).toBe("warning");
    expect(w.message).toContain("0→3, 3→0");
    expect(w.fix).toContain("nvidia-smi topo -m");
    expect(finding(r, "parallel.verdict")?.severity).toBe("ok");
  });

  test("NCCL absent: information with the fix and every place tried; the machine stays healthy", () => {
    const healthy = diagnose(undefined).exit_code;
    const r = diagnose(absent);
    const missing = finding(r, "parallel.nccl_missing")!;
    expect(missing.severity).toBe("info");
    expect(missing.fix).toBe(NCCL_FIX);
    expect(missing.details).toEqual(["libnccl.so.2 (system): cannot open shared object file"]);
    expect(finding(r, "parallel.verdict")?.severity).toBe("info");
    expect(finding(r, "parallel.verdict")?.message).toContain("NCCL is not installed");
    expect(r.exit_code).toBe(healthy);
    expect(validate(r)).toEqual([]);
  });

  test("a report from before NCCL was probed has no such section and still validates", () => {
    const r = diagnose(undefined);
    expect(r.findings.filter((f) => f.section === "parallel")).toEqual([]);
    expect(validate(r)).toEqual([]);
  });

  test("the schema refuses malformed NCCL facts", () => {
    const r = diagnose(found);
    const bad = { ...r, facts: { ...r.facts, nccl: { ...found, version: "two", source: "elsewhere" } } };
    expect(validate(bad).length).toBeGreaterThanOrEqual(2);
  });
});
