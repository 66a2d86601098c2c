// Shared CLI plumbing for every command: the global flags, `--json` documents, colour decisions, one-line errors and
// the exit codes of docs/ARCHITECTURE.md (0 ok, 1 runtime/check failure, 2 usage, 3 environment).
//
// Rules every command follows through these helpers:
//   - stdout carries data (a table, or exactly one JSON document with --json, errors included);
//   - stderr carries progress and the human error line: `flashattn: <message>` then `  fix: <fix>`, control
//     characters in them shown as escapes (a message may quote a file or tensor name: lib/terminal.ts);
//   - colour only when the stream is a TTY and neither NO_COLOR, TERM=dumb, FORCE_COLOR=0 nor --no-color says no;
//   - a stack trace only with FLASHATTN_DEBUG=1.
import process from "node:process";
import { CommanderError } from "@commander-js/extra-typings";
import { exitCodeFor, FlashAttnError } from "../lib/errors.ts";
import { jsonReplacer } from "../lib/json.ts";
import { paint, printable, terminalSafeJson } from "../lib/terminal.ts";

export { paint, printable, type Style } from "../lib/terminal.ts";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_ENVIRONMENT = 3;

/** The flags every command inherits from the program. */
export interface GlobalOptions {
  json: boolean;
  color: boolean;
  verbose: boolean;
}

/** Anything with commander's optsWithGlobals (a Command of either typing flavour). */
interface HasGlobals {
  optsWithGlobals(): Record<string, unknown>;
}

export function globalOptions(command: HasGlobals): GlobalOptions {
  const all = command.optsWithGlobals();
  return { json: all.json === true, color: all.color !== false, verbose: all.verbose === true };
}

type Env = Record<string, string | undefined>;
interface StreamLike {
  isTTY?: boolean;
  write(chunk: string): unknown;
}

/**
 * Whether to colour what goes to `stream`. NO_COLOR counts when present and not empty (no-color.org); FORCE_COLOR
 * turns colour on for pipes unless it is "0" or "false", which turns it off everywhere.
 */
export function useColor(stream: StreamLike, flag = true, env: Env = process.env): boolean {
  if (!flag) return false;
  if (env.NO_COLOR) return false;
  if (env.TERM === "dumb") return false;
  const force = env.FORCE_COLOR;
  if (force === "0" || force === "false") return false;
  if (force !== undefined) return true;
  return stream.isTTY === true;
}

/** Writes one JSON document (pretty-printed, newline-terminated) to stdout. */
export function printJson(doc: unknown, stdout: StreamLike = process.stdout): void {
  stdout.write(terminalSafeJson(JSON.stringify(doc, jsonReplacer, 2)) + "\n");
}

/** A progress line on stderr (never on stdout, so --json output stays one document). */
export function progress(message: string, stderr: StreamLike = process.stderr): void {
  stderr.write(printable(message) + "\n");
}

export interface ErrorDocument {
  ok: false;
  error: { code: string; message: string; fix?: string };
}

/** The one-line shape of any thrown value: FlashAttnError keeps its code and fix, anything else is INTERNAL. */
export function describeError(error: unknown): ErrorDocument["error"] {
  if (error instanceof FlashAttnError) {
    return error.fix
      ? { code: error.code, message: error.message, fix: error.fix }
      : { code: error.code, message: error.message };
  }
  if (error instanceof CommanderError) return { code: "USAGE", message: commanderMessage(error.message) };
  const message = error instanceof Error ? error.message : String(error);
  return { code: "INTERNAL", message: firstLine(message) || "unknown error" };
}

export function errorDocument(error: unknown): ErrorDocument {
  return { ok: false, error: describeError(error) };
}

function firstLine(text: string): string {
  return text.split("\n").map((l) => l.trim()).find((l) => l.length > 0) ?? "";
}

// Commander formats "error: unknown option '--x'\n(Did you mean --y?)"; we print one line without its prefix.
function commanderMessage(text: string): string {
  return text.replace(/^error:\s*/, "").split("\n").map((l) => l.trim()).filter(Boolean).join(" ");
}

export interface ReportTarget {
  json: boolean;
  color: boolean;
  stdout?: StreamLike;
  stderr?: StreamLike;
  env?: Env;
}

