// Sets or clears an environment variable where native code sees it. Bun's process.env writes do not reach the C
// environment that getenv() reads, so a test that steers the native library at run time (FLASHATTN_KERNEL) calls
// libc's setenv/unsetenv through FFI as well.
import { openLibrary } from "../../ffi/loader.ts";

const libc = openLibrary("libc.so.6", {
  setenv: { args: ["buffer", "buffer", "i32"], returns: "i32" },
  unsetenv: { args: ["buffer"], returns: "i32" },
});

const cString = (s: string) => new TextEncoder().encode(`${s}\0`);

export function setNativeEnv(name: string, value: string | undefined): void {
  if (value === undefined) {
    delete process.env[name];
    libc.call("unsetenv", cString(name));
  } else {
    process.env[name] = value;
    libc.call("setenv", cString(name), cString(value), 1);
  }
}
