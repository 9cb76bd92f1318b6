// Whether a failed run is worth another try. The worker maps "permanent" to BullMQ's
// UnrecoverableError (failed at once, with the reason, whatever attempts are left) and "transient" to
// a plain error (retried with exponential back-off until the job's attempts are used up).
//
//   permanent  the gate failed (exit 3); a usage or configuration error (exit 2); a bad checkpoint,
//              tokenizer or config; an edit or extraction that cannot work on this model; a Hub
//              refusal that another try cannot change (auth, not found, gated, bad input)
//   transient  network errors and timeouts, Hub 408/409/412/429/5xx, out of memory, a device that
//              would not start, a run directory locked by a live run (a worker that lost its job
//              and has not yet stopped), anything not recognised (bounded by the attempts)
//
// After running out of memory the next attempt also gets a smaller batch (nextBatchCap: the worker
// sets REALIGN_MAX_BATCH for its child).
import { LARGEST_DEFAULT_BATCH } from "../engine/batch-cap.ts";
import { CheckpointError } from "../engine/checkpoint.ts";
import { ModelConfigError } from "../engine/config.ts";
import { MissingWeightError } from "../engine/decoder.ts";
import { DTypeError, NonFiniteError } from "../engine/dtype.ts";
import { SafetensorsError } from "../engine/safetensors.ts";
import { TokenizerError } from "../engine/tokenizer.ts";
import { HubError } from "../hub/errors.ts";
import { GateFailedError, StepFailedError } from "../pipeline/errors.ts";
import { ExtractError } from "../rosi/directions.ts";
import { InjectError } from "../rosi/edit.ts";
import { GatedFitError } from "../rosi/gated.ts";
import { ElicitationError } from "../steps/elicit.ts";
import { UsageError } from "../util/errors.ts";

export type FailureKind = "permanent" | "transient";

export interface Failure {
  kind: FailureKind;
  /** One line for the job's failedReason. */
  reason: string;
}

const OOM = /out of memory|ENOMEM|bad_alloc|Failed to allocate|allocation failed|Cannot allocate memory/i;

/** The runner's message for a run directory another live process holds (pipeline/runner.ts acquireLock). */
const LOCKED = /^another \S+ run \(pid \d+\) is using /;

export function classifyFailure(err: unknown): Failure {
  const step = err instanceof StepFailedError ? err.step : null;
  const cause = err instanceof StepFailedError ? err.cause : err;
  const message = err instanceof Error ? err.message : String(err);
  const reason = message.split("\n")[0]!;
  const permanent = (why = reason): Failure => ({ kind: "permanent", reason: why });
  const transient = (why = reason): Failure => ({ kind: "transient", reason: why });

  if (cause instanceof GateFailedError) return permanent(`gate failed: ${cause.reasons.join("; ")}`);
  if (cause instanceof UsageError) return LOCKED.test(cause.message) ? transient() : permanent();
  if (cause instanceof HubError) {
    if (cause.code === "network" || cause.code === "timeout" || cause.code === "io") return transient();
    if (cause.code === "http") {
      const s = cause.status;
      return s === undefined || s === 408 || s === 409 || s === 412 || s === 429 || s >= 500 ? transient() : permanent();
    }
    if (cause.code === "integrity") return transient();
    return permanent();
  }
  for (const cls of [CheckpointError, SafetensorsError, ModelConfigError, MissingWeightError, TokenizerError, DTypeError, NonFiniteError, ElicitationError, ExtractError, InjectError, GatedFitError]) {
    if (cause instanceof cls) return permanent(step ? reason : `${cls.name}: ${reason}`);
  }
  if (cause instanceof Error && OOM.test(cause.message)) return transient(`out of memory: ${reason}`);
  return transient();
}

// ---- a smaller batch after running out of memory -----------------------------------------------

/** How the worker words a run whose process ended without a result (fleet/worker.ts). */
export function childDiedReason(how: string): string {
  return `the run's process ended without a result (${how}); retrying resumes from the last finished step`;
}

/**
 * Whether a failed attempt ran out of memory: the child's own classification says so (its reason
 * starts with "out of memory": an allocator or ONNX Runtime error, which is how a GPU running out
 * shows), or the child was killed by SIGKILL that its worker did not send (the worker words that as
 * childDiedReason("killed by SIGKILL")): the kernel's and a container's out-of-memory killers send
 * SIGKILL and leave no message, and on the host that is the only trace a full memory leaves. Other
 * deaths without a message (a crash, SIGTERM, another exit code) are not taken for memory.
 */
export function ranOutOfMemory(reason: string | null | undefined): boolean {
  if (!reason) return false;
  return reason.startsWith("out of memory") || reason.startsWith(childDiedReason("killed by SIGKILL"));
}

/**
 * The REALIGN_MAX_BATCH for the next attempt (null: no cap): after running out of memory, half the
 * previous cap, or, with none yet, half of the largest batch the pipeline runs by default
 * (LARGEST_DEFAULT_BATCH); never below 1. After any other failure the previous cap stays (the memory
 * it saved is still needed).
 */
export function nextBatchCap(previousReason: string | null | undefined, previousCap: number | null | undefined): number | null {
  const cap = previousCap ?? null;
  if (!ranOutOfMemory(previousReason)) return cap;
  return Math.max(1, Math.floor((cap ?? LARGEST_DEFAULT_BATCH) / 2));
}
