// What a report may carry: people paste `doctor --json` into public bug reports, so no credential may reach it. Every
// string of the facts passes through redactFacts on its way into a report (doctor/report.ts buildReport, live and
// replayed alike): credentials in URLs and token-shaped values become <redacted>, and a string longer than any fact
// needs is cut (a tool may print megabytes on one line; the report must stay small enough to replay with --facts).

const REDACTED = "<redacted>";
/** Longer than any real fact (a long LD_LIBRARY_PATH, an import error); the rest is cut with a note. */
const MAX_FACT_CHARS = 4096;

/** [pattern, replacement]: each keeps what says what the value was, and drops the secret part. */
const secretPatterns: [RegExp, string][] = [
  // user:password@ (or a token as the user name) in any URL: https://__token__:hf_x@host, git+https://ghp_x@github.com
  [/\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#@]*(?:@[^\s/?#@]*)*@/gi, `$1${REDACTED}@`],
  // query parameters that carry credentials: ?token=, &X-Amz-Signature=, &X-Amz-Credential=, ?api_key=, ?sig=
  [
    /([?&;][\w.-]{0,64}?(?:token|key|secret|sig|password|passwd|credential|auth|session)[\w.-]{0,64}=)[^&#\s]+/gi,
    `$1${REDACTED}`,
  ],
  // NAME=value / NAME: value where the name says secret (HF_TOKEN=..., aws_secret_access_key = ..., "password": ...)
  [
    /\b([\w.-]{0,64}?(?:token|secret|password|passwd|api[_-]?key|access[_-]?key)[\w.-]{0,64}["']?\s*[=:]\s*["']?)[^\s"',;&]{6,}/gi,
    `$1${REDACTED}`,
  ],
  [/\b(bearer\s+)[A-Za-z0-9._~+/=-]{12,}/gi, `$1${REDACTED}`],
  // token formats that say what they are by their prefix (Hugging Face, GitHub, OpenAI/Anthropic, GitLab, Slack,
  // npm, PyPI, AWS access key ids), and JSON Web Tokens
  [/\b(hf_)[A-Za-z0-9]{16,}/g, `$1${REDACTED}`],
  [/\b(gh[pousr]_)[A-Za-z0-9]{20,}/g, `$1${REDACTED}`],
  [/\b(github_pat_)[A-Za-z0-9_]{20,}/g, `$1${REDACTED}`],
  [/\b(sk-)[A-Za-z0-9_-]{16,}/g, `$1${REDACTED}`],
  [/\b(glpat-)[A-Za-z0-9_-]{16,}/g, `$1${REDACTED}`],
  [/\b(xox[abprs]-)[A-Za-z0-9-]{10,}/g, `$1${REDACTED}`],
  [/\b(npm_)[A-Za-z0-9]{30,}/g, `$1${REDACTED}`],
  [/\b(pypi-)[A-Za-z0-9_-]{40,}/g, `$1${REDACTED}`],
  [/\b(AKIA|ASIA)[0-9A-Z]{16}\b/g, `$1${REDACTED}`],
  [/\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g, REDACTED],
  [/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)/g, REDACTED],
];

/** `text` with credentials replaced by <redacted>. */
export function redactText(text: string): string {
  let out = text;
  for (const [pattern, replacement] of secretPatterns) out = out.replace(pattern, replacement);
  return out;
}

function factText(text: string): string {
  if (text.length <= MAX_FACT_CHARS) return redactText(text);
  // The note fits within the bound, so a report replayed with --facts is not cut again.
  const note = `… (${text.length} characters, cut)`;
  return redactText(text.slice(0, MAX_FACT_CHARS - note.length)) + note;
}

/** `value` with every string (object keys included) redacted and bounded; numbers, booleans and null unchanged. */
export function redactFacts<T>(value: T): T {
  if (typeof value === "string") return factText(value) as T;
  if (Array.isArray(value)) return value.map((item) => redactFacts(item)) as T;
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [factText(key), redactFacts(item)]),
    ) as T;
  }
  return value;
}
