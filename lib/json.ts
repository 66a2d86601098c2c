// JSON at the edges: what we print (numbers JSON cannot hold, said rather than lost) and what we read from
// outside (another program's output, a saved report), bounded before any recursive code sees it.

/**
 * JSON.stringify replacer: Infinity/NaN are not JSON, and a relative error of Infinity must still say so rather than
 * turn into null silently; bigints as their decimal text.
 */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  if (typeof value === "bigint") return value.toString();
  return value;
}

/**
 * JSON.parse of text from outside, refusing more than `maxChars` characters or nesting deeper than `maxDepth`. The
 * depth is found by a flat scan first: JSON nested 100,000 deep would otherwise overflow the stack of the parser or
 * of whatever walks the result. Throws an Error saying which bound was broken, or with the parser's own words.
 */
export function parseJsonBounded(text: string, limits: { maxChars: number; maxDepth: number }): unknown {
  if (text.length > limits.maxChars) {
    throw new Error(`${text.length} characters, more than the ${limits.maxChars} accepted`);
  }
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > limits.maxDepth) throw new Error(`nested more than ${limits.maxDepth} levels deep`);
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return JSON.parse(text);
}
