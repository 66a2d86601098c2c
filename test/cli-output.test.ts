// commands/_output.ts: the colour decision, error reporting (human line and JSON document) and exit codes, through
// real commander programs in-process.
import { describe, expect, test } from "bun:test";
import { Command } from "@commander-js/extra-typings";
import { FlashAttnError } from "../lib/errors.ts";
import {
  action,
  configureProgram,
  errorDocument,
  jsonRequested,
  paint,
  printable,
  reportError,
  runProgram,
  useColor,
} from "../commands/_output.ts";
import { terminalSafeJson } from "../lib/terminal.ts";

/** A stream that records what is written. */
function sink(isTTY = false) {
  const chunks: string[] = [];
  return { isTTY, write: (s: string) => chunks.push(s), text: () => chunks.join("") };
}

describe("colour", () => {
  const tty = { isTTY: true, write: () => true };
  const pipe = { isTTY: false, write: () => true };
  test.each(
    [
      ["a TTY", tty, true, {}, true],
      ["a pipe", pipe, true, {}, false],
      ["--no-color", tty, false, {}, false],
      ["NO_COLOR=1", tty, true, { NO_COLOR: "1" }, false],
      ["NO_COLOR empty (counts as unset)", tty, true, { NO_COLOR: "" }, true],
      ["TERM=dumb", tty, true, { TERM: "dumb" }, false],
      ["FORCE_COLOR=0 on a TTY", tty, true, { FORCE_COLOR: "0" }, false],
      ["FORCE_COLOR=1 on a pipe", pipe, true, { FORCE_COLOR: "1" }, true],
      ["NO_COLOR beats FORCE_COLOR", pipe, true, { NO_COLOR: "1", FORCE_COLOR: "1" }, false],
    ] as const,
  )("%s", (_name, stream, flag, env, expected) => {
    expect(useColor(stream, flag, env)).toBe(expected);
  });

  test("paint wraps only when on", () => {
    expect(paint("red", "x", false)).toBe("x");
    expect(paint("red", "x", true)).toBe("\x1b[31mx\x1b[39m");
  });
});

describe("reportError", () => {
  test("a FlashAttnError: one line plus its fix on stderr, exit code by its code", () => {
    const out = sink(), err = sink(true);
    const code = reportError(new FlashAttnError("BAD_INPUT", "x.npy: no such file", "check the path"), {
      json: false,
      color: false,
      stdout: out,
      stderr: err,
      env: {},
    });
    expect(code).toBe(2);
    expect(out.text()).toBe("");
    expect(err.text()).toBe("flashattn: x.npy: no such file\n  fix: check the path\n");
  });

  test("--json: the document on stdout, the line still on stderr, never coloured", () => {
    const out = sink(), err = sink(true);
    const code = reportError(new FlashAttnError("LIBRARY_NOT_FOUND", "no library"), {
      json: true,
      color: true,
      stdout: out,
      stderr: err,
      env: {},
    });
    expect(code).toBe(3);
    expect(JSON.parse(out.text())).toEqual({ ok: false, error: { code: "LIBRARY_NOT_FOUND", message: "no library" } });
    expect(err.text()).toBe("flashattn: no library\n");
  });

  test("an unknown error is INTERNAL, exit 1, first line only; the stack only with FLASHATTN_DEBUG=1", () => {
    const boom = new Error("boom\nsecond line");
    const err = sink();
    expect(reportError(boom, { json: false, color: false, stdout: sink(), stderr: err, env: {} })).toBe(1);
    expect(err.text()).toBe("flashattn: boom\n");
    const debug = sink();
    reportError(boom, { json: false, color: false, stdout: sink(), stderr: debug, env: { FLASHATTN_DEBUG: "1" } });
    expect(debug.text()).toContain("at ");
    expect(errorDocument("a string").error).toEqual({ code: "INTERNAL", message: "a string" });
  });

  test("colour on a TTY, off under NO_COLOR", () => {
    const coloured = sink(true);
    reportError(new FlashAttnError("USAGE", "bad"), {
      json: false,
      color: true,
      stdout: sink(),
      stderr: coloured,
      env: {},
    });
    expect(coloured.text()).toContain("\x1b[31mflashattn:\x1b[39m bad");
    const plain = sink(true);
    reportError(new FlashAttnError("USAGE", "bad"), {
      json: false,
      color: true,
      stdout: sink(),
      stderr: plain,
      env: { NO_COLOR: "1" },
    });
    expect(plain.text()).toBe("flashattn: bad\n");
  });
});

