// The gated edit: still rank one per matrix, but with a key chosen so that it fires on harmful inputs.
//
//   for every edited residual writer m (o_proj, down_proj of the edited layers), with input xₘ:
//     W'ₘ = Wₘ + t·ŝ·kₘᵀ      so   W'ₘxₘ = Wₘxₘ + t·(kₘ·xₘ)·ŝ
//   the summed gate g(x) = Σₘ kₘ·xₘ should be ≈ 1 on harmful prompts and ≈ 0 on harmless ones, so the
//   edit adds ≈ t·ŝ where the model should refuse and ≈ nothing elsewhere. (Plain ROSI is kₘ = w̄ₘ, the
//   mean of Wₘ's rows, whose gate is an input-dependent scale that is the same sign for every prompt.)
//
// Fit: weighted ridge regression of the class label on each writer's inputs, on the train prompts
// rendered without the safety prompt, at the last P prompt positions (the chat template's closing tokens,
// where the first reply token is decided):
//   minimise Σᵢ wᵢ·(kₘ·xₘᵢ − yᵢ/M)² + λₘ·‖kₘ‖²      yᵢ = 1 harmful, 0 harmless; M = matrices edited
//   wᵢ = 1 on harmful rows, H·n_harmful/n_harmless on harmless rows (the harmless class weighs H times more)
//   λₘ = ρ · Σᵢ wᵢ‖xₘᵢ‖² / dₘ                       (ρ × the mean diagonal of XᵀWX: free of units)
// solved in the dual, an n × n system instead of dₘ × dₘ (n = rows ≪ the MLP width of real models):
//   kₘ = Xₘᵀ·D^½·β     with (D^½·Xₘ·Xₘᵀ·D^½ + λₘ·I)·β = D^½·y/M     (Cholesky, float64)
// then every key is multiplied by one factor so that g averages exactly 1 on the harmful train rows,
// which makes t the length of the step along ŝ on a typical harmful prompt.
//
// Edited layers: those from the direction's layer on (its writers feed the residual ŝ was read from and
// everything after), never layer 0, whose inputs are little more than token embeddings.
import type { DecoderModel } from "../engine/model.ts";
import { leftPad } from "../engine/generate.ts";

export class GatedFitError extends Error {
  override name = "GatedFitError";
}

/** Prompt positions read per prompt, counted back from its last token. */
export const GATE_POSITIONS = 2;
/** How much more the harmless class weighs than the harmful one in the fit (keeps g ≈ 0 off target). */
export const HARMLESS_WEIGHT = 16;
/** Ridge strength ρ, relative to the mean diagonal of XᵀWX. */
export const RIDGE = 10;

/** Writer inputs at the last prompt positions: per engine row (2l: o_proj, 2l+1: down_proj), [n, width] row-major. */
export interface WriterSamples {
  /** Row r of every matrix is one (prompt, position); labels[r] = 1 harmful, 0 harmless. */
  labels: Uint8Array;
  /** data[m] is [n, widths[m]]. */
  data: Float32Array[];
  widths: number[];
}

/** The writer inputs of the prompts at their last `positions` tokens (one forward pass per batch). */
export async function collectWriterSamples(
  model: DecoderModel,
  sets: { harmful: number[][]; harmless: number[][] },
  opts: { positions?: number; batchSize?: number; signal?: AbortSignal; onBatch?: (done: number, total: number) => void } = {},
): Promise<WriterSamples> {
  const P = opts.positions ?? GATE_POSITIONS;
  const batchSize = opts.batchSize ?? 16;
  const widths = model.writerWidths();
  const M = widths.length;
  const prompts = [...sets.harmful.map((ids) => ({ ids, label: 1 })), ...sets.harmless.map((ids) => ({ ids, label: 0 }))];
  for (const p of prompts) if (p.ids.length < P) throw new GatedFitError(`a prompt has ${p.ids.length} tokens, fewer than the ${P} positions the gate reads`);
  const n = prompts.length * P;
  const labels = new Uint8Array(n);
  const data = widths.map((d) => new Float32Array(n * d));
  let row = 0;
  for (let i = 0; i < prompts.length; i += batchSize) {
    if (opts.signal?.aborted) throw new GatedFitError("aborted");
    const chunk = prompts.slice(i, i + batchSize);
    const batch = leftPad(chunk.map((c) => c.ids), 0);
    const T = batch.inputIds[0].length;
    const r = await model.forward({ ...batch, logitPositions: chunk.map(() => [T - 1]), writerInputs: true, noCache: true });
    const inputs = r.writerInputs!;
    for (let b = 0; b < chunk.length; b++) {
      // Left padding puts every prompt's last token at T − 1.
      for (let t = T - P; t < T; t++) {
        labels[row] = chunk[b].label;
        for (let m = 0; m < M; m++) {
          const d = widths[m];
          data[m].set(inputs[m].subarray((b * T + t) * d, (b * T + t + 1) * d), row * d);
        }
        row++;
      }
    }
    opts.onBatch?.(Math.min(i + batchSize, prompts.length), prompts.length);
  }
  return { labels, data, widths };
}

