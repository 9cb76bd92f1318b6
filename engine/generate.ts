// Decoding with a KV cache, batched with left padding (HF generate()'s conventions:
// position_ids = cumsum(attention_mask) − 1, pads at position 1). Greedy (argmax) unless
// `sampling.temperature` > 0; then temperature / top-k / top-p sampling with a seeded stream per row
// (engine/sampling.ts), optionally several samples per prompt in one batch. Rows stop at an EOS id
// or a stop string; every new token can be streamed to a callback.
import { releaseCache, type DecoderModel, type ForwardInput, type KVCache } from "./model.ts";
import { firstNonFinite, NonFiniteError } from "./dtype.ts";
import { checkSampling, findStop, hashIds, randomSeed, Rng, sampleToken, type SamplingOptions } from "./sampling.ts";
import { batchChunks, maxBatch } from "./batch-cap.ts";

export interface GenerateOptions {
  maxNewTokens: number;
  /** Stop a row once it emits one of these ids (the id itself is kept in `newIds`). */
  eosIds?: number[];
  padId?: number;
  /** Recompute the whole sequence every step instead of using the KV cache (reference path). */
  useCache?: boolean;
  /** Keep the logits that chose the first new token of every row. */
  returnFirstLogits?: boolean;
  /** Keep the logits of every step (tests). */
  returnStepLogits?: boolean;
  /** Interventions passed to every forward pass. */
  rosiVectors?: Float32Array;
  rosiEmbed?: Float32Array;
  steer?: Float32Array;
  /** Keys of the rank-one edits (ForwardInput.editKeys), for every forward pass. */
  editKeys?: Float32Array[];
  onStep?: (step: number, maxSteps: number) => void;
  signal?: AbortSignal;
  /** Sample instead of argmax when `temperature` > 0 (absent or 0: greedy, exactly as generateGreedy). */
  sampling?: SamplingOptions;
  /**
   * Rows per prompt (default 1). Prompt i's rows are i·n … i·n + n − 1 of the result; with sampling each
   * row j draws from its own stream (seed, prompt ids, j).
   */
  numSamples?: number;
  /** Stop a row once its decoded text contains one of these (the tokens are kept; see finishReasons / stopIndex). */
  stopStrings?: string[];
  /** Decoder for stopStrings (e.g. tokenizer.decode with skipSpecialTokens). */
  decode?: (ids: number[]) => string;
  /** Called with every new token of a row that is still running, in row order within a step. */
  onToken?: (row: number, token: number, step: number) => void;
}

export type FinishReason = "eos" | "stop" | "length";

export interface GenerateResult {
  /** Per row: generated ids, ending with the EOS id when one was produced. */
  newIds: number[][];
  /** Per row: [vocab] logits of the first step, when asked. */
  firstLogits?: Float32Array[];
  /** Per row, per step: [vocab] logits, when asked. */
  stepLogits?: Float32Array[][];
  /** Prefill and decode timings for throughput figures. */
  stats: { prefillTokens: number; prefillSeconds: number; decodeTokens: number; decodeSeconds: number };
  /** Per row: why it stopped ("length": it reached maxNewTokens). */
  finishReasons?: FinishReason[];
  /** Per row: where the matched stop string starts in the decoded text (cut the text there), else null. */
  stopIndex?: (number | null)[];
  /** The seed sampling used (the given one, or the random one drawn); absent when greedy. */
  seed?: number;
}

export interface PaddedBatch {
  inputIds: number[][];
  attentionMask: number[][];
  positionIds: number[][];
}

/** Left-pads prompts to one length. */
export function leftPad(prompts: number[][], padId: number): PaddedBatch {
  const T = Math.max(...prompts.map((p) => p.length));
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  const positionIds: number[][] = [];
  for (const p of prompts) {
    if (p.length === 0) throw new Error("cannot generate from an empty prompt");
    const pad = T - p.length;
    inputIds.push([...Array(pad).fill(padId), ...p]);
    attentionMask.push([...Array(pad).fill(0), ...Array(p.length).fill(1)]);
    positionIds.push([...Array(pad).fill(1), ...p.map((_, i) => i)]);
  }
  return { inputIds, attentionMask, positionIds };
}

