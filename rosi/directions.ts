// Candidate refusal directions: mean residual stream of harmful minus harmless prompts, per layer
// and per post-instruction position, accumulated in float64.
import type { DecoderModel } from "../engine/model.ts";
import type { ChatEncoding } from "../engine/tokenizer.ts";
import { leftPad } from "../engine/generate.ts";
import { mean } from "../evals/measure.ts";

export class ExtractError extends Error {
  override name = "ExtractError";
}

/**
 * Positions read, counted back from the end of the prompt: the last instruction token, then every
 * post-instruction template token. Index 0 = last instruction token, 1.. = template tokens in order.
 */
export function positionCount(encodings: ChatEncoding[]): number {
  const post = new Set(encodings.map((e) => e.postInstructionSpan[1] - e.postInstructionSpan[0]));
  if (post.size !== 1) throw new ExtractError(`the chat template gives post-instruction spans of different lengths (${[...post].join(", ")}); cannot align positions`);
  return [...post][0] + 1;
}

export interface ResidualMeans {
  /** means[l][p] = mean residual entering layer l (l = layers means the final residual) at position p. */
  means: Float64Array[][];
  count: number;
}

/**
 * Most tokens (rows × padded length) in one pass that returns every layer's residuals. Each layer's [rows, T, hidden]
 * is a graph output, held to the end of the pass, so the pass's memory grows with rows × T. Measured (Qwen2.5-0.5B
 * shape, int8-dynamic, residual means of 64 prompts of up to 490 tokens under the long default safety prompt):
 * 16 rows a pass peaked at 5.4 GB RSS in 39.3 s, 8 rows at 3.4 GB in 32.4 s, 4 rows at 2.1 GB in 30.6 s.
 */
export const RESIDUAL_PASS_TOKENS = 4096;

/**
 * Residual streams of the prompts, a left-padded batch at a time: `residuals[l]` is [rows, T, hidden]
 * entering layer l (l = layers: the final residual). Left padding aligns the prompts' last tokens at T − 1.
 * A batch takes up to `batchSize` prompts in order, fewer when rows × T would pass RESIDUAL_PASS_TOKENS.
 */
async function* residualBatches(model: DecoderModel, encodings: ChatEncoding[], batchSize: number, signal?: AbortSignal): AsyncGenerator<{ residuals: Float32Array[]; rows: number; T: number; done: number }> {
  for (let i = 0; i < encodings.length; ) {
    if (signal?.aborted) throw new ExtractError("aborted");
    let end = i + 1;
    let longest = encodings[i].ids.length;
    while (end < encodings.length && end - i < batchSize) {
      const next = Math.max(longest, encodings[end].ids.length);
      if ((end - i + 1) * next > RESIDUAL_PASS_TOKENS) break;
      longest = next;
      end++;
    }
    const chunk = encodings.slice(i, end).map((e) => e.ids);
    const batch = leftPad(chunk, 0);
    const T = batch.inputIds[0].length;
    const r = await model.forward({ ...batch, logitPositions: chunk.map(() => [T - 1]), residuals: true, noCache: true });
    yield { residuals: r.residuals!, rows: chunk.length, T, done: end };
    i = end;
  }
}

/** Mean residuals over prompts at the last `positions` tokens of each. */
export async function residualMeans(model: DecoderModel, encodings: ChatEncoding[], positions: number, opts: { batchSize?: number; onBatch?: (done: number, total: number) => void; signal?: AbortSignal } = {}): Promise<ResidualMeans> {
  const { numLayers, hiddenSize: H } = model.config;
  const sums = Array.from({ length: numLayers + 1 }, () => Array.from({ length: positions }, () => new Float64Array(H)));
  for await (const { residuals, rows, T, done } of residualBatches(model, encodings, opts.batchSize ?? 16, opts.signal)) {
    for (let l = 0; l <= numLayers; l++) {
      const res = residuals[l];
      for (let b = 0; b < rows; b++) {
        for (let p = 0; p < positions; p++) {
          const base = (b * T + T - positions + p) * H;
          const acc = sums[l][p];
          for (let h = 0; h < H; h++) acc[h] += res[base + h];
        }
      }
    }
    opts.onBatch?.(done, encodings.length);
  }
  for (const layer of sums) for (const acc of layer) for (let h = 0; h < H; h++) acc[h] /= encodings.length;
  return { means: sums, count: encodings.length };
}

