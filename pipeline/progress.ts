// How the runner talks to the user: log lines and progress. On a TTY progress is drawn with
// cli-progress bars; elsewhere (CI, pipes, log files) it becomes throttled one-line records.
// A bar's total is an estimate some steps cannot know exactly (calibration's sweep): a bar never shows
// more done than its total (the total grows with the work), and a finished bar shows its total as done.
import cliProgress, { type MultiBar } from "cli-progress";
import { seconds } from "../util/format.ts";

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

/** "4.2 s", "2 min 0 s" (util/format.ts's seconds, kept under its old name for callers). */
export const formatSeconds = (s: number): string => seconds(s);

/** Plain-text UI: every line goes to the stream; progress is throttled to one record per throttleMs. */
function plainUI(stream: NodeJS.WritableStream, throttleMs: number, now: () => number): RunnerUI {
  const write = (line: string) => void stream.write(line + "\n");
  return {
    info: write,
    stepLog: (step, msg) => write(`[${step}] ${msg}`),
    progress(step, label, estimate) {
      const start = now();
      let total = Math.max(0, estimate);
      let value = 0;
      let last = start;
      let shown = "";
      let finished = false;
      const record = () => {
        shown = `${value}/${total}`;
        const pct = total > 0 ? Math.floor((100 * value) / total) : 100;
        write(`[${step}] ${label} ${value}/${total} (${pct}%) ${formatSeconds((now() - start) / 1000)}`);
      };
      return {
        tick(n = 1) {
          if (finished) return;
          value += n;
          total = Math.max(total, value);
          const t = now();
          if (t - last >= throttleMs) {
            last = t;
            record();
          }
        },
        done() {
          if (finished) return;
          finished = true;
          // The work is what was done: an estimate that was too high ends at value/value.
          total = value;
          if (shown !== `${value}/${total}`) record();
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
      // A function, not cli-progress's template: its eta_formatted prints "3m60s".
      format: (options, params, payload: { step: string; label: string }) => {
        const bar = options.barCompleteString!.slice(0, Math.round(params.progress * 30)) + options.barIncompleteString!.slice(0, 30 - Math.round(params.progress * 30));
        const elapsed = (Date.now() - params.startTime) / 1000;
        const eta = params.value > 0 && params.value < params.total ? ` | eta ${formatSeconds((elapsed / params.value) * (params.total - params.value))}` : "";
        return `[${payload.step}] ${payload.label} [${bar}] ${params.value}/${params.total} ${Math.floor(params.progress * 100)}% | ${formatSeconds(elapsed)}${eta}`;
      },
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
    progress(step, label, estimate) {
      let total = Math.max(0, estimate);
      let value = 0;
      const bar = bars().create(total, 0, { step, label });
      active++;
      let finished = false;
      return {
        tick(n = 1) {
          if (finished) return;
          value += n;
          if (value > total) bar.setTotal((total = value));
          bar.update(value);
        },
        done() {
          if (finished) return;
          finished = true;
          active--;
          bar.setTotal(value);
          bar.update(value);
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
