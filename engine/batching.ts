// Automatic batch size: double the batch while throughput keeps improving, stop at the first
// failure (out of memory, EP error) or when the gain flattens out. A memory estimate from the model
// config caps the search so that the probe never tries a batch that cannot fit.
import { execFileSync } from "node:child_process";
import { freemem } from "node:os";
import { generateGreedy } from "./generate.ts";
import type { DecoderModel } from "./model.ts";
import { LARGEST_DEFAULT_BATCH, maxBatch } from "./batch-cap.ts";

export interface AutoBatchOptions {
  /** First batch size tried (default 1). */
  start?: number;
  /** Largest batch size tried (default 256); use suggestedBatchSize() for a memory-safe cap. */
  max?: number;
  /** Relative throughput gain a doubling must bring to be kept (default 0.05 = 5 %). */
  minGain?: number;
  /** Run the first size once untimed: the first session run pays for kernel selection and prepacking (default true). */
  warmup?: boolean;
  /** Milliseconds clock (default performance.now); tests inject a deterministic one. */
  clock?: () => number;
  log?: (msg: string) => void;
}

export interface AutoBatchResult {
  /** The chosen batch size. */
  batch: number;
  /** Measured throughput per batch size tried (tokens/s when the probe reports tokens, else items/s). */
  tokensPerSecond: Record<number, number>;
  /** Why the search stopped. */
  stoppedBy: "max" | "error" | "no-gain";
  /** The error of the batch size that failed, when stoppedBy is "error". */
  error?: string;
}

/**
 * The probe runs one representative batch of `batch` rows. It may return how many tokens it
 * processed; otherwise throughput is counted in rows (items) per second.
 */
export type BatchProbe = (batch: number) => Promise<void | number>;

/**
 * Tries batch sizes start, 2·start, 4·start, … ≤ max, timing `probe` at each. Stops at the first
 * size that throws (out of memory, EP failure), or whose throughput is not at least `minGain`
 * better than the previous size's, or at `max`. Returns the largest size that still paid for
 * itself (each doubling up to it gained ≥ minGain): beyond it, more memory buys < 5 % speed.
 * Throws if even the start size fails, since then nothing can run.
 */
export async function autoBatchSize(probe: BatchProbe, opts: AutoBatchOptions = {}): Promise<AutoBatchResult> {
  const start = opts.start ?? 1;
  const max = opts.max ?? LARGEST_DEFAULT_BATCH;
  const minGain = opts.minGain ?? 0.05;
  const clock = opts.clock ?? (() => performance.now());
  if (!Number.isInteger(start) || start < 1) throw new RangeError(`autoBatchSize: start must be a positive integer, got ${start}`);
  if (!Number.isInteger(max) || max < start) throw new RangeError(`autoBatchSize: max must be an integer ≥ start (${start}), got ${max}`);
  if (!(minGain >= 0)) throw new RangeError(`autoBatchSize: minGain must be ≥ 0, got ${minGain}`);

  const tokensPerSecond: Record<number, number> = {};
  const measure = async (batch: number): Promise<number> => {
    const t0 = clock();
    const units = await probe(batch);
    const seconds = (clock() - t0) / 1000;
    const count = typeof units === "number" ? units : batch;
    // A probe faster than the clock resolution counts as very fast rather than dividing by zero.
    return count / Math.max(seconds, 1e-9);
  };

  if (opts.warmup ?? true) {
    try {
      await probe(start);
    } catch (e) {
      throw new Error(`autoBatchSize: even batch size ${start} failed: ${errorText(e)}`);
    }
  }
  let best = start;
  let previous = 0;
  for (let batch = start; batch <= max; batch *= 2) {
    let rate: number;
    try {
      rate = await measure(batch);
    } catch (e) {
      if (batch === start) throw new Error(`autoBatchSize: even batch size ${start} failed: ${errorText(e)}`);
      opts.log?.(`batch ${batch}: failed (${errorText(e)}); using ${best}`);
      return { batch: best, tokensPerSecond, stoppedBy: "error", error: errorText(e) };
    }
    tokensPerSecond[batch] = rate;
    opts.log?.(`batch ${batch}: ${rate.toFixed(1)}/s`);
    if (batch > start && rate < previous * (1 + minGain)) {
      opts.log?.(`batch ${batch} gains < ${(minGain * 100).toFixed(0)} % over ${best}; using ${best}`);
      return { batch: best, tokensPerSecond, stoppedBy: "no-gain" };
    }
    best = batch;
    previous = rate;
  }
  return { batch: best, tokensPerSecond, stoppedBy: "max" };
}

