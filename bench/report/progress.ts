// Progress of a sweep on stderr (stdout stays data). On a terminal: one bar redrawn in place, with the share done,
// the ETA and the current shape. Elsewhere (a CI log, a pipe): one plain line per finished case, so a long run
// still shows it is alive without filling a log with carriage returns. --quiet silences both.

export interface ProgressSink {
  /** `weights[i]` is the expected share of work of case i (any positive unit). */
  start(weights: number[]): void;
  /** Case `index` starts; `label` names it and the implementation being timed. */
  step(index: number, label: string): void;
  /** Case `index` is done; `summary` is one short line about it. */
  done(index: number, summary: string): void;
  finish(): void;
}

export const silentProgress: ProgressSink = { start() {}, step() {}, done() {}, finish() {} };

interface Stream {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): unknown;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

export class StderrProgress implements ProgressSink {
  readonly #stream: Stream;
  readonly #animate: boolean;
  readonly #now: () => number;
  #weights: number[] = [];
  #total = 0;
  #doneWeight = 0;
  #doneCount = 0;
  #started = 0;
  #label = "";
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(stream: Stream, opts: { now?: () => number } = {}) {
    this.#stream = stream;
    // Redraw only where a redraw means something: a terminal that reports a width (a 0-column pty loops).
    this.#animate = stream.isTTY === true && (stream.columns ?? 0) > 0;
    this.#now = opts.now ?? (() => performance.now());
  }

  start(weights: number[]): void {
    this.#weights = weights;
    this.#total = weights.reduce((a, b) => a + b, 0);
    this.#started = this.#now();
    if (this.#animate) {
      this.#timer = setInterval(() => this.#draw(), 250);
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  /** Seconds left, from the time per unit of work so far; NaN before any work is done. */
  eta(): number {
    if (this.#doneWeight <= 0) return NaN;
    const elapsed = (this.#now() - this.#started) / 1000;
    return elapsed * (this.#total - this.#doneWeight) / this.#doneWeight;
  }

  step(_index: number, label: string): void {
    this.#label = label;
    if (this.#animate) this.#draw();
  }

  done(index: number, summary: string): void {
    this.#doneWeight += this.#weights[index] ?? 0;
    this.#doneCount++;
    if (this.#animate) this.#draw();
    else {
      const n = this.#weights.length;
      this.#stream.write(
        `[${String(this.#doneCount).padStart(String(n).length)}/${n}] ${summary} (ETA ${formatDuration(this.eta())})\n`,
      );
    }
  }

  #draw(): void {
    const columns = this.#stream.columns ?? 80;
    const share = this.#total > 0 ? this.#doneWeight / this.#total : 0;
    const barWidth = 24;
    const filled = Math.round(share * barWidth);
    const bar = "█".repeat(filled) + "░".repeat(barWidth - filled);
    const head = `${bar} ${
      String(Math.floor(share * 100)).padStart(3)
    }% ${this.#doneCount}/${this.#weights.length} ETA ${formatDuration(this.eta())} `;
    const line = (head + this.#label).slice(0, Math.max(10, columns - 1));
    // \r + erase line, and auto-wrap off (DECAWM) so a long label is cut, not wrapped onto a new line.
    this.#stream.write(`\x1b[?7l\r\x1b[K${line}\x1b[?7h`);
  }

  finish(): void {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#animate) this.#stream.write("\r\x1b[K");
  }
}
