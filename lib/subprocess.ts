// Child processes in a process group of their own, so that stopping one stops everything it started. A probed tool
// that is a script (`nvidia-smi` wrapping `sleep 300`, a python that forks) leaves grandchildren holding our pipes;
// killing only the child would leave them running and keep this process waiting for the pipes to close.
//
// A child in its own group no longer gets the terminal's Ctrl-C, so while any is alive this module forwards
// SIGINT/SIGTERM/SIGHUP to their groups, and kills them when this process exits.
import { type ChildProcess, spawn, type SpawnOptions } from "node:child_process";
import process from "node:process";

const live = new Set<ChildProcess>();
const forwarded = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/** Spawns `command` as the leader of a new process group; its leftovers are killed as soon as it exits. */
export function spawnGroup(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  const child = spawn(command, args, { ...options, detached: true });
  if (child.pid === undefined) return child; // failed to start: "error" follows, nothing to track
  track(child);
  child.once("exit", () => {
    // A tool that has exited has no business leaving processes behind (they would also hold its pipes open).
    killGroup(child);
    untrack(child);
  });
  return child;
}

/** SIGKILL to the child's whole process group (a process stuck in a driver call may ignore SIGTERM). */
export function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    // ESRCH: the group is empty. Anything else (no group support): at least the child itself.
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }
}

/** Stops reading a child's pipes, so a pipe still held by an escaped process keeps neither us nor the event loop. */
export function abandonPipes(child: ChildProcess): void {
  for (const stream of [child.stdin, child.stdout, child.stderr]) stream?.destroy();
}

function killAll(): void {
  for (const child of live) killGroup(child);
}

function onSignal(signal: NodeJS.Signals): void {
  killAll();
  removeHandlers();
  // Only where nobody else handles the signal do we restore its default effect; other handlers decide otherwise.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

const handlers = new Map(forwarded.map((s) => [s, () => onSignal(s)]));

let installed = false;

function track(child: ChildProcess): void {
  live.add(child);
  if (installed) return;
  installed = true;
  for (const [signal, handler] of handlers) process.on(signal, handler);
  process.on("exit", killAll);
}

function untrack(child: ChildProcess): void {
  if (live.delete(child) && live.size === 0) removeHandlers();
}

function removeHandlers(): void {
  installed = false;
  for (const [signal, handler] of handlers) process.off(signal, handler);
  process.off("exit", killAll);
}