/** Index of the largest value; the first one on ties, like torch.argmax. */
export function argmax(x: Float32Array, offset = 0, length = x.length - offset): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < length; i++) {
    const v = x[offset + i];
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/** Greedy decoding (argmax); the same as generate() without `sampling`. */
export async function generateGreedy(model: DecoderModel, prompts: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  return generate(model, prompts, { ...opts, sampling: undefined });
}

export async function generate(model: DecoderModel, promptList: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  const numSamples = opts.numSamples ?? 1;
  if (!Number.isInteger(numSamples) || numSamples < 1) throw new RangeError(`numSamples must be a positive integer, got ${numSamples}`);
  const sampling = checkSampling(opts.sampling) ? opts.sampling! : null;
  const stops = (opts.stopStrings ?? []).filter((s) => s.length > 0);
  if (stops.length && !opts.decode) throw new RangeError("stopStrings need a decode function");
  const prompts = numSamples === 1 ? promptList : promptList.flatMap((p) => Array.from({ length: numSamples }, () => p));
  const seed = sampling ? (sampling.seed ?? randomSeed()) : undefined;
  const rngs = sampling ? prompts.map((p, r) => new Rng(seed!, hashIds(p), r % numSamples)) : [];
  // REALIGN_MAX_BATCH (engine/batch-cap.ts): an over-large batch is decoded as sequential chunks, each
  // with its own KV cache. Rows are independent (each samples from its own stream), so only padding
  // differs, which can move the last float digits; without the variable this is one chunk, as before.
  const cap = maxBatch();
  const chunks = cap !== null && prompts.length > cap ? batchChunks(prompts.length, cap) : [[0, prompts.length] as [number, number]];
  const merged: RowsResult = { newIds: [], finishReasons: [], stopIndex: [], firstLogits: [], stepLogits: [], stats: { prefillTokens: 0, prefillSeconds: 0, decodeTokens: 0, decodeSeconds: 0 } };
  for (const [start, end] of chunks) {
    const r = await decodeRows(model, prompts.slice(start, end), rngs.slice(start, end), sampling, stops, opts, start);
    merged.newIds.push(...r.newIds);
    merged.finishReasons.push(...r.finishReasons);
    merged.stopIndex.push(...r.stopIndex);
    merged.firstLogits.push(...r.firstLogits);
    merged.stepLogits.push(...r.stepLogits);
    for (const k of ["prefillTokens", "prefillSeconds", "decodeTokens", "decodeSeconds"] as const) merged.stats[k] += r.stats[k];
  }
  const result: GenerateResult = { newIds: merged.newIds, stats: merged.stats, finishReasons: merged.finishReasons, stopIndex: merged.stopIndex };
  if (seed !== undefined) result.seed = seed;
  if (opts.returnFirstLogits) result.firstLogits = merged.firstLogits;
  if (opts.returnStepLogits) result.stepLogits = merged.stepLogits;
  return result;
}

interface RowsResult {
  newIds: number[][];
  finishReasons: FinishReason[];
  stopIndex: (number | null)[];
  firstLogits: Float32Array[];
  stepLogits: Float32Array[][];
  stats: GenerateResult["stats"];
}

/** Decodes one batch of rows (rows `offset` … of the whole request, for onToken) with one KV cache. */
async function decodeRows(model: DecoderModel, prompts: number[][], rngs: Rng[], sampling: SamplingOptions | null, stops: string[], opts: GenerateOptions, offset: number): Promise<RowsResult> {
  const B = prompts.length;
  const vocab = model.config.vocabSize;
  const finishReasons: FinishReason[] = prompts.map(() => "length");
  const stopIndex: (number | null)[] = prompts.map(() => null);
  const eos = new Set(opts.eosIds ?? []);
  const padId = opts.padId ?? 0;
  const useCache = opts.useCache ?? true;
  const batch = leftPad(prompts, padId);
  const newIds: number[][] = prompts.map(() => []);
  const done = prompts.map(() => false);
  const firstLogits: Float32Array[] = [];
  const stepLogits: Float32Array[][] = prompts.map(() => []);
  const stats = { prefillTokens: 0, prefillSeconds: 0, decodeTokens: 0, decodeSeconds: 0 };
  const interventions = { rosiVectors: opts.rosiVectors, rosiEmbed: opts.rosiEmbed, steer: opts.steer, editKeys: opts.editKeys };

  let input: ForwardInput = {
    ...batch,
    logitPositions: prompts.map(() => [batch.inputIds[0].length - 1]),
    noCache: !useCache,
    ...interventions,
  };
  let last: KVCache | undefined;
  try {
    for (let step = 0; step < opts.maxNewTokens; step++) {
      if (opts.signal?.aborted) throw new Error("generation aborted");
      const t0 = performance.now();
      const out = await model.forward(input);
      // A device-resident cache (WebGPU) is freed as soon as the next step has read it.
      releaseCache(input.past);
      last = out.present;
      const seconds = (performance.now() - t0) / 1000;
      if (step === 0 || !useCache) {
        stats.prefillTokens += step === 0 ? batch.attentionMask.flat().filter((m) => m === 1).length : 0;
        if (step === 0) stats.prefillSeconds += seconds;
        else stats.decodeSeconds += seconds;
      } else stats.decodeSeconds += seconds;
      if (step > 0) stats.decodeTokens += done.filter((d) => !d).length;

      const next: number[] = [];
      for (let b = 0; b < B; b++) {
        const row = out.logits.subarray(b * vocab, (b + 1) * vocab);
        if (step === 0 && opts.returnFirstLogits) firstLogits.push(row.slice());
        let token = argmax(out.logits, b * vocab, vocab);
        // NaN/Inf logits make argmax pick token 0 forever ("!!!!!!"): name the problem instead.
        if (!done[b] && firstNonFinite(row) >= 0) {
          const i = firstNonFinite(row);
          throw new NonFiniteError(`${model.dir}: the model produced a non-finite logit (${row[i]}) for token ${i} at generation step ${step} of sequence ${b}; the weights or the compute (float16 overflow?) are broken`, i, row[i]);
        }
        if (!done[b]) {
          // One uniform per token of a running row, so a row's stream never depends on the others.
          if (sampling) token = sampleToken(row, sampling, rngs[b]!.nextFloat());
          if (opts.returnStepLogits) stepLogits[b].push(row.slice());
          newIds[b].push(token);
          if (eos.has(token)) {
            done[b] = true;
            finishReasons[b] = "eos";
          } else if (stops.length) {
            const hit = findStop(opts.decode!(newIds[b]), stops);
            if (hit) {
              done[b] = true;
              finishReasons[b] = "stop";
              stopIndex[b] = hit.index;
            }
          }
          opts.onToken?.(offset + b, token, step);
        }
        // Finished rows keep decoding a pad so the batch stays rectangular.
        next.push(done[b] && !eos.has(token) ? padId : token);
      }
      opts.onStep?.(step + 1, opts.maxNewTokens);
      if (done.every(Boolean) || step + 1 === opts.maxNewTokens) break;

      const lastPos = input.positionIds.map((row) => row[row.length - 1]);
      if (useCache) {
        input = {
          inputIds: next.map((t) => [t]),
          attentionMask: input.attentionMask.map((row) => [...row, 1]),
          positionIds: lastPos.map((p) => [p + 1]),
          logitPositions: prompts.map(() => [0]),
          past: out.present,
          ...interventions,
        };
      } else {
        const ids = input.inputIds.map((row, b) => [...row, next[b]]);
        input = {
          inputIds: ids,
          attentionMask: input.attentionMask.map((row) => [...row, 1]),
          positionIds: input.positionIds.map((row, b) => [...row, lastPos[b] + 1]),
          logitPositions: prompts.map(() => [ids[0].length - 1]),
          noCache: true,
          ...interventions,
        };
      }
    }
  } finally {
    releaseCache(last);
  }
  return { newIds, finishReasons, stopIndex, firstLogits, stepLogits, stats };
}
