// Text meant for a terminal: our colours, and strings from outside (file and tensor names, a tool's or a library's
// words, a saved report) made harmless. A terminal acts on control characters: ESC starts sequences that move the
// cursor, retitle the window or write the clipboard (OSC 52), BEL rings, CR overwrites the line. Human output shows
// such characters as visible escapes (\x1b, \x9b, \u202e); JSON escapes C0 itself, and the rest as \u escapes.

const ansi = {
  bold: [1, 22],
  dim: [2, 22],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  cyan: [36, 39],
} as const;
export type Style = keyof typeof ansi;

/** `text` wrapped in the ANSI codes of `style` when `on`, else unchanged. */
export function paint(style: Style, text: string, on: boolean): string {
  if (!on) return text;
  const [open, close] = ansi[style];
  return `\x1b[${open}m${text}\x1b[${close}m`;
}

// Besides C0 (but tab): DEL, C1, the line and paragraph separators some terminals break lines on, and the
// bidirectional overrides and isolates that reorder what is shown (U+202A-U+202E, U+2066-U+2069).
const beyondC0 = "\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069";
const unsafe = new RegExp(`[\\x00-\\x08\\x0a-\\x1f${beyondC0}]`, "g");
/** What JSON.stringify leaves raw (it escapes C0 itself). */
const unsafeInJson = new RegExp(`[${beyondC0}]`, "g");

/**
 * `text` with every control character shown as an escape, so it prints as one inert line. Line breaks are escaped
 * too: every caller prints a line at a time, and a name holding "\n  fix: ..." must not forge the next line.
 */
export function printable(text: string): string {
  return text.replace(unsafe, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** JSON text (from JSON.stringify) with the control characters it leaves raw written as \u escapes: the same JSON. */
export function terminalSafeJson(json: string): string {
  return json.replace(unsafeInJson, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