/**
 * Prints `error` the way every command does (the JSON document on stdout with --json, the human line on stderr
 * always) and returns the exit code for it.
 */
export function reportError(error: unknown, target: ReportTarget): number {
  const stdout = target.stdout ?? process.stdout;
  const stderr = target.stderr ?? process.stderr;
  const env = target.env ?? process.env;
  const described = describeError(error);
  if (target.json) printJson({ ok: false, error: described }, stdout);
  const color = useColor(stderr, target.color && !target.json, env);
  let text = `${paint("red", "flashattn:", color)} ${printable(described.message)}\n`;
  if (described.fix) text += `  ${paint("dim", "fix:", color)} ${printable(described.fix)}\n`;
  if (env.FLASHATTN_DEBUG === "1" && error instanceof Error && error.stack) text += error.stack + "\n";
  stderr.write(text);
  return exitCodeForAny(error);
}

/** Exit status for anything thrown: FlashAttnError by its code, commander's usage errors 2 (help/version 0). */
export function exitCodeForAny(error: unknown): number {
  if (error instanceof CommanderError) return error.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
  return exitCodeFor(error);
}

/** `--json` requested anywhere before a `--` separator (commander may fail before it has parsed the flag). */
export function jsonRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--json");
}

/** `--no-color` requested anywhere before a `--` separator. */
function noColorRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--no-color");
}

interface ConfigurableProgram {
  exitOverride(): unknown;
  configureOutput(config: {
    writeOut?(str: string): void;
    writeErr?(str: string): void;
    outputError?(str: string, write: (str: string) => void): void;
  }): unknown;
}

/**
 * Makes commander throw instead of exiting, and print its usage errors as our one line (a JSON document with
 * --json). Call before registering commands: subcommands created with `.command()` inherit both settings.
 */
export function configureProgram(program: ConfigurableProgram, argv: readonly string[]): void {
  const json = jsonRequested(argv);
  const color = !noColorRequested(argv);
  program.exitOverride();
  program.configureOutput({
    writeOut: (str) => process.stdout.write(str),
    writeErr: (str) => process.stderr.write(str),
    outputError: (str) => {
      const error = new FlashAttnError("USAGE", commanderMessage(str), "see `flashattn <command> --help`");
      reportError(error, { json, color });
    },
  });
}

interface ParsableProgram extends ConfigurableProgram {
  parseAsync(argv: readonly string[], options: { from: "user" }): Promise<unknown>;
}

/**
 * Parses and runs `argv` (user arguments, without the runtime and script) and returns the exit code. Commander's
 * own errors were already printed by configureProgram's outputError; help and --version exit 0.
 */
export async function runProgram(program: ParsableProgram, argv: readonly string[]): Promise<number> {
  try {
    await program.parseAsync(argv, { from: "user" });
    // The action left its code in process.exitCode; hand it to the caller (cli.ts sets it again) and clear it, so a
    // program run in-process (tests, embedding) does not change the exit status of its host.
    const code = Number(process.exitCode ?? EXIT_OK);
    process.exitCode = EXIT_OK;
    return code;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help shown because no command was given goes to stderr with exit code 1: for us that is a usage error.
      if (error.code === "commander.help" && error.exitCode !== 0 && jsonRequested(argv)) {
        printJson(errorDocument(new FlashAttnError("USAGE", "no command given", "flashattn run | bench | doctor")));
      }
      return exitCodeForAny(error);
    }
    return reportError(error, { json: jsonRequested(argv), color: !noColorRequested(argv) });
  }
}

/**
 * Wraps a command action: runs `body` with the global options, prints any thrown error the standard way and sets
 * process.exitCode. `body` returns its own exit code (e.g. 1 when a check failed) or nothing for success.
 */
export function action<Args extends unknown[]>(
  body: (globals: GlobalOptions, ...args: Args) => Promise<number | void> | number | void,
): (...args: Args) => Promise<void> {
  return async (...args: Args) => {
    // Commander passes the Command itself as the last argument of an action.
    const command = args[args.length - 1] as unknown as HasGlobals;
    const globals = globalOptions(command);
    try {
      const code = await body(globals, ...args);
      process.exitCode = code ?? EXIT_OK;
    } catch (error) {
      process.exitCode = reportError(error, globals);
    }
  };
}
