// Reading a model from disk for `doctor --model PATH`: a model directory or its config.json. Only reads: nothing is
// downloaded, and the model's Python files are read as text (doctor/model/switches.ts), never imported. Every file
// is opened without blocking and checked to be a regular file of a sane size before it is read, and JSON goes
// through parseJsonBounded: a FIFO, a huge or deeply nested file is one BAD_INPUT sentence (exit 2).
import fs from "node:fs";
import path from "node:path";
import { FlashAttnError } from "../../lib/errors.ts";
import { parseJsonBounded } from "../../lib/json.ts";
import { deriveNeeds, type ModelNeeds, remoteCodeFiles } from "./needs.ts";
import { findSwitches, type ModelSwitch } from "./switches.ts";

/** What the doctor learned from the model's files. */
export interface ModelSource {
  /** the config.json read */
  config: string;
  needs: ModelNeeds;
  /** generation_config.json's cache_implementation ("hybrid" for Gemma 2), when it names one */
  cache_implementation?: string;
  /** the *.py files beside the config (read as text) */
  modeling_files: string[];
  /** files auto_map names that are not there */
  missing_remote_files: string[];
  switches: ModelSwitch[];
}

/** A config.json is a few KiB; far more is not one. */
const MAX_CONFIG_BYTES = 4 << 20;
const MAX_CONFIG_DEPTH = 64;
/** Modeling files are tens to hundreds of KiB; more files or bigger ones are not read. */
const MAX_SOURCE_BYTES = 4 << 20;
const MAX_SOURCE_FILES = 64;

const bad = (message: string, fix?: string) => new FlashAttnError("BAD_INPUT", message, fix);

/** A regular file's text, opened without blocking (a FIFO must not hang us), at most `max` bytes. */
function readRegular(file: string, max: number, label: string): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw bad(`${label}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (e as Error).message}`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw bad(`${label} is not a regular file`);
    if (stat.size > max) throw bad(`${label} is ${stat.size} bytes; a model's file of this kind is far smaller (at most ${max})`);
    return fs.readFileSync(fd, "utf8");
  } finally {
    fs.closeSync(fd);
  }
}

function readJson(file: string, label: string): unknown {
  const text = readRegular(file, MAX_CONFIG_BYTES, label);
  try {
    return parseJsonBounded(text, { maxChars: MAX_CONFIG_BYTES, maxDepth: MAX_CONFIG_DEPTH });
  } catch (e) {
    throw bad(`${label} cannot be read as JSON: ${(e as Error).message}`);
  }
}

/** The model at `where` (a directory holding config.json, or a config.json). Throws BAD_INPUT with one sentence. */
export function readModel(where: string): ModelSource {
  const label = `--model ${where}`;
  let stat: fs.Stats;
  try {
    stat = fs.statSync(where);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw bad(`${label}: ${code === "ENOENT" ? "no such file or directory" : (e as Error).message}`,
      "pass a local model directory (with config.json) or a config.json; the doctor never downloads");
  }
  const dir = stat.isDirectory() ? where : path.dirname(where);
  const config = stat.isDirectory() ? path.join(where, "config.json") : where;
  if (!stat.isDirectory() && !stat.isFile()) throw bad(`${label} is neither a directory nor a regular file`);
  if (stat.isDirectory() && !fs.existsSync(config)) {
    throw bad(`${label} has no config.json (not a transformers model directory)`,
      "pass the directory that holds the model's config.json");
  }
  const needs = deriveNeeds(readJson(config, config));
  const source: ModelSource = { config, needs, modeling_files: [], missing_remote_files: [], switches: [] };

  const generation = path.join(dir, "generation_config.json");
  if (fs.existsSync(generation)) {
    const g = readJson(generation, generation) as { cache_implementation?: unknown } | null;
    if (typeof g?.cache_implementation === "string") source.cache_implementation = g.cache_implementation.slice(0, 60);
  }

  const pyFiles = fs.readdirSync(dir).filter((f) => f.endsWith(".py")).sort().slice(0, MAX_SOURCE_FILES);
  for (const file of pyFiles) {
    const full = path.join(dir, file);
    // Only regular files are read; a FIFO or a directory named *.py is not a modeling file.
    if (!fs.lstatSync(full).isFile()) continue;
    source.modeling_files.push(file);
    source.switches.push(...findSwitches(file, readRegular(full, MAX_SOURCE_BYTES, full)));
  }
  source.missing_remote_files = remoteCodeFiles(needs).filter((f) => !source.modeling_files.includes(f));
  return source;
}
