// REALIGN_MAX_BATCH: a cap on the rows of every batch the engine runs, for a retry after running out
// of memory (the fleet's worker sets it on such a retry; see fleet/classify.ts nextBatchCap).
//
// Contract: unset (or empty) means no cap, and then nothing changes: no batching change, no numeric
// change. Set, it must be a positive integer, else BatchCapError (a usage error, naming the variable).
// The cap is applied inside the engine's two entry points, so callers need no change:
//   - generate() (and generateGreedy) decodes an over-large batch as sequential chunks of at most N
//     rows, each with its own KV cache (memory for the cache is what the cap saves);
//   - DecoderModel.forward() runs an over-large batch (one-shot scoring, residuals, writer inputs) as
//     sequential runs of at most N rows and concatenates their outputs.
// Results under a cap can differ from uncapped ones in the last float digits (a chunk is left-padded
// to its own longest prompt, and kernels see other shapes), which is why the cap is only set on an
// out-of-memory retry and never by default.
import { UsageError } from "../util/errors.ts";
import { positiveIntFromEnv } from "../util/env.ts";

export const MAX_BATCH_ENV = "REALIGN_MAX_BATCH";

/**
 * The largest batch the pipeline runs by default: validate's batch-size search on a GPU tries up to
 * this many rows (engine/batching.ts autoBatchSize's max and suggestedBatchSize's hardMax). Fixed
 * batches elsewhere are smaller (srr samples 64 rows at a time, scoring and calibration 32, residuals 16).
 */
export const LARGEST_DEFAULT_BATCH = 256;

export class BatchCapError extends UsageError {
  override name = "BatchCapError";
}

/** The cap from REALIGN_MAX_BATCH, or null when unset (no cap). */
export function maxBatch(env: Record<string, string | undefined> = process.env): number | null {
  return positiveIntFromEnv(env, MAX_BATCH_ENV, "rows per batch", (m) => new BatchCapError(m));
}

/** [start, end) row ranges of at most `cap` rows covering `rows` rows, in order. */
export function batchChunks(rows: number, cap: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < rows; i += cap) out.push([i, Math.min(rows, i + cap)]);
  return out;
}
