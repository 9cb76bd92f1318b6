// Errors the runner raises or understands: a failed gate (a verdict, committed), a failed step, an
// interrupt, and a run directory that is not the runner's to write.
import type { ReportPart } from "./runner.ts";
import { UsageError } from "../util/errors.ts";

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
    // 128 + signal number, as shells report it.
    this.exitCode = signal === "SIGTERM" ? 143 : 130;
  }
}

/**
 * The run directory cannot be used: a file is in the way, or it is a folder the runner did not make
 * (no marker, and not a recognisable earlier run). A usage error: exit code 2, nothing written.
 */
export class RunDirError extends UsageError {
  override name = "RunDirError";
  readonly dir: string;
  constructor(dir: string, message: string) {
    super(message);
    this.dir = dir;
  }
}
