import type { ReportPart } from "../report/build.ts";

// Error types the CLI maps to exit codes. Anything that is the user's mistake (bad option,
// bad models.yaml, missing model dir) is a UsageError: printed as one clear message, no stack.

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_GATE = 3;
export const EXIT_INTERRUPTED = 130;

/** The user's mistake: bad option, bad value, missing file. Exit code 2, nothing written. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A settings/models.yaml problem; `problems` lists every finding ("models.yaml:12: models[2].alpah: ..."). */
export class ConfigError extends UsageError {
  override name = "ConfigError";
  readonly problems: string[];
  constructor(problems: string[] | string) {
    const list = Array.isArray(problems) ? problems : [problems];
    super(list.join("\n"));
    this.problems = list;
  }
}

/**
 * Thrown by a step (usually validate) when the realigned model does not pass the release gate.
 * Exit code 3. The verdict is a result, not a crash: the runner still commits the step (its outputs
 * must exist) together with `report` (the metrics that led to the verdict) and stops before later steps.
 */
export class GateFailedError extends Error {
  override name = "GateFailedError";
  readonly reasons: string[];
  readonly report: ReportPart | undefined;
  constructor(reasons: string[] | string, report?: ReportPart) {
    const list = Array.isArray(reasons) ? reasons : [reasons];
    super(`gate failed: ${list.join("; ")}`);
    this.reasons = list;
    this.report = report;
  }
}

/** A step threw; wraps the cause with the step's name. Exit code 1. */
export class StepFailedError extends Error {
  override name = "StepFailedError";
  readonly step: string;
  constructor(step: string, cause: unknown) {
    super(`step ${step} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.step = step;
  }
}

/** The run was stopped by SIGINT/SIGTERM; everything committed so far is kept. */
export class InterruptedError extends Error {
  override name = "InterruptedError";
  readonly exitCode: number;
  constructor(signal: "SIGINT" | "SIGTERM" | string = "SIGINT") {
    super("interrupted; re-run to resume");
    this.exitCode = signal === "SIGTERM" ? 143 : EXIT_INTERRUPTED;
  }
}

/** A part of the pipeline that does not exist yet. Exit code 1. */
export class NotImplementedError extends Error {
  override name = "NotImplementedError";
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return EXIT_USAGE;
  if (err instanceof GateFailedError) return EXIT_GATE;
  if (err instanceof InterruptedError) return err.exitCode;
  if (err instanceof StepFailedError && err.cause instanceof GateFailedError) return EXIT_GATE;
  return EXIT_FAILED;
}

/** Edit distance counting a swap of neighbours as one edit (optimal string alignment), for "did you mean" hints. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/** The closest candidate when it is plausibly a typo, else null. */
export function didYouMean(word: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  const w = word.toLowerCase();
  for (const c of candidates) {
    const d = editDistance(w, c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null;
}