export interface Candidate {
  layer: number;
  position: number;
  /** mean(harmful) − mean(harmless), float64. */
  diff: Float64Array;
  norm: number;
}

export function candidates(harmful: ResidualMeans, harmless: ResidualMeans, numLayers: number): Candidate[] {
  const out: Candidate[] = [];
  for (let l = 0; l < numLayers; l++) {
    for (let p = 0; p < harmful.means[l].length; p++) {
      const a = harmful.means[l][p];
      const b = harmless.means[l][p];
      const diff = new Float64Array(a.length);
      let ss = 0;
      for (let h = 0; h < a.length; h++) {
        diff[h] = a[h] - b[h];
        ss += diff[h] * diff[h];
      }
      out.push({ layer: l, position: p, diff, norm: Math.sqrt(ss) });
    }
  }
  return out;
}

export function unit(v: ArrayLike<number>): Float32Array {
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += v[i] * v[i];
  const n = Math.sqrt(ss) || 1;
  return Float32Array.from(v, (x) => x / n);
}

/** Top-k orthonormal directions of per-prompt differences (power iteration with deflation on the covariance). */
export function principalDirections(diffs: Float64Array[], k: number, iterations = 200): Float32Array[] {
  if (diffs.length === 0) throw new ExtractError("no activation differences to analyse");
  const H = diffs[0].length;
  const found: Float64Array[] = [];
  for (let d = 0; d < k; d++) {
    let v = new Float64Array(H).map((_, i) => Math.sin(i + 1 + d));
    for (let it = 0; it < iterations; it++) {
      const next = new Float64Array(H);
      for (const x of diffs) {
        let dot = 0;
        for (let h = 0; h < H; h++) dot += x[h] * v[h];
        for (let h = 0; h < H; h++) next[h] += dot * x[h];
      }
      for (const u of found) {
        let dot = 0;
        for (let h = 0; h < H; h++) dot += next[h] * u[h];
        for (let h = 0; h < H; h++) next[h] -= dot * u[h];
      }
      let n = 0;
      for (const x of next) n += x * x;
      n = Math.sqrt(n) || 1;
      v = next.map((x) => x / n);
    }
    found.push(v);
  }
  return found.map((v) => Float32Array.from(v));
}

/** Per-prompt residual entering `layer` at `position` (0 = last instruction token, counted as in residualMeans). */
export async function residualsAt(model: DecoderModel, encodings: ChatEncoding[], layer: number, position: number, positions: number, batchSize = 16): Promise<Float64Array[]> {
  const H = model.config.hiddenSize;
  const out: Float64Array[] = [];
  for await (const { residuals, rows, T } of residualBatches(model, encodings, batchSize)) {
    const t = T - positions + position;
    for (let b = 0; b < rows; b++) out.push(Float64Array.from(residuals[layer].subarray((b * T + t) * H, (b * T + t + 1) * H)));
  }
  return out;
}

/**
 * The safety subspace at one layer/position (Pan et al.'s multi-dimensional view): the top-k principal
 * directions of per-prompt differences (each harmful activation minus the harmless mean, and the
 * harmful mean minus each harmless activation), signed to agree with the mean difference, with the
 * root-mean-square projection of the differences on each.
 */
export function safetySubspace(harmful: Float64Array[], harmless: Float64Array[], k: number): { directions: Float32Array[]; scales: number[] } {
  const H = harmful[0].length;
  const meanOf = (xs: Float64Array[]) => {
    const m = new Float64Array(H);
    for (const x of xs) for (let h = 0; h < H; h++) m[h] += x[h] / xs.length;
    return m;
  };
  const muH = meanOf(harmful);
  const muN = meanOf(harmless);
  const diffs = [...harmful.map((x) => x.map((v, h) => v - muN[h])), ...harmless.map((x) => muH.map((v, h) => v - x[h]))];
  const meanDiff = muH.map((v, h) => v - muN[h]);
  const directions = principalDirections(diffs, k).map((d) => {
    let dot = 0;
    for (let h = 0; h < H; h++) dot += d[h] * meanDiff[h];
    return dot < 0 ? d.map((x) => -x) : d;
  });
  const scales = directions.map((d) => Math.sqrt(mean(diffs.map((x) => x.reduce((acc, v, h) => acc + v * d[h], 0) ** 2))));
  return { directions, scales };
}
