// Exit codes of the realign commands, and which error maps to which.
import { UsageError } from "../util/errors.ts";
import { GateFailedError, InterruptedError, StepFailedError } from "../pipeline/errors.ts";

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_GATE = 3;
export const EXIT_INTERRUPTED = 130;

export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return EXIT_USAGE;
  if (err instanceof GateFailedError) return EXIT_GATE;
  if (err instanceof InterruptedError) return err.exitCode;
  if (err instanceof StepFailedError && err.cause instanceof GateFailedError) return EXIT_GATE;
  return EXIT_FAILED;
}
