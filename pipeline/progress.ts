// How the runner talks to the user: log lines and progress. On a TTY progress is drawn with
// cli-progress bars; elsewhere (CI, pipes, log files) it becomes throttled one-line records.
import cliProgress, { type MultiBar } from "cli-progress";

export interface ProgressHandle {
  /** Advance by n (default 1). */
  tick(n?: number): void;
  /** Finish this bar (prints a final record when not on a TTY). */
  done(): void;
}

export interface RunnerUI {
  /** A runner-level line ("pull: cached", settings table...). */
  info(line: string): void;
  /** A line from inside a step; shown as "[step] msg". */
  stepLog(step: string, msg: string): void;
  progress(step: string, label: string, total: number): ProgressHandle;
  /** Stop any bars (called when the run ends, however it ends). */
  close(): void;
}

export interface ConsoleUIOptions {
  stream?: NodeJS.WriteStream;
  /** Force bar mode on or off; defaults to stream.isTTY. */
  tty?: boolean;
  /** Minimum ms between two plain progress records for one bar. */
  throttleMs?: number;
  now?: () => number;
}

export function formatSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Plain-text UI: every line goes to the stream; progress is throttled to one record per throttleMs. */
function plainUI(stream: NodeJS.WritableStream, throttleMs: number, now: () => number): RunnerUI {
  const write = (line: string) => void stream.write(line + "\n");
  return {
    info: write,
    stepLog: (step, msg) => write(`[${step}] ${msg}`),
    progress(step, label, total) {
      const start = now();
      let value = 0;
      let last = start;
      let finished = false;
      const record = () => {
        const pct = total > 0 ? Math.floor((100 * value) / total) : 100;
        write(`[${step}] ${label} ${value}/${total} (${pct}%) ${formatSeconds((now() - start) / 1000)}`);
      };
      return {
        tick(n = 1) {
          if (finished) return;
          value = Math.min(total, value + n);
          const t = now();
          if (t - last >= throttleMs) {
            last = t;
            record();
          }
        },
        done() {
          if (finished) return;
          finished = true;
          record();
        },
      };
    },
    close() {},
  };
}

function ttyUI(stream: NodeJS.WriteStream): RunnerUI {
  let multi: MultiBar | null = null;
  let active = 0;
  const bars = () => {
    multi ??= new cliProgress.MultiBar({
      stream,
      format: "[{step}] {label} [{bar}] {value}/{total} {percentage}% | {duration_formatted} | eta {eta_formatted}",
      hideCursor: true,
      barsize: 30,
      clearOnComplete: false,
      gracefulExit: false,
    });
    return multi;
  };
  // While bars are drawn, lines must go through MultiBar.log or they get overwritten.
  const write = (line: string) => {
    if (multi && active > 0) multi.log(line + "\n");
    else stream.write(line + "\n");
  };
  return {
    info: write,
    stepLog: (step, msg) => write(`[${step}] ${msg}`),
    progress(step, label, total) {
      const bar = bars().create(total, 0, { step, label });
      active++;
      let finished = false;
      return {
        tick(n = 1) {
          if (!finished) bar.increment(n);
        },
        done() {
          if (finished) return;
          finished = true;
          active--;
          bar.stop();
          if (active === 0 && multi) {
            multi.stop();
            multi = null;
          }
        },
      };
    },
    close() {
      if (multi) multi.stop();
      multi = null;
      active = 0;
    },
  };
}

export function consoleUI(opts: ConsoleUIOptions = {}): RunnerUI {
  const stream = opts.stream ?? process.stdout;
  const tty = opts.tty ?? Boolean(stream.isTTY);
  return tty ? ttyUI(stream) : plainUI(stream, opts.throttleMs ?? 2000, opts.now ?? Date.now);
}

/** A UI that records lines in memory (tests, batch summaries). */
export function memoryUI(lines: string[] = []): RunnerUI & { lines: string[] } {
  const ui = plainUI({ write: (s: string) => (lines.push(s.replace(/\n$/, "")), true) } as unknown as NodeJS.WritableStream, 0, Date.now);
  return Object.assign(ui, { lines });
}
