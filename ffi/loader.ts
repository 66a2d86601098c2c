// One dlopen for Bun (bun:ffi) and Deno (Deno.dlopen) over a neutral symbol table limited to what both support.
// Nothing here imports "bun:ffi" statically: a static import breaks Deno ("Unsupported scheme"), so the Bun module
// is loaded with a dynamic import inside the Bun branch. This module and ffi/layout.ts are the only code that touches
// native memory.

/** Types both runtimes share. `pointer` values are bigints (or null) on our side; `buffer` is a host TypedArray. */
export type NativeType = "i32" | "u32" | "i64" | "u64" | "f32" | "f64" | "pointer" | "buffer" | "void";

export interface SymbolSpec {
  args: readonly NativeType[];
  returns: NativeType;
  /** A missing optional symbol is reported by `has()` instead of failing the whole load. */
  optional?: boolean;
}
export type SymbolTable = Record<string, SymbolSpec>;

export type NativeArg = number | bigint | null | ArrayBufferView;

export interface NativeLibrary<T extends SymbolTable> {
  readonly path: string;
  /** Calls a symbol; integer results come back as numbers (i32/u32/f32/f64) or bigints (i64/u64/pointer). */
  call(name: keyof T & string, ...args: NativeArg[]): number | bigint;
  has(name: keyof T & string): boolean;
  close(): void;
}

// deno-lint-ignore no-explicit-any
type Any = any;
const Deno: Any = (globalThis as Any).Deno;
const isBun = typeof (globalThis as Any).Bun !== "undefined";

export const runtimeName = isBun ? "bun" : Deno ? "deno" : "unknown";

const bunTypes: Record<NativeType, string> = {
  i32: "i32", u32: "u32", i64: "i64", u64: "u64", f32: "f32", f64: "f64", pointer: "ptr", buffer: "buffer", void: "void",
};
const denoTypes: Record<NativeType, string> = {
  i32: "i32", u32: "u32", i64: "i64", u64: "u64", f32: "f32", f64: "f64", pointer: "pointer", buffer: "buffer", void: "void",
};

let bunFfi: Any = null;
if (isBun) bunFfi = await import("bun:ffi");

function toBigInt(v: unknown): bigint {
  if (typeof v === "bigint") return v;
  if (typeof v === "number") return BigInt(v);
  return 0n;
}

/** Host address of a typed array's first byte (for fields of a params struct). */
export function addressOf(view: ArrayBufferView): bigint {
  if (isBun) return BigInt(bunFfi.ptr(view));
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));
}

function convertArg(type: NativeType, value: NativeArg): unknown {
  if (type === "pointer") {
    const addr = value === null ? 0n : toBigInt(value);
    if (isBun) return addr === 0n ? null : Number(addr);
    return addr === 0n ? null : Deno.UnsafePointer.create(addr);
  }
  if (type === "i64" || type === "u64") return typeof value === "bigint" ? value : BigInt(value as number);
  return value;
}

function convertResult(type: NativeType, value: unknown): number | bigint {
  if (type === "pointer") {
    if (value === null || value === undefined) return 0n;
    return isBun ? BigInt(value as number) : BigInt(Deno.UnsafePointer.value(value));
  }
  if (type === "i64" || type === "u64") return toBigInt(value);
  if (type === "void") return 0;
  return value as number;
}

/**
 * The loader's error as one line. For a bare soname Bun reports a path under the working directory
 * ('"libcuda.so.1": /cwd/libcuda.so.1: cannot open ...'), which points at the wrong place; keep only the name.
 */
export function loaderMessage(e: unknown): string {
  const line = String((e as Error)?.message ?? e).split("\n")[0];
  return line.replace(/"([^"/]+)": \/\S*\/\1: /, '"$1": ');
}

/**
 * Opens `path` (absolute, or a bare soname for the system search) with the given symbols. Throws an Error whose
 * message is the loader's own text (one line) when the library or a required symbol cannot be loaded.
 */
export function openLibrary<T extends SymbolTable>(path: string, symbols: T): NativeLibrary<T> {
  try {
    return openLibraryUnchecked(path, symbols);
  } catch (e) {
    throw new Error(loaderMessage(e));
  }
}

function openLibraryUnchecked<T extends SymbolTable>(path: string, symbols: T): NativeLibrary<T> {
  const present = new Set<string>();
  let handle: Any;
  const required = Object.entries(symbols).filter(([, s]) => !s.optional);
  const optional = Object.entries(symbols).filter(([, s]) => s.optional);
  const extraHandles: Any[] = [];
  const fns: Record<string, (...a: unknown[]) => unknown> = {};

  if (isBun) {
    const decl = (entries: [string, SymbolSpec][]) =>
      Object.fromEntries(entries.map(([name, s]) => [name, { args: s.args.map((t) => bunTypes[t]), returns: bunTypes[s.returns] }]));
    handle = bunFfi.dlopen(path, decl(required));
    for (const [name] of required) {
      fns[name] = handle.symbols[name];
      present.add(name);
    }
    // bun:ffi has no optional symbols: each optional one is tried on its own handle of the same library.
    for (const entry of optional) {
      try {
        const h = bunFfi.dlopen(path, decl([entry]));
        extraHandles.push(h);
        fns[entry[0]] = h.symbols[entry[0]];
        present.add(entry[0]);
      } catch { /* absent: has() says so */ }
    }
  } else if (Deno) {
    const decl = Object.fromEntries(
      Object.entries(symbols).map(([name, s]) => [name, {
        parameters: s.args.map((t) => denoTypes[t]),
        result: denoTypes[s.returns],
        optional: !!s.optional,
      }]),
    );
    handle = Deno.dlopen(path, decl);
    for (const name of Object.keys(symbols)) {
      if (handle.symbols[name] != null) {
        fns[name] = handle.symbols[name];
        present.add(name);
      }
    }
  } else {
    throw new Error("FFI needs Bun or Deno; this runtime has neither");
  }

  let closed = false;
  return {
    path,
    call(name, ...args) {
      if (closed) throw new Error(`library ${path} is closed`);
      const spec = symbols[name];
      const fn = fns[name];
      if (!fn) throw new Error(`symbol ${name} is not in ${path}`);
      if (args.length !== spec.args.length) throw new Error(`${name} takes ${spec.args.length} arguments, got ${args.length}`);
      const converted = args.map((a, i) => convertArg(spec.args[i], a));
      return convertResult(spec.returns, fn(...converted));
    },
    has: (name) => present.has(name),
    close() {
      if (closed) return;
      closed = true;
      for (const h of extraHandles) h.close();
      handle.close();
    },
  };
}

/** The NUL-terminated string at a native address (a `const char*` a library returned); "" for NULL. */
export function readCString(address: bigint): string {
  if (address === 0n) return "";
  if (isBun) return String(new bunFfi.CString(Number(address)));
  return Deno.UnsafePointerView.getCString(Deno.UnsafePointer.create(address));
}

/** Decodes a NUL-terminated string from a caller buffer the native side filled. */
export function decodeCString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end));
}
