// Asking the person at the terminal during a run (the trade-off choice after calibration, steps/tradeoff.ts).
// Contract: lineAsker(input, output) writes the question to `output` and resolves with the next line of
// `input`, or null once `input` has ended; Ctrl-C at the question is the terminal's SIGINT, which stops
// the run as anywhere else. runAsker decides whether anyone can be asked at all: only when
// stdin and stdout are both a terminal and --yes was not given; otherwise no asker (steps take their default).
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { AskUser } from "../pipeline/runner.ts";

/** An asker over a pair of streams (the process's stdin/stdout; a PassThrough in tests). */
export function lineAsker(input: Readable, output: Writable): AskUser {
  const lines: string[] = [];
  const waiting: ((line: string | null) => void)[] = [];
  let ended = false;
  let rl: ReturnType<typeof createInterface> | null = null;
  const open = () => {
    if (rl) return;
    rl = createInterface({ input, terminal: false });
    rl.on("line", (l) => (waiting.length ? waiting.shift()!(l) : lines.push(l)));
    rl.on("close", () => {
      ended = true;
      for (const w of waiting.splice(0)) w(null);
    });
  };
  return (question) => {
    output.write(question);
    open();
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (ended) return Promise.resolve(null);
    return new Promise((resolve) => waiting.push(resolve));
  };
}

/**
 * The run's asker: the terminal's, unless nobody is there (not a TTY) or --yes said not to ask. Its
 * readline stays open on stdin between questions (re-asking after a wrong answer reads on); the CLI
 * ends with process.exit, so it keeps nothing alive.
 */
export function runAsker(o: { yes: boolean; interactive: boolean }): AskUser | undefined {
  if (o.yes || !o.interactive) return undefined;
  return lineAsker(process.stdin, process.stdout);
}
