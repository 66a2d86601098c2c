// The C ABI of kernels/include/flashattn.h as one neutral symbol table, used by the Bun and the Deno loader alike.
import type { SymbolTable } from "./loader.ts";

export const ABI_VERSION = 3;

export const faSymbols = {
  fa_abi_version: { args: [], returns: "i32" },
  fa_params_layout: { args: ["buffer", "i32"], returns: "i32" },
  fa_last_error: { args: ["buffer", "i64"], returns: "i32" },
  fa_info: { args: ["buffer", "i64"], returns: "i32" },
  fa_device_count: { args: ["buffer"], returns: "i32" },
  fa_device_info: { args: ["i32", "buffer", "i64"], returns: "i32" },
  fa_set_device: { args: ["i32"], returns: "i32" },
  fa_malloc: { args: ["buffer", "u64"], returns: "i32" },
  fa_free: { args: ["pointer"], returns: "i32" },
  fa_memcpy_h2d: { args: ["pointer", "buffer", "u64"], returns: "i32" },
  fa_memcpy_d2h: { args: ["buffer", "pointer", "u64"], returns: "i32" },
  fa_memcpy_d2d: { args: ["pointer", "pointer", "u64"], returns: "i32" },
  fa_memset: { args: ["pointer", "i32", "u64"], returns: "i32" },
  fa_synchronize: { args: [], returns: "i32" },
  fa_memory_stats: { args: ["buffer"], returns: "i32" },
  fa_reset_peak_memory: { args: [], returns: "i32" },
  fa_forward: { args: ["buffer"], returns: "i32" },
  fa_backward: { args: ["buffer"], returns: "i32" },
  fa_plan: { args: ["buffer", "i32", "buffer", "i64"], returns: "i32" },
  fa_bench: { args: ["buffer", "i32", "i32", "i32", "buffer"], returns: "i32" },
  // Optional: a library built before KV-cache attention still loads; Backend.forwardKvcache says what is missing.
  fa_kvcache_layout: { args: ["buffer", "i32"], returns: "i32", optional: true },
  fa_forward_kvcache: { args: ["buffer"], returns: "i32", optional: true },
  fa_bench_kvcache: { args: ["buffer", "i32", "i32", "buffer"], returns: "i32", optional: true },
  // Optional: context parallelism (lib/ring.ts) needs them; Backend.mergePartial / convert say what is missing.
  fa_merge_partial: { args: ["i32", "i32", "i32", "i32", "i32", "pointer", "pointer", "pointer", "pointer"], returns: "i32", optional: true },
  fa_convert: { args: ["i32", "pointer", "i32", "pointer", "u64", "i32"], returns: "i32", optional: true },
} as const satisfies SymbolTable;

export type FaSymbols = typeof faSymbols;

/** fa_status codes (flashattn.h). */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  UNSUPPORTED: 2,
  OUT_OF_MEMORY: 3,
  NO_DEVICE: 4,
  DEVICE: 5,
  ABI: 6,
  INTERNAL: 7,
  BUFFER_TOO_SMALL: 8,
} as const;

export const statusNames: Record<number, string> = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k]));