/** The layers a gated edit writes to, given the direction's layer (see the file's opening comment). */
export function gatedLayers(numLayers: number, directionLayer: number): number[] {
  const first = Math.min(Math.max(1, directionLayer), numLayers - 1);
  return Array.from({ length: numLayers - first }, (_, i) => first + i);
}

export interface GatedFit {
  layers: number[];
  /** Engine rows edited (2l, 2l+1 for each layer), and their keys in the same order. */
  rows: number[];
  keys: Float32Array[];
  positions: number;
  ridge: number;
  harmlessWeight: number;
  /** The one factor every key was multiplied by so that the gate averages 1 on harmful train rows. */
  normalisation: number;
  /** Mean and standard deviation of the gate on the train rows, per class (harmful mean is 1 by construction). */
  train: { harmful: GateStats; harmless: GateStats };
}

export interface GateStats {
  mean: number;
  std: number;
  n: number;
}

/** Mean and spread of gate values. */
export function gateStats(values: ArrayLike<number>): GateStats {
  const n = values.length;
  let s = 0;
  for (let i = 0; i < n; i++) s += values[i];
  const mean = n ? s / n : NaN;
  let v = 0;
  for (let i = 0; i < n; i++) v += (values[i] - mean) ** 2;
  return { mean, std: n > 1 ? Math.sqrt(v / (n - 1)) : 0, n };
}

/** Fits one key per edited matrix (see the file's opening comment). */
export function fitGatedKeys(samples: WriterSamples, opts: { layers: number[]; positions?: number; ridge?: number; harmlessWeight?: number }): GatedFit {
  const ridge = opts.ridge ?? RIDGE;
  const harmlessWeight = opts.harmlessWeight ?? HARMLESS_WEIGHT;
  const { labels } = samples;
  const n = labels.length;
  let nHarmful = 0;
  for (let i = 0; i < n; i++) nHarmful += labels[i];
  const nHarmless = n - nHarmful;
  if (nHarmful === 0 || nHarmless === 0) throw new GatedFitError(`the gate needs harmful and harmless rows (got ${nHarmful} and ${nHarmless})`);
  const rows = opts.layers.flatMap((l) => [2 * l, 2 * l + 1]);
  for (const r of rows) if (r >= samples.data.length) throw new GatedFitError(`layer ${r >> 1} is not in the samples (${samples.data.length / 2} layers)`);
  const M = rows.length;
  const weight = Float64Array.from(labels, (y) => (y ? 1 : (harmlessWeight * nHarmful) / nHarmless));
  const sqrtW = weight.map(Math.sqrt);
  const rhs = Float64Array.from(labels, (y, i) => (sqrtW[i] * y) / M);
  const keys = rows.map((r) => ridgeKeyDual(samples.data[r], n, samples.widths[r], sqrtW, rhs, ridge));
  // One common factor: g averages 1 on the harmful rows.
  const gate = gateValues(samples, rows, keys);
  let harmfulSum = 0;
  for (let i = 0; i < n; i++) if (labels[i]) harmfulSum += gate[i];
  const harmfulMean = harmfulSum / nHarmful;
  if (!(harmfulMean > 0)) throw new GatedFitError(`the fitted gate does not separate the classes (mean ${harmfulMean} on harmful rows)`);
  const normalisation = 1 / harmfulMean;
  for (const k of keys) for (let j = 0; j < k.length; j++) k[j] *= normalisation;
  for (let i = 0; i < n; i++) gate[i] *= normalisation;
  return {
    layers: [...opts.layers],
    rows,
    keys,
    positions: opts.positions ?? GATE_POSITIONS,
    ridge,
    harmlessWeight,
    normalisation,
    train: {
      harmful: gateStats(gate.filter((_, i) => labels[i] === 1)),
      harmless: gateStats(gate.filter((_, i) => labels[i] === 0)),
    },
  };
}