test("jsonRequested stops at --", () => {
  expect(jsonRequested(["run", "--json"])).toBe(true);
  expect(jsonRequested(["run", "--", "--json"])).toBe(false);
});

describe("runProgram exit codes through a real commander program", () => {
  function program(argv: string[], body: () => number | void) {
    const p = new Command("flashattn").option("--json").option("--no-color");
    configureProgram(p, argv);
    p.command("probe").option("--n <n>").action(action(body));
    return p;
  }
  const saved = process.exitCode;

  test("success is 0, a returned code is kept, a thrown CHECK_FAILED is 1, USAGE is 2, NO_BACKEND is 3", async () => {
    expect(await runProgram(program(["probe"], () => {}), ["probe"])).toBe(0);
    expect(await runProgram(program(["probe"], () => 1), ["probe"])).toBe(1);
    const failing = (code: "CHECK_FAILED" | "USAGE" | "NO_BACKEND") => () => {
      throw new FlashAttnError(code, "x");
    };
    expect(await runProgram(program(["probe"], failing("CHECK_FAILED")), ["probe"])).toBe(1);
    expect(await runProgram(program(["probe"], failing("USAGE")), ["probe"])).toBe(2);
    expect(await runProgram(program(["probe"], failing("NO_BACKEND")), ["probe"])).toBe(3);
    process.exitCode = saved;
  });

  test("commander's own errors are usage errors (2); --help is 0", async () => {
    expect(await runProgram(program(["probe", "--bogus"], () => {}), ["probe", "--bogus"])).toBe(2);
    expect(await runProgram(program(["nope"], () => {}), ["nope"])).toBe(2);
    expect(await runProgram(program(["probe", "--n"], () => {}), ["probe", "--n"])).toBe(2);
    expect(await runProgram(program(["--help"], () => {}), ["--help"])).toBe(0);
    process.exitCode = saved;
  });
});

describe("text from outside on a terminal", () => {
  test("printable: control characters as visible escapes, everything else as it is", () => {
    expect(printable("q\x1b]52;c;ZXZpbA==\x07\x1b[2J\r\n\x00\x7f\x9b\u202e\u2028 é ✓ 日本\tok")).toBe(
      "q\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x0d\\x0a\\x00\\x7f\\x9b\\u202e\\u2028 é ✓ 日本\tok",
    );
  });
  test("terminalSafeJson: the same JSON, with nothing a terminal acts on left raw", () => {
    const doc = { s: "a\x1b]0;t\x07b\x9b\u202e\u2066c\x7f" };
    const safe = terminalSafeJson(JSON.stringify(doc));
    // deno-lint-ignore no-control-regex
    expect(safe).not.toMatch(/[\x00-\x1f\x7f-\x9f\u202e\u2066]/);
    expect(JSON.parse(safe)).toEqual(doc);
  });
  test("the error line shows a hostile message and fix escaped, on one line each", () => {
    const stderr = sink(true);
    reportError(new FlashAttnError("BAD_INPUT", "no tensor 'q\x1b]0;owned\x07'\n  fix: fake", "a\x9bb"), {
      json: false,
      color: true,
      stderr,
      env: {},
    });
    expect(stderr.text()).toBe(
      "\x1b[31mflashattn:\x1b[39m no tensor 'q\\x1b]0;owned\\x07'\\x0a  fix: fake\n  \x1b[2mfix:\x1b[22m a\\x9bb\n",
    );
  });
});