function errorText(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

export interface MemoryEstimateOptions {
  /** Tokens generated after the prompt (KV cache grows by these; default 64). */
  newTokens?: number;
  /** Bytes available for activations and KV caches; default: free GPU memory (nvidia-smi) for GPU EPs, os.freemem() on CPU. */
  freeBytes?: number;
  /** Fraction of the free memory the batch may use (default 0.5: ORT arenas, fragmentation, the rest of the process). */
  fraction?: number;
  /** Upper bound returned regardless of memory (default 256). */
  hardMax?: number;
}

/**
 * Bytes one row of a batch needs at its peak, float32: the KV cache of prompt + new tokens (held
 * twice while a step turns `past` into `present`), the prefill activations of one layer (ORT
 * frees them layer by layer: hidden-sized tensors, the MLP's gate/up/activation, the T×T attention
 * scores of every head), and one row of logits.
 */
export function bytesPerRow(model: Pick<DecoderModel, "config"> & Partial<Pick<DecoderModel, "dtype">>, promptTokens: number, newTokens = 64): number {
  const c = model.config;
  const T = promptTokens;
  const S = promptTokens + newTokens;
  const kv = 2 * 2 * c.numLayers * c.numKvHeads * c.headDim * S;
  const activations = T * (6 * c.hiddenSize + 3 * c.intermediateSize + (c.numHeads + 2 * c.numKvHeads) * c.headDim) + c.numHeads * T * T;
  const logits = c.vocabSize;
  // KV cache and activations are in the compute type; logits always come back as float32.
  const element = model.dtype === "float16" ? 2 : 4;
  return element * (kv + activations) + 4 * logits;
}

/** Free memory of the first NVIDIA GPU in bytes, or null when nvidia-smi is absent or fails. */
export function nvidiaFreeBytes(): number | null {
  try {
    const out = execFileSync("nvidia-smi", ["--query-gpu=memory.free", "--format=csv,noheader,nounits"], { encoding: "utf8", timeout: 5000, stdio: ["ignore", "pipe", "ignore"] });
    const mib = Number.parseInt(out.trim().split("\n")[0], 10);
    return Number.isFinite(mib) && mib > 0 ? mib * 1024 * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * A memory-safe cap on the batch size for prompts of `promptTokens` tokens: the largest power of
 * two whose estimated peak (bytesPerRow × batch) fits in `fraction` of the free memory; at least 1.
 * Weights are already loaded when this is called, so free memory is what is left for the batch.
 */
export function suggestedBatchSize(model: Pick<DecoderModel, "config" | "ep"> & Partial<Pick<DecoderModel, "dtype">>, promptTokens: number, opts: MemoryEstimateOptions = {}): number {
  if (!Number.isInteger(promptTokens) || promptTokens < 1) throw new RangeError(`suggestedBatchSize: promptTokens must be a positive integer, got ${promptTokens}`);
  const fraction = opts.fraction ?? 0.5;
  const hardMax = opts.hardMax ?? LARGEST_DEFAULT_BATCH;
  const free = opts.freeBytes ?? (model.ep === "cpu" ? freemem() : (nvidiaFreeBytes() ?? freemem()));
  const fits = Math.floor((free * fraction) / bytesPerRow(model, promptTokens, opts.newTokens ?? 64));
  let batch = 1;
  while (batch * 2 <= Math.min(fits, hardMax)) batch *= 2;
  return batch;
}

export interface ChooseBatchOptions extends MemoryEstimateOptions, Pick<AutoBatchOptions, "minGain" | "log" | "clock"> {
  /** Prompt length of the probe batches (use the typical length of the real prompts). */
  promptTokens: number;
  /** Tokens decoded per probe (default 8; newTokens is still used for the memory estimate). */
  probeNewTokens?: number;
}

/**
 * A generation probe for autoBatchSize: `batch` copies of a synthetic prompt, greedily decoded for
 * `newTokens` steps with the model's KV cache. Returns the tokens processed (prefill + decode).
 */
export function generationProbe(model: DecoderModel, promptTokens: number, newTokens = 8): BatchProbe {
  const V = model.config.vocabSize;
  // Distinct, deterministic ids away from the low special-token range; no EOS, so every step runs.
  const prompt = Array.from({ length: promptTokens }, (_, i) => 3 + ((i * 7919) % Math.max(1, V - 3)));
  return async (batch) => {
    await generateGreedy(model, Array.from({ length: batch }, () => prompt), { maxNewTokens: newTokens });
    return batch * (promptTokens + newTokens);
  };
}

/** suggestedBatchSize as the cap, then autoBatchSize with a generation probe: the batch size to generate with. */
export async function chooseGenerationBatchSize(model: DecoderModel, opts: ChooseBatchOptions): Promise<AutoBatchResult & { cap: number }> {
  const memoryCap = suggestedBatchSize(model, opts.promptTokens, opts);
  // REALIGN_MAX_BATCH (an out-of-memory retry) bounds the search too, so the size chosen is the size run.
  const envCap = maxBatch();
  const cap = envCap === null ? memoryCap : Math.min(memoryCap, envCap);
  opts.log?.(`batch-size search on ${model.ep}: prompts of ${opts.promptTokens} tokens, memory cap ${memoryCap}${envCap !== null && envCap < memoryCap ? `, REALIGN_MAX_BATCH ${envCap}` : ""}`);
  const r = await autoBatchSize(generationProbe(model, opts.promptTokens, opts.probeNewTokens ?? 8), { max: cap, minGain: opts.minGain, log: opts.log, clock: opts.clock });
  return { ...r, cap };
}