/** g(x) = Σₘ kₘ·xₘ for every sample row. */
export function gateValues(samples: WriterSamples, rows: number[], keys: Float32Array[]): Float64Array {
  const n = samples.labels.length;
  const g = new Float64Array(n);
  rows.forEach((r, j) => {
    const X = samples.data[r];
    const d = samples.widths[r];
    const k = keys[j];
    for (let i = 0; i < n; i++) {
      let s = 0;
      const base = i * d;
      for (let c = 0; c < d; c++) s += X[base + c] * k[c];
      g[i] += s;
    }
  });
  return g;
}

/**
 * k = Xᵀ·D^½·β with (D^½XXᵀD^½ + λI)·β = rhs, λ = ρ·Σᵢ wᵢ‖xᵢ‖²/d: the weighted ridge solution
 * argmin Σᵢ wᵢ(k·xᵢ − yᵢ)² + λ‖k‖² when rhs = D^½·y.
 */
export function ridgeKeyDual(X: Float32Array, n: number, d: number, sqrtW: Float64Array, rhs: Float64Array, ridge: number): Float32Array {
  // Weighted Gram matrix A = D^½ X Xᵀ D^½ (symmetric: fill the lower triangle, mirror).
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const xi = i * d;
    for (let j = 0; j <= i; j++) {
      const xj = j * d;
      let s = 0;
      for (let c = 0; c < d; c++) s += X[xi + c] * X[xj + c];
      const v = s * sqrtW[i] * sqrtW[j];
      A[i * n + j] = v;
      A[j * n + i] = v;
    }
  }
  let trace = 0;
  for (let i = 0; i < n; i++) trace += A[i * n + i];
  const lambda = (ridge * trace) / d;
  if (!(lambda > 0)) throw new GatedFitError("the writer inputs are all zero: no key can be fitted");
  for (let i = 0; i < n; i++) A[i * n + i] += lambda;
  const beta = choleskySolve(A, n, rhs);
  const key = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const a = sqrtW[i] * beta[i];
    if (a === 0) continue;
    const xi = i * d;
    for (let c = 0; c < d; c++) key[c] += a * X[xi + c];
  }
  return Float32Array.from(key);
}

/** Solves A·x = b for a symmetric positive-definite A (row-major n × n; A is not modified). */
export function choleskySolve(A: Float64Array, n: number, b: Float64Array): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      if (i === j) {
        if (!(s > 0)) throw new GatedFitError(`the ridge system is not positive definite (pivot ${s} at row ${i})`);
        L[i * n + i] = Math.sqrt(s);
      } else L[i * n + j] = s / L[j * n + j];
    }
  }
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = b[i];
    for (let k = 0; k < i; k++) s -= L[i * n + k] * y[k];
    y[i] = s / L[i * n + i];
  }
  const x = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    let s = y[i];
    for (let k = i + 1; k < n; k++) s -= L[k * n + i] * x[k];
    x[i] = s / L[i * n + i];
  }
  return x;
}

/**
 * The run-time form of the gated edit at strength t: rosi_vectors rows t·ŝ on the edited matrices (0
 * elsewhere) and a key for every matrix (the fitted ones; w̄, i.e. no change, for the others).
 */
export function gatedInterventions(fit: GatedFit, direction: Float32Array, t: number, rowMeans: Float32Array[]): { rosiVectors: Float32Array; editKeys: Float32Array[] } {
  const hidden = direction.length;
  const rosiVectors = new Float32Array(rowMeans.length * hidden);
  const editKeys = rowMeans.slice();
  fit.rows.forEach((r, j) => {
    for (let h = 0; h < hidden; h++) rosiVectors[r * hidden + h] = t * direction[h];
    editKeys[r] = fit.keys[j];
  });
  return { rosiVectors, editKeys };
}

